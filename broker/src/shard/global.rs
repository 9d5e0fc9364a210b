//! State shared by every shard and the acceptor: [`Global`] (configuration, routing table,
//! users and limits, telemetry, the control plane), each shard's [`ShardHandle`] (what other
//! threads touch: inbound queues, wake-ups, counters, commands), and the [`DataPlane`] impl
//! through which the admin plane reads and drives the data plane.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, watch, Notify};

use super::remote::RemoteBatch;
use super::snapshot;
use crate::config::Config;
use crate::plane::{ControlPlane, DataPlane, ShardCmd, ShardFigures};
use crate::routing::RoutingTable;
use crate::stats::ShardStats;
use crate::telemetry::load::ConnLoad;
use crate::telemetry::Telemetry;

/// The part of a shard that other threads touch: its inbound queues, its wake-ups, its counters.
#[derive(Debug)]
pub struct ShardHandle {
    /// Shard index.
    pub id: u16,
    /// `inbound[src]`: batches from shard `src` to this shard. Single producer (shard `src`),
    /// single consumer (this shard).
    pub(super) inbound: Box<[ArrayQueue<RemoteBatch>]>,
    /// Wakes this shard's drain task; peers notify it once per batch they pushed.
    pub(super) wake: Notify,
    /// Wakes this shard's readers waiting for room in a full queue they feed.
    pub(super) space: Notify,
    /// Counters of this shard.
    pub stats: ShardStats,
    /// Commands from the admin plane (config push, system messages).
    control_tx: mpsc::UnboundedSender<ShardCmd>,
    pub(super) control_rx: parking_lot::Mutex<Option<mpsc::UnboundedReceiver<ShardCmd>>>,
    pub(super) running: std::sync::atomic::AtomicBool,
}

impl ShardHandle {
    fn new(id: u16, shards: usize, queue_cap: usize) -> ShardHandle {
        let (control_tx, rx) = mpsc::unbounded_channel();
        ShardHandle {
            id,
            inbound: (0..shards).map(|_| ArrayQueue::new(queue_cap)).collect(),
            wake: Notify::new(),
            space: Notify::new(),
            stats: ShardStats::default(),
            control_tx,
            control_rx: parking_lot::Mutex::new(Some(rx)),
            running: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether the shard's event loop is running.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }

    /// Sends a command to this shard (dropped when the shard has stopped).
    pub fn send(&self, cmd: ShardCmd) {
        let _ = self.control_tx.send(cmd);
    }
}

/// State shared by every shard and the acceptor.
pub struct Global {
    /// The configuration the server started with.
    pub config: Config,
    /// Every shard's handle, by index.
    pub shards: Vec<Arc<ShardHandle>>,
    /// The routing table (the one structure all shards share; lock-free for readers).
    pub routing: RoutingTable,
    /// This process's server id.
    pub server_id: String,
    /// Next connection id (ids are never reused during the process's life).
    pub next_conn_id: AtomicU64,
    /// Connections open now (checked against `max_connections` by the acceptor).
    pub conn_count: AtomicUsize,
    /// What the shards measure for the admin plane (histograms, sampled subjects).
    pub telemetry: Telemetry,
    /// The control plane (registry) the shards call for control frames; `None`: a bare data
    /// plane that refuses them.
    pub control: Option<Arc<dyn ControlPlane>>,
    /// Load records of every open connection, for queue-group routing.
    pub loads: parking_lot::RwLock<FxHashMap<u64, Arc<ConnLoad>>>,
    /// Lame duck: set once; the acceptor stops, shards notify and close their clients.
    pub lame: watch::Sender<bool>,
    /// Verified TLS client identities (mutual TLS) of the open connections, by connection id
    /// (only connections that have one are in it).
    pub identities: parking_lot::Mutex<FxHashMap<u64, String>>,
    /// The client users now (replaced on reload).
    pub auth: arc_swap::ArcSwap<crate::auth::Auth>,
    /// The limits now (replaced on reload; shards keep their own copy).
    pub limits: arc_swap::ArcSwap<crate::config::Limits>,
    /// Where a reload from the admin API reads the configuration (set by `agentwire serve`).
    #[allow(clippy::type_complexity)]
    pub reload_source:
        parking_lot::Mutex<Option<Box<dyn Fn() -> Result<Config, String> + Send + Sync>>>,
}

impl std::fmt::Debug for Global {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Global")
            .field("server_id", &self.server_id)
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl Global {
    /// Creates the shared state for `config`, with `control` answering control frames.
    pub fn new(
        config: Config,
        server_id: String,
        auth: crate::auth::Auth,
        control: Option<Arc<dyn ControlPlane>>,
    ) -> Global {
        let n = config.shard_count();
        let shards = (0..n)
            .map(|i| Arc::new(ShardHandle::new(i as u16, n, config.cross_shard_queue)))
            .collect();
        Global {
            shards,
            routing: RoutingTable::new(),
            server_id,
            next_conn_id: AtomicU64::new(1),
            conn_count: AtomicUsize::new(0),
            telemetry: Telemetry::default(),
            control,
            loads: parking_lot::RwLock::new(FxHashMap::default()),
            lame: watch::channel(false).0,
            identities: parking_lot::Mutex::new(FxHashMap::default()),
            auth: arc_swap::ArcSwap::from_pointee(auth),
            limits: arc_swap::ArcSwap::from_pointee(config.limits),
            reload_source: parking_lot::Mutex::new(None),
            config,
        }
    }
}

impl Global {
    /// Enters lame-duck mode (idempotent): stop accepting, notify every client, close them
    /// spread over `lameduck_window_ms`.
    pub fn enter_lame_duck(&self) {
        let was = self.lame.send_replace(true);
        if !was {
            tracing::info!(
                window_ms = self.config.lameduck_window_ms,
                "lame duck: no new connections; closing clients over the window"
            );
        }
    }
}

impl Global {
    /// Applies the users and limits of `config` (see [`crate::server::ServerHandle::reload`]).
    ///
    /// # Errors
    /// `config` does not validate; nothing is changed then.
    pub fn reload(
        &self,
        config: &Config,
    ) -> Result<crate::config::ReloadReport, crate::config::ConfigError> {
        config.validate()?;
        let auth = crate::auth::Auth::compile(&config.users)
            .map_err(crate::config::ConfigError::Invalid)?;
        crate::auth::log_auth(&auth);
        let users = config.users.len();
        self.auth.store(Arc::new(auth));
        self.limits.store(Arc::new(config.limits));
        for s in &self.shards {
            s.send(ShardCmd::Reload);
        }
        let old = &self.config;
        let mut needs_restart = Vec::new();
        let mut changed = |name: &str, differs: bool| {
            if differs {
                needs_restart.push(name.to_owned());
            }
        };
        changed("listen", old.listen != config.listen);
        changed("shards", old.shards != config.shards);
        changed(
            "listen_backlog",
            old.listen_backlog != config.listen_backlog,
        );
        changed("admin", old.admin != config.admin);
        changed("alerts", old.alerts != config.alerts);
        changed("read_buffer", old.read_buffer != config.read_buffer);
        changed(
            "cross_shard_queue",
            old.cross_shard_queue != config.cross_shard_queue,
        );
        changed("match_cache", old.match_cache != config.match_cache);
        changed("tls", old.tls != config.tls);
        if !needs_restart.is_empty() {
            tracing::warn!(
                ?needs_restart,
                "reload: these settings change only on restart"
            );
        }
        tracing::info!(users, "reloaded users and limits");
        Ok(crate::config::ReloadReport {
            users,
            needs_restart,
        })
    }
}

impl DataPlane for Global {
    fn reload(&self) -> Result<crate::config::ReloadReport, String> {
        let config = {
            let source = self.reload_source.lock();
            let Some(f) = source.as_ref() else {
                return Err(
                    "this broker has no config source to reload from (started as a library)".into(),
                );
            };
            f()?
        };
        Global::reload(self, &config).map_err(|e| e.to_string())
    }
    fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }
    fn config(&self) -> &Config {
        &self.config
    }
    fn server_id(&self) -> &str {
        &self.server_id
    }
    fn shard_count(&self) -> usize {
        self.shards.len()
    }
    fn shards_running(&self) -> bool {
        self.shards.iter().all(|s| s.is_running())
    }
    fn send(&self, shard: u16, cmd: ShardCmd) {
        if let Some(s) = self.shards.get(shard as usize) {
            s.send(cmd);
        }
    }
    fn stats(&self) -> crate::stats::StatsSnapshot {
        snapshot(self)
    }
    fn shard_figures(&self) -> Vec<ShardFigures> {
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        self.shards
            .iter()
            .map(|s| {
                let st = &s.stats;
                ShardFigures {
                    shard: s.id,
                    msgs_in: ld(&st.msgs_in),
                    msgs_out: ld(&st.msgs_out),
                    bytes_in: ld(&st.bytes_in),
                    bytes_out: ld(&st.bytes_out),
                    cross_shard: ld(&st.cross_shard_out),
                    conns_total: ld(&st.conns_total),
                    conns_open: ld(&st.conns_open),
                    slow_consumers: ld(&st.slow_consumers),
                    dropped: ld(&st.dropped),
                }
            })
            .collect()
    }
    fn subscription_count(&self) -> usize {
        self.routing.subscription_count()
    }
    fn lame_duck(&self) {
        self.enter_lame_duck();
    }
    fn max_payload(&self) -> u32 {
        self.limits.load().max_payload
    }
    fn loads(&self) -> Vec<(u64, Arc<ConnLoad>)> {
        self.loads
            .read()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }
}
