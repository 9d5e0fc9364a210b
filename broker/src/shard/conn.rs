//! One client connection as its shard sees it: [`Conn`] and its mutable [`ConnState`]
//! (outbound buffer, subscriptions), request tracking for queue-group load, the direct write
//! at flush time, ERR frames and closing a slow consumer. The socket loops are in
//! [`super::reader`] and [`super::writer`], what each frame does in [`super::dispatch`].

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentwire_protocol::{self as proto, ErrorCode};
use bytes::{Buf, BytesMut};
use rustc_hash::FxHashMap;
use tokio::sync::Notify;

use super::Shard;
use crate::stats::ShardStats;
use crate::telemetry::hist::Windowed;
use crate::telemetry::load::ConnLoad;
use crate::transport::Transport;

/// A consumer that wrote nothing to its socket for this long is "not reading": publishers are
/// not paced to it, and it runs into `max_pending`.
pub(crate) const PROGRESS_WINDOW: Duration = Duration::from_millis(100);

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
    pub(super) fn new(
        id: u64,
        stream: Rc<Transport>,
        identity: Option<String>,
        nonce: Box<[u8]>,
    ) -> Conn {
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
