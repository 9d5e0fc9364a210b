//! `compare`: the suite's throughput and request/reply cases on three systems side by side —
//! agentwire (our own scenarios, exactly as `suite` runs them), nats-server (Debian's
//! `nats-server` driven by the Go harness `../shared/peers/natsbench`) and Zenoh (the router
//! and clients of `../shared/peers/zenohbench`) — with repetitions interleaved (rep 1: every
//! case on every system, then rep 2, ...), summarised per case as median [min .. max] per
//! system and the ratios agentwire/NATS and agentwire/Zenoh (> 1: agentwire is better).
//!
//! Peers are set up when missing, saying how: `apt-get update` + `apt-get install` of
//! `nats-server golang-go golang-github-nats-io-go-nats-dev` (only the missing ones); natsbench
//! built offline in GOPATH mode into [`setup::WORK_DIR`]; zenohbench built with `cargo build
//! --release` into [`setup::ZENOH_TARGET_DIR`]. Nothing is written outside `/tmp`. A peer that cannot
//! be set up is reported and left out; the other systems still run.
//!
//! Every peer server is a fresh process per run on 127.0.0.1 and a free port, sampled from
//! `/proc` and stopped by PID with [`BrokerProcess`] (SIGTERM, then SIGKILL), as the agentwire
//! broker is; every peer client run is bounded by `--run-timeout`.
//!
//! This module holds the cases, the systems, the interleaved runs and the summary table;
//! [`setup`] finds, installs and builds the peers; [`peer_run`] runs one case on a peer and
//! reads its client's JSON into a report.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::broker_proc::BrokerTarget;
use crate::report::{fmt_int, RunReport};
use crate::scenarios::{self, RunOptions, Spec};
use crate::suite::{self, median_min_max, Case, Figure, Output, SuiteArgs};

mod peer_run;
mod setup;

use peer_run::run_peer;
use setup::{locate_peers, setup_peers};

/// Cases of the suite that `compare` runs.
const CASES: [&str; 8] = [
    "pubsub-1to1-128",
    "pubsub-1to1-16",
    "pubsub-pubonly-16",
    "pubsub-1to4-128",
    "pubsub-4to4-queue-128",
    "pubsub-1to1-1k",
    "reqrep-c1-128",
    "reqrep-c32-128",
];

/// Flags of `compare`.
#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// Repetitions of every case on every system, interleaved.
    #[arg(long, default_value_t = 3)]
    pub reps: u32,
    /// Divide every message and request count by this (a quicker, noisier run).
    #[arg(long, default_value_t = 1)]
    pub scale: u64,
    /// The peers folder (holding natsbench/ and zenohbench/), or a folder holding `peers/`
    /// [default: the repository's parent dir + /shared/peers].
    #[arg(long, value_name = "DIR")]
    pub peers: Option<PathBuf>,
    /// Run only the cases whose name contains one of these (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

/// A system under comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    /// This repository's broker.
    Agentwire,
    /// Debian's nats-server with natsbench.
    Nats,
    /// Zenoh router (zenohbench) with zenohbench clients.
    Zenoh,
}

impl System {
    /// The three, in table order.
    pub const ALL: [System; 3] = [System::Agentwire, System::Nats, System::Zenoh];

    /// Name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            System::Agentwire => "agentwire",
            System::Nats => "nats-server",
            System::Zenoh => "zenoh",
        }
    }

    /// Whether the system's harness has this case (Zenoh has no pub-only and no queue group).
    pub fn supports(self, spec: &Spec) -> bool {
        match (self, spec) {
            (System::Agentwire, _) => true,
            (System::Nats, Spec::PubSub(_)) => true,
            // The peer harnesses have no slow replier.
            (System::Nats, Spec::ReqRep(p)) => p.slow_replier_ms == 0,
            (System::Zenoh, Spec::PubSub(p)) => p.subs > 0 && !p.queue,
            (System::Zenoh, Spec::ReqRep(p)) => p.repliers == 1 && p.slow_replier_ms == 0,
            _ => false,
        }
    }
}

/// The compare cases: the suite's cases named in [`CASES`], sized by `--scale`.
pub fn cases(a: &CompareArgs) -> Vec<Case> {
    let s = SuiteArgs {
        reps: a.reps,
        scale: a.scale,
        quick: false,
        conns: None,
        conns_duration: None,
        rate_duration: None,
        only: Vec::new(),
    };
    let all = suite::standard_cases(&s)
        .into_iter()
        .filter(|c| CASES.contains(&c.name))
        .collect();
    suite::select(all, &a.only)
}

/// The figures a case is compared on.
pub fn figures(spec: &Spec) -> Vec<Figure> {
    use Figure::*;
    match spec {
        Spec::PubSub(p) if p.subs == 0 => vec![PublishedPerSec, BrokerCpuPerMMsgs],
        Spec::PubSub(_) => vec![DeliveredPerSec, BrokerCpuPerMMsgs, BrokerPeakRssMib],
        Spec::ReqRep(_) => vec![RequestsPerSec, LatencyP50, LatencyP99],
        Spec::Rate(_) | Spec::Conns(_) | Spec::Registry(_) | Spec::ApiStatus(_) => Vec::new(),
    }
}

/// Whether more of `f` is better (rates) or less (latency, CPU, memory).
pub fn higher_is_better(f: Figure) -> bool {
    matches!(
        f,
        Figure::PublishedPerSec
            | Figure::DeliveredPerSec
            | Figure::RequestsPerSec
            | Figure::AchievedRate
    )
}

/// agentwire's median over a peer's, oriented so that > 1 means agentwire is better.
pub fn ratio(f: Figure, agentwire: f64, peer: f64) -> Option<f64> {
    let r = if higher_is_better(f) {
        agentwire / peer
    } else {
        peer / agentwire
    };
    r.is_finite().then_some(r)
}

/// Runs `compare` and prints its table. Returns whether every run was ok.
pub async fn run(
    a: &CompareArgs,
    target: &BrokerTarget,
    opts: &RunOptions,
    out: Output,
) -> Result<bool> {
    let cases = cases(a);
    if cases.is_empty() {
        bail!("--only matches no case");
    }
    let peers_dir = locate_peers(a.peers.as_deref())?;
    eprintln!("agentwire-bench compare: {}", crate::report::environment());
    eprintln!("peers: {}", peers_dir.display());
    let peers = {
        let dir = peers_dir.clone();
        tokio::task::spawn_blocking(move || setup_peers(&dir))
            .await
            .context("peer setup task failed")?
    };
    eprintln!(
        "agentwire: {}; nats-server and zenoh: a fresh server process per run on 127.0.0.1; \
         {} case(s) × {} rep(s), interleaved",
        target.describe(),
        cases.len(),
        a.reps
    );
    let reps = a.reps.max(1);
    // results[case][system] = runs
    let mut results: Vec<[Vec<RunReport>; 3]> = vec![Default::default(); cases.len()];
    for rep in 1..=reps {
        for (ci, case) in cases.iter().enumerate() {
            for (si, sys) in System::ALL.iter().copied().enumerate() {
                if !sys.supports(&case.spec) || !peers.has(sys) {
                    continue;
                }
                let mut o = opts.clone();
                o.label = format!("[{rep}/{reps}] {} {}", case.name, sys.name());
                let mut r = match sys {
                    System::Agentwire => scenarios::run(&case.spec, target, &o).await,
                    System::Nats | System::Zenoh => run_peer(sys, &peers, &case.spec, opts).await,
                };
                r.case = Some(case.name.to_owned());
                r.rep = Some(rep);
                eprintln!(
                    "[rep {rep}/{reps}] {:<22} {:<11} {}",
                    case.name,
                    sys.name(),
                    r.one_line()
                );
                if out.json {
                    let mut v: Value = serde_json::from_str(&r.to_json()).unwrap_or(Value::Null);
                    if let Value::Object(m) = &mut v {
                        m.insert("system".to_owned(), Value::from(sys.name()));
                    }
                    let stdout = std::io::stdout();
                    let mut lock = stdout.lock();
                    let _ = writeln!(lock, "{v}");
                    let _ = lock.flush();
                }
                if let Some(slot) = results.get_mut(ci).and_then(|s| s.get_mut(si)) {
                    slot.push(r);
                }
            }
        }
    }
    let table = render(&cases, &results);
    if out.json {
        eprintln!("{table}");
    } else {
        println!("{table}");
    }
    Ok(results.iter().flatten().flatten().all(|r| r.ok))
}

/// The summary: one Markdown table, a row per case and figure.
fn render(cases: &[Case], results: &[[Vec<RunReport>; 3]]) -> String {
    let mut t = String::from(
        "ratio = agentwire / peer for rates, peer / agentwire for latency, CPU and RSS: \
         > 1 means agentwire is better\n\n\
         | case | figure | agentwire | nats-server | zenoh | aw/NATS | aw/Zenoh |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for (case, runs) in cases.iter().zip(results) {
        let mut failures = Vec::new();
        for f in figures(&case.spec) {
            let stats: Vec<Option<(f64, f64, f64)>> = runs
                .iter()
                .map(|rs| {
                    let v: Vec<f64> = rs.iter().filter_map(|r| f.value(r)).collect();
                    median_min_max(&v)
                })
                .collect();
            let cell = |s: &Option<(f64, f64, f64)>, n: usize| match s {
                None => "—".to_owned(),
                Some((m, _, _)) if n <= 1 => f.format(*m),
                Some((m, lo, hi)) => {
                    format!("{} [{}..{}]", f.format(*m), f.format(*lo), f.format(*hi))
                }
            };
            let aw = stats.first().copied().flatten();
            let rat = |i: usize| match (aw, stats.get(i).copied().flatten()) {
                (Some((a, _, _)), Some((p, _, _))) => {
                    ratio(f, a, p).map_or_else(|| "—".to_owned(), |r| format!("{r:.2}×"))
                }
                _ => "—".to_owned(),
            };
            let n = |i: usize| runs.get(i).map_or(0, Vec::len);
            t.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                case.title,
                f.label(),
                cell(&stats[0], n(0)),
                cell(&stats[1], n(1)),
                cell(&stats[2], n(2)),
                rat(1),
                rat(2)
            ));
        }
        for (sys, rs) in System::ALL.iter().zip(runs) {
            let bad: Vec<&RunReport> = rs.iter().filter(|r| !r.ok).collect();
            if let Some(first) = bad.first() {
                let lost: u64 = rs.iter().map(|r| r.lost).sum();
                failures.push(format!(
                    "{}: {}/{} runs failed, {} lost ({})",
                    sys.name(),
                    bad.len(),
                    rs.len(),
                    fmt_int(lost),
                    first.errors.first().map_or("", String::as_str)
                ));
            }
        }
        for f in failures {
            t.push_str(&format!("| {} | runs not ok | {f} | | | | |\n", case.title));
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> CompareArgs {
        CompareArgs {
            reps: 3,
            scale: 1,
            peers: None,
            only: Vec::new(),
        }
    }

    #[test]
    fn the_eight_cases_and_who_runs_them() {
        let cs = cases(&args());
        assert_eq!(cs.len(), 8);
        let zenoh = cs
            .iter()
            .filter(|c| System::Zenoh.supports(&c.spec))
            .count();
        assert_eq!(zenoh, 6, "no pub-only and no queue group on zenoh");
        assert!(cs.iter().all(|c| System::Nats.supports(&c.spec)));
        let scaled = cases(&CompareArgs {
            scale: 10,
            ..args()
        });
        match &scaled[0].spec {
            Spec::PubSub(p) => assert_eq!(p.msgs, 300_000),
            other => panic!("first case is pubsub, got {other:?}"),
        }
    }

    #[test]
    fn ratios_favour_agentwire_above_one() {
        assert_eq!(ratio(Figure::DeliveredPerSec, 3.0, 1.5), Some(2.0));
        assert_eq!(ratio(Figure::LatencyP50, 50.0, 200.0), Some(4.0));
        assert_eq!(ratio(Figure::LatencyP50, 50.0, 0.0), Some(0.0));
        assert_eq!(ratio(Figure::RequestsPerSec, 1.0, 0.0), None);
    }
}
