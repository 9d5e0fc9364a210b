//! The rules: from one evaluation's inputs (the broker's own figures) to observations, one per
//! rule and label set, each saying whether its condition holds now. What an observation
//! becomes (pending, firing, resolved, notified or not) is decided by
//! [`super::Tracker`].
//!
//! | rule | labels | condition (defaults) |
//! |---|---|---|
//! | `availability` | component | healthy instance-time / registered instance-time over `availability_window_s` (300 s) below 99.9% |
//! | `component_latency` | component | request → reply p95 over `window_s` (30 s) above 500 ms |
//! | `message_latency` | source (`residence`, `publish_to_deliver`) | p99 over `window_s` above 100 ms |
//! | `resources` | resource (`cpu`, `memory`, `disk`) | above 80%, 85%, 90% |
//! | `error_rate` | component | errors / requests reported over `window_s` above 1% |
//! | `anomaly` | component, metric (`request_rate`, `latency`, `error_rate`) | see [`super::anomaly`] |
//!
//! A rule with too little data (fewer than `min_samples` latencies, fewer than `min_requests`
//! requests, no instance, an unreadable figure) gives no observation: a firing alert then
//! resolves.

use std::collections::{BTreeMap, VecDeque};

use super::anomaly::{Detector, DetectorConfig, Verdict};
use super::config::AlertsConfig;
use super::resources::Reading;
use super::Labels;
use crate::registry::RequestTotals;
use agentwire_broker::telemetry::hist::Percentiles;

/// Rule names, in display order.
pub const RULES: [&str; 6] = [
    "availability",
    "component_latency",
    "message_latency",
    "resources",
    "error_rate",
    "anomaly",
];

/// One rule's reading for one label set.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Rule name (one of [`RULES`]).
    pub rule: &'static str,
    /// Labels (component, source, resource, metric).
    pub labels: Labels,
    /// The measured value, in the rule's unit.
    pub value: f64,
    /// The threshold it is compared with.
    pub threshold: f64,
    /// Whether the condition holds.
    pub breached: bool,
    /// One line for people.
    pub summary: String,
}

/// What one evaluation looks at.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// Now, ms since the epoch.
    pub now_ms: u64,
    /// Round trip per component over the short window.
    pub component_latency: Vec<(String, Percentiles)>,
    /// Broker residence over the short window.
    pub residence: Percentiles,
    /// Publish → deliver over the short window.
    pub publish_to_deliver: Percentiles,
    /// Cumulative request and error totals per component.
    pub totals: Vec<(String, RequestTotals)>,
    /// Live instances: (component, healthy).
    pub instances: Vec<(String, bool)>,
    /// Resource figures.
    pub resources: Reading,
    /// Cores the process may use.
    pub cores: f64,
    /// Round trip per component over the last anomaly step.
    pub step_latency: Vec<(String, Percentiles)>,
}

/// Anomaly metrics, with their deviation floors (in the metric's unit).
pub const ANOMALY_METRICS: [(&str, f64); 3] = [
    ("request_rate", 1.0), // requests/s
    ("latency", 0.05),     // ms (p50 over the step)
    ("error_rate", 1.0),   // percent
];

/// The rules' memory between evaluations (rates need earlier totals; availability and CPU
/// need a window of samples; anomaly detectors learn).
#[derive(Debug)]
pub struct RuleSet {
    cfg: AlertsConfig,
    totals: VecDeque<(u64, BTreeMap<String, RequestTotals>)>,
    avail: BTreeMap<String, VecDeque<(u64, u32, u32)>>,
    cpu: VecDeque<(u64, f64)>,
    detectors: BTreeMap<(String, &'static str), Detector>,
    verdicts: BTreeMap<(String, &'static str), (f64, Verdict)>,
    step_base: Option<(u64, BTreeMap<String, RequestTotals>)>,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

impl RuleSet {
    /// Rules as configured.
    pub fn new(cfg: AlertsConfig) -> RuleSet {
        RuleSet {
            cfg,
            totals: VecDeque::new(),
            avail: BTreeMap::new(),
            cpu: VecDeque::new(),
            detectors: BTreeMap::new(),
            verdicts: BTreeMap::new(),
            step_base: None,
        }
    }

    /// Evaluates every enabled rule.
    pub fn evaluate(&mut self, inp: &Inputs) -> Vec<Observation> {
        let mut out = Vec::new();
        let c = self.cfg.clone();
        if c.availability().enabled {
            self.availability(inp, &mut out);
        }
        if c.component_latency().enabled {
            let t = c.component_latency().threshold;
            for (comp, p) in &inp.component_latency {
                if p.count < c.min_samples {
                    continue;
                }
                let ms = p.p95 as f64 / 1000.0;
                out.push(Observation {
                    rule: "component_latency",
                    labels: labels(&[("component", comp)]),
                    value: ms,
                    threshold: t,
                    breached: ms > t,
                    summary: format!(
                        "{comp}: request → reply p95 {ms:.1} ms over the last {} s (limit {t} ms, {} requests)",
                        c.window_s, p.count
                    ),
                });
            }
        }
        if c.message_latency().enabled {
            let t = c.message_latency().threshold;
            for (source, p) in [
                ("residence", inp.residence),
                ("publish_to_deliver", inp.publish_to_deliver),
            ] {
                if p.count < c.min_samples {
                    continue;
                }
                let ms = p.p99 as f64 / 1000.0;
                out.push(Observation {
                    rule: "message_latency",
                    labels: labels(&[("source", source)]),
                    value: ms,
                    threshold: t,
                    breached: ms > t,
                    summary: format!(
                        "message latency ({source}) p99 {ms:.1} ms over the last {} s (limit {t} ms)",
                        c.window_s
                    ),
                });
            }
        }
        self.error_rate(inp, &mut out);
        if c.resources().enabled {
            self.resources(inp, &mut out);
        }
        if c.anomaly().enabled {
            self.anomaly(inp, &mut out);
        }
        out
    }

    fn availability(&mut self, inp: &Inputs, out: &mut Vec<Observation>) {
        let window_ms = self.cfg.availability_window_s * 1000;
        let mut now: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
        for (comp, healthy) in &inp.instances {
            let e = now.entry(comp).or_default();
            e.1 += 1;
            if *healthy {
                e.0 += 1;
            }
        }
        for (comp, (h, n)) in now {
            self.avail
                .entry(comp.to_owned())
                .or_default()
                .push_back((inp.now_ms, h, n));
        }
        let t = self.cfg.availability().threshold;
        self.avail.retain(|_, q| {
            while q
                .front()
                .is_some_and(|(ms, _, _)| ms + window_ms < inp.now_ms)
            {
                q.pop_front();
            }
            !q.is_empty()
        });
        for (comp, q) in &self.avail {
            let (h, n) = q.iter().fold((0u64, 0u64), |(a, b), (_, h, n)| {
                (a + u64::from(*h), b + u64::from(*n))
            });
            if n == 0 {
                continue;
            }
            let pct = h as f64 * 100.0 / n as f64;
            out.push(Observation {
                rule: "availability",
                labels: labels(&[("component", comp)]),
                value: pct,
                threshold: t,
                breached: pct < t,
                summary: format!(
                    "{comp}: healthy {pct:.3}% of instance-time over the last {} s (limit {t}%)",
                    self.cfg.availability_window_s
                ),
            });
        }
    }

    fn error_rate(&mut self, inp: &Inputs, out: &mut Vec<Observation>) {
        let window_ms = self.cfg.window_s * 1000;
        let cur: BTreeMap<String, RequestTotals> = inp.totals.iter().cloned().collect();
        self.totals.push_back((inp.now_ms, cur.clone()));
        // Keep one sample at or before the window's start as the base.
        while self.totals.len() >= 2 && self.totals[1].0 + window_ms <= inp.now_ms {
            self.totals.pop_front();
        }
        let Some((base_ms, base)) = self.totals.front() else {
            return;
        };
        let r = self.cfg.error_rate();
        if !r.enabled || *base_ms >= inp.now_ms {
            return;
        }
        for (comp, t) in &cur {
            let b = base.get(comp).copied().unwrap_or_default();
            let (req, err) = if t.requests < b.requests {
                (t.requests, t.errors)
            } else {
                (t.requests - b.requests, t.errors.saturating_sub(b.errors))
            };
            if req < self.cfg.min_requests.max(1) {
                continue;
            }
            let pct = err as f64 * 100.0 / req as f64;
            out.push(Observation {
                rule: "error_rate",
                labels: labels(&[("component", comp)]),
                value: pct,
                threshold: r.threshold,
                breached: pct > r.threshold,
                summary: format!(
                    "{comp}: {err} errors in {req} requests ({pct:.2}%) over the last {} s (limit {}%)",
                    self.cfg.window_s, r.threshold
                ),
            });
        }
    }

    fn resources(&mut self, inp: &Inputs, out: &mut Vec<Observation>) {
        let rc = &self.cfg.resources;
        let window_ms = self.cfg.window_s * 1000;
        let mut push = |res: &str, v: f64, limit: f64, what: &str| {
            out.push(Observation {
                rule: "resources",
                labels: labels(&[("resource", res)]),
                value: v,
                threshold: limit,
                breached: v > limit,
                summary: format!("{what} {v:.1}% (limit {limit}%)"),
            });
        };
        if let Some(cpu) = inp.resources.cpu_seconds {
            self.cpu.push_back((inp.now_ms, cpu));
            while self.cpu.len() >= 2 && self.cpu[1].0 + window_ms <= inp.now_ms {
                self.cpu.pop_front();
            }
            if let Some(&(ms, c0)) = self.cpu.front() {
                let dt = inp.now_ms.saturating_sub(ms) as f64 / 1000.0;
                // Judge CPU over at least a fifth of the window.
                if dt * 5.0 >= self.cfg.window_s as f64 {
                    let pct = ((cpu - c0).max(0.0) / dt / inp.cores.max(1.0)) * 100.0;
                    push(
                        "cpu",
                        pct,
                        rc.cpu_percent,
                        "broker CPU (share of every core)",
                    );
                }
            }
        }
        if let Some(m) = inp.resources.memory_percent {
            push("memory", m, rc.memory_percent, "broker resident memory");
        }
        if let Some(d) = inp.resources.disk_percent {
            push("disk", d, rc.disk_percent, "data dir filesystem used");
        }
    }

    fn anomaly(&mut self, inp: &Inputs, out: &mut Vec<Observation>) {
        let a = self.cfg.anomaly.clone();
        let step_ms = a.step_s * 1000;
        let cur: BTreeMap<String, RequestTotals> = inp.totals.iter().cloned().collect();
        match &self.step_base {
            None => self.step_base = Some((inp.now_ms, cur)),
            Some((ms, _)) if ms + step_ms > inp.now_ms => {}
            Some((ms, base)) => {
                let dt = (inp.now_ms - ms) as f64 / 1000.0;
                let mut obs: Vec<(String, &'static str, f64)> = Vec::new();
                for (comp, t) in &cur {
                    let b = base.get(comp).copied().unwrap_or_default();
                    let req = t.requests.saturating_sub(b.requests);
                    let err = t.errors.saturating_sub(b.errors);
                    obs.push((comp.clone(), "request_rate", req as f64 / dt));
                    if req > 0 {
                        obs.push((comp.clone(), "error_rate", err as f64 * 100.0 / req as f64));
                    }
                }
                for (comp, p) in &inp.step_latency {
                    if p.count >= self.cfg.min_samples {
                        obs.push((comp.clone(), "latency", p.p50 as f64 / 1000.0));
                    }
                }
                for (comp, metric, x) in obs {
                    let floor = ANOMALY_METRICS
                        .iter()
                        .find(|(m, _)| *m == metric)
                        .map_or(1.0, |(_, f)| *f);
                    let key = (comp, metric);
                    let d = self
                        .detectors
                        .entry(key.clone())
                        .or_insert_with(|| Detector::new(DetectorConfig::from_settings(&a, floor)));
                    let v = d.observe(x);
                    self.verdicts.insert(key, (x, v));
                }
                self.step_base = Some((inp.now_ms, cur));
            }
        }
        for ((comp, metric), (x, v)) in &self.verdicts {
            out.push(Observation {
                rule: "anomaly",
                labels: labels(&[("component", comp), ("metric", metric)]),
                value: v.z,
                threshold: a.z,
                breached: v.anomalous,
                summary: format!(
                    "{comp}: {metric} {x:.2} against a learned baseline of {:.2} (z = {:.1}, limit ±{})",
                    v.mean, v.z, a.z
                ),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AlertsConfig {
        toml::from_str("window_s = 10\nmin_requests = 10\n[anomaly]\nenabled = false\n")
            .expect("valid")
    }

    fn p(count: u64, p50: u64, p95: u64, p99: u64) -> Percentiles {
        Percentiles {
            count,
            p50,
            p95,
            p99,
            ..Percentiles::default()
        }
    }

    fn find<'a>(o: &'a [Observation], rule: &str) -> Vec<&'a Observation> {
        o.iter().filter(|x| x.rule == rule).collect()
    }

    #[test]
    fn latency_rules_need_samples_and_compare_the_right_quantile() {
        let mut r = RuleSet::new(cfg());
        let inp = Inputs {
            now_ms: 1000,
            component_latency: vec![
                ("slow".into(), p(10, 600_000, 600_000, 600_000)),
                ("fast".into(), p(10, 1_000, 2_000, 600_000)),
                ("few".into(), p(2, 900_000, 900_000, 900_000)),
            ],
            residence: p(100, 10, 20, 150_000),
            ..Inputs::default()
        };
        let o = r.evaluate(&inp);
        let l = find(&o, "component_latency");
        assert_eq!(l.len(), 2, "too few samples: no verdict");
        assert!(l[0].labels["component"] == "slow" && l[0].breached);
        assert!(!l[1].breached, "p95 decides, not p99");
        let m = find(&o, "message_latency");
        assert_eq!(m.len(), 1);
        assert!(m[0].breached && m[0].labels["source"] == "residence");
    }

    #[test]
    fn error_rate_over_the_window() {
        let mut r = RuleSet::new(cfg());
        let tot = |req, err| {
            vec![(
                "c".to_owned(),
                RequestTotals {
                    requests: req,
                    errors: err,
                },
            )]
        };
        let mut eval = |ms, req, err| {
            r.evaluate(&Inputs {
                now_ms: ms,
                totals: tot(req, err),
                ..Inputs::default()
            })
        };
        assert!(find(&eval(0, 0, 0), "error_rate").is_empty());
        let o = eval(5_000, 100, 0);
        assert!(!find(&o, "error_rate")[0].breached);
        let o = eval(10_000, 200, 5);
        let e = find(&o, "error_rate");
        assert!(e[0].breached && (e[0].value - 2.5).abs() < 1e-9, "{e:?}");
        // 10 s later with clean traffic: the errors left the window.
        eval(15_000, 300, 5);
        let o = eval(20_000, 400, 5);
        assert!(!find(&o, "error_rate")[0].breached);
    }

    #[test]
    fn availability_is_healthy_instance_time() {
        let mut c = cfg();
        c.availability_window_s = 10;
        let mut r = RuleSet::new(c);
        let mut o = Vec::new();
        for s in 0..10u64 {
            o = r.evaluate(&Inputs {
                now_ms: s * 1000,
                instances: vec![("c".into(), true), ("c".into(), s != 3)],
                ..Inputs::default()
            });
        }
        let a = find(&o, "availability");
        assert!(a[0].breached && (a[0].value - 95.0).abs() < 1e-9, "{a:?}");
        for s in 10..25u64 {
            o = r.evaluate(&Inputs {
                now_ms: s * 1000,
                instances: vec![("c".into(), true)],
                ..Inputs::default()
            });
        }
        assert!(
            !find(&o, "availability")[0].breached,
            "the bad sample aged out"
        );
    }

    #[test]
    fn resources_compare_with_limits() {
        let mut r = RuleSet::new(cfg());
        let mut o = Vec::new();
        for s in 0..=10u64 {
            o = r.evaluate(&Inputs {
                now_ms: s * 1000,
                cores: 2.0,
                resources: Reading {
                    cpu_seconds: Some(s as f64 * 1.8),
                    memory_percent: Some(50.0),
                    disk_percent: Some(95.0),
                },
                ..Inputs::default()
            });
        }
        let res = find(&o, "resources");
        let get = |n: &str| res.iter().find(|x| x.labels["resource"] == n).copied();
        let cpu = get("cpu").expect("cpu judged");
        assert!(cpu.breached && (cpu.value - 90.0).abs() < 1e-6, "{cpu:?}");
        assert!(!get("memory").expect("memory").breached);
        assert!(get("disk").expect("disk").breached);
    }

    #[test]
    fn anomaly_on_a_latency_shift() {
        let mut c = cfg();
        c.anomaly.enabled = true;
        c.anomaly.step_s = 10;
        c.anomaly.warmup = 5;
        let mut r = RuleSet::new(c);
        let mut fired = None;
        for step in 0..40u64 {
            let lat = if step < 20 { 2_000 } else { 20_000 };
            let o = r.evaluate(&Inputs {
                now_ms: step * 10_000,
                totals: vec![(
                    "c".into(),
                    RequestTotals {
                        requests: step * 1000,
                        errors: 0,
                    },
                )],
                step_latency: vec![("c".into(), p(100, lat, lat, lat))],
                ..Inputs::default()
            });
            let hit = o
                .iter()
                .any(|x| x.rule == "anomaly" && x.breached && x.labels["metric"] == "latency");
            assert!(!(step < 20 && hit), "false alert at {step}");
            if hit && fired.is_none() {
                fired = Some(step);
            }
            assert!(
                !o.iter()
                    .any(|x| x.rule == "anomaly" && x.breached && x.labels["metric"] != "latency"),
                "only latency moved"
            );
        }
        assert_eq!(fired, Some(22), "three anomalous steps in a row");
    }
}
