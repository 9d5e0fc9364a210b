//! What each frame of a read batch does to the connection and the shard, synchronously (no
//! socket, no `.await`): HELLO and authentication; PUB (limits, validation, the publish
//! permission, then [`super::route`]); SUB and UNSUB (the connection's subscriptions and the
//! routing table); PING; control frames (to [`super::control`]); ERR for everything else.
//!
//! Bad input is answered with an ERR frame carrying a stable code (see `protocol/PROTOCOL.md`):
//! frames that leave the stream in sync (unknown op, invalid subject, oversized payload inside
//! the frame limit, ...) are dropped and the connection stays open; frames that break the
//! stream (bad length, malformed fields, over the frame limit) are fatal: ERR, then close.

use std::rc::Rc;

use agentwire_protocol::{
    self as proto, features, ErrorCode, Frame, HelloFrame, PubFrame, SubFrame, UnsubFrame,
};
use bytes::Bytes;

use super::conn::{Conn, Sub};
use super::remote::Stash;
use super::route::{no_responders, route};
use super::{bump, Shard};
use crate::routing::SubTarget;

/// Per-connection reader state.
pub(super) struct ReaderState {
    pub(super) handshaken: bool,
    pub(super) no_responders: bool,
    pub(super) name: String,
}

/// Handles every frame of a batch of complete frames.
pub(super) fn handle_batch(
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

#[cfg(test)]
mod tests;
