//! The broker under test: an `agentwire serve` child process on a fixed loopback port and data
//! dir for the whole run, so the kill and lame-duck injectors can stop it and start it again
//! where the clients expect it, plus its resident memory over time from `/proc/PID/status`.
//!
//! The approach is the bench's (`bench/src/broker_proc.rs`): the binary next to this
//! executable or `--broker-bin`, free ports, a temporary data dir, a log file under the temp
//! dir, wait until the port accepts. Unlike the bench, the port and data dir survive restarts.

use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::track::lock;

/// How long a (re)started broker has to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Outbound bytes per connection past which the started broker cuts a slow consumer: small, so
/// the slow fault needs little traffic (well above what a reading subscriber ever holds).
pub const MAX_PENDING: usize = 4 << 20;

/// A broker this harness starts, stops and restarts.
#[derive(Debug)]
pub struct BrokerCtl {
    bin: PathBuf,
    /// Client address.
    pub addr: SocketAddr,
    /// Admin API address.
    pub admin: SocketAddr,
    data_dir: PathBuf,
    log_path: PathBuf,
    shards: Option<usize>,
    /// `--lameduck-window-ms` of the started broker.
    lameduck_window_ms: u64,
    child: Mutex<Option<Child>>,
}

/// Finds the broker binary: `--broker-bin`, or `agentwire` next to this executable.
///
/// # Errors
/// When it does not exist (with the command that builds it).
pub fn find_bin(given: Option<&Path>) -> Result<PathBuf> {
    let bin = match given {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .context("cannot locate this executable")?
            .parent()
            .map(|d| d.join("agentwire"))
            .ok_or_else(|| anyhow!("this executable has no parent directory"))?,
    };
    if !bin.is_file() {
        bail!(
            "broker binary {} not found: build it with `cargo build --release -p agentwire-cli` \
             (same profile and target dir as agentwire-soak), pass --broker-bin PATH, or use \
             --server ADDR",
            bin.display()
        );
    }
    Ok(bin)
}

fn free_addr() -> Result<SocketAddr> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot bind 127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

impl BrokerCtl {
    /// Starts `bin serve` on free ports with a fresh data dir.
    ///
    /// # Errors
    /// When it cannot be started or does not accept in time.
    pub fn start(
        bin: PathBuf,
        shards: Option<usize>,
        lameduck_window_ms: u64,
    ) -> Result<BrokerCtl> {
        let addr = free_addr()?;
        let admin = free_addr()?;
        let tag = format!("{}-{}", std::process::id(), addr.port());
        let tmp = std::env::temp_dir();
        let ctl = BrokerCtl {
            bin,
            addr,
            admin,
            data_dir: tmp.join(format!("agentwire-soak-data-{tag}")),
            log_path: tmp.join(format!("agentwire-soak-broker-{tag}.log")),
            shards,
            lameduck_window_ms,
            child: Mutex::new(None),
        };
        File::create(&ctl.log_path)
            .with_context(|| format!("cannot create {}", ctl.log_path.display()))?;
        ctl.spawn()?;
        Ok(ctl)
    }

    /// Starts the process (again) and waits until its port accepts.
    fn spawn(&self) -> Result<()> {
        let log = OpenOptions::new()
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("cannot open {}", self.log_path.display()))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve")
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--admin")
            .arg(self.admin.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--lameduck-window-ms")
            .arg(self.lameduck_window_ms.to_string())
            .arg("--max-pending")
            .arg(MAX_PENDING.to_string());
        if let Some(s) = self.shards {
            cmd.arg("--shards").arg(s.to_string());
        }
        cmd.env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(st) = child.try_wait()? {
                bail!(
                    "the broker exited at start ({st}); log: {}",
                    self.log_tail()
                );
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the broker did not accept on {} within {START_TIMEOUT:?}; log: {}",
                    self.addr,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        *lock(&self.child) = Some(child);
        Ok(())
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        lock(&self.child).as_ref().map(Child::id)
    }

    fn signal(&self, sig: rustix::process::Signal) -> Result<()> {
        let guard = lock(&self.child);
        let child = guard.as_ref().ok_or_else(|| anyhow!("no broker running"))?;
        rustix::process::kill_process(rustix::process::Pid::from_child(child), sig)
            .map_err(|e| anyhow!("cannot signal the broker: {e}"))
    }

    /// Waits up to `max` for the process to exit; takes it out of the slot when it did.
    fn wait_exit(&self, max: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + max;
        loop {
            {
                let mut guard = lock(&self.child);
                let Some(child) = guard.as_mut() else {
                    return Ok(None);
                };
                if let Some(st) = child.try_wait()? {
                    *guard = None;
                    return Ok(Some(st));
                }
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// kill -9, reap, start again on the same port and data dir. Returns when it accepts.
    ///
    /// # Errors
    /// When the restart fails.
    pub fn kill_and_restart(&self) -> Result<()> {
        self.signal(rustix::process::Signal::KILL)?;
        if self.wait_exit(Duration::from_secs(5))?.is_none() {
            bail!("the broker did not die of SIGKILL within 5 s");
        }
        self.spawn()
    }

    /// SIGUSR2 (lame duck), wait for a clean exit, start again. Returns the exit status text
    /// and whether it was success.
    ///
    /// # Errors
    /// When it does not exit in time (it is killed then) or the restart fails.
    pub fn lameduck_and_restart(&self) -> Result<(String, bool)> {
        self.signal(rustix::process::Signal::USR2)?;
        // The lame-duck window, the broker's shutdown grace (5 s) and a margin.
        let max = Duration::from_millis(self.lameduck_window_ms) + Duration::from_secs(8);
        let st = match self.wait_exit(max)? {
            Some(st) => st,
            None => {
                if let Some(mut c) = lock(&self.child).take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                self.spawn()?;
                bail!("the broker did not exit within {max:?} of SIGUSR2 (killed, restarted)");
            }
        };
        self.spawn()?;
        Ok((st.to_string(), st.success()))
    }

    /// The broker's resident set now (KiB), if it runs.
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }

    /// The last lines of the broker's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// SIGTERM and wait for exit 0 (SIGKILL after 15 s); removes the data dir and, on success,
    /// the log.
    ///
    /// # Errors
    /// When it had to be killed or exited with failure.
    pub fn stop(&self) -> Result<()> {
        let r = match self.signal(rustix::process::Signal::TERM) {
            Err(e) => Err(e),
            Ok(()) => match self.wait_exit(Duration::from_secs(15))? {
                Some(st) if st.success() => Ok(()),
                Some(st) => Err(anyhow!("the broker exited with {st}: {}", self.log_tail())),
                None => Err(anyhow!("the broker did not stop within 15 s of SIGTERM")),
            },
        };
        if let Some(mut c) = lock(&self.child).take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
        if r.is_ok() {
            let _ = std::fs::remove_file(&self.log_path);
        }
        r
    }
}

impl Drop for BrokerCtl {
    fn drop(&mut self) {
        if let Some(mut c) = lock(&self.child).take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}
