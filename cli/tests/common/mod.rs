//! The shared test helpers ([`agentwire_testkit`]), the `agentwire` binary built for these
//! tests, and an in-process broker (data plane and admin plane) for tests that drive it with
//! the binary.

#![allow(dead_code, unused_imports)]

pub use agentwire_testkit::*;

/// The `agentwire` binary built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_agentwire");

/// Starts a broker (data plane and admin plane) with `cfg`.
pub fn start(cfg: agentwire_broker::Config) -> agentwire_admin::Broker {
    agentwire_admin::start(cfg).expect("broker starts on 127.0.0.1:0")
}
