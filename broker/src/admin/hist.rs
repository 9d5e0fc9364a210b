//! Latency histograms (HDR, µs) over rolling windows: broker residence time (frame read →
//! written to the subscriber's socket buffer), request → reply round trip per serving
//! component, and publish → deliver for messages whose publisher stamped a send time.
//!
//! Each histogram keeps the current and the previous window ([`WINDOW`] each) and reports the
//! two merged, so a figure always covers between one and two windows of recent traffic.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;

/// Length of one window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Highest value tracked, µs (values above are clamped): one hour.
const MAX_US: u64 = 3_600_000_000;

/// Percentiles of one histogram.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Percentiles {
    /// Samples in the window.
    pub count: u64,
    /// Median, µs.
    pub p50: u64,
    /// 90th percentile, µs.
    pub p90: u64,
    /// 95th percentile, µs.
    pub p95: u64,
    /// 99th percentile, µs.
    pub p99: u64,
    /// 99.9th percentile, µs.
    pub p999: u64,
    /// Largest, µs.
    pub max: u64,
}

#[derive(Debug)]
struct Pair {
    cur: Histogram<u64>,
    prev: Histogram<u64>,
    rotated: Instant,
}

fn new_hist() -> Histogram<u64> {
    // 3 significant digits, 1 µs .. 1 h: ~190 KiB a histogram; bounded label sets keep the
    // number of histograms small.
    Histogram::new_with_bounds(1, MAX_US, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant figures is valid"))
    })
}

/// One rolling-window histogram.
#[derive(Debug)]
pub struct Windowed(Mutex<Pair>);

impl Default for Windowed {
    fn default() -> Self {
        Windowed(Mutex::new(Pair {
            cur: new_hist(),
            prev: new_hist(),
            rotated: Instant::now(),
        }))
    }
}

impl Windowed {
    fn rotate(p: &mut Pair, now: Instant) {
        let age = now.saturating_duration_since(p.rotated);
        if age >= WINDOW * 2 {
            p.prev.reset();
            p.cur.reset();
            p.rotated = now;
        } else if age >= WINDOW {
            std::mem::swap(&mut p.prev, &mut p.cur);
            p.cur.reset();
            p.rotated = now;
        }
    }

    /// Records `n` samples of `us` microseconds.
    pub fn record_n(&self, us: u64, n: u64) {
        let mut p = self.0.lock();
        Windowed::rotate(&mut p, Instant::now());
        let _ = p.cur.record_n(us.clamp(1, MAX_US), n);
    }

    /// Records one sample.
    pub fn record(&self, us: u64) {
        self.record_n(us, 1);
    }

    /// Percentiles over the current and previous windows.
    pub fn percentiles(&self) -> Percentiles {
        let mut p = self.0.lock();
        Windowed::rotate(&mut p, Instant::now());
        let mut h = p.cur.clone();
        let _ = h.add(&p.prev);
        drop(p);
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p95: h.value_at_quantile(0.95),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// Every histogram the broker keeps.
#[derive(Debug, Default)]
pub struct Histograms {
    /// Frame read → MSG written to the subscriber's socket buffer.
    pub residence: Windowed,
    /// Publisher's stamped send time → broker routed it (needs the `Aw-Sent-Us` header).
    pub publish_to_deliver: Windowed,
    /// Request delivered to a registered component's instance → its reply read, per component.
    round_trip: Mutex<BTreeMap<String, std::sync::Arc<Windowed>>>,
}

impl Histograms {
    /// The round-trip histogram of `component` (created on first use).
    pub fn round_trip(&self, component: &str) -> std::sync::Arc<Windowed> {
        let mut m = self.round_trip.lock();
        if let Some(w) = m.get(component) {
            return w.clone();
        }
        let w = std::sync::Arc::new(Windowed::default());
        m.insert(component.to_owned(), w.clone());
        w
    }

    /// Percentiles of every component's round trip.
    pub fn round_trips(&self) -> Vec<(String, Percentiles)> {
        let m: Vec<_> = self
            .round_trip
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        m.into_iter().map(|(k, v)| (k, v.percentiles())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_recorded_values() {
        let w = Windowed::default();
        assert_eq!(w.percentiles(), Percentiles::default());
        for v in 1..=1000 {
            w.record(v);
        }
        let p = w.percentiles();
        assert_eq!(p.count, 1000);
        assert!((495..=505).contains(&p.p50), "{p:?}");
        assert!((985..=995).contains(&p.p99), "{p:?}");
        assert!(p.max >= 1000 && p.max <= 1001, "{p:?}");
        w.record_n(0, 5);
        assert_eq!(
            w.percentiles().count,
            1005,
            "0 is clamped to 1, not dropped"
        );
    }

    #[test]
    fn windows_rotate_out() {
        let w = Windowed::default();
        w.record(10);
        {
            let mut p = w.0.lock();
            p.rotated -= WINDOW;
        }
        assert_eq!(w.percentiles().count, 1, "previous window still counts");
        {
            let mut p = w.0.lock();
            p.rotated -= WINDOW;
        }
        assert_eq!(w.percentiles().count, 0, "two windows old: gone");
    }

    #[test]
    fn round_trip_per_component() {
        let h = Histograms::default();
        h.round_trip("a").record(100);
        h.round_trip("a").record(300);
        h.round_trip("b").record(5);
        let r = h.round_trips();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].0, "a");
        assert_eq!(r[0].1.count, 2);
    }
}
