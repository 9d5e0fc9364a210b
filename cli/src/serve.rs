//! `agentwire serve`: loads the configuration (defaults, then `--config FILE`, then flags),
//! starts the broker and runs until SIGTERM or SIGINT, then shuts down cleanly (exit 0). SIGUSR2
//! (or the admin API's lame duck) stops accepting, moves clients away over the lame-duck window,
//! then exits 0. SIGHUP re-reads the config file and applies its `[[users]]` and `[limits]`
//! without a restart.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use agentwire_broker::config::Config;

use super::{EXIT_FAILURE, EXIT_USAGE};
use crate::duration::parse_duration_s;

/// Flags of `serve`. Each overrides the config file.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:4800].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Shard threads [default: one per core].
    #[arg(long)]
    shards: Option<usize>,
    /// TOML config file (see the README for its keys).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Largest headers + payload of one message, in bytes [default: 1048576].
    #[arg(long)]
    max_payload: Option<u32>,
    /// Most client connections [default: 65536].
    #[arg(long)]
    max_connections: Option<usize>,
    /// Most subscriptions per connection [default: 65536].
    #[arg(long)]
    max_subscriptions: Option<usize>,
    /// Most outbound bytes buffered per connection before it is a slow consumer [default: 67108864].
    #[arg(long)]
    max_pending: Option<usize>,
    /// Address of the HTTP admin API (`/api/v1/`, `/metrics`) [default: 127.0.0.1:8480];
    /// `off` for none.
    #[arg(long)]
    admin: Option<String>,
    /// Directory of the embedded database (config center, metrics samples)
    /// [default: ./agentwire-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Queue-group member choice: `load` or `round-robin` [default: load].
    #[arg(long)]
    routing: Option<agentwire_broker::config::RoutingPolicy>,
    /// Serve the admin API on a non-loopback address with no admin token (not recommended).
    #[arg(long)]
    insecure_admin: bool,
    /// Lame duck: clients are closed over this many ms [default: 10000].
    #[arg(long)]
    lameduck_window_ms: Option<u64>,
    /// Heartbeat interval asked of registered components, ms [default: 1000].
    #[arg(long)]
    heartbeat_ms: Option<u32>,
    /// Config environment of registrations and admin calls that name none [default: default].
    #[arg(long)]
    environment: Option<String>,
    /// Age after which stored metrics samples are deleted, e.g. `30d`, `12h`, `3600s`
    /// [default: 30d].
    #[arg(long)]
    metrics_retention: Option<String>,
    /// TLS: the server's certificate chain (PEM). With --tls-key, every client connection
    /// and the admin API use TLS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS: the certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: CA certificates (PEM) client certificates must chain to; clients without
    /// one are refused. Needs TLS (--tls-cert/--tls-key or `[tls]` in the config file).
    #[arg(long)]
    tls_client_ca: Option<PathBuf>,
}

fn build_config(a: &ServeArgs) -> Result<Config, String> {
    let mut cfg = match &a.config {
        Some(p) => Config::from_file(p).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    // The binary's defaults where the file is silent: the admin API on, the data on disk.
    if cfg.admin.listen.is_none() {
        cfg.admin.listen = Some(
            crate::admin::DEFAULT_ADMIN
                .parse()
                .map_err(|e| format!("{e}"))?,
        );
    }
    if cfg.admin.data_dir.is_none() {
        cfg.admin.data_dir = Some(PathBuf::from("./agentwire-data"));
    }
    match a.admin.as_deref() {
        Some("off") => cfg.admin.listen = None,
        Some(v) => {
            cfg.admin.listen = Some(
                v.parse()
                    .map_err(|e| format!("--admin {v:?}: {e} (ADDR:PORT or off)"))?,
            )
        }
        None => {}
    }
    if let Some(d) = &a.data_dir {
        cfg.admin.data_dir = Some(d.clone());
    }
    if let Some(r) = a.routing {
        cfg.admin.routing = r;
    }
    if a.insecure_admin {
        cfg.admin.insecure = true;
    }
    if let Some(w) = a.lameduck_window_ms {
        cfg.lameduck_window_ms = w;
    }
    if let Some(h) = a.heartbeat_ms {
        cfg.admin.heartbeat_ms = h;
    }
    if let Some(e) = &a.environment {
        cfg.admin.environment = e.clone();
    }
    if let Some(r) = &a.metrics_retention {
        cfg.admin.metrics_retention_s = parse_duration_s(r)?;
    }
    if let Some(v) = a.listen {
        cfg.listen = v;
    }
    if let Some(v) = a.shards {
        cfg.shards = v;
    }
    if let Some(v) = a.max_payload {
        cfg.limits.max_payload = v;
    }
    if let Some(v) = a.max_connections {
        cfg.limits.max_connections = v;
    }
    if let Some(v) = a.max_subscriptions {
        cfg.limits.max_subscriptions = v;
    }
    if let Some(v) = a.max_pending {
        cfg.limits.max_pending = v;
    }
    if let (Some(cert), Some(key)) = (&a.tls_cert, &a.tls_key) {
        let client_ca = cfg.tls.take().and_then(|t| t.client_ca);
        cfg.tls = Some(agentwire_broker::config::TlsConfig {
            cert: cert.clone(),
            key: key.clone(),
            client_ca,
        });
    }
    if let Some(ca) = &a.tls_client_ca {
        match cfg.tls.as_mut() {
            Some(t) => t.client_ca = Some(ca.clone()),
            None => {
                return Err(
                    "--tls-client-ca needs TLS: give --tls-cert and --tls-key (or [tls] in the \
                     config file)"
                        .into(),
                )
            }
        }
    }
    agentwire_broker::auth::check_config(&cfg).map_err(|e| e.to_string())?;
    Ok(cfg)
}

/// Raises the soft open-file limit to the hard limit (each connection is a descriptor; the
/// common soft default of 1,024 would cap the broker near 1,000 clients) and warns when the
/// result is below `max_connections`.
fn raise_fd_limit(max_connections: usize) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            tracing::warn!("cannot raise the open-file limit: {e}");
        }
    }
    let now = getrlimit(Resource::Nofile).current;
    if let Some(n) = now {
        if (n as usize) < max_connections {
            tracing::warn!(
                open_files = n,
                max_connections,
                "the open-file limit is below max_connections: connections past it will be refused by the OS"
            );
        }
    }
}

pub(crate) fn run(a: ServeArgs) -> ExitCode {
    let cfg = match build_config(&a) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("agentwire serve: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    raise_fd_limit(cfg.limits.max_connections + 64);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agentwire serve: cannot start signal handling: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    // Signal handlers first: a signal sent as soon as the ports answer is never the default
    // action (which would kill the process).
    let signals = {
        use tokio::signal::unix::{signal, SignalKind};
        let _rt = rt.enter();
        (|| {
            Ok::<_, std::io::Error>((
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
                signal(SignalKind::user_defined2())?,
                signal(SignalKind::hangup())?,
            ))
        })()
    };
    let (mut term, mut int, mut usr2, mut hup) = match signals {
        Ok(s) => s,
        Err(e) => {
            eprintln!("agentwire serve: cannot install signal handlers: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let handle = match agentwire_admin::start(cfg) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("agentwire serve: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    {
        let source = a.clone();
        handle.set_reload_source(move || build_config(&source));
    }
    let window = std::time::Duration::from_millis(
        handle.global().config.lameduck_window_ms + handle.global().config.shutdown_grace_ms,
    );
    let sig = rt.block_on(async {
        let mut lame_since: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                _ = term.recv() => return Ok::<_, std::io::Error>("SIGTERM"),
                _ = int.recv() => return Ok("SIGINT"),
                _ = usr2.recv() => {
                    tracing::info!("SIGUSR2 received: entering lame duck");
                    handle.lame_duck();
                }
                _ = hup.recv() => {
                    // Re-read the file (flags still win) and apply users and limits.
                    match build_config(&a) {
                        Ok(cfg) => match handle.reload(&cfg) {
                            Ok(r) => tracing::info!(users = r.users, "SIGHUP: configuration reloaded"),
                            Err(e) => tracing::error!("SIGHUP: reload refused, nothing changed: {e}"),
                        },
                        Err(e) => tracing::error!("SIGHUP: reload refused, nothing changed: {e}"),
                    }
                }
                _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
            }
            if handle.is_lame_duck() {
                let since = *lame_since.get_or_insert_with(std::time::Instant::now);
                let open = handle.stats().connections;
                if open == 0 || since.elapsed() >= window {
                    return Ok("lame duck over");
                }
            }
        }
    });
    match sig {
        Ok(s) => tracing::info!("{s}: shutting down"),
        Err(e) => tracing::error!("signal handling failed: {e}; shutting down"),
    }
    handle.shutdown();
    let stats = handle.stats();
    handle.join();
    tracing::info!(
        msgs_in = stats.msgs_in,
        msgs_out = stats.msgs_out,
        slow_consumers = stats.slow_consumers,
        "stopped"
    );
    ExitCode::SUCCESS
}
