//! Reading config: the current snapshot, one stored version, a (component, environment)
//! history newest first, and every current snapshot at once (the broker's cache at start).

use std::collections::BTreeMap;

use rusqlite::params;

use super::{
    check_name, current_snapshot, header_at, header_from_row, promotion_at, require_component,
    usize_limit, values_at, ConfigSnapshot, ConfigStore, Header, StoreError, VersionInfo,
    HEADER_COLUMNS,
};

impl ConfigStore {
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
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::test_support::{changes, map, row_counts, store_with};
    use super::*;

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
}
