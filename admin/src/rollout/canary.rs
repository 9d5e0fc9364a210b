//! How many canaries a rollout takes ([`Canary`]: a count or a share of the healthy instances)
//! and which ones ([`select_canaries`]: healthy instances only, at random).

use rand::seq::SliceRandom;
use serde_json::Value;

/// How many canaries: a count, or a share of the healthy instances.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Canary {
    /// This many instances (at most all of them).
    Count(u32),
    /// This percentage of the instances, rounded up, at least one.
    Percent(f64),
}

impl Canary {
    /// Parses `3` or `25%`.
    ///
    /// # Errors
    /// Not a count ≥ 1 nor a percentage in (0, 100].
    pub fn parse(s: &str) -> Result<Canary, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            return match p.trim().parse::<f64>() {
                Ok(p) if p > 0.0 && p <= 100.0 => Ok(Canary::Percent(p)),
                _ => Err(format!(
                    "canary {s:?}: a percentage must be in (0, 100], e.g. \"25%\""
                )),
            };
        }
        match s.parse::<u32>() {
            Ok(n) if n >= 1 => Ok(Canary::Count(n)),
            _ => Err(format!(
                "canary {s:?}: give a number of instances (1 or more) or a percentage like \"25%\""
            )),
        }
    }

    /// How many of `available` instances are canaries (0 only when none is available).
    pub fn count(self, available: usize) -> usize {
        if available == 0 {
            return 0;
        }
        let n = match self {
            Canary::Count(n) => n as usize,
            Canary::Percent(p) => ((available as f64) * p / 100.0).ceil() as usize,
        };
        n.clamp(1, available)
    }

    pub(super) fn to_json(self) -> Value {
        match self {
            Canary::Count(n) => Value::from(n),
            Canary::Percent(p) => Value::from(format!("{p}%")),
        }
    }
}

/// Chooses the canaries among `(instance_id, healthy)` candidates: only healthy ones, at random,
/// returned sorted. Empty when no candidate is healthy.
pub fn select_canaries<R: rand::Rng + ?Sized>(
    candidates: &[(String, bool)],
    canary: Canary,
    rng: &mut R,
) -> Vec<String> {
    let healthy: Vec<&String> = candidates
        .iter()
        .filter(|(_, h)| *h)
        .map(|(id, _)| id)
        .collect();
    let n = canary.count(healthy.len());
    let mut chosen: Vec<String> = healthy
        .choose_multiple(rng, n)
        .map(|s| (*s).clone())
        .collect();
    chosen.sort();
    chosen
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use rand::SeedableRng;

    #[test]
    fn canary_counts_and_parsing() {
        assert_eq!(Canary::parse("1"), Ok(Canary::Count(1)));
        assert_eq!(Canary::parse("25%"), Ok(Canary::Percent(25.0)));
        assert!(Canary::parse("0").is_err());
        assert!(Canary::parse("0%").is_err());
        assert!(Canary::parse("150%").is_err());
        assert!(Canary::parse("x").is_err());
        assert_eq!(Canary::Count(1).count(4), 1);
        assert_eq!(Canary::Count(9).count(4), 4);
        assert_eq!(Canary::Percent(25.0).count(4), 1);
        assert_eq!(Canary::Percent(25.0).count(5), 2);
        assert_eq!(Canary::Percent(1.0).count(3), 1);
        assert_eq!(Canary::Percent(100.0).count(3), 3);
        assert_eq!(Canary::Count(1).count(0), 0);
    }

    #[test]
    fn canaries_are_healthy_instances_only_and_vary() {
        let c: Vec<(String, bool)> = vec![
            ("p-0".into(), true),
            ("p-1".into(), false),
            ("p-2".into(), true),
            ("p-3".into(), true),
        ];
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..50 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let chosen = select_canaries(&c, Canary::Count(1), &mut rng);
            assert_eq!(chosen.len(), 1);
            assert_ne!(chosen[0], "p-1", "an unhealthy instance is never a canary");
            seen.insert(chosen[0].clone());
        }
        assert!(seen.len() > 1, "the choice is random: {seen:?}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let all = select_canaries(&c, Canary::Percent(100.0), &mut rng);
        assert_eq!(all, vec!["p-0", "p-2", "p-3"]);
        let none = select_canaries(&[("p-1".into(), false)], Canary::Count(1), &mut rng);
        assert!(none.is_empty());
    }
}
