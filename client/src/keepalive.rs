//! Client keepalive: finds a connection the server stopped answering on (a half-open TCP
//! connection, a frozen server) within a few ping intervals.
//!
//! One task per connection wakes every [`ConnectOptions::ping_interval`] and compares the
//! reader's read counter ([`Inner::reads`], bumped once per socket read, which the reader does
//! anyway) with what it saw at its last wake: any read is a sign of life. After an interval
//! without a read it sends a PING; when [`ConnectOptions::max_pings_out`] PINGs in a row have
//! brought nothing back, the connection is stale ([`Inner::connection_stale`]): it goes down
//! the ordinary drop path. Nothing is added to the per-message path.
//!
//! The task holds only a weak reference to the connection and ends by itself once its
//! connection generation is over (dropped, reconnected or closed).
//!
//! [`ConnectOptions::ping_interval`]: crate::ConnectOptions::ping_interval
//! [`ConnectOptions::max_pings_out`]: crate::ConnectOptions::max_pings_out

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use crate::conn::Inner;

/// Starts the keepalive of connection `generation`, unless it is turned off.
pub(crate) fn start(inner: &Arc<Inner>, generation: u64) {
    let interval = inner.settings.ping_interval;
    if interval.is_zero() {
        return;
    }
    let max_out = inner.settings.max_pings_out.max(1);
    let reads = inner.reads.load(Ordering::Relaxed);
    tokio::spawn(run(
        Arc::downgrade(inner),
        generation,
        interval,
        max_out,
        reads,
    ));
}

async fn run(inner: Weak<Inner>, generation: u64, interval: Duration, max_out: u32, reads: u64) {
    let mut last_reads = reads;
    let mut out = 0u32;
    let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if !inner.is_generation(generation) {
            return;
        }
        let reads = inner.reads.load(Ordering::Relaxed);
        if reads != last_reads {
            last_reads = reads;
            out = 0;
            continue;
        }
        if out >= max_out {
            inner.connection_stale(generation, out, interval);
            return;
        }
        // The PONG resolves a waiter of its own, keeping PONGs and flush waiters in step.
        if inner.send_with_ping(|_| Ok(())).is_err() {
            return; // closing or closed
        }
        out += 1;
        tracing::trace!(
            pings_out = out,
            "nothing read from the server: keepalive PING"
        );
    }
}
