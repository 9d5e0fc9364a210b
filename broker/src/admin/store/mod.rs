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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentwire_protocol::control::is_name_token;
use parking_lot::Mutex;
use rusqlite::{
    params, Connection, DatabaseName, ErrorCode, OpenFlags, OptionalExtension, Transaction,
    TransactionBehavior,
};

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

mod rollouts;
pub use rollouts::{RolloutRecord, RolloutState};

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS components (
    name        TEXT PRIMARY KEY NOT NULL,
    created_at  INTEGER NOT NULL,
    created_by  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS config_versions (
    component_name TEXT NOT NULL,
    environment    TEXT NOT NULL,
    version        INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    updated_by     TEXT NOT NULL,
    action         TEXT NOT NULL CHECK (action IN ('set', 'rollback')),
    rollback_of    INTEGER NULL,
    PRIMARY KEY (component_name, environment, version)
);
CREATE TABLE IF NOT EXISTS system_config (
    id             INTEGER PRIMARY KEY,
    component_name TEXT NOT NULL,
    config_key     TEXT NOT NULL,
    config_value   TEXT NOT NULL,
    environment    TEXT NOT NULL,
    version        INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    updated_by     TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS system_config_by_version
    ON system_config (component_name, environment, version, config_key);
CREATE TABLE IF NOT EXISTS performance_metrics (
    id             INTEGER PRIMARY KEY,
    metric_name    TEXT NOT NULL,
    metric_value   REAL NOT NULL,
    component_name TEXT NULL,
    timestamp      INTEGER NOT NULL,
    tags           TEXT NOT NULL,
    metadata       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS performance_metrics_by_time
    ON performance_metrics (timestamp);
CREATE TABLE IF NOT EXISTS config_promotions (
    component_name   TEXT NOT NULL,
    environment      TEXT NOT NULL,
    version          INTEGER NOT NULL,
    from_environment TEXT NOT NULL,
    from_version     INTEGER NOT NULL,
    PRIMARY KEY (component_name, environment, version)
);
CREATE INDEX IF NOT EXISTS performance_metrics_by_name_time
    ON performance_metrics (metric_name, timestamp);
";

/// The alert history (added after the first release: created when missing, like the rest).
/// One row per firing, updated when it resolves.
const ALERTS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS alerts_history (
    id           INTEGER PRIMARY KEY,
    rule         TEXT NOT NULL,
    labels       TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('firing', 'resolved')),
    value        REAL NOT NULL,
    threshold    REAL NOT NULL,
    summary      TEXT NOT NULL,
    active_since INTEGER NOT NULL,
    fired_at     INTEGER NOT NULL,
    resolved_at  INTEGER NULL,
    notified     INTEGER NOT NULL,
    UNIQUE (rule, labels, fired_at)
);
CREATE INDEX IF NOT EXISTS alerts_history_by_time ON alerts_history (fired_at);
";

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The component was never declared nor registered.
    #[error("unknown component {0:?} (register an instance or create it first)")]
    UnknownComponent(String),
    /// Bad input: a component, environment, key, value, `by` or metric field.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Which input was rejected.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The caller's `expected_version` is not the current version.
    #[error("version conflict: expected version {expected}, the current version is {current}")]
    VersionConflict {
        /// The version the caller based its change on.
        expected: u64,
        /// The version actually current.
        current: u64,
    },
    /// The requested version does not exist.
    #[error("{component}/{environment} has no version {version}")]
    NoSuchVersion {
        /// Component asked for.
        component: String,
        /// Environment asked for.
        environment: String,
        /// Version asked for.
        version: u64,
    },
    /// The environment has no config version of the component (a promotion's source).
    #[error("{component:?} has no config in environment {environment:?}")]
    UnknownEnvironment {
        /// Component asked for.
        component: String,
        /// Environment asked for.
        environment: String,
    },
    /// A staged rollout of this component and environment is in progress (baking, or failed
    /// and waiting for promote or abort): other changes wait for it.
    #[error("rollout {id} of {component} [{environment}] is in progress ({state}): wait for it, or promote or abort it (agentwire config rollout status|promote|abort {component})")]
    RolloutInProgress {
        /// The rollout's id.
        id: u64,
        /// Component.
        component: String,
        /// Environment.
        environment: String,
        /// Its state (`baking` or `failed`).
        state: String,
    },
    /// No rollout in progress to promote or abort.
    #[error("{0}")]
    NoRollout(String),
    /// A rollout cannot start: no healthy live instance to be its canary.
    #[error("{0}")]
    NoCanary(String),
    /// SQLite reported `SQLITE_FULL`: the disk (or the database's page limit) is full.
    #[error("the data disk is full: {0}")]
    Full(String),
    /// The database cannot be written (`SQLITE_READONLY`, or it cannot be opened for writing).
    #[error("the config store is read-only: {0}")]
    ReadOnly(String),
    /// Any other SQLite or I/O error, with the database path and the underlying message.
    #[error("config store error: {0}")]
    Storage(String),
}

/// One (component, environment) configuration at one version.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ConfigSnapshot {
    /// Component name.
    pub component: String,
    /// Environment name.
    pub environment: String,
    /// Version (0: nothing was ever set).
    pub version: u64,
    /// Every key and its value at this version.
    pub values: BTreeMap<String, String>,
    /// When this version was written, ms since the epoch (0 for version 0).
    pub updated_at_ms: u64,
    /// Who wrote this version ("" for version 0).
    pub updated_by: String,
}

/// One version in a (component, environment) history.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VersionInfo {
    /// Version number (from 1).
    pub version: u64,
    /// When it was written, ms since the epoch.
    pub updated_at_ms: u64,
    /// Who wrote it.
    pub updated_by: String,
    /// `"set"` or `"rollback"`.
    pub action: String,
    /// For a rollback, the version whose values were restored.
    pub rollback_of: Option<u64>,
    /// Every key and its value at this version.
    pub values: BTreeMap<String, String>,
    /// For a promotion (`action` `"promote"`), the environment and version copied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub promoted_from: Option<PromotedFrom>,
    /// A human note, e.g. `"promoted from test v3"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Where a promoted version's values came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PromotedFrom {
    /// The source environment.
    pub environment: String,
    /// Its version that was copied.
    pub version: u64,
}

impl VersionInfo {
    /// Marks this version as a promotion from `environment` at `version`.
    fn promoted(mut self, from: Option<(String, u64)>) -> VersionInfo {
        if let Some((environment, version)) = from {
            self.action = "promote".to_owned();
            self.note = Some(format!("promoted from {environment} v{version}"));
            self.promoted_from = Some(PromotedFrom {
                environment,
                version,
            });
        }
        self
    }
}

/// A known component and the environments it has configuration in.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ComponentSummary {
    /// Component name.
    pub component: String,
    /// (environment, current version), sorted by environment.
    pub environments: Vec<(String, u64)>,
    /// When the component became known, ms since the epoch.
    pub created_at_ms: u64,
}

/// One change: `Some(value)` sets a key, `None` deletes it.
pub type Changes = BTreeMap<String, Option<String>>;

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

/// Internal failure: either already a [`StoreError`] or a raw SQLite error still to be
/// mapped with the database location.
enum Failure {
    Store(StoreError),
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Failure::Sql(e)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

fn map_sql(location: &str, what: &str, e: &rusqlite::Error) -> StoreError {
    let msg = format!("{location}: {what}: {e}");
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StoreError::Full(msg),
        Some(ErrorCode::ReadOnly) => StoreError::ReadOnly(msg),
        _ => StoreError::Storage(msg),
    }
}

fn map_io(location: &str, what: &str, e: &std::io::Error) -> StoreError {
    let msg = format!("{location}: {what}: {e}");
    match e.kind() {
        std::io::ErrorKind::StorageFull => StoreError::Full(msg),
        std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied => {
            StoreError::ReadOnly(msg)
        }
        _ => StoreError::Storage(msg),
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> StoreError {
    StoreError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn check_name(field: &'static str, s: &str) -> Result<(), StoreError> {
    if is_name_token(s) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{s:?} is not a name (1..=128 bytes of letters, digits, '_' or '-')"),
        ))
    }
}

fn check_key(key: &str) -> Result<(), StoreError> {
    let ok_chars = key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if key.is_empty() || key.len() > MAX_KEY_LEN || !ok_chars {
        return Err(invalid(
            "key",
            format!(
                "{key:?} is not a key (1..={MAX_KEY_LEN} bytes of letters, digits, '_', '-' or '.')"
            ),
        ));
    }
    if key.starts_with('.') || key.ends_with('.') {
        return Err(invalid(
            "key",
            format!("{key:?} must not start or end with '.'"),
        ));
    }
    Ok(())
}

fn check_value(key: &str, value: &str) -> Result<(), StoreError> {
    if value.len() > MAX_VALUE_LEN {
        return Err(invalid(
            "value",
            format!(
                "the value of {key:?} is {} bytes (at most {MAX_VALUE_LEN})",
                value.len()
            ),
        ));
    }
    if value.contains('\0') {
        return Err(invalid(
            "value",
            format!("the value of {key:?} contains a NUL byte"),
        ));
    }
    Ok(())
}

fn check_by(by: &str) -> Result<(), StoreError> {
    if by.len() > MAX_BY_LEN {
        return Err(invalid(
            "by",
            format!("{} bytes (at most {MAX_BY_LEN})", by.len()),
        ));
    }
    if by.contains('\0') {
        return Err(invalid("by", "contains a NUL byte"));
    }
    Ok(())
}

fn check_json_object(field: &'static str, v: &serde_json::Value) -> Result<String, StoreError> {
    match v {
        serde_json::Value::Null => Ok("{}".to_owned()),
        serde_json::Value::Object(_) => Ok(v.to_string()),
        other => Err(invalid(
            field,
            format!("must be a JSON object, not {other}"),
        )),
    }
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

fn component_known(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM components WHERE name = ?1")?
        .query_row(params![name], |_| Ok(()))
        .optional()
        .map(|r| r.is_some())
}

fn require_component(conn: &Connection, name: &str) -> Result<(), Failure> {
    if component_known(conn, name)? {
        Ok(())
    } else {
        Err(StoreError::UnknownComponent(name.to_owned()).into())
    }
}

/// Header of a stored version.
struct Header {
    version: u64,
    updated_at_ms: u64,
    updated_by: String,
    action: String,
    rollback_of: Option<u64>,
}

const HEADER_COLUMNS: &str = "version, updated_at, updated_by, action, rollback_of";

fn header_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Header> {
    Ok(Header {
        version: row.get(0)?,
        updated_at_ms: row.get(1)?,
        updated_by: row.get(2)?,
        action: row.get(3)?,
        rollback_of: row.get(4)?,
    })
}

fn latest_header(
    conn: &Connection,
    component: &str,
    env: &str,
) -> rusqlite::Result<Option<Header>> {
    conn.prepare_cached(&format!(
        "SELECT {HEADER_COLUMNS} FROM config_versions
         WHERE component_name = ?1 AND environment = ?2
         ORDER BY version DESC LIMIT 1"
    ))?
    .query_row(params![component, env], header_from_row)
    .optional()
}

fn header_at(
    conn: &Connection,
    component: &str,
    env: &str,
    version: u64,
) -> rusqlite::Result<Option<Header>> {
    conn.prepare_cached(&format!(
        "SELECT {HEADER_COLUMNS} FROM config_versions
         WHERE component_name = ?1 AND environment = ?2 AND version = ?3"
    ))?
    .query_row(params![component, env, version], header_from_row)
    .optional()
}

fn values_at(
    conn: &Connection,
    component: &str,
    env: &str,
    version: u64,
) -> rusqlite::Result<BTreeMap<String, String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT config_key, config_value FROM system_config
         WHERE component_name = ?1 AND environment = ?2 AND version = ?3",
    )?;
    let rows = stmt.query_map(params![component, env, version], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    rows.collect()
}

/// The (source environment, version) a version was promoted from, if it was.
fn promotion_at(
    conn: &Connection,
    component: &str,
    env: &str,
    version: u64,
) -> rusqlite::Result<Option<(String, u64)>> {
    conn.prepare_cached(
        "SELECT from_environment, from_version FROM config_promotions
         WHERE component_name = ?1 AND environment = ?2 AND version = ?3",
    )?
    .query_row(params![component, env, version], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?))
    })
    .optional()
}

fn current_snapshot(
    conn: &Connection,
    component: &str,
    env: &str,
) -> rusqlite::Result<ConfigSnapshot> {
    let (version, updated_at_ms, updated_by) = match latest_header(conn, component, env)? {
        Some(h) => (h.version, h.updated_at_ms, h.updated_by),
        None => (0, 0, String::new()),
    };
    let values = if version == 0 {
        BTreeMap::new()
    } else {
        values_at(conn, component, env, version)?
    };
    Ok(ConfigSnapshot {
        component: component.to_owned(),
        environment: env.to_owned(),
        version,
        values,
        updated_at_ms,
        updated_by,
    })
}

/// Writes version `snap.version` (header + one row per key).
fn insert_version(
    conn: &Connection,
    snap: &ConfigSnapshot,
    action: &str,
    rollback_of: Option<u64>,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO config_versions
         (component_name, environment, version, updated_at, updated_by, action, rollback_of)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        snap.component,
        snap.environment,
        snap.version,
        snap.updated_at_ms,
        snap.updated_by,
        action,
        rollback_of
    ])?;
    let mut stmt = conn.prepare_cached(
        "INSERT INTO system_config
         (component_name, config_key, config_value, environment, version, updated_at, updated_by)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for (k, v) in &snap.values {
        stmt.execute(params![
            snap.component,
            k,
            v,
            snap.environment,
            snap.version,
            snap.updated_at_ms,
            snap.updated_by
        ])?;
    }
    Ok(())
}

fn check_expected(expected: Option<u64>, current: u64) -> Result<(), Failure> {
    match expected {
        Some(expected) if expected != current => {
            Err(StoreError::VersionConflict { expected, current }.into())
        }
        _ => Ok(()),
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

/// Checks the inputs of a config change.
fn check_change(
    component: &str,
    environment: &str,
    changes: &Changes,
    by: &str,
) -> Result<(), StoreError> {
    check_name("component", component)?;
    check_name("environment", environment)?;
    check_by(by)?;
    if changes.is_empty() {
        return Err(invalid("changes", "no change (the change set is empty)"));
    }
    for (key, value) in changes {
        check_key(key)?;
        if let Some(value) = value {
            check_value(key, value)?;
        }
    }
    Ok(())
}

/// The body of [`ConfigStore::set`] inside an open write transaction (inputs already
/// checked): a new version on top of the current one.
fn set_in_tx(
    tx: &Transaction<'_>,
    component: &str,
    environment: &str,
    changes: &Changes,
    expected_version: Option<u64>,
    by: &str,
    create: bool,
) -> Result<ConfigSnapshot, Failure> {
    if create {
        tx.prepare_cached(
            "INSERT OR IGNORE INTO components (name, created_at, created_by)
             VALUES (?1, ?2, ?3)",
        )?
        .execute(params![component, now_ms(), by])?;
    }
    require_component(tx, component)?;
    let current = current_snapshot(tx, component, environment)?;
    check_expected(expected_version, current.version)?;
    let mut values = current.values.clone();
    for (key, value) in changes {
        match value {
            Some(v) => {
                values.insert(key.clone(), v.clone());
            }
            None => {
                values.remove(key);
            }
        }
    }
    if values == current.values {
        return Err(invalid(
            "changes",
            format!(
                "no change (version {} already has these values)",
                current.version
            ),
        )
        .into());
    }
    if values.len() > MAX_KEYS {
        return Err(invalid(
            "changes",
            format!(
                "{} keys after the change (at most {MAX_KEYS} per component and environment)",
                values.len()
            ),
        )
        .into());
    }
    let next = ConfigSnapshot {
        component: component.to_owned(),
        environment: environment.to_owned(),
        version: current.version + 1,
        values,
        updated_at_ms: now_ms(),
        updated_by: by.to_owned(),
    };
    insert_version(tx, &next, "set", None)?;
    Ok(next)
}

impl ConfigStore {
    /// Opens (creating if needed) `<data_dir>/agentwire.db`, creating `data_dir` if missing,
    /// and the tables. WAL mode, `synchronous=FULL`, 5 s busy timeout.
    pub fn open(data_dir: &Path) -> Result<ConfigStore, StoreError> {
        let path = data_dir.join(DB_FILE_NAME);
        let location = path.display().to_string();
        std::fs::create_dir_all(data_dir).map_err(|e| {
            map_io(
                &data_dir.display().to_string(),
                "cannot create the data directory",
                &e,
            )
        })?;
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| match e.sqlite_error_code() {
            Some(ErrorCode::CannotOpen) => {
                StoreError::ReadOnly(format!("{location}: cannot open for writing: {e}"))
            }
            _ => map_sql(&location, "cannot open", &e),
        })?;
        let read_only = conn
            .is_readonly(DatabaseName::Main)
            .map_err(|e| map_sql(&location, "cannot open", &e))?;
        if read_only {
            return Err(StoreError::ReadOnly(format!(
                "{location}: cannot open for writing"
            )));
        }
        let store = Self::init(conn, Some(path), location, true)?;
        tracing::info!(path = %store.location, "config store open");
        Ok(store)
    }

    /// A private in-memory database (tests, throwaway brokers).
    pub fn open_in_memory() -> Result<ConfigStore, StoreError> {
        let location = ":memory:".to_owned();
        let conn =
            Connection::open_in_memory().map_err(|e| map_sql(&location, "cannot open", &e))?;
        Self::init(conn, None, location, true)
    }

    fn init(
        conn: Connection,
        path: Option<PathBuf>,
        location: String,
        create_schema: bool,
    ) -> Result<ConfigStore, StoreError> {
        let setup = |conn: &Connection| -> rusqlite::Result<String> {
            conn.busy_timeout(BUSY_TIMEOUT)?;
            let mode: String =
                conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            if create_schema {
                conn.execute_batch(SCHEMA)?;
                conn.execute_batch(rollouts::SCHEMA)?;
                conn.execute_batch(ALERTS_SCHEMA)?;
            }
            Ok(mode)
        };
        let mode = setup(&conn).map_err(|e| map_sql(&location, "cannot initialise", &e))?;
        if path.is_some() && !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %location, journal_mode = %mode, "config store is not in WAL mode");
        }
        Ok(ConfigStore {
            conn: Mutex::new(conn),
            path,
            location,
        })
    }

    /// The database file, or `None` for an in-memory store.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction; commits only if it succeeds.
    fn write<T>(
        &self,
        what: &str,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        self.transaction(TransactionBehavior::Immediate, what, f)
    }

    /// Runs `f` in one read (deferred) transaction, so multi-query reads are consistent.
    fn read<T>(
        &self,
        what: &str,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        self.transaction(TransactionBehavior::Deferred, what, f)
    }

    fn transaction<T>(
        &self,
        behavior: TransactionBehavior,
        what: &str,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.lock();
        let run = |conn: &mut Connection| -> Result<T, Failure> {
            let tx = conn.transaction_with_behavior(behavior)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        };
        run(&mut conn).map_err(|e| match e {
            Failure::Store(e) => e,
            Failure::Sql(e) => map_sql(&self.location, what, &e),
        })
    }

    /// Declares a component if it is not known yet. `Ok(true)` if it was created now.
    pub fn ensure_component(&self, name: &str, by: &str) -> Result<bool, StoreError> {
        check_name("component", name)?;
        check_by(by)?;
        self.write("ensure_component", |tx| {
            let n = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO components (name, created_at, created_by)
                     VALUES (?1, ?2, ?3)",
                )?
                .execute(params![name, now_ms(), by])?;
            Ok(n == 1)
        })
    }

    /// Whether the component is known.
    pub fn component_exists(&self, name: &str) -> Result<bool, StoreError> {
        check_name("component", name)?;
        self.read("component_exists", |tx| Ok(component_known(tx, name)?))
    }

    /// Every known component (sorted by name) with its environments and their current
    /// versions.
    pub fn components(&self) -> Result<Vec<ComponentSummary>, StoreError> {
        self.read("components", |tx| {
            let mut out: Vec<ComponentSummary> = Vec::new();
            let mut index: BTreeMap<String, usize> = BTreeMap::new();
            {
                let mut stmt =
                    tx.prepare_cached("SELECT name, created_at FROM components ORDER BY name")?;
                let rows =
                    stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))?;
                for row in rows {
                    let (component, created_at_ms) = row?;
                    index.insert(component.clone(), out.len());
                    out.push(ComponentSummary {
                        component,
                        environments: Vec::new(),
                        created_at_ms,
                    });
                }
            }
            let mut stmt = tx.prepare_cached(
                "SELECT component_name, environment, MAX(version) FROM config_versions
                 GROUP BY component_name, environment
                 ORDER BY component_name, environment",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, u64>(2)?,
                ))
            })?;
            for row in rows {
                let (component, env, version) = row?;
                if let Some(&i) = index.get(&component) {
                    out[i].environments.push((env, version));
                }
            }
            Ok(out)
        })
    }

    /// Current config; version 0 with empty values when nothing was ever set (component must
    /// exist, else [`StoreError::UnknownComponent`]).
    pub fn current(
        &self,
        component: &str,
        environment: &str,
    ) -> Result<ConfigSnapshot, StoreError> {
        check_name("component", component)?;
        check_name("environment", environment)?;
        self.read("current", |tx| {
            require_component(tx, component)?;
            Ok(current_snapshot(tx, component, environment)?)
        })
    }

    /// Applies `changes` on top of the current values as ONE new version, in one transaction.
    /// `expected_version`: `Some(v)` must equal the current version, else
    /// [`StoreError::VersionConflict`]. An empty change set, or one that changes nothing, is
    /// [`StoreError::Invalid`] ("no change"). Unknown component →
    /// [`StoreError::UnknownComponent`].
    pub fn set(
        &self,
        component: &str,
        environment: &str,
        changes: &Changes,
        expected_version: Option<u64>,
        by: &str,
    ) -> Result<ConfigSnapshot, StoreError> {
        self.set_inner(component, environment, changes, expected_version, by, false)
    }

    /// As [`ConfigStore::set`], declaring the component first when it is unknown, in the same
    /// transaction (a change that fails leaves no declaration behind).
    pub fn set_creating(
        &self,
        component: &str,
        environment: &str,
        changes: &Changes,
        expected_version: Option<u64>,
        by: &str,
    ) -> Result<ConfigSnapshot, StoreError> {
        self.set_inner(component, environment, changes, expected_version, by, true)
    }

    fn set_inner(
        &self,
        component: &str,
        environment: &str,
        changes: &Changes,
        expected_version: Option<u64>,
        by: &str,
        create: bool,
    ) -> Result<ConfigSnapshot, StoreError> {
        check_change(component, environment, changes, by)?;
        self.write("set", |tx| {
            set_in_tx(
                tx,
                component,
                environment,
                changes,
                expected_version,
                by,
                create,
            )
        })
    }

    /// Versions newest first, at most `limit`. Empty when nothing was ever set.
    pub fn history(
        &self,
        component: &str,
        environment: &str,
        limit: usize,
    ) -> Result<Vec<VersionInfo>, StoreError> {
        check_name("component", component)?;
        check_name("environment", environment)?;
        self.read("history", |tx| {
            require_component(tx, component)?;
            let headers = {
                let mut stmt = tx.prepare_cached(&format!(
                    "SELECT {HEADER_COLUMNS} FROM config_versions
                     WHERE component_name = ?1 AND environment = ?2
                     ORDER BY version DESC LIMIT ?3"
                ))?;
                let rows = stmt.query_map(
                    params![component, environment, usize_limit(limit)],
                    header_from_row,
                )?;
                rows.collect::<rusqlite::Result<Vec<Header>>>()?
            };
            let Some(oldest) = headers.last().map(|h| h.version) else {
                return Ok(Vec::new());
            };
            let mut by_version: BTreeMap<u64, BTreeMap<String, String>> = BTreeMap::new();
            {
                let mut stmt = tx.prepare_cached(
                    "SELECT version, config_key, config_value FROM system_config
                     WHERE component_name = ?1 AND environment = ?2 AND version >= ?3",
                )?;
                let rows = stmt.query_map(params![component, environment, oldest], |r| {
                    Ok((
                        r.get::<_, u64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })?;
                for row in rows {
                    let (v, k, val) = row?;
                    by_version.entry(v).or_default().insert(k, val);
                }
            }
            let mut out = Vec::with_capacity(headers.len());
            for h in headers {
                let from = promotion_at(tx, component, environment, h.version)?;
                out.push(
                    VersionInfo {
                        values: by_version.remove(&h.version).unwrap_or_default(),
                        version: h.version,
                        updated_at_ms: h.updated_at_ms,
                        updated_by: h.updated_by,
                        action: h.action,
                        rollback_of: h.rollback_of,
                        promoted_from: None,
                        note: None,
                    }
                    .promoted(from),
                );
            }
            Ok(out)
        })
    }

    /// One stored version ([`StoreError::NoSuchVersion`] if absent, including version 0).
    pub fn version(
        &self,
        component: &str,
        environment: &str,
        version: u64,
    ) -> Result<VersionInfo, StoreError> {
        check_name("component", component)?;
        check_name("environment", environment)?;
        self.read("version", |tx| {
            require_component(tx, component)?;
            let Some(h) = header_at(tx, component, environment, version)? else {
                return Err(StoreError::NoSuchVersion {
                    component: component.to_owned(),
                    environment: environment.to_owned(),
                    version,
                }
                .into());
            };
            let values = values_at(tx, component, environment, version)?;
            let from = promotion_at(tx, component, environment, version)?;
            Ok(VersionInfo {
                version: h.version,
                updated_at_ms: h.updated_at_ms,
                updated_by: h.updated_by,
                action: h.action,
                rollback_of: h.rollback_of,
                values,
                promoted_from: None,
                note: None,
            }
            .promoted(from))
        })
    }

    /// A new version whose values equal those of `to_version` (action `"rollback"`,
    /// `rollback_of = to_version`). `to_version` must be a stored version (≥ 1), else
    /// [`StoreError::NoSuchVersion`]; rolling back to values equal to the current ones is
    /// [`StoreError::Invalid`] ("no change"), like a no-op [`ConfigStore::set`].
    pub fn rollback(
        &self,
        component: &str,
        environment: &str,
        to_version: u64,
        expected_version: Option<u64>,
        by: &str,
    ) -> Result<ConfigSnapshot, StoreError> {
        check_name("component", component)?;
        check_name("environment", environment)?;
        check_by(by)?;
        self.write("rollback", |tx| {
            require_component(tx, component)?;
            let current = current_snapshot(tx, component, environment)?;
            check_expected(expected_version, current.version)?;
            if header_at(tx, component, environment, to_version)?.is_none() {
                return Err(StoreError::NoSuchVersion {
                    component: component.to_owned(),
                    environment: environment.to_owned(),
                    version: to_version,
                }
                .into());
            }
            let values = values_at(tx, component, environment, to_version)?;
            if values == current.values {
                return Err(invalid(
                    "version",
                    format!(
                        "no change (version {to_version} has the same values as the current version {})",
                        current.version
                    ),
                )
                .into());
            }
            let next = ConfigSnapshot {
                component: component.to_owned(),
                environment: environment.to_owned(),
                version: current.version + 1,
                values,
                updated_at_ms: now_ms(),
                updated_by: by.to_owned(),
            };
            insert_version(tx, &next, "rollback", Some(to_version))?;
            Ok(next)
        })
    }

    /// Copies the current values of environment `from` into `to` as one new version of `to`
    /// (history action `"promote"`, noted "promoted from FROM vN"). Returns the new snapshot
    /// and the source version. `expected_version` applies to `to`. Unknown component →
    /// [`StoreError::UnknownComponent`]; `from` without any version →
    /// [`StoreError::UnknownEnvironment`]; `from == to` or values already equal →
    /// [`StoreError::Invalid`].
    pub fn promote(
        &self,
        component: &str,
        from: &str,
        to: &str,
        expected_version: Option<u64>,
        by: &str,
    ) -> Result<(ConfigSnapshot, u64), StoreError> {
        check_name("component", component)?;
        check_name("from", from)?;
        check_name("to", to)?;
        check_by(by)?;
        if from == to {
            return Err(invalid(
                "to",
                format!("cannot promote {from:?} into itself"),
            ));
        }
        self.write("promote", |tx| {
            require_component(tx, component)?;
            let source = current_snapshot(tx, component, from)?;
            if source.version == 0 {
                return Err(StoreError::UnknownEnvironment {
                    component: component.to_owned(),
                    environment: from.to_owned(),
                }
                .into());
            }
            let current = current_snapshot(tx, component, to)?;
            check_expected(expected_version, current.version)?;
            if source.values == current.values && current.version > 0 {
                return Err(invalid(
                    "to",
                    format!(
                        "no change ({to} version {} already has the values of {from} version {})",
                        current.version, source.version
                    ),
                )
                .into());
            }
            let next = ConfigSnapshot {
                component: component.to_owned(),
                environment: to.to_owned(),
                version: current.version + 1,
                values: source.values,
                updated_at_ms: now_ms(),
                updated_by: by.to_owned(),
            };
            insert_version(tx, &next, "set", None)?;
            tx.prepare_cached(
                "INSERT INTO config_promotions
                 (component_name, environment, version, from_environment, from_version)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![component, to, next.version, from, source.version])?;
            Ok((next, source.version))
        })
    }

    /// Every (component, environment) current snapshot, sorted, for loading the broker's
    /// in-memory cache at start. Pairs that never had a version are not listed.
    pub fn all_current(&self) -> Result<Vec<ConfigSnapshot>, StoreError> {
        const LATEST: &str = "SELECT component_name, environment, MAX(version) AS version
                              FROM config_versions GROUP BY component_name, environment";
        self.read("all_current", |tx| {
            let mut out: BTreeMap<(String, String), ConfigSnapshot> = BTreeMap::new();
            {
                let mut stmt = tx.prepare_cached(&format!(
                    "SELECT v.component_name, v.environment, v.version, v.updated_at, v.updated_by
                     FROM config_versions v
                     JOIN ({LATEST}) m
                       ON v.component_name = m.component_name
                      AND v.environment = m.environment
                      AND v.version = m.version"
                ))?;
                let rows = stmt.query_map([], |r| {
                    Ok(ConfigSnapshot {
                        component: r.get(0)?,
                        environment: r.get(1)?,
                        version: r.get(2)?,
                        values: BTreeMap::new(),
                        updated_at_ms: r.get(3)?,
                        updated_by: r.get(4)?,
                    })
                })?;
                for row in rows {
                    let snap = row?;
                    out.insert((snap.component.clone(), snap.environment.clone()), snap);
                }
            }
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT s.component_name, s.environment, s.config_key, s.config_value
                 FROM system_config s
                 JOIN ({LATEST}) m
                   ON s.component_name = m.component_name
                  AND s.environment = m.environment
                  AND s.version = m.version"
            ))?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?;
            for row in rows {
                let (c, e, k, v) = row?;
                if let Some(snap) = out.get_mut(&(c, e)) {
                    snap.values.insert(k, v);
                }
            }
            Ok(out.into_values().collect())
        })
    }

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

    /// Test helper: caps the database at its current size (`PRAGMA max_page_count`), so
    /// any write needing a new page fails with `SQLITE_FULL`.
    #[cfg(test)]
    fn cap_pages_at_current_size(&self) -> rusqlite::Result<u64> {
        let conn = self.conn.lock();
        let pages: u64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
            r.get::<_, u64>(0)
        })
    }

    /// Test helper: `PRAGMA query_only` on this store's connection.
    #[cfg(test)]
    fn set_query_only(&self, on: bool) -> rusqlite::Result<()> {
        self.conn
            .lock()
            .pragma_update(None, "query_only", if on { 1 } else { 0 })
    }

    /// Test helper: opens an existing store's database with `SQLITE_OPEN_READ_ONLY`.
    #[cfg(test)]
    fn open_read_only(data_dir: &Path) -> Result<ConfigStore, StoreError> {
        let path = data_dir.join(DB_FILE_NAME);
        let location = path.display().to_string();
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| map_sql(&location, "cannot open", &e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| map_sql(&location, "cannot open", &e))?;
        Ok(ConfigStore {
            conn: Mutex::new(conn),
            path: Some(path),
            location,
        })
    }
}

/// The alert history.
impl ConfigStore {
    /// Records firings and resolutions: a firing inserts a row, its resolution updates it
    /// (same rule, labels and firing time).
    pub fn record_alerts(&self, alerts: &[crate::admin::alerts::Alert]) -> Result<(), StoreError> {
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
    ) -> Result<Vec<crate::admin::alerts::Alert>, StoreError> {
        self.read("alerts_history", |tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT rule, labels, state, value, threshold, summary, active_since, fired_at,
                        resolved_at, notified
                 FROM alerts_history WHERE (?1 IS NULL OR state = ?1)
                 ORDER BY fired_at DESC, id DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![state, usize_limit(limit)], |r| {
                let labels = parse_json("labels", &r.get::<_, String>(1)?)?;
                Ok(crate::admin::alerts::Alert {
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
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Barrier};

    /// A unique directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
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

    fn changes(items: &[(&str, Option<&str>)]) -> Changes {
        items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.map(str::to_owned)))
            .collect()
    }

    fn map(items: &[(&str, &str)]) -> BTreeMap<String, String> {
        items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn promote_copies_values_as_a_new_version_and_records_it() {
        let s = store_with("planner");
        s.set(
            "planner",
            "test",
            &changes(&[("a", Some("1")), ("b", Some("2"))]),
            None,
            "dev",
        )
        .unwrap();
        s.set(
            "planner",
            "test",
            &changes(&[("b", Some("3"))]),
            None,
            "dev",
        )
        .unwrap();
        s.set(
            "planner",
            "prod",
            &changes(&[("a", Some("0")), ("old", Some("x"))]),
            None,
            "ops",
        )
        .unwrap();
        let (snap, from_v) = s
            .promote("planner", "test", "prod", Some(1), "alice")
            .unwrap();
        assert_eq!(from_v, 2);
        assert_eq!(snap.version, 2);
        assert_eq!(snap.environment, "prod");
        assert_eq!(snap.values, map(&[("a", "1"), ("b", "3")]));
        assert_eq!(s.current("planner", "prod").unwrap(), snap);
        let h = s.history("planner", "prod", 10).unwrap();
        assert_eq!(h[0].action, "promote");
        assert_eq!(h[0].updated_by, "alice");
        assert_eq!(h[0].note.as_deref(), Some("promoted from test v2"));
        assert_eq!(
            h[0].promoted_from,
            Some(PromotedFrom {
                environment: "test".into(),
                version: 2
            })
        );
        assert_eq!(h[1].action, "set");
        assert_eq!(h[1].note, None);
        assert_eq!(s.version("planner", "prod", 2).unwrap().action, "promote");
        // Into an environment that never had a version.
        let (snap, _) = s
            .promote("planner", "test", "staging", Some(0), "alice")
            .unwrap();
        assert_eq!(snap.version, 1);
        // Errors: stale expected version, nothing to copy, unknown component, no-op, itself.
        assert!(matches!(
            s.promote("planner", "test", "prod", Some(1), "x"),
            Err(StoreError::VersionConflict {
                expected: 1,
                current: 2
            })
        ));
        assert!(matches!(
            s.promote("planner", "dev", "prod", None, "x"),
            Err(StoreError::UnknownEnvironment { .. })
        ));
        assert!(matches!(
            s.promote("nope", "test", "prod", None, "x"),
            Err(StoreError::UnknownComponent(_))
        ));
        assert!(matches!(
            s.promote("planner", "test", "prod", None, "x"),
            Err(StoreError::Invalid { .. })
        ));
        assert!(matches!(
            s.promote("planner", "test", "test", None, "x"),
            Err(StoreError::Invalid { .. })
        ));
        // A rollback of the promoted environment is an ordinary rollback.
        let r = s.rollback("planner", "prod", 1, None, "ops").unwrap();
        assert_eq!(r.values, map(&[("a", "0"), ("old", "x")]));
        assert_eq!(
            s.history("planner", "prod", 1).unwrap()[0].action,
            "rollback"
        );
    }

    fn store_with(component: &str) -> ConfigStore {
        let s = ConfigStore::open_in_memory().unwrap();
        assert!(s.ensure_component(component, "test").unwrap());
        s
    }

    fn row_counts(s: &ConfigStore) -> (u64, u64) {
        let conn = s.conn.lock();
        let rows = conn
            .query_row("SELECT COUNT(*) FROM system_config", [], |r| r.get(0))
            .unwrap();
        let headers = conn
            .query_row("SELECT COUNT(*) FROM config_versions", [], |r| r.get(0))
            .unwrap();
        (rows, headers)
    }

    #[test]
    fn set_creating_declares_only_when_the_change_is_written() {
        let s = ConfigStore::open_in_memory().unwrap();
        let bad = s.set_creating(
            "svc",
            "default",
            &changes(&[("bad key", Some("1"))]),
            None,
            "t",
        );
        assert!(matches!(bad, Err(StoreError::Invalid { .. })), "{bad:?}");
        let stale = s.set_creating(
            "svc",
            "default",
            &changes(&[("a", Some("1"))]),
            Some(3),
            "t",
        );
        assert!(
            matches!(stale, Err(StoreError::VersionConflict { .. })),
            "{stale:?}"
        );
        assert!(
            !s.component_exists("svc").unwrap(),
            "a failed change declares nothing"
        );
        let v1 = s
            .set_creating("svc", "default", &changes(&[("a", Some("1"))]), None, "t")
            .unwrap();
        assert_eq!(v1.version, 1);
        assert!(s.component_exists("svc").unwrap());
        assert!(matches!(
            s.set("other", "default", &changes(&[("a", Some("1"))]), None, "t"),
            Err(StoreError::UnknownComponent(_))
        ));
    }

    #[test]
    fn set_current_history_round_trip() {
        let s = store_with("svc");
        let empty = s.current("svc", "prod").unwrap();
        assert_eq!(empty.version, 0);
        assert!(empty.values.is_empty());
        assert_eq!(empty.updated_by, "");

        let v1 = s
            .set(
                "svc",
                "prod",
                &changes(&[("a", Some("1")), ("b.c", Some("two"))]),
                Some(0),
                "alice",
            )
            .unwrap();
        assert_eq!(v1.version, 1);
        assert_eq!(v1.values, map(&[("a", "1"), ("b.c", "two")]));
        assert_eq!(v1.updated_by, "alice");
        assert!(v1.updated_at_ms > 0);
        assert_eq!(s.current("svc", "prod").unwrap(), v1);

        let v2 = s
            .set("svc", "prod", &changes(&[("a", Some("3"))]), None, "bob")
            .unwrap();
        assert_eq!(v2.version, 2);
        assert_eq!(v2.values, map(&[("a", "3"), ("b.c", "two")]));
        assert_eq!(s.current("svc", "prod").unwrap(), v2);

        let h = s.history("svc", "prod", 10).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].version, 2);
        assert_eq!(h[0].values, v2.values);
        assert_eq!(h[0].updated_by, "bob");
        assert_eq!(h[0].action, "set");
        assert_eq!(h[0].rollback_of, None);
        assert_eq!(h[1].version, 1);
        assert_eq!(h[1].values, v1.values);
        assert_eq!(h[1].updated_by, "alice");

        let limited = s.history("svc", "prod", 1).unwrap();
        assert_eq!(limited.len(), 1);
        assert_eq!(limited[0].version, 2);
        assert!(s.history("svc", "prod", 0).unwrap().is_empty());
        assert!(s.history("svc", "staging", 10).unwrap().is_empty());

        let one = s.version("svc", "prod", 1).unwrap();
        assert_eq!(one, h[1]);

        let comps = s.components().unwrap();
        assert_eq!(comps.len(), 1);
        assert_eq!(comps[0].component, "svc");
        assert_eq!(comps[0].environments, vec![("prod".to_owned(), 2)]);
        assert!(comps[0].created_at_ms > 0);
    }

    #[test]
    fn versions_increase_by_one_per_change() {
        let s = store_with("svc");
        for i in 1..=20u64 {
            let v = s
                .set(
                    "svc",
                    "dev",
                    &changes(&[("k", Some(&i.to_string())), (&format!("k{i}"), Some("x"))]),
                    Some(i - 1),
                    "t",
                )
                .unwrap();
            assert_eq!(v.version, i);
            assert_eq!(v.values.len(), 1 + i as usize);
        }
        let h = s.history("svc", "dev", 100).unwrap();
        let versions: Vec<u64> = h.iter().map(|v| v.version).collect();
        assert_eq!(versions, (1..=20).rev().collect::<Vec<_>>());
        // Each version is a full snapshot: version 5 holds k=5 and k1..k5.
        let v5 = s.version("svc", "dev", 5).unwrap();
        assert_eq!(v5.values.len(), 6);
        assert_eq!(v5.values["k"], "5");
    }

    #[test]
    fn none_deletes_a_key_and_an_empty_version_still_exists() {
        let s = store_with("svc");
        s.set(
            "svc",
            "dev",
            &changes(&[("a", Some("1")), ("b", Some("2"))]),
            None,
            "t",
        )
        .unwrap();
        let v2 = s
            .set("svc", "dev", &changes(&[("a", None)]), Some(1), "t")
            .unwrap();
        assert_eq!(v2.version, 2);
        assert_eq!(v2.values, map(&[("b", "2")]));
        let v3 = s
            .set("svc", "dev", &changes(&[("b", None)]), Some(2), "t")
            .unwrap();
        assert_eq!(v3.version, 3);
        assert!(v3.values.is_empty());
        let cur = s.current("svc", "dev").unwrap();
        assert_eq!(cur.version, 3);
        assert!(cur.values.is_empty());
        assert!(s.version("svc", "dev", 3).unwrap().values.is_empty());
        let all = s.all_current().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].version, 3);
        assert!(all[0].values.is_empty());
        // The earlier versions are untouched.
        assert_eq!(
            s.version("svc", "dev", 1).unwrap().values,
            map(&[("a", "1"), ("b", "2")])
        );
    }

    #[test]
    fn no_op_changes_are_rejected() {
        let s = store_with("svc");
        let err = s.set("svc", "dev", &Changes::new(), None, "t").unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Invalid {
                    field: "changes",
                    ..
                }
            ),
            "{err}"
        );
        // Deleting a key that does not exist changes nothing.
        let err = s
            .set("svc", "dev", &changes(&[("nope", None)]), None, "t")
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Invalid {
                    field: "changes",
                    ..
                }
            ),
            "{err}"
        );
        s.set("svc", "dev", &changes(&[("a", Some("1"))]), None, "t")
            .unwrap();
        // Setting the same value again changes nothing.
        let err = s
            .set(
                "svc",
                "dev",
                &changes(&[("a", Some("1")), ("x", None)]),
                None,
                "t",
            )
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Invalid {
                    field: "changes",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("no change"), "{err}");
        assert_eq!(s.current("svc", "dev").unwrap().version, 1);
        assert_eq!(row_counts(&s), (1, 1));
    }

    #[test]
    fn stale_expected_version_conflicts() {
        let s = store_with("svc");
        s.set("svc", "dev", &changes(&[("a", Some("1"))]), Some(0), "t")
            .unwrap();
        s.set("svc", "dev", &changes(&[("a", Some("2"))]), Some(1), "t")
            .unwrap();
        let err = s
            .set("svc", "dev", &changes(&[("a", Some("3"))]), Some(1), "t")
            .unwrap_err();
        match err {
            StoreError::VersionConflict { expected, current } => {
                assert_eq!((expected, current), (1, 2));
            }
            other => panic!("expected a conflict, got {other}"),
        }
        let err = s.rollback("svc", "dev", 1, Some(5), "t").unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::VersionConflict {
                    expected: 5,
                    current: 2
                }
            ),
            "{err}"
        );
        let cur = s.current("svc", "dev").unwrap();
        assert_eq!(cur.version, 2);
        assert_eq!(cur.values, map(&[("a", "2")]));
    }

    #[test]
    fn rollback_creates_a_new_version_with_the_old_values() {
        let s = store_with("svc");
        let v1 = s
            .set(
                "svc",
                "dev",
                &changes(&[("a", Some("1")), ("b", Some("x"))]),
                None,
                "t",
            )
            .unwrap();
        s.set(
            "svc",
            "dev",
            &changes(&[("a", Some("2")), ("b", None)]),
            None,
            "t",
        )
        .unwrap();
        s.set("svc", "dev", &changes(&[("c", Some("3"))]), None, "t")
            .unwrap();
        let r = s.rollback("svc", "dev", 1, Some(3), "ops").unwrap();
        assert_eq!(r.version, 4);
        assert_eq!(r.values, v1.values);
        assert_eq!(r.updated_by, "ops");
        assert_eq!(s.current("svc", "dev").unwrap(), r);

        let h = s.history("svc", "dev", 10).unwrap();
        assert_eq!(h.len(), 4);
        assert_eq!(h[0].version, 4);
        assert_eq!(h[0].action, "rollback");
        assert_eq!(h[0].rollback_of, Some(1));
        assert_eq!(h[0].values, v1.values);
        assert!(h[1..]
            .iter()
            .all(|v| v.action == "set" && v.rollback_of.is_none()));

        // Rolling back to the values already current is a no-op.
        let err = s.rollback("svc", "dev", 1, None, "ops").unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Invalid {
                    field: "version",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(s.current("svc", "dev").unwrap().version, 4);
    }

    #[test]
    fn missing_versions_are_reported() {
        let s = store_with("svc");
        s.set("svc", "dev", &changes(&[("a", Some("1"))]), None, "t")
            .unwrap();
        for v in [0, 2, 99] {
            match s.version("svc", "dev", v).unwrap_err() {
                StoreError::NoSuchVersion {
                    component,
                    environment,
                    version,
                } => {
                    assert_eq!(
                        (component.as_str(), environment.as_str(), version),
                        ("svc", "dev", v)
                    );
                }
                other => panic!("expected NoSuchVersion, got {other}"),
            }
        }
        let err = s.rollback("svc", "dev", 7, None, "t").unwrap_err();
        assert!(
            matches!(err, StoreError::NoSuchVersion { version: 7, .. }),
            "{err}"
        );
        // Version 1 exists in "dev", not in "prod".
        let err = s.rollback("svc", "prod", 1, None, "t").unwrap_err();
        assert!(
            matches!(err, StoreError::NoSuchVersion { version: 1, .. }),
            "{err}"
        );
        assert_eq!(row_counts(&s), (1, 1));
    }

    #[test]
    fn unknown_components_are_rejected() {
        let s = ConfigStore::open_in_memory().unwrap();
        assert!(!s.component_exists("ghost").unwrap());
        let is_unknown =
            |e: StoreError| matches!(e, StoreError::UnknownComponent(ref c) if c == "ghost");
        assert!(is_unknown(s.current("ghost", "dev").unwrap_err()));
        assert!(is_unknown(
            s.set("ghost", "dev", &changes(&[("a", Some("1"))]), None, "t")
                .unwrap_err()
        ));
        assert!(is_unknown(s.history("ghost", "dev", 5).unwrap_err()));
        assert!(is_unknown(s.version("ghost", "dev", 1).unwrap_err()));
        assert!(is_unknown(
            s.rollback("ghost", "dev", 1, None, "t").unwrap_err()
        ));
        let msg = s.current("ghost", "dev").unwrap_err().to_string();
        assert!(msg.contains("unknown component \"ghost\""), "{msg}");

        assert!(s.ensure_component("ghost", "inst-1").unwrap());
        assert!(!s.ensure_component("ghost", "inst-2").unwrap());
        assert!(s.component_exists("ghost").unwrap());
        assert_eq!(s.current("ghost", "dev").unwrap().version, 0);
        let comps = s.components().unwrap();
        assert_eq!(comps.len(), 1);
        assert!(comps[0].environments.is_empty());
        assert!(s.all_current().unwrap().is_empty());
    }

    #[test]
    fn invalid_input_is_rejected_naming_the_field() {
        let s = store_with("svc");
        let field_of = |r: Result<ConfigSnapshot, StoreError>| match r {
            Err(StoreError::Invalid { field, .. }) => field,
            other => panic!("expected Invalid, got {other:?}"),
        };
        let ok = changes(&[("a", Some("1"))]);
        let long_name = "x".repeat(129);
        for bad in ["", "a b", "a.b", "é", long_name.as_str()] {
            assert_eq!(field_of(s.set(bad, "dev", &ok, None, "t")), "component");
            assert_eq!(field_of(s.set("svc", bad, &ok, None, "t")), "environment");
            assert_eq!(field_of(s.current(bad, "dev")), "component");
            assert!(matches!(
                s.ensure_component(bad, "t"),
                Err(StoreError::Invalid {
                    field: "component",
                    ..
                })
            ));
        }
        assert!(s.ensure_component(&"x".repeat(128), "t").unwrap());

        let long_key = "k".repeat(257);
        for bad in ["", ".a", "a.", ".", "a b", "a/b", "a=b", long_key.as_str()] {
            assert_eq!(
                field_of(s.set("svc", "dev", &changes(&[(bad, Some("v"))]), None, "t")),
                "key",
                "{bad:?}"
            );
        }
        let good_keys = ["a.b-c_D9", &"k".repeat(256)].map(str::to_owned);
        for good in &good_keys {
            s.set("svc", "dev", &changes(&[(good, Some("v"))]), None, "t")
                .unwrap();
        }

        let big = "v".repeat(MAX_VALUE_LEN + 1);
        assert_eq!(
            field_of(s.set("svc", "dev", &changes(&[("a", Some(&big))]), None, "t")),
            "value"
        );
        assert_eq!(
            field_of(s.set("svc", "dev", &changes(&[("a", Some("x\0y"))]), None, "t")),
            "value"
        );
        let max = "v".repeat(MAX_VALUE_LEN);
        s.set("svc", "dev", &changes(&[("a", Some(&max))]), None, "t")
            .unwrap();
        assert_eq!(s.current("svc", "dev").unwrap().values["a"], max);

        assert_eq!(
            field_of(s.set("svc", "dev", &ok, None, &"b".repeat(129))),
            "by"
        );
        assert_eq!(
            field_of(s.rollback("svc", "dev", 1, None, &"b".repeat(129))),
            "by"
        );

        // At most MAX_KEYS keys after the change.
        let v_before = s.current("svc", "dev").unwrap();
        let n = MAX_KEYS - v_before.values.len();
        let fill: Changes = (0..n)
            .map(|i| (format!("f{i}"), Some("v".to_owned())))
            .collect();
        let full = s.set("svc", "dev", &fill, None, "t").unwrap();
        assert_eq!(full.values.len(), MAX_KEYS);
        assert_eq!(
            field_of(s.set(
                "svc",
                "dev",
                &changes(&[("one.more", Some("v"))]),
                None,
                "t"
            )),
            "changes"
        );
        // Replacing one key by another keeps the count and is fine.
        s.set(
            "svc",
            "dev",
            &changes(&[("f0", None), ("one.more", Some("v"))]),
            None,
            "t",
        )
        .unwrap();
    }

    #[test]
    fn environments_are_independent() {
        let s = store_with("svc");
        s.ensure_component("other", "t").unwrap();
        s.set("svc", "dev", &changes(&[("a", Some("dev"))]), Some(0), "t")
            .unwrap();
        s.set("svc", "dev", &changes(&[("a", Some("dev2"))]), Some(1), "t")
            .unwrap();
        let prod = s
            .set(
                "svc",
                "prod",
                &changes(&[("a", Some("prod"))]),
                Some(0),
                "t",
            )
            .unwrap();
        assert_eq!(prod.version, 1);
        s.set("other", "dev", &changes(&[("z", Some("1"))]), Some(0), "t")
            .unwrap();
        assert_eq!(
            s.current("svc", "dev").unwrap().values,
            map(&[("a", "dev2")])
        );
        assert_eq!(
            s.current("svc", "prod").unwrap().values,
            map(&[("a", "prod")])
        );
        assert_eq!(s.current("svc", "staging").unwrap().version, 0);
        assert_eq!(s.history("svc", "prod", 10).unwrap().len(), 1);
        assert_eq!(s.history("svc", "dev", 10).unwrap().len(), 2);

        let all = s.all_current().unwrap();
        let summary: Vec<(&str, &str, u64)> = all
            .iter()
            .map(|c| (c.component.as_str(), c.environment.as_str(), c.version))
            .collect();
        assert_eq!(
            summary,
            vec![("other", "dev", 1), ("svc", "dev", 2), ("svc", "prod", 1)]
        );
        assert_eq!(all[1].values, map(&[("a", "dev2")]));

        let comps = s.components().unwrap();
        assert_eq!(comps.len(), 2);
        assert_eq!(comps[0].component, "other");
        assert_eq!(comps[1].component, "svc");
        assert_eq!(
            comps[1].environments,
            vec![("dev".to_owned(), 2), ("prod".to_owned(), 1)]
        );
    }

    #[test]
    fn data_survives_reopening() {
        let dir = TempDir::new("reopen");
        let nested = dir.0.join("nested").join("data");
        let (history, cur) = {
            let s = ConfigStore::open(&nested).unwrap();
            assert_eq!(s.path(), Some(nested.join(DB_FILE_NAME).as_path()));
            let conn = s.conn.lock();
            let mode: String = conn
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
            let sync: i64 = conn
                .query_row("PRAGMA synchronous", [], |r| r.get(0))
                .unwrap();
            assert_eq!(sync, 2, "synchronous=FULL");
            drop(conn);
            s.ensure_component("svc", "t").unwrap();
            s.set("svc", "dev", &changes(&[("a", Some("1"))]), None, "t")
                .unwrap();
            s.set("svc", "dev", &changes(&[("b", Some("2"))]), None, "t")
                .unwrap();
            s.rollback("svc", "dev", 1, None, "t").unwrap();
            s.record_metrics(&[sample("m", 1.5, 10)]).unwrap();
            (
                s.history("svc", "dev", 10).unwrap(),
                s.current("svc", "dev").unwrap(),
            )
        };
        let s = ConfigStore::open(&nested).unwrap();
        assert!(s.component_exists("svc").unwrap());
        assert_eq!(s.current("svc", "dev").unwrap(), cur);
        assert_eq!(s.history("svc", "dev", 10).unwrap(), history);
        assert_eq!(s.all_current().unwrap(), vec![cur]);
        assert_eq!(
            s.metrics_since(0, None, 10).unwrap(),
            vec![sample("m", 1.5, 10)]
        );
        assert!(ConfigStore::open_in_memory().unwrap().path().is_none());
    }

    #[test]
    fn open_fails_cleanly_when_the_data_dir_is_a_file() {
        let dir = TempDir::new("notadir");
        std::fs::create_dir_all(&dir.0).unwrap();
        let file = dir.0.join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = ConfigStore::open(&file).unwrap_err();
        assert!(matches!(err, StoreError::Storage(_)), "{err}");
        assert!(err.to_string().contains("file"), "{err}");
    }

    #[test]
    fn disk_full_leaves_the_previous_version_current() {
        let dir = TempDir::new("full");
        let s = ConfigStore::open(&dir.0).unwrap();
        s.ensure_component("svc", "t").unwrap();
        let v1 = s
            .set("svc", "dev", &changes(&[("a", Some("1"))]), None, "t")
            .unwrap();
        let before = row_counts(&s);
        s.cap_pages_at_current_size().unwrap();
        // 100 values of 60 KB cannot fit in the pages already allocated.
        let big = "x".repeat(60_000);
        let many: Changes = (0..100)
            .map(|i| (format!("k{i}"), Some(big.clone())))
            .collect();
        let err = s.set("svc", "dev", &many, Some(1), "t").unwrap_err();
        assert!(matches!(err, StoreError::Full(_)), "{err}");
        assert!(
            err.to_string().starts_with("the data disk is full: "),
            "{err}"
        );
        assert!(err.to_string().contains(DB_FILE_NAME), "{err}");
        assert_eq!(s.current("svc", "dev").unwrap(), v1);
        assert_eq!(row_counts(&s), before, "nothing partial");
        // Metrics too: all or nothing.
        let samples: Vec<MetricSample> = (0..2_000u32)
            .map(|i| MetricSample {
                metadata: serde_json::json!({ "pad": "p".repeat(500) }),
                ..sample("m", f64::from(i), i.into())
            })
            .collect();
        let err = s.record_metrics(&samples).unwrap_err();
        assert!(matches!(err, StoreError::Full(_)), "{err}");
        assert!(s.metrics_since(0, None, 10).unwrap().is_empty());
        // After reopening (no cap) the store works and v1 is still current.
        drop(s);
        let s = ConfigStore::open(&dir.0).unwrap();
        assert_eq!(s.current("svc", "dev").unwrap(), v1);
        s.set("svc", "dev", &many, Some(1), "t").unwrap();
    }

    #[test]
    fn read_only_databases_report_read_only() {
        let dir = TempDir::new("ro");
        let rw = ConfigStore::open(&dir.0).unwrap();
        rw.ensure_component("svc", "t").unwrap();
        let v1 = rw
            .set("svc", "dev", &changes(&[("a", Some("1"))]), None, "t")
            .unwrap();

        let ro = ConfigStore::open_read_only(&dir.0).unwrap();
        assert_eq!(ro.current("svc", "dev").unwrap(), v1);
        let err = ro
            .set("svc", "dev", &changes(&[("a", Some("2"))]), None, "t")
            .unwrap_err();
        assert!(matches!(err, StoreError::ReadOnly(_)), "{err}");
        let err = ro.ensure_component("new", "t").unwrap_err();
        assert!(matches!(err, StoreError::ReadOnly(_)), "{err}");
        let err = ro.record_metrics(&[sample("m", 1.0, 1)]).unwrap_err();
        assert!(matches!(err, StoreError::ReadOnly(_)), "{err}");

        rw.set_query_only(true).unwrap();
        let err = rw
            .set("svc", "dev", &changes(&[("b", Some("2"))]), None, "t")
            .unwrap_err();
        assert!(matches!(err, StoreError::ReadOnly(_)), "{err}");
        assert_eq!(rw.current("svc", "dev").unwrap(), v1);
        rw.set_query_only(false).unwrap();
        rw.set("svc", "dev", &changes(&[("b", Some("2"))]), None, "t")
            .unwrap();
    }

    fn sample(name: &str, value: f64, ts: u64) -> MetricSample {
        MetricSample {
            metric_name: name.to_owned(),
            metric_value: value,
            component_name: Some("svc".to_owned()),
            timestamp_ms: ts,
            tags: serde_json::json!({ "shard": "0" }),
            metadata: serde_json::json!({}),
        }
    }

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

    /// Runs `rounds` rounds in which 4 threads read the current version, wait for each
    /// other, then all `set` with that expected version: exactly one must win per round.
    fn race(stores: Vec<Arc<ConfigStore>>, rounds: u64) {
        let threads = stores.len();
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = stores
            .into_iter()
            .enumerate()
            .map(|(t, s)| {
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    let mut wins = Vec::new();
                    for round in 0..rounds {
                        let expected = s.current("svc", "dev").unwrap().version;
                        barrier.wait();
                        let value = format!("t{t}-r{round}");
                        match s.set(
                            "svc",
                            "dev",
                            &changes(&[("k", Some(&value))]),
                            Some(expected),
                            "t",
                        ) {
                            Ok(snap) => {
                                assert_eq!(snap.version, expected + 1);
                                wins.push(snap.version);
                            }
                            Err(StoreError::VersionConflict {
                                expected: e,
                                current,
                            }) => {
                                assert_eq!(e, expected);
                                assert_eq!(current, expected + 1);
                            }
                            Err(other) => panic!("unexpected error {other}"),
                        }
                        // Everyone finishes the round before anyone reads the next version.
                        barrier.wait();
                    }
                    wins
                })
            })
            .collect();
        let mut wins: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        wins.sort_unstable();
        assert_eq!(
            wins,
            (1..=rounds).collect::<Vec<_>>(),
            "exactly one winner per version"
        );
    }

    #[test]
    fn concurrent_sets_one_winner_per_version_shared_store() {
        let s = Arc::new(store_with("svc"));
        race(vec![Arc::clone(&s); 4], 25);
        let h = s.history("svc", "dev", 100).unwrap();
        assert_eq!(h.len(), 25);
        assert_eq!(s.current("svc", "dev").unwrap().version, 25);
    }

    #[test]
    fn concurrent_sets_one_winner_per_version_separate_connections() {
        let dir = TempDir::new("race");
        let first = ConfigStore::open(&dir.0).unwrap();
        first.ensure_component("svc", "t").unwrap();
        let mut stores = vec![Arc::new(first)];
        for _ in 1..4 {
            stores.push(Arc::new(ConfigStore::open(&dir.0).unwrap()));
        }
        let check = Arc::clone(&stores[0]);
        race(stores, 15);
        assert_eq!(check.current("svc", "dev").unwrap().version, 15);
        assert_eq!(check.history("svc", "dev", 100).unwrap().len(), 15);
    }

    #[test]
    fn alert_history_round_trip() {
        let s = ConfigStore::open_in_memory().expect("open");
        let mut a = crate::admin::alerts::Alert {
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
