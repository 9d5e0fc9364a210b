//! The broker process's resource use, for the `resources` rule (Linux; elsewhere every figure
//! is unknown and the rule gives no verdict):
//!
//! - CPU: the process's user + system time (`/proc/self/stat`) over wall time, as a share of
//!   every core it may use (`available_parallelism`, which honours affinity and cgroup quotas);
//! - memory: resident set (`/proc/self/statm`) over the memory it may use: `MemTotal` from
//!   `/proc/meminfo`, or the cgroup v2 `memory.max` when lower;
//! - disk: used share of the filesystem holding the data dir (`statvfs`, as `df` counts it:
//!   used / (used + available to unprivileged users)).

use std::path::Path;

/// One reading.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reading {
    /// CPU time used so far by the process, seconds.
    pub cpu_seconds: Option<f64>,
    /// Resident memory, percent of the limit.
    pub memory_percent: Option<f64>,
    /// Disk use of the data dir's filesystem, percent.
    pub disk_percent: Option<f64>,
}

/// Cores the process may use.
pub fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// Reads every figure (`data_dir`: the directory whose filesystem counts for disk).
pub fn read(data_dir: &Path) -> Reading {
    Reading {
        cpu_seconds: cpu_seconds(),
        memory_percent: memory_percent(),
        disk_percent: disk_percent(data_dir),
    }
}

fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat_cpu_ticks(&stat).map(|t| t as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line, in clock ticks.
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

fn memory_percent() -> Option<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let rss = pages * rustix::param::page_size() as u64;
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total = parse_meminfo_total(&meminfo)?;
    let limit = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|&l| l > 0 && l < total)
        .unwrap_or(total);
    Some(rss as f64 * 100.0 / limit as f64)
}

/// `MemTotal` of `/proc/meminfo`, bytes.
fn parse_meminfo_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024).filter(|&b| b > 0)
}

fn disk_percent(dir: &Path) -> Option<f64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    let used = s.f_blocks.saturating_sub(s.f_bfree);
    let denom = used + s.f_bavail;
    (denom > 0).then(|| used as f64 * 100.0 / denom as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "1234 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(300));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        assert_eq!(
            parse_meminfo_total("MemTotal:       2048 kB\nMemFree: 1 kB\n"),
            Some(2048 * 1024)
        );
        assert_eq!(parse_meminfo_total("nothing"), None);
    }

    #[test]
    fn reads_this_process() {
        let r = read(Path::new("."));
        if cfg!(target_os = "linux") {
            assert!(r.cpu_seconds.is_some_and(|c| c >= 0.0), "{r:?}");
            assert!(
                r.memory_percent.is_some_and(|m| m > 0.0 && m <= 100.0),
                "{r:?}"
            );
            assert!(
                r.disk_percent.is_some_and(|d| (0.0..=100.0).contains(&d)),
                "{r:?}"
            );
        }
    }
}
