//! The receiving side of the cross-shard hand-off: the task that drains a shard's inbound
//! queues in batches and delivers to its connections, pausing to pace when a consumer passes
//! the soft limit.

use std::rc::Rc;
use std::time::Instant;

use super::remote::RemoteBatch;
use super::{bump, Shard};

/// Drains this shard's inbound queues and delivers to local connections. A batch is set
/// aside half-done when a delivery takes a connection past the soft limit, and resumed after
/// pacing.
pub(super) async fn drain(shard: Rc<Shard>) {
    const BUDGET: usize = 4096;
    let n = shard.global.shards.len();
    let mut current: Vec<Option<(RemoteBatch, usize)>> = (0..n).map(|_| None).collect();
    // Whether the last round stopped before the queues were empty (budget or pacing).
    let mut more = false;
    loop {
        if !more && current.iter().all(Option::is_none) {
            shard.handle.wake.notified().await;
        }
        let mut delivered = 0usize;
        let mut oldest: Option<Instant> = None;
        'sources: for (src, cur) in current.iter_mut().enumerate() {
            let q = &shard.handle.inbound[src];
            let mut popped = false;
            while delivered < BUDGET {
                let (batch, start) = match cur.take() {
                    Some(c) => c,
                    None => match q.pop() {
                        Some(b) => {
                            popped = true;
                            (b, 0)
                        }
                        None => break,
                    },
                };
                let mut i = start;
                if start == 0 {
                    oldest = Some(oldest.map_or(batch.read_at, |o: Instant| o.min(batch.read_at)));
                }
                while i < batch.items.len() {
                    let it = batch.items[i];
                    i += 1;
                    let (off, end) = (it.off as usize, it.off as usize + it.len as usize);
                    match batch.frames.get(off..end) {
                        Some(frame) => {
                            shard.deliver_local(it.conn, it.sid, it.flags, frame);
                        }
                        None => bump(&shard.counters.dropped, 1),
                    }
                    delivered += 1;
                    if shard.over_soft.get() {
                        break;
                    }
                }
                if i < batch.items.len() {
                    *cur = Some((batch, i));
                }
                if shard.over_soft.get() {
                    if popped {
                        shard.global.shards[src].space.notify_waiters();
                    }
                    break 'sources;
                }
            }
            if popped {
                shard.global.shards[src].space.notify_waiters();
            }
        }
        more = delivered >= BUDGET || shard.over_soft.get();
        if delivered == 0 && !more {
            continue;
        }
        shard.over_soft.set(false);
        let congested = shard.flush();
        if let Some(t) = oldest {
            shard
                .global
                .telemetry
                .hist
                .residence
                .record(t.elapsed().as_micros() as u64);
        }
        shard.pace(congested).await;
        // Let this shard's readers and writers run between drain rounds.
        tokio::task::yield_now().await;
    }
}
