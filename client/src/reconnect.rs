//! Automatic reconnect: after a dropped connection ([`Inner::connection_lost`]), retries the
//! server list round robin with exponential backoff, redoes the handshake, re-sends every
//! active subscription with its sid and queue group (and the request inbox), the REGISTER of
//! an active registration, then what was published meanwhile, and starts a new reader and
//! writer.

use std::sync::Arc;

use agentwire_protocol::{encode_sub, encode_unsub};
use bytes::BytesMut;
use parking_lot::Mutex;

use crate::conn::{Inner, Origin, Reconnect};
use crate::control_state::encode_reregister;
use crate::error::CloseReason;
use crate::events::ConnectionEvent;
use crate::handshake;
use crate::options::ConnectOptions;
use crate::sync::lock;
use crate::tasks::start_tasks;

/// What a connection needs to reconnect: its options and server list.
#[derive(Debug)]
pub(crate) struct Reconnector {
    opts: ConnectOptions,
    addrs: Vec<String>,
    /// Index in `addrs` of the current (or last) connection.
    current: Mutex<usize>,
}

impl Reconnector {
    pub(crate) fn new(opts: ConnectOptions, addrs: Vec<String>, current: usize) -> Reconnector {
        Reconnector {
            opts,
            addrs,
            current: Mutex::new(current),
        }
    }
}

impl Reconnect for Reconnector {
    fn start(self: Arc<Self>, inner: Arc<Inner>) {
        tokio::spawn(run(inner, self));
    }
}

/// The reconnect loop: one attempt per backoff wait until one succeeds, the client closes, or
/// `max_reconnects` attempts in a row have failed (then the client closes with
/// [`CloseReason::ReconnectFailed`]).
async fn run(inner: Arc<Inner>, rc: Arc<Reconnector>) {
    if rc.addrs.is_empty() {
        inner.teardown(CloseReason::ReconnectFailed(0), Origin::User);
        return;
    }
    let mut failed = 0u32;
    let dropped_at = tokio::time::Instant::now();
    loop {
        if inner.is_closed() {
            return;
        }
        if let Some(max) = rc.opts.reconnect_limit() {
            if failed >= max {
                tracing::warn!(attempts = failed, "giving up reconnecting");
                inner.teardown(CloseReason::ReconnectFailed(failed), Origin::User);
                return;
            }
        }
        tokio::time::sleep(rc.opts.reconnect_delay_for(failed)).await;
        if inner.is_closed() {
            return;
        }
        let index = {
            let mut current = rc.current.lock();
            *current = (*current + 1) % rc.addrs.len();
            *current
        };
        let Some(addr) = rc.addrs.get(index) else {
            return;
        };
        match handshake::open(&rc.opts, addr).await {
            Ok((stream, _info, leftover)) => {
                let Some(generation) = resubscribe(&inner) else {
                    return; // closed meanwhile
                };
                *lock(&inner.addr) = addr.clone();
                start_tasks(&inner, stream, leftover, rc.opts.read_size(), generation);
                tracing::debug!(addr = %addr, attempts = failed + 1, "reconnected");
                inner.events.emit(ConnectionEvent::Reconnected {
                    addr: addr.clone(),
                    after: dropped_at.elapsed(),
                    attempts: failed.saturating_add(1),
                });
                return;
            }
            Err(e) => {
                failed = failed.saturating_add(1);
                tracing::debug!(addr = %addr, error = %e, attempts = failed, "reconnect attempt failed");
            }
        }
    }
}

/// Puts the re-subscribe frames (every subscription with its sid, queue group and remaining
/// server-side limit, sids in order) in front of what was buffered while disconnected, and
/// marks the client connected. Returns the write generation of the new connection, or `None`
/// when the client closed meanwhile.
fn resubscribe(inner: &Inner) -> Option<u64> {
    let subs = lock(&inner.subs);
    let control = lock(&inner.control);
    let mut w = inner.write.lock();
    if w.closed || w.closing || inner.is_closed() {
        return None;
    }
    let mut sids: Vec<u32> = subs.keys().copied().collect();
    sids.sort_unstable();
    let mut out = BytesMut::with_capacity(w.buf.len() + 64 * sids.len());
    for sid in sids {
        let Some(entry) = subs.get(&sid) else {
            continue;
        };
        if let Err(e) = encode_sub(
            &mut out,
            sid,
            entry.subject.as_bytes(),
            entry.queue.as_bytes(),
        ) {
            // It was encoded once already: cannot happen; skip it rather than fail the rest.
            tracing::warn!(sid, error = %e, "cannot re-send a subscription");
            continue;
        }
        if entry.server_limited && entry.max > entry.delivered {
            if let Ok(left) = u32::try_from(entry.max - entry.delivered) {
                encode_unsub(&mut out, sid, left);
            }
        }
    }
    encode_reregister(&control, &mut out);
    out.extend_from_slice(&w.buf);
    w.buf = out;
    w.disconnected = false;
    let generation = w.generation;
    drop(w);
    drop(control);
    drop(subs);
    inner.drained.notify_waiters();
    Some(generation)
}
