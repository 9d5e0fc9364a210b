//! A registered component instance: registers as an instance of COMPONENT, prints each config
//! version as it arrives, and answers requests on `COMPONENT.>` in the queue group `COMPONENT`
//! (so several copies share the work), reporting its in-flight requests and latency in the
//! heartbeats. Ctrl-C deregisters and exits.
//!
//! ```text
//! cargo run -p agentwire-client --example agent -- COMPONENT [SERVER]
//! ```
//! SERVER defaults to `$AGENTWIRE_SERVER`, then `127.0.0.1:4800`. The instance id is
//! `$AGENT_INSTANCE`, or `COMPONENT-<pid>`. Each reply is the config's `greeting` (default
//! `hello`), the instance id and the request's payload: try
//! `agentwire req COMPONENT.echo world` once it runs.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use agentwire_client::{ConnectOptions, Error, Membership, Registration};

struct Args {
    component: String,
    server: String,
}

fn args() -> Option<Args> {
    let mut args = std::env::args().skip(1);
    let component = args.next()?;
    let server = args
        .next()
        .or_else(|| std::env::var("AGENTWIRE_SERVER").ok())
        .unwrap_or_else(|| "127.0.0.1:4800".to_owned());
    Some(Args { component, server })
}

/// Prints every config version, the current one first.
fn print_configs(membership: &Membership) {
    let mut configs = membership.config_watch();
    tokio::spawn(async move {
        while let Some(config) = configs.next().await {
            println!(
                "config v{} ({}/{}, by {:?}):",
                config.version(),
                config.component(),
                config.environment(),
                config.updated_by()
            );
            for (key, value) in config.values() {
                println!("  {key} = {value}");
            }
        }
    });
}

/// Answers requests on `<component>.>` until the subscription ends.
async fn serve(membership: Membership) -> Result<(), Error> {
    let client = membership.client().clone();
    let component = membership.component().to_owned();
    let mut requests = client
        .queue_subscribe(&format!("{component}.>"), &component)
        .await?;
    client.flush().await?;
    println!(
        "serving {component}.> as {} (heartbeat every {:?})",
        membership.instance_id(),
        membership.heartbeat_interval()
    );
    let in_flight = Arc::new(AtomicU32::new(0));
    let load = membership.load_reporter();
    while let Some(req) = requests.next().await {
        let started = Instant::now();
        load.set_in_flight(in_flight.fetch_add(1, Ordering::Relaxed) + 1);
        let client = client.clone();
        let membership = membership.clone();
        let in_flight = in_flight.clone();
        let load = load.clone();
        tokio::spawn(async move {
            let config = membership.config();
            let greeting = config.get("greeting").unwrap_or("hello");
            let answer = format!(
                "{greeting} from {}: {}",
                membership.instance_id(),
                String::from_utf8_lossy(&req.payload)
            );
            if let Err(e) = client.respond(&req, answer).await {
                eprintln!("cannot answer on {}: {e}", req.subject);
            }
            load.record_latency(started.elapsed());
            load.set_in_flight(in_flight.fetch_sub(1, Ordering::Relaxed).saturating_sub(1));
        });
    }
    Ok(())
}

async fn run(args: Args) -> Result<(), Error> {
    let instance_id = std::env::var("AGENT_INSTANCE")
        .unwrap_or_else(|_| format!("{}-{}", args.component, std::process::id()));
    let client = ConnectOptions::new()
        .name(format!("agent {instance_id}"))
        .connect(&args.server)
        .await?;
    let membership = client
        .register(Registration {
            component: args.component.clone(),
            instance_id,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            capabilities: vec!["echo".to_owned()],
            subjects: vec![format!("{}.>", args.component)],
            metadata: vec![("example".to_owned(), "agent".to_owned())],
            ..Registration::default()
        })
        .await?;
    print_configs(&membership);
    let server = tokio::spawn(serve(membership.clone()));
    tokio::select! {
        _ = tokio::signal::ctrl_c() => println!("interrupted: deregistering"),
        served = server => match served {
            Ok(result) => result?,
            Err(e) => eprintln!("the request loop stopped: {e}"),
        },
    }
    membership.deregister().await?;
    client.drain().await
}

#[tokio::main]
async fn main() -> ExitCode {
    let Some(args) = args() else {
        eprintln!("usage: agent COMPONENT [SERVER]");
        return ExitCode::from(2);
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
