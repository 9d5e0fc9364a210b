//! agentwire-broker: the shard-per-core data plane of the agentwire broker. No HTTP, no
//! database, no command line: the admin plane (`agentwire-admin`) runs beside it through the
//! seam in [`plane`], and the `agentwire` binary (`agentwire-cli`) starts both.
//!
//! - [`auth`] — client users: tokens, ed25519 keys, TLS identities; publish/subscribe rules.
//! - [`config`] — every setting, limit and default (TOML file + flags), the admin plane's and
//!   the alert engine's included, so that one file configures the whole broker.
//! - [`plane`] — the seam: [`plane::DataPlane`] (what the admin plane reads and asks),
//!   [`plane::ControlPlane`] (what shards call for control frames), shard commands.
//! - [`server`] — start-up, the acceptor, shutdown.
//! - `shard` — one thread and event loop per shard; connections, batching, cross-shard queues.
//! - [`routing`] — the subject trie snapshots, the per-shard match cache, queue groups.
//! - [`stats`] — counters.
//! - [`telemetry`] — latency histograms, connection load, sampled subjects.
//! - [`tls`] — TLS termination in front of the shards and the TLS settings of the admin API.
//! - [`transport`] — the byte stream under a connection (TCP, or a socket pair behind TLS).
//!
//! ```no_run
//! let handle = agentwire_broker::server::start(agentwire_broker::config::Config::default())?;
//! println!("listening on {}", handle.local_addr());
//! handle.shutdown();
//! handle.join();
//! # Ok::<(), agentwire_broker::server::StartError>(())
//! ```

pub mod auth;
pub mod config;
pub mod plane;
pub mod routing;
pub mod server;
pub mod shard;
pub mod stats;
pub mod telemetry;
pub mod tls;
pub mod transport;

pub use config::{Config, Limits};
pub use plane::{ControlPlane, DataPlane};
pub use server::{start, start_with_listener, AttachError, Parts, ServerHandle, StartError};
