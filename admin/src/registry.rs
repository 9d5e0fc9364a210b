//! The component registry: which connection is which instance of which component, its last
//! heartbeat and load, and its health.
//!
//! Shards call [`Registry::register`], [`Registry::heartbeat`] and [`Registry::deregister`] as
//! control frames arrive (rare: one per registration and per heartbeat interval), so one mutex
//! is enough. The admin thread calls [`Registry::sweep`] a few times per heartbeat interval to
//! turn missed heartbeats into health changes and removals. Every change is returned as an
//! [`Event`] for the caller to publish on `$SYS.components.<component>.<event>`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentwire_protocol::control::{Heartbeat, InstanceInfo, Registration};
use agentwire_protocol::ErrorCode;
use parking_lot::Mutex;

use super::now_ms;
use agentwire_broker::telemetry::load::ConnLoad;

/// A change in the registry.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// An instance registered.
    Joined(InstanceInfo),
    /// An instance left: deregistered, disconnected or timed out (the reason).
    Left(InstanceInfo, &'static str),
    /// An instance missed `unhealthy_after` heartbeats.
    Unhealthy(InstanceInfo),
    /// An unhealthy instance sent a heartbeat again.
    Healthy(InstanceInfo),
}

impl Event {
    /// The event's name, the last token of its system subject.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Joined(_) => "joined",
            Event::Left(..) => "left",
            Event::Unhealthy(_) => "unhealthy",
            Event::Healthy(_) => "healthy",
        }
    }

    /// The instance concerned.
    pub fn instance(&self) -> &InstanceInfo {
        match self {
            Event::Joined(i) | Event::Left(i, _) | Event::Unhealthy(i) | Event::Healthy(i) => i,
        }
    }

    /// The system subject it is published on.
    pub fn subject(&self) -> String {
        format!(
            "$SYS.components.{}.{}",
            self.instance().component,
            self.name()
        )
    }

    /// The JSON payload published with it.
    /// The event as JSON within `max` bytes when possible: the whole instance, or, when that is
    /// larger (metadata, capabilities and subjects are client-chosen), its bounded fields only
    /// with `"truncated": true` (ids and version are at most 128 bytes each, so this always
    /// fits the frame limit of `max_payload + 4096`).
    pub fn payload_within(&self, max: usize) -> Vec<u8> {
        let full = self.payload();
        if full.len() <= max {
            return full;
        }
        let i = self.instance();
        let mut v = serde_json::json!({
            "component": i.component,
            "instance_id": i.instance_id,
            "version": i.version,
            "environment": i.environment,
            "status": if i.healthy { "healthy" } else { "unhealthy" },
            "healthy": i.healthy,
            "health_score": i.health_score,
            "registered_at_ms": i.registered_at_ms,
            "last_seen_ms": i.last_seen_ms,
            "event": self.name(),
            "truncated": true,
        });
        if let (Event::Left(_, why), Some(o)) = (self, v.as_object_mut()) {
            o.insert("reason".into(), serde_json::Value::from(*why));
        }
        serde_json::to_vec(&v).unwrap_or_default()
    }

    /// The event as JSON: the instance ([`instance_json`]), `event`, and `reason` for `left`.
    pub fn payload(&self) -> Vec<u8> {
        let mut v = instance_json(self.instance());
        if let (Event::Left(_, why), Some(o)) = (self, v.as_object_mut()) {
            o.insert("reason".into(), serde_json::Value::from(*why));
        }
        if let Some(o) = v.as_object_mut() {
            o.insert("event".into(), serde_json::Value::from(self.name()));
        }
        serde_json::to_vec(&v).unwrap_or_default()
    }
}

/// An instance as JSON (the REST API's and the system events' shape).
pub fn instance_json(i: &InstanceInfo) -> serde_json::Value {
    serde_json::json!({
        "component": i.component,
        "instance_id": i.instance_id,
        "version": i.version,
        "environment": i.environment,
        "capabilities": i.capabilities,
        "subjects": i.subjects,
        "metadata": i.metadata.iter().cloned().collect::<BTreeMap<String, String>>(),
        "status": if i.healthy { "healthy" } else { "unhealthy" },
        "healthy": i.healthy,
        "health_score": i.health_score,
        "load": {
            "in_flight": i.load.in_flight,
            "queue_depth": i.load.queue_depth,
            "latency_us": i.load.latency_us,
            "cpu_permille": i.load.cpu_permille,
            "mem_bytes": i.load.mem_bytes,
            "requests_total": i.load.requests_total,
            "errors_total": i.load.errors_total,
        },
        "registered_at_ms": i.registered_at_ms,
        "last_seen_ms": i.last_seen_ms,
        "depends_on": i.depends_on,
    })
}

pub use agentwire_broker::plane::{ConnRef, Refusal};

#[derive(Debug)]
struct Entry {
    info: InstanceInfo,
    at: ConnRef,
    last_seen: Instant,
    load: Arc<ConnLoad>,
}

#[derive(Debug, Default)]
struct Inner {
    instances: BTreeMap<(String, String), Entry>,
    by_conn: HashMap<u64, (String, String)>,
    /// Requests and errors reported per component (sums of heartbeat increases), ever.
    totals: HashMap<String, RequestTotals>,
}

/// Requests handled and answered with an error, as instances report them in heartbeats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RequestTotals {
    /// Requests handled.
    pub requests: u64,
    /// Of those, answered with an error.
    pub errors: u64,
}

/// How much a cumulative counter grew from `old` to `new` (a counter that went back was reset:
/// all of `new` is new).
fn increase(old: u64, new: u64) -> u64 {
    if new >= old {
        new - old
    } else {
        new
    }
}

/// The heartbeat contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Expected heartbeat interval.
    pub interval: Duration,
    /// Missed intervals before unhealthy.
    pub unhealthy_after: u32,
    /// Missed intervals before removal.
    pub remove_after: u32,
}

/// The registry of live instances.
#[derive(Debug)]
pub struct Registry {
    inner: Mutex<Inner>,
    policy: HealthPolicy,
    /// The environment of registrations that name none (`admin.environment`).
    default_environment: String,
}

/// Health score 0..=100: 100 when on time and unloaded; 25 points off per missed interval,
/// up to 20 off for CPU above 80% of a core, 10 off for a queue deeper than 100; an unhealthy
/// instance scores at most 20.
pub fn health_score(
    policy: &HealthPolicy,
    since_seen: Duration,
    healthy: bool,
    hb: &Heartbeat,
) -> u32 {
    let interval = policy.interval.as_secs_f64().max(1e-3);
    let late = (since_seen.as_secs_f64() / interval - 1.0).max(0.0);
    let mut score = 100.0 - 25.0 * late;
    if hb.cpu_permille > 800 {
        score -= (f64::from(hb.cpu_permille.min(1000) - 800) / 10.0).min(20.0);
    }
    if hb.queue_depth > 100 {
        score -= 10.0;
    }
    if !healthy {
        score = score.min(20.0);
    }
    score.clamp(0.0, 100.0) as u32
}

impl Registry {
    /// An empty registry with this heartbeat contract.
    pub fn new(policy: HealthPolicy) -> Registry {
        Registry::with_environment(policy, "default")
    }

    /// An empty registry whose registrations without an environment get `environment`.
    pub fn with_environment(policy: HealthPolicy, environment: &str) -> Registry {
        Registry {
            inner: Mutex::new(Inner::default()),
            policy,
            default_environment: environment.to_owned(),
        }
    }

    /// The environment of a registration: its own, or the broker's default when empty.
    pub fn environment_of<'a>(&'a self, reg: &'a Registration) -> &'a str {
        if reg.environment.is_empty() {
            &self.default_environment
        } else {
            &reg.environment
        }
    }

    /// The broker's default environment.
    pub fn default_environment(&self) -> &str {
        &self.default_environment
    }

    /// The heartbeat contract.
    pub fn policy(&self) -> HealthPolicy {
        self.policy
    }

    /// Registers connection `at` as an instance (fields already validated). `with` runs under
    /// the registry lock after the instance is in: the caller reads the current config there,
    /// so a config change is either in what it reads or pushed to this instance after.
    ///
    /// # Errors
    /// The connection is already registered (`not_registered`), or the instance id is held by
    /// another live connection (`duplicate_instance`).
    pub fn register<R>(
        &self,
        at: ConnRef,
        reg: &Registration,
        load: Arc<ConnLoad>,
        with: impl FnOnce() -> R,
    ) -> Result<(InstanceInfo, R), Refusal> {
        let mut g = self.inner.lock();
        if let Some((c, i)) = g.by_conn.get(&at.conn) {
            return Err(Refusal {
                code: ErrorCode::NotRegistered,
                message: format!(
                    "this connection is already registered as {c}/{i}; REGISTER ignored"
                ),
            });
        }
        let key = (reg.component.clone(), reg.instance_id.clone());
        if g.instances.contains_key(&key) {
            return Err(Refusal {
                code: ErrorCode::DuplicateInstance,
                message: format!(
                    "instance {}/{} is registered by another live connection",
                    reg.component, reg.instance_id
                ),
            });
        }
        let now = now_ms();
        let info = InstanceInfo {
            component: reg.component.clone(),
            instance_id: reg.instance_id.clone(),
            version: reg.version.clone(),
            environment: self.environment_of(reg).to_owned(),
            capabilities: reg.capabilities.clone(),
            subjects: reg.subjects.clone(),
            metadata: reg.metadata.clone(),
            healthy: true,
            health_score: 100,
            load: Heartbeat::default(),
            registered_at_ms: now,
            last_seen_ms: now,
            depends_on: reg.depends_on.clone(),
        };
        load.set_healthy(true);
        g.by_conn.insert(at.conn, key.clone());
        g.instances.insert(
            key,
            Entry {
                info: info.clone(),
                at,
                last_seen: Instant::now(),
                load,
            },
        );
        let r = with();
        Ok((info, r))
    }

    /// Records a heartbeat from connection `conn`. Returns the `healthy` event when the
    /// instance was unhealthy.
    ///
    /// # Errors
    /// The connection is not registered (`not_registered`).
    pub fn heartbeat(&self, conn: u64, hb: &Heartbeat) -> Result<Option<Event>, Refusal> {
        let mut g = self.inner.lock();
        let Some(key) = g.by_conn.get(&conn).cloned() else {
            return Err(Refusal {
                code: ErrorCode::NotRegistered,
                message: "HEARTBEAT on a connection that is not registered; ignored".into(),
            });
        };
        let Some(e) = g.instances.get_mut(&key) else {
            return Ok(None);
        };
        e.last_seen = Instant::now();
        e.info.last_seen_ms = now_ms();
        let requests = increase(e.info.load.requests_total, hb.requests_total);
        let errors = increase(e.info.load.errors_total, hb.errors_total).min(requests);
        e.info.load = hb.clone();
        e.load.set_heartbeat(hb);
        let was = e.info.healthy;
        e.info.healthy = true;
        e.load.set_healthy(true);
        e.info.health_score = health_score(&self.policy, Duration::ZERO, true, hb);
        let event = (!was).then(|| Event::Healthy(e.info.clone()));
        if requests > 0 || errors > 0 {
            // The counters come from the client: a hostile or buggy one may send anything, so
            // the sums saturate instead of overflowing.
            let t = g.totals.entry(key.0).or_default();
            t.requests = t.requests.saturating_add(requests);
            t.errors = t.errors.saturating_add(errors).min(t.requests);
        }
        Ok(event)
    }

    /// Removes the instance of connection `conn` (DEREGISTER or disconnect), if any.
    pub fn deregister(&self, conn: u64, why: &'static str) -> Option<Event> {
        let mut g = self.inner.lock();
        let key = g.by_conn.remove(&conn)?;
        let e = g.instances.remove(&key)?;
        Some(Event::Left(e.info, why))
    }

    /// Whether connection `conn` is registered.
    pub fn is_registered(&self, conn: u64) -> bool {
        self.inner.lock().by_conn.contains_key(&conn)
    }

    /// Marks late instances unhealthy and removes those silent for `remove_after` intervals.
    pub fn sweep(&self, now: Instant) -> Vec<Event> {
        let p = self.policy;
        let unhealthy_at = p.interval * p.unhealthy_after;
        let remove_at = p.interval * p.remove_after;
        let mut out = Vec::new();
        let mut g = self.inner.lock();
        let mut gone = Vec::new();
        for (key, e) in g.instances.iter_mut() {
            let since = now.saturating_duration_since(e.last_seen);
            if since >= remove_at {
                gone.push(key.clone());
                continue;
            }
            if since >= unhealthy_at && e.info.healthy {
                e.info.healthy = false;
                e.load.set_healthy(false);
                e.info.health_score = health_score(&p, since, false, &e.info.load);
                out.push(Event::Unhealthy(e.info.clone()));
            }
        }
        for key in gone {
            if let Some(e) = g.instances.remove(&key) {
                g.by_conn.remove(&e.at.conn);
                e.load.set_healthy(false);
                out.push(Event::Left(e.info, "heartbeat timeout"));
            }
        }
        out
    }

    /// Live instances matching the filters (empty = any), sorted by component then id, with
    /// their health scores brought up to date.
    pub fn list(
        &self,
        component: &str,
        capability: &str,
        include_unhealthy: bool,
    ) -> Vec<InstanceInfo> {
        let now = Instant::now();
        let g = self.inner.lock();
        g.instances
            .values()
            .filter(|e| component.is_empty() || e.info.component == component)
            .filter(|e| {
                capability.is_empty() || e.info.capabilities.iter().any(|c| c == capability)
            })
            .filter(|e| include_unhealthy || e.info.healthy)
            .map(|e| {
                let mut i = e.info.clone();
                i.health_score = health_score(
                    &self.policy,
                    now.saturating_duration_since(e.last_seen),
                    i.healthy,
                    &i.load,
                );
                i
            })
            .collect()
    }

    /// Connections of the live instances of `component` in `environment`.
    pub fn conns_of(&self, component: &str, environment: &str) -> Vec<ConnRef> {
        let g = self.inner.lock();
        g.instances
            .range((component.to_owned(), String::new())..)
            .take_while(|((c, _), _)| c == component)
            .filter(|(_, e)| e.info.environment == environment)
            .map(|(_, e)| e.at)
            .collect()
    }

    /// Live instances of `component` in `environment` with their connections, sorted by id
    /// (for choosing rollout canaries).
    pub fn instances_of(&self, component: &str, environment: &str) -> Vec<(InstanceInfo, ConnRef)> {
        let g = self.inner.lock();
        g.instances
            .range((component.to_owned(), String::new())..)
            .take_while(|((c, _), _)| c == component)
            .filter(|(_, e)| e.info.environment == environment)
            .map(|(_, e)| (e.info.clone(), e.at))
            .collect()
    }

    /// One live instance and its connection (for watching rollout canaries).
    pub fn instance(&self, component: &str, instance_id: &str) -> Option<(InstanceInfo, ConnRef)> {
        let g = self.inner.lock();
        g.instances
            .get(&(component.to_owned(), instance_id.to_owned()))
            .map(|e| (e.info.clone(), e.at))
    }

    /// Whether any live instance of `component` is registered.
    pub fn has_component(&self, component: &str) -> bool {
        let g = self.inner.lock();
        g.instances
            .range((component.to_owned(), String::new())..)
            .next()
            .is_some_and(|((c, _), _)| c == component)
    }

    /// Runs `f` under the registry lock (used to update the config cache atomically with
    /// respect to registrations).
    pub fn locked<R>(&self, f: impl FnOnce() -> R) -> R {
        let _g = self.inner.lock();
        f()
    }

    /// The component of connection `conn`, if registered.
    pub fn component_of(&self, conn: u64) -> Option<String> {
        self.inner.lock().by_conn.get(&conn).map(|(c, _)| c.clone())
    }

    /// Requests and errors reported by each component's instances since the broker started
    /// (monotonic: instances that left still count), sorted by component.
    pub fn request_totals(&self) -> Vec<(String, RequestTotals)> {
        let g = self.inner.lock();
        let mut v: Vec<_> = g.totals.iter().map(|(c, t)| (c.clone(), *t)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Number of live instances, and of those unhealthy.
    pub fn counts(&self) -> (usize, usize) {
        let g = self.inner.lock();
        let unhealthy = g.instances.values().filter(|e| !e.info.healthy).count();
        (g.instances.len(), unhealthy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> HealthPolicy {
        HealthPolicy {
            interval: Duration::from_millis(100),
            unhealthy_after: 3,
            remove_after: 10,
        }
    }

    fn reg(c: &str, i: &str) -> Registration {
        Registration {
            component: c.into(),
            instance_id: i.into(),
            capabilities: vec!["plan".into()],
            ..Registration::default()
        }
    }

    fn at(conn: u64) -> ConnRef {
        ConnRef { shard: 0, conn }
    }

    #[test]
    fn register_list_deregister() {
        let r = Registry::new(policy());
        let (info, x) = r
            .register(at(1), &reg("planner", "p0"), Arc::default(), || 7)
            .expect("registers");
        assert_eq!(x, 7);
        assert_eq!(info.environment, "default");
        r.register(at(2), &reg("planner", "p1"), Arc::default(), || ())
            .expect("second instance");
        r.register(at(3), &reg("worker", "w0"), Arc::default(), || ())
            .expect("other component");
        assert_eq!(r.list("planner", "", false).len(), 2);
        assert_eq!(r.list("", "plan", false).len(), 3);
        assert_eq!(r.list("", "nope", false).len(), 0);
        assert_eq!(r.conns_of("planner", "default"), vec![at(1), at(2)]);
        assert_eq!(r.conns_of("planner", "prod"), vec![]);
        assert!(r.has_component("planner") && r.has_component("worker"));
        assert!(!r.has_component("plan") && !r.has_component("planners"));
        let ev = r.deregister(1, "deregistered").expect("was registered");
        assert_eq!(ev.name(), "left");
        assert_eq!(ev.subject(), "$SYS.components.planner.left");
        assert!(r.deregister(1, "again").is_none());
        assert_eq!(r.counts(), (2, 0));
    }

    #[test]
    fn default_environment_and_depends_on() {
        let r = Registry::with_environment(policy(), "staging");
        let mut with_deps = reg("planner", "p0");
        with_deps.depends_on = vec!["memory@^1.2".into()];
        let (info, ()) = r
            .register(at(1), &with_deps, Arc::default(), || ())
            .expect("registers");
        assert_eq!(info.environment, "staging");
        assert_eq!(info.depends_on, vec!["memory@^1.2"]);
        assert_eq!(instance_json(&info)["depends_on"][0], "memory@^1.2");
        let mut prod = reg("planner", "p1");
        prod.environment = "prod".into();
        let (info, ()) = r
            .register(at(2), &prod, Arc::default(), || ())
            .expect("registers");
        assert_eq!(info.environment, "prod");
        assert_eq!(r.default_environment(), "staging");
    }

    #[test]
    fn refusals() {
        let r = Registry::new(policy());
        r.register(at(1), &reg("planner", "p0"), Arc::default(), || ())
            .expect("registers");
        let e = r
            .register(at(2), &reg("planner", "p0"), Arc::default(), || ())
            .expect_err("duplicate");
        assert_eq!(e.code, ErrorCode::DuplicateInstance);
        let e = r
            .register(at(1), &reg("planner", "p9"), Arc::default(), || ())
            .expect_err("twice on one connection");
        assert_eq!(e.code, ErrorCode::NotRegistered);
        let e = r
            .heartbeat(5, &Heartbeat::default())
            .expect_err("unknown conn");
        assert_eq!(e.code, ErrorCode::NotRegistered);
    }

    #[test]
    fn missed_heartbeats_make_unhealthy_then_remove() {
        let r = Registry::new(policy());
        let load = Arc::new(ConnLoad::default());
        r.register(at(1), &reg("planner", "p0"), load.clone(), || ())
            .expect("registers");
        let t0 = Instant::now();
        assert!(r.sweep(t0 + Duration::from_millis(200)).is_empty());
        let ev = r.sweep(t0 + Duration::from_millis(350));
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].name(), "unhealthy");
        assert!(!load.healthy());
        assert!(
            r.sweep(t0 + Duration::from_millis(400)).is_empty(),
            "reported once"
        );
        assert_eq!(r.list("", "", false).len(), 0);
        assert_eq!(r.list("", "", true).len(), 1);
        // A heartbeat brings it back.
        let back = r.heartbeat(1, &Heartbeat::default()).expect("registered");
        assert_eq!(back.map(|e| e.name()), Some("healthy"));
        assert!(load.healthy());
        let ev = r.sweep(Instant::now() + Duration::from_millis(1100));
        assert_eq!(ev.iter().map(Event::name).collect::<Vec<_>>(), vec!["left"]);
        assert!(matches!(&ev[0], Event::Left(_, "heartbeat timeout")));
        assert!(!r.is_registered(1));
    }

    #[test]
    fn health_score_falls_with_lateness_and_load() {
        let p = policy();
        let hb = Heartbeat::default();
        assert_eq!(health_score(&p, Duration::ZERO, true, &hb), 100);
        assert_eq!(health_score(&p, Duration::from_millis(200), true, &hb), 75);
        assert!(health_score(&p, Duration::ZERO, false, &hb) <= 20);
        let busy = Heartbeat {
            cpu_permille: 1000,
            queue_depth: 500,
            ..Heartbeat::default()
        };
        assert_eq!(health_score(&p, Duration::ZERO, true, &busy), 70);
    }

    #[test]
    fn event_payload_is_json_with_the_event() {
        let r = Registry::new(policy());
        r.register(at(1), &reg("planner", "p0"), Arc::default(), || ())
            .expect("registers");
        let ev = r.deregister(1, "disconnected").expect("registered");
        let v: serde_json::Value = serde_json::from_slice(&ev.payload()).expect("json");
        assert_eq!(v["event"], "left");
        assert_eq!(v["reason"], "disconnected");
        assert_eq!(v["instance_id"], "p0");
    }

    #[test]
    fn request_totals_sum_heartbeat_increases_and_survive_resets() {
        let r = Registry::new(policy());
        r.register(at(1), &reg("planner", "p0"), Arc::default(), || ())
            .expect("registers");
        r.register(at(2), &reg("planner", "p1"), Arc::default(), || ())
            .expect("registers");
        let hb = |requests_total, errors_total| Heartbeat {
            requests_total,
            errors_total,
            ..Heartbeat::default()
        };
        r.heartbeat(1, &hb(10, 1)).expect("registered");
        r.heartbeat(1, &hb(25, 1)).expect("registered");
        r.heartbeat(2, &hb(5, 5)).expect("registered");
        // A counter that goes back was reset: the new value is all new.
        r.heartbeat(2, &hb(3, 0)).expect("registered");
        // Errors never exceed requests in one step.
        r.heartbeat(1, &hb(26, 9)).expect("registered");
        assert_eq!(
            r.request_totals(),
            vec![(
                "planner".to_owned(),
                RequestTotals {
                    requests: 25 + 5 + 3 + 1,
                    errors: 1 + 5 + 1,
                }
            )]
        );
        // Instances that leave still count.
        r.deregister(1, "disconnected");
        assert_eq!(r.request_totals()[0].1.requests, 34);
        // Hostile counters saturate instead of overflowing (a fuzzer found the overflow).
        r.heartbeat(2, &hb(u64::MAX, u64::MAX)).expect("registered");
        r.heartbeat(2, &hb(u64::MAX - 1, 0)).expect("registered");
        r.heartbeat(2, &hb(u64::MAX, u64::MAX)).expect("registered");
        let t = r.request_totals()[0].1;
        assert_eq!(t.requests, u64::MAX);
        assert!(t.errors <= t.requests);
    }
}
