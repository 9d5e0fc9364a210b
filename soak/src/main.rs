//! agentwire-soak: runs steady pub/sub and request/reply traffic against a broker for
//! `--duration` while fault injectors break things (kill -9, lame duck, a slow consumer,
//! garbage frames, reconnect storms, a network partition, agents scaling 100 → 1000 → 100), and
//! accounts for every message: delivered, duplicated, out of order, lost inside or outside a
//! fault window. Exit 0 when nothing was lost outside faults and every reconnect took at most
//! `--max-reconnect-ms`; 1 otherwise (the reasons are printed); 2 for bad usage.
//! `soak/README.md` defines every figure.
//!
//! Modules: [`track`] windows and accounting; [`fleet`] tracked clients and recovery;
//! [`broker`] the broker process; [`proxy`] the fault proxy; [`raw`] raw protocol connections;
//! [`load`] the traffic; [`faults`] the injectors and schedule; [`report`] the summary;
//! [`progress`] the progress bar.

mod broker;
mod faults;
mod fleet;
mod load;
mod progress;
mod proxy;
mod raw;
mod report;
mod track;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::broker::BrokerCtl;
use crate::faults::Ctx;
use crate::fleet::{ClientSettings, Fleet, Member};
use crate::proxy::FaultProxy;
use crate::track::{lock, now_us, FaultKind, Group, Ledger, SubAcc};

/// Subject prefix of the main traffic (publisher `i` publishes on `soak.data.<i>`).
const DATA_SUBJECT: &str = "soak.data";
/// Subject of the storm clients' ticker.
const TICK_SUBJECT: &str = "soak.tick";
/// Subject of the requests.
const REQ_SUBJECT: &str = "soak.req";

/// agentwire-soak: traffic under injected faults, with per-message loss accounting.
#[derive(Debug, Parser)]
#[command(name = "agentwire-soak", version, about)]
struct Cli {
    /// How long the traffic runs, e.g. `60s`, `5m`, `1500ms`.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Publishers of the main traffic (every subscriber receives every publisher's messages).
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Subscribers of the main traffic.
    #[arg(long, default_value_t = 4)]
    subscribers: usize,
    /// Requesters (one request in flight each) to a queue group of `--responders`.
    #[arg(long, default_value_t = 2)]
    requesters: usize,
    /// Responders in the queue group.
    #[arg(long, default_value_t = 2)]
    responders: usize,
    /// Main traffic: messages per second over all publishers together (each publishes
    /// rate / publishers).
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Requests per second per requester.
    #[arg(long, default_value_t = 50.0)]
    req_rate: f64,
    /// Request timeout, ms.
    #[arg(long, default_value_t = 1000)]
    request_timeout_ms: u64,
    /// Payload bytes of the main traffic (at least 24: publisher id, sequence, send time).
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Faults to inject: a comma list of kill, lameduck, slow, garbage, storm, partition,
    /// scale, or `all`; empty for none.
    #[arg(long, default_value = "", value_parser = parse_faults)]
    faults: FaultList,
    /// Time slot of each injection (the faults but scale take turns).
    #[arg(long, default_value = "8s", value_parser = parse_duration)]
    fault_every: Duration,
    /// Storm: clients dropped and reconnecting at once.
    #[arg(long, default_value_t = 300)]
    storm_clients: usize,
    /// Storm clients' ticker: messages per second (each storm client receives all).
    #[arg(long, default_value_t = 10.0)]
    tick_rate: f64,
    /// Scale: registered agents at the start and the end.
    #[arg(long, default_value_t = 100)]
    agents_min: usize,
    /// Scale: registered agents at the peak (the middle fifth of the run).
    #[arg(long, default_value_t = 1000)]
    agents_max: usize,
    /// Garbage: raw connections per injection.
    #[arg(long, default_value_t = 200)]
    garbage_conns: usize,
    /// Slow: most bytes published to the stalled subscriber before giving up.
    #[arg(long, default_value_t = 256 << 20)]
    slow_max_bytes: u64,
    /// Fail when a client's reconnect (drop → reconnected) takes longer than this.
    #[arg(long, default_value_t = 2000)]
    max_reconnect_ms: u64,
    /// Clients' reconnect backoff: first wait, ms.
    #[arg(long, default_value_t = 25)]
    backoff_min_ms: u64,
    /// Clients' reconnect backoff: cap, ms.
    #[arg(long, default_value_t = 500)]
    backoff_max_ms: u64,
    /// Clients' bound on TCP connect + handshake per attempt, ms. On loopback a handshake takes
    /// far less unless a full accept queue dropped the SYN or the final ACK; then giving up and
    /// retrying beats waiting for the kernel's 1 s / 3 s retransmits.
    #[arg(long, default_value_t = 500)]
    connect_timeout_ms: u64,
    /// Target a running broker instead of starting one (no kill or lameduck then).
    #[arg(long, value_name = "ADDR")]
    server: Option<SocketAddr>,
    /// With --server: its admin API (host:port), to confirm the slow consumer was cut.
    #[arg(long, value_name = "ADDR")]
    admin: Option<String>,
    /// The `agentwire` binary to start [default: next to this executable].
    #[arg(long, value_name = "PATH")]
    broker_bin: Option<PathBuf>,
    /// `--lameduck-window-ms` of the started broker (clients leave at once on LAMEDUCK; the
    /// broker exits as soon as none is left).
    #[arg(long, default_value_t = 10_000)]
    lameduck_window_ms: u64,
    /// `--shards` of the started broker [default: the broker's, one per core].
    #[arg(long)]
    shards: Option<usize>,
    /// Print the summary as JSON on stdout (the text summary goes to stderr either way).
    #[arg(long)]
    json: bool,
}

/// The `--faults` list.
#[derive(Debug, Clone)]
struct FaultList(Vec<FaultKind>);

impl FaultList {
    fn contains(&self, k: &FaultKind) -> bool {
        self.0.contains(k)
    }
}

fn parse_faults(s: &str) -> Result<FaultList, String> {
    FaultKind::parse_list(s).map(FaultList)
}

/// Parses `60s`, `5m`, `1500ms`, `1h` or bare seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((s, ""), |i| s.split_at(i));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (e.g. 60s, 5m, 1500ms)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration unit in {s:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = check(&cli) {
        eprintln!("agentwire-soak: {e}");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agentwire-soak: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let out = rt.block_on(run(cli));
    rt.shutdown_timeout(Duration::from_secs(2));
    match out {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("agentwire-soak: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn check(cli: &Cli) -> Result<()> {
    if cli.server.is_some()
        && (cli.faults.contains(&FaultKind::Kill) || cli.faults.contains(&FaultKind::Lameduck))
    {
        bail!("kill and lameduck need a broker started by the soak (not --server)");
    }
    if cli.server.is_none() && cli.admin.is_some() {
        bail!("--admin goes with --server (a started broker's admin API is known)");
    }
    if cli.size < track::HEADER_LEN {
        bail!("--size must be at least {}", track::HEADER_LEN);
    }
    // Written so that NaN is refused too.
    let in_range = |x: f64, max: f64| x > 0.0 && x <= max;
    if !in_range(cli.rate, 1e6) || !in_range(cli.req_rate, 1e5) {
        bail!("--rate must be in (0, 1e6] and --req-rate in (0, 1e5]");
    }
    if cli.duration < Duration::from_secs(1) || cli.duration > Duration::from_secs(7 * 86_400) {
        bail!("--duration must be between 1s and 7 days");
    }
    if cli.agents_min > cli.agents_max || cli.agents_max > 100_000 || cli.storm_clients > 100_000 {
        bail!("--agents-min must be at most --agents-max, and counts at most 100000");
    }
    if cli.publishers == 0 || cli.subscribers == 0 {
        bail!("--publishers and --subscribers must be at least 1");
    }
    Ok(())
}

/// Raises the soft open-file limit to the hard one (every client is a descriptor, every proxied
/// one three).
fn raise_nofile() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        },
    );
}

/// How long after the start a background loop may run at most: the run plus ten minutes.
fn bound_after(duration: Duration) -> Duration {
    duration + Duration::from_secs(600)
}

/// Connects a tracked client, with the name in the error.
async fn member(ctx: &Ctx, addr: SocketAddr, name: &str, group: Group) -> Result<Member> {
    ctx.fleet
        .connect(&ctx.settings, &addr.to_string(), name, group, &ctx.ledger)
        .await
        .with_context(|| format!("{name} cannot connect to {addr}"))
}

/// Runs the soak; `Ok(true)` when it passed.
async fn run(cli: Cli) -> Result<bool> {
    let _ = now_us();
    raise_nofile();
    let faults = cli.faults.0.clone();
    let has = |k: FaultKind| faults.contains(&k);

    // The broker.
    let broker = match cli.server {
        Some(_) => None,
        None => {
            let bin = broker::find_bin(cli.broker_bin.as_deref())?;
            let (shards, window) = (cli.shards, cli.lameduck_window_ms);
            Some(Arc::new(
                tokio::task::spawn_blocking(move || BrokerCtl::start(bin, shards, window))
                    .await
                    .map_err(|e| anyhow!("{e}"))??,
            ))
        }
    };
    let addr = match (&broker, cli.server) {
        (Some(b), _) => b.addr,
        (None, Some(a)) => a,
        (None, None) => bail!("no broker"),
    };
    let admin = broker
        .as_ref()
        .map(|b| b.admin.to_string())
        .or(cli.admin.clone());
    let part_proxy = match has(FaultKind::Partition) {
        true => Some(Arc::new(FaultProxy::start(addr).await?)),
        false => None,
    };
    let storm_proxy = match has(FaultKind::Storm) {
        true => Some(Arc::new(FaultProxy::start(addr).await?)),
        false => None,
    };
    let ctx = Arc::new(Ctx {
        ledger: Arc::new(Ledger::default()),
        fleet: Arc::new(Fleet::default()),
        settings: ClientSettings {
            backoff_min: Duration::from_millis(cli.backoff_min_ms),
            backoff_max: Duration::from_millis(cli.backoff_max_ms),
            connect_timeout: Duration::from_millis(cli.connect_timeout_ms.max(1)),
        },
        broker: broker.clone(),
        addr,
        admin,
        part_proxy: part_proxy.clone(),
        storm_proxy: storm_proxy.clone(),
        garbage_conns: cli.garbage_conns,
        slow_max_bytes: cli.slow_max_bytes,
        agents_now: AtomicUsize::new(0),
    });
    let ledger = ctx.ledger.clone();
    // Half the main clients (the odd ones) go through the partition proxy when it runs.
    let route = |i: usize| match &part_proxy {
        Some(p) if i % 2 == 1 => (p.addr, Group::Partitioned),
        _ => (addr, Group::Direct),
    };

    // Publisher logs first (their ids go in the subscribers' expectations).
    let pub_logs: Vec<_> = (0..cli.publishers)
        .map(|i| ledger.new_pub(route(i).1, "main"))
        .collect();
    let expects: Vec<u32> = pub_logs.iter().map(|l| l.id).collect();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sub_tasks = JoinSet::new();
    let mut flush_at_end: Vec<Member> = Vec::new();
    let mut publishers_clients = Vec::new();
    // Requesters and responders: closed at the end.
    let mut others: Vec<Member> = Vec::new();
    for i in 0..cli.subscribers {
        let (a, g) = route(i);
        let m = member(&ctx, a, &format!("soak-sub-{i}"), g).await?;
        let sub = m.client.subscribe(&format!("{DATA_SUBJECT}.>")).await?;
        m.client.flush().await?;
        let acc = SubAcc::new(ledger.new_sub_id(), g, expects.clone());
        sub_tasks.spawn(load::subscriber(sub, acc, stop_rx.clone(), ledger.clone()));
        flush_at_end.push(m);
    }
    let mut responders = JoinSet::new();
    for i in 0..cli.responders {
        let (a, g) = route(i);
        let m = member(&ctx, a, &format!("soak-responder-{i}"), g).await?;
        others.push(m.clone());
        let sub = m
            .client
            .queue_subscribe(REQ_SUBJECT, "soak-responders")
            .await?;
        m.client.flush().await?;
        responders.spawn(load::responder(
            m.client.clone(),
            sub,
            stop_rx.clone(),
            ledger.clone(),
        ));
    }
    // Storm clients subscribe to the ticker through the storm proxy.
    let ticker = storm_proxy
        .as_ref()
        .map(|_| ledger.new_pub(Group::Direct, "ticker"));
    if let (Some(p), Some(t)) = (&storm_proxy, &ticker) {
        let mut set = JoinSet::new();
        for i in 0..cli.storm_clients {
            let (ctx, paddr, tid) = (ctx.clone(), p.addr, t.id);
            let stop = stop_rx.clone();
            set.spawn(async move {
                let m = member(&ctx, paddr, &format!("soak-storm-{i}"), Group::Storm).await?;
                let sub = m.client.subscribe(TICK_SUBJECT).await?;
                m.client.flush().await?;
                let acc = SubAcc::new(ctx.ledger.new_sub_id(), Group::Storm, vec![tid]);
                Ok::<_, anyhow::Error>((m, load::subscriber(sub, acc, stop, ctx.ledger.clone())))
            });
            if set.len() >= 50 {
                if let Some(r) = set.join_next().await {
                    let (m, task) = r.map_err(|e| anyhow!("{e}"))??;
                    sub_tasks.spawn(task);
                    flush_at_end.push(m);
                }
            }
        }
        while let Some(r) = set.join_next().await {
            let (m, task) = r.map_err(|e| anyhow!("{e}"))??;
            sub_tasks.spawn(task);
            flush_at_end.push(m);
        }
    }

    // Traffic.
    let start = Instant::now();
    let until = start + cli.duration;
    let mut senders = JoinSet::new();
    let per_pub = cli.rate / cli.publishers as f64;
    for (i, log) in pub_logs.iter().enumerate() {
        let (a, g) = route(i);
        let m = member(&ctx, a, &format!("soak-pub-{i}"), g).await?;
        publishers_clients.push(m.clone());
        senders.spawn(load::publisher(
            m.client.clone(),
            log.clone(),
            format!("{DATA_SUBJECT}.{}", log.id),
            per_pub,
            cli.size,
            until,
            ledger.clone(),
        ));
    }
    if let Some(t) = &ticker {
        let m = member(&ctx, addr, "soak-ticker", Group::Direct).await?;
        publishers_clients.push(m.clone());
        senders.spawn(load::publisher(
            m.client.clone(),
            t.clone(),
            TICK_SUBJECT.to_owned(),
            cli.tick_rate,
            track::HEADER_LEN,
            until,
            ledger.clone(),
        ));
    }
    for i in 0..cli.requesters {
        let (a, g) = route(i);
        let m = member(&ctx, a, &format!("soak-requester-{i}"), g).await?;
        others.push(m.clone());
        senders.spawn(load::requester(
            m.client.clone(),
            REQ_SUBJECT.to_owned(),
            cli.req_rate,
            Duration::from_millis(cli.request_timeout_ms),
            until,
            ledger.clone(),
        ));
    }
    let scale = has(FaultKind::Scale).then(|| {
        tokio::spawn(
            ctx.clone()
                .scale(cli.agents_min, cli.agents_max, cli.duration, until),
        )
    });
    let plan = faults::schedule(&faults, cli.duration, cli.fault_every);
    let injector = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            for (at, kind) in plan {
                tokio::time::sleep_until(start + at).await;
                if Instant::now() >= until {
                    break;
                }
                ctx.inject(kind).await;
            }
        })
    };
    // RSS and peak connected clients, once a second; the progress bar.
    let (mon_stop, mut mon_rx) = watch::channel(false);
    let monitor = {
        let (broker, fleet) = (broker.clone(), ctx.fleet.clone());
        let (ledger, ctx2) = (ledger.clone(), ctx.clone());
        let bar = progress::Bar::new(cli.duration);
        let cli_duration = cli.duration;
        tokio::spawn(async move {
            let mut rss = Vec::new();
            let mut peak = 0usize;
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            // Bounded: the run's end signal, or far past it.
            let cap = bound_after(cli_duration);
            for n in 0u64.. {
                if start.elapsed() > cap {
                    break;
                }
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = mon_rx.changed() => break,
                }
                let connected = fleet.connected();
                peak = peak.max(connected);
                if n % 4 == 0 {
                    if let Some(k) = broker.as_ref().and_then(|b| b.rss_kib()) {
                        rss.push((start.elapsed().as_secs_f64(), k));
                    }
                }
                bar.update(
                    start.elapsed(),
                    &format!(
                        "pub {} dlv {} clients {} agents {} reconnects {} {}",
                        ledger.published(),
                        ledger.delivered.load(std::sync::atomic::Ordering::Relaxed),
                        connected,
                        ctx2.agents_now.load(std::sync::atomic::Ordering::Relaxed),
                        ledger.reconnect_count(),
                        lock(&ledger.current)
                    ),
                );
            }
            bar.finish();
            (rss, peak)
        })
    };

    // The end: senders stop at `until`; the last injection may run over.
    while senders.join_next().await.is_some() {}
    let bound = cli.duration + Duration::from_secs(60);
    let _ = tokio::time::timeout(bound, injector).await;
    let scale = match scale {
        Some(h) => tokio::time::timeout(Duration::from_secs(30), h)
            .await
            .ok()
            .and_then(Result::ok),
        None => None,
    };
    let duration_s = start.elapsed().as_secs_f64();
    // Drain: every publish routed, then everything routed is in the subscribers' streams.
    for m in &publishers_clients {
        if let Err(e) = m.client.flush().await {
            ledger.client_error(format!("final flush: {}", load::err_kind(&e)));
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut flushes = JoinSet::new();
    for m in &flush_at_end {
        let c = m.client.clone();
        flushes.spawn(async move { c.flush().await });
    }
    while let Some(r) = flushes.join_next().await {
        if let Ok(Err(e)) = r {
            ledger.client_error(format!("final flush: {}", load::err_kind(&e)));
        }
    }
    let down_at_end = ctx.fleet.down();
    let dead = ctx.fleet.dead();
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while sub_tasks.join_next().await.is_some() {}
        while responders.join_next().await.is_some() {}
    })
    .await;
    let _ = mon_stop.send(true);
    let (rss, peak_connected) = monitor.await.unwrap_or_default();

    let mut info = report::RunInfo {
        config: json!({
            "duration_s": cli.duration.as_secs_f64(),
            "publishers": cli.publishers,
            "subscribers": cli.subscribers,
            "requesters": cli.requesters,
            "responders": cli.responders,
            "rate_total": cli.rate,
            "req_rate_each": cli.req_rate,
            "size": cli.size,
            "faults": faults.iter().map(|k| k.name()).collect::<Vec<_>>(),
            "fault_every_s": cli.fault_every.as_secs_f64(),
            "storm_clients": cli.storm_clients,
            "agents": [cli.agents_min, cli.agents_max],
            "max_reconnect_ms": cli.max_reconnect_ms,
            "backoff_ms": [cli.backoff_min_ms, cli.backoff_max_ms],
            "lameduck_window_ms": cli.lameduck_window_ms,
            "connect_timeout_ms": cli.connect_timeout_ms,
            "broker": broker.as_ref().map_or_else(|| format!("--server {addr}"), |b| format!("started on {}", b.addr)),
        }),
        duration_s,
        rss,
        scale,
        storm_clients: if storm_proxy.is_some() {
            cli.storm_clients
        } else {
            0
        },
        peak_connected,
        down_at_end,
        dead,
        ..report::RunInfo::default()
    };
    // Close the clients, then stop the broker (it must exit 0).
    let mut closes = JoinSet::new();
    for m in flush_at_end
        .into_iter()
        .chain(publishers_clients)
        .chain(others)
    {
        m.state.retire();
        closes.spawn(async move { m.client.close().await });
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while closes.join_next().await.is_some() {}
    })
    .await;
    if let Some(b) = broker {
        let b2 = b.clone();
        match tokio::task::spawn_blocking(move || b2.stop()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => info.broker_problems.push(format!("broker stop: {e:#}")),
            Err(e) => info.broker_problems.push(format!("broker stop: {e}")),
        }
    }
    let snap = ledger.snapshot();
    let (summary, failures) = report::build(&snap, &info, cli.max_reconnect_ms);
    eprint!("{}", report::text(&summary));
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    Ok(failures.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("7y").is_err());
        assert!(parse_duration("abc").is_err());
    }

    #[test]
    fn cli_checks() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("agentwire-soak").chain(args.iter().copied()))
        };
        let c = parse(&["--server", "127.0.0.1:4800", "--faults", "kill"]).expect("parses");
        assert!(check(&c).is_err(), "kill needs a started broker");
        let c = parse(&["--faults", "all", "--duration", "60s"]).expect("parses");
        assert!(check(&c).is_ok());
        assert_eq!(c.faults.0.len(), 7);
        assert!(parse(&["--faults", "nope"]).is_err());
    }
}
