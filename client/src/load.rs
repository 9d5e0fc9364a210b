//! [`LoadReporter`]: the load figures a registered instance reports in its heartbeats, and the
//! process's own CPU and memory use read from `/proc` on Linux.
//!
//! The application sets in-flight work, queue depth and request latency through a
//! [`LoadReporter`] (atomics: any thread, any time, no lock). The heartbeat task reads them once
//! per interval and adds this process's CPU use since the previous heartbeat and its resident
//! memory, read from `/proc/self/stat` and `/proc/self/status` (two small in-memory files; 0
//! where they cannot be read, and always 0 off Linux).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentwire_protocol::control::Heartbeat;
use tokio::time::Instant;

/// The figures the application sets, shared by every [`LoadReporter`] clone and the heartbeat
/// task.
#[derive(Debug, Default)]
pub(crate) struct LoadCells {
    in_flight: AtomicU32,
    queue_depth: AtomicU32,
    /// EWMA of recorded latencies, microseconds; 0 until the first sample.
    latency_us: AtomicU32,
    /// Requests handled, ever.
    requests: AtomicU64,
    /// Requests answered with an error, ever.
    errors: AtomicU64,
}

/// A cheap, cloneable handle through which the application reports its load; every heartbeat
/// carries the latest figures. Get one from [`crate::Membership::load_reporter`].
///
/// Unlike [`crate::Membership`], a `LoadReporter` does not keep the connection open: hand it to
/// worker tasks freely.
///
/// ```no_run
/// # fn example(membership: &agentwire_client::Membership) {
/// use std::time::{Duration, Instant};
/// let load = membership.load_reporter();
/// load.set_load(4, 12); // 4 requests in progress, 12 waiting
/// let started = Instant::now();
/// // ... handle a request ...
/// load.record_latency(started.elapsed());
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct LoadReporter {
    cells: Arc<LoadCells>,
}

impl LoadReporter {
    pub(crate) fn new() -> LoadReporter {
        LoadReporter::default()
    }

    /// Sets the requests or tasks in progress and the work waiting in the instance's queues.
    pub fn set_load(&self, in_flight: u32, queue_depth: u32) {
        self.cells.in_flight.store(in_flight, Ordering::Relaxed);
        self.cells.queue_depth.store(queue_depth, Ordering::Relaxed);
    }

    /// Sets the requests or tasks in progress.
    pub fn set_in_flight(&self, in_flight: u32) {
        self.cells.in_flight.store(in_flight, Ordering::Relaxed);
    }

    /// Sets the work waiting in the instance's own queues.
    pub fn set_queue_depth(&self, queue_depth: u32) {
        self.cells.queue_depth.store(queue_depth, Ordering::Relaxed);
    }

    /// Adds one request latency to the reported latency, an exponentially weighted moving
    /// average (weight 1/8 for the new sample; the first sample is taken as it is).
    pub fn record_latency(&self, latency: Duration) {
        let sample = u32::try_from(latency.as_micros())
            .unwrap_or(u32::MAX)
            .max(1);
        let _ = self
            .cells
            .latency_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(ewma(old, sample))
            });
    }

    /// Counts one handled request, answered with an error when `ok` is false. Heartbeats carry
    /// the totals; the broker derives the component's request and error rates from them (the
    /// error-rate alert and canary health during a staged config rollout).
    pub fn record_request(&self, ok: bool) {
        self.cells.requests.fetch_add(1, Ordering::Release);
        if !ok {
            self.cells.errors.fetch_add(1, Ordering::Release);
        }
    }

    /// Requests recorded with [`LoadReporter::record_request`], and how many of them failed.
    pub fn request_counts(&self) -> (u64, u64) {
        // Errors first: a concurrent `record_request` never makes errors exceed requests.
        let errors = self.cells.errors.load(Ordering::Acquire);
        (self.cells.requests.load(Ordering::Acquire), errors)
    }

    /// The latency currently reported: the moving average of [`LoadReporter::record_latency`]
    /// samples (zero before the first one).
    pub fn latency(&self) -> Duration {
        Duration::from_micros(u64::from(self.cells.latency_us.load(Ordering::Relaxed)))
    }

    /// The figures the application set, as the next heartbeat carries them (without the
    /// process's CPU and memory, which the heartbeat task adds).
    pub fn current(&self) -> Heartbeat {
        let (requests, errors) = self.request_counts();
        Heartbeat {
            in_flight: self.cells.in_flight.load(Ordering::Relaxed),
            queue_depth: self.cells.queue_depth.load(Ordering::Relaxed),
            latency_us: self.cells.latency_us.load(Ordering::Relaxed),
            cpu_permille: 0,
            mem_bytes: 0,
            requests_total: requests,
            errors_total: errors,
        }
    }
}

/// One EWMA step with weight 1/8; 0 means "no sample yet".
fn ewma(old: u32, sample: u32) -> u32 {
    if old == 0 {
        return sample;
    }
    let next = (u64::from(old) * 7 + u64::from(sample)) / 8;
    // Between `old` and `sample`, so it fits; never 0 once a sample was taken.
    u32::try_from(next).unwrap_or(u32::MAX).max(1)
}

/// Highest CPU figure a heartbeat may carry (64 cores busy).
const MAX_CPU_PERMILLE: u64 = 64_000;

/// Clock ticks per second of the CPU times in `/proc/<pid>/stat`: the kernel reports them in
/// `USER_HZ`, which is 100 on every architecture Linux supports today.
#[cfg(target_os = "linux")]
const USER_HZ: u64 = 100;

/// Measures this process's CPU use between heartbeats and reads its resident memory.
#[derive(Debug)]
pub(crate) struct ProcessSampler {
    /// CPU time (user + system) in clock ticks at the previous sample, and when it was taken.
    last: Option<(u64, Instant)>,
}

impl ProcessSampler {
    /// Starts measuring now, so the first heartbeat already has a CPU figure.
    pub(crate) fn new() -> ProcessSampler {
        ProcessSampler {
            last: cpu_ticks().map(|t| (t, Instant::now())),
        }
    }

    /// CPU use since the previous call, in per mille of one core (0 when unknown), and the
    /// resident memory in bytes (0 when unknown).
    pub(crate) fn sample(&mut self) -> (u32, u64) {
        let now = Instant::now();
        let ticks = cpu_ticks();
        let cpu = match (self.last, ticks) {
            (Some((prev, at)), Some(t)) => {
                cpu_permille(t.saturating_sub(prev), now.saturating_duration_since(at))
            }
            _ => 0,
        };
        self.last = ticks.map(|t| (t, now));
        (cpu, resident_bytes().unwrap_or(0))
    }
}

/// Per mille of one core used by `ticks` clock ticks of CPU time over `elapsed` wall time.
#[cfg(target_os = "linux")]
fn cpu_permille(ticks: u64, elapsed: Duration) -> u32 {
    let elapsed_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    if elapsed_us == 0 {
        return 0;
    }
    // ticks / USER_HZ seconds of CPU over elapsed_us / 1e6 seconds, times 1000.
    let permille = ticks.saturating_mul(1_000_000_000 / USER_HZ) / elapsed_us;
    u32::try_from(permille.min(MAX_CPU_PERMILLE)).unwrap_or(0)
}

#[cfg(not(target_os = "linux"))]
fn cpu_permille(_ticks: u64, _elapsed: Duration) -> u32 {
    0
}

/// User + system CPU time of this process, in clock ticks.
#[cfg(target_os = "linux")]
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat_ticks(&stat)
}

#[cfg(not(target_os = "linux"))]
fn cpu_ticks() -> Option<u64> {
    None
}

/// Resident memory of this process, in bytes.
#[cfg(target_os = "linux")]
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_status_rss(&status)
}

#[cfg(not(target_os = "linux"))]
fn resident_bytes() -> Option<u64> {
    None
}

/// `utime + stime` (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name (field 2)
/// is in parentheses and may itself contain spaces and parentheses, so fields are counted from
/// the last `)`.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_ascii_whitespace();
    // Field 3 (state) is the first after the name: utime is field 14, the 12th from here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime.saturating_add(stime))
}

/// The `VmRSS:` line of `/proc/<pid>/status` (in kB there), in bytes.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn parse_status_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_ascii_whitespace();
    let kib: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => Some(kib.saturating_mul(1024)),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ewma_starts_at_the_first_sample_and_moves_by_an_eighth() {
        assert_eq!(ewma(0, 800), 800);
        assert_eq!(ewma(800, 1600), 900);
        assert_eq!(ewma(800, 800), 800);
        assert_eq!(ewma(1, 1), 1);
        assert_eq!(ewma(u32::MAX, u32::MAX), u32::MAX);
        let r = LoadReporter::new();
        assert_eq!(r.latency(), Duration::ZERO);
        r.record_latency(Duration::from_millis(2));
        assert_eq!(r.latency(), Duration::from_millis(2));
        r.record_latency(Duration::from_millis(10));
        assert_eq!(r.latency(), Duration::from_millis(3));
        r.record_latency(Duration::ZERO);
        assert!(
            r.current().latency_us > 0,
            "a sample never resets to unknown"
        );
        r.set_load(3, 9);
        let h = r.current();
        assert_eq!((h.in_flight, h.queue_depth), (3, 9));
    }

    #[test]
    fn stat_parsing_counts_fields_after_the_command_name() {
        let line = "4242 (my (odd) prog) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    150 25 0 0 20 0 3 0 12345 1000000 500 18446744073709551615";
        assert_eq!(parse_stat_ticks(line), Some(175));
        assert_eq!(parse_stat_ticks("garbage"), None);
        assert_eq!(parse_stat_ticks("1 (x) S 1 2"), None);
        assert_eq!(parse_stat_ticks("1 (x) S 1 2 3 4 5 6 7 8 9 x 1"), None);
    }

    #[test]
    fn status_parsing_reads_vmrss_in_kib() {
        let status = "Name:\tagent\nVmPeak:\t  9000 kB\nVmRSS:\t    5120 kB\nThreads:\t4\n";
        assert_eq!(parse_status_rss(status), Some(5120 * 1024));
        assert_eq!(parse_status_rss("Name: x\n"), None);
        assert_eq!(parse_status_rss("VmRSS: lots kB\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn cpu_figure_is_per_mille_of_one_core() {
        // One second of CPU (100 ticks) over one second: one core, 1000 per mille.
        assert_eq!(cpu_permille(100, Duration::from_secs(1)), 1000);
        assert_eq!(cpu_permille(5, Duration::from_secs(1)), 50);
        assert_eq!(cpu_permille(1, Duration::ZERO), 0);
        assert_eq!(cpu_permille(u64::MAX, Duration::from_millis(1)), 64_000);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_resident_memory() {
        let mut s = ProcessSampler::new();
        let (_cpu, mem) = s.sample();
        assert!(mem > 0, "VmRSS of a running process is not zero");
    }
}
