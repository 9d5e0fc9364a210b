//! The reader task: reads the socket in large chunks, decodes every complete frame and
//! dispatches it.
//!
//! A MSG frame is split off the read buffer and frozen, and the message's subject, reply,
//! headers and payload are slices of it: no copy, no per-message allocation beyond the channel's
//! own. The subscription map is locked once per read batch, not per message. PONGs resolve flush
//! waiters after the batch's messages are dispatched, so a flush returns only once everything the
//! server sent before its PONG is in the subscribers' streams.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::transport::ReadHalf;
use agentwire_protocol::{
    encode_pong, encode_unsub, flags, frame_len, parse_frame, DecodeError, Frame, MsgFrame,
};
use bytes::{Bytes, BytesMut};
use rustc_hash::FxHashMap;
use tokio::io::AsyncReadExt;

use crate::conn::{Inner, Origin, ReplyOutcome};
use crate::control_frames;
use crate::error::{CloseReason, Error, ServerError};
use crate::events::ConnectionEvent;
use crate::headers::Headers;
use crate::message::Message;
use crate::pending::pending_size;
use crate::subject::Subject;
use crate::subs::{SubEntry, SubKind};
use crate::sync::lock;

/// Spare capacity below which the read buffer is grown before the next read.
const MIN_SPARE: usize = 4096;

/// Runs until EOF, a socket error, a malformed frame or a fatal ERR. A malformed frame or a
/// fatal ERR tears down; EOF, a socket error, LAMEDUCK or `ERR server_shutdown` is a dropped
/// connection (of write generation `generation`), which reconnects when reconnect is on.
pub(crate) async fn run(
    inner: Arc<Inner>,
    mut rd: ReadHalf,
    mut buf: BytesMut,
    read_size: usize,
    generation: u64,
) {
    let max_frame = (inner.info.max_payload as usize)
        .saturating_add(agentwire_protocol::FRAME_OVERHEAD_ALLOWANCE);
    let reason = loop {
        match process(&inner, &mut buf, max_frame) {
            Ok(None) => {}
            Ok(Some(fatal))
                if inner.reconnect.is_some()
                    && fatal.code == agentwire_protocol::ErrorCode::ServerShutdown.as_u16() =>
            {
                // The server is going away (shutdown, restart, lame duck): not a refusal of
                // this client, so reconnect like after a dropped connection.
                tracing::info!(error = %fatal, "server shutting down: reconnecting");
                inner.lame_duck.store(false, Ordering::Release);
                inner.connection_lost(
                    Origin::Reader,
                    generation,
                    format!("server shutting down: {}", fatal.message),
                );
                return;
            }
            Ok(Some(fatal)) => {
                tracing::warn!(error = %fatal, "server closed the connection");
                break CloseReason::Server(fatal);
            }
            Err(e) => {
                tracing::warn!(error = %e, "malformed frame from the server; closing");
                break CloseReason::Closed;
            }
        }
        if buf.capacity() - buf.len() < MIN_SPARE {
            buf.reserve(read_size);
        }
        // LAMEDUCK: the server is going away; with reconnect on, move to the next server of
        // the list now instead of waiting to be closed (without it, the server's close ends us).
        if inner.reconnect.is_some() && inner.lame_duck.swap(false, Ordering::AcqRel) {
            tracing::info!("server in lame duck: moving to the next server");
            inner.connection_lost(Origin::Reader, generation, "server in lame duck".to_owned());
            return;
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => {
                tracing::debug!("server closed the connection (EOF)");
                inner.connection_lost(Origin::Reader, generation, "EOF".to_owned());
                return;
            }
            Ok(n) => {
                inner.reads.fetch_add(1, Ordering::Relaxed);
                inner.in_bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::debug!(error = %e, "read failed");
                inner.connection_lost(Origin::Reader, generation, format!("read error: {e}"));
                return;
            }
        }
    };
    inner.teardown(reason, Origin::Reader);
}

/// Decodes and dispatches every complete frame in `buf`. Returns a fatal server error, if one
/// arrived (frames after it are ignored: the server closes the connection).
///
/// The complete frames are split off and frozen once, so each message costs one refcount per
/// field it keeps, and each subscription's messages go to its stream as one batch.
fn process(
    inner: &Arc<Inner>,
    buf: &mut BytesMut,
    max_frame: usize,
) -> Result<Option<ServerError>, DecodeError> {
    let mut complete = 0usize;
    let mut fatal_len = None;
    loop {
        match frame_len(&buf[complete..], max_frame) {
            Ok(Some(len)) if buf.len() - complete >= len => complete += len,
            Ok(Some(len)) => {
                // The length was checked against the limit: reserving for it is safe.
                buf.reserve(len - (buf.len() - complete));
                break;
            }
            Ok(None) => break,
            Err(e) => {
                fatal_len = Some(e);
                break;
            }
        }
    }
    let mut result = Ok(None);
    if complete > 0 {
        let batch = buf.split_to(complete).freeze();
        result = process_batch(inner, &batch);
    }
    match fatal_len {
        Some(e) if matches!(result, Ok(None)) => Err(e),
        _ => result,
    }
}

fn process_batch(inner: &Arc<Inner>, batch: &Bytes) -> Result<Option<ServerError>, DecodeError> {
    let mut subs = None;
    let pongs_before = inner.pongs_seen.load(Ordering::Relaxed);
    let mut touched: Vec<u32> = Vec::new();
    let mut slow: Vec<ConnectionEvent> = Vec::new();
    let mut pings = 0usize;
    let mut pongs = 0usize;
    let mut msgs = 0u64;
    let mut fatal = None;
    let mut off = 0usize;
    let mut failed = None;
    while off < batch.len() {
        let len = match frame_len(&batch[off..], usize::MAX) {
            Ok(Some(len)) => len,
            Ok(None) => break,
            Err(e) => {
                failed = Some(e);
                break;
            }
        };
        let frame = &batch[off..off + len];
        off += len;
        let parsed = match parse_frame(frame) {
            Ok(f) => f,
            Err(e) => {
                failed = Some(e);
                break;
            }
        };
        match parsed {
            Frame::Msg(m) => {
                msgs += 1;
                let subs = subs.get_or_insert_with(|| lock(&inner.subs));
                dispatch(inner, subs, &mut touched, &mut slow, batch, &m);
            }
            Frame::Ping => pings += 1,
            Frame::Pong => {
                // Messages before this PONG must be in their streams before its flush returns.
                if let Some(subs) = subs.as_mut() {
                    send_pending(subs, &mut touched);
                }
                pongs += 1;
            }
            Frame::Err(e) => {
                let err = ServerError::from_frame(&e);
                report_server_error(inner, &err);
                if err.fatal {
                    fatal = Some(err);
                    break;
                }
                if control_frames::on_err(inner, &err, pongs_before + pongs as u64) {
                    tracing::debug!(error = %err, "registration refused");
                } else {
                    tracing::warn!(error = %err, "server error");
                }
                *lock(&inner.last_error) = Some(err);
            }
            Frame::Unknown { op, .. } if op == agentwire_protocol::op::LAMEDUCK => {
                inner.lame_duck.store(true, Ordering::Release);
            }
            Frame::Unknown { op, body, .. } => control_frames::on_frame(inner, op, body),
            Frame::Info(_) => {}
            other => tracing::debug!(op = other.op(), "ignoring a client-only frame"),
        }
    }
    if let Some(mut subs) = subs {
        send_pending(&mut subs, &mut touched);
    }
    for ev in slow {
        inner.events.emit(ev);
    }
    if msgs > 0 {
        inner.in_msgs.fetch_add(msgs, Ordering::Relaxed);
    }
    if pings > 0 {
        let _ = inner.enqueue_control(|b| {
            for _ in 0..pings {
                encode_pong(b);
            }
            Ok(())
        });
    }
    if pongs > 0 {
        inner.pongs_seen.fetch_add(pongs as u64, Ordering::Relaxed);
        let waiters: Vec<_> = {
            let mut w = inner.write.lock();
            let n = pongs.min(w.pong_waiters.len());
            w.pong_waiters.drain(..n).collect()
        };
        for tx in waiters {
            let _ = tx.send(Ok(()));
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(fatal),
    }
}

/// Reports an ERR on the connection's event stream.
fn report_server_error(inner: &Inner, err: &ServerError) {
    inner.events.emit(ConnectionEvent::ServerError {
        code: err.code,
        message: err.message.clone(),
    });
    if err.error_code() == Some(agentwire_protocol::ErrorCode::SlowConsumer) {
        inner.events.emit(ConnectionEvent::ServerSlowConsumer);
    }
}

/// Sends each touched subscription's pending messages to its stream as one batch.
fn send_pending(subs: &mut FxHashMap<u32, SubEntry>, touched: &mut Vec<u32>) {
    for sid in touched.drain(..) {
        let Some(entry) = subs.get_mut(&sid) else {
            continue;
        };
        if !entry.send_pending() {
            subs.remove(&sid);
        }
    }
}

/// Queues one MSG for its subscription (sent at the end of the batch); a MSG for an unknown
/// sid (late, after an unsubscribe) is dropped, and so is one past the subscription's pending
/// limits (counted, and the first of a run reported in `slow`).
fn dispatch(
    inner: &Inner,
    subs: &mut FxHashMap<u32, SubEntry>,
    touched: &mut Vec<u32>,
    slow: &mut Vec<ConnectionEvent>,
    frame: &Bytes,
    m: &MsgFrame<'_>,
) {
    let Some(entry) = subs.get_mut(&m.sid) else {
        return;
    };
    match &entry.kind {
        SubKind::Inbox => deliver_reply(inner, frame, m),
        SubKind::Stream(tx) => {
            // Counted even when the message is unusable or dropped, so the count agrees with
            // the server's for auto-unsubscribe.
            entry.delivered += 1;
            let open = !tx.is_closed();
            if open {
                if let Some(msg) = build_message(frame, m) {
                    queue_within_limits(entry, m.sid, msg, touched, slow);
                }
            }
            let limit_reached = entry.max != 0 && entry.delivered >= entry.max;
            if !open || limit_reached {
                let server_limited = entry.server_limited;
                if let Some(mut entry) = subs.remove(&m.sid) {
                    entry.send_pending();
                }
                if limit_reached && !server_limited {
                    let sid = m.sid;
                    let _ = inner.enqueue_control(|b| {
                        encode_unsub(b, sid, 0);
                        Ok(())
                    });
                }
            }
        }
    }
}

/// Adds `msg` to the entry's batch if it fits the pending limits; otherwise drops and counts
/// it, and reports the first drop of a run. A run ends once an accepted message leaves the
/// subscription at half its limits or below.
#[inline]
fn queue_within_limits(
    entry: &mut SubEntry,
    sid: u32,
    msg: Message,
    touched: &mut Vec<u32>,
    slow: &mut Vec<ConnectionEvent>,
) {
    let size = pending_size(&msg);
    if entry.pending.is_empty() {
        // First message of this batch for it: what the consumer has not taken yet.
        entry.base = entry.counters.load();
    }
    let msgs = entry.base.0 + entry.pending.len() as u64 + 1;
    let bytes = entry.base.1 + entry.pending_bytes + size;
    let limits = entry.limits;
    if msgs <= limits.msgs && bytes <= limits.bytes {
        if entry.pending.is_empty() {
            touched.push(sid);
        }
        entry.pending.push(msg);
        entry.pending_bytes += size;
        if entry.slow && msgs <= limits.msgs / 2 && bytes <= limits.bytes / 2 {
            entry.slow = false;
        }
        return;
    }
    let dropped = entry.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
    if !entry.slow {
        entry.slow = true;
        tracing::warn!(
            sid,
            subject = %entry.subject,
            pending_msgs = msgs - 1,
            pending_bytes = bytes - size,
            "slow consumer: the subscription's pending limit is reached; dropping messages"
        );
        slow.push(ConnectionEvent::SlowConsumer {
            sid,
            subject: entry.subject.clone(),
            dropped,
        });
    }
}

/// Hands a reply on the inbox (`<prefix>.<token>`) to the request waiting for it.
fn deliver_reply(inner: &Inner, frame: &Bytes, m: &MsgFrame<'_>) {
    let prefix = inner.inbox_prefix.as_bytes();
    let token = m
        .subject
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix(b"."))
        .and_then(parse_token);
    let Some(token) = token else {
        return;
    };
    let Some(tx) = lock(&inner.requests).remove(&token) else {
        return; // timed out or cancelled
    };
    let outcome = if m.flags & flags::MSG_NO_RESPONDERS != 0 {
        ReplyOutcome::NoResponders
    } else {
        match build_message(frame, m) {
            Some(msg) => ReplyOutcome::Reply(msg),
            None => ReplyOutcome::Closed(CloseReason::Closed),
        }
    };
    let _ = tx.send(outcome);
}

/// A decimal request token.
fn parse_token(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 20 {
        return None;
    }
    b.iter().try_fold(0u64, |acc, &d| {
        if d.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        } else {
            None
        }
    })
}

/// Builds a [`Message`] whose fields are slices of `frame`. `None` (and a warning) for a subject
/// that is not ASCII; a malformed header block is dropped with a warning, the message kept.
fn build_message(frame: &Bytes, m: &MsgFrame<'_>) -> Option<Message> {
    let Some(subject) = Subject::from_wire(frame.slice_ref(m.subject)) else {
        tracing::warn!(sid = m.sid, "dropping a message whose subject is not ASCII");
        return None;
    };
    let reply = if m.reply.is_empty() {
        None
    } else {
        let r = Subject::from_wire(frame.slice_ref(m.reply));
        if r.is_none() {
            tracing::warn!(sid = m.sid, "ignoring a reply subject that is not ASCII");
        }
        r
    };
    let headers = if m.headers.is_empty() {
        None
    } else {
        match Headers::from_encoded(frame.slice_ref(m.headers)) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(sid = m.sid, error = %Error::from(e), "ignoring malformed headers");
                None
            }
        }
    };
    Some(Message {
        subject,
        reply,
        headers,
        payload: frame.slice_ref(m.payload),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert_eq!(parse_token(b"0"), Some(0));
        assert_eq!(parse_token(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_token(b"18446744073709551616"), None);
        assert_eq!(parse_token(b""), None);
        assert_eq!(parse_token(b"1a"), None);
        assert_eq!(parse_token(b"+1"), None);
    }
}
