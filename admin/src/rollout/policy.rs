//! A rollout's policy: the `"rollout"` object of a config PUT ([`RolloutRequest`]), its
//! defaults and limits, and its validated form ([`Policy`]), as stored and shown.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::{Canary, StoreError};

/// Default highest error rate of a canary (the error-rate alert's 1%).
pub const DEFAULT_MAX_ERROR_RATE: f64 = 0.01;
/// Default highest latency of a canary (the response-time alert's 500 ms).
pub const DEFAULT_MAX_LATENCY_MS: u64 = 500;
/// Default requests a canary must have handled since the push before its error rate and
/// latency are judged.
pub const DEFAULT_MIN_REQUESTS: u64 = 10;
/// Longest bake accepted.
pub const MAX_BAKE_SECONDS: u64 = 7 * 24 * 3600;

/// The `"rollout"` object of a config PUT.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    /// `1` (instances) or `"25%"`.
    pub canary: Value,
    /// How long the canaries must stay healthy, seconds.
    pub bake_seconds: u64,
    /// Roll back by itself on a failed check (default true).
    #[serde(default)]
    pub auto_rollback: Option<bool>,
    /// Highest canary error rate, 0..1 (default 0.01).
    #[serde(default)]
    pub max_error_rate: Option<f64>,
    /// Highest canary latency, ms (default 500).
    #[serde(default)]
    pub max_latency_ms: Option<u64>,
    /// Requests a canary must have handled since the push before its error rate and latency
    /// count (default 10).
    #[serde(default)]
    pub min_requests: Option<u64>,
}

/// A validated rollout policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// How many canaries.
    pub canary: Canary,
    /// Bake time.
    pub bake: Duration,
    /// Roll back by itself on a failed check.
    pub auto_rollback: bool,
    /// Highest error rate (0..=1).
    pub max_error_rate: f64,
    /// Highest latency, ms.
    pub max_latency_ms: u64,
    /// Requests before error rate and latency are judged.
    pub min_requests: u64,
}

fn bad(reason: impl Into<String>) -> StoreError {
    StoreError::Invalid {
        field: "rollout",
        reason: reason.into(),
    }
}

impl Policy {
    /// Validates a request.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] naming the bad field.
    pub fn from_request(r: &RolloutRequest) -> Result<Policy, StoreError> {
        let canary = match &r.canary {
            Value::Number(n) => match n.as_u64() {
                Some(n) if (1..=u64::from(u32::MAX)).contains(&n) => Canary::Count(n as u32),
                _ => return Err(bad(format!("canary {n}: must be 1 or more, or \"25%\""))),
            },
            Value::String(s) => Canary::parse(s).map_err(bad)?,
            other => {
                return Err(bad(format!(
                    "canary {other}: give a number of instances or a percentage like \"25%\""
                )))
            }
        };
        if r.bake_seconds == 0 || r.bake_seconds > MAX_BAKE_SECONDS {
            return Err(bad(format!(
                "bake_seconds {}: must be 1..={MAX_BAKE_SECONDS}",
                r.bake_seconds
            )));
        }
        let max_error_rate = r.max_error_rate.unwrap_or(DEFAULT_MAX_ERROR_RATE);
        if !(0.0..=1.0).contains(&max_error_rate) {
            return Err(bad(format!(
                "max_error_rate {max_error_rate}: must be between 0 and 1"
            )));
        }
        let max_latency_ms = r.max_latency_ms.unwrap_or(DEFAULT_MAX_LATENCY_MS);
        if max_latency_ms == 0 {
            return Err(bad("max_latency_ms must be at least 1"));
        }
        Ok(Policy {
            canary,
            bake: Duration::from_secs(r.bake_seconds),
            auto_rollback: r.auto_rollback.unwrap_or(true),
            max_error_rate,
            max_latency_ms,
            min_requests: r.min_requests.unwrap_or(DEFAULT_MIN_REQUESTS).max(1),
        })
    }

    /// The policy as stored and shown.
    pub fn to_json(&self) -> Value {
        json!({
            "canary": self.canary.to_json(),
            "bake_seconds": self.bake.as_secs(),
            "auto_rollback": self.auto_rollback,
            "max_error_rate": self.max_error_rate,
            "max_latency_ms": self.max_latency_ms,
            "min_requests": self.min_requests,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::test_support::policy;
    use super::*;

    #[test]
    fn policy_validation_and_defaults() {
        let p = policy();
        assert!(p.auto_rollback);
        assert_eq!(p.max_error_rate, DEFAULT_MAX_ERROR_RATE);
        assert_eq!(p.max_latency_ms, DEFAULT_MAX_LATENCY_MS);
        assert_eq!(p.to_json()["canary"], json!(1));
        let req = |canary: Value, bake: u64, rate: Option<f64>| RolloutRequest {
            canary,
            bake_seconds: bake,
            auto_rollback: Some(false),
            max_error_rate: rate,
            max_latency_ms: None,
            min_requests: None,
        };
        let p = Policy::from_request(&req(json!("25%"), 5, Some(0.5))).unwrap();
        assert_eq!(p.canary, Canary::Percent(25.0));
        assert!(!p.auto_rollback);
        assert_eq!(p.to_json()["canary"], json!("25%"));
        for bad in [
            req(json!(0), 5, None),
            req(json!("-1"), 5, None),
            req(json!(true), 5, None),
            req(json!(1), 0, None),
            req(json!(1), 5, Some(1.5)),
            req(json!(1), 5, Some(-0.1)),
        ] {
            assert!(
                matches!(Policy::from_request(&bad), Err(StoreError::Invalid { .. })),
                "{bad:?}"
            );
        }
    }
}
