//! `pubsub`: P publisher connections share N messages; S subscriber connections each receive
//! all N (fan-out), or with `--queue` form one queue group that receives the N exactly once
//! between them. `--subs 0` measures publishing alone.
//!
//! Definitions (as the NATS and Zenoh references):
//! - subscribers are subscribed and flushed before publishing starts;
//! - `published_per_sec` = N / (first publish → the last publisher's `flush()` returned);
//! - `delivered_per_sec` = deliveries over all subscribers / (first publish → last delivery);
//! - expected deliveries = N·S (fan-out) or N (queue group); whatever has not arrived after
//!   `--stall-timeout` without progress is lost, and the run fails.
//!
//! Payload: the first 8 bytes (little-endian) are the publisher's index in the top 16 bits and
//! its message number in the low 48. Each subscriber keeps, per publisher, the next number it
//! may see (an earlier one is out of order) and a bitmap of every message seen (a repeat is a
//! duplicate), so loss is counted over distinct messages; for a queue group the members'
//! bitmaps are merged at the end, which also catches a message given to two members. Clock
//! reads and counter updates happen once per batch of ready messages, not per message.
//!
//! Another scenario can run this one as its background load ([`run_probed`] with a
//! [`LoadProbe`]): it sees the deliveries as they happen and can stop the publishers early; the
//! run then expects (and checks) exactly what was published.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentwire_client::{Client, OutboundMessage, Subscriber};
use anyhow::{bail, Result};
use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use super::{join_all, next_batch, split, Env};
use crate::broker_proc::Window;
use crate::progress::{self, Counter, Progress};
use crate::report::{self, RunReport};

/// The subject every publisher publishes on.
const SUBJECT: &str = "bench.pubsub";
/// The queue group name with `--queue`.
const QUEUE: &str = "bench";
/// Bits of the sequence word that hold the message number.
const SEQ_BITS: u32 = 48;
/// Most messages one batch of ready messages takes before the subscriber looks at the clock.
const BATCH: usize = 4096;
/// How long subscriber tasks get to end once their connections are closed.
const WIND_DOWN: Duration = Duration::from_secs(10);

/// Parameters of `pubsub`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct PubSubParams {
    /// Publisher connections, each its own task; the messages are split over them.
    #[arg(long, default_value_t = 1)]
    pub pubs: usize,
    /// Subscriber connections (0: publish only).
    #[arg(long, default_value_t = 1)]
    pub subs: usize,
    /// Make the subscribers one queue group (each message to one member) instead of fan-out.
    #[arg(long)]
    pub queue: bool,
    /// Payload bytes per message (at least 8: the sequence number).
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Messages published in total, over all publishers.
    #[arg(long, default_value_t = 1_000_000)]
    pub msgs: u64,
}

impl PubSubParams {
    /// Checks the parameters.
    ///
    /// # Errors
    /// A sentence naming the bad parameter.
    pub fn validate(&self) -> Result<()> {
        if self.pubs == 0 || self.pubs > usize::from(u16::MAX) {
            bail!("--pubs must be 1..=65535");
        }
        if self.size < 8 {
            bail!("--size must be at least 8 (the sequence number)");
        }
        if self.msgs == 0 || self.msgs >= 1 << SEQ_BITS {
            bail!("--msgs must be 1..2^48");
        }
        if self.queue && self.subs == 0 {
            bail!("--queue needs --subs of at least 1");
        }
        Ok(())
    }

    /// Deliveries expected over all subscribers.
    pub fn expected(&self) -> u64 {
        match (self.subs, self.queue) {
            (0, _) => 0,
            (_, true) => self.msgs,
            (s, false) => self.msgs.saturating_mul(s as u64),
        }
    }
}

/// A window onto a running pubsub load, for a scenario that uses it as background load.
#[derive(Debug, Default)]
pub struct LoadProbe {
    /// Deliveries over all subscribers so far (added once per batch of ready messages).
    pub delivered: AtomicU64,
    /// Set it to make the publishers stop before `--msgs` (checked every 1,024 messages).
    pub stop: AtomicBool,
    /// Set once every publisher has finished (or the run failed to start).
    pub publishing_done: AtomicBool,
}

/// Runs `pubsub`.
///
/// # Errors
/// When a connection or subscription cannot be set up.
pub async fn run(p: &PubSubParams, env: &Env<'_>) -> Result<RunReport> {
    run_probed(p, env, None).await
}

/// Runs `pubsub`, reporting progress to (and taking a stop from) `probe`, if given.
///
/// # Errors
/// When a connection or subscription cannot be set up.
pub async fn run_probed(
    p: &PubSubParams,
    env: &Env<'_>,
    probe: Option<Arc<LoadProbe>>,
) -> Result<RunReport> {
    let r = run_inner(p, env, probe.clone()).await;
    if let Some(probe) = &probe {
        probe.publishing_done.store(true, Ordering::Release);
    }
    r
}

async fn run_inner(
    p: &PubSubParams,
    env: &Env<'_>,
    probe: Option<Arc<LoadProbe>>,
) -> Result<RunReport> {
    let mut report = RunReport::new("pubsub", p);
    let counts = split(p.msgs, p.pubs);
    let layout = Arc::new(Layout::new(&counts));
    let mut expected = p.expected();
    let shared = Arc::new(Shared {
        received: AtomicU64::new(0),
        expected: AtomicU64::new(expected),
        done: Notify::new(),
        probe: probe.clone(),
    });

    // Subscribers first, each subscribed and flushed before anything is published.
    let mut sub_clients = Vec::with_capacity(p.subs);
    let mut subs = Vec::with_capacity(p.subs);
    for i in 0..p.subs {
        let c = env.connect(&format!("bench-sub-{i}")).await?;
        let s = if p.queue {
            c.queue_subscribe(SUBJECT, QUEUE).await?
        } else {
            c.subscribe(SUBJECT).await?
        };
        c.flush().await?;
        sub_clients.push(c);
        subs.push(s);
    }
    let mut pubs = Vec::with_capacity(p.pubs);
    for i in 0..p.pubs {
        pubs.push(env.connect(&format!("bench-pub-{i}")).await?);
    }
    report.placement = Some(report::placement(&[("pub", &pubs), ("sub", &sub_clients)]));

    let mut sub_tasks = JoinSet::new();
    let mut sub_counters = Vec::with_capacity(p.subs);
    for s in subs {
        let counter = Arc::new(Counter::default());
        sub_counters.push(counter.clone());
        let own_limit = (!p.queue).then_some(p.msgs);
        sub_tasks.spawn(subscribe_task(
            s,
            Tally::new(layout.clone()),
            counter,
            shared.clone(),
            own_limit,
        ));
    }
    let (go_tx, go_rx) = watch::channel(false);
    let mut pub_tasks = JoinSet::new();
    let mut pub_counters = Vec::with_capacity(p.pubs);
    for (i, (c, &n)) in pubs.into_iter().zip(&counts).enumerate() {
        let counter = Arc::new(Counter::default());
        pub_counters.push(counter.clone());
        pub_tasks.spawn(publish_task(
            c,
            i as u64,
            n,
            p.size,
            go_rx.clone(),
            counter,
            probe.clone(),
        ));
    }

    let progress = if p.subs > 0 {
        let c = sub_counters.clone();
        Progress::start(env.label, "msgs", expected, move || progress::sum(&c))
    } else {
        let c = pub_counters.clone();
        Progress::start(env.label, "msgs", p.msgs, move || progress::sum(&c))
    };

    let window = Window::begin(env.process);
    let start = Instant::now();
    go_tx.send_replace(true);

    // Publishers end by themselves: publishing and flushing are bounded by the client's
    // request timeout. The limit here is a backstop.
    let (outcomes, missing) = join_all(&mut pub_tasks, Duration::from_secs(3600)).await;
    if missing > 0 {
        report.error(format!("{missing} publisher task(s) did not finish"));
    }
    if let Some(probe) = &probe {
        probe.publishing_done.store(true, Ordering::Release);
    }
    let mut published = 0u64;
    let mut last_flush = start;
    for o in &outcomes {
        published += o.sent;
        last_flush = last_flush.max(o.flushed_at);
        if let Some(e) = &o.error {
            report.error(format!("publisher: {e}"));
        }
    }
    report.published = published;
    if published < p.msgs {
        // A publisher stopped early (its error is reported) or a probe stopped the load:
        // expect only what was published.
        expected = match (p.subs, p.queue) {
            (0, _) => 0,
            (_, true) => published,
            (s, false) => published.saturating_mul(s as u64),
        };
        shared.expected.store(expected, Ordering::Relaxed);
    }
    if outcomes.iter().all(|o| o.error.is_none()) && missing == 0 {
        report.published_per_sec = Some(published as f64 / secs(last_flush - start));
    }

    // Deliveries: until all arrived, or no progress for the stall timeout.
    if p.subs > 0 {
        let stalled = wait_deliveries(&shared, env.stall_timeout).await;
        if stalled {
            report.error(format!(
                "no delivery for {:.0} s: gave up waiting (--stall-timeout)",
                env.stall_timeout.as_secs_f64()
            ));
        }
    }
    let end_probe = Instant::now();
    let usage = window.end(env.process);
    progress.finish();

    // Every expected delivery is in (or the wait gave up): end the subscriptions.
    for c in &sub_clients {
        let _ = c.close().await;
    }
    let (tallies, missing) = join_all(&mut sub_tasks, WIND_DOWN).await;
    if missing > 0 {
        report.error(format!("{missing} subscriber task(s) did not finish"));
    }
    let mut last_delivery = None::<Instant>;
    for t in &tallies {
        if let Some(at) = t.last_at {
            last_delivery = Some(last_delivery.map_or(at, |l: Instant| l.max(at)));
        }
    }
    let received: u64 = tallies.iter().map(|t| t.received).sum();
    let distinct = if p.queue {
        Bitmap::union_count(tallies.iter().map(|t| &t.seen))
    } else {
        tallies.iter().map(|t| t.distinct).sum()
    };
    let malformed: u64 = tallies.iter().map(|t| t.malformed).sum();
    report.expected = expected;
    report.delivered = received;
    report.lost = expected.saturating_sub(distinct);
    report.duplicates = received.saturating_sub(malformed).saturating_sub(distinct);
    report.out_of_order = tallies.iter().map(|t| t.out_of_order).sum();
    if malformed > 0 {
        report.error(format!(
            "{malformed} deliveries with a payload that is not ours"
        ));
    }
    if let Some(at) = last_delivery {
        if received > 0 {
            report.delivered_per_sec = Some(received as f64 / secs(at - start));
        }
    }
    let end = last_delivery.unwrap_or(end_probe).max(last_flush);
    report.elapsed_s = secs(end - start);
    report.msgs_in = published;
    report.msgs_out = received;
    report.set_usage(&usage);
    for o in &outcomes {
        let _ = o.client.close().await;
    }
    Ok(report)
}

/// Seconds, never zero (a rate over an empty window would be infinite).
fn secs(d: Duration) -> f64 {
    d.as_secs_f64().max(1e-9)
}

/// Waits until every expected delivery is in; returns `true` if it gave up after `stall`
/// without progress.
async fn wait_deliveries(shared: &Shared, stall: Duration) -> bool {
    let mut seen = shared.received.load(Ordering::Relaxed);
    let mut progress_at = tokio::time::Instant::now();
    loop {
        if seen >= shared.expected.load(Ordering::Relaxed) {
            return false;
        }
        let notified = shared.done.notified();
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        let now = shared.received.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            progress_at = tokio::time::Instant::now();
        } else if progress_at.elapsed() >= stall {
            return true;
        }
    }
}

/// State shared by the subscriber tasks and the run.
#[derive(Debug)]
struct Shared {
    /// Deliveries over all subscribers (added once per batch).
    received: AtomicU64,
    /// Deliveries expected over all subscribers (lowered if a publisher stops early).
    expected: AtomicU64,
    /// Signalled when `received` reaches `expected`.
    done: Notify,
    /// Another scenario watching this run.
    probe: Option<Arc<LoadProbe>>,
}

/// Where each publisher's messages start in a bitmap of all N messages.
#[derive(Debug)]
struct Layout {
    /// Per publisher: (first bit, message count).
    ranges: Vec<(u64, u64)>,
    /// N.
    total: u64,
}

impl Layout {
    fn new(counts: &[u64]) -> Layout {
        let mut at = 0u64;
        let ranges = counts
            .iter()
            .map(|&n| {
                let r = (at, n);
                at += n;
                r
            })
            .collect();
        Layout { ranges, total: at }
    }
}

/// A fixed-size bit set.
#[derive(Debug)]
struct Bitmap(Vec<u64>);

impl Bitmap {
    fn new(bits: u64) -> Bitmap {
        Bitmap(vec![0; bits.div_ceil(64) as usize])
    }

    /// Sets bit `i` (in range: callers check); returns whether it was clear.
    #[inline]
    fn set(&mut self, i: u64) -> bool {
        let (w, b) = ((i / 64) as usize, i % 64);
        match self.0.get_mut(w) {
            Some(word) => {
                let was_clear = *word & (1 << b) == 0;
                *word |= 1 << b;
                was_clear
            }
            None => false,
        }
    }

    /// Number of bits set in the union of `maps` (all the same size).
    fn union_count<'a>(maps: impl Iterator<Item = &'a Bitmap>) -> u64 {
        let mut acc: Vec<u64> = Vec::new();
        for m in maps {
            if acc.len() < m.0.len() {
                acc.resize(m.0.len(), 0);
            }
            for (a, w) in acc.iter_mut().zip(&m.0) {
                *a |= w;
            }
        }
        acc.iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

/// What one subscriber saw.
#[derive(Debug)]
struct Tally {
    layout: Arc<Layout>,
    /// Deliveries.
    received: u64,
    /// Distinct messages among them.
    distinct: u64,
    /// Deliveries of a message older than one already seen from the same publisher.
    out_of_order: u64,
    /// Deliveries whose payload does not carry a valid sequence word.
    malformed: u64,
    /// Per publisher: the lowest message number that is still in order.
    next: Vec<u64>,
    /// Every message seen.
    seen: Bitmap,
    /// When the last batch of deliveries was taken.
    last_at: Option<Instant>,
}

impl Tally {
    fn new(layout: Arc<Layout>) -> Tally {
        Tally {
            next: vec![0; layout.ranges.len()],
            seen: Bitmap::new(layout.total),
            layout,
            received: 0,
            distinct: 0,
            out_of_order: 0,
            malformed: 0,
            last_at: None,
        }
    }

    /// Accounts for one delivered payload.
    #[inline]
    fn record(&mut self, payload: &[u8]) {
        self.received += 1;
        let Some(word) = payload.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
            self.malformed += 1;
            return;
        };
        let word = u64::from_le_bytes(word);
        let publisher = (word >> SEQ_BITS) as usize;
        let n = word & ((1 << SEQ_BITS) - 1);
        let (Some(&(first, count)), Some(next)) = (
            self.layout.ranges.get(publisher),
            self.next.get_mut(publisher),
        ) else {
            self.malformed += 1;
            return;
        };
        if n >= count {
            self.malformed += 1;
            return;
        }
        if self.seen.set(first + n) {
            self.distinct += 1;
            if n < *next {
                self.out_of_order += 1;
            } else {
                *next = n + 1;
            }
        }
    }
}

/// Receives until the stream ends or, in fan-out, every message arrived (`own_limit`).
async fn subscribe_task(
    mut sub: Subscriber,
    mut tally: Tally,
    counter: Arc<Counter>,
    shared: Arc<Shared>,
    own_limit: Option<u64>,
) -> Tally {
    loop {
        let Some(n) = next_batch(&mut sub, BATCH, |m| tally.record(&m.payload)).await else {
            break;
        };
        tally.last_at = Some(Instant::now());
        counter.set(tally.received);
        let before = shared.received.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(probe) = &shared.probe {
            probe.delivered.fetch_add(n as u64, Ordering::Relaxed);
        }
        if before + n as u64 >= shared.expected.load(Ordering::Relaxed) {
            shared.done.notify_one();
        }
        if own_limit.is_some_and(|l| tally.received >= l) {
            break;
        }
    }
    tally
}

/// What one publisher did.
#[derive(Debug)]
struct PubOutcome {
    client: Client,
    /// Messages handed to the client.
    sent: u64,
    /// When its flush returned (or it failed).
    flushed_at: Instant,
    /// Why it stopped early.
    error: Option<String>,
}

/// Waits for the start signal, publishes `count` messages (fewer if `probe` says stop), then
/// flushes.
async fn publish_task(
    client: Client,
    id: u64,
    count: u64,
    size: usize,
    mut go: watch::Receiver<bool>,
    counter: Arc<Counter>,
    probe: Option<Arc<LoadProbe>>,
) -> PubOutcome {
    let mut payload = vec![0u8; size];
    let fail = |client: Client, sent: u64, e: String| PubOutcome {
        client,
        sent,
        flushed_at: Instant::now(),
        error: Some(e),
    };
    if go.wait_for(|&v| v).await.is_err() {
        return fail(client, 0, "the run ended before publishing started".into());
    }
    let mut sent = count;
    for n in 0..count {
        let word = (id << SEQ_BITS) | n;
        payload[..8].copy_from_slice(&word.to_le_bytes());
        if let Err(e) = client
            .publish_message(OutboundMessage::new(SUBJECT, &payload))
            .await
        {
            counter.set(n);
            return fail(client, n, format!("publish #{n}: {e}"));
        }
        if n % 1024 == 1023 {
            counter.set(n + 1);
            if probe
                .as_ref()
                .is_some_and(|p| p.stop.load(Ordering::Relaxed))
            {
                sent = n + 1;
                break;
            }
        }
    }
    counter.set(sent);
    if let Err(e) = client.flush().await {
        return fail(client, sent, format!("flush after publishing: {e}"));
    }
    PubOutcome {
        client,
        sent,
        flushed_at: Instant::now(),
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(p: u64, n: u64) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&((p << SEQ_BITS) | n).to_le_bytes());
        b
    }

    #[test]
    fn tally_counts_order_duplicates_and_garbage() {
        let layout = Arc::new(Layout::new(&[3, 2]));
        let mut t = Tally::new(layout);
        t.record(&word(0, 0));
        t.record(&word(1, 1));
        t.record(&word(0, 2));
        t.record(&word(0, 1)); // out of order
        t.record(&word(0, 2)); // duplicate
        t.record(&word(1, 7)); // beyond publisher 1's count
        t.record(&word(9, 0)); // no such publisher
        t.record(&[1, 2, 3]); // too short
        assert_eq!(t.received, 8);
        assert_eq!(t.distinct, 4);
        assert_eq!(t.out_of_order, 1);
        assert_eq!(t.malformed, 3);
    }

    #[test]
    fn union_of_queue_members() {
        let layout = Arc::new(Layout::new(&[4]));
        let mut a = Tally::new(layout.clone());
        let mut b = Tally::new(layout);
        a.record(&word(0, 0));
        a.record(&word(0, 2));
        b.record(&word(0, 1));
        b.record(&word(0, 2)); // given to both members
        assert_eq!(Bitmap::union_count([&a.seen, &b.seen].into_iter()), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_deliveries_gives_up_after_the_stall_timeout() {
        let shared = Shared {
            received: AtomicU64::new(5),
            expected: AtomicU64::new(10),
            done: Notify::new(),
            probe: None,
        };
        let t0 = tokio::time::Instant::now();
        assert!(wait_deliveries(&shared, Duration::from_secs(20)).await);
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_secs(20) && waited < Duration::from_secs(21));

        shared.received.store(10, Ordering::Relaxed);
        assert!(!wait_deliveries(&shared, Duration::from_secs(20)).await);
    }

    #[test]
    fn expected_deliveries() {
        let mut p = PubSubParams {
            pubs: 2,
            subs: 4,
            queue: false,
            size: 16,
            msgs: 10,
        };
        assert_eq!(p.expected(), 40);
        p.queue = true;
        assert_eq!(p.expected(), 10);
        p.subs = 0;
        assert_eq!(p.expected(), 0);
        assert!(p.validate().is_err());
    }
}
