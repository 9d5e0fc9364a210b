//! The steady traffic: paced publishers, accounting subscribers, requesters and the queue
//! group of responders. Every loop ends at its deadline or on the stop signal, and bursts are
//! bounded.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use agentwire_client::{Bytes, Client, Error, Subscriber};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::track::{encode_payload, now_us, Ledger, PubLog, ReqOutcome, SubAcc, FAILED};

/// Most messages one publisher sends in one tick when it is behind.
const MAX_BURST: u64 = 2_000;
/// Pacing tick.
const TICK: Duration = Duration::from_millis(5);

/// The error's variant name, e.g. `ReconnectBufferFull`.
pub fn err_kind(e: &Error) -> String {
    let d = format!("{e:?}");
    d.split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or("Error")
        .to_owned()
}

/// Publishes `rate` messages/s of `size` bytes on `subject` until `until`.
pub async fn publisher(
    client: Client,
    log: Arc<PubLog>,
    subject: String,
    rate: f64,
    size: usize,
    until: Instant,
    ledger: Arc<Ledger>,
) {
    let start = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut buf = Vec::with_capacity(size);
    loop {
        tick.tick().await;
        let now = Instant::now();
        if now >= until {
            break;
        }
        let due = (now.duration_since(start).as_secs_f64() * rate) as u64;
        let mut burst = 0;
        while log.next_seq() < due && burst < MAX_BURST && Instant::now() < until {
            let seq = log.next_seq();
            let sent = now_us();
            encode_payload(&mut buf, log.id, seq, sent, size);
            match client.publish(&subject, Bytes::copy_from_slice(&buf)).await {
                Ok(()) => log.push(sent),
                Err(e) => {
                    log.push(FAILED);
                    ledger.client_error(format!("publish: {}", err_kind(&e)));
                }
            }
            burst += 1;
        }
    }
}

/// Accounts every message of `sub` until the stop signal (then hands the receipts to the
/// ledger). Messages already received when the signal comes are accounted first.
pub async fn subscriber(
    mut sub: Subscriber,
    mut acc: SubAcc,
    mut stop: watch::Receiver<bool>,
    ledger: Arc<Ledger>,
) {
    loop {
        tokio::select! {
            biased;
            m = sub.next() => match m {
                Some(m) => {
                    acc.record(&m.payload, now_us());
                    ledger.delivered.fetch_add(1, Ordering::Relaxed);
                }
                None => break,
            },
            _ = stop.changed() => break,
        }
    }
    ledger.add_sub(acc);
}

/// Sends `rate` requests/s (one in flight) on `subject` until `until`.
pub async fn requester(
    client: Client,
    subject: String,
    rate: f64,
    timeout: Duration,
    until: Instant,
    ledger: Arc<Ledger>,
) {
    let period = Duration::from_secs_f64(1.0 / rate.max(0.1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut n = 0u64;
    loop {
        tick.tick().await;
        if Instant::now() >= until {
            break;
        }
        n += 1;
        let payload = Bytes::from(format!("req-{n}"));
        let sent = now_us();
        let o = match client.request(&subject, payload.clone(), timeout).await {
            Ok(m) if m.payload == payload => ReqOutcome::Ok,
            Ok(_) => ReqOutcome::Other,
            Err(Error::Timeout { .. }) => ReqOutcome::Timeout,
            Err(Error::NoResponders { .. }) => ReqOutcome::NoResponders,
            Err(e) => {
                ledger.client_error(format!("request: {}", err_kind(&e)));
                ReqOutcome::Other
            }
        };
        ledger.request(sent, o);
    }
}

/// Answers every request with its payload until the stop signal.
pub async fn responder(
    client: Client,
    mut sub: Subscriber,
    mut stop: watch::Receiver<bool>,
    ledger: Arc<Ledger>,
) {
    loop {
        tokio::select! {
            m = sub.next() => match m {
                Some(m) => {
                    if let Err(e) = client.respond(&m, m.payload.clone()).await {
                        ledger.client_error(format!("respond: {}", err_kind(&e)));
                    }
                }
                None => break,
            },
            _ = stop.changed() => break,
        }
    }
}
