//! What `/proc` says about a process and the host: a process's CPU time and memory
//! ([`ProcSample`]), the host's CPU shares ([`HostCpu`]), and the resource deltas over a
//! measured window ([`Window`], [`WindowUsage`]).

use anyhow::{anyhow, Context, Result};

use super::process::BrokerProcess;

/// One reading of a process's CPU time and memory.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// utime + stime, seconds.
    pub cpu_s: f64,
    /// Peak resident set (`VmHWM`), KiB.
    pub hwm_kib: u64,
    /// Resident set now (`VmRSS`), KiB.
    pub rss_kib: u64,
}

impl ProcSample {
    /// Reads `{dir}/stat` and `{dir}/status` (`dir` is `/proc/PID` or `/proc/self`).
    ///
    /// # Errors
    /// When either file cannot be read or parsed.
    pub fn read(dir: &str) -> Result<ProcSample> {
        let stat = std::fs::read_to_string(format!("{dir}/stat"))
            .with_context(|| format!("cannot read {dir}/stat"))?;
        let status = std::fs::read_to_string(format!("{dir}/status"))
            .with_context(|| format!("cannot read {dir}/status"))?;
        Ok(ProcSample {
            cpu_s: parse_stat_cpu(&stat)
                .ok_or_else(|| anyhow!("unexpected format of {dir}/stat"))?,
            hwm_kib: parse_status_kib(&status, "VmHWM:").unwrap_or(0),
            rss_kib: parse_status_kib(&status, "VmRSS:").unwrap_or(0),
        })
    }
}

/// utime + stime in seconds from the text of `/proc/PID/stat`. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted after the last `)`.
fn parse_stat_cpu(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ')': field 3 (state) is index 0, utime (14) index 11, stime (15) index 12.
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Some((utime + stime) as f64 / hz as f64)
}

/// A `kB` value of `/proc/PID/status`.
fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Host CPU time from the first line of `/proc/stat`, in ticks.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostCpu {
    total: u64,
    idle: u64,
    steal: u64,
}

impl HostCpu {
    /// Reads `/proc/stat` (zeros if it cannot be read: the shares are then reported as 0).
    pub fn read() -> HostCpu {
        let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let mut h = HostCpu::default();
        if let Some(line) = text.lines().next() {
            // "cpu  user nice system idle iowait irq softirq steal guest guest_nice"
            for (i, v) in line.split_whitespace().skip(1).take(8).enumerate() {
                let v: u64 = v.parse().unwrap_or(0);
                h.total += v;
                if i == 3 || i == 4 {
                    h.idle += v;
                }
                if i == 7 {
                    h.steal += v;
                }
            }
        }
        h
    }
}

/// Resource readings at the start of a measured window; [`Window::end`] gives the deltas.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    broker: Option<ProcSample>,
    own_cpu_s: f64,
    host: HostCpu,
}

/// What a measured window cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct WindowUsage {
    /// Broker CPU seconds (utime + stime) over the window; `None` for an external broker.
    pub broker_cpu_s: Option<f64>,
    /// This process's CPU seconds (all load-generating clients) over the window.
    pub client_cpu_s: f64,
    /// Share of host CPU time idle over the window, percent.
    pub host_idle_pct: f64,
    /// Share of host CPU time stolen by the hypervisor over the window, percent.
    pub host_steal_pct: f64,
}

impl Window {
    /// Takes the start readings.
    pub fn begin(broker: Option<&BrokerProcess>) -> Window {
        Window {
            broker: broker.and_then(|b| b.sample().ok()),
            own_cpu_s: own_cpu_s(),
            host: HostCpu::read(),
        }
    }

    /// Takes the end readings and returns the deltas.
    pub fn end(&self, broker: Option<&BrokerProcess>) -> WindowUsage {
        let after = broker.and_then(|b| b.sample().ok());
        let host = HostCpu::read();
        let dt = host.total.saturating_sub(self.host.total);
        let pct = |a: u64, b: u64| {
            if dt == 0 {
                0.0
            } else {
                100.0 * b.saturating_sub(a) as f64 / dt as f64
            }
        };
        WindowUsage {
            broker_cpu_s: match (self.broker, after) {
                (Some(a), Some(b)) => Some((b.cpu_s - a.cpu_s).max(0.0)),
                _ => None,
            },
            client_cpu_s: (own_cpu_s() - self.own_cpu_s).max(0.0),
            host_idle_pct: pct(self.host.idle, host.idle),
            host_steal_pct: pct(self.host.steal, host.steal),
        }
    }
}

/// This process's CPU seconds so far.
fn own_cpu_s() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| parse_stat_cpu(&s))
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_in_name() {
        let s = "1234 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        let hz = rustix::param::clock_ticks_per_second() as f64;
        assert_eq!(parse_stat_cpu(s), Some(300.0 / hz));
    }

    #[test]
    fn status_fields() {
        let s = "Name:\tagentwire\nVmHWM:\t   13600 kB\nVmRSS:\t    9000 kB\n";
        assert_eq!(parse_status_kib(s, "VmHWM:"), Some(13600));
        assert_eq!(parse_status_kib(s, "VmRSS:"), Some(9000));
        assert_eq!(parse_status_kib(s, "VmSwap:"), None);
    }

    #[test]
    fn own_process_sample() {
        let s = ProcSample::read("/proc/self").expect("/proc/self is readable");
        assert!(s.rss_kib > 0);
        assert!(s.hwm_kib >= s.rss_kib);
    }
}
