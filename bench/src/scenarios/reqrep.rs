//! `reqrep`: R echo repliers (R > 1: one queue group) and C requester connections, each with
//! exactly one request in flight (`Client::request` with a deadline).
//!
//! Definitions (as the NATS reference): every requester first makes `--warmup` unrecorded
//! requests (all at once); then N requests in total are split over the requesters and every
//! round trip (request sent → reply received) is recorded in an HDR histogram;
//! `requests_per_sec` = completed requests / (start → the last requester finished). The broker
//! moves 4 messages per request (request in, to the replier, reply in, to the requester), which
//! is what `broker_cpu_s_per_m_msgs` divides by.
//!
//! `--slow-replier-ms N` makes replier 0 a slow member: it takes its requests one at a time and
//! waits N ms (a tokio sleep, so about N + 1 ms: the timer's granularity) before answering each.
//! With `--repliers R > 1` that is one slow member of the queue group: under round-robin routing
//! every R-th request waits for it, under load-aware routing the broker should steer around it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentwire_client::{Bytes, Client, Subscriber};
use anyhow::{bail, Result};
use serde::Serialize;
use tokio::sync::{watch, Barrier};
use tokio::task::JoinSet;

use super::{join_all, split, Env};
use crate::broker_proc::Window;
use crate::latency::Latencies;
use crate::progress::{self, Counter, Progress};
use crate::report::{self, fmt_int, RunReport};

/// The subject the repliers serve.
const SUBJECT: &str = "bench.echo";
/// Queue group of the repliers when there are several.
const QUEUE: &str = "echo";
/// Deadline of one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Parameters of `reqrep`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct ReqRepParams {
    /// Requester connections, each with one request in flight.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Payload bytes of each request (echoed back).
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Recorded requests in total, over all requesters.
    #[arg(long, default_value_t = 50_000)]
    pub requests: u64,
    /// Echo replier connections (more than 1: one queue group).
    #[arg(long, default_value_t = 1)]
    pub repliers: usize,
    /// Unrecorded warm-up requests per requester.
    #[arg(long, default_value_t = 2000)]
    pub warmup: u64,
    /// Replier 0 waits this many ms (tokio sleep) before answering each request, one request
    /// at a time (0: no slow replier).
    #[arg(long, default_value_t = 0)]
    pub slow_replier_ms: u64,
}

impl ReqRepParams {
    /// Checks the parameters.
    ///
    /// # Errors
    /// A sentence naming the bad parameter.
    pub fn validate(&self) -> Result<()> {
        if self.clients == 0 {
            bail!("--clients must be at least 1");
        }
        if self.repliers == 0 {
            bail!("--repliers must be at least 1");
        }
        if self.requests == 0 {
            bail!("--requests must be at least 1");
        }
        if self.slow_replier_ms > 4000 {
            bail!("--slow-replier-ms must be at most 4000 (requests time out after 5 s)");
        }
        Ok(())
    }
}

/// Runs `reqrep`.
///
/// # Errors
/// When a connection or subscription cannot be set up.
pub async fn run(p: &ReqRepParams, env: &Env<'_>) -> Result<RunReport> {
    let mut report = RunReport::new("reqrep", p);

    let mut replier_clients = Vec::with_capacity(p.repliers);
    let mut repliers = JoinSet::new();
    for i in 0..p.repliers {
        let c = env.connect(&format!("bench-replier-{i}")).await?;
        let s = if p.repliers > 1 {
            c.queue_subscribe(SUBJECT, QUEUE).await?
        } else {
            c.subscribe(SUBJECT).await?
        };
        c.flush().await?;
        let delay =
            (i == 0 && p.slow_replier_ms > 0).then(|| Duration::from_millis(p.slow_replier_ms));
        repliers.spawn(echo_task(c.clone(), s, delay));
        replier_clients.push(c);
    }

    let payload = Bytes::from(vec![0x5a_u8; p.size]);
    let counts = split(p.requests, p.clients);
    let ready = Arc::new(Barrier::new(p.clients + 1));
    let (go_tx, go_rx) = watch::channel(false);
    let mut requesters = JoinSet::new();
    let mut counters = Vec::with_capacity(p.clients);
    let mut requester_clients = Vec::with_capacity(p.clients);
    for (i, &n) in counts.iter().enumerate() {
        let c = env.connect(&format!("bench-requester-{i}")).await?;
        requester_clients.push(c.clone());
        let counter = Arc::new(Counter::default());
        counters.push(counter.clone());
        requesters.spawn(request_task(Requester {
            client: c,
            payload: payload.clone(),
            warmup: p.warmup,
            count: n,
            ready: ready.clone(),
            go: go_rx.clone(),
            counter,
        }));
    }

    report.placement = Some(report::placement(&[
        ("requester", &requester_clients),
        ("replier", &replier_clients),
    ]));
    drop(requester_clients);

    // Warm-up runs in the tasks; the window starts when all of them are done with it.
    ready.wait().await;
    let c = counters.clone();
    let progress = Progress::start(env.label, "requests", p.requests, move || progress::sum(&c));
    let window = Window::begin(env.process);
    let start = Instant::now();
    go_tx.send_replace(true);
    let (outcomes, missing) = join_all(&mut requesters, Duration::from_secs(3600)).await;
    let end = Instant::now();
    let usage = window.end(env.process);
    progress.finish();
    if missing > 0 {
        report.error(format!("{missing} requester task(s) did not finish"));
    }

    let mut lat = Latencies::new();
    let mut done = 0u64;
    let mut bad_replies = 0u64;
    for o in &outcomes {
        lat.merge(&o.latencies);
        done += o.done;
        bad_replies += o.bad_replies;
        if let Some(e) = &o.error {
            report.error(format!("requester: {e}"));
        }
    }
    if done < p.requests {
        report.error(format!(
            "{} of {} requests completed",
            fmt_int(done),
            fmt_int(p.requests)
        ));
    }
    if bad_replies > 0 {
        report.error(format!("{bad_replies} replies with a wrong payload size"));
    }
    for c in &replier_clients {
        let _ = c.close().await;
    }
    let (echoes, _) = join_all(&mut repliers, Duration::from_secs(10)).await;
    for e in echoes.into_iter().flatten() {
        report.error(format!("replier: {e}"));
    }

    let elapsed = (end - start).as_secs_f64().max(1e-9);
    report.elapsed_s = elapsed;
    report.published = done;
    report.requests_per_sec = Some(done as f64 / elapsed);
    report.latency_us = lat.summary();
    report.msgs_in = 2 * done;
    report.msgs_out = 2 * done;
    report.set_usage(&usage);
    for o in &outcomes {
        let _ = o.client.close().await;
    }
    Ok(report)
}

/// Answers every request with its own payload until the subscription ends, after `delay` if
/// given (requests are taken one at a time, so a slow replier's requests queue up). Returns the
/// first error, if publishing a reply failed.
async fn echo_task(client: Client, mut sub: Subscriber, delay: Option<Duration>) -> Option<String> {
    while let Some(m) = sub.next().await {
        if m.reply.is_none() {
            continue;
        }
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        if let Err(e) = client.respond(&m, m.payload.clone()).await {
            return (!client.is_closed()).then(|| format!("reply: {e}"));
        }
    }
    None
}

/// One requester's setup.
struct Requester {
    client: Client,
    payload: Bytes,
    warmup: u64,
    count: u64,
    ready: Arc<Barrier>,
    go: watch::Receiver<bool>,
    counter: Arc<Counter>,
}

/// What one requester measured.
struct ReqOutcome {
    client: Client,
    latencies: Latencies,
    done: u64,
    bad_replies: u64,
    error: Option<String>,
}

/// Warm-up, wait for the start, then `count` recorded requests one after the other. Stops at
/// the first failed request.
async fn request_task(r: Requester) -> ReqOutcome {
    let Requester {
        client,
        payload,
        warmup,
        count,
        ready,
        mut go,
        counter,
    } = r;
    let mut out = ReqOutcome {
        client,
        latencies: Latencies::new(),
        done: 0,
        bad_replies: 0,
        error: None,
    };
    for i in 0..warmup {
        if let Err(e) = out
            .client
            .request(SUBJECT, payload.clone(), REQUEST_TIMEOUT)
            .await
        {
            out.error = Some(format!("warm-up request #{i}: {e}"));
            break;
        }
    }
    ready.wait().await;
    if out.error.is_some() {
        return out;
    }
    if go.wait_for(|&v| v).await.is_err() {
        out.error = Some("the run ended before the start".into());
        return out;
    }
    for i in 0..count {
        let t0 = Instant::now();
        match out
            .client
            .request(SUBJECT, payload.clone(), REQUEST_TIMEOUT)
            .await
        {
            Ok(m) => {
                out.latencies.record(t0.elapsed());
                if m.payload.len() != payload.len() {
                    out.bad_replies += 1;
                }
                out.done += 1;
                if i % 64 == 63 {
                    counter.set(out.done);
                }
            }
            Err(e) => {
                out.error = Some(format!("request #{i}: {e}"));
                break;
            }
        }
    }
    counter.set(out.done);
    out
}
