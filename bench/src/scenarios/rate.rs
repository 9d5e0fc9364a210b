//! `rate`: open-loop offered load from one publisher to one subscriber, latency measured from
//! each message's *intended* send time to its delivery.
//!
//! Message i is due at `i / rate` seconds after a base `Instant` of this process, and carries
//! that intended time (nanoseconds since the base, little-endian, first 8 bytes). The publisher
//! is a dedicated OS thread: it sleeps until the next message is due but at least `--batch-us`
//! (100 µs) after its last wake-up (`thread::sleep`: tokio's 1 ms timer would add up to 1 ms
//! to every latency by itself), publishes every message that is due, and sleeps again. If it falls behind it sends at once but keeps
//! the intended times, so a stall shows up in the latency of every message it delayed (no
//! coordinated omission). At least once per millisecond of sending it also starts a flush
//! (PING) in the background, without waiting for it, so messages leave even if the client
//! coalesces writes, and the publisher never waits for the broker.
//!
//! Figures: latency percentiles (µs) of delivery time − intended time, `achieved_rate` = sent /
//! (base → last publish), `delivered_per_sec` = received / (base → last delivery), and loss
//! after waiting up to `--stall-timeout` without progress.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use agentwire_client::{Client, OutboundMessage, Subscriber};
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use tokio::task::JoinSet;

use super::{join_all, next_batch, Env};
use crate::broker_proc::Window;
use crate::latency::Latencies;
use crate::progress::{Counter, Progress};
use crate::report::{self, RunReport};

/// The subject of the offered load.
const SUBJECT: &str = "bench.rate";
/// How often the publisher starts a background flush while sending.
const FLUSH_EVERY: Duration = Duration::from_millis(1);
/// Most messages the subscriber takes per batch.
const BATCH: usize = 1024;

/// Parameters of `rate`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct RateParams {
    /// Offered load, messages per second.
    #[arg(long, default_value_t = 100_000)]
    pub rate: u64,
    /// Payload bytes per message (at least 8: the intended send time).
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Seconds of offered load.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Microseconds between the publisher's wake-ups: each sends every message due by then,
    /// so this bounds what batching adds to a message's latency (on average half of it).
    #[arg(long, default_value_t = 100)]
    pub batch_us: u64,
}

impl RateParams {
    /// Checks the parameters.
    ///
    /// # Errors
    /// A sentence naming the bad parameter.
    pub fn validate(&self) -> Result<()> {
        if self.rate == 0 || self.rate > 100_000_000 {
            bail!("--rate must be 1..=100000000 messages per second");
        }
        if self.size < 8 {
            bail!("--size must be at least 8 (the intended send time)");
        }
        if !(self.duration > 0.0 && self.duration <= 3600.0) {
            bail!("--duration must be more than 0 and at most 3600 seconds");
        }
        if self.batch_us == 0 || self.batch_us > 100_000 {
            bail!("--batch-us must be 1..=100000");
        }
        if self.total() == 0 {
            bail!("--rate × --duration must be at least one message");
        }
        Ok(())
    }

    /// Messages offered in total.
    pub fn total(&self) -> u64 {
        (self.rate as f64 * self.duration).round() as u64
    }
}

/// Runs `rate`.
///
/// # Errors
/// When a connection or subscription cannot be set up, or the publisher thread cannot start.
pub async fn run(p: &RateParams, env: &Env<'_>) -> Result<RunReport> {
    let mut report = RunReport::new("rate", p);
    let total = p.total();
    let sub_client = env.connect("bench-rate-sub").await?;
    let sub = sub_client.subscribe(SUBJECT).await?;
    sub_client.flush().await?;
    let pub_client = env.connect("bench-rate-pub").await?;
    report.placement = Some(report::placement(&[
        ("pub", std::slice::from_ref(&pub_client)),
        ("sub", std::slice::from_ref(&sub_client)),
    ]));

    let received = Arc::new(Counter::default());
    let sent_counter = Arc::new(Counter::default());
    let base = Instant::now();
    let mut tasks = JoinSet::new();
    tasks.spawn(receive_task(sub, base, total, received.clone()));

    let r = received.clone();
    let progress = Progress::start(env.label, "msgs", total, move || r.get());
    let window = Window::begin(env.process);
    let pacer = Pacer {
        client: pub_client.clone(),
        runtime: tokio::runtime::Handle::current(),
        base,
        rate: p.rate,
        total,
        size: p.size,
        batch: Duration::from_micros(p.batch_us),
        counter: sent_counter,
    };
    let thread = std::thread::Builder::new()
        .name("bench-rate-pub".into())
        .spawn(move || pacer.run())
        .context("cannot start the publisher thread")?;
    let paced = tokio::task::spawn_blocking(move || thread.join())
        .await
        .map_err(|e| anyhow!("publisher thread join: {e}"))?
        .map_err(|_| anyhow!("the publisher thread panicked"))?;
    if let Some(e) = &paced.error {
        report.error(format!("publisher: {e}"));
    }

    // Wait for the deliveries: all sent, or no progress for the stall timeout.
    let mut seen = received.get();
    let mut progress_at = Instant::now();
    while seen < paced.sent {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = received.get();
        if now != seen {
            seen = now;
            progress_at = Instant::now();
        } else if progress_at.elapsed() >= env.stall_timeout {
            report.error(format!(
                "no delivery for {:.0} s: gave up waiting (--stall-timeout)",
                env.stall_timeout.as_secs_f64()
            ));
            break;
        }
    }
    let usage = window.end(env.process);
    progress.finish();
    let _ = sub_client.close().await;
    let (mut tallies, missing) = join_all(&mut tasks, Duration::from_secs(10)).await;
    let Some(t) = tallies.pop() else {
        bail!("the subscriber task did not finish ({missing} missing)");
    };

    report.published = paced.sent;
    report.expected = paced.sent;
    report.delivered = t.received;
    report.lost = paced
        .sent
        .saturating_sub(t.received.saturating_sub(t.duplicates));
    report.duplicates = t.duplicates;
    report.out_of_order = t.out_of_order;
    if t.malformed > 0 {
        report.error(format!(
            "{} deliveries with a payload that is not ours",
            t.malformed
        ));
    }
    let send_window = (paced.finished_at - base).as_secs_f64().max(1e-9);
    report.achieved_rate = Some(paced.sent as f64 / send_window);
    report.published_per_sec = report.achieved_rate;
    if let Some(at) = t.last_at {
        report.delivered_per_sec = Some(t.received as f64 / (at - base).as_secs_f64().max(1e-9));
        report.elapsed_s = (at.max(paced.finished_at) - base).as_secs_f64();
    } else {
        report.elapsed_s = send_window;
    }
    report.latency_us = t.latencies.summary();
    report.send_lag_us = paced.lag.summary();
    report.msgs_in = paced.sent;
    report.msgs_out = t.received;
    report.set_usage(&usage);
    let _ = pub_client.close().await;
    Ok(report)
}

/// What the subscriber saw.
#[derive(Debug)]
struct RateTally {
    received: u64,
    duplicates: u64,
    out_of_order: u64,
    malformed: u64,
    latencies: Latencies,
    last_at: Option<Instant>,
}

/// Receives until `total` messages arrived or the stream ends, recording delivery − intended.
async fn receive_task(
    mut sub: Subscriber,
    base: Instant,
    total: u64,
    counter: Arc<Counter>,
) -> RateTally {
    let mut t = RateTally {
        received: 0,
        duplicates: 0,
        out_of_order: 0,
        malformed: 0,
        latencies: Latencies::new(),
        last_at: None,
    };
    // Intended times are strictly increasing (at most 10^8 messages per second).
    let mut last_intended: Option<u64> = None;
    while t.received < total {
        let got = next_batch(&mut sub, BATCH, |m| {
            let now = base.elapsed();
            t.received += 1;
            let Some(word) = m.payload.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
                t.malformed += 1;
                return;
            };
            let intended = u64::from_le_bytes(word);
            match last_intended {
                Some(l) if intended == l => t.duplicates += 1,
                Some(l) if intended < l => t.out_of_order += 1,
                _ => last_intended = Some(intended),
            }
            let now_ns = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
            t.latencies.record_ns(now_ns.saturating_sub(intended));
        })
        .await;
        if got.is_none() {
            break;
        }
        t.last_at = Some(Instant::now());
        counter.set(t.received);
    }
    t
}

/// The open-loop publisher, run on its own thread.
struct Pacer {
    client: Client,
    runtime: tokio::runtime::Handle,
    base: Instant,
    rate: u64,
    total: u64,
    size: usize,
    /// Least time between two wake-ups.
    batch: Duration,
    counter: Arc<Counter>,
}

/// What the publisher did.
struct Paced {
    sent: u64,
    /// Actual − intended hand-over time of every message.
    lag: Latencies,
    finished_at: Instant,
    error: Option<String>,
}

/// Intended send time of message `i` at `rate` messages per second, nanoseconds after the base.
fn intended_ns(rate: u64, i: u64) -> u64 {
    u64::try_from(u128::from(i) * 1_000_000_000 / u128::from(rate.max(1))).unwrap_or(u64::MAX)
}

/// How many of `total` messages are due `elapsed_ns` after the base (those whose intended time
/// is at or before it).
fn due_by(rate: u64, total: u64, elapsed_ns: u64) -> u64 {
    // Message i is due when floor(i·10⁹/rate) ≤ elapsed, i.e. i·10⁹ < (elapsed + 1)·rate.
    let due = ((u128::from(elapsed_ns) + 1) * u128::from(rate)).div_ceil(1_000_000_000);
    u64::try_from(due).unwrap_or(u64::MAX).min(total)
}

impl Pacer {
    fn intended_ns(&self, i: u64) -> u64 {
        intended_ns(self.rate, i)
    }

    fn due_by(&self, elapsed_ns: u64) -> u64 {
        due_by(self.rate, self.total, elapsed_ns)
    }

    fn run(self) -> Paced {
        let mut payload = vec![0u8; self.size];
        let flush_in_flight = Arc::new(AtomicBool::new(false));
        let flush_error: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let flush_every_ns = FLUSH_EVERY.as_nanos() as u64;
        let mut last_flush_ns = 0u64;
        let mut sent = 0u64;
        let mut error = None;
        let mut lag = Latencies::new();
        // Every pass sends at least one message (the loop sleeps until one is due), so it
        // runs at most `total` times.
        let mut woke = Instant::now();
        while sent < self.total {
            let now_ns = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let due = self.due_by(now_ns);
            if due > sent {
                let batch = self.runtime.block_on(async {
                    while sent < due {
                        let intended = self.intended_ns(sent);
                        lag.record_ns(now_ns.saturating_sub(intended));
                        payload[..8].copy_from_slice(&intended.to_le_bytes());
                        self.client
                            .publish_message(OutboundMessage::new(SUBJECT, &payload))
                            .await?;
                        sent += 1;
                    }
                    Ok::<(), agentwire_client::Error>(())
                });
                self.counter.set(sent);
                if let Err(e) = batch {
                    error = Some(format!("publish #{sent}: {e}"));
                    break;
                }
                if now_ns.saturating_sub(last_flush_ns) >= flush_every_ns
                    && !flush_in_flight.swap(true, Ordering::AcqRel)
                {
                    last_flush_ns = now_ns;
                    let (c, busy, err) = (
                        self.client.clone(),
                        flush_in_flight.clone(),
                        flush_error.clone(),
                    );
                    self.runtime.spawn(async move {
                        if let Err(e) = c.flush().await {
                            let mut slot = err.lock().unwrap_or_else(PoisonError::into_inner);
                            slot.get_or_insert_with(|| format!("flush: {e}"));
                        }
                        busy.store(false, Ordering::Release);
                    });
                }
                continue;
            }
            // Sleep until the next message is due, but at least until one batch interval
            // after the last wake-up.
            let next =
                (self.base + Duration::from_nanos(self.intended_ns(sent))).max(woke + self.batch);
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
            woke = Instant::now();
        }
        let finished_at = Instant::now();
        let flush_failed = flush_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        Paced {
            sent,
            lag,
            finished_at,
            error: error.or(flush_failed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_and_schedule() {
        let p = RateParams {
            rate: 100_000,
            size: 128,
            duration: 2.5,
            batch_us: 100,
        };
        assert_eq!(p.total(), 250_000);
        assert!(p.validate().is_ok());
        assert!(RateParams {
            size: 4,
            ..p.clone()
        }
        .validate()
        .is_err());
        assert!(RateParams {
            duration: 0.0,
            ..p.clone()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn intended_times_and_due_counts_agree() {
        // 100,000/s: one message every 10 µs; message 0 is due at once.
        assert_eq!(intended_ns(100_000, 0), 0);
        assert_eq!(intended_ns(100_000, 3), 30_000);
        assert_eq!(due_by(100_000, 1000, 0), 1);
        assert_eq!(due_by(100_000, 1000, 29_999), 3);
        assert_eq!(due_by(100_000, 1000, 30_000), 4);
        assert_eq!(due_by(100_000, 1000, u64::MAX), 1000);
        for i in 0..1000 {
            assert_eq!(due_by(7_919, u64::MAX, intended_ns(7_919, i)), i + 1);
        }
    }
}
