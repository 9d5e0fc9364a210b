//! Publishes a few messages on `demo.greetings`, then flushes and prints the connection's
//! counters.
//!
//! ```text
//! cargo run -p agentwire-client --example publisher -- [SERVER] [COUNT]
//! ```
//! SERVER defaults to `$AGENTWIRE_SERVER`, then `127.0.0.1:4800`; COUNT to 10.

use std::process::ExitCode;

use agentwire_client::{ConnectOptions, Error, Headers};

fn server_addr() -> String {
    std::env::args()
        .nth(1)
        .or_else(|| std::env::var("AGENTWIRE_SERVER").ok())
        .unwrap_or_else(|| "127.0.0.1:4800".to_owned())
}

async fn run() -> Result<(), Error> {
    let count: u32 = std::env::args()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(10);
    let client = ConnectOptions::new()
        .name("example-publisher")
        .connect(&server_addr())
        .await?;
    let mut headers = Headers::new();
    headers.insert("Content-Type", "text/plain")?;
    for i in 0..count {
        client
            .publish_with_headers("demo.greetings", &headers, format!("hello #{i}"))
            .await?;
    }
    // Returns once the broker has read every message above.
    client.flush().await?;
    let stats = client.statistics();
    println!(
        "published {} messages ({} bytes in {} writes)",
        stats.out_msgs, stats.out_bytes, stats.writes
    );
    client.close().await
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
