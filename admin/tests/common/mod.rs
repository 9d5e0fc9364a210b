//! The shared test helpers ([`agentwire_testkit`]) and a broker started the way these tests
//! need it: the data plane with the admin plane beside it.

#![allow(dead_code, unused_imports)]

pub use agentwire_testkit::*;

/// Starts a broker (data plane and admin plane) with `cfg`.
pub fn start(cfg: agentwire_broker::Config) -> agentwire_admin::Broker {
    agentwire_admin::start(cfg).expect("broker starts on 127.0.0.1:0")
}
