//! The peers of `compare`, set up when missing: the peers folder found, Debian's
//! `nats-server` and Go installed, natsbench built offline in GOPATH mode into [`WORK_DIR`],
//! zenohbench built into [`ZENOH_TARGET_DIR`]; a peer that cannot be set up is left out.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

use super::System;

/// Where natsbench is built (and its Go build cache kept).
pub const WORK_DIR: &str = "/tmp/agentwire-compare";
/// Cargo target dir of the zenohbench build (as its README says).
pub const ZENOH_TARGET_DIR: &str = "/tmp/zenohbench-target";
/// Debian's Go source tree of nats.go, used in GOPATH mode.
const GOPATH: &str = "/usr/share/gocode";

/// The peer binaries, once set up.
#[derive(Debug, Clone, Default)]
pub(super) struct Peers {
    /// `nats-server` and the natsbench binary.
    pub(super) nats: Option<(PathBuf, PathBuf)>,
    /// The zenohbench binary (router and clients).
    pub(super) zenoh: Option<PathBuf>,
}

impl Peers {
    pub(super) fn has(&self, s: System) -> bool {
        match s {
            System::Agentwire => true,
            System::Nats => self.nats.is_some(),
            System::Zenoh => self.zenoh.is_some(),
        }
    }
}

/// The peers folder: `--peers` (or its `peers/` child), else the repository's parent dir +
/// `/shared/peers`.
pub(super) fn locate_peers(given: Option<&Path>) -> Result<PathBuf> {
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
pub(super) fn setup_peers(dir: &Path) -> Peers {
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
