//! Components: declaring one (explicitly, or when an instance of it registers), whether one is
//! known, and listing them with their environments and current versions.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension};

use super::{check_by, check_name, now_ms, ConfigStore, Failure, StoreError};

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

fn component_known(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM components WHERE name = ?1")?
        .query_row(params![name], |_| Ok(()))
        .optional()
        .map(|r| r.is_some())
}

pub(super) fn require_component(conn: &Connection, name: &str) -> Result<(), Failure> {
    if component_known(conn, name)? {
        Ok(())
    } else {
        Err(StoreError::UnknownComponent(name.to_owned()).into())
    }
}

impl ConfigStore {
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
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::test_support::changes;
    use super::*;

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
}
