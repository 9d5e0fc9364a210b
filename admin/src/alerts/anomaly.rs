//! Anomaly detection on one series (a component's request rate, latency or error rate):
//! an exponentially weighted mean and variance learned from the series itself, and a z-score
//! test against it.
//!
//! - The first `warmup` observations only teach the baseline (the weight is `1/n` until it
//!   falls to `alpha`, so the start is a plain running mean).
//! - Then each observation gets `z = (x - mean) / sd` with `sd = max(sqrt(var), min_std_abs,
//!   min_std_rel * |mean|)`: the floor keeps a flat series (no errors at all, a steady rate)
//!   from alerting on tiny wobbles.
//! - `|z| > z_limit` for `consecutive` observations in a row is an anomaly. Anomalous
//!   observations do not update the baseline (a shift is not learned away while it is being
//!   reported); after `relearn_after` of them in a row the new level is taken as normal and
//!   learning starts again.
//!
//! Driven by the alert engine once per `alerts.anomaly.step_s`, and directly by
//! `agentwire-bench anomaly` to measure false alerts and detection delay.

use agentwire_broker::config::alerts::AnomalyConfig;

/// Detector settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectorConfig {
    /// EWMA weight of a new observation.
    pub alpha: f64,
    /// |z| above this is a deviation.
    pub z: f64,
    /// Deviations in a row that make an anomaly.
    pub consecutive: u32,
    /// Observations learned before judging.
    pub warmup: u32,
    /// Deviation floor, in the series' unit.
    pub min_std_abs: f64,
    /// Deviation floor as a share of |mean|.
    pub min_std_rel: f64,
    /// Anomalous observations in a row after which the level is relearned.
    pub relearn_after: u32,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            alpha: 0.05,
            z: 4.0,
            consecutive: 3,
            warmup: 30,
            min_std_abs: 0.0,
            min_std_rel: 0.05,
            relearn_after: 60,
        }
    }
}

impl DetectorConfig {
    /// The detector settings of `[alerts.anomaly]` for a metric whose deviation floor is
    /// `min_std_abs`.
    pub fn from_settings(a: &AnomalyConfig, min_std_abs: f64) -> DetectorConfig {
        DetectorConfig {
            alpha: a.alpha,
            z: a.z,
            consecutive: a.consecutive,
            warmup: a.warmup,
            min_std_abs,
            min_std_rel: a.min_std_rel,
            relearn_after: a.relearn_after,
        }
    }
}

/// What one observation gave.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// z-score against the baseline (0 while warming up).
    pub z: f64,
    /// The baseline mean it was compared with.
    pub mean: f64,
    /// Whether the series is anomalous now.
    pub anomalous: bool,
}

/// One series' detector.
#[derive(Debug, Clone)]
pub struct Detector {
    cfg: DetectorConfig,
    n: u32,
    mean: f64,
    var: f64,
    streak: u32,
}

impl Detector {
    /// A detector with nothing learned.
    pub fn new(cfg: DetectorConfig) -> Detector {
        Detector {
            cfg,
            n: 0,
            mean: 0.0,
            var: 0.0,
            streak: 0,
        }
    }

    /// Whether it is still learning.
    pub fn warming_up(&self) -> bool {
        self.n < self.cfg.warmup
    }

    fn learn(&mut self, x: f64) {
        self.n = self.n.saturating_add(1);
        let a = self.cfg.alpha.max(1.0 / f64::from(self.n));
        let d = x - self.mean;
        let inc = a * d;
        self.mean += inc;
        self.var = (1.0 - a) * (self.var + d * inc);
    }

    /// Takes one observation (non-finite values are ignored).
    pub fn observe(&mut self, x: f64) -> Verdict {
        if !x.is_finite() {
            return Verdict {
                z: 0.0,
                mean: self.mean,
                anomalous: self.streak >= self.cfg.consecutive,
            };
        }
        if self.warming_up() {
            self.learn(x);
            return Verdict {
                z: 0.0,
                mean: self.mean,
                anomalous: false,
            };
        }
        let sd = self
            .var
            .sqrt()
            .max(self.cfg.min_std_abs)
            .max(self.cfg.min_std_rel * self.mean.abs())
            .max(f64::MIN_POSITIVE);
        let z = (x - self.mean) / sd;
        let mean = self.mean;
        if z.abs() > self.cfg.z {
            self.streak += 1;
            if self.streak >= self.cfg.relearn_after {
                // The new level is here to stay: learn it.
                self.n = 0;
                self.mean = 0.0;
                self.var = 0.0;
                self.streak = 0;
                self.learn(x);
                return Verdict {
                    z,
                    mean,
                    anomalous: false,
                };
            }
        } else {
            self.streak = 0;
            self.learn(x);
        }
        Verdict {
            z,
            mean,
            anomalous: self.streak >= self.cfg.consecutive,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_defaults_are_the_detector_defaults() {
        // `[alerts.anomaly]`'s defaults repeat the detector's (the settings type lives in the
        // data plane's config module, which cannot name this one).
        let d = DetectorConfig::default();
        let s = DetectorConfig::from_settings(&AnomalyConfig::default(), d.min_std_abs);
        assert_eq!(s, d);
    }

    /// A small deterministic generator (xorshift) with roughly normal noise (sum of 12
    /// uniforms), so the tests need no RNG crate.
    struct Noise(u64);
    impl Noise {
        fn uniform(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
        fn normal(&mut self) -> f64 {
            (0..12).map(|_| self.uniform()).sum::<f64>() - 6.0
        }
    }

    fn cfg() -> DetectorConfig {
        DetectorConfig {
            min_std_abs: 100.0,
            ..DetectorConfig::default()
        }
    }

    #[test]
    fn steady_noisy_series_does_not_alert() {
        for seed in 1..=5u64 {
            let mut n = Noise(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut d = Detector::new(cfg());
            for _ in 0..5000 {
                let x = 2000.0 * (1.0 + 0.05 * n.normal());
                assert!(!d.observe(x).anomalous, "seed {seed}");
            }
        }
    }

    #[test]
    fn flat_series_with_tiny_wobble_does_not_alert() {
        let mut d = Detector::new(DetectorConfig::default());
        for i in 0..1000 {
            let x = if i % 2 == 0 { 0.0 } else { 1e-9 };
            assert!(!d.observe(x).anomalous, "at {i}");
        }
        let mut d = Detector::new(DetectorConfig::default());
        for i in 0..1000 {
            let x = 100.0 + if i % 7 == 0 { 1.0 } else { 0.0 };
            assert!(!d.observe(x).anomalous, "at {i}");
        }
    }

    #[test]
    fn shifted_series_alerts_within_the_bound() {
        let c = cfg();
        let mut n = Noise(42);
        let mut d = Detector::new(c);
        for _ in 0..200 {
            d.observe(2000.0 * (1.0 + 0.05 * n.normal()));
        }
        let mut fired_after = None;
        for i in 1..=10u32 {
            if d.observe(3000.0 * (1.0 + 0.05 * n.normal())).anomalous {
                fired_after = Some(i);
                break;
            }
        }
        assert_eq!(
            fired_after,
            Some(c.consecutive),
            "a 50% shift is seen at once"
        );
    }

    #[test]
    fn warmup_never_alerts_and_a_lasting_shift_is_relearned() {
        let c = DetectorConfig {
            relearn_after: 10,
            ..cfg()
        };
        let mut d = Detector::new(c);
        assert!(!d.observe(1e9).anomalous, "warming up");
        let mut d = Detector::new(c);
        for _ in 0..50 {
            d.observe(1000.0);
        }
        let states: Vec<bool> = (0..40).map(|_| d.observe(5000.0).anomalous).collect();
        assert!(states[2], "anomalous after 3");
        assert!(!states[39], "relearned: the new level is normal");
    }
}
