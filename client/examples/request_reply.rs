//! Request/reply: a service on `demo.upper` answers each request with its payload in upper
//! case; a requester on a second connection sends a few requests and prints the replies.
//!
//! ```text
//! cargo run -p agentwire-client --example request_reply -- [SERVER]
//! ```
//! SERVER defaults to `$AGENTWIRE_SERVER`, then `127.0.0.1:4800`.

use std::process::ExitCode;
use std::time::Duration;

use agentwire_client::{Client, ConnectOptions, Error};

fn server_addr() -> String {
    std::env::args()
        .nth(1)
        .or_else(|| std::env::var("AGENTWIRE_SERVER").ok())
        .unwrap_or_else(|| "127.0.0.1:4800".to_owned())
}

/// Answers requests on `demo.upper` until the subscription ends.
async fn serve(service: Client) -> Result<(), Error> {
    // A queue group, so that several copies of this service share the load.
    let mut requests = service
        .queue_subscribe("demo.upper", "upper-workers")
        .await?;
    service.flush().await?;
    tokio::spawn(async move {
        while let Some(req) = requests.next().await {
            let Some(reply) = req.reply else { continue };
            let answer = String::from_utf8_lossy(&req.payload).to_uppercase();
            if let Err(e) = service.publish(&reply, answer).await {
                eprintln!("service: cannot reply: {e}");
            }
        }
    });
    Ok(())
}

async fn run() -> Result<(), Error> {
    let addr = server_addr();
    let service = ConnectOptions::new()
        .name("example-service")
        .connect(&addr)
        .await?;
    serve(service.clone()).await?;

    let requester = ConnectOptions::new()
        .name("example-requester")
        .connect(&addr)
        .await?;
    for word in ["hello", "agentwire", "request/reply"] {
        let reply = requester
            .request("demo.upper", word, Duration::from_secs(2))
            .await?;
        println!("{word} -> {}", String::from_utf8_lossy(&reply.payload));
    }
    match requester
        .request("nobody.home", "anyone?", Duration::from_secs(2))
        .await
    {
        Err(Error::NoResponders { subject }) => println!("no responders on {subject}, as expected"),
        other => println!("nobody.home: {other:?}"),
    }
    requester.drain().await?;
    service.drain().await
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
