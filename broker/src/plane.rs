//! The one seam between the data plane (this crate) and whatever runs beside it (the admin
//! plane in `agentwire-admin`):
//!
//! - [`DataPlane`]: what the other side may read from and ask of the running shards (figures,
//!   commands, lame duck, reload). Implemented by the shards' shared state
//!   ([`crate::shard::Global`]).
//! - [`ControlPlane`]: what the shards call for the control-plane frames of a connection
//!   (REGISTER, HEARTBEAT, DEREGISTER, DISCOVER) and when a connection closes. Installed at
//!   start ([`crate::server::Parts::control`]); without one the shards answer those frames with
//!   `ERR unknown_op` (a broker started as a bare data plane has no registry).
//!
//! Dependencies point one way: the data plane never names the admin plane's types; the admin
//! plane holds an `Arc<dyn DataPlane>` and implements [`ControlPlane`].

use std::sync::Arc;

use agentwire_protocol::control::{Discover, Heartbeat, InstanceInfo, Registered, Registration};
use agentwire_protocol::ErrorCode;
use bytes::Bytes;

use crate::config::{Config, ReloadReport};
use crate::stats::StatsSnapshot;
use crate::telemetry::load::ConnLoad;
use crate::telemetry::Telemetry;

/// A command to a shard, run on its event loop.
#[derive(Debug)]
pub enum ShardCmd {
    /// Append a ready-made frame to a connection's output (e.g. CONFIG).
    SendFrame {
        /// Target connection (owned by that shard).
        conn: u64,
        /// The frame.
        frame: Bytes,
    },
    /// The users or limits were reloaded: re-check every connection against
    /// [`crate::shard::Global::auth`] (removed users are closed, changed rules apply at once)
    /// and take the new limits.
    Reload,
    /// A message from the broker itself: deliver to the shard's matching subscribers.
    Publish {
        /// Literal subject.
        subject: Bytes,
        /// Payload.
        payload: Bytes,
    },
}

/// One shard's counters, as plain figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ShardFigures {
    /// Shard index.
    pub shard: u16,
    /// Messages published in.
    pub msgs_in: u64,
    /// Messages delivered out.
    pub msgs_out: u64,
    /// Bytes in.
    pub bytes_in: u64,
    /// Bytes out.
    pub bytes_out: u64,
    /// Messages handed to other shards.
    pub cross_shard: u64,
    /// Connections accepted, ever.
    pub conns_total: u64,
    /// Connections open.
    pub conns_open: u64,
    /// Slow consumers disconnected.
    pub slow_consumers: u64,
    /// Messages dropped for closing or slow targets.
    pub dropped: u64,
}

/// Where a connection lives: its shard and its id (ids are unique in the process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnRef {
    /// Shard index.
    pub shard: u16,
    /// Connection id.
    pub conn: u64,
}

/// Why a control frame was refused: the ERR code and message the shard sends back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The wire code.
    pub code: ErrorCode,
    /// The message.
    pub message: String,
}

/// What the admin plane needs from the data plane: its figures, and a way to send commands to
/// shards.
pub trait DataPlane: Send + Sync + 'static {
    /// The configuration the server started with.
    fn config(&self) -> &Config;
    /// This process's server id.
    fn server_id(&self) -> &str;
    /// Latency histograms, sampled subjects and other figures the shards record.
    fn telemetry(&self) -> &Telemetry;
    /// Number of shards.
    fn shard_count(&self) -> usize;
    /// Whether every shard's event loop is running.
    fn shards_running(&self) -> bool;
    /// Sends a command to shard `shard` (dropped when it has stopped).
    fn send(&self, shard: u16, cmd: ShardCmd);
    /// Counters summed over every shard.
    fn stats(&self) -> StatsSnapshot;
    /// Each shard's counters.
    fn shard_figures(&self) -> Vec<ShardFigures>;
    /// Subscriptions in the routing table.
    fn subscription_count(&self) -> usize;
    /// Load records of the open connections, by connection id.
    fn loads(&self) -> Vec<(u64, Arc<ConnLoad>)>;
    /// Enters lame-duck mode.
    fn lame_duck(&self);
    /// The largest message body clients accept now (the live `limits.max_payload`).
    fn max_payload(&self) -> u32;
    /// Re-reads the configuration from its source and applies users and limits.
    ///
    /// # Errors
    /// No source, or the configuration does not load or validate (nothing changed).
    fn reload(&self) -> Result<ReloadReport, String>;
}

/// What the shards call for control-plane frames. Bodies are decoded and validated (and the
/// user's permission to register checked) by the shard before a call; the shard encodes the
/// answer. Every call runs on a shard's thread: an implementation must not block on I/O (hand
/// slow work to a thread of its own).
pub trait ControlPlane: Send + Sync + 'static {
    /// REGISTER from connection `at` whose load record is `load`: the acknowledgement to send
    /// (with the component's current config), or why not.
    ///
    /// # Errors
    /// The registration is refused (e.g. a duplicate instance id).
    fn register(
        &self,
        data: &dyn DataPlane,
        at: ConnRef,
        reg: &Registration,
        load: Arc<ConnLoad>,
    ) -> Result<Registered, Refusal>;

    /// HEARTBEAT from connection `conn`.
    ///
    /// # Errors
    /// The connection is not registered.
    fn heartbeat(&self, data: &dyn DataPlane, conn: u64, hb: &Heartbeat) -> Result<(), Refusal>;

    /// DEREGISTER from connection `conn` (or its close, with `why` = `"disconnected"`).
    /// Returns whether it was registered.
    fn deregister(&self, data: &dyn DataPlane, conn: u64, why: &'static str) -> bool;

    /// DISCOVER: the live instances matching `q`.
    fn discover(&self, q: &Discover) -> Vec<InstanceInfo>;
}

/// Publishes a message from the broker itself on `subject` to every matching subscriber.
pub fn sys_publish(data: &dyn DataPlane, subject: String, payload: Vec<u8>) {
    let subject: Bytes = subject.into_bytes().into();
    let payload = Bytes::from(payload);
    for i in 0..data.shard_count() {
        data.send(
            i as u16,
            ShardCmd::Publish {
                subject: subject.clone(),
                payload: payload.clone(),
            },
        );
    }
}
