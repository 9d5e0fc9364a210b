//! Results of one run ([`RunReport`]): the JSON object printed per run with `--json`, the
//! human-readable block printed otherwise, and number formatting shared with the suite table.
//!
//! Every figure is defined as in `../shared/peers/RESULTS.md` ("How the figures are defined"),
//! so agentwire's numbers compare with the NATS and Zenoh references:
//! - `published_per_sec` = messages published / (first publish → the last publisher's flush
//!   returned);
//! - `delivered_per_sec` = messages received by all subscribers / (first publish → last
//!   delivery);
//! - `broker_cpu_s` = the broker's utime + stime over the measured window, and
//!   `broker_cpu_s_per_m_msgs` divides it by the messages that went in and out of the broker
//!   (`msgs_in + msgs_out`) in millions;
//! - `broker_peak_rss_kib` = the broker's `VmHWM` at the end of the run (a fresh broker per run).

use serde::Serialize;

use crate::broker_proc::WindowUsage;
use crate::latency::LatencySummary;

/// Everything measured in one run. Fields that do not apply to a scenario are `null` in JSON.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    /// `pubsub`, `reqrep`, `rate`, `conns`, `registry` or `apistatus`.
    pub scenario: &'static str,
    /// The suite case this run belongs to, if any.
    pub case: Option<String>,
    /// Repetition number within the suite (1-based), if any.
    pub rep: Option<u32>,
    /// The scenario's parameters, as given.
    pub parameters: serde_json::Value,
    /// Whether the run completed with nothing lost and no error.
    pub ok: bool,
    /// What went wrong, if anything (each a sentence).
    pub errors: Vec<String>,
    /// Length of the measured window, seconds.
    pub elapsed_s: f64,

    /// Messages (or requests) published in the measured window.
    pub published: u64,
    /// Deliveries expected over all subscribers.
    pub expected: u64,
    /// Deliveries received over all subscribers.
    pub delivered: u64,
    /// Expected deliveries that never arrived (distinct messages, so a duplicate does not hide
    /// a loss).
    pub lost: u64,
    /// Deliveries of a message the subscriber had already seen.
    pub duplicates: u64,
    /// Deliveries that arrived before an earlier message of the same publisher.
    pub out_of_order: u64,
    /// `published` / (first publish → last publisher's flush returned).
    pub published_per_sec: Option<f64>,
    /// `delivered` / (first publish → last delivery).
    pub delivered_per_sec: Option<f64>,
    /// Completed requests per second (reqrep).
    pub requests_per_sec: Option<f64>,
    /// Offered load actually achieved by the open-loop publisher, messages per second (rate).
    pub achieved_rate: Option<f64>,
    /// Round-trip (reqrep), intended-send-to-delivery (rate) or ping (conns) latency.
    pub latency_us: Option<LatencySummary>,
    /// rate: how late the open-loop publisher handed each message to the client (actual −
    /// intended send time). Large values mean the load generator, not the broker, fell behind.
    pub send_lag_us: Option<LatencySummary>,

    /// Messages into the broker over the window (PUBs, requests and replies).
    pub msgs_in: u64,
    /// Messages out of the broker over the window (MSG deliveries).
    pub msgs_out: u64,
    /// Broker CPU seconds over the window (utime + stime).
    pub broker_cpu_s: Option<f64>,
    /// `broker_cpu_s` per million messages in + out.
    pub broker_cpu_s_per_m_msgs: Option<f64>,
    /// Broker peak resident set (`VmHWM`) over the run, KiB.
    pub broker_peak_rss_kib: Option<u64>,
    /// This harness's CPU seconds over the window (every client connection).
    pub client_cpu_s: Option<f64>,
    /// Host idle share over the window, percent (both cores saturated is near 0).
    pub host_idle_pct: Option<f64>,
    /// Host CPU share stolen by the hypervisor over the window, percent.
    pub host_steal_pct: Option<f64>,

    /// The connection scenario's figures.
    pub conns: Option<ConnsFigures>,
    /// Which broker shard each client connection landed on, e.g. `pub [1] sub [0] of 2`
    /// (same-shard and cross-shard routes cost differently).
    pub placement: Option<String>,
    /// The `--routing` the started broker got (`load`, `round-robin`); `null` when the broker
    /// ran with its default (`load`) or was not started here.
    pub routing: Option<&'static str>,

    /// The registry scenario's figures.
    pub registry: Option<RegistryFigures>,
    /// The apistatus scenario's figures.
    pub api: Option<ApiFigures>,
    /// reqrep under `load` routing against the same case under `round-robin` (the suite's
    /// paired cases): set on the `load` run.
    pub vs_round_robin: Option<RoutingComparison>,
}

/// Figures of the `registry` scenario (its delays are `latency_us`; the (instance, change)
/// pairs are `expected`, `delivered`, `lost`).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RegistryFigures {
    /// Instances asked for.
    pub instances: u64,
    /// Instances that connected and registered.
    pub registered: u64,
    /// Config changes asked for.
    pub changes: u64,
    /// Config changes the API accepted.
    pub changes_applied: u64,
    /// Seconds from the first connection attempt until every instance was registered.
    pub register_s: f64,
    /// Round trip of each config `PUT` (sent → response read).
    pub put_latency_us: Option<LatencySummary>,
}

/// Figures of the `apistatus` scenario (status latency is `latency_us`, the data plane's rate
/// over the same window `delivered_per_sec`).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ApiFigures {
    /// Status requests asked for.
    pub requests: u64,
    /// Requests answered 200 with a JSON object.
    pub answered: u64,
    /// Requests that failed (error, other status, not JSON, or not sent before the deadline).
    pub failed: u64,
    /// Seconds from the first status request sent to the last answer.
    pub window_s: f64,
    /// Deliveries of the pubsub load within that window.
    pub delivered_in_window: u64,
    /// The pubsub load's own `delivered_per_sec` (first publish → last delivery).
    pub load_delivered_per_sec: Option<f64>,
}

/// A `load`-routed run against the same case run under `round-robin`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RoutingComparison {
    /// p99 of the round-robin run, µs.
    pub rr_p99_us: f64,
    /// Requests per second of the round-robin run.
    pub rr_requests_per_sec: f64,
    /// p99 round-robin ÷ p99 load: how many times lower the load-aware tail is.
    pub p99_ratio: f64,
    /// Requests per second load ÷ round-robin: at least 1 means no throughput was lost.
    pub requests_per_sec_ratio: f64,
}

/// Figures of the `conns` scenario.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ConnsFigures {
    /// Connections asked for.
    pub target: u64,
    /// Connections that completed the handshake.
    pub connected: u64,
    /// Connections whose every ping in the window was answered (and at least one was sent).
    pub answering: u64,
    /// Pings answered.
    pub pings_ok: u64,
    /// Pings that failed or timed out.
    pub pings_failed: u64,
    /// Broker `VmRSS` before any connection, KiB.
    pub broker_rss_before_kib: Option<u64>,
    /// Largest broker `VmRSS` sampled while every connection was open, KiB.
    pub broker_rss_kib: Option<u64>,
    /// (`broker_rss_kib` − `broker_rss_before_kib`) / connections, KiB.
    pub broker_rss_per_conn_kib: Option<f64>,
    /// Seconds it took to open every connection.
    pub connect_s: f64,
}

impl RunReport {
    /// An empty report for `scenario` with its parameters.
    pub fn new(scenario: &'static str, parameters: impl Serialize) -> RunReport {
        RunReport {
            scenario,
            parameters: serde_json::to_value(parameters).unwrap_or(serde_json::Value::Null),
            ..RunReport::default()
        }
    }

    /// Records a failure.
    pub fn error(&mut self, e: impl Into<String>) {
        self.errors.push(e.into());
    }

    /// Fills the resource figures of the measured window and the per-message CPU cost.
    pub fn set_usage(&mut self, u: &WindowUsage) {
        self.broker_cpu_s = u.broker_cpu_s;
        self.client_cpu_s = Some(u.client_cpu_s);
        self.host_idle_pct = Some(u.host_idle_pct);
        self.host_steal_pct = Some(u.host_steal_pct);
        let moved = self.msgs_in + self.msgs_out;
        self.broker_cpu_s_per_m_msgs = match u.broker_cpu_s {
            Some(cpu) if moved > 0 => Some(cpu / (moved as f64 / 1e6)),
            _ => None,
        };
    }

    /// Sets `ok` from what was recorded: no error, nothing lost, duplicated or reordered.
    pub fn finish(&mut self) {
        if self.lost > 0 {
            self.error(format!(
                "{} of {} expected deliveries lost",
                fmt_int(self.lost),
                fmt_int(self.expected)
            ));
        }
        if self.duplicates > 0 {
            self.error(format!("{} duplicate deliveries", fmt_int(self.duplicates)));
        }
        if self.out_of_order > 0 {
            self.error(format!(
                "{} deliveries out of publisher order",
                fmt_int(self.out_of_order)
            ));
        }
        self.ok = self.errors.is_empty();
    }

    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// A short one-line summary (progress lines in the suite).
    pub fn one_line(&self) -> String {
        let mut parts = Vec::new();
        if let Some(r) = self.delivered_per_sec {
            parts.push(format!("delivered {}/s", fmt_rate(r)));
        } else if let Some(r) = self.published_per_sec {
            parts.push(format!("published {}/s", fmt_rate(r)));
        }
        if let Some(r) = self.requests_per_sec {
            parts.push(format!("{} req/s", fmt_rate(r)));
        }
        if let Some(l) = &self.latency_us {
            parts.push(format!(
                "p50 {} p99 {} p99.9 {} µs",
                fmt_us(l.p50),
                fmt_us(l.p99),
                fmt_us(l.p999)
            ));
        }
        if let Some(c) = &self.conns {
            parts.push(format!(
                "{}/{} answering",
                fmt_int(c.answering),
                fmt_int(c.target)
            ));
            if let Some(r) = c.broker_rss_kib {
                parts.push(format!("broker RSS {}", fmt_kib(r)));
            }
        }
        if let Some(g) = &self.registry {
            parts.push(format!(
                "{}/{} registered in {:.1} s",
                fmt_int(g.registered),
                fmt_int(g.instances),
                g.register_s
            ));
        }
        if let Some(a) = &self.api {
            parts.push(format!(
                "{}/{} status answered",
                fmt_int(a.answered),
                fmt_int(a.requests)
            ));
        }
        if let Some(v) = &self.vs_round_robin {
            parts.push(format!(
                "round-robin p99 {} µs, {} req/s: p99 ×{:.1} lower, req/s ×{:.2}",
                fmt_us(v.rr_p99_us),
                fmt_rate(v.rr_requests_per_sec),
                v.p99_ratio,
                v.requests_per_sec_ratio
            ));
        }
        if self.expected > 0 || self.lost > 0 {
            parts.push(format!("lost {}", fmt_int(self.lost)));
        }
        if let Some(c) = self.broker_cpu_s_per_m_msgs {
            parts.push(format!("broker {c:.3} CPU s/M msgs"));
        }
        if let Some(r) = self.broker_peak_rss_kib {
            parts.push(format!("peak RSS {}", fmt_kib(r)));
        }
        let status = if self.ok { "ok" } else { "FAILED" };
        let mut s = format!("{status}: {}", parts.join(", "));
        for e in &self.errors {
            s.push_str("; ");
            s.push_str(e);
        }
        s
    }

    /// A multi-line human-readable block.
    pub fn human(&self) -> String {
        let mut out = Vec::new();
        let mut line = |k: &str, v: String| out.push(format!("  {k:<26} {v}"));
        line("scenario", self.scenario.to_owned());
        line("parameters", self.parameters.to_string());
        line("result", if self.ok { "ok" } else { "FAILED" }.to_owned());
        for e in &self.errors {
            line("error", e.clone());
        }
        line("measured window", format!("{:.3} s", self.elapsed_s));
        if self.published > 0 {
            line("published", fmt_int(self.published));
        }
        if let Some(r) = self.published_per_sec {
            line("published/s", fmt_int(r.round() as u64));
        }
        if self.expected > 0 {
            line(
                "delivered / expected",
                format!("{} / {}", fmt_int(self.delivered), fmt_int(self.expected)),
            );
            line("lost", fmt_int(self.lost));
        }
        if let Some(r) = self.delivered_per_sec {
            line("delivered/s", fmt_int(r.round() as u64));
        }
        if let Some(r) = self.requests_per_sec {
            line("requests/s", fmt_int(r.round() as u64));
        }
        if let Some(r) = self.achieved_rate {
            line("achieved rate/s", fmt_int(r.round() as u64));
        }
        if let Some(l) = &self.latency_us {
            line(
                "latency µs",
                format!(
                    "p50 {} p90 {} p95 {} p99 {} p99.9 {} max {} (n {})",
                    fmt_us(l.p50),
                    fmt_us(l.p90),
                    fmt_us(l.p95),
                    fmt_us(l.p99),
                    fmt_us(l.p999),
                    fmt_us(l.max),
                    fmt_int(l.count)
                ),
            );
        }
        if let Some(g) = &self.registry {
            line(
                "instances",
                format!(
                    "{} registered of {} in {:.2} s",
                    fmt_int(g.registered),
                    fmt_int(g.instances),
                    g.register_s
                ),
            );
            line(
                "config changes",
                format!(
                    "{} applied of {}",
                    fmt_int(g.changes_applied),
                    fmt_int(g.changes)
                ),
            );
            if let Some(l) = &g.put_latency_us {
                line(
                    "config PUT µs",
                    format!(
                        "p50 {} p99 {} max {}",
                        fmt_us(l.p50),
                        fmt_us(l.p99),
                        fmt_us(l.max)
                    ),
                );
            }
        }
        if let Some(a) = &self.api {
            line(
                "status requests",
                format!(
                    "{} answered, {} failed of {} in {:.3} s",
                    fmt_int(a.answered),
                    fmt_int(a.failed),
                    fmt_int(a.requests),
                    a.window_s
                ),
            );
            line(
                "load in that window",
                format!(
                    "{} deliveries (whole load run: {} delivered/s)",
                    fmt_int(a.delivered_in_window),
                    a.load_delivered_per_sec
                        .map_or_else(|| "—".to_owned(), |r| fmt_int(r.round() as u64))
                ),
            );
        }
        if let Some(v) = &self.vs_round_robin {
            line(
                "round-robin run",
                format!(
                    "p99 {} µs, {} req/s",
                    fmt_us(v.rr_p99_us),
                    fmt_int(v.rr_requests_per_sec.round() as u64)
                ),
            );
            line(
                "round-robin ÷ load",
                format!(
                    "p99 ×{:.2}; req/s load ÷ round-robin ×{:.3}",
                    v.p99_ratio, v.requests_per_sec_ratio
                ),
            );
        }
        if let Some(l) = &self.send_lag_us {
            line(
                "publisher lag µs",
                format!(
                    "p50 {} p99 {} p99.9 {} max {}",
                    fmt_us(l.p50),
                    fmt_us(l.p99),
                    fmt_us(l.p999),
                    fmt_us(l.max)
                ),
            );
        }
        if let Some(c) = &self.conns {
            line(
                "connections",
                format!(
                    "{} connected, {} answering of {} (opened in {:.1} s)",
                    fmt_int(c.connected),
                    fmt_int(c.answering),
                    fmt_int(c.target),
                    c.connect_s
                ),
            );
            line(
                "pings",
                format!(
                    "{} ok, {} failed",
                    fmt_int(c.pings_ok),
                    fmt_int(c.pings_failed)
                ),
            );
            if let (Some(b), Some(w)) = (c.broker_rss_before_kib, c.broker_rss_kib) {
                line(
                    "broker RSS",
                    format!(
                        "{} before, {} with connections ({:.1} KiB per connection)",
                        fmt_kib(b),
                        fmt_kib(w),
                        c.broker_rss_per_conn_kib.unwrap_or(0.0)
                    ),
                );
            }
        }
        if let Some(c) = self.broker_cpu_s {
            let per = self
                .broker_cpu_s_per_m_msgs
                .map_or(String::new(), |p| format!(" ({p:.3} s per M msgs in+out)"));
            line("broker CPU", format!("{c:.3} s{per}"));
        }
        if let Some(r) = self.broker_peak_rss_kib {
            line("broker peak RSS", fmt_kib(r));
        }
        if let Some(c) = self.client_cpu_s {
            line("harness CPU", format!("{c:.3} s"));
        }
        if let Some(p) = &self.placement {
            line("shards", p.clone());
        }
        if let Some(r) = self.routing {
            line("broker --routing", r.to_owned());
        }
        if let (Some(i), Some(s)) = (self.host_idle_pct, self.host_steal_pct) {
            line("host idle / steal", format!("{i:.1}% / {s:.2}%"));
        }
        out.join("\n")
    }
}

/// Describes which shard each group of clients landed on: `pub [1] sub [0] of 2`.
pub fn placement(groups: &[(&str, &[agentwire_client::Client])]) -> String {
    let mut parts = Vec::new();
    let mut count = 0;
    for (name, clients) in groups {
        if clients.is_empty() {
            continue;
        }
        let ids: Vec<String> = clients
            .iter()
            .map(|c| {
                count = c.server_info().shard_count;
                c.server_info().shard_id.to_string()
            })
            .collect();
        parts.push(format!("{name} [{}]", ids.join(",")));
    }
    format!("{} of {count}", parts.join(" "))
}

/// The date (UTC) and machine, for the header of a suite or ci run.
pub fn environment() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, v)| v.trim())
        .to_owned();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{} UTC, {cpus} CPUs ({model}), {:.1} GiB RAM, Linux {}",
        utc_now(),
        mem_kib as f64 / (1024.0 * 1024.0),
        kernel.trim()
    )
}

/// Now as `YYYY-MM-DD HH:MM:SS` (UTC), from the system clock.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// An integer with thousands separators: `3,000,000`.
pub fn fmt_int(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate, compact: `3.02 M`, `812 k`, `950`.
pub fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M", r / 1e6)
    } else if r >= 1e4 {
        format!("{:.0} k", r / 1e3)
    } else if r >= 1e3 {
        format!("{:.1} k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

/// Microseconds, with precision where it matters.
pub fn fmt_us(us: f64) -> String {
    if us >= 100.0 {
        fmt_int(us.round() as u64)
    } else {
        format!("{us:.1}")
    }
}

/// KiB as MiB with one decimal.
pub fn fmt_kib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands() {
        assert_eq!(fmt_int(0), "0");
        assert_eq!(fmt_int(999), "999");
        assert_eq!(fmt_int(1000), "1,000");
        assert_eq!(fmt_int(3_000_000), "3,000,000");
    }

    #[test]
    fn calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn ok_follows_loss() {
        let mut r = RunReport::new("pubsub", serde_json::json!({}));
        r.expected = 10;
        r.delivered = 9;
        r.lost = 1;
        r.finish();
        assert!(!r.ok);
        assert!(r.errors[0].contains("lost"));
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).expect("valid JSON");
        assert_eq!(v["lost"], 1);
        assert!(v["latency_us"].is_null());
    }
}
