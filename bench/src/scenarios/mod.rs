//! The load scenarios and what they share: a scenario is plain data ([`Spec`]: which scenario
//! and its parameters), so the suite, the CI floors and a future cross-system comparison can
//! list cases as values; [`run`] turns one into a [`RunReport`] against a broker.
//!
//! One run = start a fresh broker (or name the external one), run the scenario under a hard
//! time limit, read the broker's peak RSS, stop the broker by PID. Every task a scenario spawns
//! lives in a `JoinSet` owned by the scenario, so a run that is abandoned (time limit) aborts
//! its tasks instead of leaving them behind.
//!
//! - [`pubsub`]: P publishers → S subscribers (or one queue group), publish and delivered rates.
//! - [`reqrep`]: C requesters with one request in flight each against R echo repliers.
//! - [`rate`]: open-loop offered load, latency from each message's intended send time.
//! - [`conns`]: N idle connections pinging once a second; broker RSS per connection.
//! - [`registry`]: N registered instances, M config changes over HTTP; delay until each
//!   instance's config watch sees each change.
//! - [`apistatus`]: `GET /api/v1/system/status` latency while a pubsub 1→1 load runs.

pub mod apistatus;
pub mod conns;
pub mod pubsub;
pub mod rate;
pub mod registry;
pub mod reqrep;

use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use agentwire_client::{Client, ConnectOptions, Message, Subscriber};
use anyhow::{Context, Result};
use futures_core::Stream;
use serde::Serialize;

use crate::broker_proc::{BrokerProcess, BrokerTarget, Routing};
use crate::report::RunReport;

/// A scenario with its parameters.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Spec {
    /// Publish/subscribe throughput.
    PubSub(pubsub::PubSubParams),
    /// Request/reply latency and throughput.
    ReqRep(reqrep::ReqRepParams),
    /// Open-loop offered load.
    Rate(rate::RateParams),
    /// Many idle connections.
    Conns(conns::ConnsParams),
    /// Registered instances and live config changes.
    Registry(registry::RegistryParams),
    /// Admin API status latency under data-plane load.
    ApiStatus(apistatus::ApiStatusParams),
}

impl Spec {
    /// The scenario's name as in the JSON `scenario` field.
    pub fn scenario(&self) -> &'static str {
        match self {
            Spec::PubSub(_) => "pubsub",
            Spec::ReqRep(_) => "reqrep",
            Spec::Rate(_) => "rate",
            Spec::Conns(_) => "conns",
            Spec::Registry(_) => "registry",
            Spec::ApiStatus(_) => "apistatus",
        }
    }

    /// Checks the parameters before anything is started.
    ///
    /// # Errors
    /// A sentence naming the bad parameter.
    pub fn validate(&self) -> Result<()> {
        match self {
            Spec::PubSub(p) => p.validate(),
            Spec::ReqRep(p) => p.validate(),
            Spec::Rate(p) => p.validate(),
            Spec::Conns(p) => p.validate(),
            Spec::Registry(p) => p.validate(),
            Spec::ApiStatus(p) => p.validate(),
        }
    }

    /// A rough upper bound on how long the scenario itself needs to run, for the hard limit.
    fn nominal_duration(&self) -> Duration {
        match self {
            Spec::Rate(p) => Duration::from_secs_f64(p.duration),
            Spec::Conns(p) => Duration::from_secs_f64(p.duration),
            // Each change may wait its whole timeout.
            Spec::Registry(p) => Duration::from_secs_f64(p.change_timeout) * p.changes,
            Spec::PubSub(_) | Spec::ReqRep(_) | Spec::ApiStatus(_) => Duration::ZERO,
        }
    }
}

/// How runs behave, whatever the scenario.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// How long a run waits for deliveries with no progress before it reports the rest lost.
    pub stall_timeout: Duration,
    /// Hard limit on one run, on top of the scenario's own duration.
    pub run_timeout: Duration,
    /// Label shown on the progress bar.
    pub label: String,
}

/// What a scenario gets to work with.
#[derive(Debug)]
pub struct Env<'a> {
    /// Broker address.
    pub addr: &'a str,
    /// The broker's admin API (`host:port`), when known.
    pub admin: Option<&'a str>,
    /// The broker process, when this run started one (for CPU and RSS sampling).
    pub process: Option<&'a BrokerProcess>,
    /// See [`RunOptions::stall_timeout`].
    pub stall_timeout: Duration,
    /// See [`RunOptions::label`].
    pub label: &'a str,
    /// The CA to trust when the broker runs TLS (`--tls`).
    pub tls_ca: Option<&'a std::path::Path>,
    /// The token to authenticate with when the broker has users (`--auth`).
    pub token: Option<&'a str>,
}

impl Env<'_> {
    /// Connects a client named `name` with default options, except that its subscriptions
    /// have no pending limits: a subscriber task that falls behind is measured as slow, never
    /// as losing messages.
    ///
    /// # Errors
    /// When the connection or handshake fails.
    pub async fn connect(&self, name: &str) -> Result<Client> {
        self.options()
            .name(name)
            .subscription_pending_limits(usize::MAX, usize::MAX)
            .connect(self.addr)
            .await
            .with_context(|| format!("connection {name}"))
    }

    /// Default client options for this broker (TLS when it runs TLS, its token when it has
    /// users).
    pub fn options(&self) -> ConnectOptions {
        let o = match self.tls_ca {
            Some(ca) => ConnectOptions::new().tls_ca_file(ca),
            None => ConnectOptions::new(),
        };
        match self.token {
            Some(t) => o.token(t),
            None => o,
        }
    }

    /// A client of the admin API (HTTPS when the broker runs TLS).
    ///
    /// # Errors
    /// As [`Env::admin`], or a CA file that cannot be read.
    pub fn admin_api(&self) -> Result<crate::admin_api::AdminApi> {
        crate::admin_api::AdminApi::new(self.admin()?, self.tls_ca)
    }

    /// The admin API's address, which the admin-plane scenarios need.
    ///
    /// # Errors
    /// When it is not known (a `--server` broker without `--admin`).
    pub fn admin(&self) -> Result<&str> {
        self.admin
            .context("this scenario needs the broker's admin API: with --server, pass --admin ADDR")
    }
}

/// Runs one scenario against a fresh broker (or the external one) and returns its report;
/// failures are in the report (`ok: false`, `errors`), never a panic.
pub async fn run(spec: &Spec, target: &BrokerTarget, opts: &RunOptions) -> RunReport {
    let failed = |e: String| {
        let mut r = RunReport::new(spec.scenario(), spec);
        r.error(e);
        r.finish();
        r
    };
    if let Err(e) = spec.validate() {
        return failed(format!("{e:#}"));
    }
    let t = target.clone();
    let broker = match tokio::task::spawn_blocking(move || t.start()).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return failed(format!("{e:#}")),
        Err(e) => return failed(format!("broker start task failed: {e}")),
    };
    let limit = opts.run_timeout + spec.nominal_duration();
    let mut report = {
        let env = Env {
            addr: broker.addr(),
            admin: broker.admin(),
            process: broker.process(),
            stall_timeout: opts.stall_timeout,
            label: &opts.label,
            tls_ca: broker.tls_ca(),
            token: broker.token(),
        };
        let scenario = async {
            match spec {
                Spec::PubSub(p) => pubsub::run(p, &env).await,
                Spec::ReqRep(p) => reqrep::run(p, &env).await,
                Spec::Rate(p) => rate::run(p, &env).await,
                Spec::Conns(p) => conns::run(p, &env).await,
                Spec::Registry(p) => registry::run(p, &env).await,
                Spec::ApiStatus(p) => apistatus::run(p, &env).await,
            }
        };
        match tokio::time::timeout(limit, scenario).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => failed(format!("{e:#}")),
            Err(_) => failed(format!(
                "run did not finish within {:.0} s (--run-timeout)",
                limit.as_secs_f64()
            )),
        }
    };
    report.routing = target.routing().map(Routing::as_arg);
    if let Some(p) = broker.process() {
        match p.sample() {
            Ok(s) => report.broker_peak_rss_kib = Some(s.hwm_kib),
            Err(e) => report.error(format!("cannot sample the broker: {e:#}")),
        }
    }
    match tokio::task::spawn_blocking(move || broker.stop()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => report.error(format!("stopping the broker: {e:#}")),
        Err(e) => report.error(format!("broker stop task failed: {e}")),
    }
    report.finish();
    report
}

/// Splits `total` over `parts` as evenly as possible (the first ones get the remainder), as
/// the NATS reference's `MsgsPerClient` does.
pub fn split(total: u64, parts: usize) -> Vec<u64> {
    let parts = parts.max(1) as u64;
    (0..parts)
        .map(|i| total / parts + u64::from(i < total % parts))
        .collect()
}

/// Takes every message that is ready on `sub` (at least one, at most `max`), calling `f` on
/// each, so per-wake-up work (a clock read, a counter update) is paid per batch rather than
/// per message. Returns how many were taken, or `None` once the subscription has ended and
/// every received message was taken.
pub async fn next_batch(
    sub: &mut Subscriber,
    max: usize,
    mut f: impl FnMut(Message),
) -> Option<usize> {
    std::future::poll_fn(|cx| {
        let mut n = 0usize;
        while n < max {
            match Pin::new(&mut *sub).poll_next(cx) {
                Poll::Ready(Some(m)) => {
                    f(m);
                    n += 1;
                }
                Poll::Ready(None) => return Poll::Ready((n > 0).then_some(n)),
                Poll::Pending => break,
            }
        }
        if n > 0 {
            Poll::Ready(Some(n))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// Waits for every task of `set` up to `limit`, then aborts the rest. Returns the outputs of
/// the tasks that finished and how many did not (aborted or panicked).
pub async fn join_all<T: 'static>(
    set: &mut tokio::task::JoinSet<T>,
    limit: Duration,
) -> (Vec<T>, usize) {
    let mut out = Vec::with_capacity(set.len());
    let mut missing = 0usize;
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(Ok(v))) => out.push(v),
            Ok(Some(Err(_))) => missing += 1,
            Ok(None) => break,
            Err(_) => {
                missing += set.len();
                set.abort_all();
                break;
            }
        }
    }
    (out, missing)
}

#[cfg(test)]
mod system_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_even_and_complete() {
        assert_eq!(split(10, 3), vec![4, 3, 3]);
        assert_eq!(split(2, 4), vec![1, 1, 0, 0]);
        assert_eq!(split(7, 1), vec![7]);
        assert_eq!(split(5, 0), vec![5]);
    }
}
