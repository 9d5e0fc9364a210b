//! How config versions are stored: the snapshot and history types, the rows of
//! `config_versions` (one header per version), `system_config` (one row per key and version)
//! and `config_promotions`, and writing a new version on top of the current one.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::{invalid, now_ms, require_component, Failure, StoreError, MAX_KEYS};

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
    pub(super) fn promoted(mut self, from: Option<(String, u64)>) -> VersionInfo {
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

/// One change: `Some(value)` sets a key, `None` deletes it.
pub type Changes = BTreeMap<String, Option<String>>;

/// One config change as asked for: which component and environment, what changes, guarded by
/// which version, whether an unknown component is declared, and who asks.
#[derive(Debug, Clone, Copy)]
pub struct ChangeRequest<'a> {
    /// The component.
    pub component: &'a str,
    /// The environment.
    pub environment: &'a str,
    /// Keys to set (`Some`) or delete (`None`).
    pub changes: &'a Changes,
    /// Refused (409) unless the current version is this one.
    pub expected_version: Option<u64>,
    /// Declares the component when it is unknown (in the same transaction).
    pub create: bool,
    /// Who asks (recorded with the version).
    pub by: &'a str,
}

/// Header of a stored version.
pub(super) struct Header {
    pub(super) version: u64,
    pub(super) updated_at_ms: u64,
    pub(super) updated_by: String,
    pub(super) action: String,
    pub(super) rollback_of: Option<u64>,
}

pub(super) const HEADER_COLUMNS: &str = "version, updated_at, updated_by, action, rollback_of";

pub(super) fn header_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Header> {
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

pub(super) fn header_at(
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

pub(super) fn values_at(
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
pub(super) fn promotion_at(
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

pub(super) fn current_snapshot(
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
pub(super) fn insert_version(
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

pub(super) fn check_expected(expected: Option<u64>, current: u64) -> Result<(), Failure> {
    match expected {
        Some(expected) if expected != current => {
            Err(StoreError::VersionConflict { expected, current }.into())
        }
        _ => Ok(()),
    }
}

/// The body of [`ConfigStore::set`](super::ConfigStore::set) inside an open write transaction
/// (inputs already checked): a new version on top of the current one.
pub(super) fn set_in_tx(
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::test_support::{changes, store_with};

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
}
