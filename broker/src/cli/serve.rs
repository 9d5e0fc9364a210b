//! `agentwire serve`: loads the configuration (defaults, then `--config FILE`, then flags),
//! starts the broker and runs until SIGTERM or SIGINT, then shuts down cleanly (exit 0).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use agentwire_broker::config::Config;

use super::{EXIT_FAILURE, EXIT_USAGE};

/// Flags of `serve`. Each overrides the config file.
#[derive(Debug, clap::Args)]
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
}

fn build_config(a: &ServeArgs) -> Result<Config, String> {
    let mut cfg = match &a.config {
        Some(p) => Config::from_file(p).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
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
    cfg.validate().map_err(|e| e.to_string())?;
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
    let handle = match agentwire_broker::server::start(cfg) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("agentwire serve: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
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
    let sig = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => Ok::<_, std::io::Error>("SIGTERM"),
            _ = int.recv() => Ok("SIGINT"),
        }
    });
    match sig {
        Ok(s) => tracing::info!("{s} received: shutting down"),
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
