//! A started server child process ([`BrokerProcess`]): spawned with its stderr in a log file,
//! waited for until its port accepts, sampled from `/proc`, and stopped by PID (SIGTERM, then
//! SIGKILL after [`STOP_GRACE`]); plus the free loopback ports it listens on and the open-file
//! limit its children inherit.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::sampling::ProcSample;

/// How long a started broker has to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long SIGTERM has before SIGKILL. The broker's own shutdown grace is 5 s by default.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// A started server child process: `agentwire serve`, or a peer broker in `compare`.
#[derive(Debug)]
pub struct BrokerProcess {
    child: Child,
    pub(super) addr: SocketAddr,
    log_path: PathBuf,
    /// What it is called in messages ("broker", "nats-server", ...).
    name: String,
    /// Whether a non-success exit status after SIGTERM is an error.
    strict_exit: bool,
    /// Whether `stop` ran (otherwise `Drop` kills the process).
    stopped: bool,
    /// The started broker's admin API address (agentwire only).
    pub admin_addr: Option<SocketAddr>,
    /// The started broker's data directory, removed when the process is dropped.
    pub(super) data_dir: Option<PathBuf>,
    /// With TLS: the CA certificate (PEM) of the broker's certificate, in the data directory.
    pub tls_ca: Option<PathBuf>,
}

impl BrokerProcess {
    /// Starts `cmd` (a server that will listen on `addr`, a loopback address) with its stderr
    /// in a log file under the temp dir, and waits until `addr` accepts. `name` names it in
    /// messages; with `strict_exit` an exit status other than success after SIGTERM is an
    /// error (peer servers that die of the signal are fine without it). This is how `compare`
    /// runs the peer brokers too, so they are sampled and stopped the same way.
    ///
    /// # Errors
    /// When the process cannot be started, exits, or does not accept within the start timeout.
    pub fn spawn(
        mut cmd: Command,
        addr: SocketAddr,
        name: &str,
        strict_exit: bool,
    ) -> Result<BrokerProcess> {
        let log_path = std::env::temp_dir().join(format!(
            "agentwire-bench-{}-{}-{}.log",
            name.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            std::process::id(),
            addr.port()
        ));
        let log = File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
        let mut p = BrokerProcess {
            child,
            addr,
            log_path,
            name: name.to_owned(),
            strict_exit,
            stopped: false,
            admin_addr: None,
            data_dir: None,
            tls_ca: None,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = p.child.try_wait()? {
                p.stopped = true;
                bail!(
                    "{name} exited at start ({status}); its log: {}",
                    p.log_tail()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(p);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{name} did not accept on {addr} within {START_TIMEOUT:?}; its log: {}",
                    p.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time and memory now.
    ///
    /// # Errors
    /// When `/proc/PID` cannot be read (the process is gone).
    pub fn sample(&self) -> Result<ProcSample> {
        ProcSample::read(&format!("/proc/{}", self.pid()))
    }

    /// The last lines of the broker's stderr.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(10)..].join("\n");
        if tail.is_empty() {
            "(empty)".to_owned()
        } else {
            tail
        }
    }

    /// SIGTERM, wait up to [`STOP_GRACE`], then SIGKILL.
    ///
    /// # Errors
    /// When it had to be killed, or (with `strict_exit`) its exit status says it failed.
    pub fn stop(mut self) -> Result<()> {
        let name = std::mem::take(&mut self.name);
        self.stopped = true;
        let pid = rustix::process::Pid::from_child(&self.child);
        if let Err(e) = rustix::process::kill_process(pid, rustix::process::Signal::TERM) {
            // Already gone: collect the status below.
            if self.child.try_wait()?.is_none() {
                return Err(anyhow!("cannot signal {name} pid {pid:?}: {e}"));
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            if let Some(status) = self.child.try_wait()? {
                if status.success() || !self.strict_exit {
                    let _ = std::fs::remove_file(&self.log_path);
                    return Ok(());
                }
                bail!("{name} exited with {status}; its log: {}", self.log_tail());
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "{name} did not stop within {STOP_GRACE:?} of SIGTERM and was killed; its \
                     log ({}): {}",
                    self.log_path.display(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(d) = self.data_dir.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A loopback address with a port that was free a moment ago.
///
/// # Errors
/// When no port can be bound.
pub fn free_port() -> Result<SocketAddr> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot bind 127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// Raises this process's soft open-file limit to its hard limit (children such as the broker
/// inherit it). Returns the soft limit now in force.
///
/// # Errors
/// When the limit cannot be set.
pub fn raise_nofile_limit() -> Result<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current == lim.maximum {
        return Ok(lim.current.unwrap_or(u64::MAX));
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        },
    )
    .context("cannot raise RLIMIT_NOFILE")?;
    Ok(lim.maximum.unwrap_or(u64::MAX))
}
