//! Command-line interface of `agentwire`: flag parsing, logging set-up, and one module per
//! family of commands (`serve`; the client tools `pub`, `sub`, `req`, `reply`; the admin
//! commands `status`, `components`, `config`, `top`, `optimize`, `deployment`, `drain`; the key
//! tools `keygen`, `hash-token`; the data-dir tools `backup`, `restore`).
//!
//! Exit codes: 0 success, 1 runtime failure (cannot connect, server error, timeout), 2 usage
//! error (bad flags, invalid subject, unreadable config).

mod admin;
mod agent;
mod backup;
mod duration;
mod keys;
mod serve;
mod tools;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Exit code for bad usage.
pub(crate) const EXIT_USAGE: u8 = 2;
/// Exit code for failures at run time.
pub(crate) const EXIT_FAILURE: u8 = 1;

/// agentwire: a message broker for agent networks, and its command-line tools.
#[derive(Debug, Parser)]
#[command(name = "agentwire", version, about)]
pub(crate) struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker.
    Serve(serve::ServeArgs),
    /// Publish a message (or N copies).
    Pub(tools::PubArgs),
    /// Subscribe and print messages.
    Sub(tools::SubArgs),
    /// Send a request and print the reply.
    Req(tools::ReqArgs),
    /// Answer every request on a subject with its own payload (an echo service).
    Reply(tools::ReplyArgs),
    /// Overall status and registered components (admin API).
    Status(admin::AdminTarget),
    /// Live component instances, or one component in detail (admin API).
    Components(admin::ComponentsArgs),
    /// Read, change, list and roll back component config (admin API).
    Config(admin::ConfigArgs),
    /// Live message rates and latency by component, refreshed (admin API).
    Top(admin::TopArgs),
    /// Bottleneck report and the safe actions the broker took (admin API).
    Optimize(admin::AdminTarget),
    /// Version, build, uptime, shards, listeners, config versions (admin API).
    Deployment(admin::AdminTarget),
    /// Firing alerts, or with --history the stored firings and resolutions (admin API).
    Alerts(admin::AlertsArgs),
    /// Lame duck: stop accepting, move every client away over the window, exit (admin API).
    Drain(admin::AdminTarget),
    /// Check the web dashboard answers and print its address (open it in a browser).
    Dashboard(admin::AdminTarget),
    /// Re-read the config file: apply users, permissions and limits live (admin API; SIGHUP does the same).
    Reload(admin::AdminTarget),
    /// Simulated agents: N instances of a component serving requests, with live config.
    Agent(agent::AgentArgs),
    /// Write an ed25519 key pair: OUT (credentials, mode 0600) and OUT.pub (public key).
    Keygen(keys::KeygenArgs),
    /// Print the argon2 hash of the token read from stdin (for `[[users]] token_hash`).
    HashToken(keys::HashTokenArgs),
    /// Copy the data dir's database to OUT, consistent, while the broker runs (no admin API).
    Backup(backup::BackupArgs),
    /// Put a backup in place as the data dir's database; the broker must be stopped.
    Restore(backup::RestoreArgs),
}

/// Default server address for the client tools.
pub(crate) const DEFAULT_SERVER: &str = "127.0.0.1:4800";

fn init_logging(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Serve(a) => {
            init_logging(cli.log_format, "info");
            serve::run(a)
        }
        Command::Status(t) => admin::status(t),
        Command::Components(a) => admin::components(a),
        Command::Config(a) => admin::config(a),
        Command::Top(a) => admin::top(a),
        Command::Optimize(t) => admin::optimize(t),
        Command::Deployment(t) => admin::deployment(t),
        Command::Alerts(a) => admin::alerts(a),
        Command::Drain(t) => admin::drain(t),
        Command::Dashboard(t) => admin::dashboard(t),
        Command::Reload(t) => admin::reload(t),
        Command::Keygen(a) => keys::keygen(a),
        Command::Agent(a) => {
            init_logging(cli.log_format, "warn");
            agent::run(a)
        }
        Command::HashToken(a) => keys::hash_token(a),
        Command::Backup(a) => backup::backup(a),
        Command::Restore(a) => backup::restore(a),
        cmd => {
            init_logging(cli.log_format, "warn");
            tools::run(cmd)
        }
    }
}
