//! firehose: one publisher → one subscriber through a broker, every message numbered, checking
//! that all arrive in order; prints the publish and delivered rates.
//!
//! ```sh
//! cargo run --release -p agentwire-client --example firehose -- [--count N] [--size B] [--server ADDR]
//! ```
//! Exits non-zero if a message is lost, duplicated or out of order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentwire_client::ConnectOptions;
use bytes::Bytes;

struct Args {
    count: u64,
    size: usize,
    server: String,
    subject: String,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        count: 1_000_000,
        size: 128,
        server: std::env::var("AGENTWIRE_SERVER").unwrap_or_else(|_| "127.0.0.1:4800".into()),
        subject: "firehose".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--count" => a.count = v()?.parse().map_err(|e| format!("--count: {e}"))?,
            "--size" => a.size = v()?.parse().map_err(|e| format!("--size: {e}"))?,
            "--server" => a.server = v()?,
            "--subject" => a.subject = v()?,
            _ => return Err(format!("unknown argument {k}")),
        }
    }
    if a.size < 8 {
        return Err("--size must be at least 8 (the sequence number)".into());
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = parse()?;
    let publisher = ConnectOptions::new()
        .name("firehose-pub")
        .connect(&a.server)
        .await?;
    let subscriber = ConnectOptions::new()
        .name("firehose-sub")
        .connect(&a.server)
        .await?;
    println!(
        "publisher on shard {}, subscriber on shard {} (of {})",
        publisher.server_info().shard_id,
        subscriber.server_info().shard_id,
        subscriber.server_info().shard_count
    );
    let mut sub = subscriber.subscribe(&a.subject).await?;
    subscriber.flush().await?;
    let count = a.count;
    // Progress is checked by a watchdog below rather than with a timer per message.
    let received = Arc::new(AtomicU64::new(0));
    let progress = received.clone();
    let receiver = tokio::spawn(async move {
        let mut expected = 0u64;
        while expected < count {
            let Some(m) = sub.next().await else {
                return Err(format!("subscription closed after {expected} messages"));
            };
            let mut n = [0u8; 8];
            n.copy_from_slice(&m.payload[..8]);
            let got = u64::from_le_bytes(n);
            if got != expected {
                return Err(format!("expected message {expected}, got {got}"));
            }
            expected += 1;
            if expected % 4096 == 0 {
                progress.store(expected, Ordering::Relaxed);
            }
        }
        Ok(Instant::now())
    });
    let start = Instant::now();
    let mut payload = vec![0u8; a.size];
    for i in 0..a.count {
        payload[..8].copy_from_slice(&i.to_le_bytes());
        publisher
            .publish(&a.subject, Bytes::copy_from_slice(&payload))
            .await?;
    }
    publisher.flush().await?;
    let published = start.elapsed();
    let mut last = (0, Instant::now());
    while !receiver.is_finished() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = received.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(10) {
            receiver.abort();
            return Err(format!("no progress for 10 s after {now} messages").into());
        }
    }
    let done = receiver.await??;
    let delivered = done.duration_since(start);
    println!(
        "{} messages of {} B: published {:.0} msg/s, delivered {:.0} msg/s, all in order",
        a.count,
        a.size,
        a.count as f64 / published.as_secs_f64(),
        a.count as f64 / delivered.as_secs_f64()
    );
    Ok(())
}
