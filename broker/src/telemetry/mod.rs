//! What the shards measure for the admin plane, recorded on the hot path without locks or
//! allocation: latency histograms ([`hist`]), per-connection load for queue-group routing
//! ([`load`]), sampled publish subjects ([`hot`]) and failed TLS handshakes.

pub mod hist;
pub mod hot;
pub mod load;

use std::sync::atomic::AtomicU64;

/// The figures shared by every shard (one per broker, in [`crate::shard::Global`]).
#[derive(Debug, Default)]
pub struct Telemetry {
    /// Latency histograms.
    pub hist: hist::Histograms,
    /// Sampled publish subjects.
    pub hot: hot::HotSubjects,
    /// TLS handshakes that failed (client port and admin port): bad certificates, timeouts,
    /// clients that do not speak TLS.
    pub tls_handshake_failures: AtomicU64,
}
