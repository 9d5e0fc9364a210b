//! Latency histograms (HDR, µs) over rolling windows: broker residence time (frame read →
//! written to the subscriber's socket buffer), request → reply round trip per serving
//! component, and publish → deliver for messages whose publisher stamped a send time.
//!
//! Each histogram keeps the current and the previous window ([`WINDOW`] each) and reports the
//! two merged, so a figure always covers between one and two windows of recent traffic.
//!
//! For the alert rules, a sample is recorded into a 5 s slice ([`SLICE`]) only; a finished
//! slice is merged into the long window and kept in a short ring (up to [`MAX_RECENT`]), so
//! [`Windowed::recent`] reports the last few seconds without a second record per sample.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;

/// Length of one window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Length of one short slice (the resolution of [`Windowed::recent`]).
pub const SLICE: Duration = Duration::from_secs(5);

/// Longest window [`Windowed::recent`] can report (the ring holds at most 13 slices of
/// ~190 KiB per histogram in use).
pub const MAX_RECENT: Duration = Duration::from_secs(60);

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
    /// Samples since `slice_start` (not yet in `cur`).
    slice: Histogram<u64>,
    slice_start: Instant,
    /// Finished, non-empty slices, oldest first, with their start times (at most
    /// `MAX_RECENT` old).
    ring: VecDeque<(Instant, Histogram<u64>)>,
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
        let now = Instant::now();
        Windowed(Mutex::new(Pair {
            cur: new_hist(),
            prev: new_hist(),
            rotated: now,
            slice: new_hist(),
            slice_start: now,
            ring: VecDeque::new(),
        }))
    }
}

impl Windowed {
    /// Closes the current slice when it is [`SLICE`] old: merges it into the long window and
    /// keeps it in the ring (a recycled histogram becomes the new slice). Not per sample: at
    /// most once per slice.
    fn advance(p: &mut Pair, now: Instant) {
        if now.saturating_duration_since(p.slice_start) < SLICE {
            Windowed::rotate(p, now);
            return;
        }
        let horizon = now.checked_sub(MAX_RECENT + SLICE);
        let mut spare = None;
        while let Some((start, _)) = p.ring.front() {
            if horizon.is_some_and(|h| *start < h) {
                spare = p.ring.pop_front().map(|(_, h)| h);
            } else {
                break;
            }
        }
        if p.slice.is_empty() {
            p.slice_start = now;
            Windowed::rotate(p, now);
            return;
        }
        // The slice's samples are older than `now`: into the long window first, then rotate.
        let _ = p.cur.add(&p.slice);
        let mut fresh = spare.unwrap_or_else(new_hist);
        fresh.reset();
        let done = std::mem::replace(&mut p.slice, fresh);
        p.ring.push_back((p.slice_start, done));
        p.slice_start = now;
        Windowed::rotate(p, now);
    }

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
        Windowed::advance(&mut p, Instant::now());
        let _ = p.slice.record_n(us.clamp(1, MAX_US), n);
    }

    /// Records one sample.
    pub fn record(&self, us: u64) {
        self.record_n(us, 1);
    }

    /// Percentiles over the current and previous windows.
    pub fn percentiles(&self) -> Percentiles {
        let mut p = self.0.lock();
        Windowed::advance(&mut p, Instant::now());
        let mut h = p.cur.clone();
        let _ = h.add(&p.prev);
        let _ = h.add(&p.slice);
        drop(p);
        Percentiles::of(&h)
    }

    /// Percentiles over the last `window` (at most [`MAX_RECENT`]), to within one [`SLICE`]:
    /// the current slice and the finished slices that started less than `window` ago.
    pub fn recent(&self, window: Duration) -> Percentiles {
        self.recent_at(window, Instant::now())
    }

    /// [`Windowed::recent`] as of `now` (tests).
    pub fn recent_at(&self, window: Duration, now: Instant) -> Percentiles {
        let mut p = self.0.lock();
        Windowed::advance(&mut p, now);
        let mut h = p.slice.clone();
        if let Some(from) = now.checked_sub(window.min(MAX_RECENT)) {
            for (start, s) in p.ring.iter().rev() {
                if *start < from {
                    break;
                }
                let _ = h.add(s);
            }
        } else {
            for (_, s) in &p.ring {
                let _ = h.add(s);
            }
        }
        drop(p);
        Percentiles::of(&h)
    }
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
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

    /// Percentiles of every component's round trip over the last `window` (see
    /// [`Windowed::recent`]).
    pub fn round_trips_recent(&self, window: Duration) -> Vec<(String, Percentiles)> {
        let m: Vec<_> = self
            .round_trip
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        m.into_iter().map(|(k, v)| (k, v.recent(window))).collect()
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
            p.slice_start -= WINDOW;
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

    #[test]
    fn recent_window_forgets_old_slices() {
        let w = Windowed::default();
        let t0 = Instant::now();
        w.record(600_000);
        {
            // Pretend the slice began 40 s ago: the next read closes it.
            let mut p = w.0.lock();
            p.slice_start = t0.checked_sub(Duration::from_secs(40)).unwrap_or(t0);
        }
        assert_eq!(w.recent_at(Duration::from_secs(60), t0).count, 1);
        assert_eq!(
            w.recent_at(Duration::from_secs(30), t0).count,
            0,
            "a slice that started 40 s ago is outside a 30 s window"
        );
        assert_eq!(w.percentiles().count, 1, "still in the long window");
        w.record(1_000);
        let r = w.recent_at(Duration::from_secs(30), Instant::now());
        assert_eq!(r.count, 1);
        assert!(r.p95 < 2_000, "{r:?}");
    }
}
