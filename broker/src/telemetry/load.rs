//! Per-connection load, read by every shard when it picks a queue-group member, written by the
//! connection's own shard (outstanding requests, reply latency, pending bytes) and by the
//! registry (heartbeat load, health).
//!
//! The score ([`ConnLoad::score`]) is what power-of-two-choices compares: lower is better.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use agentwire_protocol::control::Heartbeat;

/// A member that answered nothing for this long with nothing outstanding is probed again (its
/// old latency estimate is forgotten), so a member that was slow once is not shunned forever.
pub const PROBE_AFTER_US: u64 = 1_000_000;

/// Load figures of one connection. All relaxed atomics: a slightly stale view is fine for
/// choosing a member.
#[derive(Debug)]
pub struct ConnLoad {
    /// Requests (messages with a reply subject) routed to this connection as a queue member.
    pub dispatched: AtomicU64,
    /// Of those, how many it answered (or timed out).
    pub answered: AtomicU64,
    /// EWMA of its reply latency, µs.
    pub latency_ewma_us: AtomicU32,
    /// When it last answered, µs since [`ConnLoad`]'s epoch.
    pub last_answer_us: AtomicU64,
    /// Outbound bytes not yet written to it.
    pub pending_bytes: AtomicU64,
    /// Work in flight, from its last heartbeat.
    pub hb_in_flight: AtomicU32,
    /// Queue depth, from its last heartbeat.
    pub hb_queue_depth: AtomicU32,
    /// Latency it reported, µs.
    pub hb_latency_us: AtomicU32,
    healthy: AtomicBool,
    epoch: Instant,
}

impl Default for ConnLoad {
    fn default() -> Self {
        ConnLoad {
            dispatched: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            latency_ewma_us: AtomicU32::new(0),
            last_answer_us: AtomicU64::new(0),
            pending_bytes: AtomicU64::new(0),
            hb_in_flight: AtomicU32::new(0),
            hb_queue_depth: AtomicU32::new(0),
            hb_latency_us: AtomicU32::new(0),
            healthy: AtomicBool::new(true),
            epoch: Instant::now(),
        }
    }
}

impl ConnLoad {
    /// µs since this record was made.
    pub fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Whether the connection is healthy (unregistered connections always are).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    /// Sets health (the registry does, from heartbeats).
    pub fn set_healthy(&self, h: bool) {
        self.healthy.store(h, Relaxed);
    }

    /// Stores a heartbeat's load.
    pub fn set_heartbeat(&self, hb: &Heartbeat) {
        self.hb_in_flight.store(hb.in_flight, Relaxed);
        self.hb_queue_depth.store(hb.queue_depth, Relaxed);
        self.hb_latency_us.store(hb.latency_us, Relaxed);
    }

    /// Requests routed to it and not answered yet.
    pub fn outstanding(&self) -> u64 {
        self.dispatched
            .load(Relaxed)
            .saturating_sub(self.answered.load(Relaxed))
    }

    /// Records one answer that took `us` (EWMA with weight 1/8).
    pub fn record_answer(&self, us: u64) {
        self.answered.fetch_add(1, Relaxed);
        let us = us.min(u64::from(u32::MAX)) as u32;
        let old = self.latency_ewma_us.load(Relaxed);
        let new = if old == 0 {
            us
        } else {
            ((u64::from(old) * 7 + u64::from(us)) / 8) as u32
        };
        self.latency_ewma_us.store(new.max(1), Relaxed);
        self.last_answer_us.store(self.now_us(), Relaxed);
    }

    /// Counts requests given up on (no answer within the timeout) as answered.
    pub fn give_up(&self, n: u64) {
        self.answered.fetch_add(n, Relaxed);
    }

    /// The load score: lower is better. `(outstanding + heartbeat in-flight + 1) × (reply
    /// latency estimate + 50 µs) + pending KiB`; the latency estimate is the larger of the
    /// broker's EWMA and the heartbeat's figure, and is forgotten (probe) after
    /// [`PROBE_AFTER_US`] without answers and nothing outstanding.
    pub fn score(&self) -> u64 {
        let out = self.outstanding();
        let mut lat = u64::from(self.latency_ewma_us.load(Relaxed));
        if out == 0
            && lat > 0
            && self
                .now_us()
                .saturating_sub(self.last_answer_us.load(Relaxed))
                > PROBE_AFTER_US
        {
            lat = 0;
        }
        lat = lat.max(u64::from(self.hb_latency_us.load(Relaxed)));
        let work = out + u64::from(self.hb_in_flight.load(Relaxed)) + 1;
        work.saturating_mul(lat + 50)
            .saturating_add(self.pending_bytes.load(Relaxed) / 1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_and_busy_members_score_higher() {
        let fast = ConnLoad::default();
        let slow = ConnLoad::default();
        fast.record_answer(50);
        slow.record_answer(5000);
        assert!(slow.score() > fast.score());
        let busy = ConnLoad::default();
        busy.record_answer(50);
        busy.dispatched.store(10, Relaxed);
        assert!(busy.score() > fast.score());
        assert_eq!(busy.outstanding(), 9);
        busy.give_up(9);
        assert_eq!(busy.outstanding(), 0);
    }

    #[test]
    fn ewma_moves_toward_samples() {
        let l = ConnLoad::default();
        l.record_answer(800);
        assert_eq!(l.latency_ewma_us.load(Relaxed), 800);
        for _ in 0..50 {
            l.record_answer(100);
        }
        let v = l.latency_ewma_us.load(Relaxed);
        assert!((100..120).contains(&v), "{v}");
    }

    #[test]
    fn heartbeat_load_counts() {
        let a = ConnLoad::default();
        let b = ConnLoad::default();
        b.set_heartbeat(&Heartbeat {
            in_flight: 5,
            latency_us: 2000,
            ..Heartbeat::default()
        });
        assert!(b.score() > a.score());
        assert!(a.healthy());
        a.set_healthy(false);
        assert!(!a.healthy());
    }
}
