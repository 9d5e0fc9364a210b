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

pub(crate) mod conn;
pub(crate) mod control;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, watch, Notify};

use crate::config::Config;
use crate::plane::{ControlPlane, DataPlane, ShardCmd, ShardFigures};
use crate::routing::{MatchCache, RoutingTable, SubTarget};
use crate::stats::ShardStats;
use crate::telemetry::load::ConnLoad;
use crate::telemetry::Telemetry;
use conn::Conn;

/// Messages handed from one shard to another: a refcounted view of one read batch of the
/// publisher (no copy) and, per delivery, where its PUB frame lies in it and who gets it. One
/// batch per (read batch, destination shard): one queue push and one refcount per batch, not
/// per message.
#[derive(Debug)]
pub(crate) struct RemoteBatch {
    /// The bytes the items point into (the publisher's read batch, or a synthesized frame).
    pub frames: Bytes,
    /// The deliveries, in order.
    pub items: Vec<RemoteItem>,
    /// When the publisher's read batch was read (for the residence histogram).
    pub read_at: Instant,
}

/// One delivery in a [`RemoteBatch`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct RemoteItem {
    /// Target connection (owned by the receiving shard).
    pub conn: u64,
    /// Offset of the PUB frame in the batch's bytes.
    pub off: u32,
    /// Length of the PUB frame.
    pub len: u32,
    /// Target subscription.
    pub sid: u32,
    /// MSG flag bits.
    pub flags: u8,
}

/// The part of a shard that other threads touch: its inbound queues, its wake-ups, its counters.
#[derive(Debug)]
pub struct ShardHandle {
    /// Shard index.
    pub id: u16,
    /// `inbound[src]`: batches from shard `src` to this shard. Single producer (shard `src`),
    /// single consumer (this shard).
    inbound: Box<[ArrayQueue<RemoteBatch>]>,
    /// Wakes this shard's drain task; peers notify it once per batch they pushed.
    wake: Notify,
    /// Wakes this shard's readers waiting for room in a full queue they feed.
    space: Notify,
    /// Counters of this shard.
    pub stats: ShardStats,
    /// Commands from the admin plane (config push, system messages).
    control_tx: mpsc::UnboundedSender<ShardCmd>,
    control_rx: parking_lot::Mutex<Option<mpsc::UnboundedReceiver<ShardCmd>>>,
    running: std::sync::atomic::AtomicBool,
}

impl ShardHandle {
    fn new(id: u16, shards: usize, queue_cap: usize) -> ShardHandle {
        let (control_tx, rx) = mpsc::unbounded_channel();
        ShardHandle {
            id,
            inbound: (0..shards).map(|_| ArrayQueue::new(queue_cap)).collect(),
            wake: Notify::new(),
            space: Notify::new(),
            stats: ShardStats::default(),
            control_tx,
            control_rx: parking_lot::Mutex::new(Some(rx)),
            running: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether the shard's event loop is running.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }

    /// Sends a command to this shard (dropped when the shard has stopped).
    pub fn send(&self, cmd: ShardCmd) {
        let _ = self.control_tx.send(cmd);
    }
}

/// State shared by every shard and the acceptor.
pub struct Global {
    /// The configuration the server started with.
    pub config: Config,
    /// Every shard's handle, by index.
    pub shards: Vec<Arc<ShardHandle>>,
    /// The routing table (the one structure all shards share; lock-free for readers).
    pub routing: RoutingTable,
    /// This process's server id.
    pub server_id: String,
    /// Next connection id (ids are never reused during the process's life).
    pub next_conn_id: AtomicU64,
    /// Connections open now (checked against `max_connections` by the acceptor).
    pub conn_count: AtomicUsize,
    /// What the shards measure for the admin plane (histograms, sampled subjects).
    pub telemetry: Telemetry,
    /// The control plane (registry) the shards call for control frames; `None`: a bare data
    /// plane that refuses them.
    pub control: Option<Arc<dyn ControlPlane>>,
    /// Load records of every open connection, for queue-group routing.
    pub loads: parking_lot::RwLock<FxHashMap<u64, Arc<ConnLoad>>>,
    /// Lame duck: set once; the acceptor stops, shards notify and close their clients.
    pub lame: watch::Sender<bool>,
    /// Verified TLS client identities (mutual TLS) of the open connections, by connection id
    /// (only connections that have one are in it).
    pub identities: parking_lot::Mutex<FxHashMap<u64, String>>,
    /// The client users now (replaced on reload).
    pub auth: arc_swap::ArcSwap<crate::auth::Auth>,
    /// The limits now (replaced on reload; shards keep their own copy).
    pub limits: arc_swap::ArcSwap<crate::config::Limits>,
    /// Where a reload from the admin API reads the configuration (set by `agentwire serve`).
    #[allow(clippy::type_complexity)]
    pub reload_source:
        parking_lot::Mutex<Option<Box<dyn Fn() -> Result<Config, String> + Send + Sync>>>,
}

impl std::fmt::Debug for Global {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Global")
            .field("server_id", &self.server_id)
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl Global {
    /// Creates the shared state for `config`, with `control` answering control frames.
    pub fn new(
        config: Config,
        server_id: String,
        auth: crate::auth::Auth,
        control: Option<Arc<dyn ControlPlane>>,
    ) -> Global {
        let n = config.shard_count();
        let shards = (0..n)
            .map(|i| Arc::new(ShardHandle::new(i as u16, n, config.cross_shard_queue)))
            .collect();
        Global {
            shards,
            routing: RoutingTable::new(),
            server_id,
            next_conn_id: AtomicU64::new(1),
            conn_count: AtomicUsize::new(0),
            telemetry: Telemetry::default(),
            control,
            loads: parking_lot::RwLock::new(FxHashMap::default()),
            lame: watch::channel(false).0,
            identities: parking_lot::Mutex::new(FxHashMap::default()),
            auth: arc_swap::ArcSwap::from_pointee(auth),
            limits: arc_swap::ArcSwap::from_pointee(config.limits),
            reload_source: parking_lot::Mutex::new(None),
            config,
        }
    }
}

impl Global {
    /// Enters lame-duck mode (idempotent): stop accepting, notify every client, close them
    /// spread over `lameduck_window_ms`.
    pub fn enter_lame_duck(&self) {
        let was = self.lame.send_replace(true);
        if !was {
            tracing::info!(
                window_ms = self.config.lameduck_window_ms,
                "lame duck: no new connections; closing clients over the window"
            );
        }
    }
}

impl Global {
    /// Applies the users and limits of `config` (see [`crate::server::ServerHandle::reload`]).
    ///
    /// # Errors
    /// `config` does not validate; nothing is changed then.
    pub fn reload(
        &self,
        config: &Config,
    ) -> Result<crate::config::ReloadReport, crate::config::ConfigError> {
        config.validate()?;
        let auth = crate::auth::Auth::compile(&config.users)
            .map_err(crate::config::ConfigError::Invalid)?;
        crate::auth::log_auth(&auth);
        let users = config.users.len();
        self.auth.store(Arc::new(auth));
        self.limits.store(Arc::new(config.limits));
        for s in &self.shards {
            s.send(ShardCmd::Reload);
        }
        let old = &self.config;
        let mut needs_restart = Vec::new();
        let mut changed = |name: &str, differs: bool| {
            if differs {
                needs_restart.push(name.to_owned());
            }
        };
        changed("listen", old.listen != config.listen);
        changed("shards", old.shards != config.shards);
        changed(
            "listen_backlog",
            old.listen_backlog != config.listen_backlog,
        );
        changed("admin", old.admin != config.admin);
        changed("alerts", old.alerts != config.alerts);
        changed("read_buffer", old.read_buffer != config.read_buffer);
        changed(
            "cross_shard_queue",
            old.cross_shard_queue != config.cross_shard_queue,
        );
        changed("match_cache", old.match_cache != config.match_cache);
        changed("tls", old.tls != config.tls);
        if !needs_restart.is_empty() {
            tracing::warn!(
                ?needs_restart,
                "reload: these settings change only on restart"
            );
        }
        tracing::info!(users, "reloaded users and limits");
        Ok(crate::config::ReloadReport {
            users,
            needs_restart,
        })
    }
}

impl DataPlane for Global {
    fn reload(&self) -> Result<crate::config::ReloadReport, String> {
        let config = {
            let source = self.reload_source.lock();
            let Some(f) = source.as_ref() else {
                return Err(
                    "this broker has no config source to reload from (started as a library)".into(),
                );
            };
            f()?
        };
        Global::reload(self, &config).map_err(|e| e.to_string())
    }
    fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }
    fn config(&self) -> &Config {
        &self.config
    }
    fn server_id(&self) -> &str {
        &self.server_id
    }
    fn shard_count(&self) -> usize {
        self.shards.len()
    }
    fn shards_running(&self) -> bool {
        self.shards.iter().all(|s| s.is_running())
    }
    fn send(&self, shard: u16, cmd: ShardCmd) {
        if let Some(s) = self.shards.get(shard as usize) {
            s.send(cmd);
        }
    }
    fn stats(&self) -> crate::stats::StatsSnapshot {
        snapshot(self)
    }
    fn shard_figures(&self) -> Vec<ShardFigures> {
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        self.shards
            .iter()
            .map(|s| {
                let st = &s.stats;
                ShardFigures {
                    shard: s.id,
                    msgs_in: ld(&st.msgs_in),
                    msgs_out: ld(&st.msgs_out),
                    bytes_in: ld(&st.bytes_in),
                    bytes_out: ld(&st.bytes_out),
                    cross_shard: ld(&st.cross_shard_out),
                    conns_total: ld(&st.conns_total),
                    conns_open: ld(&st.conns_open),
                    slow_consumers: ld(&st.slow_consumers),
                    dropped: ld(&st.dropped),
                }
            })
            .collect()
    }
    fn subscription_count(&self) -> usize {
        self.routing.subscription_count()
    }
    fn lame_duck(&self) {
        self.enter_lame_duck();
    }
    fn max_payload(&self) -> u32 {
        self.limits.load().max_payload
    }
    fn loads(&self) -> Vec<(u64, Arc<ConnLoad>)> {
        self.loads
            .read()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }
}

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

    /// Makes sure the load records of `conns` are in this shard's cache (a miss reads the
    /// global map once; entries of closed connections are dropped when the cache is full).
    fn cache_loads(&self, conns: [u64; 2]) {
        let cache = self.load_cache.borrow();
        if conns.iter().all(|c| cache.contains_key(c)) {
            return;
        }
        drop(cache);
        let global = self.global.loads.read();
        let mut cache = self.load_cache.borrow_mut();
        if cache.len() >= 8192 {
            cache.clear();
        }
        for c in conns {
            if let Some(l) = global.get(&c) {
                cache.entry(c).or_insert_with(|| l.clone());
            }
        }
    }

    /// A random number below `n` (n > 0).
    pub fn next_rand_below(&self, n: u64) -> u64 {
        self.next_rand() % n.max(1)
    }

    fn next_rand(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        x
    }

    /// Picks a queue-group member by load: two distinct members at random, the lower
    /// [`ConnLoad::score`] wins; unhealthy members lose to healthy ones. For a `request`, the
    /// winner's outstanding count goes up (its next publish is taken as the reply). Returns
    /// the index and whether the request is tracked. `members` is not empty (a lone member is
    /// chosen, and a request to it tracked).
    pub fn choose_member(&self, members: &[SubTarget], request: bool) -> (usize, bool) {
        let n = members.len();
        let (a, b) = if n < 2 {
            (0, 0)
        } else {
            let r = self.next_rand();
            let a = (r % n as u64) as usize;
            (a, (a + 1 + ((r >> 32) % (n as u64 - 1)) as usize) % n)
        };
        self.cache_loads([members[a].conn, members[b].conn]);
        let cache = self.load_cache.borrow();
        let la = cache.get(&members[a].conn);
        let lb = cache.get(&members[b].conn);
        let key = |l: Option<&Arc<ConnLoad>>| match l {
            Some(l) => (!l.healthy(), l.score()),
            None => (false, 0),
        };
        let (i, l) = if key(lb) < key(la) { (b, lb) } else { (a, la) };
        match (request, l) {
            (true, Some(l)) => {
                l.dispatched.fetch_add(1, Ordering::Relaxed);
                (i, true)
            }
            _ => (i, false),
        }
    }

    /// The member of group `key` (its match's address) for a plain message (no reply): chosen
    /// by load once per [`STICKY_MESSAGES`] messages in a row to the same group, so a stream
    /// of messages pays for the choice once per run, not per message.
    pub fn sticky_member(&self, key: usize, members: &[SubTarget]) -> usize {
        let (k, i, left) = self.sticky.get();
        if k == key && left > 0 && i < members.len() {
            self.sticky.set((k, i, left - 1));
            return i;
        }
        let (i, _) = self.choose_member(members, false);
        self.sticky.set((key, i, STICKY_MESSAGES - 1));
        i
    }

    /// Takes back a tracked request that could not be delivered.
    pub fn untrack(&self, conn: u64) {
        if let Some(l) = self.load_cache.borrow().get(&conn) {
            l.give_up(1);
        }
    }

    /// Delivers a message to subscription `sid` of local connection `conn_id`. Returns whether
    /// it was queued for writing.
    pub fn deliver_local(&self, conn_id: u64, sid: u32, flags: u8, frame: &[u8]) -> bool {
        let track = flags & conn::TRACK_REPLY != 0;
        let flags = flags & !conn::TRACK_REPLY;
        let conn = match self.conns.borrow().get(&conn_id) {
            Some(c) => c.clone(),
            None => {
                bump(&self.counters.dropped, 1);
                return false;
            }
        };
        let limits = self.limits.borrow();
        let mut st = conn.st.borrow_mut();
        if st.closing {
            bump(&self.counters.dropped, 1);
            return false;
        }
        let Some(sub) = st.subs.get_mut(&sid) else {
            // Unsubscribed while the message was in flight: not an error.
            return false;
        };
        if sub.max != 0 && sub.delivered >= u64::from(sub.max) {
            return false;
        }
        sub.delivered += 1;
        let done = sub.max != 0 && sub.delivered >= u64::from(sub.max);
        if track {
            conn.track_request();
        }
        if conn.tracks_responses.get() {
            if let Some((_, reply)) = agentwire_protocol::frame::pub_subject_and_reply(frame) {
                if !reply.is_empty() {
                    conn.note_request(reply);
                }
            }
        }
        let before = st.out.len();
        let was_over_soft = st.pending() > limits.soft_pending();
        if agentwire_protocol::encode_msg_from_pub(&mut st.out, sid, flags, frame).is_err() {
            bump(&self.counters.dropped, 1);
            return false;
        }
        bump(&self.counters.msgs_out, 1);
        bump(&self.counters.bytes_out, (st.out.len() - before) as u64);
        if done {
            if let Some(sub) = st.subs.remove(&sid) {
                self.global.routing.remove(
                    &sub.pattern,
                    sub.queue.as_deref(),
                    SubTarget {
                        shard: self.id,
                        conn: conn_id,
                        sid,
                    },
                );
            }
        }
        let pending = st.pending();
        let over = pending > limits.max_pending;
        if !was_over_soft && pending > limits.soft_pending() {
            self.over_soft.set(true);
        }
        drop(st);
        if over {
            conn.slow_consumer(self, "outbound buffer passed max_pending");
        }
        self.touch(&conn);
        true
    }

    /// Adds a delivery for shard `dst` to this batch's staging area: `frame` is the PUB frame at
    /// `off..off + len` of `src`. Staged batches go out in [`Shard::flush_staged`].
    #[allow(clippy::too_many_arguments)]
    pub fn stage_remote(
        &self,
        dst: u16,
        src: &Bytes,
        off: usize,
        len: usize,
        conn: u64,
        sid: u32,
        flags: u8,
        stash: &mut Stash,
    ) {
        {
            let mut peer_flags = self.peer_flag.borrow_mut();
            if !peer_flags[dst as usize] {
                peer_flags[dst as usize] = true;
                self.peers_touched.borrow_mut().push(dst);
            }
        }
        bump(&self.counters.cross, 1);
        let item = RemoteItem {
            conn,
            off: off as u32,
            len: len as u32,
            sid,
            flags,
        };
        let mut staging = self.staging.borrow_mut();
        let slot = &mut staging[dst as usize];
        if let Some(b) = slot {
            if b.frames.as_ptr() == src.as_ptr() && b.frames.len() == src.len() {
                b.items.push(item);
                return;
            }
        }
        let mut items = Vec::with_capacity(64);
        items.push(item);
        if let Some(old) = slot.replace(RemoteBatch {
            frames: src.clone(),
            items,
            read_at: self.read_at.get(),
        }) {
            self.push_or_stash(dst, old, stash);
        }
    }

    /// Sends every staged batch to its shard (or to the stash when its queue is full).
    pub fn flush_staged(&self, stash: &mut Stash) {
        let mut staging = self.staging.borrow_mut();
        for (dst, slot) in staging.iter_mut().enumerate() {
            if let Some(b) = slot.take() {
                self.push_or_stash(dst as u16, b, stash);
            }
        }
    }

    /// Pushes to `dst`'s queue unless that queue is blocked (full, or holding back earlier
    /// stashed batches); otherwise appends to the stash and marks `dst` blocked.
    fn push_or_stash(&self, dst: u16, b: RemoteBatch, stash: &mut Stash) {
        if stash.blocked(dst) {
            stash.items.push((dst, b));
            return;
        }
        let q = &self.global.shards[dst as usize].inbound[self.id as usize];
        if let Err(b) = q.push(b) {
            stash.block(dst);
            stash.items.push((dst, b));
        }
    }

    /// Writes out (wakes writers of) every connection touched since the last flush, wakes every
    /// peer shard given messages, publishes the batch counters, and returns the touched
    /// connections that are above the soft pending limit.
    pub fn flush(&self) -> Vec<Rc<Conn>> {
        let soft = self.limits.borrow().soft_pending();
        let touched = std::mem::take(&mut *self.touched.borrow_mut());
        let mut congested = Vec::new();
        for c in touched {
            c.st.borrow_mut().touched = false;
            if c.write_now(soft) {
                c.wake_writer.notify_one();
            }
            let mut st = c.st.borrow_mut();
            let pending = st.pending();
            let over = !st.closing && pending > soft;
            self.account(&mut st);
            drop(st);
            c.load
                .pending_bytes
                .store(pending as u64, std::sync::atomic::Ordering::Relaxed);
            if over {
                congested.push(c);
            }
        }
        let peers = std::mem::take(&mut *self.peers_touched.borrow_mut());
        if !peers.is_empty() {
            let mut flags = self.peer_flag.borrow_mut();
            for p in peers {
                flags[p as usize] = false;
                self.global.shards[p as usize].wake.notify_one();
            }
        }
        self.publish_counters();
        self.enforce_total();
        congested
    }

    /// Brings a connection's pending bytes into the shard's total.
    /// A closing connection counts as nothing: what it still holds is on its way out.
    pub fn account(&self, st: &mut conn::ConnState) {
        let p = if st.closing { 0 } else { st.pending() };
        if p != st.reported {
            self.pending_total
                .set((self.pending_total.get() + p).saturating_sub(st.reported));
            st.reported = p;
        }
    }

    /// Past this shard's share of `max_pending_total`, closes the connections with the most
    /// bytes waiting (slow consumers) until under it.
    fn enforce_total(&self) {
        let limits = self.limits.borrow();
        let share = limits.max_pending_total / self.global.shards.len().max(1);
        let mut guard = 0;
        while self.pending_total.get() > share && guard < 64 {
            guard += 1;
            let worst = self
                .conns
                .borrow()
                .values()
                .filter(|c| !c.st.borrow().closing)
                .max_by_key(|c| c.st.borrow().pending())
                .cloned();
            let Some(c) = worst else { break };
            let pending = c.st.borrow().pending();
            c.slow_consumer(
                self,
                &format!(
                    "the broker's outbound buffers passed max_pending_total ({} bytes); this connection had the most waiting ({pending} bytes)",
                    limits.max_pending_total
                ),
            );
            self.account(&mut c.st.borrow_mut());
        }
    }

    fn publish_counters(&self) {
        let s = &self.handle.stats;
        let c = &self.counters;
        ShardStats::add(&s.msgs_in, c.msgs_in.take());
        ShardStats::add(&s.bytes_in, c.bytes_in.take());
        ShardStats::add(&s.msgs_out, c.msgs_out.take());
        ShardStats::add(&s.bytes_out, c.bytes_out.take());
        ShardStats::add(&s.cross_shard_out, c.cross.take());
        ShardStats::add(&s.dropped, c.dropped.take());
    }

    /// Pushes stashed cross-shard messages in order, waiting for room as long as needed.
    pub async fn push_stash(&self, stash: &mut Stash) {
        while !stash.items.is_empty() {
            stash.clear_blocks();
            let items = std::mem::take(&mut stash.items);
            let mut woken: Vec<u16> = Vec::new();
            for (dst, r) in items {
                self.push_or_stash(dst, r, stash);
                // Wake every destination touched here, whether its push went through or it is
                // still full: the wake from the batch's flush may have come before this push.
                if !woken.contains(&dst) {
                    woken.push(dst);
                    self.global.shards[dst as usize].wake.notify_one();
                }
            }
            if stash.items.is_empty() {
                break;
            }
            let _ =
                tokio::time::timeout(Duration::from_millis(1), self.handle.space.notified()).await;
        }
        stash.clear_blocks();
    }

    /// Waits while any of `congested` is above the soft limit and still reading (paces the
    /// caller to its consumers; a consumer that stopped reading is not waited for).
    pub async fn pace(&self, congested: Vec<Rc<Conn>>) {
        let soft = self.limits.borrow().soft_pending();
        for c in congested {
            for _ in 0..10_000 {
                if !c.is_congested(soft) {
                    break;
                }
                let _ = tokio::time::timeout(conn::PROGRESS_WINDOW, c.drained.notified()).await;
            }
        }
    }
}

/// Cross-shard batches that did not fit their queue yet, in order, with the shards whose
/// queue was found full.
#[derive(Debug, Default)]
pub(crate) struct Stash {
    pub items: Vec<(u16, RemoteBatch)>,
    blocked_list: Vec<u16>,
}

impl Stash {
    fn blocked(&self, dst: u16) -> bool {
        self.blocked_list.contains(&dst)
    }
    fn block(&mut self, dst: u16) {
        if !self.blocked(dst) {
            self.blocked_list.push(dst);
        }
    }
    fn clear_blocks(&mut self) {
        self.blocked_list.clear();
    }
}

/// Drains this shard's inbound queues and delivers to local connections. A batch is set
/// aside half-done when a delivery takes a connection past the soft limit, and resumed after
/// pacing.
async fn drain(shard: Rc<Shard>) {
    const BUDGET: usize = 4096;
    let n = shard.global.shards.len();
    let mut current: Vec<Option<(RemoteBatch, usize)>> = (0..n).map(|_| None).collect();
    // Whether the last round stopped before the queues were empty (budget or pacing).
    let mut more = false;
    loop {
        if !more && current.iter().all(Option::is_none) {
            shard.handle.wake.notified().await;
        }
        let mut delivered = 0usize;
        let mut oldest: Option<Instant> = None;
        'sources: for (src, cur) in current.iter_mut().enumerate() {
            let q = &shard.handle.inbound[src];
            let mut popped = false;
            while delivered < BUDGET {
                let (batch, start) = match cur.take() {
                    Some(c) => c,
                    None => match q.pop() {
                        Some(b) => {
                            popped = true;
                            (b, 0)
                        }
                        None => break,
                    },
                };
                let mut i = start;
                if start == 0 {
                    oldest = Some(oldest.map_or(batch.read_at, |o: Instant| o.min(batch.read_at)));
                }
                while i < batch.items.len() {
                    let it = batch.items[i];
                    i += 1;
                    let (off, end) = (it.off as usize, it.off as usize + it.len as usize);
                    match batch.frames.get(off..end) {
                        Some(frame) => {
                            shard.deliver_local(it.conn, it.sid, it.flags, frame);
                        }
                        None => bump(&shard.counters.dropped, 1),
                    }
                    delivered += 1;
                    if shard.over_soft.get() {
                        break;
                    }
                }
                if i < batch.items.len() {
                    *cur = Some((batch, i));
                }
                if shard.over_soft.get() {
                    if popped {
                        shard.global.shards[src].space.notify_waiters();
                    }
                    break 'sources;
                }
            }
            if popped {
                shard.global.shards[src].space.notify_waiters();
            }
        }
        more = delivered >= BUDGET || shard.over_soft.get();
        if delivered == 0 && !more {
            continue;
        }
        shard.over_soft.set(false);
        let congested = shard.flush();
        if let Some(t) = oldest {
            shard
                .global
                .telemetry
                .hist
                .residence
                .record(t.elapsed().as_micros() as u64);
        }
        shard.pace(congested).await;
        // Let this shard's readers and writers run between drain rounds.
        tokio::task::yield_now().await;
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
        tokio::task::spawn_local(drain(shard.clone()));
        tokio::task::spawn_local(conn::keepalive(shard.clone()));
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
                        tokio::task::spawn_local(conn::serve(shard.clone(), stream));
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
