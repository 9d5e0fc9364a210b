//! The alert history in `alerts_history`: recording firings and their resolutions, reading them
//! back newest first.

use rusqlite::params;

use super::{parse_json, usize_limit, ConfigStore, StoreError};

/// The alert history.
impl ConfigStore {
    /// Records firings and resolutions: a firing inserts a row, its resolution updates it
    /// (same rule, labels and firing time).
    pub fn record_alerts(&self, alerts: &[crate::alerts::Alert]) -> Result<(), StoreError> {
        if alerts.is_empty() {
            return Ok(());
        }
        let ms = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.write("record_alerts", |tx| {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO alerts_history (rule, labels, state, value, threshold, summary,
                     active_since, fired_at, resolved_at, notified)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (rule, labels, fired_at) DO UPDATE SET state = excluded.state,
                     value = excluded.value, summary = excluded.summary,
                     resolved_at = excluded.resolved_at",
            )?;
            for a in alerts {
                let labels = serde_json::to_string(&a.labels).unwrap_or_else(|_| "{}".into());
                let value = if a.value.is_finite() { a.value } else { 0.0 };
                stmt.execute(params![
                    a.rule,
                    labels,
                    a.state,
                    value,
                    a.threshold,
                    a.summary,
                    ms(a.active_since_ms),
                    ms(a.fired_ms),
                    a.resolved_ms.map(ms),
                    a.notified,
                ])?;
            }
            Ok(())
        })
    }

    /// Stored alerts, newest firing first, at most `limit`, only `state` (`firing` or
    /// `resolved`) if given.
    pub fn alerts_history(
        &self,
        state: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::alerts::Alert>, StoreError> {
        self.read("alerts_history", |tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT rule, labels, state, value, threshold, summary, active_since, fired_at,
                        resolved_at, notified
                 FROM alerts_history WHERE (?1 IS NULL OR state = ?1)
                 ORDER BY fired_at DESC, id DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![state, usize_limit(limit)], |r| {
                let labels = parse_json("labels", &r.get::<_, String>(1)?)?;
                Ok(crate::alerts::Alert {
                    rule: r.get(0)?,
                    labels: serde_json::from_value(labels).unwrap_or_default(),
                    state: r.get(2)?,
                    value: r.get(3)?,
                    threshold: r.get(4)?,
                    summary: r.get(5)?,
                    active_since_ms: r.get(6)?,
                    fired_ms: r.get(7)?,
                    resolved_ms: r.get(8)?,
                    notified: r.get(9)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn alert_history_round_trip() {
        let s = ConfigStore::open_in_memory().expect("open");
        let mut a = crate::alerts::Alert {
            rule: "component_latency".into(),
            labels: [("component".to_owned(), "planner".to_owned())].into(),
            state: "firing".into(),
            value: 600.0,
            threshold: 500.0,
            summary: "slow".into(),
            active_since_ms: 1,
            fired_ms: 2,
            resolved_ms: None,
            notified: true,
        };
        s.record_alerts(std::slice::from_ref(&a)).expect("firing");
        assert_eq!(
            s.alerts_history(Some("firing"), 10).expect("read"),
            vec![a.clone()]
        );
        a.state = "resolved".into();
        a.resolved_ms = Some(3);
        s.record_alerts(std::slice::from_ref(&a)).expect("resolved");
        assert!(s
            .alerts_history(Some("firing"), 10)
            .expect("read")
            .is_empty());
        assert_eq!(s.alerts_history(None, 10).expect("read"), vec![a]);
    }
}
