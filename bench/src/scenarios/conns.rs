//! `conns`: N concurrent client connections held for a while, each pinging (`Client::flush`,
//! a PING answered by a PONG) once a second, spread evenly over the second.
//!
//! Figures: the broker's resident set before any connection (a fresh broker) and the largest
//! one sampled once a second while all are open, the difference per connection, every ping's
//! round trip in an HDR histogram (`latency_us`), and how many connections answered every ping.
//! The run fails unless every connection connected and answered every ping.
//!
//! The client connections use small buffers (4 KiB reads, 64 KiB write limit): they only ping.
//! This process raises its own open-file limit at start (see `broker_proc`), and a broker it
//! starts inherits that limit.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use agentwire_client::Client;
use anyhow::{bail, Result};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{join_all, Env};
use crate::broker_proc::Window;
use crate::latency::Latencies;
use crate::progress::{Counter, Progress};
use crate::report::{fmt_int, ConnsFigures, RunReport};

/// Connection attempts in flight at once.
const CONNECT_PARALLEL: usize = 128;
/// Bound on one connection's TCP connect + handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one ping.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Interval between one connection's pings.
const PING_EVERY: Duration = Duration::from_secs(1);

/// Parameters of `conns`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct ConnsParams {
    /// Client connections to open and hold.
    #[arg(long, default_value_t = 1000)]
    pub conns: u64,
    /// Seconds to hold them, pinging each once a second.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
}

impl ConnsParams {
    /// Checks the parameters.
    ///
    /// # Errors
    /// A sentence naming the bad parameter.
    pub fn validate(&self) -> Result<()> {
        if self.conns == 0 || self.conns > 100_000 {
            bail!("--conns must be 1..=100000");
        }
        if !(self.duration >= 1.0 && self.duration <= 3600.0) {
            bail!("--duration must be 1..=3600 seconds");
        }
        Ok(())
    }
}

/// Runs `conns`.
///
/// # Errors
/// Only for set-up failures that leave nothing to report; connection failures are counted.
pub async fn run(p: &ConnsParams, env: &Env<'_>) -> Result<RunReport> {
    let mut report = RunReport::new("conns", p);
    let mut fig = ConnsFigures {
        target: p.conns,
        ..ConnsFigures::default()
    };
    let rss_now = || env.process.and_then(|b| b.sample().ok()).map(|s| s.rss_kib);
    fig.broker_rss_before_kib = rss_now();

    // Open every connection, a bounded number at a time.
    let opened = Arc::new(Counter::default());
    let o = opened.clone();
    let progress = Progress::start(env.label, "connections", p.conns, move || o.get());
    let connect_start = Instant::now();
    let gate = Arc::new(Semaphore::new(CONNECT_PARALLEL));
    let mut connecting = JoinSet::new();
    for i in 0..p.conns {
        let (gate, addr, opened) = (gate.clone(), env.addr.to_owned(), opened.clone());
        let opts = env.options();
        connecting.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let r = opts
                .name(format!("bench-conn-{i}"))
                .connect_timeout(CONNECT_TIMEOUT)
                .request_timeout(PING_TIMEOUT)
                .read_buffer_size(4096)
                .write_buffer_limit(64 << 10)
                .connect(&addr)
                .await;
            if r.is_ok() {
                opened.add(1);
            }
            r
        });
    }
    let budget = CONNECT_TIMEOUT * (p.conns.div_ceil(CONNECT_PARALLEL as u64) as u32 + 1);
    let (results, missing) = join_all(&mut connecting, budget).await;
    fig.connect_s = connect_start.elapsed().as_secs_f64();
    progress.finish();
    let mut clients = Vec::with_capacity(results.len());
    let mut first_error = None;
    for r in results {
        match r {
            Ok(c) => clients.push(c),
            Err(e) => {
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    fig.connected = clients.len() as u64;
    let failed = p.conns - fig.connected;
    if failed > 0 {
        report.error(format!(
            "{} of {} connections failed ({missing} timed out); first error: {}",
            fmt_int(failed),
            fmt_int(p.conns),
            first_error.as_deref().unwrap_or("none")
        ));
    }

    // Hold them: each pings once a second, the connections spread evenly over the second.
    let hold = Duration::from_secs_f64(p.duration);
    let lat = Arc::new(Mutex::new(Latencies::new()));
    let pinged = Arc::new(Counter::default());
    let pg = pinged.clone();
    let expected_pings = fig.connected * (p.duration.floor().max(1.0) as u64);
    let progress = Progress::start(env.label, "pings", expected_pings, move || pg.get());
    let window = Window::begin(env.process);
    let start = tokio::time::Instant::now();
    let n = clients.len().max(1) as u32;
    let mut pingers = JoinSet::new();
    for (i, c) in clients.iter().enumerate() {
        let offset = PING_EVERY * i as u32 / n;
        pingers.spawn(ping_task(
            c.clone(),
            start + offset,
            start + hold,
            lat.clone(),
            pinged.clone(),
        ));
    }
    let mut rss_max = rss_now();
    let sampler_end = start + hold;
    while tokio::time::Instant::now() < sampler_end {
        tokio::time::sleep(Duration::from_secs(1).min(sampler_end - tokio::time::Instant::now()))
            .await;
        if let Some(r) = rss_now() {
            rss_max = Some(rss_max.map_or(r, |m| m.max(r)));
        }
    }
    let (outcomes, missing) = join_all(&mut pingers, PING_TIMEOUT * 2).await;
    let usage = window.end(env.process);
    progress.finish();
    if missing > 0 {
        report.error(format!("{missing} ping task(s) did not finish"));
    }
    let mut ping_error = None;
    for o in &outcomes {
        fig.pings_ok += o.ok;
        fig.pings_failed += o.failed;
        if o.failed == 0 && o.ok > 0 {
            fig.answering += 1;
        }
        if ping_error.is_none() {
            ping_error.clone_from(&o.error);
        }
    }
    if fig.answering < p.conns {
        report.error(format!(
            "{} of {} connections answered every ping ({} pings failed{})",
            fmt_int(fig.answering),
            fmt_int(p.conns),
            fmt_int(fig.pings_failed),
            ping_error.map_or(String::new(), |e| format!("; first: {e}"))
        ));
    }
    fig.broker_rss_kib = rss_max;
    if let (Some(before), Some(with)) = (fig.broker_rss_before_kib, rss_max) {
        if fig.connected > 0 {
            fig.broker_rss_per_conn_kib =
                Some(with.saturating_sub(before) as f64 / fig.connected as f64);
        }
    }
    report.elapsed_s = hold.as_secs_f64();
    report.latency_us = lat.lock().unwrap_or_else(PoisonError::into_inner).summary();
    report.conns = Some(fig);
    report.set_usage(&usage);

    // Close them all, a bounded number at a time.
    let mut closing = JoinSet::new();
    for chunk in clients.chunks(1024) {
        let chunk: Vec<Client> = chunk.to_vec();
        closing.spawn(async move {
            for c in chunk {
                let _ = c.close().await;
            }
        });
    }
    let _ = join_all(&mut closing, Duration::from_secs(30)).await;
    Ok(report)
}

/// What one connection's pings did.
struct PingOutcome {
    ok: u64,
    failed: u64,
    error: Option<String>,
}

/// Pings at `first`, then once a second, while before `end`.
async fn ping_task(
    client: Client,
    first: tokio::time::Instant,
    end: tokio::time::Instant,
    lat: Arc<Mutex<Latencies>>,
    pinged: Arc<Counter>,
) -> PingOutcome {
    let mut out = PingOutcome {
        ok: 0,
        failed: 0,
        error: None,
    };
    let mut at = first;
    while at < end {
        tokio::time::sleep_until(at).await;
        let t0 = Instant::now();
        match client.flush().await {
            Ok(()) => {
                let d = t0.elapsed();
                lat.lock().unwrap_or_else(PoisonError::into_inner).record(d);
                out.ok += 1;
                pinged.add(1);
            }
            Err(e) => {
                out.failed += 1;
                out.error.get_or_insert_with(|| e.to_string());
            }
        }
        at += PING_EVERY;
    }
    out
}
