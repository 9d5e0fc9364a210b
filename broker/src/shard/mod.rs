//! Shards: one OS thread each, with its own single-threaded tokio event loop, owning its
//! connections outright (no locks on connection state).
//!
//! A published message is routed on the shard that read it. Subscribers on the same shard get
//! the MSG appended straight into their outbound buffer; subscribers on another shard get a
//! [`RemoteBatch`] pushed into the bounded lock-free queue for that shard pair, carrying the PUB frame
//! as a refcounted `Bytes` view of the read buffer (no copy). The receiving shard drains its
//! queues in batches ([`drain`]) and wakes at most once per batch of the sender.
//!
//! Flow control: every connection's outbound bytes (buffered + being written) are counted. After
//! each batch a publisher (or the drain task, for cross-shard traffic) waits while a consumer it
//! fed is above the soft limit *and still reading* ([`conn::PROGRESS_WINDOW`]); a consumer that
//! stops reading gets no such wait, reaches `max_pending`, and is closed as a slow consumer. A full
//! cross-shard queue makes the publisher's reader wait for space: messages are never dropped to
//! make room.
//!
//! This module holds [`Shard`] (a shard's own state), its counters and [`run`]; the rest is in:
//!
//! - [`global`] — [`Global`] (shared by every shard), [`ShardHandle`], the `DataPlane` impl.
//! - [`conn`] — one connection's state, ERR frames, slow consumers.
//! - [`reader`] / [`writer`] — the socket loops of a connection.
//! - [`dispatch`] — what each frame does (HELLO, PUB, SUB, UNSUB, ...), synchronously.
//! - [`route`] — where a published message goes (plain matches, queue groups, no responders).
//! - [`groups`] — queue-group member choice by load.
//! - [`outbound`] — local delivery, the end-of-batch flush, pending-byte limits, pacing.
//! - [`remote`] / [`drain`] — the cross-shard hand-off, sending and receiving side.
//! - [`keepalive`] — handshake timeout, PINGs, stale connections.
//! - [`control`] — control frames and the shard's command channel.

pub(crate) mod conn;
pub(crate) mod control;
mod dispatch;
mod drain;
mod global;
mod groups;
mod keepalive;
mod outbound;
mod reader;
mod remote;
mod route;
mod writer;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, watch, Notify};

use crate::routing::MatchCache;
use crate::telemetry::load::ConnLoad;
use conn::Conn;
pub use global::{Global, ShardHandle};
use remote::RemoteBatch;

/// Counters accumulated during a batch and added to the shared atomics once per batch.
#[derive(Debug, Default)]
pub(crate) struct LocalCounters {
    pub msgs_in: Cell<u64>,
    pub bytes_in: Cell<u64>,
    pub msgs_out: Cell<u64>,
    pub bytes_out: Cell<u64>,
    pub cross: Cell<u64>,
    pub dropped: Cell<u64>,
}

fn bump(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n);
}

/// Plain (non-request) messages in a row to one queue group that share one choice by load.
pub const STICKY_MESSAGES: u32 = 64;

pub use crate::telemetry::hot::HOT_SAMPLE;

/// A shard's own state, living on its thread only.
pub(crate) struct Shard {
    pub id: u16,
    /// The limits now (a copy of [`Global::limits`], replaced on reload by this thread).
    pub limits: RefCell<crate::config::Limits>,
    pub global: Arc<Global>,
    pub handle: Arc<ShardHandle>,
    /// Connections owned by this shard, by id.
    pub conns: RefCell<FxHashMap<u64, Rc<Conn>>>,
    /// Literal subject → match set, invalidated by the routing generation.
    pub cache: RefCell<MatchCache>,
    /// Round-robin cursor for queue groups.
    pub rr: Cell<u32>,
    /// Publishes seen, for sampling subjects (one in [`HOT_SAMPLE`]).
    pub publishes: Cell<u64>,
    /// Outbound bytes pending over this shard's connections (as last accounted).
    pub pending_total: Cell<usize>,
    /// When the read batch being handled was read.
    pub read_at: Cell<Instant>,
    /// Send times (µs since the epoch) stamped on this batch's messages, recorded after the
    /// batch is written.
    pub stamped: RefCell<Vec<u64>>,
    /// The last queue-group choice for plain messages: (group identity, member index,
    /// messages left before choosing again).
    pub sticky: Cell<(usize, usize, u32)>,
    /// Random state for power-of-two-choices (xorshift).
    pub rng: Cell<u64>,
    /// Load records of connections on any shard, looked up by queue-group routing.
    pub load_cache: RefCell<FxHashMap<u64, Arc<ConnLoad>>>,
    /// Connections given output since the last flush.
    touched: RefCell<Vec<Rc<Conn>>>,
    /// Peer shards given messages since the last flush (and a flag per shard to dedupe).
    peers_touched: RefCell<Vec<u16>>,
    peer_flag: RefCell<Vec<bool>>,
    /// Per destination shard, the batch being filled during the current read batch.
    staging: RefCell<Vec<Option<RemoteBatch>>>,
    pub counters: LocalCounters,
    /// Set when a delivery took a connection past the soft pending limit; the drain loop ends
    /// its batch early then, to pace before buffering more.
    pub over_soft: Cell<bool>,
    /// Fires when the last connection of this shard is gone (used at shutdown).
    pub conns_gone: Notify,
    /// Shutdown signal.
    pub shutdown: watch::Receiver<bool>,
}

impl Shard {
    fn new(global: Arc<Global>, id: u16, shutdown: watch::Receiver<bool>) -> Shard {
        let handle = global.shards[id as usize].clone();
        let n = global.shards.len();
        let cache = MatchCache::new(global.config.match_cache);
        Shard {
            id,
            limits: RefCell::new(**global.limits.load()),
            handle,
            conns: RefCell::new(FxHashMap::default()),
            cache: RefCell::new(cache),
            rr: Cell::new(0),
            pending_total: Cell::new(0),
            read_at: Cell::new(Instant::now()),
            stamped: RefCell::new(Vec::new()),
            publishes: Cell::new(0),
            sticky: Cell::new((0, 0, 0)),
            rng: Cell::new(
                0x9e37_79b9_7f4a_7c15 ^ (u64::from(id) + 1).wrapping_mul(0xff51_afd7_ed55_8ccd),
            ),
            load_cache: RefCell::new(FxHashMap::default()),
            touched: RefCell::new(Vec::new()),
            peers_touched: RefCell::new(Vec::new()),
            peer_flag: RefCell::new(vec![false; n]),
            staging: RefCell::new((0..n).map(|_| None).collect()),
            counters: LocalCounters::default(),
            over_soft: Cell::new(false),
            conns_gone: Notify::new(),
            shutdown,
            global,
        }
    }

    /// Records that `conn` has new output to write at the end of the batch.
    pub fn touch(&self, conn: &Rc<Conn>) {
        let mut st = conn.st.borrow_mut();
        if !st.touched {
            st.touched = true;
            drop(st);
            self.touched.borrow_mut().push(conn.clone());
        }
    }

    /// Records publish → deliver for the stamped messages of the batch just written.
    pub fn record_stamped(&self) {
        let mut st = self.stamped.borrow_mut();
        if st.is_empty() {
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        for sent in st.drain(..) {
            self.global
                .telemetry
                .hist
                .publish_to_deliver
                .record(now.saturating_sub(sent));
        }
    }
}

/// Runs shard `id` on the current thread until shutdown, then closes its connections
/// (flushing what is buffered, bounded by the shutdown grace).
pub(crate) fn run(
    global: Arc<Global>,
    id: u16,
    mut conns_rx: mpsc::UnboundedReceiver<crate::transport::Incoming>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let mut stop = shutdown.clone();
        let shard = Rc::new(Shard::new(global.clone(), id, shutdown));
        tokio::task::spawn_local(drain::drain(shard.clone()));
        tokio::task::spawn_local(keepalive::keepalive(shard.clone()));
        tokio::task::spawn_local(control::lame_duck(shard.clone()));
        global.shards[id as usize]
            .running
            .store(true, Ordering::Relaxed);
        if let Some(rx) = global.shards[id as usize].control_rx.lock().take() {
            tokio::task::spawn_local(control::control_loop(shard.clone(), rx));
        }
        loop {
            tokio::select! {
                s = conns_rx.recv() => match s {
                    Some(stream) => {
                        tokio::task::spawn_local(reader::serve(shard.clone(), stream));
                    }
                    None => break,
                },
                r = stop.changed() => {
                    if r.is_err() || *stop.borrow() {
                        break;
                    }
                }
            }
        }
        global.shards[id as usize]
            .running
            .store(false, Ordering::Relaxed);
        // Connections see the same signal and close themselves; wait for them, bounded.
        let grace = Duration::from_millis(global.config.shutdown_grace_ms + 500);
        let deadline = tokio::time::Instant::now() + grace;
        while !shard.conns.borrow().is_empty() {
            if tokio::time::timeout_at(deadline, shard.conns_gone.notified())
                .await
                .is_err()
            {
                tracing::warn!(
                    shard = id,
                    left = shard.conns.borrow().len(),
                    "shutdown grace over; dropping connections"
                );
                break;
            }
        }
    });
    Ok(())
}

/// Sums the counters of every shard.
pub fn snapshot(global: &Global) -> crate::stats::StatsSnapshot {
    crate::stats::StatsSnapshot::collect(global.shards.iter().map(|s| &s.stats))
}

/// Relaxed load helper for tests and status.
pub fn open_connections(global: &Global) -> usize {
    global.conn_count.load(Ordering::Relaxed)
}
