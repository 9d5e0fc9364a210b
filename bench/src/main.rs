//! agentwire-bench: the load generator behind every performance claim about agentwire.
//!
//! Scenarios (`pubsub`, `reqrep`, `rate`, `conns`, and for the admin plane `registry` and
//! `apistatus`), the standard `suite` with its targets, the side-by-side `compare` with
//! nats-server and Zenoh, and the `ci` floors; see `bench/README.md` for how to run them and how
//! each figure is defined (the same way as the NATS and Zenoh peer references). This file only
//! hands over to [`cli`].
//!
//! Modules: [`cli`] flags and dispatch; [`broker_proc`] the broker process and `/proc`
//! sampling; [`admin_api`] the broker's HTTP admin API; [`scenarios`] the load scenarios;
//! [`latency`] HDR histograms; [`report`] one run's figures as JSON and text; [`suite`] cases,
//! targets and the summary table; [`ci`] the CI floors; [`compare`] agentwire, nats-server and
//! Zenoh side by side; [`progress`] the stderr progress bar; [`anomaly`] the alert engine's
//! anomaly detector on synthetic series (no broker).

mod admin_api;
mod anomaly;
mod broker_proc;
mod ci;
mod cli;
mod compare;
mod latency;
mod progress;
mod report;
mod scenarios;
mod suite;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
