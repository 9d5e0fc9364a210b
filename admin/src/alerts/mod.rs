//! The alert engine: rules over the broker's own figures, evaluated on the admin thread every
//! `alerts.eval_interval_ms` (see [`rules`] for the rules, [`anomaly`] for anomaly detection,
//! [`config`] for the `[alerts]` table).
//!
//! Each rule and label set (e.g. `component_latency{component="planner"}`) goes through:
//! condition false → *inactive*; condition true → *pending* since then; true for the rule's
//! `for` → *firing*; false again (or no data) → *resolved*, kept in the history. Firing and
//! resolution are published on `$SYS.alerts.<rule>.firing|resolved` (JSON, the [`Alert`]),
//! POSTed to the webhooks ([`notify`]) and stored in the database (`alerts_history`).
//!
//! Cooldown: a firing within the rule's cooldown (default 5 min) after the same rule and labels
//! last resolved is shown as firing (API, metrics, dashboard, history) but is *not notified*
//! (no `$SYS` message, no webhook), nor is its resolution; `notified: false` in the JSON says so.
//!
//! For the dashboard and other readers: [`Alerts::snapshot`] returns an [`AlertsView`]
//! (serializable: firing alerts, recent resolutions, the rules' settings).

pub mod anomaly;
pub use agentwire_broker::config::alerts as config;
pub mod notify;
pub mod resources;
pub mod rules;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;

use crate::{now_ms, Node};
use config::{AlertsConfig, Effective};
use rules::{Inputs, Observation, RuleSet, RULES};

/// Labels of an alert (component, metric, source, resource).
pub type Labels = BTreeMap<String, String>;

/// One alert: a rule and label set that fired.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Alert {
    /// The rule.
    pub rule: String,
    /// Its labels.
    pub labels: Labels,
    /// `firing` or `resolved`.
    pub state: String,
    /// The last measured value, in the rule's unit (ms, percent, z-score).
    pub value: f64,
    /// The threshold.
    pub threshold: f64,
    /// One line for people.
    pub summary: String,
    /// When the condition started to hold, ms since the epoch.
    pub active_since_ms: u64,
    /// When it fired (`for` later).
    pub fired_ms: u64,
    /// When it resolved.
    pub resolved_ms: Option<u64>,
    /// Whether it was notified ($SYS, webhooks); false within the cooldown.
    pub notified: bool,
}

/// A rule's settings, as shown by the API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleView {
    /// Name.
    pub rule: &'static str,
    /// Evaluated.
    pub enabled: bool,
    /// Threshold (resources: see `limits`).
    pub threshold: f64,
    /// `for`, seconds.
    pub for_s: u64,
    /// Cooldown, seconds.
    pub cooldown_s: u64,
    /// Alerts of this rule firing now.
    pub firing: usize,
}

/// What the alert engine shows: [`Alerts::snapshot`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertsView {
    /// Whether the engine runs.
    pub enabled: bool,
    /// Last evaluation, ms since the epoch (0: none yet).
    pub evaluated_ms: u64,
    /// Firing now, oldest first.
    pub firing: Vec<Alert>,
    /// Recently resolved, newest first (bounded by `alerts.history_in_memory`).
    pub resolved: Vec<Alert>,
    /// Every rule's settings.
    pub rules: Vec<RuleView>,
    /// Short window of the latency, error-rate and CPU rules, seconds.
    pub window_s: u64,
}

/// A state change of one alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The alert after the change (`state` says which).
    pub alert: Alert,
    /// Whether to notify ($SYS, webhooks).
    pub notify: bool,
}

#[derive(Debug, Default)]
struct Track {
    pending_since: Option<u64>,
    firing: Option<Alert>,
    last_resolved_ms: Option<u64>,
}

/// The per-alert state machine (pending → firing → resolved, `for`, cooldown), with injected
/// time.
#[derive(Debug)]
pub struct Tracker {
    tracks: BTreeMap<(String, Labels), Track>,
    history: VecDeque<Alert>,
    cap: usize,
}

impl Tracker {
    /// A tracker keeping `cap` resolved alerts in memory.
    pub fn new(cap: usize) -> Tracker {
        Tracker {
            tracks: BTreeMap::new(),
            history: VecDeque::new(),
            cap,
        }
    }

    /// Applies one evaluation's observations at `now_ms`; `settings` gives a rule's `for`
    /// and cooldown. A tracked label set with no observation counts as "condition false".
    pub fn step(
        &mut self,
        now_ms: u64,
        obs: Vec<Observation>,
        settings: impl Fn(&str) -> Effective,
    ) -> Vec<Transition> {
        let mut out = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for o in obs {
            let key = (o.rule.to_owned(), o.labels.clone());
            seen.insert(key.clone());
            let s = settings(o.rule);
            let t = self.tracks.entry(key).or_default();
            if !o.breached {
                Self::resolve(t, now_ms, &mut out, &mut self.history, self.cap);
                continue;
            }
            if let Some(a) = &mut t.firing {
                a.value = o.value;
                a.summary = o.summary;
                continue;
            }
            let since = *t.pending_since.get_or_insert(now_ms);
            if now_ms.saturating_sub(since) >= s.for_.as_millis() as u64 {
                let cooled = t
                    .last_resolved_ms
                    .is_none_or(|r| now_ms.saturating_sub(r) >= s.cooldown.as_millis() as u64);
                let a = Alert {
                    rule: o.rule.to_owned(),
                    labels: o.labels,
                    state: "firing".into(),
                    value: o.value,
                    threshold: o.threshold,
                    summary: o.summary,
                    active_since_ms: since,
                    fired_ms: now_ms,
                    resolved_ms: None,
                    notified: cooled,
                };
                out.push(Transition {
                    alert: a.clone(),
                    notify: cooled,
                });
                t.firing = Some(a);
            }
        }
        let keys: Vec<_> = self
            .tracks
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for k in keys {
            if let Some(t) = self.tracks.get_mut(&k) {
                Self::resolve(t, now_ms, &mut out, &mut self.history, self.cap);
                let cooldown = settings(&k.0).cooldown.as_millis() as u64;
                if t.last_resolved_ms
                    .is_none_or(|r| now_ms.saturating_sub(r) >= cooldown)
                {
                    // Nothing left to remember.
                    self.tracks.remove(&k);
                }
            }
        }
        out
    }

    fn resolve(
        t: &mut Track,
        now_ms: u64,
        out: &mut Vec<Transition>,
        history: &mut VecDeque<Alert>,
        cap: usize,
    ) {
        t.pending_since = None;
        if let Some(mut a) = t.firing.take() {
            a.state = "resolved".into();
            a.resolved_ms = Some(now_ms);
            t.last_resolved_ms = Some(now_ms);
            history.push_front(a.clone());
            history.truncate(cap);
            out.push(Transition {
                notify: a.notified,
                alert: a,
            });
        }
    }

    /// Firing alerts, oldest first.
    pub fn firing(&self) -> Vec<Alert> {
        let mut v: Vec<Alert> = self
            .tracks
            .values()
            .filter_map(|t| t.firing.clone())
            .collect();
        v.sort_by_key(|a| a.fired_ms);
        v
    }

    /// Recently resolved, newest first.
    pub fn resolved(&self) -> Vec<Alert> {
        self.history.iter().cloned().collect()
    }
}

#[derive(Debug)]
struct State {
    rules: RuleSet,
    tracker: Tracker,
    evaluated_ms: u64,
}

/// The alert engine's shared state (in [`super::Admin`]).
#[derive(Debug)]
pub struct Alerts {
    cfg: AlertsConfig,
    state: Mutex<State>,
}

impl Alerts {
    /// An engine with `cfg` (validated by [`crate::Config::validate`]).
    pub fn new(cfg: AlertsConfig) -> Alerts {
        Alerts {
            state: Mutex::new(State {
                rules: RuleSet::new(cfg.clone()),
                tracker: Tracker::new(cfg.history_in_memory),
                evaluated_ms: 0,
            }),
            cfg,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AlertsConfig {
        &self.cfg
    }

    /// The effective settings of `rule`.
    pub fn settings(&self, rule: &str) -> Effective {
        settings(&self.cfg, rule)
    }

    /// Evaluates every rule on `inputs` and returns what changed.
    pub fn evaluate(&self, inputs: &Inputs) -> Vec<Transition> {
        let mut s = self.state.lock();
        let obs = s.rules.evaluate(inputs);
        s.evaluated_ms = inputs.now_ms;
        let cfg = &self.cfg;
        s.tracker
            .step(inputs.now_ms, obs, |rule| settings(cfg, rule))
    }

    /// Firing alerts per rule (every rule listed, 0 included), for `/metrics`.
    pub fn firing_counts(&self) -> Vec<(&'static str, usize)> {
        let firing = self.state.lock().tracker.firing();
        RULES
            .iter()
            .map(|r| (*r, firing.iter().filter(|a| a.rule == *r).count()))
            .collect()
    }

    /// Everything the engine shows: firing, recently resolved, the rules.
    pub fn snapshot(&self) -> AlertsView {
        let s = self.state.lock();
        let firing = s.tracker.firing();
        let resolved = s.tracker.resolved();
        let evaluated_ms = s.evaluated_ms;
        drop(s);
        let rules = RULES
            .iter()
            .map(|r| {
                let e = self.settings(r);
                RuleView {
                    rule: r,
                    enabled: e.enabled,
                    threshold: e.threshold,
                    for_s: e.for_.as_secs(),
                    cooldown_s: e.cooldown.as_secs(),
                    firing: firing.iter().filter(|a| a.rule == *r).count(),
                }
            })
            .collect();
        AlertsView {
            enabled: self.cfg.enabled,
            evaluated_ms,
            firing,
            resolved,
            rules,
            window_s: self.cfg.window_s,
        }
    }
}

fn settings(cfg: &AlertsConfig, rule: &str) -> Effective {
    match rule {
        "availability" => cfg.availability(),
        "component_latency" => cfg.component_latency(),
        "message_latency" => cfg.message_latency(),
        "resources" => cfg.resources(),
        "error_rate" => cfg.error_rate(),
        _ => cfg.anomaly(),
    }
}

/// Reads the broker's figures for one evaluation.
pub fn gather(global: &Node) -> Inputs {
    let admin = global.admin();
    let cfg = admin.alerts.config();
    let window = cfg.window();
    let step = Duration::from_secs(cfg.anomaly.step_s);
    let data_dir = global
        .config()
        .admin
        .data_dir
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("."));
    Inputs {
        now_ms: now_ms(),
        component_latency: global.telemetry().hist.round_trips_recent(window),
        residence: global.telemetry().hist.residence.recent(window),
        publish_to_deliver: global.telemetry().hist.publish_to_deliver.recent(window),
        totals: admin.registry.request_totals(),
        instances: admin
            .registry
            .list("", "", true)
            .into_iter()
            .map(|i| (i.component, i.healthy))
            .collect(),
        resources: if cfg.resources.enabled {
            resources::read(&data_dir)
        } else {
            resources::Reading::default()
        },
        cores: resources::cores(),
        step_latency: if cfg.anomaly.enabled {
            global.telemetry().hist.round_trips_recent(step)
        } else {
            Vec::new()
        },
    }
}

/// The engine's loop on the admin thread: evaluate, then publish, notify and store what
/// changed. Never blocks on the database or a webhook.
pub async fn run(global: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let cfg = global.admin().alerts.config().clone();
    if !cfg.enabled {
        return;
    }
    let notifier = notify::Notifier::start(&cfg.webhooks, stop.clone());
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.eval_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    return;
                }
                continue;
            }
        }
        let g = global.clone();
        // Reading /proc and statvfs is quick but is file I/O: off the async worker.
        let inputs = match tokio::task::spawn_blocking(move || gather(&g)).await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!("alert inputs: {e}");
                continue;
            }
        };
        let changes = global.admin().alerts.evaluate(&inputs);
        if changes.is_empty() {
            continue;
        }
        for t in &changes {
            let a = &t.alert;
            tracing::warn!(rule = %a.rule, labels = ?a.labels, state = %a.state, notified = t.notify, "alert {}: {}", a.state, a.summary);
            if t.notify {
                let body = Arc::new(serde_json::to_vec(a).unwrap_or_default());
                agentwire_broker::plane::sys_publish(
                    global.data(),
                    format!("$SYS.alerts.{}.{}", a.rule, a.state),
                    body.to_vec(),
                );
                notifier.send(&body);
            }
        }
        let g = global.clone();
        let alerts: Vec<Alert> = changes.into_iter().map(|t| t.alert).collect();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = g.admin().store.record_alerts(&alerts) {
                tracing::warn!("cannot store alert history: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(rule: &'static str, comp: &str, breached: bool) -> Observation {
        Observation {
            rule,
            labels: [("component".to_owned(), comp.to_owned())].into(),
            value: if breached { 600.0 } else { 1.0 },
            threshold: 500.0,
            breached,
            summary: String::new(),
        }
    }

    fn eff(for_s: u64, cooldown_s: u64) -> impl Fn(&str) -> Effective {
        move |_| Effective {
            enabled: true,
            threshold: 500.0,
            for_: Duration::from_secs(for_s),
            cooldown: Duration::from_secs(cooldown_s),
        }
    }

    #[test]
    fn fires_after_for_and_resolves() {
        let mut t = Tracker::new(10);
        let s = eff(10, 300);
        assert!(t
            .step(0, vec![obs("component_latency", "a", true)], &s)
            .is_empty());
        assert!(t
            .step(9_999, vec![obs("component_latency", "a", true)], &s)
            .is_empty());
        let c = t.step(10_000, vec![obs("component_latency", "a", true)], &s);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].alert.state, "firing");
        assert!(c[0].notify);
        assert_eq!(c[0].alert.active_since_ms, 0);
        assert_eq!(t.firing().len(), 1);
        assert!(t
            .step(11_000, vec![obs("component_latency", "a", true)], &s)
            .is_empty());
        let c = t.step(12_000, vec![obs("component_latency", "a", false)], &s);
        assert_eq!(c[0].alert.state, "resolved");
        assert_eq!(c[0].alert.resolved_ms, Some(12_000));
        assert!(c[0].notify);
        assert!(t.firing().is_empty());
        assert_eq!(t.resolved().len(), 1);
    }

    #[test]
    fn a_blip_shorter_than_for_never_fires() {
        let mut t = Tracker::new(10);
        let s = eff(10, 300);
        t.step(0, vec![obs("error_rate", "a", true)], &s);
        t.step(5_000, vec![obs("error_rate", "a", false)], &s);
        // The pending time restarts.
        t.step(6_000, vec![obs("error_rate", "a", true)], &s);
        assert!(t
            .step(15_000, vec![obs("error_rate", "a", true)], &s)
            .is_empty());
        assert_eq!(
            t.step(16_000, vec![obs("error_rate", "a", true)], &s).len(),
            1
        );
    }

    #[test]
    fn no_data_resolves() {
        let mut t = Tracker::new(10);
        let s = eff(0, 300);
        assert_eq!(t.step(0, vec![obs("availability", "a", true)], &s).len(), 1);
        let c = t.step(1_000, vec![], &s);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].alert.state, "resolved");
    }

    #[test]
    fn cooldown_shows_but_does_not_notify() {
        let mut t = Tracker::new(10);
        let s = eff(0, 300);
        let fire = |t: &mut Tracker, ms, b| t.step(ms, vec![obs("component_latency", "a", b)], &s);
        assert!(fire(&mut t, 0, true)[0].notify);
        assert!(
            fire(&mut t, 1_000, false)[0].notify,
            "resolution of a notified alert"
        );
        let again = fire(&mut t, 100_000, true);
        assert_eq!(again[0].alert.state, "firing");
        assert!(
            !again[0].notify && !again[0].alert.notified,
            "within the cooldown"
        );
        assert_eq!(t.firing().len(), 1, "still shown as firing");
        let r = fire(&mut t, 101_000, false);
        assert!(!r[0].notify, "its resolution is not notified either");
        // 300 s after the last resolution: notified again.
        assert!(fire(&mut t, 401_000, true)[0].notify);
    }

    #[test]
    fn labels_are_separate_alerts() {
        let mut t = Tracker::new(10);
        let s = eff(0, 300);
        let c = t.step(
            0,
            vec![
                obs("component_latency", "a", true),
                obs("component_latency", "b", true),
                obs("component_latency", "c", false),
            ],
            &s,
        );
        assert_eq!(c.len(), 2);
        let c = t.step(
            1,
            vec![
                obs("component_latency", "a", false),
                obs("component_latency", "b", true),
            ],
            &s,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].alert.labels["component"], "a");
        assert_eq!(t.firing()[0].labels["component"], "b");
    }

    #[test]
    fn engine_snapshot_and_counts() {
        let cfg: AlertsConfig = toml::from_str("[component_latency]\nfor_s = 0\n").expect("valid");
        let a = Alerts::new(cfg);
        let p = agentwire_broker::telemetry::hist::Percentiles {
            count: 50,
            p95: 600_000,
            ..Default::default()
        };
        let c = a.evaluate(&Inputs {
            now_ms: 5,
            component_latency: vec![("planner".into(), p)],
            ..Inputs::default()
        });
        assert_eq!(c.len(), 1);
        let v = a.snapshot();
        assert_eq!(v.firing[0].labels["component"], "planner");
        assert_eq!(v.evaluated_ms, 5);
        let n: Vec<_> = a.firing_counts();
        assert!(n.contains(&("component_latency", 1)) && n.contains(&("anomaly", 0)));
        assert!(serde_json::to_string(&v).is_ok());
    }
}
