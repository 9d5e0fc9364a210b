//! Accounting: the run clock, client groups, fault windows, publisher send logs, subscriber
//! receipts, reconnect samples and request outcomes, and how they are classified at the end.
//!
//! **Windows.** Each fault injection records a [`Window`]: it opens [`PRE_MARGIN_US`] before the
//! injector acts (a message accepted by the broker just before a crash may still be lost) and
//! closes [`POST_MARGIN_US`] after every affected client that was connected when the fault
//! began has reconnected (its `Reconnected` event came for a drop at or after the action) *and*
//! answered a flush (PING → PONG, so its re-sent subscriptions are in force); a client that was
//! already down counts once it is up and flushed. A window that never recovers closes at
//! [`crate::faults::RECOVERY_TIMEOUT`] past the action and the run fails.
//!
//! **Loss.** Publishers number their messages densely per publisher (a publish that fails is
//! marked and expected by nobody). A message is *expected* by every subscriber that subscribed to
//! its subject before its publisher started. An expected message never received is lost; it is
//! lost *inside a fault* when its send time lies in a window that affects the publisher's or the
//! subscriber's group (kill and lame duck affect every group), otherwise it is lost *outside
//! faults*, which must never happen. Latency is split by send time in or outside any window.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use serde::Serialize;

/// A window opens this long before its injector acts.
pub const PRE_MARGIN_US: u64 = 1_000_000;
/// A window closes this long after every affected client has recovered.
pub const POST_MARGIN_US: u64 = 1_000_000;
/// Payload marker ("SOAK").
const MAGIC: u32 = 0x4b41_4f53;
/// Bytes of the payload header: magic, publisher id, sequence, send time.
pub const HEADER_LEN: usize = 24;
/// Highest sequence number a subscriber accepts (bounds its memory on bad input).
const MAX_SEQ: u64 = 100_000_000;
/// Send-time marker of a message whose publish failed (expected by nobody).
pub const FAILED: u64 = u64::MAX;
/// Latency samples kept per subscriber.
const MAX_LATENCY_SAMPLES: usize = 20_000_000;

/// Microseconds since the run started (the first call).
pub fn now_us() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Locks a mutex, ignoring poisoning (a panicked task leaves consistent counters behind).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Which path a client takes to the broker, and what it does; faults affect groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    /// Straight to the broker.
    Direct,
    /// Through the partition proxy.
    Partitioned,
    /// Through the storm proxy.
    Storm,
    /// Registered agents of the scale fault (straight to the broker).
    Agents,
    /// The raw slow-consumer socket.
    Slow,
    /// Raw garbage connections.
    Garbage,
}

/// A fault injector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// kill -9 the broker, restart it on the same port and data dir.
    Kill,
    /// SIGUSR2: the broker drains and exits 0; start it again.
    Lameduck,
    /// A subscriber that stops reading.
    Slow,
    /// Random bytes and malformed frames over raw TCP.
    Garbage,
    /// Hundreds of clients dropped at once.
    Storm,
    /// Delay, blackhole, cut and refuse through the partition proxy.
    Partition,
    /// Registered agents ramp 100 → 1000 → 100.
    Scale,
}

impl FaultKind {
    /// Every kind, in the order of `--faults all`.
    pub const ALL: [FaultKind; 7] = [
        FaultKind::Kill,
        FaultKind::Lameduck,
        FaultKind::Slow,
        FaultKind::Garbage,
        FaultKind::Storm,
        FaultKind::Partition,
        FaultKind::Scale,
    ];

    /// The name used on the command line and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Lameduck => "lameduck",
            FaultKind::Slow => "slow",
            FaultKind::Garbage => "garbage",
            FaultKind::Storm => "storm",
            FaultKind::Partition => "partition",
            FaultKind::Scale => "scale",
        }
    }

    /// Parses a `--faults` list (`kill,slow`, `all`, or empty for none).
    ///
    /// # Errors
    /// An unknown name.
    pub fn parse_list(s: &str) -> Result<Vec<FaultKind>, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part == "all" {
                out.extend(FaultKind::ALL);
                continue;
            }
            let k = FaultKind::ALL
                .into_iter()
                .find(|k| k.name() == part)
                .ok_or_else(|| {
                    format!(
                        "unknown fault {part:?} (kill, lameduck, slow, garbage, storm, partition, scale, all)"
                    )
                })?;
            out.push(k);
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// One fault injection.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    /// What was injected.
    pub kind: FaultKind,
    /// Opens (µs since the run start): [`PRE_MARGIN_US`] before `action_us`.
    pub start_us: u64,
    /// When the injector acted.
    pub action_us: u64,
    /// When the fault itself was over (broker back, proxy healed, ...).
    pub healed_us: u64,
    /// Closes: recovery plus [`POST_MARGIN_US`].
    pub end_us: u64,
    /// The groups it affects; empty means every group.
    pub affects: Vec<Group>,
    /// Clients that had to recover.
    pub clients: usize,
    /// Clients that did not recover in time.
    pub not_recovered: usize,
    /// Injector-specific figures.
    pub detail: serde_json::Value,
}

impl Window {
    fn affects_group(&self, g: Group) -> bool {
        self.affects.is_empty() || self.affects.contains(&g)
    }

    fn covers(&self, t: u64) -> bool {
        self.start_us <= t && t <= self.end_us
    }
}

/// A client's drop and how long it took to come back.
#[derive(Debug, Clone, Copy)]
pub struct ReconnectSample {
    /// The client's group.
    pub group: Group,
    /// When it saw the drop (µs since the run start).
    pub drop_us: u64,
    /// From the drop to the reconnect.
    pub after_us: u64,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReqOutcome {
    /// A reply with the request's payload.
    Ok,
    /// No reply in time.
    Timeout,
    /// The broker said nobody listens.
    NoResponders,
    /// Anything else (disconnected, closed, buffer full, wrong reply).
    Other,
}

/// A publisher's log: the send time of every sequence number ([`FAILED`] when the publish
/// failed).
#[derive(Debug)]
pub struct PubLog {
    /// Publisher id (in every payload).
    pub id: u32,
    /// Its group.
    pub group: Group,
    /// What it is, for the report ("main", "ticker", "bulk").
    pub role: &'static str,
    sent: Mutex<Vec<u64>>,
}

impl PubLog {
    /// The next sequence number.
    pub fn next_seq(&self) -> u64 {
        lock(&self.sent).len() as u64
    }

    /// Records the outcome of sequence `next_seq()`.
    pub fn push(&self, send_us: u64) {
        lock(&self.sent).push(send_us);
    }

    /// Messages published successfully.
    pub fn published(&self) -> u64 {
        lock(&self.sent).iter().filter(|t| **t != FAILED).count() as u64
    }
}

/// Everything shared by the load tasks and injectors.
#[derive(Debug, Default)]
pub struct Ledger {
    windows: Mutex<Vec<Window>>,
    reconnects: Mutex<Vec<ReconnectSample>>,
    server_errors: Mutex<BTreeMap<String, u64>>,
    client_errors: Mutex<BTreeMap<String, u64>>,
    requests: Mutex<Vec<(u64, ReqOutcome)>>,
    pubs: Mutex<Vec<std::sync::Arc<PubLog>>>,
    subs: Mutex<Vec<SubAcc>>,
    next_pub: AtomicU64,
    next_sub: AtomicU64,
    /// Messages delivered so far (progress display).
    pub delivered: AtomicU64,
    /// Current fault name (progress display).
    pub current: Mutex<String>,
}

impl Ledger {
    /// A new publisher log.
    pub fn new_pub(&self, group: Group, role: &'static str) -> std::sync::Arc<PubLog> {
        let id = u32::try_from(self.next_pub.fetch_add(1, Ordering::Relaxed)).unwrap_or(u32::MAX);
        let log = std::sync::Arc::new(PubLog {
            id,
            group,
            role,
            sent: Mutex::new(Vec::new()),
        });
        lock(&self.pubs).push(log.clone());
        log
    }

    /// A fresh subscriber id.
    pub fn new_sub_id(&self) -> u32 {
        u32::try_from(self.next_sub.fetch_add(1, Ordering::Relaxed)).unwrap_or(u32::MAX)
    }

    /// Hands in a subscriber's receipts at the end.
    pub fn add_sub(&self, s: SubAcc) {
        lock(&self.subs).push(s);
    }

    /// Records a finished window.
    pub fn add_window(&self, w: Window) {
        lock(&self.windows).push(w);
    }

    /// Records a reconnect.
    pub fn reconnect(&self, s: ReconnectSample) {
        lock(&self.reconnects).push(s);
    }

    /// Counts an ERR the broker sent a tracked client.
    pub fn server_error(&self, name: &str) {
        *lock(&self.server_errors)
            .entry(name.to_owned())
            .or_default() += 1;
    }

    /// Counts a client-side error (`what` names the call and the error kind).
    pub fn client_error(&self, what: String) {
        *lock(&self.client_errors).entry(what).or_default() += 1;
    }

    /// Records a request's outcome by its send time.
    pub fn request(&self, send_us: u64, o: ReqOutcome) {
        let mut r = lock(&self.requests);
        if r.len() < 50_000_000 {
            r.push((send_us, o));
        }
    }

    /// Messages published so far (all publishers).
    pub fn published(&self) -> u64 {
        lock(&self.pubs).iter().map(|p| p.published()).sum()
    }

    /// Reconnects so far.
    pub fn reconnect_count(&self) -> usize {
        lock(&self.reconnects).len()
    }

    /// Takes everything recorded, for the analysis.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            windows: lock(&self.windows).clone(),
            reconnects: lock(&self.reconnects).clone(),
            server_errors: lock(&self.server_errors).clone(),
            client_errors: lock(&self.client_errors).clone(),
            requests: lock(&self.requests).clone(),
            pubs: lock(&self.pubs)
                .iter()
                .map(|p| (p.id, p.group, p.role, lock(&p.sent).clone()))
                .collect(),
            subs: std::mem::take(&mut *lock(&self.subs)),
        }
    }
}

/// What the ledger held at the end.
#[derive(Debug)]
pub struct Snapshot {
    /// Fault windows.
    pub windows: Vec<Window>,
    /// Every reconnect of a tracked client.
    pub reconnects: Vec<ReconnectSample>,
    /// ERRs the broker sent tracked clients, by name.
    pub server_errors: BTreeMap<String, u64>,
    /// Client-side errors by call and kind.
    pub client_errors: BTreeMap<String, u64>,
    /// Requests: send time and outcome.
    pub requests: Vec<(u64, ReqOutcome)>,
    /// Publishers: id, group, role, send log.
    pub pubs: Vec<(u32, Group, &'static str, Vec<u64>)>,
    /// Subscribers' receipts.
    pub subs: Vec<SubAcc>,
}

/// Writes a message payload of `size` bytes (at least [`HEADER_LEN`]).
pub fn encode_payload(buf: &mut Vec<u8>, pub_id: u32, seq: u64, send_us: u64, size: usize) {
    buf.clear();
    buf.extend_from_slice(&MAGIC.to_le_bytes());
    buf.extend_from_slice(&pub_id.to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&send_us.to_le_bytes());
    buf.resize(size.max(HEADER_LEN), 0x5a);
}

/// Reads a payload's publisher id, sequence and send time; `None` when it is not one of ours.
pub fn decode_payload(p: &[u8]) -> Option<(u32, u64, u64)> {
    let field = |at: usize, n: usize| p.get(at..at + n);
    let magic = u32::from_le_bytes(field(0, 4)?.try_into().ok()?);
    if magic != MAGIC {
        return None;
    }
    let id = u32::from_le_bytes(field(4, 4)?.try_into().ok()?);
    let seq = u64::from_le_bytes(field(8, 8)?.try_into().ok()?);
    let sent = u64::from_le_bytes(field(16, 8)?.try_into().ok()?);
    Some((id, seq, sent))
}

/// Receipts of one publisher's messages at one subscriber.
#[derive(Debug, Default)]
struct Track {
    /// Receipts per sequence number (saturating).
    counts: Vec<u8>,
    /// Highest sequence seen, plus one (0: none).
    next: u64,
    out_of_order: u64,
}

/// One subscriber's receipts.
#[derive(Debug)]
pub struct SubAcc {
    /// Subscriber id.
    pub id: u32,
    /// Its group.
    pub group: Group,
    /// Publishers whose every message it must receive.
    pub expects: Vec<u32>,
    tracks: HashMap<u32, Track>,
    /// (send time, latency) in µs per delivery.
    latencies: Vec<(u64, u32)>,
    /// Payloads that were not ours or out of range.
    pub bad: u64,
}

impl SubAcc {
    /// A subscriber expecting the messages of `expects`.
    pub fn new(id: u32, group: Group, expects: Vec<u32>) -> SubAcc {
        SubAcc {
            id,
            group,
            expects,
            tracks: HashMap::new(),
            latencies: Vec::new(),
            bad: 0,
        }
    }

    /// Accounts one delivered payload received at `now` (µs since the run start).
    pub fn record(&mut self, payload: &[u8], now: u64) {
        let Some((id, seq, sent)) = decode_payload(payload) else {
            self.bad += 1;
            return;
        };
        if seq >= MAX_SEQ {
            self.bad += 1;
            return;
        }
        let t = self.tracks.entry(id).or_default();
        let i = seq as usize;
        if t.counts.len() <= i {
            t.counts.resize(i + 1, 0);
        }
        let first = t.counts[i] == 0;
        t.counts[i] = t.counts[i].saturating_add(1);
        if first {
            if seq + 1 < t.next {
                t.out_of_order += 1;
            }
            t.next = t.next.max(seq + 1);
        }
        if self.latencies.len() < MAX_LATENCY_SAMPLES {
            let lat = u32::try_from(now.saturating_sub(sent)).unwrap_or(u32::MAX);
            self.latencies.push((sent, lat));
        }
    }
}

/// The windows of a run, for classification.
#[derive(Debug)]
pub struct Windows<'a>(pub &'a [Window]);

impl Windows<'_> {
    /// Whether a message sent at `t` from group `a` to group `b` falls in a window affecting
    /// either.
    pub fn excuses(&self, t: u64, a: Group, b: Group) -> bool {
        self.0
            .iter()
            .any(|w| w.covers(t) && (w.affects_group(a) || w.affects_group(b)))
    }

    /// Whether `t` falls in any window.
    pub fn any(&self, t: u64) -> bool {
        self.0.iter().any(|w| w.covers(t))
    }

    /// The fault a drop of a `g` client at `t` belongs to (the latest window covering it).
    pub fn attribute(&self, t: u64, g: Group) -> Option<FaultKind> {
        self.0
            .iter()
            .filter(|w| w.covers(t) && w.affects_group(g))
            .max_by_key(|w| w.action_us)
            .map(|w| w.kind)
    }
}

/// Message counts over every (publisher, subscriber) pair.
#[derive(Debug, Default, Clone, Serialize)]
pub struct MsgCounts {
    /// Messages published successfully.
    pub published: u64,
    /// Publishes that failed (expected by nobody).
    pub publish_failed: u64,
    /// Deliveries expected (published × subscribers expecting them).
    pub expected: u64,
    /// Distinct messages delivered.
    pub delivered: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Deliveries with a lower sequence than one already seen from the same publisher.
    pub out_of_order: u64,
    /// Expected, not delivered, sent inside a window affecting either end.
    pub lost_in_faults: u64,
    /// Expected, not delivered, sent outside any such window: must be 0.
    pub lost_outside_faults: u64,
    /// Payloads that were not the harness's.
    pub bad_payloads: u64,
    /// Deliveries of messages whose publish had reported failure.
    pub delivered_after_failed_publish: u64,
}

/// Lost-outside-faults details for the report (first few).
#[derive(Debug, Clone, Serialize)]
pub struct LostDetail {
    /// Publisher id.
    pub publisher: u32,
    /// Subscriber id.
    pub subscriber: u32,
    /// Sequence number.
    pub seq: u64,
    /// Send time, ms since the run start.
    pub sent_ms: f64,
}

/// The outcome of [`account`].
#[derive(Debug, Default)]
pub struct Accounting {
    /// Counts over every pair.
    pub total: MsgCounts,
    /// Counts per publisher role.
    pub by_role: BTreeMap<String, MsgCounts>,
    /// The first few messages lost outside faults.
    pub lost_examples: Vec<LostDetail>,
    /// Latencies (µs) of messages sent inside a window.
    pub lat_in: Vec<u32>,
    /// Latencies (µs) of messages sent outside every window.
    pub lat_out: Vec<u32>,
}

/// Counts every (publisher, subscriber) pair and splits loss and latency by window.
pub fn account(snap: &Snapshot) -> Accounting {
    let w = Windows(&snap.windows);
    let mut total = MsgCounts::default();
    let mut by_role: BTreeMap<String, MsgCounts> = BTreeMap::new();
    let mut examples = Vec::new();
    let pubs: HashMap<u32, (Group, &'static str, &Vec<u64>)> = snap
        .pubs
        .iter()
        .map(|(id, g, r, s)| (*id, (*g, *r, s)))
        .collect();
    for (_, _, role, sent) in &snap.pubs {
        let c = by_role.entry((*role).to_owned()).or_default();
        let ok = sent.iter().filter(|t| **t != FAILED).count() as u64;
        c.published += ok;
        c.publish_failed += sent.len() as u64 - ok;
        total.published += ok;
        total.publish_failed += sent.len() as u64 - ok;
    }
    let mut lat_in = Vec::new();
    let mut lat_out = Vec::new();
    for s in &snap.subs {
        total.bad_payloads += s.bad;
        for (sent, lat) in &s.latencies {
            if w.any(*sent) {
                lat_in.push(*lat);
            } else {
                lat_out.push(*lat);
            }
        }
        for pid in &s.expects {
            let Some((pg, role, log)) = pubs.get(pid) else {
                continue;
            };
            let c = by_role.entry((*role).to_owned()).or_default();
            let empty = Track::default();
            let t = s.tracks.get(pid).unwrap_or(&empty);
            let mut pair = MsgCounts {
                out_of_order: t.out_of_order,
                ..MsgCounts::default()
            };
            for (seq, send) in log.iter().enumerate() {
                let got = t.counts.get(seq).copied().unwrap_or(0);
                if *send == FAILED {
                    if got > 0 {
                        pair.delivered_after_failed_publish += 1;
                    }
                    continue;
                }
                pair.expected += 1;
                if got > 0 {
                    pair.delivered += 1;
                    pair.duplicated += u64::from(got - 1);
                } else if w.excuses(*send, *pg, s.group) {
                    pair.lost_in_faults += 1;
                } else {
                    pair.lost_outside_faults += 1;
                    if examples.len() < 20 {
                        examples.push(LostDetail {
                            publisher: *pid,
                            subscriber: s.id,
                            seq: seq as u64,
                            sent_ms: *send as f64 / 1000.0,
                        });
                    }
                }
            }
            for c in [&mut *c, &mut total] {
                c.expected += pair.expected;
                c.delivered += pair.delivered;
                c.duplicated += pair.duplicated;
                c.out_of_order += pair.out_of_order;
                c.lost_in_faults += pair.lost_in_faults;
                c.lost_outside_faults += pair.lost_outside_faults;
                c.delivered_after_failed_publish += pair.delivered_after_failed_publish;
            }
        }
    }
    Accounting {
        total,
        by_role,
        lost_examples: examples,
        lat_in,
        lat_out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trip_and_garbage() {
        let mut b = Vec::new();
        encode_payload(&mut b, 7, 42, 1234, 64);
        assert_eq!(b.len(), 64);
        assert_eq!(decode_payload(&b), Some((7, 42, 1234)));
        assert_eq!(decode_payload(&b[..10]), None);
        assert_eq!(decode_payload(b"not a soak payload at all"), None);
    }

    #[test]
    fn faults_parse() {
        assert_eq!(
            FaultKind::parse_list("slow,kill,slow"),
            Ok(vec![FaultKind::Kill, FaultKind::Slow])
        );
        assert_eq!(FaultKind::parse_list("all").map(|v| v.len()), Ok(7));
        assert!(FaultKind::parse_list("boom").is_err());
        assert_eq!(FaultKind::parse_list(""), Ok(vec![]));
    }

    fn window(kind: FaultKind, start: u64, end: u64, affects: Vec<Group>) -> Window {
        Window {
            kind,
            start_us: start,
            action_us: start,
            healed_us: start,
            end_us: end,
            affects,
            clients: 0,
            not_recovered: 0,
            detail: serde_json::Value::Null,
        }
    }

    #[test]
    fn loss_is_split_by_window_and_group() {
        let ledger = Ledger::default();
        let p = ledger.new_pub(Group::Direct, "main");
        for t in [100, 200, 300, 400, FAILED] {
            p.push(t);
        }
        ledger.add_window(window(
            FaultKind::Partition,
            150,
            250,
            vec![Group::Partitioned],
        ));
        let mut b = Vec::new();
        // A direct subscriber misses 200 (not excused: the partition does not affect it) and
        // gets 100 twice; a partitioned one misses 200 (excused) and gets 400 before 300.
        let mut direct = SubAcc::new(0, Group::Direct, vec![p.id]);
        let mut part = SubAcc::new(1, Group::Partitioned, vec![p.id]);
        for (s, seqs) in [
            (&mut direct, vec![0u64, 0, 2, 3]),
            (&mut part, vec![0, 3, 2]),
        ] {
            for seq in seqs {
                encode_payload(&mut b, p.id, seq, 0, 24);
                s.record(&b, 10);
            }
        }
        ledger.add_sub(direct);
        ledger.add_sub(part);
        let snap = ledger.snapshot();
        let a = account(&snap);
        let (c, ex) = (a.total, a.lost_examples);
        assert_eq!(c.published, 4);
        assert_eq!(c.publish_failed, 1);
        assert_eq!(c.expected, 8);
        assert_eq!(c.delivered, 6);
        assert_eq!(c.duplicated, 1);
        assert_eq!(c.out_of_order, 1);
        assert_eq!(c.lost_in_faults, 1);
        assert_eq!(c.lost_outside_faults, 1);
        assert_eq!(ex.len(), 1);
        assert_eq!(ex[0].subscriber, 0);
    }

    #[test]
    fn drops_are_attributed_to_the_latest_covering_window() {
        let ws = vec![
            window(FaultKind::Kill, 0, 1000, vec![]),
            window(FaultKind::Storm, 500, 800, vec![Group::Storm]),
        ];
        let w = Windows(&ws);
        assert_eq!(w.attribute(600, Group::Storm), Some(FaultKind::Storm));
        assert_eq!(w.attribute(600, Group::Direct), Some(FaultKind::Kill));
        assert_eq!(w.attribute(2000, Group::Direct), None);
    }
}
