//! The state one connection shares between the caller's handles and its two background tasks.
//!
//! Who owns what:
//! - callers ([`crate::Client`], [`crate::Subscriber`]) append frames to the write buffer
//!   (`outbound.rs`) and insert or remove subscriptions (`subs.rs`) and pending requests;
//! - the writer task (`writer.rs`) swaps the write buffer out and writes it to the socket;
//! - the reader task (`reader.rs`) decodes frames and dispatches them to subscriptions,
//!   pending requests and flush waiters;
//! - the control plane (`control.rs`) keeps the registration, heartbeat task and pending
//!   discoveries under `control` (`control_state.rs`);
//! - [`Inner::teardown`] (called once by whichever side sees the end) fails everything pending;
//!   [`Inner::connection_lost`] hands a dropped connection to the reconnect loop through the
//!   [`Reconnect`] trait (the loop sits above this module: it starts new reader and writer
//!   tasks).
//!
//! Locks are `std` mutexes, never held across an `.await`. Lock order: `subs` before `write`,
//! `subs` before `requests`, `subs` before `control` before `write`; nothing takes `subs` while
//! holding another of them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use agentwire_protocol::{frame_len, parse_frame, Frame};
use bytes::BytesMut;
use rustc_hash::FxHashMap;
use tokio::sync::{oneshot, Notify};
use tokio::task::AbortHandle;

use crate::control_state::{on_disconnect, on_teardown, ControlState};
use crate::error::{CloseReason, Error, ServerError};
use crate::events::{ConnectionEvent, EventHub};
use crate::info::{ServerInfo, Statistics};
use crate::message::Message;
use crate::pending::PendingLimits;
use crate::subs::SubEntry;
use crate::sync::lock;

/// How a connection reconnects after a drop ([`crate::reconnect::Reconnector`]). A trait object,
/// so this state does not depend on the reconnect loop, which sits above it (it redoes the
/// handshake and starts a new reader and writer, which use this state).
pub(crate) trait Reconnect: Send + Sync {
    /// Starts the reconnect loop of the dropped connection `inner` in a new task.
    fn start(self: Arc<Self>, inner: Arc<Inner>);
}

/// Settings fixed at connect time.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Bound on flush, drain and close.
    pub(crate) request_timeout: Duration,
    /// Pending outbound bytes past which publishers wait.
    pub(crate) write_buffer_limit: usize,
    /// Stamp every publish with its send time ([`crate::SENT_AT_HEADER`]).
    pub(crate) stamp_send_time: bool,
    /// Bytes publishes may buffer while the client reconnects.
    pub(crate) reconnect_buffer_size: usize,
    /// Default pending limits of a subscription.
    pub(crate) pending_limits: PendingLimits,
    /// Nothing read for this long: the keepalive PINGs the server (zero: no keepalive).
    pub(crate) ping_interval: Duration,
    /// Keepalive PINGs in a row with nothing read back before the connection is stale.
    pub(crate) max_pings_out: u32,
    /// Environment of registrations that name none (empty: the broker's default).
    pub(crate) environment: String,
}

/// Which side calls [`Inner::teardown`] (so it does not abort itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Reader,
    Writer,
    User,
}

/// The outbound side, under one lock: the buffer publishers append to and the writer drains.
#[derive(Debug, Default)]
pub(crate) struct WriteState {
    /// Encoded frames not yet taken by the writer.
    pub(crate) buf: BytesMut,
    /// Bytes the writer has taken and is writing now; counts toward the backpressure limit.
    pub(crate) in_flight: usize,
    /// One waiter per PING this client sent, in order; each PONG resolves the front one.
    pub(crate) pong_waiters: VecDeque<oneshot::Sender<Result<(), CloseReason>>>,
    /// PINGs sent since the handshake: the n-th PONG the reader sees answers PING number n.
    pub(crate) pings_sent: u64,
    /// Graceful close requested: accept nothing new, write what is buffered, then shut down.
    pub(crate) closing: bool,
    /// Torn down: accept nothing, write nothing.
    pub(crate) closed: bool,
    /// Messages published (counted here because the lock is held anyway).
    pub(crate) out_msgs: u64,
    /// The connection dropped and the client is reconnecting: no writer runs; `buf` collects
    /// what is published meanwhile (up to the reconnect buffer size).
    pub(crate) disconnected: bool,
    /// Bumped at every drop: a reader or writer of an older connection does nothing.
    pub(crate) generation: u64,
}

/// What a pending request receives.
#[derive(Debug)]
pub(crate) enum ReplyOutcome {
    Reply(Message),
    NoResponders,
    Closed(CloseReason),
}

/// Connection state shared by every handle and both tasks.
pub(crate) struct Inner {
    /// The server's INFO; fixed after the handshake.
    pub(crate) info: ServerInfo,
    pub(crate) settings: Settings,
    /// Outbound buffer, flush waiters and close flags.
    pub(crate) write: parking_lot::Mutex<WriteState>,
    /// Wakes the writer when the buffer goes from empty to non-empty, and on close.
    pub(crate) writer_wake: Notify,
    /// Wakes publishers waiting for buffer space, after every write and on teardown.
    pub(crate) drained: Notify,
    /// Active subscriptions by sid; the reader locks it once per read batch.
    pub(crate) subs: Mutex<FxHashMap<u32, SubEntry>>,
    /// Pending requests by token.
    pub(crate) requests: Mutex<FxHashMap<u64, oneshot::Sender<ReplyOutcome>>>,
    /// `_INBOX.<22 random chars>`: replies to requests arrive on `<prefix>.<token>`.
    pub(crate) inbox_prefix: String,
    /// The sid of the request inbox subscription (0 until the first request).
    pub(crate) inbox_sid: AtomicU32,
    pub(crate) next_sid: AtomicU32,
    pub(crate) next_token: AtomicU64,
    /// No new operations: set when closing starts, draining ends, or the connection dies.
    pub(crate) closed: AtomicBool,
    /// A drain is under way: no new subscriptions or requests.
    pub(crate) draining: AtomicBool,
    /// Set once teardown has failed everything pending; `done` is notified then.
    pub(crate) torn_down: AtomicBool,
    /// The server sent LAMEDUCK on the current connection: move to the next server.
    pub(crate) lame_duck: AtomicBool,
    pub(crate) done: Notify,
    pub(crate) close_reason: OnceLock<CloseReason>,
    pub(crate) last_error: Mutex<Option<ServerError>>,
    /// Registration, heartbeats and pending discoveries.
    pub(crate) control: Mutex<ControlState>,
    /// PONGs the reader has seen since the handshake (only the reader writes it).
    pub(crate) pongs_seen: AtomicU64,
    pub(crate) reader_task: Mutex<Option<AbortHandle>>,
    pub(crate) writer_task: Mutex<Option<AbortHandle>>,
    pub(crate) in_msgs: AtomicU64,
    pub(crate) in_bytes: AtomicU64,
    pub(crate) reads: AtomicU64,
    pub(crate) out_bytes: AtomicU64,
    pub(crate) writes: AtomicU64,
    /// How to reconnect when the connection drops (`None`: reconnect is off).
    pub(crate) reconnect: Option<Arc<dyn Reconnect>>,
    /// The address of the current (or last) connection.
    pub(crate) addr: Mutex<String>,
    /// Listeners of [`crate::Client::events`].
    pub(crate) events: EventHub,
}

impl Inner {
    pub(crate) fn new(
        info: ServerInfo,
        settings: Settings,
        inbox_prefix: String,
        reconnect: Option<Arc<dyn Reconnect>>,
        addr: String,
    ) -> Inner {
        Inner {
            info,
            settings,
            write: parking_lot::Mutex::new(WriteState::default()),
            writer_wake: Notify::new(),
            drained: Notify::new(),
            subs: Mutex::new(FxHashMap::default()),
            requests: Mutex::new(FxHashMap::default()),
            inbox_prefix,
            inbox_sid: AtomicU32::new(0),
            next_sid: AtomicU32::new(1),
            next_token: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            torn_down: AtomicBool::new(false),
            lame_duck: AtomicBool::new(false),
            done: Notify::new(),
            close_reason: OnceLock::new(),
            last_error: Mutex::new(None),
            control: Mutex::new(ControlState::default()),
            pongs_seen: AtomicU64::new(0),
            reader_task: Mutex::new(None),
            writer_task: Mutex::new(None),
            in_msgs: AtomicU64::new(0),
            in_bytes: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            out_bytes: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            reconnect,
            addr: Mutex::new(addr),
            events: EventHub::default(),
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// A fresh subscription id (never 0, never reused before 2^32 subscriptions).
    pub(crate) fn alloc_sid(&self) -> u32 {
        loop {
            let sid = self.next_sid.fetch_add(1, Ordering::Relaxed);
            if sid != 0 {
                return sid;
            }
        }
    }

    /// The current write generation (see [`WriteState::generation`]).
    pub(crate) fn generation(&self) -> u64 {
        self.write.lock().generation
    }

    /// Starts a graceful close: nothing new is accepted; the writer sends what is buffered, shuts
    /// the socket down and tears the connection down.
    pub(crate) fn begin_close(&self) {
        self.closed.store(true, Ordering::Release);
        let mut w = self.write.lock();
        if w.closed || w.closing {
            return;
        }
        w.closing = true;
        if w.disconnected {
            // No writer runs to finish the close: end now (what was buffered is dropped).
            drop(w);
            self.teardown(CloseReason::Closed, Origin::User);
            return;
        }
        drop(w);
        self.writer_wake.notify_one();
        self.drained.notify_waiters();
    }

    /// The reader or writer of connection `generation` saw it drop (EOF, socket error). With
    /// reconnect on and no close under way: fails the flushes and requests in flight with
    /// [`Error::Disconnected`], drops what was buffered but not written, stops the other task
    /// and starts the reconnect loop; subscriptions stay. Otherwise tears down. A stale
    /// generation (the drop was already handled) does nothing.
    pub(crate) fn connection_lost(self: &Arc<Self>, origin: Origin, generation: u64, why: String) {
        if self.reconnect.is_none() {
            self.teardown(CloseReason::Closed, origin);
            return;
        }
        let waiters = {
            let mut w = self.write.lock();
            if w.closed || w.generation != generation || w.disconnected {
                return;
            }
            if w.closing || self.is_closed() {
                drop(w);
                self.teardown(CloseReason::Closed, origin);
                return;
            }
            w.disconnected = true;
            w.generation += 1;
            // Publishes buffered but not yet taken by the writer are kept (sent after the
            // reconnect); other frames are redone (SUBs, REGISTER) or failed (PINGs, requests).
            w.buf = keep_publishes(&w.buf, self.inbox_prefix.as_bytes());
            w.in_flight = 0;
            // Every PING sent is answered or failed now: the next PONG answers the next PING.
            self.pongs_seen.store(w.pings_sent, Ordering::Relaxed);
            std::mem::take(&mut w.pong_waiters)
        };
        for tx in waiters {
            let _ = tx.send(Err(CloseReason::Disconnected));
        }
        let requests = std::mem::take(&mut *lock(&self.requests));
        for (_, tx) in requests {
            let _ = tx.send(ReplyOutcome::Closed(CloseReason::Disconnected));
        }
        on_disconnect(&self.control);
        if origin != Origin::Reader {
            if let Some(h) = lock(&self.reader_task).take() {
                h.abort();
            }
        }
        if origin != Origin::Writer {
            if let Some(h) = lock(&self.writer_task).take() {
                h.abort();
            }
        }
        self.drained.notify_waiters();
        tracing::debug!(client_id = self.info.client_id, reason = %why, "connection lost; reconnecting");
        self.events
            .emit(ConnectionEvent::Disconnected { reason: why });
        if let Some(rc) = &self.reconnect {
            rc.clone().start(self.clone());
        }
    }

    /// Whether connection `generation` is the live one (not dropped, reconnecting or closed).
    pub(crate) fn is_generation(&self, generation: u64) -> bool {
        let w = self.write.lock();
        !w.closed && !w.disconnected && w.generation == generation
    }

    /// The keepalive found connection `generation` stale: `pings` PINGs, `interval` apart, and
    /// nothing read. With reconnect on it is a drop like EOF ([`Inner::connection_lost`], the
    /// reason says `stale connection`); without, the client closes with
    /// [`Error::StaleConnection`].
    pub(crate) fn connection_stale(
        self: &Arc<Self>,
        generation: u64,
        pings: u32,
        interval: Duration,
    ) {
        tracing::warn!(
            client_id = self.info.client_id,
            pings,
            ?interval,
            "stale connection: the server answered none of the keepalive PINGs"
        );
        if self.reconnect.is_none() {
            if !self.is_generation(generation) {
                return;
            }
            self.teardown(CloseReason::Stale { pings, interval }, Origin::User);
            return;
        }
        let why = CloseReason::Stale { pings, interval }
            .to_error()
            .to_string();
        self.connection_lost(Origin::User, generation, why);
    }

    /// Closes gracefully and waits until the connection is torn down, bounded by the request
    /// timeout (then it is torn down at once and the unsent bytes dropped).
    pub(crate) async fn close(&self) -> Result<(), Error> {
        self.begin_close();
        let after = self.settings.request_timeout;
        let wait = async {
            loop {
                let notified = self.done.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.torn_down.load(Ordering::Acquire) {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(after, wait).await.is_err() {
            self.teardown(CloseReason::Closed, Origin::User);
            return Err(Error::CloseTimeout { after });
        }
        Ok(())
    }

    /// Ends the connection: fails every pending flush and request with `reason`, ends every
    /// subscription stream (after the messages already in it), stops both tasks. Idempotent; the
    /// first reason wins.
    pub(crate) fn teardown(&self, reason: CloseReason, origin: Origin) {
        let _ = self.close_reason.set(reason);
        let reason = self
            .close_reason
            .get()
            .cloned()
            .unwrap_or(CloseReason::Closed);
        self.closed.store(true, Ordering::Release);
        let waiters = {
            let mut w = self.write.lock();
            if w.closed {
                return;
            }
            w.closed = true;
            w.buf = BytesMut::new();
            std::mem::take(&mut w.pong_waiters)
        };
        for tx in waiters {
            let _ = tx.send(Err(reason.clone()));
        }
        self.writer_wake.notify_one();
        self.drained.notify_waiters();
        // Dropping the senders ends the streams once their buffered messages are read.
        let subs = std::mem::take(&mut *lock(&self.subs));
        drop(subs);
        let requests = std::mem::take(&mut *lock(&self.requests));
        for (_, tx) in requests {
            let _ = tx.send(ReplyOutcome::Closed(reason.clone()));
        }
        on_teardown(&self.control);
        if origin != Origin::Reader {
            if let Some(h) = lock(&self.reader_task).take() {
                h.abort();
            }
        }
        if origin != Origin::Writer {
            if let Some(h) = lock(&self.writer_task).take() {
                h.abort();
            }
        }
        self.torn_down.store(true, Ordering::Release);
        self.done.notify_waiters();
        self.events.close(ConnectionEvent::Closed {
            reason: reason.to_error().to_string(),
        });
        tracing::debug!(
            client_id = self.info.client_id,
            ?reason,
            "connection closed"
        );
    }

    pub(crate) fn statistics(&self) -> Statistics {
        let out_msgs = self.write.lock().out_msgs;
        Statistics {
            out_msgs,
            out_bytes: self.out_bytes.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            in_msgs: self.in_msgs.load(Ordering::Relaxed),
            in_bytes: self.in_bytes.load(Ordering::Relaxed),
            reads: self.reads.load(Ordering::Relaxed),
        }
    }
}

/// The PUB frames of `buf` (whole frames, in order), except requests (replies to
/// `inbox_prefix`), whose waiters fail at a drop.
fn keep_publishes(buf: &[u8], inbox_prefix: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    let mut off = 0usize;
    while off < buf.len() {
        let Ok(Some(len)) = frame_len(&buf[off..], usize::MAX) else {
            break;
        };
        let Some(frame) = buf.get(off..off + len) else {
            break;
        };
        if let Ok(Frame::Pub(p)) = parse_frame(frame) {
            if !p.reply.starts_with(inbox_prefix) {
                out.extend_from_slice(frame);
            }
        }
        off += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use agentwire_protocol::{encode_pub, encode_sub, encode_unsub};

    use super::*;

    #[test]
    fn a_drop_keeps_only_the_buffered_publishes() {
        let mut buf = BytesMut::new();
        encode_sub(&mut buf, 1, b"a.>", b"").expect("SUB");
        encode_pub(&mut buf, b"a.one", b"", b"", b"1").expect("PUB");
        agentwire_protocol::encode_ping(&mut buf);
        encode_pub(&mut buf, b"svc", b"_INBOX.abc.7", b"", b"req").expect("request PUB");
        encode_unsub(&mut buf, 1, 0);
        encode_pub(&mut buf, b"a.two", b"x.reply", b"", b"2").expect("PUB");
        let mut want = BytesMut::new();
        encode_pub(&mut want, b"a.one", b"", b"", b"1").expect("PUB");
        encode_pub(&mut want, b"a.two", b"x.reply", b"", b"2").expect("PUB");
        assert_eq!(keep_publishes(&buf, b"_INBOX.abc"), want);
        assert!(keep_publishes(&[], b"_INBOX.abc").is_empty());
    }
}
