//! The `[alerts]` table of the config file: which rules run, their thresholds, `for` durations
//! and cooldowns, the short evaluation window, anomaly detection and webhooks. Every table
//! rejects unknown keys; [`AlertsConfig::validate`] names the first bad value.

use std::time::Duration;

use serde::Deserialize;

/// Alerting (`[alerts]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Run the alert engine at all (default true).
    pub enabled: bool,
    /// How often every rule is evaluated, ms (default 1000).
    pub eval_interval_ms: u64,
    /// The short sliding window of the latency, error-rate and CPU rules, seconds (default
    /// 30; 5 to 60, with a 5 s resolution).
    pub window_s: u64,
    /// The window of the availability rule, seconds (default 300).
    pub availability_window_s: u64,
    /// Default cooldown of every rule, seconds (default 300): a new firing of the same rule and
    /// labels this soon after the last one resolved is shown but not notified again.
    pub cooldown_s: u64,
    /// Latency rules give no verdict on fewer samples than this in the window (default 5).
    pub min_samples: u64,
    /// The error-rate rule gives no verdict on fewer requests than this in the window
    /// (default 20).
    pub min_requests: u64,
    /// Resolved alerts kept in memory for `Alerts::snapshot` (admin plane) (default 200; the
    /// database keeps them all).
    pub history_in_memory: usize,
    /// Availability below `threshold` percent (default 99.9).
    pub availability: RuleConfig,
    /// Any component's request → reply p95 above `threshold` ms (default 500).
    pub component_latency: RuleConfig,
    /// Message latency p99 above `threshold` ms (default 100).
    pub message_latency: RuleConfig,
    /// Error rate above `threshold` percent (default 1).
    pub error_rate: RuleConfig,
    /// CPU, memory, disk above their limits.
    pub resources: ResourcesConfig,
    /// Anomaly detection per component and metric.
    pub anomaly: AnomalyConfig,
    /// Webhooks notified of every firing and resolution (`[[alerts.webhooks]]`).
    pub webhooks: Vec<WebhookConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            enabled: true,
            eval_interval_ms: 1000,
            window_s: 30,
            availability_window_s: 300,
            cooldown_s: 300,
            min_samples: 5,
            min_requests: 20,
            history_in_memory: 200,
            availability: RuleConfig::default(),
            component_latency: RuleConfig::default(),
            message_latency: RuleConfig::default(),
            error_rate: RuleConfig::default(),
            resources: ResourcesConfig::default(),
            anomaly: AnomalyConfig::default(),
            webhooks: Vec::new(),
        }
    }
}

/// One threshold rule (`[alerts.<rule>]`). Unset values take the rule's defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleConfig {
    /// Evaluate this rule (default true).
    pub enabled: bool,
    /// The threshold, in the rule's unit (see [`AlertsConfig`]).
    pub threshold: Option<f64>,
    /// How long the condition must hold before the alert fires, seconds.
    pub for_s: Option<u64>,
    /// Cooldown, seconds (default: `alerts.cooldown_s`).
    pub cooldown_s: Option<u64>,
}

impl Default for RuleConfig {
    fn default() -> Self {
        RuleConfig {
            enabled: true,
            threshold: None,
            for_s: None,
            cooldown_s: None,
        }
    }
}

/// The resource rule (`[alerts.resources]`): the broker process's CPU share of the machine,
/// its resident memory against MemTotal (or the cgroup's limit), the data dir's filesystem.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResourcesConfig {
    /// Evaluate this rule (default true).
    pub enabled: bool,
    /// CPU limit, percent of all cores (default 80).
    pub cpu_percent: f64,
    /// Memory limit, percent (default 85).
    pub memory_percent: f64,
    /// Disk limit, percent used (default 90).
    pub disk_percent: f64,
    /// `for`, seconds (default 60).
    pub for_s: Option<u64>,
    /// Cooldown, seconds (default: `alerts.cooldown_s`).
    pub cooldown_s: Option<u64>,
}

impl Default for ResourcesConfig {
    fn default() -> Self {
        ResourcesConfig {
            enabled: true,
            cpu_percent: 80.0,
            memory_percent: 85.0,
            disk_percent: 90.0,
            for_s: None,
            cooldown_s: None,
        }
    }
}

/// Anomaly detection (`[alerts.anomaly]`): see [`super::anomaly`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnomalyConfig {
    /// Run it (default true).
    pub enabled: bool,
    /// One observation per component and metric this often, seconds (default 10; 1 to 60).
    pub step_s: u64,
    /// Alert when |z| exceeds this (default 4).
    pub z: f64,
    /// ... for this many observations in a row (default 3).
    pub consecutive: u32,
    /// Observations learned before judging (default 30).
    pub warmup: u32,
    /// EWMA weight of a new observation (default 0.05).
    pub alpha: f64,
    /// Deviation floor as a share of the baseline mean (default 0.05).
    pub min_std_rel: f64,
    /// After this many anomalous observations in a row the new level becomes the baseline
    /// (learning starts again; default 60).
    pub relearn_after: u32,
    /// `for`, seconds (default 0: `consecutive` already debounces).
    pub for_s: Option<u64>,
    /// Cooldown, seconds (default: `alerts.cooldown_s`).
    pub cooldown_s: Option<u64>,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        // The detector's own defaults (`agentwire_admin::alerts::anomaly::DetectorConfig`).
        AnomalyConfig {
            enabled: true,
            step_s: 10,
            z: 4.0,
            consecutive: 3,
            warmup: 30,
            alpha: 0.05,
            min_std_rel: 0.05,
            relearn_after: 60,
            for_s: None,
            cooldown_s: None,
        }
    }
}

/// A webhook (`[[alerts.webhooks]]`): each firing and resolution is POSTed to `url` as JSON,
/// retried with exponential backoff.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL.
    pub url: String,
    /// Timeout of one attempt, ms (default 5000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts per notification before it is dropped (default 6).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Wait before the first retry, ms; doubled each retry up to 60 s (default 500).
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    /// Notifications waiting for this webhook; past it new ones are dropped (logged)
    /// (default 1024).
    #[serde(default = "default_queue")]
    pub queue: usize,
}

fn default_timeout_ms() -> u64 {
    5000
}
fn default_attempts() -> u32 {
    6
}
fn default_backoff_ms() -> u64 {
    500
}
fn default_queue() -> usize {
    1024
}

/// A rule's effective settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Effective {
    /// Evaluated at all.
    pub enabled: bool,
    /// Threshold in the rule's unit.
    pub threshold: f64,
    /// `for`.
    pub for_: Duration,
    /// Cooldown.
    pub cooldown: Duration,
}

impl AlertsConfig {
    fn eff(&self, r: &RuleConfig, threshold: f64, for_s: u64) -> Effective {
        Effective {
            enabled: self.enabled && r.enabled,
            threshold: r.threshold.unwrap_or(threshold),
            for_: Duration::from_secs(r.for_s.unwrap_or(for_s)),
            cooldown: Duration::from_secs(r.cooldown_s.unwrap_or(self.cooldown_s)),
        }
    }

    /// `availability`: percent (default 99.9), `for` 0.
    pub fn availability(&self) -> Effective {
        self.eff(&self.availability, 99.9, 0)
    }
    /// `component_latency`: p95 ms (default 500), `for` 10 s.
    pub fn component_latency(&self) -> Effective {
        self.eff(&self.component_latency, 500.0, 10)
    }
    /// `message_latency`: p99 ms (default 100), `for` 10 s.
    pub fn message_latency(&self) -> Effective {
        self.eff(&self.message_latency, 100.0, 10)
    }
    /// `error_rate`: percent (default 1), `for` 10 s.
    pub fn error_rate(&self) -> Effective {
        self.eff(&self.error_rate, 1.0, 10)
    }
    /// `resources` (threshold unused: three limits), `for` 60 s.
    pub fn resources(&self) -> Effective {
        let r = &self.resources;
        Effective {
            enabled: self.enabled && r.enabled,
            threshold: 0.0,
            for_: Duration::from_secs(r.for_s.unwrap_or(60)),
            cooldown: Duration::from_secs(r.cooldown_s.unwrap_or(self.cooldown_s)),
        }
    }
    /// `anomaly` (threshold: the z limit), `for` 0.
    pub fn anomaly(&self) -> Effective {
        let a = &self.anomaly;
        Effective {
            enabled: self.enabled && a.enabled,
            threshold: a.z,
            for_: Duration::from_secs(a.for_s.unwrap_or(0)),
            cooldown: Duration::from_secs(a.cooldown_s.unwrap_or(self.cooldown_s)),
        }
    }

    /// The short window.
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window_s)
    }

    /// Checks ranges; the error names the key.
    ///
    /// # Errors
    /// The first value out of range.
    pub fn validate(&self) -> Result<(), String> {
        let bad = |m: String| Err(format!("alerts.{m}"));
        if !(10..=3_600_000).contains(&self.eval_interval_ms) {
            return bad("eval_interval_ms must be between 10 and 3600000".into());
        }
        if !(5..=60).contains(&self.window_s) {
            return bad("window_s must be between 5 and 60 seconds".into());
        }
        if !(1..=86_400).contains(&self.availability_window_s) {
            return bad("availability_window_s must be between 1 and 86400 seconds".into());
        }
        if self.history_in_memory > 100_000 {
            return bad("history_in_memory must be at most 100000".into());
        }
        let pct = |name: &str, v: Option<f64>, lo: f64| -> Result<(), String> {
            match v {
                Some(v) if !(v.is_finite() && v > lo && v <= 100.0) => Err(format!(
                    "alerts.{name}.threshold must be a percentage above {lo} and at most 100 (got {v})"
                )),
                _ => Ok(()),
            }
        };
        pct("availability", self.availability.threshold, 0.0)?;
        pct("error_rate", self.error_rate.threshold, 0.0)?;
        for (name, r) in [
            ("component_latency", &self.component_latency),
            ("message_latency", &self.message_latency),
        ] {
            if let Some(v) = r.threshold {
                if !(v.is_finite() && v > 0.0 && v <= 3_600_000.0) {
                    return bad(format!(
                        "{name}.threshold must be between 0 and 3600000 ms (got {v})"
                    ));
                }
            }
        }
        let r = &self.resources;
        for (name, v) in [
            ("cpu_percent", r.cpu_percent),
            ("memory_percent", r.memory_percent),
            ("disk_percent", r.disk_percent),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 100.0) {
                return bad(format!(
                    "resources.{name} must be above 0 and at most 100 (got {v})"
                ));
            }
        }
        let a = &self.anomaly;
        if !(1..=60).contains(&a.step_s) {
            return bad("anomaly.step_s must be between 1 and 60".into());
        }
        if !(a.z.is_finite() && a.z >= 1.0) {
            return bad(format!("anomaly.z must be at least 1 (got {})", a.z));
        }
        if !(a.alpha.is_finite() && a.alpha > 0.0 && a.alpha < 1.0) {
            return bad(format!(
                "anomaly.alpha must be between 0 and 1 exclusive (got {})",
                a.alpha
            ));
        }
        if a.consecutive == 0 || a.warmup < 2 {
            return bad(
                "anomaly.consecutive must be at least 1 and anomaly.warmup at least 2".into(),
            );
        }
        if !(a.min_std_rel.is_finite() && a.min_std_rel >= 0.0) {
            return bad("anomaly.min_std_rel must be 0 or more".into());
        }
        if a.relearn_after <= a.consecutive {
            return bad("anomaly.relearn_after must be above anomaly.consecutive".into());
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                return bad(format!(
                    "webhooks[{i}].url must start with http:// or https:// (got {:?})",
                    w.url
                ));
            }
            if w.max_attempts == 0 || w.max_attempts > 100 {
                return bad(format!(
                    "webhooks[{i}].max_attempts must be between 1 and 100"
                ));
            }
            if w.timeout_ms == 0 || w.queue == 0 {
                return bad(format!(
                    "webhooks[{i}].timeout_ms and webhooks[{i}].queue must be at least 1"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<AlertsConfig, String> {
        let c: AlertsConfig = toml::from_str(s).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn defaults_match_the_documented_rules() {
        let c = parse("").expect("empty table");
        assert_eq!(c.component_latency().threshold, 500.0);
        assert_eq!(c.message_latency().threshold, 100.0);
        assert_eq!(c.availability().threshold, 99.9);
        assert_eq!(c.error_rate().threshold, 1.0);
        assert_eq!(c.resources.cpu_percent, 80.0);
        assert_eq!(c.resources.memory_percent, 85.0);
        assert_eq!(c.resources.disk_percent, 90.0);
        assert_eq!(c.component_latency().cooldown, Duration::from_secs(300));
        assert_eq!(c.window(), Duration::from_secs(30));
    }

    #[test]
    fn partial_tables_keep_the_other_defaults() {
        let c = parse(
            "window_s = 5\n[component_latency]\nfor_s = 1\n[resources]\ncpu_percent = 50\n\
             [[webhooks]]\nurl = \"http://127.0.0.1:9/hook\"\n",
        )
        .expect("valid");
        let l = c.component_latency();
        assert_eq!(l.threshold, 500.0);
        assert_eq!(l.for_, Duration::from_secs(1));
        assert_eq!(c.resources.memory_percent, 85.0);
        assert_eq!(c.webhooks[0].max_attempts, 6);
    }

    #[test]
    fn bad_values_are_named() {
        for (text, word) in [
            ("window_s = 1\n", "window_s"),
            ("[error_rate]\nthreshold = 150\n", "error_rate.threshold"),
            (
                "[component_latency]\nthreshold = -1\n",
                "component_latency.threshold",
            ),
            ("[resources]\ndisk_percent = 0\n", "disk_percent"),
            ("[anomaly]\nalpha = 1.5\n", "anomaly.alpha"),
            ("[[webhooks]]\nurl = \"ftp://x\"\n", "webhooks[0].url"),
            ("[component_latency]\nthreshhold = 3\n", "threshhold"),
            ("[nope]\n", "nope"),
        ] {
            let e = parse(text).expect_err(text);
            assert!(e.contains(word), "{text}: {e}");
        }
    }
}
