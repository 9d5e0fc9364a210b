//! Staged config rollouts in the store: the `rollouts` table (one row per rollout, in progress
//! and past) and the transactions that start and end a rollout together with the config
//! versions they write, so a rollout's record and its versions never disagree.
//!
//! A rollout writes version N (the change) when it starts; it ends `promoted` (N stays), or
//! `rolled_back` / `aborted` (a new version N+1 with the values of N-1, action `rollback`), or
//! waits as `failed` for an operator. At most one rollout per (component, environment) is in
//! progress (`baking` or `failed`); checked in the same transaction that writes version N.

use rusqlite::{params, OptionalExtension, Transaction};

use super::{
    check_by, check_change, check_name, current_snapshot, insert_version, invalid, now_ms,
    set_in_tx, usize_limit, values_at, ChangeRequest, ConfigSnapshot, ConfigStore, Failure,
    StoreError,
};

/// The table, created with the others (same `IF NOT EXISTS` style: an older database gains it
/// on open, nothing else changes).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS rollouts (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    component_name   TEXT NOT NULL,
    environment      TEXT NOT NULL,
    state            TEXT NOT NULL
                     CHECK (state IN ('baking', 'failed', 'promoted', 'rolled_back', 'aborted')),
    from_version     INTEGER NOT NULL,
    to_version       INTEGER NOT NULL,
    rollback_version INTEGER NULL,
    canaries         TEXT NOT NULL,
    policy           TEXT NOT NULL,
    started_at       INTEGER NOT NULL,
    started_by       TEXT NOT NULL,
    ended_at         INTEGER NULL,
    ended_by         TEXT NULL,
    reason           TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS rollouts_by_component
    ON rollouts (component_name, environment, id);
";

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// The new version is on the canaries, which are being watched.
    Baking,
    /// A canary failed a check and auto-rollback is off: waiting for promote or abort.
    Failed,
    /// The new version went to every instance.
    Promoted,
    /// A canary failed a check: the previous values were restored as a new version.
    RolledBack,
    /// An operator (or a broker restart) stopped it: the previous values were restored.
    Aborted,
}

impl RolloutState {
    /// The name stored and shown (`baking`, `failed`, `promoted`, `rolled_back`, `aborted`).
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Baking => "baking",
            RolloutState::Failed => "failed",
            RolloutState::Promoted => "promoted",
            RolloutState::RolledBack => "rolled_back",
            RolloutState::Aborted => "aborted",
        }
    }

    fn parse(s: &str) -> Option<RolloutState> {
        Some(match s {
            "baking" => RolloutState::Baking,
            "failed" => RolloutState::Failed,
            "promoted" => RolloutState::Promoted,
            "rolled_back" => RolloutState::RolledBack,
            "aborted" => RolloutState::Aborted,
            _ => return None,
        })
    }

    /// Whether the rollout is still in progress (baking, or failed and waiting).
    pub fn is_active(self) -> bool {
        matches!(self, RolloutState::Baking | RolloutState::Failed)
    }
}

/// One rollout as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RolloutRecord {
    /// Rollout id (from 1, never reused).
    pub id: u64,
    /// Component.
    pub component: String,
    /// Environment.
    pub environment: String,
    /// State.
    pub state: RolloutState,
    /// The stable version before the change (0: nothing was set).
    pub from_version: u64,
    /// The version being rolled out.
    pub to_version: u64,
    /// The version that restored `from_version`'s values, after a rollback or abort.
    pub rollback_version: Option<u64>,
    /// Instance ids of the canaries.
    pub canaries: Vec<String>,
    /// The rollout's settings (canary, bake_seconds, auto_rollback, thresholds).
    pub policy: serde_json::Value,
    /// When it started, ms since the epoch.
    pub started_at_ms: u64,
    /// Who started it.
    pub started_by: String,
    /// When it ended (promoted, rolled back or aborted).
    pub ended_at_ms: Option<u64>,
    /// Who ended it (`broker` when it decided by itself).
    pub ended_by: Option<String>,
    /// Why it ended or failed: the instance and the figure, or who promoted or aborted it.
    pub reason: String,
}

const COLUMNS: &str = "id, component_name, environment, state, from_version, to_version, \
                       rollback_version, canaries, policy, started_at, started_by, ended_at, \
                       ended_by, reason";

fn record_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RolloutRecord> {
    let state: String = r.get(3)?;
    let bad = |what: &str, e: String| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("stored rollout {what}: {e}").into(),
        )
    };
    let canaries: String = r.get(7)?;
    let policy: String = r.get(8)?;
    Ok(RolloutRecord {
        id: r.get(0)?,
        component: r.get(1)?,
        environment: r.get(2)?,
        state: RolloutState::parse(&state)
            .ok_or_else(|| bad("state", format!("{state:?} is not a state")))?,
        from_version: r.get(4)?,
        to_version: r.get(5)?,
        rollback_version: r.get(6)?,
        canaries: serde_json::from_str(&canaries).map_err(|e| bad("canaries", e.to_string()))?,
        policy: serde_json::from_str(&policy).map_err(|e| bad("policy", e.to_string()))?,
        started_at_ms: r.get(9)?,
        started_by: r.get(10)?,
        ended_at_ms: r.get(11)?,
        ended_by: r.get(12)?,
        reason: r.get(13)?,
    })
}

fn active_in_tx(
    tx: &Transaction<'_>,
    component: &str,
    environment: &str,
) -> rusqlite::Result<Option<RolloutRecord>> {
    tx.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM rollouts
         WHERE component_name = ?1 AND environment = ?2 AND state IN ('baking', 'failed')
         ORDER BY id DESC LIMIT 1"
    ))?
    .query_row(params![component, environment], record_from_row)
    .optional()
}

fn by_id(tx: &Transaction<'_>, id: u64) -> rusqlite::Result<Option<RolloutRecord>> {
    tx.prepare_cached(&format!("SELECT {COLUMNS} FROM rollouts WHERE id = ?1"))?
        .query_row(params![id], record_from_row)
        .optional()
}

/// Rollout `id`, just written in `tx`: its absence is a storage error.
fn written(tx: &Transaction<'_>, id: u64) -> Result<RolloutRecord, Failure> {
    by_id(tx, id)?
        .ok_or_else(|| Failure::Store(StoreError::Storage(format!("rollout {id} vanished"))))
}

fn in_progress(r: &RolloutRecord) -> StoreError {
    StoreError::RolloutInProgress {
        id: r.id,
        component: r.component.clone(),
        environment: r.environment.clone(),
        state: r.state.as_str().to_owned(),
    }
}

impl ConfigStore {
    /// Starts a rollout: writes `changes` as a new version N and the rollout's record
    /// (`baking`, canaries, policy) in one transaction. Refused with
    /// [`StoreError::RolloutInProgress`] while another rollout of this component and
    /// environment is in progress; otherwise the errors of [`ConfigStore::set`].
    pub fn begin_rollout(
        &self,
        req: &ChangeRequest<'_>,
        canaries: &[String],
        policy: &serde_json::Value,
    ) -> Result<(ConfigSnapshot, RolloutRecord), StoreError> {
        let ChangeRequest {
            component,
            environment,
            changes,
            expected_version,
            create,
            by,
        } = *req;
        check_change(component, environment, changes, by)?;
        if canaries.is_empty() {
            return Err(invalid("canaries", "a rollout needs at least one canary"));
        }
        let canaries_json = serde_json::to_string(canaries).unwrap_or_else(|_| "[]".into());
        let policy_json = policy.to_string();
        self.write("begin_rollout", |tx| {
            if let Some(r) = active_in_tx(tx, component, environment)? {
                return Err(in_progress(&r).into());
            }
            let snap = set_in_tx(
                tx,
                component,
                environment,
                changes,
                expected_version,
                by,
                create,
            )?;
            let now = now_ms();
            tx.prepare_cached(
                "INSERT INTO rollouts
                 (component_name, environment, state, from_version, to_version, canaries,
                  policy, started_at, started_by)
                 VALUES (?1, ?2, 'baking', ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                component,
                environment,
                snap.version - 1,
                snap.version,
                canaries_json,
                policy_json,
                now,
                by
            ])?;
            let id = u64::try_from(tx.last_insert_rowid()).unwrap_or(0);
            Ok((snap, written(tx, id)?))
        })
    }

    /// Ends rollout `id` (which must be in progress, else [`StoreError::NoRollout`]) in state
    /// `state` with `reason`. With `restore`, a new version with the values of the rollout's
    /// `from_version` is written first (action `rollback`; none when the values are already
    /// those) and returned.
    pub fn end_rollout(
        &self,
        id: u64,
        state: RolloutState,
        reason: &str,
        by: &str,
        restore: bool,
    ) -> Result<(Option<ConfigSnapshot>, RolloutRecord), StoreError> {
        check_by(by)?;
        self.write("end_rollout", |tx| {
            let Some(r) = by_id(tx, id)? else {
                return Err(StoreError::NoRollout(format!("no rollout {id}")).into());
            };
            if !r.state.is_active() {
                return Err(StoreError::NoRollout(format!(
                    "rollout {id} of {} [{}] already ended ({})",
                    r.component,
                    r.environment,
                    r.state.as_str()
                ))
                .into());
            }
            let mut restored = None;
            if restore {
                let current = current_snapshot(tx, &r.component, &r.environment)?;
                let values = if r.from_version == 0 {
                    Default::default()
                } else {
                    values_at(tx, &r.component, &r.environment, r.from_version)?
                };
                if values != current.values {
                    let next = ConfigSnapshot {
                        component: r.component.clone(),
                        environment: r.environment.clone(),
                        version: current.version + 1,
                        values,
                        updated_at_ms: now_ms(),
                        updated_by: by.to_owned(),
                    };
                    insert_version(tx, &next, "rollback", Some(r.from_version))?;
                    restored = Some(next);
                }
            }
            let ended = (!state.is_active()).then(now_ms);
            tx.prepare_cached(
                "UPDATE rollouts SET state = ?2, reason = ?3, ended_at = ?4,
                 ended_by = CASE WHEN ?4 IS NULL THEN ended_by ELSE ?5 END,
                 rollback_version = COALESCE(?6, rollback_version)
                 WHERE id = ?1",
            )?
            .execute(params![
                id,
                state.as_str(),
                reason,
                ended,
                by,
                restored.as_ref().map(|s| s.version)
            ])?;
            Ok((restored, written(tx, id)?))
        })
    }

    /// Rollouts, newest first, at most `limit`; of one component (and environment) when given.
    pub fn rollouts(
        &self,
        component: Option<&str>,
        environment: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RolloutRecord>, StoreError> {
        if let Some(c) = component {
            check_name("component", c)?;
        }
        if let Some(e) = environment {
            check_name("environment", e)?;
        }
        self.read("rollouts", |tx| {
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM rollouts
                 WHERE (?1 IS NULL OR component_name = ?1) AND (?2 IS NULL OR environment = ?2)
                 ORDER BY id DESC LIMIT ?3"
            ))?;
            let rows = stmt.query_map(
                params![component, environment, usize_limit(limit)],
                record_from_row,
            )?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// Ends every rollout still in progress as `aborted`, restoring its stable values as a new
    /// version: run at start-up, before the current configs are loaded (a rollout does not
    /// survive a broker restart: its canaries and baselines were in memory).
    pub fn abort_interrupted_rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        let active: Vec<u64> = self.read("abort_interrupted_rollouts", |tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT id FROM rollouts WHERE state IN ('baking', 'failed') ORDER BY id",
            )?;
            let rows = stmt.query_map([], |r| r.get::<_, u64>(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })?;
        let mut out = Vec::new();
        for id in active {
            let (_, r) = self.end_rollout(
                id,
                RolloutState::Aborted,
                "the broker restarted during the rollout: the stable values were restored",
                "broker",
                true,
            )?;
            out.push(r);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::store::Changes;

    fn changes(k: &str, v: &str) -> Changes {
        [(k.to_owned(), Some(v.to_owned()))].into_iter().collect()
    }

    #[test]
    fn a_rollout_writes_its_version_and_blocks_a_second_one() {
        let s = ConfigStore::open_in_memory().unwrap();
        s.ensure_component("planner", "t").unwrap();
        s.set("planner", "default", &changes("depth", "1"), None, "t")
            .unwrap();
        let policy = serde_json::json!({"canary": 1});
        let (snap, r) = s
            .begin_rollout(
                &ChangeRequest {
                    component: "planner",
                    environment: "default",
                    changes: &changes("depth", "2"),
                    expected_version: None,
                    create: false,
                    by: "alice",
                },
                &["p-0".into()],
                &policy,
            )
            .unwrap();
        assert_eq!((snap.version, r.from_version, r.to_version), (2, 1, 2));
        assert_eq!(r.state, RolloutState::Baking);
        assert_eq!(r.canaries, vec!["p-0".to_owned()]);
        let e = s
            .begin_rollout(
                &ChangeRequest {
                    component: "planner",
                    environment: "default",
                    changes: &changes("depth", "3"),
                    expected_version: None,
                    create: false,
                    by: "bob",
                },
                &["p-1".into()],
                &policy,
            )
            .unwrap_err();
        assert!(matches!(e, StoreError::RolloutInProgress { id, .. } if id == r.id));
        // Another environment is independent.
        s.begin_rollout(
            &ChangeRequest {
                component: "planner",
                environment: "prod",
                changes: &changes("depth", "3"),
                expected_version: None,
                create: false,
                by: "bob",
            },
            &["p-1".into()],
            &policy,
        )
        .unwrap();

        // Failed keeps it in progress; a rollback restores version 1's values as version 3.
        let (none, f) = s
            .end_rollout(r.id, RolloutState::Failed, "p-0: errors", "broker", false)
            .unwrap();
        assert!(none.is_none() && f.state.is_active() && f.ended_at_ms.is_none());
        let (restored, done) = s
            .end_rollout(
                r.id,
                RolloutState::RolledBack,
                "p-0: errors",
                "broker",
                true,
            )
            .unwrap();
        let restored = restored.unwrap();
        assert_eq!(restored.version, 3);
        assert_eq!(restored.values.get("depth").map(String::as_str), Some("1"));
        assert_eq!(done.rollback_version, Some(3));
        assert_eq!(done.state, RolloutState::RolledBack);
        assert!(done.ended_at_ms.is_some());
        let h = s.history("planner", "default", 10).unwrap();
        assert_eq!(h[0].action, "rollback");
        assert_eq!(h[0].rollback_of, Some(1));
        // Ended: cannot end again.
        assert!(matches!(
            s.end_rollout(r.id, RolloutState::Aborted, "x", "t", true),
            Err(StoreError::NoRollout(_))
        ));
        let all = s.rollouts(Some("planner"), None, 10).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(s.rollouts(None, Some("default"), 10).unwrap().len(), 1);
    }

    #[test]
    fn rolling_back_to_nothing_and_restart_recovery() {
        let s = ConfigStore::open_in_memory().unwrap();
        s.ensure_component("planner", "t").unwrap();
        let (_, r) = s
            .begin_rollout(
                &ChangeRequest {
                    component: "planner",
                    environment: "default",
                    changes: &changes("error_rate", "1.0"),
                    expected_version: None,
                    create: false,
                    by: "t",
                },
                &["p-0".into()],
                &serde_json::json!({}),
            )
            .unwrap();
        assert_eq!(r.from_version, 0);
        let aborted = s.abort_interrupted_rollouts().unwrap();
        assert_eq!(aborted.len(), 1);
        assert_eq!(aborted[0].state, RolloutState::Aborted);
        assert_eq!(aborted[0].rollback_version, Some(2));
        let cur = s.current("planner", "default").unwrap();
        assert_eq!(cur.version, 2);
        assert!(cur.values.is_empty());
        assert!(s.abort_interrupted_rollouts().unwrap().is_empty());
    }
}
