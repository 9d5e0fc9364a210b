//! Keep-alive on a shard: the task that checks every connection against its deadlines (HELLO
//! within the handshake timeout, a PING when nothing was read for a while, closed as stale
//! after too many unanswered).

use std::rc::Rc;
use std::time::{Duration, Instant};

use agentwire_protocol::{self as proto, ErrorCode};

use super::conn::Conn;
use super::Shard;

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
