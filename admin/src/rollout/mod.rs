//! Staged config rollout (gray release): a config change goes to a few canary instances first,
//! the broker watches them for a bake time, then promotes the change to every instance or rolls
//! it back by itself.
//!
//! - [`start`] writes the change as version N (with the rollout's record, one transaction),
//!   pushes N to the canaries only (chosen at random among the healthy live instances of the
//!   component and environment) and leaves the cached current config at N-1, so every other
//!   instance, and any instance registering meanwhile, keeps N-1.
//! - [`watch`] checks every [`CHECK_EVERY`] each baking rollout's canaries ([`judge`]): still
//!   registered on the same connection, healthy (heartbeats in time), error rate since the push
//!   (heartbeat request/error totals, once `min_requests` were seen) at most `max_error_rate`,
//!   heartbeat latency (after `min_requests`) at most `max_latency_ms`. All good for
//!   `bake_seconds` → promoted: N becomes current and goes to everyone. A failure → with
//!   `auto_rollback` rolled back at once (a new version N+1 with N-1's values, pushed to every
//!   instance), else `failed`, waiting for [`promote`] or [`abort`].
//! - One rollout per component and environment at a time; plain changes wait for it too
//!   ([`Rollouts::lock_free`]: `StoreError::RolloutInProgress`, HTTP 409).
//! - Every state change is published on `$SYS.rollout.<component>.<state>` (the record as JSON).
//! - A broker restart ends a rollout in progress as `aborted` and restores N-1's values as a new
//!   version before the configs are loaded ([`super::store::ConfigStore::abort_interrupted_rollouts`]).
//!
//! The parts: `policy` (the request and the validated [`Policy`]), `canary` (how many canaries
//! and which: [`Canary`], [`select_canaries`]), `verdict` (what is seen of a canary and
//! [`judge`]); this module holds the rollouts in progress and drives them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentwire_protocol::control::encode_control;
use bytes::BytesMut;
use parking_lot::{Mutex, MutexGuard};
use serde_json::{json, Value};
use tokio::sync::watch as tokio_watch;

use super::registry::ConnRef;
use super::store::{ChangeRequest, ConfigSnapshot, RolloutRecord, RolloutState, StoreError};
use super::{apply_and_push, to_update, Node};
use agentwire_broker::plane::{sys_publish, ShardCmd};

mod canary;
mod policy;
mod verdict;

pub use canary::{select_canaries, Canary};
pub use policy::{
    Policy, RolloutRequest, DEFAULT_MAX_ERROR_RATE, DEFAULT_MAX_LATENCY_MS, DEFAULT_MIN_REQUESTS,
    MAX_BAKE_SECONDS,
};
pub use verdict::{judge, Observation, Presence};

/// How often the canaries of baking rollouts are checked.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);

/// One canary as pushed to.
#[derive(Debug, Clone)]
struct CanaryRef {
    instance_id: String,
    at: ConnRef,
    base_requests: u64,
    base_errors: u64,
}

/// A rollout in progress.
#[derive(Debug)]
struct Active {
    record: RolloutRecord,
    policy: Policy,
    /// Version N.
    snap: ConfigSnapshot,
    canaries: Vec<CanaryRef>,
    started: Instant,
    /// A decision was handed to a blocking task.
    deciding: bool,
}

/// Rollouts in progress, by (component, environment).
#[derive(Debug, Default)]
pub struct Rollouts {
    /// Serializes config writes with rollout starts and ends.
    gate: Mutex<()>,
    active: Mutex<HashMap<(String, String), Active>>,
}

impl Rollouts {
    /// Takes the config write gate when no rollout of `component`/`environment` is in progress
    /// (plain changes and rollbacks hold it while they write).
    ///
    /// # Errors
    /// [`StoreError::RolloutInProgress`].
    pub fn lock_free(
        &self,
        component: &str,
        environment: &str,
    ) -> Result<MutexGuard<'_, ()>, StoreError> {
        let g = self.gate.lock();
        if let Some(a) = self
            .active
            .lock()
            .get(&(component.to_owned(), environment.to_owned()))
        {
            return Err(in_progress(&a.record));
        }
        Ok(g)
    }

    /// The rollout in progress of `component`/`environment`, with each canary's figures since
    /// the push.
    pub fn live(&self, global: &Node, component: &str, environment: &str) -> Option<Value> {
        let active = self.active.lock();
        let a = active.get(&(component.to_owned(), environment.to_owned()))?;
        let figures: Vec<Value> = observe(global, a)
            .into_iter()
            .map(|o| {
                json!({
                    "instance_id": o.instance_id,
                    "presence": match o.presence {
                        Presence::Live { healthy: true } => "healthy",
                        Presence::Live { healthy: false } => "unhealthy",
                        Presence::Gone => "gone",
                        Presence::Replaced => "reconnected",
                    },
                    "requests": o.requests,
                    "errors": o.errors,
                    "latency_us": o.latency_us,
                })
            })
            .collect();
        let mut v = serde_json::to_value(&a.record).unwrap_or_default();
        v["canary_figures"] = Value::from(figures);
        v["bake_elapsed_ms"] = Value::from(a.started.elapsed().as_millis() as u64);
        Some(v)
    }
}

fn in_progress(r: &RolloutRecord) -> StoreError {
    StoreError::RolloutInProgress {
        id: r.id,
        component: r.component.clone(),
        environment: r.environment.clone(),
        state: r.state.as_str().to_owned(),
    }
}

fn observe(global: &Node, a: &Active) -> Vec<Observation> {
    let reg = &global.admin().registry;
    a.canaries
        .iter()
        .map(
            |c| match reg.instance(&a.record.component, &c.instance_id) {
                None => Observation {
                    instance_id: c.instance_id.clone(),
                    presence: Presence::Gone,
                    requests: 0,
                    errors: 0,
                    latency_us: 0,
                },
                Some((info, at)) => {
                    let requests = info.load.requests_total.saturating_sub(c.base_requests);
                    let errors = info
                        .load
                        .errors_total
                        .saturating_sub(c.base_errors)
                        .min(requests);
                    Observation {
                        instance_id: c.instance_id.clone(),
                        presence: if at == c.at {
                            Presence::Live {
                                healthy: info.healthy,
                            }
                        } else {
                            Presence::Replaced
                        },
                        requests,
                        errors,
                        latency_us: info.load.latency_us,
                    }
                }
            },
        )
        .collect()
}

fn publish_state(global: &Node, r: &RolloutRecord) {
    tracing::info!(
        rollout = r.id,
        component = %r.component,
        environment = %r.environment,
        state = r.state.as_str(),
        reason = %r.reason,
        "config rollout {}",
        r.state.as_str()
    );
    sys_publish(
        global.data(),
        format!("$SYS.rollout.{}.{}", r.component, r.state.as_str()),
        serde_json::to_vec(r).unwrap_or_default(),
    );
}

/// Starts a rollout of `changes` (see the module doc). Runs on a blocking thread (SQLite).
///
/// # Errors
/// [`StoreError::Invalid`] for a bad policy or change, [`StoreError::RolloutInProgress`],
/// [`StoreError::NoCanary`] when no healthy instance is live, and the errors of
/// [`super::store::ConfigStore::set`].
pub fn start(
    global: &Node,
    change: &ChangeRequest<'_>,
    request: &RolloutRequest,
) -> Result<(ConfigSnapshot, RolloutRecord), StoreError> {
    let (component, environment) = (change.component, change.environment);
    let policy = Policy::from_request(request)?;
    let admin = global.admin();
    let _gate = admin.rollouts.lock_free(component, environment)?;
    let candidates: Vec<(String, bool)> = admin
        .registry
        .instances_of(component, environment)
        .into_iter()
        .map(|(i, _)| (i.instance_id, i.healthy))
        .collect();
    let chosen = select_canaries(&candidates, policy.canary, &mut rand::thread_rng());
    if chosen.is_empty() {
        return Err(StoreError::NoCanary(format!(
            "no healthy live instance of {component} [{environment}] to be a canary ({} registered): start instances first, or change without a rollout",
            candidates.len()
        )));
    }
    // A component with live instances is known even if its record is still being written.
    let change = ChangeRequest {
        create: change.create || admin.registry.has_component(component),
        ..*change
    };
    let (snap, record) = admin
        .store
        .begin_rollout(&change, &chosen, &policy.to_json())?;
    let mut frame = BytesMut::new();
    if let Err(e) = encode_control(&mut frame, &to_update(&snap)) {
        tracing::error!("cannot encode a CONFIG frame: {e}");
    }
    let frame = frame.freeze();
    let mut canaries = Vec::with_capacity(chosen.len());
    for id in &chosen {
        // Baselines and connection as of the push; a canary gone meanwhile fails the first check.
        let (base_requests, base_errors, at) = match admin.registry.instance(component, id) {
            Some((info, at)) => (info.load.requests_total, info.load.errors_total, at),
            None => (0, 0, ConnRef { shard: 0, conn: 0 }),
        };
        if at.conn != 0 && !frame.is_empty() {
            global.send(
                at.shard,
                ShardCmd::SendFrame {
                    conn: at.conn,
                    frame: frame.clone(),
                },
            );
        }
        canaries.push(CanaryRef {
            instance_id: id.clone(),
            at,
            base_requests,
            base_errors,
        });
    }
    admin.rollouts.active.lock().insert(
        (component.to_owned(), environment.to_owned()),
        Active {
            record: record.clone(),
            policy,
            snap: snap.clone(),
            canaries,
            started: Instant::now(),
            deciding: false,
        },
    );
    publish_state(global, &record);
    Ok((snap, record))
}

/// How a rollout in progress ends.
#[derive(Debug, Clone, PartialEq)]
enum Ending {
    Promote(String),
    Fail(String),
    Abort(String),
}

/// Ends or fails the rollout of `key` (only `id`, when given). Runs on a blocking thread.
fn conclude(
    global: &Node,
    key: &(String, String),
    id: Option<u64>,
    ending: Ending,
    by: &str,
) -> Result<RolloutRecord, StoreError> {
    let admin = global.admin();
    let _gate = admin.rollouts.gate.lock();
    let (rid, policy, snap, state) = {
        let mut active = admin.rollouts.active.lock();
        let Some(a) = active.get_mut(key) else {
            return Err(StoreError::NoRollout(format!(
                "no rollout of {} [{}] is in progress",
                key.0, key.1
            )));
        };
        if id.is_some_and(|id| id != a.record.id) {
            return Err(StoreError::NoRollout(format!(
                "rollout {} is no longer in progress",
                id.unwrap_or(0)
            )));
        }
        a.deciding = false;
        (a.record.id, a.policy, a.snap.clone(), a.record.state)
    };
    let (state, reason, restore) = match ending {
        Ending::Promote(r) => (RolloutState::Promoted, r, false),
        Ending::Abort(r) => (RolloutState::Aborted, r, true),
        Ending::Fail(r) if policy.auto_rollback => (RolloutState::RolledBack, r, true),
        Ending::Fail(r) => {
            if state == RolloutState::Failed {
                return Err(StoreError::NoRollout("already failed".into()));
            }
            (RolloutState::Failed, r, false)
        }
    };
    let (restored, record) = admin.store.end_rollout(rid, state, &reason, by, restore)?;
    {
        let mut active = admin.rollouts.active.lock();
        if state.is_active() {
            if let Some(a) = active.get_mut(key) {
                a.record = record.clone();
            }
        } else {
            active.remove(key);
        }
    }
    match (state, restored) {
        (RolloutState::Promoted, _) => apply_and_push(global, &snap),
        (_, Some(r)) => apply_and_push(global, &r),
        _ => {}
    }
    publish_state(global, &record);
    Ok(record)
}

/// Promotes the rollout in progress of `component`/`environment` now (baking or failed): its
/// version becomes current and goes to every instance.
///
/// # Errors
/// [`StoreError::NoRollout`], or a store error.
pub fn promote(
    global: &Node,
    component: &str,
    environment: &str,
    by: &str,
) -> Result<RolloutRecord, StoreError> {
    conclude(
        global,
        &(component.to_owned(), environment.to_owned()),
        None,
        Ending::Promote(format!("promoted by {by}")),
        by,
    )
}

/// Aborts the rollout in progress of `component`/`environment`: the previous values come back
/// as a new version, pushed to every instance.
///
/// # Errors
/// [`StoreError::NoRollout`], or a store error.
pub fn abort(
    global: &Node,
    component: &str,
    environment: &str,
    by: &str,
) -> Result<RolloutRecord, StoreError> {
    conclude(
        global,
        &(component.to_owned(), environment.to_owned()),
        None,
        Ending::Abort(format!("aborted by {by}")),
        by,
    )
}

/// Checks the baking rollouts once: the decisions to carry out.
fn check(global: &Node, now: Instant) -> Vec<((String, String), u64, Ending)> {
    let mut out = Vec::new();
    let mut active = global.admin().rollouts.active.lock();
    for (key, a) in active.iter_mut() {
        if a.deciding || a.record.state != RolloutState::Baking {
            continue;
        }
        let obs = observe(global, a);
        let bake_over = now.saturating_duration_since(a.started) >= a.policy.bake;
        let ending = match judge(&a.policy, &obs, bake_over) {
            Err(reason) => Ending::Fail(reason),
            Ok(()) if bake_over => {
                let (r, e) = obs.iter().fold((0u64, 0u64), |(r, e), o| {
                    // Figures come from clients' heartbeats: never trust them not to overflow.
                    (r.saturating_add(o.requests), e.saturating_add(o.errors))
                });
                Ending::Promote(format!(
                    "canaries healthy for {} s ({r} requests, {e} errors)",
                    a.policy.bake.as_secs()
                ))
            }
            Ok(()) => continue,
        };
        a.deciding = true;
        out.push((key.clone(), a.record.id, ending));
    }
    out
}

/// Watches the baking rollouts every [`CHECK_EVERY`] until `stop`.
pub async fn watch(global: Arc<Node>, mut stop: tokio_watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                for (key, id, ending) in check(&global, Instant::now()) {
                    let g = global.clone();
                    let r = tokio::task::spawn_blocking(move || {
                        conclude(&g, &key, Some(id), ending, "broker")
                    })
                    .await;
                    match r {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::warn!(rollout = id, "rollout decision not carried out: {e}"),
                        Err(e) => tracing::warn!(rollout = id, "rollout decision task failed: {e}"),
                    }
                }
            }
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
}

/// Helpers shared by the unit tests of the submodules.
#[cfg(test)]
mod test_support {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::{Policy, RolloutRequest};

    pub(super) fn policy() -> Policy {
        Policy::from_request(&RolloutRequest {
            canary: json!(1),
            bake_seconds: 10,
            auto_rollback: None,
            max_error_rate: None,
            max_latency_ms: None,
            min_requests: None,
        })
        .unwrap()
    }
}
