//! The broker under test as a separate process, and what `/proc` says about it.
//!
//! By default every run starts a fresh `agentwire serve --listen 127.0.0.1:<free port>` (the
//! binary next to this executable, or `--broker-bin`) with its admin API on another free port
//! (`--admin`), a fresh temporary `--data-dir` and, when asked, a queue-group `--routing`
//! policy; waits until the port accepts, and stops it by PID afterwards (SIGTERM, then SIGKILL
//! after [`process::STOP_GRACE`]). A fresh process per run makes its peak RSS (`VmHWM`) a per-run
//! figure. `--server ADDR` targets a running broker instead (and `--admin ADDR` its admin API);
//! nothing is started or sampled then.
//!
//! Sampling reads `/proc/PID/stat` (utime + stime, in clock ticks) and `/proc/PID/status`
//! (`VmHWM`, `VmRSS`), the same sources the NATS and Zenoh peer references used, plus this
//! process's own CPU time and the host's idle and steal shares from `/proc/stat`.
//!
//! This module holds the targets ([`BrokerTarget`], [`Routing`], [`Broker`]) and how an
//! `agentwire serve` is started for a run; [`process`] the child process itself (spawn, wait
//! until it accepts, stop by PID); [`sampling`] the `/proc` readings and measured windows.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

mod process;
mod sampling;

pub use process::{free_port, raise_nofile_limit, BrokerProcess};
pub use sampling::{Window, WindowUsage};

/// The token of the one user of a broker started with `--auth`.
pub const BENCH_TOKEN: &str = "agentwire-bench-token";

/// The config file of a broker started with `--auth`: one user whose rules allow exactly what
/// the scenarios do, so every PUB and SUB runs the permission check (replies to requests go
/// through `allow_responses`).
fn users_toml() -> String {
    format!(
        "[[users]]\nname = \"bench\"\ntoken = \"{BENCH_TOKEN}\"\npublish = [\"bench.>\"]\n\
         subscribe = [\"bench.>\", \"_INBOX.>\"]\ndeny_publish = [\"bench.admin.>\"]\n"
    )
}

/// How many free ports are tried when a started broker exits at once (port taken meanwhile).
const START_ATTEMPTS: u32 = 3;

/// Queue-group routing policy of a started broker (`agentwire serve --routing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Routing {
    /// Power of two choices on the members' load (the broker's default).
    Load,
    /// Each member in turn.
    RoundRobin,
}

impl Routing {
    /// The value of `agentwire serve --routing`.
    pub fn as_arg(self) -> &'static str {
        match self {
            Routing::Load => "load",
            Routing::RoundRobin => "round-robin",
        }
    }
}

/// Which broker the runs talk to.
#[derive(Debug, Clone)]
pub enum BrokerTarget {
    /// Start a fresh `agentwire serve` process for every run.
    Spawn {
        /// The `agentwire` binary.
        bin: PathBuf,
        /// `--shards N`, or the broker's default (one per core).
        shards: Option<usize>,
        /// `--routing`, or the broker's default (`load`).
        routing: Option<Routing>,
        /// Start it with TLS (a certificate generated per run); clients trust its CA.
        tls: bool,
        /// Start it with a `[[users]]` config (token, publish/subscribe allow lists); clients
        /// authenticate with [`BENCH_TOKEN`].
        auth: bool,
    },
    /// A broker that is already running: no CPU or RSS figures, its routing as it is.
    External {
        /// Client address.
        addr: String,
        /// Its admin API (`host:port`), if given (`--admin`).
        admin: Option<String>,
    },
}

impl BrokerTarget {
    /// Resolves the target from the common flags: `--server` (with `--admin`) wins; otherwise
    /// `--broker-bin`, or `agentwire` next to this executable, with `--shards` and `--routing`.
    ///
    /// # Errors
    /// When no broker binary is found (with the command that builds it), or `--routing` is
    /// given with `--server` (a running broker's policy cannot be changed from here).
    pub fn resolve(
        server: Option<&str>,
        admin: Option<&str>,
        broker_bin: Option<&Path>,
        shards: Option<usize>,
        routing: Option<Routing>,
    ) -> Result<BrokerTarget> {
        if let Some(addr) = server {
            if routing.is_some() {
                bail!("--routing applies to a broker this harness starts, not to --server");
            }
            return Ok(BrokerTarget::External {
                addr: addr.to_owned(),
                admin: admin.map(str::to_owned),
            });
        }
        if admin.is_some() {
            bail!("--admin names the admin API of a --server broker (a started broker gets a free port)");
        }
        let bin = match broker_bin {
            Some(p) => p.to_path_buf(),
            None => {
                let exe = std::env::current_exe().context("cannot locate this executable")?;
                exe.parent()
                    .map(|d| d.join("agentwire"))
                    .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))?
            }
        };
        if !bin.is_file() {
            bail!(
                "broker binary {} not found: build it with `cargo build --release -p \
                 agentwire-broker` (same profile and target dir as agentwire-bench), pass \
                 --broker-bin PATH, or target a running broker with --server ADDR",
                bin.display()
            );
        }
        Ok(BrokerTarget::Spawn {
            bin,
            shards,
            routing,
            tls: false,
            auth: false,
        })
    }

    /// The same target with authentication and permissions (`--auth`): a started broker gets
    /// one user (token [`BENCH_TOKEN`], publish `bench.>`, subscribe `bench.>` and `_INBOX.>`,
    /// replies through `allow_responses`), and every client authenticates as it.
    ///
    /// # Errors
    /// With a running broker (`--server`): its users are not known here.
    pub fn with_auth(self, on: bool) -> Result<BrokerTarget> {
        match self {
            BrokerTarget::Spawn {
                bin,
                shards,
                routing,
                tls,
                ..
            } => Ok(BrokerTarget::Spawn {
                bin,
                shards,
                routing,
                tls,
                auth: on,
            }),
            BrokerTarget::External { .. } if on => {
                bail!("--auth starts a broker with a user made for the run; not with --server")
            }
            t @ BrokerTarget::External { .. } => Ok(t),
        }
    }

    /// The same target with TLS on the client port (`--tls`): a started broker gets a
    /// certificate generated for the run and clients trust its CA.
    ///
    /// # Errors
    /// With a running broker (`--server`): its certificate is not known here.
    pub fn with_tls(self, on: bool) -> Result<BrokerTarget> {
        match self {
            BrokerTarget::Spawn {
                bin,
                shards,
                routing,
                auth,
                ..
            } => Ok(BrokerTarget::Spawn {
                bin,
                shards,
                routing,
                tls: on,
                auth,
            }),
            BrokerTarget::External { .. } if on => {
                bail!(
                    "--tls starts a broker with a certificate made for the run; not with --server"
                )
            }
            t @ BrokerTarget::External { .. } => Ok(t),
        }
    }

    /// The same started broker with another routing policy; `None` for a running broker
    /// (its policy is what it is).
    pub fn with_routing(&self, r: Routing) -> Option<BrokerTarget> {
        match self {
            BrokerTarget::Spawn {
                bin,
                shards,
                tls,
                auth,
                ..
            } => Some(BrokerTarget::Spawn {
                bin: bin.clone(),
                shards: *shards,
                routing: Some(r),
                tls: *tls,
                auth: *auth,
            }),
            BrokerTarget::External { .. } => None,
        }
    }

    /// The `--routing` a started broker gets (`None`: the broker's default, or not started
    /// here).
    pub fn routing(&self) -> Option<Routing> {
        match self {
            BrokerTarget::Spawn { routing, .. } => *routing,
            BrokerTarget::External { .. } => None,
        }
    }

    /// A one-line description for report headers.
    pub fn describe(&self) -> String {
        match self {
            BrokerTarget::Spawn {
                bin,
                shards,
                routing,
                tls,
                auth,
            } => format!(
                "fresh `{} serve` per run, shards {}, routing {}{}{}",
                bin.display(),
                shards.map_or_else(|| "default (one per core)".to_owned(), |s| s.to_string()),
                routing.map_or("default (load)", Routing::as_arg),
                if *tls { ", TLS" } else { "" },
                if *auth { ", auth + permissions" } else { "" }
            ),
            BrokerTarget::External { addr, admin } => format!(
                "running broker at {addr}, admin API {} (no CPU/RSS)",
                admin.as_deref().unwrap_or("not given")
            ),
        }
    }

    /// Starts a broker for one run (or just names the external one).
    ///
    /// # Errors
    /// When the process cannot be started or does not accept connections in time.
    pub fn start(&self) -> Result<Broker> {
        match self {
            BrokerTarget::External { addr, admin } => Ok(Broker {
                addr: addr.clone(),
                admin: admin.clone(),
                tls_ca: None,
                token: None,
                process: None,
            }),
            BrokerTarget::Spawn {
                bin,
                shards,
                routing,
                tls,
                auth,
            } => {
                let mut last_err = None;
                for _ in 0..START_ATTEMPTS {
                    match BrokerProcess::start(bin, *shards, *routing, *tls, *auth) {
                        Ok(p) => {
                            return Ok(Broker {
                                addr: p.addr.to_string(),
                                admin: p.admin_addr.map(|a| a.to_string()),
                                tls_ca: p.tls_ca.clone(),
                                token: auth.then(|| BENCH_TOKEN.to_owned()),
                                process: Some(p),
                            })
                        }
                        Err(e) => last_err = Some(e),
                    }
                }
                Err(last_err.unwrap_or_else(|| anyhow!("broker did not start")))
            }
        }
    }
}

/// The broker of one run.
#[derive(Debug)]
pub struct Broker {
    addr: String,
    admin: Option<String>,
    tls_ca: Option<PathBuf>,
    token: Option<String>,
    process: Option<BrokerProcess>,
}

impl Broker {
    /// The address clients connect to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The admin API's address (`host:port`), when known.
    pub fn admin(&self) -> Option<&str> {
        self.admin.as_deref()
    }

    /// The CA file clients trust, when the broker runs TLS.
    pub fn tls_ca(&self) -> Option<&Path> {
        self.tls_ca.as_deref()
    }

    /// The token clients authenticate with, when the broker has users (`--auth`).
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The process, when this run started one.
    pub fn process(&self) -> Option<&BrokerProcess> {
        self.process.as_ref()
    }

    /// Stops the broker if this run started it.
    ///
    /// # Errors
    /// When it had to be killed or its exit status says it failed.
    pub fn stop(mut self) -> Result<()> {
        match self.process.take() {
            Some(p) => p.stop(),
            None => Ok(()),
        }
    }
}

impl BrokerProcess {
    /// Starts the broker on a free loopback port and waits until it accepts.
    fn start(
        bin: &Path,
        shards: Option<usize>,
        routing: Option<Routing>,
        tls: bool,
        auth: bool,
    ) -> Result<BrokerProcess> {
        let addr = free_port()?;
        let admin = free_port()?;
        let data_dir = std::env::temp_dir().join(format!(
            "agentwire-bench-data-{}-{}",
            std::process::id(),
            addr.port()
        ));
        let mut cmd = Command::new(bin);
        cmd.arg("serve").arg("--listen").arg(addr.to_string());
        cmd.arg("--admin").arg(admin.to_string());
        cmd.arg("--data-dir").arg(&data_dir);
        if let Some(s) = shards {
            cmd.arg("--shards").arg(s.to_string());
        }
        if let Some(r) = routing {
            cmd.arg("--routing").arg(r.as_arg());
        }
        let tls_ca = if tls {
            let dir = data_dir.join("tls");
            write_certificates(&dir)?;
            cmd.arg("--tls-cert").arg(dir.join("server.pem"));
            cmd.arg("--tls-key").arg(dir.join("server.key"));
            Some(dir.join("ca.pem"))
        } else {
            None
        };
        if auth {
            std::fs::create_dir_all(&data_dir)
                .with_context(|| format!("cannot create {}", data_dir.display()))?;
            let file = data_dir.join("users.toml");
            std::fs::write(&file, users_toml())
                .with_context(|| format!("cannot write {}", file.display()))?;
            cmd.arg("--config").arg(file);
        }
        // Per-connection info logs would cost the broker time in the conns scenario.
        cmd.env("RUST_LOG", "warn");
        let mut p = BrokerProcess::spawn(cmd, addr, "broker", true)?;
        p.admin_addr = Some(admin);
        p.data_dir = Some(data_dir);
        p.tls_ca = tls_ca;
        Ok(p)
    }
}

/// Writes a CA (`ca.pem`) and a server certificate for 127.0.0.1 and localhost signed by it
/// (`server.pem`, `server.key`) into `dir`, for a TLS run.
///
/// # Errors
/// When the directory or files cannot be written.
pub fn write_certificates(dir: &Path) -> Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "agentwire-bench CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    p.distinguished_name.push(DnType::CommonName, "agentwire");
    let cert = p.signed_by(&key, &ca_cert, &ca_key)?;
    for (name, text) in [
        ("ca.pem", ca_cert.pem()),
        ("server.pem", cert.pem()),
        ("server.key", key.serialize_pem()),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_and_admin_go_with_the_right_target() {
        let routing = Some(Routing::RoundRobin);
        assert!(BrokerTarget::resolve(Some("127.0.0.1:4800"), None, None, None, routing).is_err());
        assert!(BrokerTarget::resolve(None, Some("127.0.0.1:8480"), None, None, None).is_err());
        let ext = BrokerTarget::resolve(
            Some("127.0.0.1:4800"),
            Some("127.0.0.1:8480"),
            None,
            None,
            None,
        )
        .expect("a running broker with its admin API");
        assert!(ext.with_routing(Routing::Load).is_none());
        assert_eq!(ext.routing(), None);
        let spawn = BrokerTarget::Spawn {
            bin: PathBuf::from("agentwire"),
            shards: Some(2),
            routing: None,
            tls: false,
            auth: false,
        };
        let rr = spawn
            .with_routing(Routing::RoundRobin)
            .expect("a started broker takes --routing");
        assert_eq!(rr.routing().map(Routing::as_arg), Some("round-robin"));
        assert!(rr.describe().contains("routing round-robin"));
    }

    fn ext_auth_refused() -> bool {
        BrokerTarget::resolve(Some("127.0.0.1:4800"), None, None, None, None)
            .expect("a running broker")
            .with_auth(true)
            .is_err()
    }

    #[test]
    fn the_auth_users_file_is_a_valid_broker_config() {
        let cfg: agentwire_broker::Config =
            toml::from_str(&users_toml()).expect("the broker parses it");
        cfg.validate().expect("and accepts it");
        assert_eq!(cfg.users.len(), 1);
        assert_eq!(cfg.users[0].token.as_deref(), Some(BENCH_TOKEN));
    }

    #[test]
    fn tls_goes_with_a_started_broker_and_its_certificates_are_written() {
        let ext = BrokerTarget::resolve(Some("127.0.0.1:4800"), None, None, None, None)
            .expect("a running broker");
        assert!(
            ext.clone().with_tls(true).is_err(),
            "no --tls with --server"
        );
        assert!(ext.with_tls(false).is_ok());
        let spawn = BrokerTarget::Spawn {
            bin: PathBuf::from("agentwire"),
            shards: None,
            routing: None,
            tls: false,
            auth: false,
        }
        .with_tls(true)
        .expect("a started broker takes --tls");
        assert!(spawn.describe().ends_with(", TLS"), "{}", spawn.describe());
        let rr = spawn
            .with_routing(Routing::RoundRobin)
            .expect("routing keeps TLS");
        assert!(rr.describe().ends_with(", TLS"));

        let dir =
            std::env::temp_dir().join(format!("agentwire-bench-tls-test-{}", std::process::id()));
        write_certificates(&dir).expect("certificates written");
        for f in ["ca.pem", "server.pem", "server.key"] {
            let text = std::fs::read_to_string(dir.join(f)).expect("PEM file");
            assert!(text.starts_with("-----BEGIN "), "{f}");
        }
        let _ = std::fs::remove_dir_all(&dir);
        let both = rr.with_auth(true).expect("a started broker takes --auth");
        assert!(both.describe().ends_with(", TLS, auth + permissions"));
        assert!(ext_auth_refused());
    }
}
