//! Opening the database (`<data_dir>/agentwire.db`, or a private in-memory one), its schema
//! (every table is created when missing, so an older database gains the newer tables on open),
//! the pragmas (WAL, `synchronous=FULL`, busy timeout), and the transactions every store
//! operation runs in.

use std::path::{Path, PathBuf};
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{Connection, DatabaseName, ErrorCode, OpenFlags, Transaction, TransactionBehavior};

use super::{map_io, map_sql, rollouts, ConfigStore, Failure, StoreError, DB_FILE_NAME};

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
    pub(super) fn write<T>(
        &self,
        what: &str,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        self.transaction(TransactionBehavior::Immediate, what, f)
    }

    /// Runs `f` in one read (deferred) transaction, so multi-query reads are consistent.
    pub(super) fn read<T>(
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::test_support::{changes, row_counts, sample, TempDir};
    use super::super::{Changes, MetricSample};
    use super::*;

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
}
