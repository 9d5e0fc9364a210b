//! `ci`: short runs that fail (non-zero exit, one clear line per miss) below the user's floor:
//!
//! - pubsub 1→1, 128 B: at least 100,000 msg/s delivered, nothing lost;
//! - rate 100,000 msg/s, 128 B for a few seconds: p99 under 100 ms, nothing lost;
//! - conns 1,000: every connection connected and answering a ping every second.
//!
//! One repetition each (the floors sit far below the targets, so noise does not decide them);
//! the whole command takes well under a minute plus broker start-ups. The cases are data,
//! like the suite's.

use std::process::ExitCode;

use crate::broker_proc::BrokerTarget;
use crate::scenarios::conns::ConnsParams;
use crate::scenarios::pubsub::PubSubParams;
use crate::scenarios::rate::RateParams;
use crate::scenarios::{RunOptions, Spec};
use crate::suite::{self, Case, Figure, Output, Target};

/// The floor cases.
pub fn floor_cases() -> Vec<Case> {
    vec![
        Case {
            name: "ci-pubsub-1to1-128",
            title: "pubsub 1→1, 128 B, 1 M msgs".to_owned(),
            spec: Spec::PubSub(PubSubParams {
                pubs: 1,
                subs: 1,
                queue: false,
                size: 128,
                msgs: 1_000_000,
            }),
            targets: vec![Target::at_least(Figure::DeliveredPerSec, 100_000.0)],
            vs_round_robin: false,
        },
        Case {
            name: "ci-rate-100k-128",
            title: "rate 100,000 msg/s, 128 B, 3 s".to_owned(),
            spec: Spec::Rate(RateParams {
                rate: 100_000,
                size: 128,
                duration: 3.0,
                batch_us: 100,
            }),
            targets: vec![Target::below(Figure::LatencyP99, 100_000.0)],
            vs_round_robin: false,
        },
        Case {
            name: "ci-conns-1000",
            title: "conns 1,000 for 5 s".to_owned(),
            spec: Spec::Conns(ConnsParams {
                conns: 1000,
                duration: 5.0,
            }),
            // "Held" = every connection connected and answered every ping: the "runs complete"
            // row checks it.
            targets: vec![],
            vs_round_robin: false,
        },
    ]
}

/// Runs the floors and says which were missed.
pub async fn run(target: &BrokerTarget, opts: &RunOptions, out: Output) -> ExitCode {
    eprintln!("agentwire-bench ci: {}", target.describe());
    let cases = floor_cases();
    let rows = suite::run_cases(&cases, 1, target, opts, out).await;
    let missed: Vec<_> = rows
        .iter()
        .filter(|r| !r.target.is_empty() && !r.pass)
        .collect();
    if missed.is_empty() {
        eprintln!("agentwire-bench ci: every floor met");
        return ExitCode::SUCCESS;
    }
    for r in &missed {
        eprintln!(
            "agentwire-bench ci: FAILED: {} — {}: measured {}, floor {}",
            r.case, r.figure, r.measured, r.target
        );
    }
    ExitCode::FAILURE
}
