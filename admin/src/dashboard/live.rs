//! The dashboard's live figures: a ring of one sample a second over the last 15 minutes, kept
//! in memory by a task on the admin thread ([`sampler`]), and a tick that wakes the dashboard's
//! server-sent-event streams when a new sample lands. (The metrics sampler stores a sample in
//! SQLite only every `metrics_sample_ms`, 10 s by default: too coarse for live charts.)

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::{now_ms, Node};

/// How often a sample is taken.
pub const EVERY: Duration = Duration::from_secs(1);

/// Samples kept: 15 minutes at one a second.
pub const CAPACITY: usize = 900;

/// One sample of the broker's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Sample {
    /// When it was taken, ms since the epoch.
    pub ts_ms: u64,
    /// Messages published in per second since the previous sample.
    pub msgs_in_s: f64,
    /// Messages delivered out per second.
    pub msgs_out_s: f64,
    /// Bytes in per second.
    pub bytes_in_s: f64,
    /// Bytes out per second.
    pub bytes_out_s: f64,
    /// Open connections.
    pub connections: u64,
    /// Broker residence (read → written) median over the histogram's window, µs.
    pub p50_us: u64,
    /// Broker residence 99th percentile, µs.
    pub p99_us: u64,
    /// Messages published in since the broker started.
    pub msgs_in_total: u64,
    /// Messages delivered out since the broker started.
    pub msgs_out_total: u64,
    /// Slow consumers disconnected since the broker started.
    pub slow_consumers: u64,
}

/// The ring and its tick.
#[derive(Debug)]
pub struct Live {
    ring: Mutex<VecDeque<Sample>>,
    /// (samples taken, sampler stopped).
    tick: watch::Sender<(u64, bool)>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            ring: Mutex::new(VecDeque::with_capacity(CAPACITY)),
            tick: watch::Sender::new((0, false)),
        }
    }
}

impl Live {
    /// Appends a sample, dropping the oldest past [`CAPACITY`], and wakes the streams.
    pub fn push(&self, s: Sample) {
        {
            let mut r = self.ring.lock();
            while r.len() >= CAPACITY {
                r.pop_front();
            }
            r.push_back(s);
        }
        self.tick.send_modify(|t| t.0 += 1);
    }

    /// Every sample, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.ring.lock().iter().copied().collect()
    }

    /// The newest sample.
    pub fn last(&self) -> Option<Sample> {
        self.ring.lock().back().copied()
    }

    /// A receiver woken on each new sample; its value's `.1` turns true when the sampler stops
    /// (the broker is shutting down: streams end so the HTTP server can finish).
    pub fn subscribe(&self) -> watch::Receiver<(u64, bool)> {
        self.tick.subscribe()
    }

    /// Marks the sampler stopped.
    pub fn stop(&self) {
        self.tick.send_modify(|t| t.1 = true);
    }
}

/// Takes a sample every [`EVERY`] until `stop`.
pub async fn sampler(global: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (global.stats(), Instant::now());
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    global.admin().live.stop();
                    return;
                }
                continue;
            }
        }
        let now = Instant::now();
        let snap = global.stats();
        let secs = now.duration_since(last.1).as_secs_f64().max(1e-3);
        let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
        let res = global.telemetry().hist.residence.percentiles();
        let s = Sample {
            ts_ms: now_ms(),
            msgs_in_s: rate(snap.msgs_in, last.0.msgs_in),
            msgs_out_s: rate(snap.msgs_out, last.0.msgs_out),
            bytes_in_s: rate(snap.bytes_in, last.0.bytes_in),
            bytes_out_s: rate(snap.bytes_out, last.0.bytes_out),
            connections: snap.connections,
            p50_us: res.p50,
            p99_us: res.p99,
            msgs_in_total: snap.msgs_in,
            msgs_out_total: snap.msgs_out,
            slow_consumers: snap.slow_consumers,
        };
        global.admin().live.push(s);
        last = (snap, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_last_fifteen_minutes() {
        let l = Live::default();
        let mut rx = l.subscribe();
        for i in 0..(CAPACITY as u64 + 10) {
            l.push(Sample {
                ts_ms: i,
                ..Sample::default()
            });
        }
        let s = l.samples();
        assert_eq!(s.len(), CAPACITY);
        assert_eq!(s[0].ts_ms, 10);
        assert_eq!(l.last().map(|s| s.ts_ms), Some(CAPACITY as u64 + 9));
        assert!(rx.has_changed().unwrap_or(false));
        assert_eq!(rx.borrow_and_update().0, CAPACITY as u64 + 10);
        l.stop();
        assert!(rx.borrow_and_update().1);
    }
}
