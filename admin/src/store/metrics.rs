//! Performance-metric samples in `performance_metrics`: recording a batch (all or none),
//! reading them since a time, and pruning the old ones (retention).

use rusqlite::params;

use super::{
    check_json_object, check_name, invalid, parse_json, usize_limit, ConfigStore, StoreError,
    MAX_METRIC_NAME_LEN,
};

/// One performance-metric sample.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetricSample {
    /// Metric name (1..=256 bytes, no control characters).
    pub metric_name: String,
    /// Value (finite).
    pub metric_value: f64,
    /// Component the sample is about, if any.
    pub component_name: Option<String>,
    /// When it was taken, ms since the epoch.
    pub timestamp_ms: u64,
    /// Tags: a JSON object (`null` is stored as `{}`).
    pub tags: serde_json::Value,
    /// Free-form metadata: a JSON object (`null` is stored as `{}`).
    pub metadata: serde_json::Value,
}

fn check_sample(s: &MetricSample) -> Result<(String, String, i64), StoreError> {
    let name = &s.metric_name;
    if name.is_empty() || name.len() > MAX_METRIC_NAME_LEN || name.chars().any(char::is_control) {
        return Err(invalid(
            "metric_name",
            format!("{name:?} is not a metric name (1..={MAX_METRIC_NAME_LEN} bytes, no control characters)"),
        ));
    }
    if !s.metric_value.is_finite() {
        return Err(invalid(
            "metric_value",
            format!("{} is not a finite number", s.metric_value),
        ));
    }
    if let Some(c) = &s.component_name {
        check_name("component_name", c)?;
    }
    let ts = i64::try_from(s.timestamp_ms).map_err(|_| {
        invalid(
            "timestamp_ms",
            format!("{} is out of range", s.timestamp_ms),
        )
    })?;
    let tags = check_json_object("tags", &s.tags)?;
    let metadata = check_json_object("metadata", &s.metadata)?;
    Ok((tags, metadata, ts))
}

impl ConfigStore {
    /// Appends samples, all in one transaction (all or none). Every sample is validated
    /// first: name 1..=256 bytes without control characters, finite value, a name-token
    /// component, a timestamp ≤ `i64::MAX`, tags and metadata JSON objects (or `null`).
    pub fn record_metrics(&self, samples: &[MetricSample]) -> Result<(), StoreError> {
        if samples.is_empty() {
            return Ok(());
        }
        let checked = samples
            .iter()
            .map(check_sample)
            .collect::<Result<Vec<_>, _>>()?;
        self.write("record_metrics", |tx| {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO performance_metrics
                 (metric_name, metric_value, component_name, timestamp, tags, metadata)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for (s, (tags, metadata, ts)) in samples.iter().zip(&checked) {
                stmt.execute(params![
                    s.metric_name,
                    s.metric_value,
                    s.component_name,
                    ts,
                    tags,
                    metadata
                ])?;
            }
            Ok(())
        })
    }

    /// Samples with `timestamp >= since_ms` (only `metric_name` if given), oldest first, at
    /// most `limit`.
    pub fn metrics_since(
        &self,
        since_ms: u64,
        metric_name: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MetricSample>, StoreError> {
        let since = i64::try_from(since_ms).unwrap_or(i64::MAX);
        self.read("metrics_since", |tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT metric_name, metric_value, component_name, timestamp, tags, metadata
                 FROM performance_metrics
                 WHERE timestamp >= ?1 AND (?2 IS NULL OR metric_name = ?2)
                 ORDER BY timestamp, id LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![since, metric_name, usize_limit(limit)], |r| {
                Ok(MetricSample {
                    metric_name: r.get(0)?,
                    metric_value: r.get(1)?,
                    component_name: r.get(2)?,
                    timestamp_ms: r.get(3)?,
                    tags: parse_json("tags", &r.get::<_, String>(4)?)?,
                    metadata: parse_json("metadata", &r.get::<_, String>(5)?)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// Deletes samples with `timestamp < older_than_ms`; returns how many.
    pub fn prune_metrics(&self, older_than_ms: u64) -> Result<usize, StoreError> {
        let cutoff = i64::try_from(older_than_ms).unwrap_or(i64::MAX);
        self.write("prune_metrics", |tx| {
            Ok(tx
                .prepare_cached("DELETE FROM performance_metrics WHERE timestamp < ?1")?
                .execute(params![cutoff])?)
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::test_support::sample;
    use super::*;

    #[test]
    fn metrics_record_since_prune() {
        let s = ConfigStore::open_in_memory().unwrap();
        s.record_metrics(&[]).unwrap();
        let mut batch = vec![
            sample("msgs.in", 10.0, 1_000),
            sample("msgs.out", 5.0, 1_000),
            sample("msgs.in", 12.5, 2_000),
            sample("msgs.in", 7.0, 3_000),
        ];
        batch[3].component_name = None;
        batch[3].tags = serde_json::Value::Null;
        s.record_metrics(&batch).unwrap();

        let all = s.metrics_since(0, None, 100).unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[0], batch[0]);
        assert_eq!(all[3].component_name, None);
        assert_eq!(all[3].tags, serde_json::json!({}));
        let ts: Vec<u64> = all.iter().map(|m| m.timestamp_ms).collect();
        assert_eq!(ts, vec![1_000, 1_000, 2_000, 3_000]);

        let ins = s.metrics_since(1_500, Some("msgs.in"), 100).unwrap();
        assert_eq!(
            ins.iter().map(|m| m.metric_value).collect::<Vec<_>>(),
            vec![12.5, 7.0]
        );
        let first = s.metrics_since(0, Some("msgs.in"), 1).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].timestamp_ms, 1_000);
        assert!(s.metrics_since(0, None, 0).unwrap().is_empty());
        assert!(s.metrics_since(u64::MAX, None, 10).unwrap().is_empty());

        assert_eq!(s.prune_metrics(2_000).unwrap(), 2);
        assert_eq!(s.prune_metrics(2_000).unwrap(), 0);
        let left = s.metrics_since(0, None, 100).unwrap();
        assert_eq!(
            left.iter().map(|m| m.timestamp_ms).collect::<Vec<_>>(),
            vec![2_000, 3_000]
        );

        // Invalid samples: nothing of the batch is written.
        let mut bad = vec![sample("ok", 1.0, 5_000), sample("ok", f64::NAN, 5_000)];
        assert!(matches!(
            s.record_metrics(&bad),
            Err(StoreError::Invalid {
                field: "metric_value",
                ..
            })
        ));
        bad[1] = MetricSample {
            tags: serde_json::json!([1]),
            ..sample("ok", 1.0, 5_000)
        };
        assert!(matches!(
            s.record_metrics(&bad),
            Err(StoreError::Invalid { field: "tags", .. })
        ));
        bad[1] = sample("", 1.0, 5_000);
        assert!(matches!(
            s.record_metrics(&bad),
            Err(StoreError::Invalid {
                field: "metric_name",
                ..
            })
        ));
        bad[1] = sample("ok", 1.0, u64::MAX);
        assert!(matches!(
            s.record_metrics(&bad),
            Err(StoreError::Invalid {
                field: "timestamp_ms",
                ..
            })
        ));
        bad[1] = MetricSample {
            component_name: Some("a b".into()),
            ..sample("ok", 1.0, 5_000)
        };
        assert!(matches!(
            s.record_metrics(&bad),
            Err(StoreError::Invalid {
                field: "component_name",
                ..
            })
        ));
        assert_eq!(s.metrics_since(0, None, 100).unwrap().len(), 2);
    }
}
