//! One client connection on its shard: the reader (read big, parse every complete frame, route,
//! flush once per batch) and the writer (double-buffered outbound bytes, written as they come).
//!
//! Bad input is answered with an ERR frame carrying a stable code (see `protocol/PROTOCOL.md`):
//! frames that leave the stream in sync (unknown op, invalid subject, oversized payload inside
//! the frame limit, ...) are dropped and the connection stays open; frames that break the
//! stream (bad length, malformed fields, over the frame limit) are fatal: ERR, then close.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentwire_protocol::{
    self as proto, features, flags, Frame, HelloFrame, PubFrame, SubFrame, UnsubFrame,
};
use agentwire_protocol::{ErrorCode, InfoFrame};
use bytes::{Buf, Bytes, BytesMut};
use rustc_hash::FxHashMap;
use tokio::sync::Notify;

use super::{bump, Shard, Stash};
use crate::config::RoutingPolicy;
use crate::routing::SubTarget;
use crate::stats::ShardStats;
use crate::telemetry::hist::Windowed;
use crate::telemetry::load::ConnLoad;
use crate::transport::{Incoming, Transport};

/// A consumer that wrote nothing to its socket for this long is "not reading": publishers are
/// not paced to it, and it runs into `max_pending`.
pub(crate) const PROGRESS_WINDOW: Duration = Duration::from_millis(100);

/// Smallest read, and the read size of an idle connection.
const MIN_READ: usize = 4096;

/// Largest spare outbound buffer kept between writes.
const MAX_SPARE: usize = 1 << 20;

/// Internal delivery flag (never on the wire): the message is a request routed to this queue
/// member by load; its reply is timed.
pub(crate) const TRACK_REPLY: u8 = 0x80;

/// Requests tracked per connection at most (older ones count as given up).
const MAX_TRACKED: usize = 65_536;

/// A tracked request not answered within this long is given up (counted as answered).
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

/// One subscription of a connection.
#[derive(Debug)]
pub(crate) struct Sub {
    pub pattern: Box<[u8]>,
    pub queue: Option<Box<[u8]>>,
    /// 0: no limit; N: unsubscribe after N deliveries in total.
    pub max: u32,
    pub delivered: u64,
}

/// Mutable state of a connection, owned by its shard.
#[derive(Debug)]
pub(crate) struct ConnState {
    /// Bytes queued for writing (the writer swaps this out).
    pub out: BytesMut,
    /// Bytes the writer has taken and not yet written.
    pub inflight: usize,
    /// Active subscriptions by sid.
    pub subs: FxHashMap<u32, Sub>,
    /// No more deliveries: the writer writes what is left and closes.
    pub closing: bool,
    /// In the shard's touched list.
    pub touched: bool,
    /// Last time the writer made progress (or started writing after being idle).
    pub last_progress: Instant,
    /// Pending bytes last added to the shard's total ([`Shard::account`]).
    pub reported: usize,
}

impl ConnState {
    /// Outbound bytes not yet written to the socket.
    pub fn pending(&self) -> usize {
        self.out.len() + self.inflight
    }
}

/// A connection as its shard sees it.
#[derive(Debug)]
pub(crate) struct Conn {
    pub id: u64,
    /// The socket, shared by the reader, the writer and the shard's flush (all on this shard's
    /// thread; every use goes through `&TcpStream` readiness + `try_*` calls, never held across
    /// an await by more than one of them for writing: see [`Conn::write_now`]).
    pub stream: Rc<Transport>,
    pub st: RefCell<ConnState>,
    /// Wakes the writer (new output, or closing).
    pub wake_writer: Notify,
    /// Fires when the outbound bytes fall to the soft limit.
    pub drained: Notify,
    /// Tells the reader to stop (slow consumer, write failure).
    pub stop: Notify,
    /// This connection's load, read by every shard's queue-group routing.
    pub load: Arc<ConnLoad>,
    /// Delivery times of tracked requests not yet answered, oldest first.
    pub reqs: RefCell<VecDeque<Instant>>,
    /// The round-trip histogram of the component it registered as.
    pub component: RefCell<Option<Arc<Windowed>>>,
    /// When the connection was accepted.
    pub opened: Instant,
    /// The client sent its HELLO.
    pub handshaken: std::cell::Cell<bool>,
    /// When bytes were last read from it.
    pub last_read: std::cell::Cell<Instant>,
    /// Keep-alive PINGs sent since the last read.
    pub pings_out: std::cell::Cell<u32>,
    /// Who a verified TLS client certificate says this is (mutual TLS).
    pub identity: Option<String>,
    /// The nonce sent in INFO for ed25519 authentication (empty when unused).
    pub nonce: Box<[u8]>,
    /// Its user and rules, once authenticated (`None`: the broker runs open).
    pub auth: RefCell<Option<crate::auth::ConnAuth>>,
    /// Requests delivered to it are remembered as replies it may publish (`allow_responses`).
    pub tracks_responses: std::cell::Cell<bool>,
}

impl Conn {
    fn new(id: u64, stream: Rc<Transport>, identity: Option<String>, nonce: Box<[u8]>) -> Conn {
        Conn {
            id,
            stream,
            st: RefCell::new(ConnState {
                // Allocated on first use: an idle connection holds no buffers.
                out: BytesMut::new(),
                inflight: 0,
                subs: FxHashMap::default(),
                closing: false,
                touched: false,
                last_progress: Instant::now(),
                reported: 0,
            }),
            wake_writer: Notify::new(),
            drained: Notify::new(),
            stop: Notify::new(),
            load: Arc::new(ConnLoad::default()),
            reqs: RefCell::new(VecDeque::new()),
            component: RefCell::new(None),
            opened: Instant::now(),
            handshaken: std::cell::Cell::new(false),
            last_read: std::cell::Cell::new(Instant::now()),
            pings_out: std::cell::Cell::new(0),
            identity,
            nonce,
            auth: RefCell::new(None),
            tracks_responses: std::cell::Cell::new(false),
        }
    }

    /// A request with reply subject `reply` was delivered here: with `allow_responses`, one
    /// publish to it is allowed whatever the publish rule says.
    pub fn note_request(&self, reply: &[u8]) {
        if let Some(a) = self.auth.borrow_mut().as_mut() {
            a.note_request(reply);
        }
    }

    /// A tracked request was delivered to this connection.
    pub fn track_request(&self) {
        let mut q = self.reqs.borrow_mut();
        if q.len() >= MAX_TRACKED {
            q.pop_front();
            self.load.give_up(1);
        }
        q.push_back(Instant::now());
    }

    /// This connection published: if requests are outstanding, take it as the answer to the
    /// oldest and time it.
    #[inline]
    pub fn answered(&self) {
        let mut q = self.reqs.borrow_mut();
        let Some(&first) = q.front() else { return };
        let now = Instant::now();
        let mut first = first;
        while now.duration_since(first) > GIVE_UP_AFTER {
            q.pop_front();
            self.load.give_up(1);
            match q.front() {
                Some(&t) => first = t,
                None => return,
            }
        }
        q.pop_front();
        drop(q);
        let us = now.duration_since(first).as_micros() as u64;
        self.load.record_answer(us);
        if let Some(h) = &*self.component.borrow() {
            h.record(us);
        }
    }

    /// Writes what is queued straight to the socket when the writer is idle (no write in
    /// flight), saving a task wake-up per batch. Returns whether the writer must run: bytes are
    /// left (the socket is full) or the connection is closing.
    pub fn write_now(&self, soft: usize) -> bool {
        let mut st = self.st.borrow_mut();
        if st.inflight > 0 || st.out.is_empty() {
            return !st.out.is_empty() || st.closing;
        }
        match self.stream.try_write(&st.out) {
            Ok(n) if n > 0 => {
                st.out.advance(n);
                st.last_progress = Instant::now();
                if st.pending() <= soft {
                    drop(st);
                    self.drained.notify_waiters();
                    return !self.st.borrow().out.is_empty() || self.st.borrow().closing;
                }
            }
            // WouldBlock, or an error the writer will meet and report.
            _ => {}
        }
        !st.out.is_empty() || st.closing
    }

    /// Above `soft` pending bytes while still reading.
    pub fn is_congested(&self, soft: usize) -> bool {
        let st = self.st.borrow();
        !st.closing && st.pending() > soft && st.last_progress.elapsed() < PROGRESS_WINDOW
    }

    /// Queues an ERR frame for this connection (and closes it after, when the code is fatal).
    pub fn send_err(self: &Rc<Self>, shard: &Shard, code: ErrorCode, message: &str) {
        shard.handle.stats.count_error(code);
        let mut st = self.st.borrow_mut();
        if st.closing {
            return;
        }
        proto::encode_err(&mut st.out, code.as_u16(), code.is_fatal(), message);
        if code.is_fatal() {
            st.closing = true;
            drop(st);
            self.stop.notify_one();
        } else {
            drop(st);
        }
        shard.touch(self);
    }

    /// Closes this connection as a slow consumer: what is buffered for it is dropped (counted),
    /// it gets ERR slow_consumer, and no more messages.
    pub fn slow_consumer(self: &Rc<Self>, shard: &Shard, why: &str) {
        let mut st = self.st.borrow_mut();
        if st.closing {
            return;
        }
        let buffered = st.out.len();
        st.out.clear();
        shard.account(&mut st);
        drop(st);
        tracing::warn!(
            conn = self.id,
            shard = shard.id,
            dropped_bytes = buffered,
            "slow consumer: {why}"
        );
        ShardStats::add(&shard.handle.stats.slow_consumers, 1);
        self.send_err(
            shard,
            ErrorCode::SlowConsumer,
            &format!("slow consumer: {why}; connection closed"),
        );
    }
}

/// Checks every connection of the shard against its deadlines, until shutdown: no HELLO
/// within `handshake_timeout_ms` → `handshake_timeout`; nothing read for `ping_interval_ms` →
/// a PING, and after `max_pings_out` of those with nothing read back → `stale_connection`.
pub(crate) async fn keepalive(shard: Rc<Shard>) {
    let limits = *shard.limits.borrow();
    let handshake = Duration::from_millis(limits.handshake_timeout_ms);
    let interval = Duration::from_millis(limits.ping_interval_ms);
    let tick = (handshake.min(interval) / 4).max(Duration::from_millis(5));
    let mut stop = shard.shutdown.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    return;
                }
            }
        }
        let now = Instant::now();
        let conns: Vec<Rc<Conn>> = shard.conns.borrow().values().cloned().collect();
        for c in conns {
            if c.st.borrow().closing {
                continue;
            }
            if !c.handshaken.get() {
                if now.saturating_duration_since(c.opened) >= handshake {
                    c.send_err(
                        &shard,
                        ErrorCode::HandshakeTimeout,
                        &format!(
                            "no HELLO within {} ms; closing",
                            limits.handshake_timeout_ms
                        ),
                    );
                }
                continue;
            }
            // Each PING restarts the interval: the next one is due an interval after it.
            let due = c.last_read.get() + interval * (c.pings_out.get() + 1);
            if now < due {
                continue;
            }
            if c.pings_out.get() >= limits.max_pings_out {
                tracing::info!(
                    conn = c.id,
                    shard = shard.id,
                    "stale connection: no answer to keep-alive PINGs"
                );
                c.send_err(
                    &shard,
                    ErrorCode::StaleConnection,
                    &format!(
                        "no answer to {} keep-alive PINGs {} ms apart; closing",
                        limits.max_pings_out, limits.ping_interval_ms
                    ),
                );
            } else {
                c.pings_out.set(c.pings_out.get() + 1);
                proto::encode_ping(&mut c.st.borrow_mut().out);
                shard.touch(&c);
            }
        }
        let _ = shard.flush();
    }
}

/// Per-connection reader state.
struct ReaderState {
    handshaken: bool,
    no_responders: bool,
    name: String,
}

/// Serves one accepted connection until it closes.
pub(crate) async fn serve(shard: Rc<Shard>, incoming: Incoming) {
    let global = shard.global.clone();
    let stream = match Transport::from_std(incoming.stream) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot register connection: {e}");
            global
                .conn_count
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
    };
    let peer = incoming.peer;
    let id = global
        .next_conn_id
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let stream = Rc::new(stream);
    let nonce: Box<[u8]> = if global.auth.load().wants_nonce() {
        let mut n = [0u8; 24];
        rand::Rng::fill(&mut rand::thread_rng(), &mut n[..]);
        n.into()
    } else {
        Box::default()
    };
    let conn = Rc::new(Conn::new(id, stream, incoming.identity, nonce));
    shard.conns.borrow_mut().insert(id, conn.clone());
    global.loads.write().insert(id, conn.load.clone());
    if let Some(name) = &conn.identity {
        global.identities.lock().insert(id, name.clone());
    }
    ShardStats::add(&shard.handle.stats.conns_total, 1);
    ShardStats::add(&shard.handle.stats.conns_open, 1);
    tracing::debug!(conn = id, shard = shard.id, ?peer, identity = ?conn.identity, "connection open");

    {
        let limits = *shard.limits.borrow();
        let info = InfoFrame {
            version: proto::PROTOCOL_VERSION,
            features: features::HEADERS | features::NO_RESPONDERS,
            max_payload: limits.max_payload,
            shard_count: global.shards.len() as u16,
            shard_id: shard.id,
            client_id: id,
            server_id: global.server_id.as_bytes(),
            nonce: &conn.nonce,
        };
        let mut st = conn.st.borrow_mut();
        if proto::encode_info(&mut st.out, &info).is_err() {
            tracing::error!("server id too long for INFO");
        }
    }
    let writer = tokio::task::spawn_local(write_loop(shard.clone(), conn.clone()));
    conn.wake_writer.notify_one();

    let why = read_loop(&shard, &conn).await;
    tracing::debug!(conn = id, shard = shard.id, "connection closing: {why}");
    super::control::connection_closed(&shard, &conn);
    conn.load.set_healthy(false);
    global.loads.write().remove(&id);
    if conn.identity.is_some() {
        global.identities.lock().remove(&id);
    }

    // Stop deliveries and drop the subscriptions at once; then let the writer finish.
    let subs = {
        let mut st = conn.st.borrow_mut();
        st.closing = true;
        std::mem::take(&mut st.subs)
    };
    if !subs.is_empty() {
        let target = |sid| SubTarget {
            shard: shard.id,
            conn: id,
            sid,
        };
        global.routing.remove_many(
            subs.iter()
                .map(|(sid, s)| (&*s.pattern, s.queue.as_deref(), target(*sid))),
        );
    }
    conn.wake_writer.notify_one();
    let grace = Duration::from_millis(global.config.shutdown_grace_ms);
    let abort = writer.abort_handle();
    if tokio::time::timeout(grace, writer).await.is_err() {
        abort.abort();
    }
    shard.conns.borrow_mut().remove(&id);
    {
        let mut st = conn.st.borrow_mut();
        st.out = BytesMut::new();
        st.inflight = 0;
        shard.account(&mut st);
    }
    ShardStats::add_neg(&shard.handle.stats.conns_open);
    global
        .conn_count
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    if shard.conns.borrow().is_empty() {
        shard.conns_gone.notify_waiters();
    }
}

/// Reads and handles frames until the connection ends; returns why it ended.
async fn read_loop(shard: &Rc<Shard>, conn: &Rc<Conn>) -> String {
    let cfg = &shard.global.config;
    let max_frame = cfg.limits.max_frame();
    // Reads start small and grow (up to `read_buffer`) while they fill the buffer, so 10,000
    // idle connections cost little; an idle connection drops its buffer between reads.
    let mut buf = BytesMut::new();
    let mut read_size = MIN_READ.min(cfg.read_buffer);
    let mut stash = Stash::default();
    let mut rs = ReaderState {
        handshaken: false,
        no_responders: false,
        name: String::new(),
    };
    let mut stop_sig = shard.shutdown.clone();
    let mut need = 0usize;
    loop {
        if *stop_sig.borrow() {
            conn.send_err(shard, ErrorCode::ServerShutdown, "server shutting down");
            shard.flush();
            return "server shutdown".into();
        }
        let r = tokio::select! {
            biased;
            _ = conn.stop.notified() => return "closed by server".into(),
            r = stop_sig.changed() => {
                if r.is_err() {
                    return "server gone".into();
                }
                continue;
            }
            r = conn.stream.readable() => r,
        };
        if let Err(e) = r {
            return format!("read error: {e}");
        }
        let want = read_size.max(need.saturating_sub(buf.len()));
        if buf.capacity() - buf.len() < want / 2 {
            buf.reserve(want);
        }
        let spare = buf.capacity() - buf.len();
        match conn.stream.try_read_buf(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Ok(0) => {
                if !buf.is_empty() {
                    ShardStats::add(&shard.handle.stats.truncated_frames, 1);
                    return format!("peer closed mid-frame ({} bytes buffered)", buf.len());
                }
                return "peer closed".into();
            }
            Ok(n) => {
                conn.last_read.set(Instant::now());
                conn.pings_out.set(0);
                if n == spare {
                    read_size = (read_size * 2).min(cfg.read_buffer);
                } else if n < read_size / 4 {
                    read_size = (read_size / 2).max(MIN_READ.min(cfg.read_buffer));
                }
            }
            Err(e) => return format!("read error: {e}"),
        }
        // Find the complete frames at the front of the buffer.
        let mut complete = 0usize;
        let mut fatal = None;
        need = 0;
        loop {
            match proto::frame_len(&buf[complete..], max_frame) {
                Ok(Some(len)) if buf.len() - complete >= len => complete += len,
                Ok(Some(len)) => {
                    need = len;
                    break;
                }
                Ok(None) => break,
                Err(e) => {
                    fatal = Some(e);
                    break;
                }
            }
        }
        if complete > 0 {
            shard.read_at.set(Instant::now());
            let batch = buf.split_to(complete).freeze();
            if let Err(e) = handle_batch(shard, conn, &batch, &mut rs, &mut stash) {
                fatal = Some(e);
            }
        }
        shard.flush_staged(&mut stash);
        if let Some(e) = fatal {
            conn.send_err(shard, e.code(), &e.to_string());
            shard.flush();
            shard.push_stash(&mut stash).await;
            return format!("protocol error: {e}");
        }
        if conn.st.borrow().closing {
            shard.flush();
            shard.push_stash(&mut stash).await;
            return "closed by server".into();
        }
        let congested = shard.flush();
        shard.record_stamped();
        if complete > 0 {
            shard
                .global
                .telemetry
                .hist
                .residence
                .record(shard.read_at.get().elapsed().as_micros() as u64);
        }
        shard.push_stash(&mut stash).await;
        shard.pace(congested).await;
        if buf.is_empty() && read_size <= MIN_READ {
            // Idle: give the memory back (frozen batches keep what they still need).
            buf = BytesMut::new();
        }
    }
}

/// Handles every frame of a batch of complete frames.
fn handle_batch(
    shard: &Shard,
    conn: &Rc<Conn>,
    batch: &Bytes,
    rs: &mut ReaderState,
    stash: &mut Stash,
) -> Result<(), proto::DecodeError> {
    let mut off = 0usize;
    while off < batch.len() {
        let len = proto::frame_len(&batch[off..], usize::MAX)?.unwrap_or(batch.len() - off);
        let frame_bytes = &batch[off..off + len];
        let frame = proto::parse_frame(frame_bytes)?;
        let at = off;
        off += len;
        if !rs.handshaken {
            match frame {
                Frame::Hello(h) => {
                    hello(shard, conn, rs, &h);
                    if conn.st.borrow().closing {
                        return Ok(());
                    }
                    continue;
                }
                _ => {
                    conn.send_err(
                        shard,
                        ErrorCode::HandshakeRequired,
                        "the first frame must be HELLO",
                    );
                    return Ok(());
                }
            }
        }
        match frame {
            Frame::Pub(p) => publish(shard, conn, rs, &p, batch, at, len, stash),
            Frame::Sub(s) => subscribe(shard, conn, &s),
            Frame::Unsub(u) => unsubscribe(shard, conn, u),
            Frame::Ping => {
                proto::encode_pong(&mut conn.st.borrow_mut().out);
                shard.touch(conn);
            }
            Frame::Pong => {}
            Frame::Hello(_) | Frame::Info(_) | Frame::Msg(_) | Frame::Err(_) => {
                conn.send_err(
                    shard,
                    ErrorCode::UnexpectedOp,
                    &format!(
                        "op {:#04x} is not sent by clients (or HELLO twice); frame ignored",
                        frame.op()
                    ),
                );
            }
            Frame::Unknown { op, body, .. }
                if (proto::op::CONTROL_FIRST..=proto::op::CONTROL_LAST).contains(&op) =>
            {
                super::control::handle(shard, conn, op, body);
            }
            Frame::Unknown { op, .. } => {
                conn.send_err(
                    shard,
                    ErrorCode::UnknownOp,
                    &format!("op {op:#04x} is an unknown op; frame skipped"),
                );
            }
        }
        if conn.st.borrow().closing {
            return Ok(());
        }
    }
    Ok(())
}

fn hello(shard: &Shard, conn: &Rc<Conn>, rs: &mut ReaderState, h: &HelloFrame<'_>) {
    if h.version != proto::PROTOCOL_VERSION {
        conn.send_err(
            shard,
            ErrorCode::UnsupportedVersion,
            &format!(
                "protocol version {} is not supported; this server speaks {}",
                h.version,
                proto::PROTOCOL_VERSION
            ),
        );
        return;
    }
    let auth = shard.global.auth.load();
    if auth.enabled() {
        match auth.authenticate(h, &conn.nonce, conn.identity.as_deref()) {
            Ok(user) => {
                tracing::debug!(conn = conn.id, user = %user.name, "authenticated");
                let a = crate::auth::ConnAuth::new(user);
                conn.tracks_responses.set(a.tracks_responses());
                *conn.auth.borrow_mut() = Some(a);
            }
            Err(why) => {
                tracing::info!(conn = conn.id, name = %String::from_utf8_lossy(h.name), "{why}");
                conn.send_err(shard, ErrorCode::AuthFailed, &why);
                return;
            }
        }
    }
    rs.handshaken = true;
    conn.handshaken.set(true);
    rs.no_responders = h.features & features::NO_RESPONDERS != 0;
    rs.name = String::from_utf8_lossy(h.name).into_owned();
    tracing::debug!(conn = conn.id, name = %rs.name, "handshake done");
}

/// The publisher's send time from the `Aw-Sent-Us` header (µs since the Unix epoch), if any.
fn sent_at_us(headers: &[u8]) -> Option<u64> {
    proto::headers::iter(headers)
        .filter_map(Result::ok)
        .find(|(n, _)| n.eq_ignore_ascii_case(b"aw-sent-us"))
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())
}

fn show(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(128)]);
    format!("{s:?}")
}

#[allow(clippy::too_many_arguments)]
fn publish(
    shard: &Shard,
    conn: &Rc<Conn>,
    rs: &ReaderState,
    p: &PubFrame<'_>,
    batch: &Bytes,
    at: usize,
    len: usize,
    stash: &mut Stash,
) {
    let limits = shard.limits.borrow();
    let body = p.headers.len() + p.payload.len();
    if body > limits.max_payload as usize {
        conn.send_err(
            shard,
            ErrorCode::PayloadTooLarge,
            &format!(
                "message of {body} bytes (headers + payload) exceeds max_payload {}; dropped",
                limits.max_payload
            ),
        );
        return;
    }
    if !p.reply.is_empty() {
        if let Err(e) = proto::validate_literal(p.reply) {
            conn.send_err(
                shard,
                ErrorCode::InvalidSubject,
                &format!("invalid reply subject {}: {e}; dropped", show(p.reply)),
            );
            return;
        }
    }
    if !p.headers.is_empty() {
        if let Err(e) = proto::headers::validate(p.headers) {
            conn.send_err(
                shard,
                ErrorCode::InvalidHeaders,
                &format!("invalid header block: {e}; dropped"),
            );
            return;
        }
        if let Some(sent) = sent_at_us(p.headers) {
            shard.stamped.borrow_mut().push(sent);
        }
    }
    // The subject is validated only when it is not in the match cache (cached ones were valid).
    let found = shard.cache.borrow_mut().lookup_valid(
        &shard.global.routing,
        p.subject,
        proto::validate_literal,
    );
    let matches = match found {
        Ok(m) => m,
        Err(e) => {
            conn.send_err(
                shard,
                ErrorCode::InvalidSubject,
                &format!("invalid publish subject {}: {e}; dropped", show(p.subject)),
            );
            return;
        }
    };
    if let Some(a) = conn.auth.borrow_mut().as_mut() {
        if !a.may_publish(p.subject) {
            let user = a.user.name.clone();
            conn.send_err(
                shard,
                ErrorCode::PermissionDenied,
                &format!(
                    "permission denied: user {user:?} may not publish to {}; dropped",
                    show(p.subject)
                ),
            );
            return;
        }
    }
    bump(&shard.counters.msgs_in, 1);
    bump(&shard.counters.bytes_in, body as u64);
    conn.answered();
    let n = shard.publishes.get().wrapping_add(1);
    shard.publishes.set(n);
    if n % super::HOT_SAMPLE == 0 {
        shard.global.telemetry.hot.sample(p.subject);
    }
    if matches.is_empty() {
        if !p.reply.is_empty() && rs.no_responders {
            no_responders(shard, p.reply, stash);
        }
        return;
    }
    route(
        shard,
        &matches,
        0,
        !p.reply.is_empty(),
        batch,
        at,
        len,
        stash,
    );
}

/// Delivers one message (the PUB frame at `at..at + len` of `src`) to every plain match and
/// one member of each queue group: by load (power of two choices) unless the policy is round
/// robin. A request (`request`: it has a reply subject) routed by load is counted against its
/// member until the member publishes again (its reply), which is timed.
#[allow(clippy::too_many_arguments)]
fn route(
    shard: &Shard,
    matches: &crate::routing::MatchSet,
    msg_flags: u8,
    request: bool,
    src: &Bytes,
    at: usize,
    len: usize,
    stash: &mut Stash,
) {
    for t in &matches.plain {
        deliver(shard, *t, msg_flags, src, at, len, stash);
    }
    let by_load = shard.global.config.admin.routing == RoutingPolicy::Load;
    for g in &matches.groups {
        let n = g.members.len();
        if n == 0 {
            continue;
        }
        // A request is tracked (round trip per component, load) even to a lone member.
        if by_load && (n > 1 || request) {
            let (i, tracked) = if request {
                shard.choose_member(&g.members, true)
            } else {
                (
                    shard.sticky_member(g as *const _ as usize, &g.members),
                    false,
                )
            };
            let f = if tracked {
                msg_flags | TRACK_REPLY
            } else {
                msg_flags
            };
            if deliver(shard, g.members[i], f, src, at, len, stash) {
                continue;
            }
            if tracked {
                shard.untrack(g.members[i].conn);
            }
        }
        let start = shard.rr.get();
        shard.rr.set(start.wrapping_add(1));
        // Try members in turn from the cursor until one takes it (a local member that is
        // closing refuses; a remote one is assumed to take it).
        for k in 0..n {
            let t = g.members[(start as usize + k) % n];
            if deliver(shard, t, msg_flags, src, at, len, stash) {
                break;
            }
        }
    }
}

fn deliver(
    shard: &Shard,
    t: SubTarget,
    msg_flags: u8,
    src: &Bytes,
    at: usize,
    len: usize,
    stash: &mut Stash,
) -> bool {
    if t.shard == shard.id {
        shard.deliver_local(t.conn, t.sid, msg_flags, &src[at..at + len])
    } else {
        shard.stage_remote(t.shard, src, at, len, t.conn, t.sid, msg_flags, stash);
        true
    }
}

/// A request matched no subscriber: tell the requester with an empty MSG flagged
/// NO_RESPONDERS on its reply subject.
fn no_responders(shard: &Shard, reply: &[u8], stash: &mut Stash) {
    let mut b = BytesMut::with_capacity(16 + reply.len());
    if proto::encode_pub(&mut b, reply, b"", b"", b"").is_err() {
        return;
    }
    let frame = b.freeze();
    let matches = shard
        .cache
        .borrow_mut()
        .lookup(&shard.global.routing, reply);
    route(
        shard,
        &matches,
        flags::MSG_NO_RESPONDERS,
        false,
        &frame,
        0,
        frame.len(),
        stash,
    );
}

fn subscribe(shard: &Shard, conn: &Rc<Conn>, s: &SubFrame<'_>) {
    if let Err(e) = proto::validate_pattern(s.subject) {
        conn.send_err(
            shard,
            ErrorCode::InvalidSubject,
            &format!(
                "invalid subscription subject {} (sid {}): {e}",
                show(s.subject),
                s.sid
            ),
        );
        return;
    }
    if !s.queue.is_empty() {
        if let Err(e) = proto::validate_queue(s.queue) {
            conn.send_err(
                shard,
                ErrorCode::InvalidQueue,
                &format!("invalid queue group {} (sid {}): {e}", show(s.queue), s.sid),
            );
            return;
        }
    }
    if let Some(a) = conn.auth.borrow().as_ref() {
        if !a.may_subscribe(s.subject) {
            conn.send_err(
                shard,
                ErrorCode::PermissionDenied,
                &format!(
                    "permission denied: user {:?} may not subscribe to {} (sid {})",
                    a.user.name,
                    show(s.subject),
                    s.sid
                ),
            );
            return;
        }
    }
    let max = shard.limits.borrow().max_subscriptions;
    let mut st = conn.st.borrow_mut();
    if st.subs.contains_key(&s.sid) {
        drop(st);
        conn.send_err(
            shard,
            ErrorCode::DuplicateSid,
            &format!("sid {} is already in use; subscription ignored", s.sid),
        );
        return;
    }
    if st.subs.len() >= max {
        drop(st);
        conn.send_err(
            shard,
            ErrorCode::TooManySubscriptions,
            &format!(
                "connection holds the maximum of {max} subscriptions; sid {} ignored",
                s.sid
            ),
        );
        return;
    }
    let queue = (!s.queue.is_empty()).then(|| Box::<[u8]>::from(s.queue));
    st.subs.insert(
        s.sid,
        Sub {
            pattern: s.subject.into(),
            queue,
            max: 0,
            delivered: 0,
        },
    );
    drop(st);
    let q = (!s.queue.is_empty()).then_some(s.queue);
    shard.global.routing.insert(
        s.subject,
        q,
        SubTarget {
            shard: shard.id,
            conn: conn.id,
            sid: s.sid,
        },
    );
}

fn unsubscribe(shard: &Shard, conn: &Rc<Conn>, u: UnsubFrame) {
    let mut st = conn.st.borrow_mut();
    let Some(sub) = st.subs.get_mut(&u.sid) else {
        drop(st);
        conn.send_err(
            shard,
            ErrorCode::UnknownSid,
            &format!("sid {} is not an active subscription", u.sid),
        );
        return;
    };
    if u.max_msgs != 0 && sub.delivered < u64::from(u.max_msgs) {
        sub.max = u.max_msgs;
        return;
    }
    if let Some(sub) = st.subs.remove(&u.sid) {
        drop(st);
        shard.global.routing.remove(
            &sub.pattern,
            sub.queue.as_deref(),
            SubTarget {
                shard: shard.id,
                conn: conn.id,
                sid: u.sid,
            },
        );
    }
}

/// Writes the connection's outbound bytes that [`Conn::write_now`] could not, double-buffered:
/// while one buffer is being written the shard appends to the other.
async fn write_loop(shard: Rc<Shard>, conn: Rc<Conn>) {
    let limits = *shard.limits.borrow();
    let soft = limits.soft_pending();
    let deadline = limits.write_deadline();
    let mut spare = BytesMut::new();
    loop {
        let next = {
            let mut st = conn.st.borrow_mut();
            if st.out.is_empty() {
                if st.closing {
                    break;
                }
                None
            } else {
                let b = std::mem::replace(&mut st.out, std::mem::take(&mut spare));
                st.inflight = b.len();
                st.last_progress = Instant::now();
                Some(b)
            }
        };
        let Some(buf) = next else {
            conn.wake_writer.notified().await;
            continue;
        };
        let mut pos = 0usize;
        while pos < buf.len() {
            match conn.stream.try_write(&buf[pos..]) {
                Ok(n) if n > 0 => {
                    pos += n;
                    let mut st = conn.st.borrow_mut();
                    st.inflight -= n;
                    st.last_progress = Instant::now();
                    let pending = st.pending();
                    shard.account(&mut st);
                    drop(st);
                    if pending <= soft {
                        conn.drained.notify_waiters();
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    match tokio::time::timeout(deadline, conn.stream.writable()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => {
                            fail_writer(&conn);
                            return;
                        }
                        Err(_) => {
                            conn.st.borrow_mut().inflight = 0;
                            conn.slow_consumer(&shard, "no write progress within write_deadline");
                            // The ERR cannot be written to a peer that does not read: just close.
                            conn.stop.notify_one();
                            return;
                        }
                    }
                }
                Ok(_) | Err(_) => {
                    fail_writer(&conn);
                    return;
                }
            }
        }
        let mut buf = buf;
        buf.clear();
        spare = if buf.capacity() <= MAX_SPARE {
            buf
        } else {
            BytesMut::new()
        };
        conn.drained.notify_waiters();
    }
    conn.stream.shutdown_write();
}

/// The socket failed for writing: stop deliveries and the reader.
fn fail_writer(conn: &Conn) {
    let mut st = conn.st.borrow_mut();
    st.inflight = 0;
    st.closing = true;
    drop(st);
    conn.stop.notify_one();
}
