//! Latency recording: HDR histograms of nanoseconds, summarised in microseconds.
//!
//! Values are recorded in nanoseconds (1 ns .. 60 s, 3 significant digits, so each percentile
//! is within 0.1% of the exact nearest-rank value the NATS peer reference computed by sorting);
//! anything outside that range is clamped, never dropped. Each task records into its own
//! histogram and they are merged at the end, so recording takes no lock.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest value a histogram tracks: 60 s in nanoseconds.
const MAX_NS: u64 = 60_000_000_000;

/// A latency histogram in nanoseconds.
#[derive(Debug, Clone)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Latencies::new()
    }
}

impl Latencies {
    /// An empty histogram.
    pub fn new() -> Latencies {
        Latencies(
            Histogram::new_with_bounds(1, MAX_NS, 3)
                .expect("1 ns .. 60 s at 3 significant digits is a valid HDR configuration"),
        )
    }

    /// Records one latency.
    #[inline]
    pub fn record(&mut self, d: Duration) {
        self.record_ns(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Records one latency given in nanoseconds.
    #[inline]
    pub fn record_ns(&mut self, ns: u64) {
        self.0.saturating_record(ns.clamp(1, MAX_NS));
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides: adding cannot fail; saturate anyway rather than panic.
        if self.0.add(&other.0).is_err() {
            for v in other.0.iter_recorded() {
                self.0
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    /// The percentiles in microseconds, or `None` when nothing was recorded.
    pub fn summary(&self) -> Option<LatencySummary> {
        if self.0.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Some(LatencySummary {
            p50: us(self.0.value_at_quantile(0.50)),
            p90: us(self.0.value_at_quantile(0.90)),
            p95: us(self.0.value_at_quantile(0.95)),
            p99: us(self.0.value_at_quantile(0.99)),
            p999: us(self.0.value_at_quantile(0.999)),
            max: us(self.0.max()),
            mean: self.0.mean() / 1000.0,
            count: self.0.len(),
        })
    }
}

/// Latency percentiles in microseconds (the JSON field `latency_us`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest value.
    pub max: f64,
    /// Mean.
    pub mean: f64,
    /// Number of values.
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_uniform_spread() {
        let mut l = Latencies::new();
        for us in 1..=1000u64 {
            l.record(Duration::from_micros(us));
        }
        let s = l.summary().expect("values were recorded");
        assert_eq!(s.count, 1000);
        assert!((s.p50 - 500.0).abs() < 1.0, "{s:?}");
        assert!((s.p99 - 990.0).abs() < 1.0, "{s:?}");
        assert!((s.max - 1000.0).abs() < 1.0, "{s:?}");
    }

    #[test]
    fn merge_and_clamp() {
        let mut a = Latencies::new();
        let mut b = Latencies::new();
        a.record_ns(0);
        b.record(Duration::from_secs(3600));
        a.merge(&b);
        assert_eq!(a.summary().map(|s| s.count), Some(2));
        assert!(Latencies::new().summary().is_none());
    }
}
