//! The outbound side of a connection: checking publishes and appending PUB, SUB, UNSUB, PING
//! and control frames to the shared write buffer (with backpressure, and buffering while
//! reconnecting), flushes, and the request inbox subscription. The writer task (`writer.rs`)
//! sends what these append.

use std::sync::atomic::Ordering;

use agentwire_protocol::{encode_pub, encode_sub, encode_unsub};
use bytes::BytesMut;
use tokio::sync::oneshot;

use crate::conn::Inner;
use crate::error::{CloseReason, Error};
use crate::headers::{Headers, SENT_AT_HEADER};
use crate::subs::{SubEntry, SubKind};
use crate::sync::lock;

impl Inner {
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
                SENT_AT_HEADER.as_bytes(),
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
