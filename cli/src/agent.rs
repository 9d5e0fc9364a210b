//! `agentwire agent`: N simulated agents of one component in one process — the demo, load for
//! the dashboard, and the subject of the staged-rollout checks.
//!
//! Each simulated instance has its own connection and registration (instance ids
//! `NAME-0..NAME-{N-1}`), heartbeats with its load (in flight, latency, requests and errors),
//! serves requests on `NAME.>` in queue group `NAME` (each in its own task), and applies its
//! config live:
//!
//! - `latency_ms`: wait this long before answering (0..=60000; default 0);
//! - `error_rate`: this share of requests (0..=1) is answered with an error (default 0);
//! - `payload`: the reply body: digits only = that many bytes of `x` (at most 1 MiB, and the
//!   broker's max payload), anything else = that text literally (default `ok`).
//!
//! A key that is absent takes its default; a bad value is reported and ignored (the previous
//! value stays). **Error replies** carry the header `aw-error: <message>` (and an empty body):
//! requesters check for that header; the instance counts such a request with
//! `record_request(false)`.
//!
//! Unless `--rate 0`, the process also sends requests itself: `--rate` per second in total to
//! `NAME.work` (through the queue group, so the broker spreads them over the instances), each
//! with a deadline, counted as ok / error / timeout / no responders. So a change setting
//! `error_rate` on one canary shows in that canary's heartbeats with no other load.
//!
//! Output: one line per config version per instance (`planner-2 applied config v5 (default):
//! error_rate=1.0`, or `... config v6 (default): no change` when the values it uses are the
//! same), connection drops and reconnects, and a status line every `--status-every` seconds.
//! Ctrl-C, SIGTERM or `--duration` stop it: every instance deregisters, exit 0.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentwire_client::{
    Client, ConnectionEvent, Error as ClientError, Headers, Membership, Message, OutboundMessage,
    Registration,
};
use arc_swap::ArcSwap;
use bytes::Bytes;
use std::process::ExitCode;

use super::tools::{AuthFlags, Failure, TlsFlags};
use super::{DEFAULT_SERVER, EXIT_FAILURE, EXIT_USAGE};

/// Longest `latency_ms` applied.
const MAX_LATENCY_MS: u64 = 60_000;
/// Largest `payload` size applied.
const MAX_PAYLOAD_BYTES: usize = 1 << 20;
/// Most requests one instance handles at once; past it, requests get an error reply at once.
const MAX_IN_FLIGHT: u32 = 10_000;
/// Most requests of the load generator outstanding at once; past it, ticks are skipped.
const MAX_OUTSTANDING: u64 = 2_000;
/// The error-reply header.
pub(crate) const ERROR_HEADER: &str = "aw-error";

/// `agentwire agent --component NAME --instances N`.
#[derive(Debug, clap::Args)]
pub(crate) struct AgentArgs {
    /// Component the simulated instances register as.
    #[arg(long)]
    component: String,
    /// How many instances (each its own connection), 1..=1000.
    #[arg(long, default_value_t = 1)]
    instances: u32,
    /// Broker address.
    #[arg(long, env = "AGENTWIRE_SERVER", default_value = DEFAULT_SERVER)]
    server: String,
    #[command(flatten)]
    auth: AuthFlags,
    #[command(flatten)]
    tls: TlsFlags,
    /// Environment the instances register in (their config set); default: the broker's.
    #[arg(long, visible_alias = "env", env = "AGENTWIRE_ENVIRONMENT")]
    environment: Option<String>,
    /// Version the instances declare (semver, checked against dependents' ranges).
    #[arg(long = "version", id = "agent_version", default_value = "1.0.0")]
    agent_version: String,
    /// Components the instances depend on, each `NAME` or `NAME@RANGE` (e.g. `memory@^1.2`);
    /// repeat or separate with commas.
    #[arg(long = "depends-on", value_delimiter = ',')]
    depends_on: Vec<String>,
    /// Requests per second this process sends to NAME.work in total (0: none).
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Stop after this long (e.g. 60, 30s, 5m); default: until Ctrl-C.
    #[arg(long, value_parser = crate::duration::parse_duration_s)]
    duration: Option<u64>,
    /// Deadline of each generated request, ms.
    #[arg(long, default_value_t = 2000)]
    request_timeout_ms: u64,
    /// Seconds between status lines (0: none).
    #[arg(long, default_value_t = 5)]
    status_every: u64,
}

/// The config values an instance uses.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    latency_ms: u64,
    error_rate: f64,
    payload: Bytes,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            latency_ms: 0,
            error_rate: 0.0,
            payload: Bytes::from_static(b"ok"),
        }
    }
}

fn payload_text(p: &Bytes) -> String {
    let all_x = !p.is_empty() && p.iter().all(|b| *b == b'x');
    if all_x && p.len() > 16 {
        format!("{} bytes", p.len())
    } else {
        let s = String::from_utf8_lossy(p);
        if s.len() > 40 {
            format!(
                "{:?}... ({} bytes)",
                &s[..s.floor_char_boundary_compat(40)],
                p.len()
            )
        } else {
            format!("{s:?}")
        }
    }
}

/// `str::floor_char_boundary` is unstable: the largest char boundary ≤ `i`.
trait FloorBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorBoundary for str {
    fn floor_char_boundary_compat(&self, i: usize) -> usize {
        let mut i = i.min(self.len());
        while !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

/// The settings for config `values` on top of `old`: (new settings, `key=value` for each value
/// that changed, a message for each bad value, which was ignored).
pub(crate) fn apply_values(
    old: &Settings,
    values: &[(String, String)],
    max_payload: usize,
) -> (Settings, Vec<String>, Vec<String>) {
    let get = |k: &str| {
        values
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.trim())
    };
    let defaults = Settings::default();
    let mut new = old.clone();
    let mut problems = Vec::new();
    match get("latency_ms") {
        None => new.latency_ms = defaults.latency_ms,
        Some(v) => match v.parse::<u64>() {
            Ok(ms) if ms <= MAX_LATENCY_MS => new.latency_ms = ms,
            _ => problems.push(format!(
                "latency_ms={v:?} ignored: a whole number of ms in 0..={MAX_LATENCY_MS}"
            )),
        },
    }
    match get("error_rate") {
        None => new.error_rate = defaults.error_rate,
        Some(v) => match v.parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => new.error_rate = r,
            _ => problems.push(format!(
                "error_rate={v:?} ignored: a number between 0 and 1"
            )),
        },
    }
    match values.iter().find(|(k, _)| k == "payload").map(|(_, v)| v) {
        None => new.payload = defaults.payload,
        Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
            let cap = MAX_PAYLOAD_BYTES.min(max_payload);
            match v.parse::<usize>() {
                Ok(n) if n <= cap => new.payload = Bytes::from(vec![b'x'; n]),
                _ => problems.push(format!(
                    "payload={v} ignored: at most {cap} bytes (digits = a size; other text is sent as it is)"
                )),
            }
        }
        Some(v) => {
            if v.len() <= max_payload {
                new.payload = Bytes::from(v.clone().into_bytes());
            } else {
                problems.push(format!(
                    "payload ignored: {} bytes of text, over the broker's max payload {max_payload}",
                    v.len()
                ));
            }
        }
    }
    let mut changed = Vec::new();
    if new.latency_ms != old.latency_ms {
        changed.push(format!("latency_ms={}", new.latency_ms));
    }
    if new.error_rate != old.error_rate {
        changed.push(format!("error_rate={:?}", new.error_rate));
    }
    if new.payload != old.payload {
        changed.push(format!("payload={}", payload_text(&new.payload)));
    }
    (new, changed, problems)
}

/// One simulated instance.
struct Instance {
    id: String,
    client: Client,
    membership: Membership,
    settings: ArcSwap<Settings>,
    config_version: AtomicU64,
    served: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicU32,
}

/// The load generator's counts.
#[derive(Default)]
struct LoadCounts {
    sent: AtomicU64,
    ok: AtomicU64,
    error: AtomicU64,
    timeout: AtomicU64,
    no_responders: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
    outstanding: AtomicU64,
}

pub(crate) fn run(a: AgentArgs) -> ExitCode {
    if a.instances == 0 || a.instances > 1000 {
        eprintln!("agentwire agent: --instances must be 1..=1000");
        return ExitCode::from(EXIT_USAGE);
    }
    if !a.rate.is_finite() || a.rate < 0.0 || a.rate > 100_000.0 {
        eprintln!("agentwire agent: --rate must be 0..=100000 requests per second");
        return ExitCode::from(EXIT_USAGE);
    }
    if !agentwire_protocol::control::is_name_token(&a.component) {
        eprintln!(
            "agentwire agent: --component {:?} is not a name (letters, digits, '_' or '-')",
            a.component
        );
        return ExitCode::from(EXIT_USAGE);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agentwire agent: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match rt.block_on(simulate(a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("agentwire agent: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

async fn start_instance(a: &AgentArgs, i: u32) -> Result<Arc<Instance>, Failure> {
    let id = format!("{}-{i}", a.component);
    let client = super::tools::connect(&a.server, &a.auth, &a.tls, &id).await?;
    let membership = client
        .register(Registration {
            component: a.component.clone(),
            instance_id: id.clone(),
            version: a.agent_version.clone(),
            environment: a.environment.clone().unwrap_or_default(),
            depends_on: a.depends_on.clone(),
            capabilities: vec!["simulated".into()],
            subjects: vec![format!("{}.>", a.component)],
            metadata: vec![("simulator".into(), "agentwire agent".into())],
            ..Registration::default()
        })
        .await
        .map_err(|e| Failure {
            code: EXIT_FAILURE,
            message: format!("{id}: registration failed: {e}"),
        })?;
    Ok(Arc::new(Instance {
        id,
        client,
        membership,
        settings: ArcSwap::from_pointee(Settings::default()),
        config_version: AtomicU64::new(0),
        served: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        in_flight: AtomicU32::new(0),
    }))
}

/// Watches the instance's config and applies it; one line per version.
async fn config_loop(inst: Arc<Instance>) {
    let mut watch = inst.membership.config_watch();
    let max_payload = inst.client.server_info().max_payload as usize;
    while let Some(c) = watch.next().await {
        let old = inst.settings.load_full();
        let (new, changed, problems) = apply_values(&old, c.values(), max_payload);
        inst.config_version.store(c.version(), Ordering::Relaxed);
        let env = c.environment();
        for p in &problems {
            println!("{} config v{} ({env}): {p}", inst.id, c.version());
        }
        if changed.is_empty() {
            if c.version() > 0 {
                println!("{} config v{} ({env}): no change", inst.id, c.version());
            }
        } else {
            println!(
                "{} applied config v{} ({env}): {}",
                inst.id,
                c.version(),
                changed.join(" ")
            );
        }
        inst.settings.store(Arc::new(new));
    }
}

/// Answers one request after `latency_ms`, with the payload or (for `error_rate` of them) an
/// `aw-error` reply.
async fn handle(inst: Arc<Instance>, m: Message) {
    let load = inst.membership.load_reporter();
    let n = inst.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
    load.set_in_flight(n);
    let started = Instant::now();
    let s = inst.settings.load_full();
    let overloaded = n > MAX_IN_FLIGHT;
    if s.latency_ms > 0 && !overloaded {
        tokio::time::sleep(Duration::from_millis(s.latency_ms)).await;
    }
    let fail = overloaded || (s.error_rate > 0.0 && rand::random::<f64>() < s.error_rate);
    let sent = match (&m.reply, fail) {
        (Some(reply), true) => {
            let why = if overloaded {
                "simulated overload".to_owned()
            } else {
                format!("simulated error (error_rate={})", s.error_rate)
            };
            let mut h = Headers::new();
            match h.insert(ERROR_HEADER, why) {
                Ok(()) => {
                    inst.client
                        .publish_message(OutboundMessage::new(reply.as_str(), b"").headers(&h))
                        .await
                }
                Err(e) => {
                    tracing::warn!("cannot build the error header: {e}");
                    Ok(())
                }
            }
        }
        (Some(_), false) => inst.client.respond(&m, s.payload.clone()).await,
        (None, _) => Ok(()),
    };
    if let Err(e) = sent {
        tracing::debug!(instance = %inst.id, "reply not sent: {e}");
    }
    load.record_latency(started.elapsed());
    load.record_request(!fail);
    inst.served.fetch_add(1, Ordering::Relaxed);
    if fail {
        inst.errors.fetch_add(1, Ordering::Relaxed);
    }
    let n = inst
        .in_flight
        .fetch_sub(1, Ordering::Relaxed)
        .saturating_sub(1);
    load.set_in_flight(n);
}

async fn serve_loop(inst: Arc<Instance>, component: String) {
    let mut sub = match inst
        .client
        .queue_subscribe(&format!("{component}.>"), &component)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            println!("{} cannot subscribe to {component}.>: {e}", inst.id);
            return;
        }
    };
    while let Some(m) = sub.next().await {
        if m.reply.is_none() {
            continue;
        }
        tokio::spawn(handle(inst.clone(), m));
    }
}

async fn events_loop(inst: Arc<Instance>) {
    let mut ev = inst.client.events();
    while let Some(e) = ev.next().await {
        match e {
            ConnectionEvent::Disconnected { reason } => {
                println!("{} disconnected: {reason}; reconnecting", inst.id);
            }
            ConnectionEvent::Reconnected { addr, after, .. } => {
                println!("{} reconnected to {addr} after {after:.1?}", inst.id);
            }
            ConnectionEvent::Closed { reason } => {
                println!("{} connection closed: {reason}", inst.id);
                return;
            }
            _ => {}
        }
    }
}

async fn one_request(client: Client, subject: String, timeout: Duration, c: Arc<LoadCounts>) {
    match client
        .request(&subject, Bytes::from_static(b"sim"), timeout)
        .await
    {
        Ok(m) => {
            let is_error = m
                .headers
                .as_ref()
                .is_some_and(|h| h.get(ERROR_HEADER).is_some());
            if is_error {
                c.error.fetch_add(1, Ordering::Relaxed);
            } else {
                c.ok.fetch_add(1, Ordering::Relaxed);
            }
        }
        Err(ClientError::Timeout { .. }) => {
            c.timeout.fetch_add(1, Ordering::Relaxed);
        }
        Err(ClientError::NoResponders { .. }) => {
            c.no_responders.fetch_add(1, Ordering::Relaxed);
        }
        Err(_) => {
            c.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    c.outstanding.fetch_sub(1, Ordering::Relaxed);
}

async fn load_loop(
    client: Client,
    subject: String,
    rate: f64,
    timeout: Duration,
    c: Arc<LoadCounts>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if c.outstanding.load(Ordering::Relaxed) >= MAX_OUTSTANDING {
            c.skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        c.outstanding.fetch_add(1, Ordering::Relaxed);
        c.sent.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(one_request(
            client.clone(),
            subject.clone(),
            timeout,
            c.clone(),
        ));
    }
}

fn status_line(
    began: Instant,
    insts: &[Arc<Instance>],
    c: &LoadCounts,
    prev_sent: &mut u64,
    every: f64,
) -> String {
    let sent = c.sent.load(Ordering::Relaxed);
    let rate = (sent - *prev_sent) as f64 / every.max(1e-3);
    *prev_sent = sent;
    let mut s = format!(
        "[{:>4}s] requests sent {sent} ({rate:.1}/s): ok {} error {} timeout {} no-responders {} failed {}",
        began.elapsed().as_secs(),
        c.ok.load(Ordering::Relaxed),
        c.error.load(Ordering::Relaxed),
        c.timeout.load(Ordering::Relaxed),
        c.no_responders.load(Ordering::Relaxed),
        c.failed.load(Ordering::Relaxed),
    );
    let skipped = c.skipped.load(Ordering::Relaxed);
    if skipped > 0 {
        s.push_str(&format!(" skipped {skipped}"));
    }
    s.push_str(" | served");
    for i in insts.iter().take(16) {
        s.push_str(&format!(
            " {}:v{}:{}/{}",
            i.id,
            i.config_version.load(Ordering::Relaxed),
            i.served.load(Ordering::Relaxed),
            i.errors.load(Ordering::Relaxed)
        ));
    }
    if insts.len() > 16 {
        s.push_str(&format!(" (+{} more)", insts.len() - 16));
    }
    s
}

async fn stop_signal(duration: Option<u64>) -> &'static str {
    let term = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    let timer = async {
        match duration {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted",
        _ = term => "terminated",
        _ = timer => "duration reached",
    }
}

async fn simulate(a: AgentArgs) -> Result<(), Failure> {
    let began = Instant::now();
    let mut insts: Vec<Arc<Instance>> = Vec::with_capacity(a.instances as usize);
    let mut tasks = Vec::new();
    for i in 0..a.instances {
        let inst = match start_instance(&a, i).await {
            Ok(x) => x,
            Err(f) => {
                for inst in &insts {
                    shutdown_instance(inst).await;
                }
                return Err(f);
            }
        };
        tasks.push(tokio::spawn(config_loop(inst.clone())));
        tasks.push(tokio::spawn(serve_loop(inst.clone(), a.component.clone())));
        tasks.push(tokio::spawn(events_loop(inst.clone())));
        insts.push(inst);
    }
    // Subscriptions are in place before the load starts (no needless no-responders).
    for inst in &insts {
        let _ = inst.client.flush().await;
    }
    println!(
        "{} instance(s) of {} [{}] registered ({}-0..{}-{}); serving {}.> in queue group {}; load {} req/s to {}.work",
        insts.len(),
        a.component,
        a.environment.as_deref().unwrap_or("the broker's default environment"),
        a.component,
        a.component,
        a.instances - 1,
        a.component,
        a.component,
        a.rate,
        a.component
    );
    let counts = Arc::new(LoadCounts::default());
    let mut load_client = None;
    if a.rate > 0.0 {
        let c = super::tools::connect(&a.server, &a.auth, &a.tls, &format!("{}-load", a.component))
            .await?;
        tasks.push(tokio::spawn(load_loop(
            c.clone(),
            format!("{}.work", a.component),
            a.rate,
            Duration::from_millis(a.request_timeout_ms.max(1)),
            counts.clone(),
        )));
        load_client = Some(c);
    }
    let status = {
        let insts = insts.clone();
        let counts = counts.clone();
        let every = a.status_every;
        tokio::spawn(async move {
            if every == 0 {
                return;
            }
            let mut prev = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(every));
            tick.tick().await;
            loop {
                tick.tick().await;
                println!(
                    "{}",
                    status_line(began, &insts, &counts, &mut prev, every as f64)
                );
            }
        })
    };
    tasks.push(status);
    let why = stop_signal(a.duration).await;
    println!(
        "stopping ({why}): deregistering {} instance(s)",
        insts.len()
    );
    for t in &tasks {
        t.abort();
    }
    if let Some(c) = load_client {
        let _ = tokio::time::timeout(Duration::from_secs(5), c.close()).await;
    }
    for inst in &insts {
        shutdown_instance(inst).await;
    }
    let mut prev = 0;
    println!(
        "{}",
        status_line(
            began,
            &insts,
            &counts,
            &mut prev,
            began.elapsed().as_secs_f64()
        )
    );
    Ok(())
}

async fn shutdown_instance(inst: &Instance) {
    let bound = Duration::from_secs(5);
    if let Err(e) = tokio::time::timeout(bound, inst.membership.deregister())
        .await
        .unwrap_or(Err(ClientError::Closed))
    {
        println!("{} deregistration not confirmed: {e}", inst.id);
    }
    let _ = tokio::time::timeout(bound, inst.client.close()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn config_values_apply_and_bad_ones_are_ignored() {
        let d = Settings::default();
        let (s, changed, problems) = apply_values(&d, &vals(&[("error_rate", "1.0")]), 1 << 20);
        assert_eq!(s.error_rate, 1.0);
        assert_eq!(changed, vec!["error_rate=1.0"]);
        assert!(problems.is_empty());
        let (s2, changed, problems) = apply_values(
            &s,
            &vals(&[("error_rate", "2"), ("latency_ms", "5"), ("payload", "128")]),
            1 << 20,
        );
        assert_eq!(s2.error_rate, 1.0, "a bad value keeps the previous one");
        assert_eq!(s2.latency_ms, 5);
        assert_eq!(s2.payload.len(), 128);
        assert_eq!(changed, vec!["latency_ms=5", "payload=128 bytes"]);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("error_rate=\"2\" ignored"));
        // Absent keys go back to their defaults; text payloads are sent as they are.
        let (s3, changed, _) = apply_values(&s2, &vals(&[("payload", "hello")]), 1 << 20);
        assert_eq!(s3.latency_ms, 0);
        assert_eq!(s3.error_rate, 0.0);
        assert_eq!(&s3.payload[..], b"hello");
        assert_eq!(changed.len(), 3);
        // Same values: nothing changed.
        let (_, changed, _) = apply_values(&s3, &vals(&[("payload", "hello")]), 1 << 20);
        assert!(changed.is_empty());
        // Bad latency and oversize payload.
        let (s4, _, problems) = apply_values(
            &d,
            &vals(&[("latency_ms", "-1"), ("payload", "99999999")]),
            1000,
        );
        assert_eq!(s4, d);
        assert_eq!(problems.len(), 2);
    }
}
