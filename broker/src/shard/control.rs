//! Control-plane frames on a shard (REGISTER, HEARTBEAT, DEREGISTER, DISCOVER; `PROTOCOL.md`
//! section 13) and the shard's end of the command channel (config push, system messages,
//! reload, lame duck).
//!
//! Bodies are decoded and validated here, before the control plane
//! ([`crate::plane::ControlPlane`], the admin plane's registry) sees them; a bad one gets
//! `ERR invalid_control` and the connection stays open. A broker started without a control
//! plane answers every control frame with `ERR unknown_op`. The shard only remembers, per
//! connection, the round-trip histogram of its component.

use std::rc::Rc;
use std::sync::Arc;

use agentwire_protocol::control::{
    decode_control, encode_control, Discover, Discovered, Heartbeat, LameDuck, Registration,
};
use agentwire_protocol::{self as proto, op, ErrorCode};
use bytes::BytesMut;
use tokio::sync::mpsc;

use super::conn::Conn;
use super::Shard;
use crate::plane::{ConnRef, ControlPlane, ShardCmd};

/// The control plane, or `ERR unknown_op` to the client when the broker runs without one.
fn control_plane(shard: &Shard, conn: &Rc<Conn>, opc: u8) -> Option<Arc<dyn ControlPlane>> {
    let c = shard.global.control.clone();
    if c.is_none() {
        conn.send_err(
            shard,
            ErrorCode::UnknownOp,
            &format!(
                "op {opc:#04x}: this broker runs without a control plane (no registry); frame ignored"
            ),
        );
    }
    c
}

/// Handles one control frame from a client.
pub(crate) fn handle(shard: &Shard, conn: &Rc<Conn>, opc: u8, body: &[u8]) {
    match opc {
        op::REGISTER => register(shard, conn, body),
        op::HEARTBEAT => heartbeat(shard, conn, body),
        op::DEREGISTER => {
            if !body.is_empty() {
                conn.send_err(shard, ErrorCode::InvalidControl, "DEREGISTER has no body; ignored");
                return;
            }
            let Some(cp) = control_plane(shard, conn, opc) else {
                return;
            };
            if cp.deregister(&*shard.global, conn.id, "deregistered") {
                *conn.component.borrow_mut() = None;
            } else {
                conn.send_err(
                    shard,
                    ErrorCode::NotRegistered,
                    "DEREGISTER on a connection that is not registered; ignored",
                );
            }
        }
        op::DISCOVER => discover(shard, conn, body),
        op::REGISTERED | op::CONFIG | op::DISCOVERED => conn.send_err(
            shard,
            ErrorCode::UnexpectedOp,
            &format!("op {opc:#04x} is sent by servers only; frame ignored"),
        ),
        _ => conn.send_err(
            shard,
            ErrorCode::UnknownOp,
            &format!("op {opc:#04x} is a reserved control-plane op this server does not know; frame skipped"),
        ),
    }
}

fn invalid(shard: &Shard, conn: &Rc<Conn>, what: &str, e: impl std::fmt::Display) {
    conn.send_err(
        shard,
        ErrorCode::InvalidControl,
        &format!("invalid {what}: {e}; ignored"),
    );
}

fn register(shard: &Shard, conn: &Rc<Conn>, body: &[u8]) {
    let reg: Registration = match decode_control(body) {
        Ok(r) => r,
        Err(e) => return invalid(shard, conn, "REGISTER", e),
    };
    if let Err(e) = reg.validate() {
        return invalid(shard, conn, "REGISTER", e);
    }
    if let Some(a) = conn.auth.borrow().as_ref() {
        if !a.may_register(&reg.component) {
            conn.send_err(
                shard,
                ErrorCode::PermissionDenied,
                &format!(
                    "permission denied: user {:?} may not register component {:?}",
                    a.user.name, reg.component
                ),
            );
            return;
        }
    }
    let Some(cp) = control_plane(shard, conn, op::REGISTER) else {
        return;
    };
    let at = ConnRef {
        shard: shard.id,
        conn: conn.id,
    };
    let ack = match cp.register(&*shard.global, at, &reg, conn.load.clone()) {
        Ok(ack) => ack,
        Err(refusal) => {
            conn.send_err(shard, refusal.code, &refusal.message);
            return;
        }
    };
    {
        let mut st = conn.st.borrow_mut();
        if let Err(e) = encode_control(&mut st.out, &ack) {
            tracing::error!("cannot encode REGISTERED: {e}");
        }
    }
    shard.touch(conn);
    *conn.component.borrow_mut() = Some(shard.global.telemetry.hist.round_trip(&reg.component));
}

fn heartbeat(shard: &Shard, conn: &Rc<Conn>, body: &[u8]) {
    let hb: Heartbeat = match decode_control(body) {
        Ok(h) => h,
        Err(e) => return invalid(shard, conn, "HEARTBEAT", e),
    };
    let Some(cp) = control_plane(shard, conn, op::HEARTBEAT) else {
        return;
    };
    if let Err(refusal) = cp.heartbeat(&*shard.global, conn.id, &hb) {
        conn.send_err(shard, refusal.code, &refusal.message);
    }
}

fn discover(shard: &Shard, conn: &Rc<Conn>, body: &[u8]) {
    let q: Discover = match decode_control(body) {
        Ok(q) => q,
        Err(e) => return invalid(shard, conn, "DISCOVER", e),
    };
    if let Err(e) = q.validate() {
        return invalid(shard, conn, "DISCOVER", e);
    }
    let Some(cp) = control_plane(shard, conn, op::DISCOVER) else {
        return;
    };
    let instances = cp.discover(&q);
    let answer = Discovered {
        request_id: q.request_id,
        instances,
        truncated: false,
    };
    let max = shard.limits.borrow().max_payload as usize;
    let frame = match fit_discovered(answer, max) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!("cannot encode DISCOVERED: {e}");
            return;
        }
    };
    conn.st.borrow_mut().out.extend_from_slice(&frame);
    shard.touch(conn);
}

/// Encodes `answer` within `max` bytes of body: the whole list if it fits; otherwise without
/// metadata, then cut from the end, flagged `truncated` (a client applies the frame limit to
/// what it reads, so an answer over it would cost the asker its connection).
fn fit_discovered(mut answer: Discovered, max: usize) -> Result<BytesMut, proto::EncodeError> {
    let mut b = BytesMut::new();
    encode_control(&mut b, &answer)?;
    if b.len() <= max + proto::HEADER_LEN {
        return Ok(b);
    }
    let total = answer.instances.len();
    answer.truncated = true;
    for i in &mut answer.instances {
        i.metadata.clear();
    }
    loop {
        b.clear();
        encode_control(&mut b, &answer)?;
        if b.len() <= max + proto::HEADER_LEN || answer.instances.is_empty() {
            break;
        }
        let keep = answer.instances.len() * (max + proto::HEADER_LEN) / b.len();
        answer
            .instances
            .truncate(keep.min(answer.instances.len() - 1));
    }
    tracing::warn!(
        instances = total,
        sent = answer.instances.len(),
        max_payload = max,
        "DISCOVERED over max_payload: metadata left out{}",
        if answer.instances.len() < total {
            ", list cut"
        } else {
            ""
        }
    );
    Ok(b)
}

/// The connection is gone: drop its registration (if any; the control plane tells the
/// watchers).
pub(crate) fn connection_closed(shard: &Shard, conn: &Conn) {
    if let Some(cp) = &shard.global.control {
        cp.deregister(&*shard.global, conn.id, "disconnected");
    }
}

/// Runs the commands sent to this shard (config push, system messages, reload) until the
/// channel closes.
pub(crate) async fn control_loop(shard: Rc<Shard>, mut rx: mpsc::UnboundedReceiver<ShardCmd>) {
    while let Some(cmd) = rx.recv().await {
        apply(&shard, cmd);
        // Take everything queued before flushing once.
        while let Ok(cmd) = rx.try_recv() {
            apply(&shard, cmd);
        }
        let _ = shard.flush();
    }
}

fn apply(shard: &Shard, cmd: ShardCmd) {
    match cmd {
        ShardCmd::Reload => reload(shard),
        ShardCmd::SendFrame { conn, frame } => {
            let c = shard.conns.borrow().get(&conn).cloned();
            if let Some(c) = c {
                let mut st = c.st.borrow_mut();
                if st.closing {
                    return;
                }
                st.out.extend_from_slice(&frame);
                drop(st);
                shard.touch(&c);
            }
        }
        ShardCmd::Publish { subject, payload } => {
            let mut b = BytesMut::with_capacity(32 + subject.len() + payload.len());
            if proto::encode_pub(&mut b, &subject, b"", b"", &payload).is_err() {
                return;
            }
            let frame = b.freeze();
            let matches = shard.global.routing.match_subject(&subject);
            for t in &matches.plain {
                if t.shard == shard.id {
                    shard.deliver_local(t.conn, t.sid, 0, &frame);
                }
            }
            // One member of each group, the same choice on every shard: only its shard delivers.
            let h = subject.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
            });
            for g in &matches.groups {
                if g.members.is_empty() {
                    continue;
                }
                let t = g.members[(h % g.members.len() as u64) as usize];
                if t.shard == shard.id {
                    shard.deliver_local(t.conn, t.sid, 0, &frame);
                }
            }
        }
    }
}

/// Applies reloaded users and limits to this shard's connections.
fn reload(shard: &Shard) {
    *shard.limits.borrow_mut() = **shard.global.limits.load();
    let auth = shard.global.auth.load();
    let conns: Vec<Rc<Conn>> = shard.conns.borrow().values().cloned().collect();
    for c in conns {
        if !c.handshaken.get() {
            // Authenticated against the new users when its HELLO comes.
            continue;
        }
        if !auth.enabled() {
            *c.auth.borrow_mut() = None;
            c.tracks_responses.set(false);
            continue;
        }
        let name = c.auth.borrow().as_ref().map(|a| a.user.name.clone());
        let refusal = match name {
            None => Some(
                "authentication is now required by this server; reconnect with credentials"
                    .to_owned(),
            ),
            Some(n) => match auth.user(&n) {
                None => Some(format!(
                    "user {n:?} was removed from the server's configuration"
                )),
                Some(u) => {
                    let a = crate::auth::ConnAuth::new(u.clone());
                    c.tracks_responses.set(a.tracks_responses());
                    *c.auth.borrow_mut() = Some(a);
                    None
                }
            },
        };
        if let Some(why) = refusal {
            tracing::info!(conn = c.id, "closing: {why}");
            c.send_err(shard, ErrorCode::AuthFailed, &why);
        }
    }
}

/// Waits for lame duck, then sends every client of this shard LAMEDUCK and closes each at a
/// random moment within the window (`ERR server_shutdown`).
pub(crate) async fn lame_duck(shard: Rc<Shard>) {
    let mut lame = shard.global.lame.subscribe();
    let mut stop = shard.shutdown.clone();
    loop {
        if *lame.borrow() {
            break;
        }
        tokio::select! {
            r = lame.changed() => if r.is_err() { return; },
            r = stop.changed() => if r.is_err() || *stop.borrow() { return; },
        }
    }
    let window = shard.global.config.lameduck_window_ms;
    let notice = LameDuck {
        window_ms: window.min(u64::from(u32::MAX)) as u32,
        reason: "the server is going away (lame duck)".into(),
    };
    let conns: Vec<Rc<Conn>> = shard.conns.borrow().values().cloned().collect();
    for c in &conns {
        let mut st = c.st.borrow_mut();
        if st.closing {
            continue;
        }
        if let Err(e) = encode_control(&mut st.out, &notice) {
            tracing::error!("cannot encode LAMEDUCK: {e}");
        }
        drop(st);
        shard.touch(c);
    }
    let _ = shard.flush();
    for c in conns {
        let delay = if window == 0 {
            0
        } else {
            shard.next_rand_below(window)
        };
        let s2 = shard.clone();
        tokio::task::spawn_local(async move {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
            c.send_err(
                &s2,
                ErrorCode::ServerShutdown,
                "lame duck: the server is going away; reconnect to another server",
            );
            let _ = s2.flush();
        });
    }
}
