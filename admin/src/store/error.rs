//! What can go wrong in the store: [`StoreError`], the internal `Failure` a transaction body
//! returns, and how SQLite and I/O errors (with the database location) map onto [`StoreError`]
//! (`SQLITE_FULL` → `Full`, `SQLITE_READONLY` → `ReadOnly`, …).

use rusqlite::ErrorCode;

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

/// Internal failure: either already a [`StoreError`] or a raw SQLite error still to be
/// mapped with the database location.
pub(super) enum Failure {
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

pub(super) fn map_sql(location: &str, what: &str, e: &rusqlite::Error) -> StoreError {
    let msg = format!("{location}: {what}: {e}");
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StoreError::Full(msg),
        Some(ErrorCode::ReadOnly) => StoreError::ReadOnly(msg),
        _ => StoreError::Storage(msg),
    }
}

pub(super) fn map_io(location: &str, what: &str, e: &std::io::Error) -> StoreError {
    let msg = format!("{location}: {what}: {e}");
    match e.kind() {
        std::io::ErrorKind::StorageFull => StoreError::Full(msg),
        std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied => {
            StoreError::ReadOnly(msg)
        }
        _ => StoreError::Storage(msg),
    }
}

pub(super) fn invalid(field: &'static str, reason: impl Into<String>) -> StoreError {
    StoreError::Invalid {
        field,
        reason: reason.into(),
    }
}
