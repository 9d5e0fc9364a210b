//! agentwire-admin: the admin plane, run beside the data plane (`agentwire-broker`) in the
//! same process: the component registry ([`registry`], answering the shards' control frames
//! through [`control`]), the config center ([`store`] on SQLite, with an in-memory cache of
//! current configs pushed live to instances), staged rollouts ([`rollout`]), metrics
//! ([`metrics`]), the HTTP API ([`http`]), the dashboard ([`dashboard`]) and the alert engine
//! ([`alerts`]).
//!
//! Shards reach it only through [`agentwire_broker::plane::ControlPlane`] (control frames) and
//! lock-free telemetry; everything slow (SQLite, HTTP) runs on the admin thread. The admin
//! plane reaches the shards only through [`agentwire_broker::plane::DataPlane`]. [`start`]
//! starts both.
//!
//! ```no_run
//! let broker = agentwire_admin::start(agentwire_broker::Config::default())?;
//! println!("clients on {}, admin API on {:?}", broker.local_addr(), broker.admin_addr());
//! broker.shutdown();
//! broker.join();
//! # Ok::<(), agentwire_admin::StartError>(())
//! ```

pub mod alerts;
mod auth;
pub mod control;
pub mod dashboard;
pub mod http;
pub mod metrics;
mod node;
pub mod optimize;
pub mod process;
pub mod registry;
pub mod rollout;
pub mod store;
pub mod tls_listener;
pub mod topology;

pub use node::{start, start_with_listener, Broker, Node, StartError};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use agentwire_protocol::control::{encode_control, ConfigUpdate};
use bytes::BytesMut;
use parking_lot::RwLock;
use tokio::sync::watch;

use agentwire_broker::config::Config as BrokerConfig;
use agentwire_broker::plane::{sys_publish, DataPlane, ShardCmd};
use registry::{Event, HealthPolicy, Registry};
use store::{Changes, ConfigSnapshot, ConfigStore, StoreError};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The admin plane's state, shared by the shards and the admin thread.
#[derive(Debug)]
pub struct Admin {
    /// Live instances.
    pub registry: Registry,
    /// The config center's database.
    pub store: ConfigStore,
    /// Current config per (component, environment), as pushed to instances.
    configs: RwLock<HashMap<(String, String), ConfigUpdate>>,
    /// The dashboard's live figures (a sample a second, last 15 minutes).
    pub live: dashboard::live::Live,
    /// The alert engine.
    pub alerts: alerts::Alerts,
    /// When the broker started.
    pub started: Instant,
    /// When the broker started, ms since the Unix epoch.
    pub started_ms: u64,
    /// The HTTP API's bound address, once listening.
    pub http_addr: RwLock<Option<SocketAddr>>,
    /// Staged config rollouts in progress.
    pub rollouts: rollout::Rollouts,
    /// Components known to be in the database (so a registration writes at most once).
    known: parking_lot::Mutex<std::collections::HashSet<String>>,
    /// Components to record in the database, for the admin thread.
    jobs_tx: tokio::sync::mpsc::UnboundedSender<String>,
    jobs_rx: parking_lot::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<String>>>,
}

/// Converts a store snapshot to the wire form.
pub fn to_update(s: &ConfigSnapshot) -> ConfigUpdate {
    ConfigUpdate {
        component: s.component.clone(),
        environment: s.environment.clone(),
        version: s.version,
        values: s
            .values
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        updated_at_ms: s.updated_at_ms,
        updated_by: s.updated_by.clone(),
    }
}

impl Admin {
    /// Opens the database (in memory when `data_dir` is unset) and loads the current configs.
    ///
    /// # Errors
    /// The database cannot be opened or read.
    pub fn new(config: &BrokerConfig) -> Result<Admin, StoreError> {
        let a = &config.admin;
        let store = match &a.data_dir {
            Some(d) => ConfigStore::open(d)?,
            None => ConfigStore::open_in_memory()?,
        };
        // A rollout does not survive a restart: restore its stable values before loading.
        for r in store.abort_interrupted_rollouts()? {
            tracing::warn!(
                rollout = r.id,
                component = %r.component,
                environment = %r.environment,
                "config rollout aborted: {}",
                r.reason
            );
        }
        let mut configs = HashMap::new();
        for s in store.all_current()? {
            configs.insert((s.component.clone(), s.environment.clone()), to_update(&s));
        }
        let known = store
            .components()?
            .into_iter()
            .map(|c| c.component)
            .collect();
        let (jobs_tx, jobs_rx) = tokio::sync::mpsc::unbounded_channel();
        Ok(Admin {
            known: parking_lot::Mutex::new(known),
            jobs_tx,
            jobs_rx: parking_lot::Mutex::new(Some(jobs_rx)),
            registry: Registry::with_environment(
                HealthPolicy {
                    interval: Duration::from_millis(u64::from(a.heartbeat_ms)),
                    unhealthy_after: a.unhealthy_after,
                    remove_after: a.remove_after,
                },
                &a.environment,
            ),
            store,
            configs: RwLock::new(configs),
            live: dashboard::live::Live::default(),
            alerts: alerts::Alerts::new(config.alerts.clone()),
            started: Instant::now(),
            started_ms: now_ms(),
            http_addr: RwLock::new(None),
            rollouts: rollout::Rollouts::default(),
        })
    }

    /// The current config of `component` in `environment` (version 0 and no values when none
    /// was ever set).
    pub fn config_for(&self, component: &str, environment: &str) -> ConfigUpdate {
        self.configs
            .read()
            .get(&(component.to_owned(), environment.to_owned()))
            .cloned()
            .unwrap_or_else(|| ConfigUpdate {
                component: component.to_owned(),
                environment: environment.to_owned(),
                ..ConfigUpdate::default()
            })
    }

    /// Makes sure `component` is recorded in the database (done on the admin thread).
    pub fn note_component(&self, component: &str) {
        if self.known.lock().insert(component.to_owned()) {
            let _ = self.jobs_tx.send(component.to_owned());
        }
    }

    /// Versions of every cached config, for status pages.
    pub fn config_versions(&self) -> Vec<(String, String, u64)> {
        let mut v: Vec<_> = self
            .configs
            .read()
            .values()
            .map(|c| (c.component.clone(), c.environment.clone(), c.version))
            .collect();
        v.sort();
        v
    }
}

/// Publishes registry events on their system subjects.
pub fn publish_events(global: &dyn DataPlane, events: Vec<Event>) {
    for e in events {
        tracing::info!(
            component = %e.instance().component,
            instance = %e.instance().instance_id,
            event = e.name(),
            "component {}",
            e.name()
        );
        let max = global.max_payload() as usize;
        sys_publish(global, e.subject(), e.payload_within(max));
    }
}

/// Writes a config change (or rollback) through the store, updates the cache and pushes the new
/// config to every live instance of the component in that environment.
fn apply_and_push(global: &Node, snap: &ConfigSnapshot) {
    let admin = global.admin();
    let update = to_update(snap);
    let mut frame = BytesMut::new();
    if let Err(e) = encode_control(&mut frame, &update) {
        tracing::error!("cannot encode a CONFIG frame: {e}");
        return;
    }
    let frame = frame.freeze();
    // Under the registry lock: an instance registering now either reads the new config or is
    // in the list pushed to below.
    let targets = admin.registry.locked(|| {
        let mut c = admin.configs.write();
        let key = (snap.component.clone(), snap.environment.clone());
        let newer = c.get(&key).is_none_or(|old| old.version < update.version);
        if newer {
            c.insert(key, update.clone());
        }
        newer
    });
    if !targets {
        return;
    }
    let conns = admin.registry.conns_of(&snap.component, &snap.environment);
    for at in conns {
        global.send(
            at.shard,
            ShardCmd::SendFrame {
                conn: at.conn,
                frame: frame.clone(),
            },
        );
    }
    sys_publish(
        global.data(),
        format!("$SYS.config.{}.{}", snap.component, snap.environment),
        serde_json::to_vec(snap).unwrap_or_default(),
    );
}

/// Sets config values (a new version) and pushes it live. `create` declares the component
/// when it is unknown (in the same transaction).
///
/// # Errors
/// As [`ConfigStore::set`].
pub fn set_config(
    global: &Node,
    component: &str,
    environment: &str,
    changes: &Changes,
    expected_version: Option<u64>,
    create: bool,
    by: &str,
) -> Result<ConfigSnapshot, StoreError> {
    let store = &global.admin().store;
    let _gate = global.admin().rollouts.lock_free(component, environment)?;
    // A component with live instances is known even if its record is still being written.
    let create = create || global.admin().registry.has_component(component);
    let snap = if create {
        store.set_creating(component, environment, changes, expected_version, by)?
    } else {
        store.set(component, environment, changes, expected_version, by)?
    };
    apply_and_push(global, &snap);
    Ok(snap)
}

/// Rolls back to an earlier version (as a new version) and pushes it live.
///
/// # Errors
/// As [`ConfigStore::rollback`].
pub fn rollback_config(
    global: &Node,
    component: &str,
    environment: &str,
    to_version: u64,
    expected_version: Option<u64>,
    by: &str,
) -> Result<ConfigSnapshot, StoreError> {
    let _gate = global.admin().rollouts.lock_free(component, environment)?;
    let snap =
        global
            .admin()
            .store
            .rollback(component, environment, to_version, expected_version, by)?;
    apply_and_push(global, &snap);
    Ok(snap)
}

/// Copies the current values of `from` into `to` as a new version there (recorded as promoted
/// from `from` at its version) and pushes it live to `to`'s instances.
///
/// # Errors
/// As [`ConfigStore::promote`].
pub fn promote_config(
    global: &Node,
    component: &str,
    from: &str,
    to: &str,
    expected_version: Option<u64>,
    by: &str,
) -> Result<(ConfigSnapshot, u64), StoreError> {
    let (snap, from_version) =
        global
            .admin()
            .store
            .promote(component, from, to, expected_version, by)?;
    apply_and_push(global, &snap);
    Ok((snap, from_version))
}

/// The admin thread.
#[derive(Debug)]
pub struct AdminThread {
    /// The thread.
    pub thread: JoinHandle<()>,
}

/// Starts the admin thread: the heartbeat sweeper, the metrics sampler and (when configured)
/// the HTTP API (over HTTPS with `tls`). Returns the HTTP API's bound address.
///
/// # Errors
/// The HTTP address cannot be bound, or the thread cannot start.
pub fn start_thread(
    global: Arc<Node>,
    stop: watch::Receiver<bool>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<(AdminThread, Option<SocketAddr>)> {
    let listener = match global.config().admin.listen {
        Some(addr) => {
            let l = std::net::TcpListener::bind(addr).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {addr} (admin): {e}"))
            })?;
            l.set_nonblocking(true)?;
            Some(l)
        }
        None => None,
    };
    let http_addr = match &listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    *global.admin().http_addr.write() = http_addr;
    let thread = std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .max_blocking_threads(4)
                .thread_name("admin-rt")
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("admin runtime failed to start: {e}");
                    return;
                }
            };
            rt.block_on(run(global, listener, tls, stop));
        })?;
    Ok((AdminThread { thread }, http_addr))
}

async fn run(
    global: Arc<Node>,
    listener: Option<std::net::TcpListener>,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut stop: watch::Receiver<bool>,
) {
    if let Some(l) = listener {
        match tokio::net::TcpListener::from_std(l) {
            Ok(l) => {
                let g = global.clone();
                let s = stop.clone();
                match tls {
                    None => {
                        tokio::spawn(http::serve(g, l, s));
                    }
                    Some(cfg) => {
                        match tls_listener::TlsListener::new(l, cfg, g.data_arc(), s.clone()) {
                            Ok(l) => {
                                tokio::spawn(http::serve(g, l, s));
                            }
                            Err(e) => tracing::error!("admin TLS listener: {e}"),
                        }
                    }
                }
            }
            Err(e) => tracing::error!("admin listener: {e}"),
        }
    }
    tokio::spawn(metrics::sampler(global.clone(), stop.clone()));
    tokio::spawn(dashboard::live::sampler(global.clone(), stop.clone()));
    tokio::spawn(rollout::watch(global.clone(), stop.clone()));
    tokio::spawn(alerts::run(global.clone(), stop.clone()));
    if let Some(mut rx) = global.admin().jobs_rx.lock().take() {
        let g = global.clone();
        tokio::spawn(async move {
            while let Some(name) = rx.recv().await {
                let g2 = g.clone();
                let r = tokio::task::spawn_blocking(move || {
                    g2.admin().store.ensure_component(&name, "registration")
                })
                .await;
                match r {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!("cannot record a registered component: {e}"),
                    Err(e) => tracing::warn!("cannot record a registered component: {e}"),
                }
            }
        });
    }
    let every = global.admin().registry.policy().interval / 4;
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(5)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let ev = global.admin().registry.sweep(Instant::now());
                if !ev.is_empty() {
                    publish_events(global.data(), ev);
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
