//! The shared test helpers ([`agentwire_testkit`]) and a bare data plane (no admin plane, no
//! control plane) started the way these tests need it.

#![allow(dead_code, unused_imports)]

pub use agentwire_testkit::*;

/// Starts a bare data plane with `cfg`.
pub fn start(cfg: agentwire_broker::Config) -> agentwire_broker::ServerHandle {
    agentwire_broker::start(cfg).expect("data plane starts on 127.0.0.1:0")
}
