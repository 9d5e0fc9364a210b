//! `apistatus`: how fast the admin API answers while the data plane is busy.
//!
//! A pubsub 1→1 load (`--load-size` 128 B, at most `--load-msgs` messages: the `pubsub`
//! scenario itself, with all its checks) runs in the background. Once it has delivered its first
//! [`WARM_DELIVERIES`] messages, one thread sends `--requests` `GET /api/v1/system/status` one
//! after the other over one keep-alive `ureq` agent (made fresh for the run; its first request
//! opens the connection and is recorded like the others), request i starting no earlier than
//! i × `--interval-us` (1,000 µs: a poller, about 1,000 requests per second, so the window
//! lasts long enough to measure the data plane; 0: back to back), recording each round trip
//! (request sent → whole answer read, checked to be a JSON object) in an HDR histogram. Then
//! the publishers are told to stop and the load run finishes as usual: every message published
//! must arrive, in order, once.
//!
//! Figures: `latency_us` = the status round trips; `delivered_per_sec` = the load's deliveries
//! between the first status request and the last answer, divided by that window (so it is the
//! data plane's rate while the API is being asked, not over the whole load run); `api` = counts,
//! the window, and the load run's own delivered rate. The run fails if a status request fails,
//! if any load message is lost, or if the load ran out (`--load-msgs`) before the last answer.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde::Serialize;

use super::pubsub::{self, LoadProbe, PubSubParams};
use super::Env;
use crate::admin_api::AdminApi;
use crate::latency::Latencies;
use crate::report::{fmt_int, ApiFigures, RunReport};

/// Deliveries the load makes before the first status request (it is past its start-up then).
pub const WARM_DELIVERIES: u64 = 100_000;
/// How long the load has to reach [`WARM_DELIVERIES`].
const LOAD_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on all the status requests together; the rest count as failed.
const STATUS_DEADLINE: Duration = Duration::from_secs(120);

/// Parameters of `apistatus`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct ApiStatusParams {
    /// Status requests, one after the other, each recorded.
    #[arg(long, default_value_t = 2000)]
    pub requests: u64,
    /// Most messages the background pubsub 1→1 load publishes (it stops as soon as the status
    /// requests are done; it must not run out before).
    #[arg(long, default_value_t = 50_000_000)]
    pub load_msgs: u64,
    /// Payload bytes of the load's messages.
    #[arg(long, default_value_t = 128)]
    pub load_size: usize,
    /// Request i starts no earlier than i × this many µs after the first (0: back to back).
    #[arg(long, default_value_t = 1000)]
    pub interval_us: u64,
}

impl ApiStatusParams {
    /// Checks the parameters.
    ///
    /// # Errors
    /// A sentence naming the bad parameter.
    pub fn validate(&self) -> Result<()> {
        if self.requests == 0 || self.requests > 1_000_000 {
            bail!("--requests must be 1..=1000000");
        }
        if self.requests.saturating_mul(self.interval_us) > 100_000_000 {
            bail!("--requests × --interval-us must be at most 100 s");
        }
        if self.load_msgs <= WARM_DELIVERIES {
            bail!("--load-msgs must be more than {WARM_DELIVERIES}");
        }
        self.load().validate()
    }

    /// The background load.
    fn load(&self) -> PubSubParams {
        PubSubParams {
            pubs: 1,
            subs: 1,
            queue: false,
            size: self.load_size,
            msgs: self.load_msgs,
        }
    }
}

/// Runs `apistatus`.
///
/// # Errors
/// When the admin API is not known or the load cannot be set up.
pub async fn run(p: &ApiStatusParams, env: &Env<'_>) -> Result<RunReport> {
    let api = env.admin_api()?;
    let load = p.load();
    let probe = Arc::new(LoadProbe::default());
    let (load_report, status) = tokio::join!(
        pubsub::run_probed(&load, env, Some(probe.clone())),
        status_phase(
            api,
            p.requests,
            Duration::from_micros(p.interval_us),
            probe.clone()
        ),
    );
    let mut report = load_report?;
    report.scenario = "apistatus";
    report.parameters = serde_json::to_value(p).unwrap_or(serde_json::Value::Null);
    let load_rate = report.delivered_per_sec;
    report.delivered_per_sec = None;
    let mut fig = ApiFigures {
        requests: p.requests,
        load_delivered_per_sec: load_rate,
        ..ApiFigures::default()
    };
    match status {
        Err(e) => {
            fig.failed = p.requests;
            report.error(e);
        }
        Ok(s) => {
            fig.answered = s.answered;
            fig.failed = s.failed;
            fig.window_s = s.window.as_secs_f64();
            fig.delivered_in_window = s.delivered_in_window;
            report.elapsed_s = fig.window_s;
            report.latency_us = s.latencies.summary();
            if fig.window_s > 0.0 && s.delivered_in_window > 0 {
                report.delivered_per_sec = Some(s.delivered_in_window as f64 / fig.window_s);
            }
            if s.failed > 0 {
                report.error(format!(
                    "{} of {} status requests failed; first: {}",
                    fmt_int(s.failed),
                    fmt_int(p.requests),
                    s.first_error.as_deref().unwrap_or("?")
                ));
            }
            if s.load_ran_out {
                report.error(format!(
                    "the load ({} messages) ended before the last status answer: raise \
                     --load-msgs",
                    fmt_int(p.load_msgs)
                ));
            }
        }
    }
    report.api = Some(fig);
    Ok(report)
}

/// What the status requests measured.
#[derive(Debug)]
struct StatusOutcome {
    latencies: Latencies,
    answered: u64,
    failed: u64,
    first_error: Option<String>,
    /// First request sent → last answer read.
    window: Duration,
    /// Load deliveries within `window`.
    delivered_in_window: u64,
    /// The load's publishers had finished before the last answer.
    load_ran_out: bool,
}

/// Waits until the load is running, makes the status requests on the blocking pool, then stops
/// the load (whatever happened).
async fn status_phase(
    api: AdminApi,
    requests: u64,
    interval: Duration,
    probe: Arc<LoadProbe>,
) -> Result<StatusOutcome, String> {
    let outcome = async {
        let deadline = tokio::time::Instant::now() + LOAD_START_TIMEOUT;
        while probe.delivered.load(Ordering::Relaxed) < WARM_DELIVERIES {
            if probe.publishing_done.load(Ordering::Acquire) {
                return Err("the load ended before it was running".to_owned());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "the load did not deliver {} messages within {} s",
                    fmt_int(WARM_DELIVERIES),
                    LOAD_START_TIMEOUT.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let p = probe.clone();
        tokio::task::spawn_blocking(move || status_loop(&api, requests, interval, &p))
            .await
            .map_err(|e| format!("status request thread failed: {e}"))
    }
    .await;
    probe.stop.store(true, Ordering::Relaxed);
    outcome
}

/// `requests` status requests, one after the other, request i not before i × `interval`,
/// within [`STATUS_DEADLINE`].
fn status_loop(
    api: &AdminApi,
    requests: u64,
    interval: Duration,
    probe: &LoadProbe,
) -> StatusOutcome {
    let mut out = StatusOutcome {
        latencies: Latencies::new(),
        answered: 0,
        failed: 0,
        first_error: None,
        window: Duration::ZERO,
        delivered_in_window: 0,
        load_ran_out: false,
    };
    let d0 = probe.delivered.load(Ordering::Relaxed);
    let start = Instant::now();
    let deadline = start + STATUS_DEADLINE;
    for i in 0..requests {
        if Instant::now() >= deadline {
            out.failed += requests - i;
            out.first_error.get_or_insert_with(|| {
                format!(
                    "not sent: the requests took longer than {} s",
                    STATUS_DEADLINE.as_secs()
                )
            });
            break;
        }
        if let Some(due) = u32::try_from(i)
            .ok()
            .and_then(|i| interval.checked_mul(i))
            .map(|d| start + d)
        {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let t0 = Instant::now();
        match api.status() {
            Ok(()) => {
                out.latencies.record(t0.elapsed());
                out.answered += 1;
            }
            Err(e) => {
                out.failed += 1;
                out.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    out.window = start.elapsed();
    out.delivered_in_window = probe.delivered.load(Ordering::Relaxed).saturating_sub(d0);
    out.load_ran_out = probe.publishing_done.load(Ordering::Acquire);
    out
}
