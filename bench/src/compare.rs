//! `compare`: the suite's throughput and request/reply cases on three systems side by side —
//! agentwire (our own scenarios, exactly as `suite` runs them), nats-server (Debian's
//! `nats-server` driven by the Go harness `../shared/peers/natsbench`) and Zenoh (the router
//! and clients of `../shared/peers/zenohbench`) — with repetitions interleaved (rep 1: every
//! case on every system, then rep 2, ...), summarised per case as median [min .. max] per
//! system and the ratios agentwire/NATS and agentwire/Zenoh (> 1: agentwire is better).
//!
//! Peers are set up when missing, saying how: `apt-get update` + `apt-get install` of
//! `nats-server golang-go golang-github-nats-io-go-nats-dev` (only the missing ones); natsbench
//! built offline in GOPATH mode into [`WORK_DIR`]; zenohbench built with `cargo build
//! --release` into [`ZENOH_TARGET_DIR`]. Nothing is written outside `/tmp`. A peer that cannot
//! be set up is reported and left out; the other systems still run.
//!
//! Every peer server is a fresh process per run on 127.0.0.1 and a free port, sampled from
//! `/proc` and stopped by PID with [`BrokerProcess`] (SIGTERM, then SIGKILL), as the agentwire
//! broker is; every peer client run is bounded by `--run-timeout`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::broker_proc::{free_port, BrokerProcess, BrokerTarget, Window};
use crate::latency::LatencySummary;
use crate::report::{fmt_int, RunReport};
use crate::scenarios::{self, RunOptions, Spec};
use crate::suite::{self, median_min_max, Case, Figure, Output, SuiteArgs};

/// Where natsbench is built (and its Go build cache kept).
pub const WORK_DIR: &str = "/tmp/agentwire-compare";
/// Cargo target dir of the zenohbench build (as its README says).
pub const ZENOH_TARGET_DIR: &str = "/tmp/zenohbench-target";
/// Debian's Go source tree of nats.go, used in GOPATH mode.
const GOPATH: &str = "/usr/share/gocode";
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

/// The peer binaries, once set up.
#[derive(Debug, Clone, Default)]
struct Peers {
    /// `nats-server` and the natsbench binary.
    nats: Option<(PathBuf, PathBuf)>,
    /// The zenohbench binary (router and clients).
    zenoh: Option<PathBuf>,
}

impl Peers {
    fn has(&self, s: System) -> bool {
        match s {
            System::Agentwire => true,
            System::Nats => self.nats.is_some(),
            System::Zenoh => self.zenoh.is_some(),
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

/// The peers folder: `--peers` (or its `peers/` child), else the repository's parent dir +
/// `/shared/peers`.
fn locate_peers(given: Option<&Path>) -> Result<PathBuf> {
    let candidates: Vec<PathBuf> = match given {
        Some(d) => vec![d.to_path_buf(), d.join("peers")],
        None => {
            // bench/ → repository root → its parent.
            let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .map(Path::to_path_buf);
            let mut c: Vec<PathBuf> = repo
                .iter()
                .filter_map(|r| r.parent())
                .map(|p| p.join("shared").join("peers"))
                .collect();
            if let Ok(cwd) = std::env::current_dir() {
                for a in cwd.ancestors().skip(1).take(3) {
                    c.push(a.join("shared").join("peers"));
                }
            }
            c
        }
    };
    candidates
        .iter()
        .find(|d| d.join("natsbench").is_dir() || d.join("zenohbench").is_dir())
        .cloned()
        .ok_or_else(|| {
            anyhow!(
                "no peers folder (natsbench/, zenohbench/) found at {}; pass --peers DIR",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// Sets up both peers; a peer that fails is reported on stderr and left out.
fn setup_peers(dir: &Path) -> Peers {
    let mut p = Peers::default();
    match setup_nats(dir) {
        Ok(x) => p.nats = Some(x),
        Err(e) => eprintln!("compare: nats-server is left out: {e:#}"),
    }
    match setup_zenoh(dir) {
        Ok(x) => p.zenoh = Some(x),
        Err(e) => eprintln!("compare: zenoh is left out: {e:#}"),
    }
    p
}

/// Finds `name` on `PATH`.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Runs `cmd` with inherited stderr after printing what it runs.
fn run_step(what: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("compare: {what}: {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Installs what NATS needs from Debian when missing and builds natsbench when missing or older
/// than its source. Returns (nats-server, natsbench).
fn setup_nats(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let src = dir.join("natsbench");
    if !src.join("main.go").is_file() {
        bail!("{} has no main.go", src.display());
    }
    let mut need = Vec::new();
    if which("nats-server").is_none() {
        need.push("nats-server");
    }
    if which("go").is_none() {
        need.push("golang-go");
    }
    if !Path::new(GOPATH)
        .join("src/github.com/nats-io/nats.go/bench")
        .is_dir()
    {
        need.push("golang-github-nats-io-go-nats-dev");
    }
    if !need.is_empty() {
        eprintln!(
            "compare: installing the NATS peer from Debian: apt-get update && apt-get install -y {}",
            need.join(" ")
        );
        run_step(
            "apt-get update",
            Command::new("apt-get").args(["update", "-qq"]),
        )?;
        run_step(
            "apt-get install",
            Command::new("apt-get")
                .args(["install", "-y", "-qq"])
                .args(&need)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    let server = which("nats-server").ok_or_else(|| anyhow!("nats-server not on PATH"))?;
    let work = Path::new(WORK_DIR);
    std::fs::create_dir_all(work).with_context(|| format!("cannot create {WORK_DIR}"))?;
    let bin = work.join("natsbench");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let stale = match (modified(&bin), modified(&src.join("main.go"))) {
        (Some(b), Some(s)) => b < s,
        _ => true,
    };
    if stale {
        run_step(
            "building natsbench (Go, GOPATH mode, offline, as run-nats.sh does)",
            Command::new("go")
                .args(["build", "-o"])
                .arg(&bin)
                .arg(".")
                .current_dir(&src)
                .env("GO111MODULE", "off")
                .env("GOPATH", GOPATH)
                .env("GOPROXY", "off")
                .env("GOFLAGS", "")
                .env("GOCACHE", work.join("gocache")),
        )?;
    }
    Ok((server, bin))
}

/// Builds zenohbench into [`ZENOH_TARGET_DIR`] when missing. Returns its binary.
fn setup_zenoh(dir: &Path) -> Result<PathBuf> {
    let src = dir.join("zenohbench");
    let bin = Path::new(ZENOH_TARGET_DIR).join("release/zenohbench");
    if bin.is_file() {
        return Ok(bin);
    }
    if !src.join("Cargo.toml").is_file() {
        bail!("{} has no Cargo.toml", src.display());
    }
    eprintln!(
        "compare: building zenohbench (zenoh 1.10) — about 5 minutes on 2 cores the first time; \
         cargo's progress follows"
    );
    run_step(
        "cargo build --release --locked (zenohbench)",
        Command::new("cargo")
            .args(["build", "--release", "--locked"])
            .current_dir(&src)
            .env("CARGO_TARGET_DIR", ZENOH_TARGET_DIR),
    )?;
    if !bin.is_file() {
        bail!("cargo built no {}", bin.display());
    }
    Ok(bin)
}

/// One run of `spec` on a peer: a fresh server, the peer's client under the time limit, the
/// server's CPU over the client run and its peak RSS, the server stopped by PID.
async fn run_peer(sys: System, peers: &Peers, spec: &Spec, opts: &RunOptions) -> RunReport {
    let mut report = RunReport::new(spec.scenario(), spec);
    if let Err(e) = run_peer_inner(sys, peers, spec, opts, &mut report).await {
        report.error(format!("{e:#}"));
    }
    report.finish();
    report
}

async fn run_peer_inner(
    sys: System,
    peers: &Peers,
    spec: &Spec,
    opts: &RunOptions,
    report: &mut RunReport,
) -> Result<()> {
    let (server_cmd, client_bin, client_args, addr) = match sys {
        System::Nats => {
            let (server, client) = peers
                .nats
                .clone()
                .ok_or_else(|| anyhow!("nats-server not set up"))?;
            let addr = free_port()?;
            let mut cmd = Command::new(server);
            cmd.args(["-a", "127.0.0.1", "-p"])
                .arg(addr.port().to_string());
            let url = format!("nats://{addr}");
            let timeout = format!("{}s", opts.run_timeout.as_secs().max(1));
            let mut args = vec!["-s".to_owned(), url, "-mon".to_owned(), String::new()];
            args.extend(["-timeout".to_owned(), timeout]);
            args.extend(nats_args(spec)?);
            (cmd, client, args, addr)
        }
        System::Zenoh => {
            let bin = peers
                .zenoh
                .clone()
                .ok_or_else(|| anyhow!("zenoh not set up"))?;
            let addr = free_port()?;
            let ep = format!("tcp/{addr}");
            let mut cmd = Command::new(&bin);
            cmd.args(["router", "--listen", &ep]);
            let mut args = zenoh_args(spec)?;
            args.extend(["--connect".to_owned(), ep]);
            (cmd, bin, args, addr)
        }
        System::Agentwire => bail!("agentwire runs through the scenarios"),
    };
    let server = tokio::task::spawn_blocking(move || {
        BrokerProcess::spawn(server_cmd, addr, System::name(sys), false)
    })
    .await
    .context("server start task failed")??;
    let outcome = async {
        // Let the server settle as zenohbench's run.sh does.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let window = Window::begin(Some(&server));
        let limit = opts.run_timeout + Duration::from_secs(5);
        let (bin, args) = (client_bin.clone(), client_args.clone());
        let output = tokio::task::spawn_blocking(move || run_client(&bin, &args, limit, sys))
            .await
            .context("client task failed")??;
        let usage = window.end(Some(&server));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))
            .ok_or_else(|| {
                let err = String::from_utf8_lossy(&output.stderr);
                let tail: Vec<&str> = err.lines().rev().take(5).collect();
                anyhow!(
                    "{} client printed no JSON ({}); stderr tail: {}",
                    sys.name(),
                    output.status,
                    tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
                )
            })?;
        let v: Value = serde_json::from_str(line).context("client JSON")?;
        match sys {
            System::Nats => fill_from_nats(report, spec, &v),
            _ => fill_from_zenoh(report, spec, &v),
        }
        report.set_usage(&usage);
        if !output.status.success() {
            report.error(format!(
                "{} client exited with {}",
                sys.name(),
                output.status
            ));
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    match server.sample() {
        Ok(s) => report.broker_peak_rss_kib = Some(s.hwm_kib),
        Err(e) => report.error(format!("cannot sample {}: {e:#}", sys.name())),
    }
    match tokio::task::spawn_blocking(move || server.stop()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => report.error(format!("stopping {}: {e:#}", sys.name())),
        Err(e) => report.error(format!("server stop task failed: {e}")),
    }
    outcome
}

/// What a client run printed.
struct ClientOutput {
    status: std::process::ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Runs a peer's client to completion within `limit` (SIGKILL after it), its output captured
/// in temp files (read once it has exited).
fn run_client(bin: &Path, args: &[String], limit: Duration, sys: System) -> Result<ClientOutput> {
    let stem = std::env::temp_dir().join(format!(
        "agentwire-compare-{}-{}",
        sys.name(),
        std::process::id()
    ));
    let (out_path, err_path) = (stem.with_extension("out"), stem.with_extension("err"));
    let out = std::fs::File::create(&out_path)
        .with_context(|| format!("cannot create {}", out_path.display()))?;
    let err = std::fs::File::create(&err_path)
        .with_context(|| format!("cannot create {}", err_path.display()))?;
    let mut child = Command::new(bin)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{} client did not finish within {:.0} s (--run-timeout); killed",
                sys.name(),
                limit.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = std::fs::read(&out_path).unwrap_or_default();
    let stderr = std::fs::read(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    Ok(ClientOutput {
        status,
        stdout,
        stderr,
    })
}

/// natsbench flags for `spec` (`-n` is the total over all publishers, as ours).
fn nats_args(spec: &Spec) -> Result<Vec<String>> {
    Ok(match spec {
        Spec::PubSub(p) => {
            let mut a = vec![
                "-np".to_owned(),
                p.pubs.to_string(),
                "-ns".to_owned(),
                p.subs.to_string(),
                "-ms".to_owned(),
                p.size.to_string(),
                "-n".to_owned(),
                p.msgs.to_string(),
            ];
            if p.queue {
                a.extend(["-queue".to_owned(), "q".to_owned()]);
            }
            a
        }
        Spec::ReqRep(p) => vec![
            "-mode".to_owned(),
            "reqrep".to_owned(),
            "-c".to_owned(),
            p.clients.to_string(),
            "-ms".to_owned(),
            p.size.to_string(),
            "-n".to_owned(),
            p.requests.to_string(),
            "-warmup".to_owned(),
            p.warmup.to_string(),
        ],
        Spec::Rate(_) | Spec::Conns(_) | Spec::Registry(_) | Spec::ApiStatus(_) => {
            bail!("natsbench has no {} scenario", spec.scenario())
        }
    })
}

/// zenohbench arguments for `spec` (its `--msgs` is per publisher).
fn zenoh_args(spec: &Spec) -> Result<Vec<String>> {
    Ok(match spec {
        Spec::PubSub(p) => vec![
            "pubsub".to_owned(),
            "--pubs".to_owned(),
            p.pubs.to_string(),
            "--subs".to_owned(),
            p.subs.to_string(),
            "--size".to_owned(),
            p.size.to_string(),
            "--msgs".to_owned(),
            (p.msgs / p.pubs.max(1) as u64).to_string(),
        ],
        Spec::ReqRep(p) => vec![
            "reqrep".to_owned(),
            "--clients".to_owned(),
            p.clients.to_string(),
            "--size".to_owned(),
            p.size.to_string(),
            "--requests".to_owned(),
            p.requests.to_string(),
            "--warmup".to_owned(),
            p.warmup.to_string(),
        ],
        Spec::Rate(_) | Spec::Conns(_) | Spec::Registry(_) | Spec::ApiStatus(_) => {
            bail!("zenohbench has no {} scenario", spec.scenario())
        }
    })
}

fn f64_of(v: &Value, k: &str) -> Option<f64> {
    v.get(k).and_then(Value::as_f64)
}

fn u64_of(v: &Value, k: &str) -> Option<u64> {
    v.get(k)
        .and_then(|x| x.as_u64().or_else(|| x.as_f64().map(|f| f.max(0.0) as u64)))
}

/// A latency summary from `lat_*_us` fields.
fn latency_of(v: &Value, count: u64) -> Option<LatencySummary> {
    Some(LatencySummary {
        p50: f64_of(v, "lat_p50_us")?,
        p90: f64_of(v, "lat_p90_us").unwrap_or(0.0),
        p95: f64_of(v, "lat_p95_us").unwrap_or(0.0),
        p99: f64_of(v, "lat_p99_us")?,
        p999: f64_of(v, "lat_p999_us").unwrap_or(0.0),
        max: f64_of(v, "lat_max_us").unwrap_or(0.0),
        mean: f64_of(v, "lat_mean_us").unwrap_or(0.0),
        count,
    })
}

/// Fills `r` from one natsbench JSON line.
fn fill_from_nats(r: &mut RunReport, spec: &Spec, v: &Value) {
    r.elapsed_s = f64_of(v, "e2e_secs")
        .or_else(|| f64_of(v, "pub_secs"))
        .or_else(|| f64_of(v, "req_secs"))
        .unwrap_or(0.0);
    match spec {
        Spec::PubSub(p) => {
            r.published = u64_of(v, "n").unwrap_or(0);
            r.published_per_sec = f64_of(v, "pub_rate");
            r.msgs_in = r.published;
            if p.subs > 0 {
                r.expected = u64_of(v, "sub_expected").unwrap_or(0);
                r.delivered = u64_of(v, "sub_received").unwrap_or(0);
                r.lost = r.expected.saturating_sub(r.delivered);
                r.delivered_per_sec = f64_of(v, "deliver_rate");
                r.msgs_out = r.delivered;
            }
        }
        Spec::ReqRep(_) => {
            let n = u64_of(v, "reqs").unwrap_or(0);
            r.requests_per_sec = f64_of(v, "req_rate");
            r.latency_us = latency_of(v, n);
            r.msgs_in = 2 * n;
            r.msgs_out = 2 * n;
        }
        Spec::Rate(_) | Spec::Conns(_) | Spec::Registry(_) | Spec::ApiStatus(_) => {}
    }
    if let Some(e) = v
        .get("error")
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty())
    {
        r.error(format!("natsbench: {e}"));
    }
    if v.get("complete").and_then(Value::as_bool) != Some(true) && r.lost == 0 {
        r.error("natsbench: run not complete");
    }
}

/// Fills `r` from one zenohbench JSON line.
fn fill_from_zenoh(r: &mut RunReport, spec: &Spec, v: &Value) {
    r.elapsed_s = f64_of(v, "elapsed_s").unwrap_or(0.0);
    match spec {
        Spec::PubSub(_) => {
            r.published = u64_of(v, "published").unwrap_or(0);
            r.published_per_sec = f64_of(v, "published_per_sec");
            r.expected = u64_of(v, "expected").unwrap_or(0);
            r.delivered = u64_of(v, "delivered").unwrap_or(0);
            r.lost = u64_of(v, "lost").unwrap_or(0);
            r.delivered_per_sec = f64_of(v, "delivered_per_sec");
            r.msgs_in = r.published;
            r.msgs_out = r.delivered;
            if v.get("complete").and_then(Value::as_bool) != Some(true) && r.lost == 0 {
                r.error("zenohbench: run not complete");
            }
        }
        Spec::ReqRep(p) => {
            let n = u64_of(v, "completed").unwrap_or(0);
            r.requests_per_sec = f64_of(v, "req_per_sec");
            r.latency_us = latency_of(v, n);
            r.msgs_in = 2 * n;
            r.msgs_out = 2 * n;
            let errors = u64_of(v, "errors").unwrap_or(0);
            if errors > 0 {
                r.error(format!("zenohbench: {errors} request errors"));
            }
            if n < p.requests {
                r.error(format!(
                    "zenohbench: {} of {} requests completed",
                    fmt_int(n),
                    fmt_int(p.requests)
                ));
            }
        }
        Spec::Rate(_) | Spec::Conns(_) | Spec::Registry(_) | Spec::ApiStatus(_) => {}
    }
    if let Some(e) = v
        .get("error")
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty())
    {
        r.error(format!("zenohbench: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::pubsub::PubSubParams;

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

    #[test]
    fn peer_arguments() {
        let spec = Spec::PubSub(PubSubParams {
            pubs: 4,
            subs: 4,
            queue: true,
            size: 128,
            msgs: 4000,
        });
        let n = nats_args(&spec).expect("pubsub maps");
        assert!(n.windows(2).any(|w| w == ["-queue", "q"]));
        assert!(n.windows(2).any(|w| w == ["-n", "4000"]));
        let z = zenoh_args(&spec).expect("pubsub maps");
        assert!(z.windows(2).any(|w| w == ["--msgs", "1000"]));
    }

    #[test]
    fn nats_json_maps_to_a_report() {
        let spec = Spec::PubSub(PubSubParams {
            pubs: 1,
            subs: 1,
            queue: false,
            size: 128,
            msgs: 1000,
        });
        let v: Value = serde_json::from_str(
            r#"{"mode":"pubsub","n":1000,"complete":false,"pub_rate":5000.0,
                "sub_expected":1000,"sub_received":990,"deliver_rate":4000.0,"e2e_secs":0.25}"#,
        )
        .expect("valid JSON");
        let mut r = RunReport::new("pubsub", &spec);
        fill_from_nats(&mut r, &spec, &v);
        r.finish();
        assert_eq!(r.lost, 10);
        assert!(!r.ok);
        assert_eq!(r.delivered_per_sec, Some(4000.0));
    }

    #[test]
    fn zenoh_reqrep_json_maps_to_a_report() {
        let spec = Spec::ReqRep(crate::scenarios::reqrep::ReqRepParams {
            clients: 1,
            size: 128,
            requests: 100,
            repliers: 1,
            warmup: 10,
            slow_replier_ms: 0,
        });
        let v: Value = serde_json::from_str(
            r#"{"req_per_sec":4000.0,"lat_p50_us":240.0,"lat_p90_us":300.0,"lat_p99_us":1310.0,
                "lat_p999_us":2000.0,"lat_max_us":3000.0,"completed":100,"errors":0,"error":null}"#,
        )
        .expect("valid JSON");
        let mut r = RunReport::new("reqrep", &spec);
        fill_from_zenoh(&mut r, &spec, &v);
        r.finish();
        assert!(r.ok, "{:?}", r.errors);
        assert_eq!(r.latency_us.map(|l| l.p99), Some(1310.0));
    }
}
