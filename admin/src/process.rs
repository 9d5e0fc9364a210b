//! Process and host figures for `/metrics`: CPU time and CPU share of the cores the process may
//! use, resident memory and the memory limit it runs under (the cgroup's `memory.max`, else the
//! machine's memory), and how full the file system holding the data dir is. The Prometheus
//! rules in `ops/prometheus/alerts.yml` alert on these (CPU 80 %, memory 85 %, disk 90 %).
//!
//! Linux reads `/proc` and `/sys/fs/cgroup`; a figure that cannot be read (another OS, a
//! masked `/proc`) is left out of the exposition rather than reported as zero.

use std::path::Path;
use std::time::Instant;

use parking_lot::Mutex;

/// One reading of the process's figures. `None`: not available here.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessFigures {
    /// CPU time used by the process since it started (user + system), seconds.
    pub cpu_seconds: Option<f64>,
    /// CPU time over wall time since the previous reading (at least [`MIN_CPU_INTERVAL`]
    /// before), divided by the cores the process may run on: 0..1.
    pub cpu_ratio: Option<f64>,
    /// Cores the process may run on.
    pub cpu_cores: f64,
    /// Resident set size, bytes.
    pub resident_memory_bytes: Option<f64>,
    /// The memory the process may use: the cgroup limit, else the machine's total, bytes.
    pub memory_limit_bytes: Option<f64>,
    /// Used share (0..1) of the file system holding the data dir, counting the blocks that
    /// are reserved for root as used (what an unprivileged broker can still write).
    pub data_dir_disk_used_ratio: Option<f64>,
}

/// The CPU ratio is measured over at least this long: scrapes closer together reuse it.
pub const MIN_CPU_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The previous CPU reading (process-wide: the figure is the process's, whichever broker asks).
static LAST_CPU: Mutex<Option<CpuMark>> = Mutex::new(None);

#[derive(Debug, Clone, Copy)]
struct CpuMark {
    at: Instant,
    cpu_seconds: f64,
    ratio: Option<f64>,
}

/// Reads every figure; `data_dir` is the broker's data dir (none: in-memory store, no disk
/// figure).
pub fn read(data_dir: Option<&Path>) -> ProcessFigures {
    let cpu_cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let cpu_seconds = cpu_seconds();
    let cpu_ratio = cpu_seconds.and_then(|s| cpu_ratio(s, Instant::now(), cpu_cores));
    ProcessFigures {
        cpu_seconds,
        cpu_ratio,
        cpu_cores,
        resident_memory_bytes: resident_memory_bytes(),
        memory_limit_bytes: memory_limit_bytes(),
        data_dir_disk_used_ratio: data_dir.and_then(disk_used_ratio),
    }
}

/// CPU time of the whole process (every thread), seconds.
fn cpu_seconds() -> Option<f64> {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Some(t.tv_sec as f64 + t.tv_nsec as f64 / 1e9)
}

/// Updates the CPU mark and returns the ratio over the last interval of at least
/// [`MIN_CPU_INTERVAL`] (`None` until one has passed since the first reading).
fn cpu_ratio(cpu_seconds: f64, now: Instant, cores: f64) -> Option<f64> {
    let mut last = LAST_CPU.lock();
    match *last {
        None => {
            *last = Some(CpuMark {
                at: now,
                cpu_seconds,
                ratio: None,
            });
            None
        }
        Some(m) => {
            let wall = now.saturating_duration_since(m.at);
            if wall < MIN_CPU_INTERVAL {
                return m.ratio;
            }
            let ratio = ratio_between(m.cpu_seconds, cpu_seconds, wall.as_secs_f64(), cores);
            *last = Some(CpuMark {
                at: now,
                cpu_seconds,
                ratio: Some(ratio),
            });
            Some(ratio)
        }
    }
}

/// CPU seconds used over `wall` seconds on `cores` cores, clamped to 0..1.
fn ratio_between(cpu_before: f64, cpu_now: f64, wall: f64, cores: f64) -> f64 {
    if wall <= 0.0 || cores <= 0.0 {
        return 0.0;
    }
    ((cpu_now - cpu_before).max(0.0) / wall / cores).clamp(0.0, 1.0)
}

/// Resident set size from `/proc/self/statm` (second field, in pages).
fn resident_memory_bytes() -> Option<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages = parse_statm_resident(&statm)?;
    Some(pages as f64 * rustix::param::page_size() as f64)
}

fn parse_statm_resident(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// The cgroup v2 `memory.max` of this process when it is a number, else `MemTotal`.
fn memory_limit_bytes() -> Option<f64> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|c| cgroup_v2_path(&c));
    if let Some(path) = cgroup {
        let file = Path::new("/sys/fs/cgroup")
            .join(path.trim_start_matches('/'))
            .join("memory.max");
        if let Some(limit) = std::fs::read_to_string(file)
            .ok()
            .and_then(|s| parse_memory_max(&s))
        {
            return Some(limit as f64);
        }
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo_total(&meminfo).map(|b| b as f64)
}

/// The cgroup v2 path (`0::/path`) from `/proc/self/cgroup`.
fn cgroup_v2_path(cgroup: &str) -> Option<String> {
    cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// `memory.max`: a byte count, or `max` (no limit: `None`).
fn parse_memory_max(s: &str) -> Option<u64> {
    s.trim().parse().ok()
}

/// `MemTotal:  24555000 kB` from `/proc/meminfo`, in bytes.
fn parse_meminfo_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb.saturating_mul(1024))
}

/// Used share of the file system holding `dir` (1 - available / total).
fn disk_used_ratio(dir: &Path) -> Option<f64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    used_ratio(s.f_blocks, s.f_bavail)
}

fn used_ratio(blocks: u64, available: u64) -> Option<f64> {
    if blocks == 0 {
        return None;
    }
    Some((1.0 - available.min(blocks) as f64 / blocks as f64).clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_and_cgroup_files() {
        assert_eq!(parse_statm_resident("12345 678 90 1 0 2 0\n"), Some(678));
        assert_eq!(parse_statm_resident(""), None);
        assert_eq!(parse_memory_max("max\n"), None);
        assert_eq!(parse_memory_max("536870912\n"), Some(536_870_912));
        assert_eq!(
            parse_meminfo_total("MemTotal:       24555000 kB\nMemFree: 1 kB\n"),
            Some(24_555_000 * 1024)
        );
        assert_eq!(parse_meminfo_total("MemFree: 1 kB\n"), None);
        assert_eq!(
            cgroup_v2_path("0::/system.slice/agentwire.service\n"),
            Some("/system.slice/agentwire.service".to_owned())
        );
        assert_eq!(cgroup_v2_path("1:name=systemd:/x\n"), None);
    }

    #[test]
    fn ratios_are_bounded() {
        assert_eq!(ratio_between(1.0, 2.0, 1.0, 2.0), 0.5);
        assert_eq!(ratio_between(1.0, 9.0, 1.0, 2.0), 1.0);
        assert_eq!(ratio_between(2.0, 1.0, 1.0, 2.0), 0.0);
        assert_eq!(ratio_between(1.0, 2.0, 0.0, 2.0), 0.0);
        assert_eq!(used_ratio(100, 25), Some(0.75));
        assert_eq!(used_ratio(100, 500), Some(0.0));
        assert_eq!(used_ratio(0, 0), None);
    }

    #[test]
    fn reads_this_process() {
        let dir = std::env::temp_dir();
        let f = read(Some(&dir));
        if cfg!(target_os = "linux") {
            assert!(f.cpu_seconds.is_some_and(|s| s >= 0.0), "{f:?}");
            assert!(f.resident_memory_bytes.is_some_and(|b| b > 0.0), "{f:?}");
            assert!(f.memory_limit_bytes.is_some_and(|b| b > 0.0), "{f:?}");
            let d = f.data_dir_disk_used_ratio;
            assert!(d.is_some_and(|r| (0.0..=1.0).contains(&r)), "{f:?}");
        }
        assert!(f.cpu_cores >= 1.0);
        assert!(f.cpu_ratio.is_none_or(|r| (0.0..=1.0).contains(&r)));
    }
}
