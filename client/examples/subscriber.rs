//! Prints every message on a subject pattern until Ctrl-C, then drains.
//!
//! ```text
//! cargo run -p agentwire-client --example subscriber -- [SERVER] [PATTERN]
//! ```
//! SERVER defaults to `$AGENTWIRE_SERVER`, then `127.0.0.1:4800`; PATTERN to `demo.>`.

use std::process::ExitCode;

use agentwire_client::{ConnectOptions, Error};

fn server_addr() -> String {
    std::env::args()
        .nth(1)
        .or_else(|| std::env::var("AGENTWIRE_SERVER").ok())
        .unwrap_or_else(|| "127.0.0.1:4800".to_owned())
}

async fn run() -> Result<(), Error> {
    let pattern = std::env::args()
        .nth(2)
        .unwrap_or_else(|| "demo.>".to_owned());
    let client = ConnectOptions::new()
        .name("example-subscriber")
        .connect(&server_addr())
        .await?;
    let mut sub = client.subscribe(&pattern).await?;
    client.flush().await?;
    println!("listening on {pattern} (Ctrl-C to stop)");
    loop {
        tokio::select! {
            msg = sub.next() => match msg {
                Some(msg) => {
                    let body = String::from_utf8_lossy(&msg.payload);
                    match &msg.reply {
                        Some(reply) => println!("[{}] {body} (reply to {reply})", msg.subject),
                        None => println!("[{}] {body}", msg.subject),
                    }
                }
                None => {
                    println!("subscription ended");
                    return Ok(());
                }
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    client.drain().await?;
    // Messages received before the drain are still readable.
    while let Some(msg) = sub.next().await {
        println!(
            "[{}] {}",
            msg.subject,
            String::from_utf8_lossy(&msg.payload)
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
