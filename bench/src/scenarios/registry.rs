//! `registry`: N registered component instances and M live config changes.
//!
//! N client connections (opened and registered [`CONNECT_PARALLEL`] at a time; small buffers,
//! like `conns`) each register one instance of component [`COMPONENT`] (instance ids
//! `bench-agent-0` .. `bench-agent-{N-1}`) and run a task on its config watch
//! (`Membership::config_watch`) that notes the moment each version is yielded. Then M config
//! changes, one after the other: each is a `PUT /api/v1/config/components/bench-agent` setting
//! [`CONFIG_KEY`] to a new value (from the blocking pool, `ureq`); the answer gives the new
//! version. The next change starts once every instance has seen this one, or after
//! `--change-timeout`.
//!
//! Figures: per (instance, change), the delay from just before the `PUT` was sent to the moment
//! that instance's watch yielded the change's version or a newer one, all N×M in one HDR
//! histogram (`latency_us`); the pairs never seen within the timeout are `lost` (the run fails
//! if any); `registry.register_s` = first connection attempt → every instance registered;
//! `registry.put_latency_us` = each `PUT`'s own round trip. Broker CPU covers the changes.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agentwire_client::{Client, ConfigWatch, ConnectOptions, Membership, Registration};
use anyhow::{bail, Result};
use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use super::{join_all, Env};
use crate::broker_proc::Window;
use crate::latency::Latencies;
use crate::progress::{Counter, Progress};
use crate::report::{fmt_int, RegistryFigures, RunReport};

/// The component every instance registers as.
pub const COMPONENT: &str = "bench-agent";
/// The config key each change sets.
pub const CONFIG_KEY: &str = "bench_value";
/// Connections being opened and registered at once.
pub const CONNECT_PARALLEL: usize = 64;
/// Bound on one connection's TCP connect + handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one registration (and the client's other requests).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the watch tasks have to yield their first (current) config.
const WATCH_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Parameters of `registry`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct RegistryParams {
    /// Registered instances, one client connection each.
    #[arg(long, default_value_t = 1000)]
    pub instances: u64,
    /// Config changes, one after the other.
    #[arg(long, default_value_t = 20)]
    pub changes: u32,
    /// Seconds each change has to reach every instance; pairs not seen by then are lost.
    #[arg(long, default_value_t = 10.0)]
    pub change_timeout: f64,
}

impl RegistryParams {
    /// Checks the parameters.
    ///
    /// # Errors
    /// A sentence naming the bad parameter.
    pub fn validate(&self) -> Result<()> {
        if self.instances == 0 || self.instances > 100_000 {
            bail!("--instances must be 1..=100000");
        }
        if self.changes == 0 || self.changes > 10_000 {
            bail!("--changes must be 1..=10000");
        }
        if !(self.change_timeout >= 0.1 && self.change_timeout <= 600.0) {
            bail!("--change-timeout must be 0.1..=600 seconds");
        }
        Ok(())
    }
}

/// One version yielded by one instance's config watch.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// Index into the registered instances.
    instance: usize,
    version: u64,
    at: Instant,
}

/// One registered instance.
struct Instance {
    client: Client,
    membership: Membership,
}

/// Runs `registry`.
///
/// # Errors
/// When the admin API is not known.
pub async fn run(p: &RegistryParams, env: &Env<'_>) -> Result<RunReport> {
    let api = env.admin_api()?;
    let mut report = RunReport::new("registry", p);
    let mut fig = RegistryFigures {
        instances: p.instances,
        changes: u64::from(p.changes),
        ..RegistryFigures::default()
    };

    let (instances, register_s) = register_all(p.instances, env, &mut report).await;
    fig.registered = instances.len() as u64;
    fig.register_s = register_s;
    if instances.is_empty() {
        report.registry = Some(fig);
        return Ok(report);
    }

    // One watch task per instance, all reporting to one channel.
    let (tx, mut rx) = mpsc::unbounded_channel::<Seen>();
    let mut watchers = JoinSet::new();
    for (i, inst) in instances.iter().enumerate() {
        watchers.spawn(watch_task(i, inst.membership.config_watch(), tx.clone()));
    }
    drop(tx);
    let n = instances.len();
    // Per instance: the newest version its watch yielded, and when.
    let mut latest: Vec<Option<(u64, Instant)>> = vec![None; n];
    let mut started = 0usize;
    let deadline = tokio::time::Instant::now() + WATCH_START_TIMEOUT;
    while started < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(s)) => {
                if note(&mut latest, s).is_none() {
                    started += 1;
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    if started < n {
        report.error(format!(
            "{} of {} config watches did not yield their current config within {} s",
            fmt_int((n - started) as u64),
            fmt_int(n as u64),
            WATCH_START_TIMEOUT.as_secs()
        ));
    }

    // The changes, one after the other.
    let done = Arc::new(Counter::default());
    let d = done.clone();
    let progress = Progress::start(env.label, "changes", u64::from(p.changes), move || d.get());
    let timeout = Duration::from_secs_f64(p.change_timeout);
    let nonce = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut delays = Latencies::new();
    let mut puts = Latencies::new();
    let mut expected = 0u64;
    let mut reached_total = 0u64;
    let mut put_error = None;
    let window = Window::begin(env.process);
    let start = Instant::now();
    for k in 0..p.changes {
        let value = format!("{nonce}-{k}");
        let a = api.clone();
        let put = tokio::task::spawn_blocking(move || {
            let r = a.put_config(COMPONENT, CONFIG_KEY, &value);
            (r, Instant::now())
        })
        .await;
        let (sent, version) = match put {
            Ok((Ok((sent, version)), answered)) => {
                puts.record(answered - sent);
                (sent, version)
            }
            Ok((Err(e), _)) => {
                put_error.get_or_insert_with(|| format!("{e:#}"));
                continue;
            }
            Err(e) => {
                put_error.get_or_insert_with(|| format!("config PUT task failed: {e}"));
                continue;
            }
        };
        fig.changes_applied += 1;
        expected += n as u64;
        // Instances that already have it (only if something else changed the config too).
        let mut hit: Vec<bool> = latest
            .iter()
            .map(|l| l.is_some_and(|(v, _)| v >= version))
            .collect();
        let mut reached = 0usize;
        for (h, l) in hit.iter().zip(&latest) {
            if let (true, Some((_, at))) = (*h, l) {
                delays.record(at.saturating_duration_since(sent));
                reached += 1;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        while reached < n {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => {
                    note(&mut latest, s);
                    if s.version >= version {
                        if let Some(h) = hit.get_mut(s.instance).filter(|h| !**h) {
                            *h = true;
                            reached += 1;
                            delays.record(s.at.saturating_duration_since(sent));
                        }
                    }
                }
                // Every watch ended, or the time is up: the rest are lost.
                Ok(None) | Err(_) => break,
            }
        }
        reached_total += reached as u64;
        done.set(u64::from(k) + 1);
    }
    let elapsed = start.elapsed();
    let usage = window.end(env.process);
    progress.finish();

    if let Some(e) = put_error {
        report.error(format!(
            "{} of {} config changes failed; first: {e}",
            fmt_int(fig.changes - fig.changes_applied),
            fmt_int(fig.changes)
        ));
    }
    fig.put_latency_us = puts.summary();
    report.elapsed_s = elapsed.as_secs_f64();
    report.expected = expected;
    report.delivered = reached_total;
    report.lost = expected - reached_total;
    report.latency_us = delays.summary();
    report.registry = Some(fig);
    report.set_usage(&usage);

    // Closing a connection ends its registration and its watch.
    close_all(instances).await;
    let _ = join_all(&mut watchers, Duration::from_secs(10)).await;
    Ok(report)
}

/// Records `s` as the instance's newest version if it is newer; returns what was there before.
fn note(latest: &mut [Option<(u64, Instant)>], s: Seen) -> Option<(u64, Instant)> {
    let slot = latest.get_mut(s.instance)?;
    let before = *slot;
    if before.is_none_or(|(v, _)| s.version > v) {
        *slot = Some((s.version, s.at));
    }
    before
}

/// Opens and registers `count` instances, [`CONNECT_PARALLEL`] at a time. Returns those that
/// registered and the seconds it took; failures go to `report`.
async fn register_all(count: u64, env: &Env<'_>, report: &mut RunReport) -> (Vec<Instance>, f64) {
    let registered = Arc::new(Counter::default());
    let r = registered.clone();
    let progress = Progress::start(env.label, "registrations", count, move || r.get());
    let start = Instant::now();
    let gate = Arc::new(Semaphore::new(CONNECT_PARALLEL));
    let mut joining = JoinSet::new();
    for i in 0..count {
        let (gate, addr, registered) = (gate.clone(), env.addr.to_owned(), registered.clone());
        let opts = env.options();
        joining.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let r = register_one(i, &addr, opts).await;
            if r.is_ok() {
                registered.add(1);
            }
            (i, r)
        });
    }
    let rounds = count.div_ceil(CONNECT_PARALLEL as u64) as u32 + 1;
    let budget = (CONNECT_TIMEOUT + REQUEST_TIMEOUT) * rounds;
    let (mut results, missing) = join_all(&mut joining, budget).await;
    let register_s = start.elapsed().as_secs_f64();
    progress.finish();
    results.sort_by_key(|(i, _)| *i);
    let mut instances = Vec::with_capacity(results.len());
    let mut first_error = None;
    for (_, r) in results {
        match r {
            Ok(inst) => instances.push(inst),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let failed = count - instances.len() as u64;
    if failed > 0 {
        report.error(format!(
            "{} of {} instances did not register ({missing} timed out); first error: {}",
            fmt_int(failed),
            fmt_int(count),
            first_error.as_deref().unwrap_or("none")
        ));
    }
    (instances, register_s)
}

/// Connects and registers instance `i`.
async fn register_one(i: u64, addr: &str, opts: ConnectOptions) -> Result<Instance, String> {
    let id = format!("{COMPONENT}-{i}");
    let client = opts
        .name(id.clone())
        .connect_timeout(CONNECT_TIMEOUT)
        .request_timeout(REQUEST_TIMEOUT)
        .read_buffer_size(4096)
        .write_buffer_limit(64 << 10)
        .connect(addr)
        .await
        .map_err(|e| format!("{id}: connect: {e}"))?;
    let reg = Registration {
        component: COMPONENT.to_owned(),
        instance_id: id.clone(),
        version: "bench".to_owned(),
        ..Registration::default()
    };
    match client.register(reg).await {
        Ok(membership) => Ok(Instance { client, membership }),
        Err(e) => {
            let _ = client.close().await;
            Err(format!("{id}: register: {e}"))
        }
    }
}

/// Notes every config version the watch yields (with the moment it did) until it ends.
async fn watch_task(instance: usize, mut watch: ConfigWatch, tx: mpsc::UnboundedSender<Seen>) {
    while let Some(config) = watch.next().await {
        let at = Instant::now();
        let seen = Seen {
            instance,
            version: config.version(),
            at,
        };
        if tx.send(seen).is_err() {
            return;
        }
    }
}

/// Closes every instance's connection, a bounded number at a time.
async fn close_all(instances: Vec<Instance>) {
    let mut closing = JoinSet::new();
    let mut it = instances.into_iter().peekable();
    while it.peek().is_some() {
        let chunk: Vec<Instance> = it.by_ref().take(256).collect();
        closing.spawn(async move {
            for inst in chunk {
                drop(inst.membership);
                let _ = inst.client.close().await;
            }
        });
    }
    let _ = join_all(&mut closing, Duration::from_secs(30)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_version_per_instance() {
        let t = Instant::now();
        let mut latest = vec![None; 2];
        let s = |instance, version| Seen {
            instance,
            version,
            at: t,
        };
        assert_eq!(note(&mut latest, s(0, 0)), None);
        assert_eq!(note(&mut latest, s(0, 3)).map(|l| l.0), Some(0));
        // Older versions never replace a newer one.
        note(&mut latest, s(0, 2));
        assert_eq!(latest[0].map(|l| l.0), Some(3));
        // Out of range: ignored.
        assert_eq!(note(&mut latest, s(7, 1)), None);
        assert!(latest[1].is_none());
    }

    #[test]
    fn parameters() {
        let mut p = RegistryParams {
            instances: 1000,
            changes: 20,
            change_timeout: 10.0,
        };
        assert!(p.validate().is_ok());
        p.instances = 0;
        assert!(p.validate().is_err());
        p.instances = 1;
        p.change_timeout = 0.0;
        assert!(p.validate().is_err());
    }
}
