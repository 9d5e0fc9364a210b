//! Changing config: [`ConfigStore::set`] (and `set_creating`), [`ConfigStore::rollback`] and
//! [`ConfigStore::promote`], each one new version written in one `BEGIN IMMEDIATE` transaction
//! with optimistic concurrency (`expected_version`).

use rusqlite::params;

use super::{
    check_by, check_change, check_expected, check_name, current_snapshot, header_at,
    insert_version, invalid, now_ms, require_component, set_in_tx, values_at, Changes,
    ConfigSnapshot, ConfigStore, StoreError,
};

impl ConfigStore {
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
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::{Arc, Barrier};

    use super::super::test_support::{changes, map, row_counts, store_with, TempDir};
    use super::super::PromotedFrom;
    use super::*;

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
}
