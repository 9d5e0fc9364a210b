//! Command-line interface: the flags every command shares, one subcommand per scenario plus
//! `suite`, `compare` and `ci`, and the dispatch from a parsed command to its run.
//!
//! Exit codes: 0 success, 1 a run failed (loss, error, missed target or floor), 2 bad usage.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::broker_proc::{self, BrokerTarget, Routing};
use crate::report::RunReport;
use crate::scenarios::apistatus::ApiStatusParams;
use crate::scenarios::conns::ConnsParams;
use crate::scenarios::pubsub::PubSubParams;
use crate::scenarios::rate::RateParams;
use crate::scenarios::registry::RegistryParams;
use crate::scenarios::reqrep::ReqRepParams;
use crate::scenarios::{self, RunOptions, Spec};
use crate::suite::{self, Output, SuiteArgs};
use crate::{ci, compare, report};

/// Exit code for bad usage.
const EXIT_USAGE: u8 = 2;

/// agentwire-bench: load scenarios against an agentwire broker, with the same figure
/// definitions as the NATS and Zenoh peer references.
#[derive(Debug, Parser)]
#[command(name = "agentwire-bench", version, about)]
pub struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

/// Flags every command takes.
#[derive(Debug, clap::Args)]
struct Common {
    /// Target a running broker at ADDR instead of starting one per run (no CPU/RSS figures).
    #[arg(long, global = true, value_name = "ADDR")]
    server: Option<String>,
    /// With --server: the running broker's admin API (HTTP, e.g. 127.0.0.1:8480), which the
    /// registry and apistatus scenarios call. A started broker gets its own on a free port.
    #[arg(long, global = true, value_name = "ADDR")]
    admin: Option<String>,
    /// Queue-group routing of the started broker (`agentwire serve --routing`) [default: the
    /// broker's, load]. Not with --server: a running broker cannot be reconfigured.
    #[arg(long, global = true, value_enum)]
    routing: Option<Routing>,
    /// The `agentwire` binary to start [default: next to this executable].
    #[arg(long, global = true, value_name = "PATH")]
    broker_bin: Option<PathBuf>,
    /// `--shards` for the started broker [default: the broker's, one per core].
    #[arg(long, global = true)]
    shards: Option<usize>,
    /// Print one JSON object per run on stdout (human-readable text goes to stderr).
    #[arg(long, global = true)]
    json: bool,
    /// Seconds without any delivery after which the rest counts as lost.
    #[arg(long, global = true, default_value_t = 20.0)]
    stall_timeout: f64,
    /// Hard limit on one run, in seconds, on top of its own duration.
    #[arg(long, global = true, default_value_t = 300.0)]
    run_timeout: f64,
    /// Worker threads of this load generator's tokio runtime [default: one per core].
    #[arg(long, global = true)]
    client_threads: Option<usize>,
    /// Start the broker with TLS on its client and admin ports (a certificate made for the
    /// run); every client connects over TLS trusting its CA. Not with --server.
    #[arg(long, global = true)]
    tls: bool,
    /// Start the broker with a user (token, publish/subscribe allow lists): every client
    /// authenticates and every PUB and SUB is checked. Not with --server.
    #[arg(long, global = true)]
    auth: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// P publishers → S subscribers (or one queue group): publish and delivered rates.
    Pubsub(PubSubParams),
    /// C requesters, one request in flight each, against echo repliers: latency and req/s.
    Reqrep(ReqRepParams),
    /// Open-loop offered load: latency from each message's intended send time.
    Rate(RateParams),
    /// N connections pinging once a second: broker RSS per connection, ping latency.
    Conns(ConnsParams),
    /// N registered instances, M config changes over HTTP: delay until each instance sees each.
    Registry(RegistryParams),
    /// GET /api/v1/system/status latency while a pubsub 1→1 load runs.
    Apistatus(ApiStatusParams),
    /// The standard set of cases with targets, repetitions interleaved.
    Suite(SuiteArgs),
    /// The suite's throughput and request/reply cases on agentwire, nats-server and Zenoh,
    /// interleaved, with ratios (sets the peers up when missing).
    Compare(compare::CompareArgs),
    /// Short runs that fail below the CI floors.
    Ci,
    /// The alert engine's anomaly detector on synthetic series (no broker): false alerts on
    /// steady traffic, detection delay of injected latency shifts.
    Anomaly(crate::anomaly::AnomalyArgs),
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let c = &cli.common;
    if let Command::Anomaly(a) = &cli.command {
        return if crate::anomaly::run(a, c.json) {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_USAGE)
        };
    }
    let seconds_ok = |s: f64, max: f64| s > 0.0 && s <= max;
    if !seconds_ok(c.stall_timeout, 3600.0) || !seconds_ok(c.run_timeout, 86_400.0) {
        eprintln!("agentwire-bench: --stall-timeout and --run-timeout must be positive seconds");
        return ExitCode::from(EXIT_USAGE);
    }
    for (flag, addr) in [("--server", &c.server), ("--admin", &c.admin)] {
        if let Some(addr) = addr {
            if !is_loopback(addr) {
                eprintln!("agentwire-bench: {flag} must be a loopback address (127.0.0.0/8, localhost or [::1]), got {addr}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    if c.server.is_some() && c.routing.is_some() {
        eprintln!("agentwire-bench: --routing sets the policy of a broker this harness starts; a --server broker keeps its own (restart it with `agentwire serve --routing ...`)");
        return ExitCode::from(EXIT_USAGE);
    }
    if c.server.is_none() && c.admin.is_some() {
        eprintln!("agentwire-bench: --admin goes with --server (a started broker's admin API is on a free port of its own)");
        return ExitCode::from(EXIT_USAGE);
    }
    let target = match BrokerTarget::resolve(
        c.server.as_deref(),
        c.admin.as_deref(),
        c.broker_bin.as_deref(),
        c.shards,
        c.routing,
    )
    .and_then(|t| t.with_tls(c.tls))
    .and_then(|t| t.with_auth(c.auth))
    {
        Ok(t) => t,
        Err(e) => {
            eprintln!("agentwire-bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match broker_proc::raise_nofile_limit() {
        Ok(n) if n < 10_100 => {
            eprintln!("agentwire-bench: note: open-file limit is {n}; 10,000 connections need more than 10,000 (in this process and in the broker)");
        }
        Ok(_) => {}
        Err(e) => eprintln!("agentwire-bench: note: {e:#}"),
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = c.client_threads {
        rt.worker_threads(n.max(1));
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agentwire-bench: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = RunOptions {
        stall_timeout: Duration::from_secs_f64(c.stall_timeout),
        run_timeout: Duration::from_secs_f64(c.run_timeout),
        label: String::new(),
    };
    let out = Output { json: c.json };
    rt.block_on(async move {
        match cli.command {
            Command::Pubsub(p) => single(Spec::PubSub(p), &target, opts, out).await,
            Command::Reqrep(p) => single(Spec::ReqRep(p), &target, opts, out).await,
            Command::Rate(p) => single(Spec::Rate(p), &target, opts, out).await,
            Command::Conns(p) => single(Spec::Conns(p), &target, opts, out).await,
            Command::Registry(p) => single(Spec::Registry(p), &target, opts, out).await,
            Command::Apistatus(p) => single(Spec::ApiStatus(p), &target, opts, out).await,
            Command::Suite(a) => run_suite(&a, &target, &opts, out).await,
            Command::Compare(a) => run_compare(&a, &target, &opts, out).await,
            Command::Ci => ci::run(&target, &opts, out).await,
            Command::Anomaly(_) => ExitCode::SUCCESS,
        }
    })
}

/// Whether `addr` names a loopback host: only local brokers are load-tested.
fn is_loopback(addr: &str) -> bool {
    let host = addr
        .rsplit_once(':')
        .map_or(addr, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Runs one scenario and prints its report.
async fn single(spec: Spec, target: &BrokerTarget, mut opts: RunOptions, out: Output) -> ExitCode {
    if let Err(e) = spec.validate() {
        eprintln!("agentwire-bench: {e:#}");
        return ExitCode::from(EXIT_USAGE);
    }
    opts.label = spec.scenario().to_owned();
    let r: RunReport = scenarios::run(&spec, target, &opts).await;
    if out.json {
        println!("{}", r.to_json());
    } else {
        println!("{}", r.human());
    }
    if r.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs the standard suite and prints its table.
async fn run_suite(
    a: &SuiteArgs,
    target: &BrokerTarget,
    opts: &RunOptions,
    out: Output,
) -> ExitCode {
    let cases = suite::select(suite::standard_cases(a), &a.only);
    if cases.is_empty() {
        eprintln!("agentwire-bench: --only matches no case");
        return ExitCode::from(EXIT_USAGE);
    }
    eprintln!("agentwire-bench suite: {}", report::environment());
    eprintln!(
        "broker: {}; {} case(s) × {} rep(s), interleaved",
        target.describe(),
        cases.len(),
        a.reps
    );
    let rows = suite::run_cases(&cases, a.reps, target, opts, out).await;
    if rows.iter().all(|r| r.pass) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs the side-by-side comparison and prints its table.
async fn run_compare(
    a: &compare::CompareArgs,
    target: &BrokerTarget,
    opts: &RunOptions,
    out: Output,
) -> ExitCode {
    match compare::run(a, target, opts, out).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("agentwire-bench compare: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn loopback_only() {
        assert!(is_loopback("127.0.0.1:4800"));
        assert!(is_loopback("127.1.2.3:4800"));
        assert!(is_loopback("localhost:4800"));
        assert!(is_loopback("[::1]:4800"));
        assert!(!is_loopback("10.0.0.1:4800"));
        assert!(!is_loopback("example.com:4800"));
    }

    #[test]
    fn flags_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "agentwire-bench",
            "pubsub",
            "--pubs",
            "4",
            "--subs",
            "4",
            "--queue",
            "--json",
            "--server",
            "127.0.0.1:4800",
        ])
        .expect("valid command line");
        assert!(cli.common.json);
        match cli.command {
            Command::Pubsub(p) => assert!(p.queue && p.pubs == 4),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn routing_and_admin_flags() {
        let cli = Cli::try_parse_from([
            "agentwire-bench",
            "reqrep",
            "--repliers",
            "4",
            "--slow-replier-ms",
            "5",
            "--routing",
            "round-robin",
        ])
        .expect("valid command line");
        assert_eq!(cli.common.routing, Some(Routing::RoundRobin));
        match cli.command {
            Command::Reqrep(p) => assert_eq!((p.repliers, p.slow_replier_ms), (4, 5)),
            other => panic!("parsed as {other:?}"),
        }
        let cli = Cli::try_parse_from([
            "agentwire-bench",
            "--server",
            "127.0.0.1:4800",
            "--admin",
            "127.0.0.1:8480",
            "registry",
            "--instances",
            "10",
        ])
        .expect("valid command line");
        assert_eq!(cli.common.admin.as_deref(), Some("127.0.0.1:8480"));
        assert!(
            matches!(cli.command, Command::Registry(p) if p.instances == 10 && p.changes == 20)
        );
        assert!(Cli::try_parse_from(["agentwire-bench", "--routing", "random", "ci"]).is_err());
    }
}
