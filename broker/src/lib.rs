//! agentwire-broker: the shard-per-core message broker behind the `agentwire` binary.
//!
//! - [`admin`] — the admin plane: registry, config center, load records, histograms, metrics,
//!   HTTP API.
//! - [`auth`] — client users: tokens, ed25519 keys, TLS identities; publish/subscribe rules.
//! - [`config`] — configuration, limits and their defaults (TOML file + flags).
//! - [`server`] — start-up, the acceptor, shutdown.
//! - `shard` — one thread and event loop per shard; connections, batching, cross-shard queues.
//! - [`routing`] — the subject trie snapshots, the per-shard match cache, queue groups.
//! - [`stats`] — counters.
//! - [`tls`] — TLS termination in front of the shards, the admin API's HTTPS listener.
//! - [`transport`] — the byte stream under a connection (TCP, or a socket pair behind TLS).
//!
//! ```no_run
//! let handle = agentwire_broker::server::start(agentwire_broker::config::Config::default())?;
//! println!("listening on {}", handle.local_addr());
//! handle.shutdown();
//! handle.join();
//! # Ok::<(), agentwire_broker::server::StartError>(())
//! ```

pub mod admin;
pub mod auth;
pub mod config;
pub mod routing;
pub mod server;
pub mod shard;
pub mod stats;
pub mod tls;
pub mod transport;

pub use config::{Config, Limits};
pub use server::{start, start_with_listener, AttachError, ServerHandle, StartError};
