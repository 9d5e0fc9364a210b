//! `agentwire-bench anomaly`: the broker's anomaly detector
//! (`agentwire_admin::alerts::anomaly`, with the broker's default settings and
//! deviation floors) driven directly with synthetic per-component series, one observation per
//! `step_s` like the alert engine:
//!
//! - request rate: 200 req/s with a ±30% daily cycle, Poisson counts, ±5% burst noise per step;
//! - latency (p50 over the step): 2 ms, rising 20% with load, lognormal noise (sigma
//!   `--latency-noise`, default 0.08, correlated from step to step by `--latency-ar`, default
//!   0.5), and one
//!   step in 200 a 1.5–3× spike (pauses, noisy neighbours);
//! - error rate: 0.2% of requests fail, Poisson.
//!
//! Steady runs count false alerts (an alert = a rising edge of "anomalous", per metric) over
//! `hours` of simulated time per seed. Shift runs warm up for an hour, then multiply latency by
//! each factor at a random moment and measure the delay until the detector reports it (given
//! up after 30 minutes: "missed").

use agentwire_admin::alerts::anomaly::{Detector, DetectorConfig};
use agentwire_admin::alerts::rules::ANOMALY_METRICS;
use agentwire_broker::config::alerts::AnomalyConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// `agentwire-bench anomaly`.
#[derive(Debug, clap::Args)]
pub struct AnomalyArgs {
    /// Simulated hours of steady traffic per seed.
    #[arg(long, default_value_t = 24.0)]
    pub hours: f64,
    /// Seeds (independent runs) 1..=N.
    #[arg(long, default_value_t = 10)]
    pub seeds: u64,
    /// Latency multipliers injected in the shift runs.
    #[arg(long, value_delimiter = ',', default_value = "1.25,1.5,2,5")]
    pub shifts: Vec<f64>,
    /// Shift runs per factor and seed.
    #[arg(long, default_value_t = 20)]
    pub trials: u32,
    /// Standard deviation of the per-step latency noise (lognormal sigma).
    #[arg(long, default_value_t = 0.08)]
    pub latency_noise: f64,
    /// Step-to-step correlation of that noise (AR(1) coefficient, 0..1): slow drifts such as
    /// a busy neighbour for a few minutes.
    #[arg(long, default_value_t = 0.5)]
    pub latency_ar: f64,
}

const DAY_S: f64 = 86_400.0;

struct Synth {
    rng: StdRng,
    step_s: f64,
    noise: f64,
    ar: f64,
    prev: f64,
}

impl Synth {
    fn normal(&mut self) -> f64 {
        // Box–Muller.
        let u1: f64 = self.rng.gen_range(f64::MIN_POSITIVE..1.0);
        let u2: f64 = self.rng.gen();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    fn poisson(&mut self, lambda: f64) -> f64 {
        if lambda > 50.0 {
            (lambda + lambda.sqrt() * self.normal()).max(0.0).round()
        } else {
            // Knuth.
            let l = (-lambda).exp();
            let (mut k, mut p) = (0.0, 1.0);
            loop {
                p *= self.rng.gen::<f64>();
                if p <= l {
                    return k;
                }
                k += 1.0;
            }
        }
    }

    /// One step at time `t` seconds: (request rate, latency ms, error rate %).
    fn step(&mut self, t: f64, latency_factor: f64) -> (f64, f64, f64) {
        let load = 1.0 + 0.3 * (2.0 * std::f64::consts::PI * t / DAY_S).sin();
        let burst = (0.05 * self.normal()).exp();
        let n = self.poisson(200.0 * load * burst * self.step_s);
        let rate = n / self.step_s;
        let mut lat = 2.0 * (1.0 + 0.2 * (load - 1.0)) * {
            self.prev = self.ar * self.prev + (1.0 - self.ar * self.ar).sqrt() * self.normal();
            (self.noise * self.prev).exp()
        };
        if self.rng.gen_bool(1.0 / 200.0) {
            lat *= self.rng.gen_range(1.5..3.0);
        }
        let err = if n > 0.0 {
            self.poisson(n * 0.002) * 100.0 / n
        } else {
            0.0
        };
        (rate, lat * latency_factor, err)
    }
}

fn detectors(cfg: &AnomalyConfig) -> Vec<Detector> {
    ANOMALY_METRICS
        .iter()
        .map(|(_, floor)| Detector::new(DetectorConfig::from_settings(cfg, *floor)))
        .collect()
}

fn stats(v: &[f64]) -> (f64, f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN, f64::NAN);
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let mean = s.iter().sum::<f64>() / s.len() as f64;
    (mean, s[0], s[s.len() / 2], s[s.len() - 1])
}

/// Runs the measurement; prints a table (or JSON) and returns whether it ran.
pub fn run(a: &AnomalyArgs, json_out: bool) -> bool {
    if !(a.hours > 0.0 && a.hours <= 24.0 * 365.0)
        || a.seeds == 0
        || a.trials == 0
        || !(0.0..=2.0).contains(&a.latency_noise)
        || !(0.0..1.0).contains(&a.latency_ar)
    {
        eprintln!("agentwire-bench anomaly: --hours, --seeds and --trials must be positive, --latency-noise within 0..2, --latency-ar within 0..1");
        return false;
    }
    let cfg = AnomalyConfig::default();
    let step_s = cfg.step_s as f64;
    let steps = (a.hours * 3600.0 / step_s).round() as u64;

    // Steady traffic: false alerts.
    let mut per_seed = Vec::new();
    let mut per_metric = [0u64; 3];
    for seed in 1..=a.seeds {
        let mut s = Synth {
            rng: StdRng::seed_from_u64(seed),
            step_s,
            noise: a.latency_noise,
            ar: a.latency_ar,
            prev: 0.0,
        };
        let mut d = detectors(&cfg);
        let mut was = [false; 3];
        let mut alerts = 0u64;
        for i in 0..steps {
            let (r, l, e) = s.step(i as f64 * step_s, 1.0);
            for (m, x) in [r, l, e].into_iter().enumerate() {
                let now = d[m].observe(x).anomalous;
                if now && !was[m] {
                    alerts += 1;
                    per_metric[m] += 1;
                }
                was[m] = now;
            }
        }
        per_seed.push(alerts as f64 * 24.0 / a.hours);
    }
    let (fa_mean, fa_min, fa_med, fa_max) = stats(&per_seed);
    let total_alerts: f64 = per_seed.iter().sum::<f64>() * a.hours / 24.0;
    let sim_hours = a.hours * a.seeds as f64;

    // Injected latency shifts: detection delay.
    let mut shift_rows = Vec::new();
    for &f in &a.shifts {
        let mut delays = Vec::new();
        let mut missed = 0u32;
        for seed in 1..=a.seeds {
            for trial in 0..a.trials {
                let mut s = Synth {
                    rng: StdRng::seed_from_u64(seed * 1_000 + u64::from(trial)),
                    step_s,
                    noise: a.latency_noise,
                    ar: a.latency_ar,
                    prev: 0.0,
                };
                let mut d = detectors(&cfg);
                let warm = (3600.0 / step_s) as u64;
                let start = warm + s.rng.gen_range(0..(20 * 3600 / cfg.step_s));
                let give_up = start + (1800.0 / step_s) as u64;
                let mut found = None;
                for i in 0..give_up {
                    let factor = if i >= start { f } else { 1.0 };
                    let (_, l, _) = s.step(i as f64 * step_s, factor);
                    let v = d[1].observe(l);
                    if i >= start && v.anomalous {
                        found = Some((i - start + 1) as f64 * step_s);
                        break;
                    }
                }
                match found {
                    Some(x) => delays.push(x),
                    None => missed += 1,
                }
            }
        }
        let (mean, min, med, max) = stats(&delays);
        shift_rows.push((f, delays.len(), missed, mean, min, med, max));
    }

    if json_out {
        let v = json!({
            "detector": {
                "step_s": cfg.step_s, "z": cfg.z, "consecutive": cfg.consecutive,
                "warmup": cfg.warmup, "alpha": cfg.alpha, "min_std_rel": cfg.min_std_rel,
            },
            "latency_noise": a.latency_noise,
            "latency_ar": a.latency_ar,
            "steady": {
                "seeds": a.seeds, "hours_per_seed": a.hours, "simulated_hours": sim_hours,
                "false_alerts": total_alerts,
                "false_alerts_per_day": {"mean": fa_mean, "min": fa_min, "median": fa_med, "max": fa_max},
                "by_metric": {
                    "request_rate": per_metric[0], "latency": per_metric[1], "error_rate": per_metric[2],
                },
            },
            "shifts": shift_rows.iter().map(|(f, n, missed, mean, min, med, max)| json!({
                "factor": f, "detected": n, "missed_after_30min": missed,
                "delay_s": {"mean": mean, "min": min, "median": med, "max": max},
            })).collect::<Vec<_>>(),
        });
        println!("{v}");
    } else {
        println!(
            "anomaly detector (step {} s, |z| > {} for {} steps, warm-up {}, alpha {}, floor {}×mean); latency noise sigma {}, AR(1) {}",
            cfg.step_s, cfg.z, cfg.consecutive, cfg.warmup, cfg.alpha, cfg.min_std_rel, a.latency_noise, a.latency_ar
        );
        println!(
            "steady traffic: {} seeds × {} h = {sim_hours} h simulated, 3 metrics: {total_alerts} false alerts \
             (per day per component: mean {fa_mean:.3}, min {fa_min:.3}, median {fa_med:.3}, max {fa_max:.3}; \
             request_rate {}, latency {}, error_rate {})",
            a.seeds, a.hours, per_metric[0], per_metric[1], per_metric[2]
        );
        println!(
            "{:>8} {:>9} {:>7} {:>10} {:>8} {:>10} {:>8}",
            "SHIFT", "DETECTED", "MISSED", "MEAN s", "MIN s", "MEDIAN s", "MAX s"
        );
        for (f, n, missed, mean, min, med, max) in &shift_rows {
            println!(
                "{:>7}x {n:>9} {missed:>7} {mean:>10.1} {min:>8.0} {med:>10.0} {max:>8.0}",
                f
            );
        }
    }
    true
}
