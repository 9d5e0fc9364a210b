//! Counters the broker keeps: per shard (written only by the owning shard, read by anyone) and
//! per error code. Shards add to them once per read batch, not per message.

use std::sync::atomic::{AtomicU64, Ordering};

use agentwire_protocol::ErrorCode;

/// Counters of one shard. Relaxed atomics: each is written by its own shard only, so they cost
/// no contention; readers see a recent value.
#[derive(Debug, Default)]
pub struct ShardStats {
    /// Messages published into this shard by its clients.
    pub msgs_in: AtomicU64,
    /// Payload + header bytes published into this shard.
    pub bytes_in: AtomicU64,
    /// Messages written to this shard's clients (MSG frames queued for writing).
    pub msgs_out: AtomicU64,
    /// Bytes of MSG frames queued for this shard's clients.
    pub bytes_out: AtomicU64,
    /// Messages handed to other shards.
    pub cross_shard_out: AtomicU64,
    /// Connections accepted by this shard, ever.
    pub conns_total: AtomicU64,
    /// Connections open now.
    pub conns_open: AtomicU64,
    /// Connections closed as slow consumers.
    pub slow_consumers: AtomicU64,
    /// Messages dropped because their target connection was closing or slow.
    pub dropped: AtomicU64,
    /// Connections that vanished with a partial frame buffered.
    pub truncated_frames: AtomicU64,
    /// ERR frames sent, indexed by wire code.
    errors: [AtomicU64; 32],
}

impl ShardStats {
    /// Adds `n` to a counter.
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        if n != 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Counts one ERR frame sent with `code`.
    pub fn count_error(&self, code: ErrorCode) {
        if let Some(c) = self.errors.get(code.as_u16() as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// ERR frames sent with `code`.
    pub fn errors(&self, code: ErrorCode) -> u64 {
        self.errors
            .get(code.as_u16() as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// A point-in-time sum over all shards.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    /// Messages published in.
    pub msgs_in: u64,
    /// Bytes published in.
    pub bytes_in: u64,
    /// Messages delivered out.
    pub msgs_out: u64,
    /// Bytes delivered out.
    pub bytes_out: u64,
    /// Messages handed between shards.
    pub cross_shard: u64,
    /// Connections open now.
    pub connections: u64,
    /// Connections accepted ever.
    pub connections_total: u64,
    /// Slow consumers disconnected.
    pub slow_consumers: u64,
    /// Messages dropped for closing or slow targets.
    pub dropped: u64,
    /// Connections that vanished mid-frame.
    pub truncated_frames: u64,
    /// ERR frames sent, by code name (only codes that occurred).
    pub errors: Vec<(String, u64)>,
}

impl StatsSnapshot {
    /// Sums the counters of every shard.
    pub fn collect<'a>(shards: impl IntoIterator<Item = &'a ShardStats>) -> StatsSnapshot {
        let mut s = StatsSnapshot::default();
        let mut errs = [0u64; 32];
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for st in shards {
            s.msgs_in += ld(&st.msgs_in);
            s.bytes_in += ld(&st.bytes_in);
            s.msgs_out += ld(&st.msgs_out);
            s.bytes_out += ld(&st.bytes_out);
            s.cross_shard += ld(&st.cross_shard_out);
            s.connections += ld(&st.conns_open);
            s.connections_total += ld(&st.conns_total);
            s.slow_consumers += ld(&st.slow_consumers);
            s.dropped += ld(&st.dropped);
            s.truncated_frames += ld(&st.truncated_frames);
            for (i, e) in st.errors.iter().enumerate() {
                errs[i] += ld(e);
            }
        }
        for code in ErrorCode::ALL {
            let n = errs[code.as_u16() as usize];
            if n > 0 {
                s.errors.push((code.name().to_string(), n));
            }
        }
        s
    }

    /// ERR frames sent with `code`.
    pub fn error_count(&self, code: ErrorCode) -> u64 {
        self.errors
            .iter()
            .find(|(n, _)| n == code.name())
            .map_or(0, |(_, c)| *c)
    }
}

impl ShardStats {
    /// Subtracts one from a gauge.
    pub fn add_neg(counter: &AtomicU64) {
        counter.fetch_sub(1, Ordering::Relaxed);
    }
}
