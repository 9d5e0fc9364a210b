//! The config center's persistent store: versioned component configuration and
//! performance-metric samples in one SQLite database, `<data_dir>/agentwire.db`.
//!
//! # Model
//!
//! - A **component** must be known (declared with [`ConfigStore::ensure_component`],
//!   either explicitly or when an instance of it registers) before its configuration can
//!   be set.
//! - Configuration is kept per (component, environment). Every change produces a new
//!   **version** (1, 2, 3, …; 0 means "never set, no values"). Each version is stored as
//!   a full snapshot: a header row in `config_versions` plus one row per key in
//!   `system_config`, so reading any version is one indexed query and a version whose key
//!   set is empty still exists.
//! - [`ConfigStore::set`] applies a change set on top of the current values;
//!   [`ConfigStore::rollback`] creates a new version whose values equal an older one.
//!   Both accept an `expected_version` for optimistic concurrency
//!   ([`StoreError::VersionConflict`] when it is stale).
//! - Metric samples go to `performance_metrics` (append, read since a time, prune).
//!
//! # Durability
//!
//! The database runs in WAL mode with `synchronous=FULL`, so a version whose `set`
//! returned `Ok` survives a crash or `kill -9`. Every write is one `BEGIN IMMEDIATE`
//! transaction: the current version is read under the write lock, and a failure
//! (disk full, read-only file, conflict, invalid input) leaves nothing partial behind.
//! The busy timeout is 5 s, so several processes (or several [`ConfigStore`]s) can share
//! the file.
//!
//! # Layout
//!
//! - `open`: opening the database, its schema, the transactions every operation runs in.
//! - `error`: [`StoreError`] and how SQLite and I/O errors map onto it.
//! - `validate`: the checks of names, keys, values, `by` and change sets.
//! - `components`: declaring and listing components.
//! - `versions`: how a version is stored (snapshot and history types, rows) and written.
//! - `changes`: [`ConfigStore::set`], [`ConfigStore::rollback`], [`ConfigStore::promote`].
//! - `history`: reading the current config, one version, a history, every current snapshot.
//! - `metrics`: performance-metric samples (record, read since a time, prune).
//! - `alerts`: the alert history.
//! - `rollouts`: the records of staged config rollouts.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rusqlite::Connection;

/// File name of the database inside the data directory.
pub const DB_FILE_NAME: &str = "agentwire.db";
/// Longest config key, in bytes.
pub const MAX_KEY_LEN: usize = 256;
/// Longest config value, in bytes.
pub const MAX_VALUE_LEN: usize = 65_536;
/// Most keys one (component, environment) may hold after a change.
pub const MAX_KEYS: usize = 1_000;
/// Longest `by` (who made a change), in bytes.
pub const MAX_BY_LEN: usize = 128;
/// Longest metric name, in bytes.
pub const MAX_METRIC_NAME_LEN: usize = 256;

mod alerts;
mod changes;
mod components;
mod error;
mod history;
mod metrics;
mod open;
mod rollouts;
#[cfg(test)]
mod test_support;
mod validate;
mod versions;

pub use components::ComponentSummary;
pub use error::StoreError;
pub use metrics::MetricSample;
pub use rollouts::{RolloutRecord, RolloutState};
pub use versions::{ChangeRequest, Changes, ConfigSnapshot, PromotedFrom, VersionInfo};

// The store's internals, in one namespace for the submodules (`use super::...`).
use components::require_component;
use error::{invalid, map_io, map_sql, Failure};
use validate::{check_by, check_change, check_json_object, check_name};
use versions::{
    check_expected, current_snapshot, header_at, header_from_row, insert_version, promotion_at,
    set_in_tx, values_at, Header, HEADER_COLUMNS,
};

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The config center's SQLite store. Cheap operations behind one connection and a mutex;
/// `Send + Sync`, share it in an `Arc`.
pub struct ConfigStore {
    conn: Mutex<Connection>,
    path: Option<PathBuf>,
    /// Path (or `:memory:`) for error messages.
    location: String,
}

impl std::fmt::Debug for ConfigStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

fn parse_json(what: &str, text: &str) -> rusqlite::Result<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("stored {what} is not JSON: {e}").into(),
        )
    })
}

fn usize_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}
