//! The state one connection shares between the caller's handles and its two background tasks.
//!
//! Who owns what:
//! - callers ([`crate::Client`], [`crate::Subscriber`]) append frames to the write buffer and
//!   insert or remove subscriptions and pending requests;
//! - the writer task ([`crate::writer`]) swaps the write buffer out and writes it to the socket;
//! - the reader task ([`crate::reader`]) decodes frames and dispatches them to subscriptions,
//!   pending requests and flush waiters;
//! - the control plane ([`crate::control`]) keeps the registration, heartbeat task and pending
//!   discoveries under `control`;
//! - [`Inner::teardown`] (called once by whichever side sees the end) fails everything pending.
//!
//! Locks are `std` mutexes, never held across an `.await`. Lock order: `subs` before `write`,
//! `subs` before `requests`, `subs` before `control` before `write`; nothing takes `subs` while
//! holding another of them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use agentwire_protocol::{encode_pub, encode_sub, encode_unsub, frame_len, parse_frame, Frame};
use bytes::BytesMut;
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::AbortHandle;

use crate::control::ControlState;
use crate::error::{CloseReason, Error, ServerError};
use crate::headers::Headers;
use crate::message::Message;
use crate::pending::{PendingCounters, PendingLimits};
use crate::{ServerInfo, Statistics};

/// Locks a mutex, ignoring poisoning: no code in this crate panics while holding one, and the
/// guarded state stays consistent between statements.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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
    pub(crate) pending_limits: crate::pending::PendingLimits,
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

/// Where the reader sends the messages of one subscription.
#[derive(Debug)]
pub(crate) enum SubKind {
    /// A [`crate::Subscriber`]'s channel; the reader sends each read batch's messages for the
    /// subscription as one `Vec` (one channel operation and at most one wake-up per batch).
    Stream(mpsc::UnboundedSender<Vec<Message>>),
    /// The shared request inbox: replies go to [`Inner::requests`] by token.
    Inbox,
}

/// One active subscription, as the reader sees it.
#[derive(Debug)]
pub(crate) struct SubEntry {
    pub(crate) kind: SubKind,
    /// The subject or pattern, re-sent after a reconnect.
    pub(crate) subject: String,
    /// The queue group (empty for none), re-sent after a reconnect.
    pub(crate) queue: String,
    /// Messages the reader has dispatched to it.
    pub(crate) delivered: u64,
    /// End after this many deliveries in all (0: no limit).
    pub(crate) max: u64,
    /// Whether the server was told the same limit (otherwise the client unsubscribes itself when
    /// the limit is reached).
    pub(crate) server_limited: bool,
    /// Messages of the current read batch not yet sent to the stream.
    pub(crate) pending: Vec<Message>,
    /// Bytes of `pending` (as counted toward the byte limit).
    pub(crate) pending_bytes: u64,
    /// The stream's pending counters when the current batch's first message for it came (the
    /// consumer only lowers them meanwhile, so this plus `pending` never under-counts).
    pub(crate) base: (u64, u64),
    /// Limits on what the stream may hold that its consumer has not taken.
    pub(crate) limits: PendingLimits,
    /// Pending and dropped counts shared with the [`crate::Subscriber`].
    pub(crate) counters: Arc<PendingCounters>,
    /// Dropping messages (a limit was hit and the stream has not drained to half the limits
    /// since): the next drop is not reported again.
    pub(crate) slow: bool,
}

impl SubEntry {
    pub(crate) fn new(kind: SubKind, subject: &str, queue: &str) -> SubEntry {
        SubEntry::with_limits(kind, subject, queue, PendingLimits::default()).0
    }

    /// An entry with pending limits; returns the counters to share with its subscriber.
    pub(crate) fn with_limits(
        kind: SubKind,
        subject: &str,
        queue: &str,
        limits: PendingLimits,
    ) -> (SubEntry, Arc<PendingCounters>) {
        let counters = Arc::new(PendingCounters::default());
        let entry = SubEntry {
            kind,
            subject: subject.to_owned(),
            queue: queue.to_owned(),
            delivered: 0,
            max: 0,
            server_limited: false,
            pending: Vec::new(),
            pending_bytes: 0,
            base: (0, 0),
            limits,
            counters: counters.clone(),
            slow: false,
        };
        (entry, counters)
    }

    /// Hands the messages of the current batch to the stream, counted as pending. `false` when
    /// the subscriber is gone.
    pub(crate) fn send_pending(&mut self) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        let batch = std::mem::take(&mut self.pending);
        let bytes = std::mem::take(&mut self.pending_bytes);
        match &self.kind {
            SubKind::Stream(tx) => {
                self.counters.add(batch.len() as u64, bytes);
                tx.send(batch).is_ok()
            }
            SubKind::Inbox => true,
        }
    }
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
    pub(crate) reconnect: Option<crate::reconnect::Reconnector>,
    /// The address of the current (or last) connection.
    pub(crate) addr: Mutex<String>,
    /// Listeners of [`crate::Client::events`].
    pub(crate) events: crate::events::EventHub,
}

impl Inner {
    pub(crate) fn new(
        info: ServerInfo,
        settings: Settings,
        inbox_prefix: String,
        reconnect: Option<crate::reconnect::Reconnector>,
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
            events: crate::events::EventHub::default(),
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

    /// Checks a publish before anything is encoded.
    pub(crate) fn check_publish(
        &self,
        subject: &str,
        reply: Option<&str>,
        headers: Option<&Headers>,
        payload_len: usize,
    ) -> Result<(), Error> {
        check_literal(subject)?;
        if let Some(r) = reply {
            check_literal(r)?;
        }
        let hlen = match headers {
            Some(h) if !h.is_empty() => {
                if self.info.features & agentwire_protocol::features::HEADERS == 0 {
                    return Err(Error::HeadersNotSupported);
                }
                h.as_encoded().len()
            }
            _ => 0,
        };
        let len = hlen.saturating_add(payload_len);
        if len > self.info.max_payload as usize {
            return Err(Error::PayloadTooLarge {
                len,
                max: self.info.max_payload,
            });
        }
        Ok(())
    }

    /// Appends a PUB (already checked) to the write buffer, waiting for space if needed.
    pub(crate) async fn enqueue_pub(
        &self,
        subject: &str,
        reply: &str,
        headers: Option<&Headers>,
        payload: &[u8],
    ) -> Result<(), Error> {
        let hdr = headers.map_or(&[][..], Headers::as_encoded);
        if self.settings.stamp_send_time {
            let mut block = BytesMut::with_capacity(hdr.len() + 32);
            block.extend_from_slice(hdr);
            let us = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64);
            agentwire_protocol::headers::encode_header(
                &mut block,
                crate::SENT_AT_HEADER.as_bytes(),
                us.to_string().as_bytes(),
            )?;
            return self
                .enqueue(true, |b| {
                    encode_pub(b, subject.as_bytes(), reply.as_bytes(), &block, payload)
                        .map_err(Error::from)
                })
                .await;
        }
        self.enqueue(true, |b| {
            encode_pub(b, subject.as_bytes(), reply.as_bytes(), hdr, payload).map_err(Error::from)
        })
        .await
    }

    /// Appends a SUB to the write buffer, waiting for space if needed.
    ///
    /// `generation` is the write generation when the subscription entered `subs`: if the
    /// connection dropped since (or is down), the reconnect re-sends the SUB and none is queued.
    pub(crate) async fn enqueue_sub(
        &self,
        sid: u32,
        subject: &str,
        queue: &str,
        generation: u64,
    ) -> Result<(), Error> {
        {
            let w = self.write.lock();
            if !w.closed && !w.closing && (w.disconnected || w.generation != generation) {
                return Ok(());
            }
        }
        self.enqueue(false, |b| {
            encode_sub(b, sid, subject.as_bytes(), queue.as_bytes()).map_err(Error::from)
        })
        .await
    }

    /// The current write generation (see [`WriteState::generation`]).
    pub(crate) fn generation(&self) -> u64 {
        self.write.lock().generation
    }

    /// Appends frames produced by `encode`, waiting while the pending bytes are over the limit.
    /// The fast path takes the lock once and does not touch the `drained` notifier.
    async fn enqueue<F>(&self, count_msg: bool, mut encode: F) -> Result<(), Error>
    where
        F: FnMut(&mut BytesMut) -> Result<(), Error>,
    {
        if let Some(done) = self.try_enqueue(count_msg, &mut encode) {
            return done;
        }
        let after = self.settings.request_timeout;
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(done) = self.try_enqueue(count_msg, &mut encode) {
                return done;
            }
            // Every completed write wakes us; none for a whole request timeout means the socket
            // accepts nothing: the server is not reading.
            if tokio::time::timeout(after, notified).await.is_err() {
                let w = self.write.lock();
                return Err(Error::WriteStalled {
                    after,
                    pending: w.buf.len() + w.in_flight,
                });
            }
        }
    }

    /// `None` when the buffer is over the limit (the caller waits and retries).
    #[inline]
    fn try_enqueue<F>(&self, count_msg: bool, encode: &mut F) -> Option<Result<(), Error>>
    where
        F: FnMut(&mut BytesMut) -> Result<(), Error>,
    {
        let mut w = self.write.lock();
        if w.closed || w.closing {
            return Some(Err(Error::Closed));
        }
        if w.disconnected {
            // Reconnecting: buffer up to the reconnect buffer size, never wait.
            let limit = self.settings.reconnect_buffer_size;
            let mark = w.buf.len();
            if let Err(e) = encode(&mut w.buf) {
                w.buf.truncate(mark);
                return Some(Err(e));
            }
            if w.buf.len() > limit {
                w.buf.truncate(mark);
                return Some(Err(Error::ReconnectBufferFull {
                    limit,
                    pending: mark,
                }));
            }
            if count_msg {
                w.out_msgs += 1;
            }
            return Some(Ok(()));
        }
        if w.buf.len() + w.in_flight >= self.settings.write_buffer_limit {
            return None;
        }
        let was_empty = w.buf.is_empty();
        if let Err(e) = encode(&mut w.buf) {
            return Some(Err(e));
        }
        if count_msg {
            w.out_msgs += 1;
        }
        drop(w);
        if was_empty {
            self.writer_wake.notify_one();
        }
        Some(Ok(()))
    }

    /// Appends small control frames (UNSUB, PONG, the inbox SUB) without waiting for space:
    /// they must go out even when called from `Drop` or from the reader.
    pub(crate) fn enqueue_control(
        &self,
        encode: impl FnOnce(&mut BytesMut) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut w = self.write.lock();
        if w.closed {
            return Err(Error::Closed);
        }
        let was_empty = w.buf.is_empty();
        encode(&mut w.buf)?;
        drop(w);
        if was_empty {
            self.writer_wake.notify_one();
        }
        Ok(())
    }

    /// Sends a PING and registers a waiter resolved by the matching PONG.
    pub(crate) fn ping(&self) -> Result<oneshot::Receiver<Result<(), CloseReason>>, Error> {
        let mut w = self.write.lock();
        if w.closed || w.closing {
            return Err(Error::Closed);
        }
        let (tx, rx) = oneshot::channel();
        w.pong_waiters.push_back(tx);
        w.pings_sent += 1;
        let was_empty = w.buf.is_empty();
        agentwire_protocol::encode_ping(&mut w.buf);
        drop(w);
        if was_empty {
            self.writer_wake.notify_one();
        }
        Ok(rx)
    }

    /// Appends the frames produced by `encode` followed by a PING, in one step (without waiting
    /// for buffer space: control frames are small). Returns the PING's number, which the reader
    /// compares with the PONGs it has seen to know whether the server has processed the frames.
    pub(crate) fn send_with_ping(
        &self,
        encode: impl FnOnce(&mut BytesMut) -> Result<(), Error>,
    ) -> Result<u64, Error> {
        let mut w = self.write.lock();
        if w.closed || w.closing {
            return Err(Error::Closed);
        }
        let was_empty = w.buf.is_empty();
        let mark = w.buf.len();
        if let Err(e) = encode(&mut w.buf) {
            w.buf.truncate(mark);
            return Err(e);
        }
        // The PONG must resolve a waiter of its own to keep PONGs and waiters in step; nobody
        // waits on this one.
        let (tx, _) = oneshot::channel();
        w.pong_waiters.push_back(tx);
        w.pings_sent += 1;
        let seq = w.pings_sent;
        agentwire_protocol::encode_ping(&mut w.buf);
        drop(w);
        if was_empty {
            self.writer_wake.notify_one();
        }
        Ok(seq)
    }

    /// Sends a PING and waits for its PONG, bounded by the request timeout.
    pub(crate) async fn flush(&self) -> Result<(), Error> {
        let rx = self.ping()?;
        let after = self.settings.request_timeout;
        match tokio::time::timeout(after, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(reason))) => Err(reason.to_error()),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::FlushTimeout { after }),
        }
    }

    /// Creates the request inbox subscription on first use. The SUB is appended while `subs` is
    /// held, and the sid published after, so no request's PUB can precede the SUB.
    pub(crate) fn ensure_inbox(&self) -> Result<(), Error> {
        if self.inbox_sid.load(Ordering::Acquire) != 0 {
            return Ok(());
        }
        let mut subs = lock(&self.subs);
        if self.is_closed() {
            return Err(Error::Closed);
        }
        if self.inbox_sid.load(Ordering::Acquire) != 0 {
            return Ok(());
        }
        let sid = self.alloc_sid();
        let pattern = format!("{}.>", self.inbox_prefix);
        self.enqueue_control_connected(|b| {
            encode_sub(b, sid, pattern.as_bytes(), b"").map_err(Error::from)
        })?;
        subs.insert(sid, SubEntry::new(SubKind::Inbox, &pattern, ""));
        self.inbox_sid.store(sid, Ordering::Release);
        Ok(())
    }

    /// Removes a subscription and tells the server, unless it already ended. Returns whether it
    /// was still active.
    pub(crate) fn remove_sub(&self, sid: u32) -> Result<bool, Error> {
        let mut subs = lock(&self.subs);
        let removed = subs.remove(&sid).is_some();
        if removed && !self.is_closed() {
            // Under `subs`, so a reconnect's re-subscribe either still had it or never sends it.
            self.enqueue_control_connected(|b| {
                encode_unsub(b, sid, 0);
                Ok(())
            })?;
        }
        drop(subs);
        Ok(removed)
    }

    /// As [`Inner::enqueue_control`], but queues nothing while the client is reconnecting (for
    /// SUB and UNSUB frames, which the re-subscribe after the reconnect covers). Callers hold
    /// `subs`.
    pub(crate) fn enqueue_control_connected(
        &self,
        encode: impl FnOnce(&mut BytesMut) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut w = self.write.lock();
        if w.closed {
            return Err(Error::Closed);
        }
        if w.disconnected {
            return Ok(());
        }
        let was_empty = w.buf.is_empty();
        encode(&mut w.buf)?;
        drop(w);
        if was_empty {
            self.writer_wake.notify_one();
        }
        Ok(())
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
        crate::control::on_disconnect(self);
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
            .emit(crate::events::ConnectionEvent::Disconnected { reason: why });
        tokio::spawn(crate::reconnect::run(self.clone()));
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
        crate::control::on_teardown(self);
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
        self.events.close(crate::events::ConnectionEvent::Closed {
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

/// Validates a publish or reply subject.
pub(crate) fn check_literal(subject: &str) -> Result<(), Error> {
    thread_local! {
        /// The last subject this thread found valid: publishers mostly repeat a subject, and
        /// validity depends on the bytes alone, so a repeat skips the grammar check.
        static LAST_VALID: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let bytes = subject.as_bytes();
    // An empty subject is never valid, and the cache starts empty: never a hit for it.
    if !bytes.is_empty() && LAST_VALID.with(|l| l.borrow().as_slice() == bytes) {
        return Ok(());
    }
    agentwire_protocol::validate_literal(bytes).map_err(|source| Error::InvalidSubject {
        subject: subject.to_owned(),
        source,
    })?;
    LAST_VALID.with(|l| {
        let mut l = l.borrow_mut();
        l.clear();
        l.extend_from_slice(bytes);
    });
    Ok(())
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn subject_check_cache_never_lets_an_invalid_subject_through() {
        assert!(check_literal("").is_err(), "empty, with an empty cache");
        assert!(check_literal("orders.new").is_ok());
        assert!(check_literal("orders.new").is_ok(), "cached");
        assert!(check_literal("").is_err());
        assert!(check_literal("orders.*").is_err());
        assert!(
            check_literal("orders.*").is_err(),
            "invalid ones are not cached"
        );
        assert!(check_literal("orders.new").is_ok());
    }
}
