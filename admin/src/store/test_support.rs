//! Helpers shared by the store's unit tests: a temporary data directory, change sets and value
//! maps from literals, a store with one component, row counts, a metric sample.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{now_ms, Changes, ConfigStore, MetricSample};

/// A unique directory under the system temp dir, removed on drop.
pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "agentwire-store-{tag}-{}-{}-{}",
            std::process::id(),
            now_ms(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) fn changes(items: &[(&str, Option<&str>)]) -> Changes {
    items
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.map(str::to_owned)))
        .collect()
}

pub(super) fn map(items: &[(&str, &str)]) -> BTreeMap<String, String> {
    items
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

pub(super) fn store_with(component: &str) -> ConfigStore {
    let s = ConfigStore::open_in_memory().unwrap();
    assert!(s.ensure_component(component, "test").unwrap());
    s
}

pub(super) fn row_counts(s: &ConfigStore) -> (u64, u64) {
    let conn = s.conn.lock();
    let rows = conn
        .query_row("SELECT COUNT(*) FROM system_config", [], |r| r.get(0))
        .unwrap();
    let headers = conn
        .query_row("SELECT COUNT(*) FROM config_versions", [], |r| r.get(0))
        .unwrap();
    (rows, headers)
}

pub(super) fn sample(name: &str, value: f64, ts: u64) -> MetricSample {
    MetricSample {
        metric_name: name.to_owned(),
        metric_value: value,
        component_name: Some("svc".to_owned()),
        timestamp_ms: ts,
        tags: serde_json::json!({ "shard": "0" }),
        metadata: serde_json::json!({}),
    }
}
