//! Client resilience end to end: per-subscription pending limits with slow-consumer events
//! against a real broker started in-process, and the client keepalive against a fake server
//! that completes the handshake and then goes silent without closing (a half-open connection),
//! one that answers PINGs, and a real broker to fail over to.
//!
//! Loopback only. Every wait is bounded by `WAIT` (a timeout, never a timing assertion).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentwire_admin::Broker;
use agentwire_broker::Config as BrokerConfig;
use agentwire_client::{
    Client, ConnectOptions, ConnectionEvent, ConnectionEvents, Error, SubscribeOptions, Subscriber,
};
use agentwire_protocol::{decode_frame, encode_info, encode_pong, features, Frame, InfoFrame};
use bytes::{Buf, BytesMut};
use common::{FakeServer, Rec, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Messages published at the slow subscriptions: well past every limit below.
const MESSAGES: u64 = 120_000;
const SUBJECT: &str = "load.a";
const PAYLOAD: &[u8] = b"0123456789abcdef";
/// What one message counts toward a byte limit: subject + payload.
const MSG_SIZE: u64 = (SUBJECT.len() + PAYLOAD.len()) as u64;

fn start_broker() -> Broker {
    agentwire_admin::start(BrokerConfig {
        listen: "127.0.0.1:0".parse().expect("literal address"),
        shards: 1,
        shutdown_grace_ms: 1000,
        ..BrokerConfig::default()
    })
    .expect("broker starts on 127.0.0.1:0")
}

/// Every event available now (a short pause with none ends the collection).
async fn drain_events(events: &mut ConnectionEvents) -> Vec<ConnectionEvent> {
    let mut got = Vec::new();
    for _ in 0..10_000 {
        match tokio::time::timeout(Duration::from_millis(200), events.next()).await {
            Ok(Some(ev)) => got.push(ev),
            Ok(None) | Err(_) => break,
        }
    }
    got
}

/// The `dropped` of each SlowConsumer event for subscription `sid`.
fn slow_events(events: &[ConnectionEvent], sid: u32) -> Vec<u64> {
    events
        .iter()
        .filter_map(|ev| match ev {
            ConnectionEvent::SlowConsumer {
                sid: s, dropped, ..
            } if *s == sid => Some(*dropped),
            _ => None,
        })
        .collect()
}

/// The next event that is not `Connected`, bounded.
async fn next_event(events: &mut ConnectionEvents) -> ConnectionEvent {
    loop {
        let ev = tokio::time::timeout(WAIT, events.next())
            .await
            .expect("an event within the wait")
            .expect("the event stream is open");
        if !matches!(ev, ConnectionEvent::Connected { .. }) {
            return ev;
        }
    }
}

async fn publish_all(publisher: &Client, n: u64) {
    for _ in 0..n {
        publisher.publish(SUBJECT, PAYLOAD).await.expect("publish");
    }
    publisher.flush().await.expect("publisher flush");
}

/// Reads `n` messages from `sub`, bounded by the wait.
async fn receive(sub: &mut Subscriber, n: u64) {
    let got = tokio::time::timeout(WAIT * 6, async {
        let mut got = 0u64;
        while got < n {
            match sub.next().await {
                Some(_) => got += 1,
                None => break,
            }
        }
        got
    })
    .await
    .expect("the messages arrive within the wait");
    assert_eq!(got, n, "subscription {} received everything", sub.sid());
}

// ---------------------------------------------------------------------------------------------
// Pending limits
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_never_reads_stays_at_its_limit_and_others_get_everything() {
    let broker = start_broker();
    let addr = broker.local_addr().to_string();
    // Client defaults: 5,000 messages per subscription.
    let client = ConnectOptions::new()
        .name("slow-consumer-test")
        .subscription_pending_limits(5_000, 64 << 20)
        .connect(&addr)
        .await
        .expect("connect");
    let publisher = agentwire_client::connect(&addr)
        .await
        .expect("connect the publisher");
    let mut events = client.events();

    // Never read until the end: one stopped by the message limit (client default), one by a
    // byte limit of its own.
    let mut by_count = client.subscribe(SUBJECT).await.expect("subscribe");
    let by_bytes = client
        .subscribe_with(
            "load.*",
            SubscribeOptions::new().pending_limits(1_000_000, (100 * MSG_SIZE) as usize),
        )
        .await
        .expect("subscribe");
    // Read by a task, with room for everything: must not lose a message.
    let mut reader = client
        .subscribe_with(
            SUBJECT,
            SubscribeOptions::new().pending_limits(1_000_000, 1 << 30),
        )
        .await
        .expect("subscribe");
    assert_eq!(by_count.pending_limits(), (5_000, 64 << 20));
    assert_eq!(by_bytes.pending_limits(), (1_000_000, 100 * MSG_SIZE));
    client.flush().await.expect("subscriptions active");

    let consumer = tokio::spawn(async move {
        receive(&mut reader, MESSAGES).await;
        reader
    });
    publish_all(&publisher, MESSAGES).await;
    let reader = tokio::time::timeout(WAIT * 7, consumer)
        .await
        .expect("the reading subscription gets everything in time")
        .expect("consumer task");
    // Everything the broker sent before this PONG is dispatched (or dropped) now.
    client.flush().await.expect("flush");

    assert_eq!(reader.dropped(), 0);
    assert_eq!(reader.pending(), (0, 0));
    assert_eq!(
        by_count.pending(),
        (5_000, 5_000 * MSG_SIZE),
        "held at the limit"
    );
    assert_eq!(by_count.dropped(), MESSAGES - 5_000);
    assert_eq!(
        by_bytes.pending(),
        (100, 100 * MSG_SIZE),
        "held at the byte limit"
    );
    assert_eq!(by_bytes.dropped(), MESSAGES - 100);
    assert_eq!(client.statistics().in_msgs, 3 * MESSAGES);

    let seen = drain_events(&mut events).await;
    assert_eq!(
        slow_events(&seen, by_count.sid()),
        [1],
        "one SlowConsumer event, at the first drop: {seen:?}"
    );
    assert_eq!(slow_events(&seen, by_bytes.sid()), [1], "{seen:?}");
    assert!(slow_events(&seen, reader.sid()).is_empty(), "{seen:?}");
    assert!(
        seen.iter().any(|ev| matches!(ev,
            ConnectionEvent::SlowConsumer { subject, .. } if subject == "load.*")),
        "the event names the subscription's subject: {seen:?}"
    );

    // The slow one catches up, recovers, and falls behind again: reported once more.
    receive(&mut by_count, 5_000).await;
    assert_eq!(by_count.pending(), (0, 0));
    publish_all(&publisher, 6_000).await;
    client.flush().await.expect("flush");
    assert_eq!(by_count.pending().0, 5_000);
    assert_eq!(by_count.dropped(), MESSAGES - 5_000 + 1_000);
    let seen = drain_events(&mut events).await;
    assert_eq!(
        slow_events(&seen, by_count.sid()),
        [MESSAGES - 5_000 + 1],
        "reported again after recovering: {seen:?}"
    );
    assert!(
        slow_events(&seen, by_bytes.sid()).is_empty(),
        "never recovered, not reported again: {seen:?}"
    );
    assert_eq!(by_bytes.pending(), (100, 100 * MSG_SIZE));
    client.close().await.expect("close");
    publisher.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_reading_within_its_limit_loses_nothing() {
    let broker = start_broker();
    let addr = broker.local_addr().to_string();
    let client = agentwire_client::connect(&addr).await.expect("connect");
    let publisher = agentwire_client::connect(&addr).await.expect("connect");
    let mut events = client.events();
    let mut sub = client
        .subscribe_with(
            SUBJECT,
            SubscribeOptions::new().pending_limits(500, 1 << 20),
        )
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    // Publish in rounds no larger than the limit, reading each round before the next.
    for _ in 0..10 {
        publish_all(&publisher, 400).await;
        receive(&mut sub, 400).await;
    }
    assert_eq!(sub.dropped(), 0);
    assert_eq!(sub.pending(), (0, 0));
    let seen = drain_events(&mut events).await;
    assert!(slow_events(&seen, sub.sid()).is_empty(), "{seen:?}");
    client.close().await.expect("close");
    publisher.close().await.expect("close");
}

// ---------------------------------------------------------------------------------------------
// Keepalive
// ---------------------------------------------------------------------------------------------

/// A server that does the handshake (INFO, then PONG for the client's HELLO + PING) and then
/// goes silent: it keeps the connection open and reads, counting the PINGs after the
/// handshake, but never writes again.
struct SilentServer {
    addr: String,
    pings: Arc<AtomicUsize>,
    accept: tokio::task::JoinHandle<()>,
}

impl SilentServer {
    async fn start() -> SilentServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound address").to_string();
        let pings = Arc::new(AtomicUsize::new(0));
        let counter = pings.clone();
        let accept = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(silent_conn(sock, counter.clone()));
            }
        });
        SilentServer {
            addr,
            pings,
            accept,
        }
    }

    /// Waits (bounded) until `n` PINGs after the handshake were read.
    async fn wait_pings(&self, n: usize) {
        let waited = tokio::time::timeout(WAIT, async {
            while self.pings.load(Ordering::Relaxed) < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "the silent server never saw {n} PINGs");
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn silent_conn(mut sock: tokio::net::TcpStream, pings: Arc<AtomicUsize>) {
    let mut out = BytesMut::new();
    encode_info(
        &mut out,
        &InfoFrame {
            version: 1,
            features: features::HEADERS | features::NO_RESPONDERS,
            max_payload: 1 << 20,
            shard_count: 1,
            shard_id: 0,
            client_id: 1,
            server_id: b"silent-server",
            nonce: b"",
        },
    )
    .expect("INFO encodes");
    if sock.write_all(&out).await.is_err() {
        return;
    }
    let mut buf = BytesMut::with_capacity(4096);
    let mut handshake_done = false;
    loop {
        match sock.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        loop {
            let (is_ping, len) = match decode_frame(&buf, 1 << 20) {
                Ok(Some((frame, len))) => (matches!(frame, Frame::Ping), len),
                Ok(None) => break,
                Err(_) => return,
            };
            buf.advance(len);
            if !is_ping {
                continue;
            }
            if handshake_done {
                pings.fetch_add(1, Ordering::Relaxed);
            } else {
                // The handshake's PING: answer it, then never write again.
                handshake_done = true;
                out.clear();
                encode_pong(&mut out);
                if sock.write_all(&out).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[tokio::test]
async fn a_silent_server_is_found_stale_and_the_client_closes_with_a_typed_error() {
    let silent = SilentServer::start().await;
    let interval = Duration::from_millis(200);
    let client = ConnectOptions::new()
        .reconnect(false)
        .ping_interval(interval)
        .connect(&silent.addr)
        .await
        .expect("the handshake succeeds");
    let mut events = client.events();
    let started = tokio::time::Instant::now();
    match next_event(&mut events).await {
        ConnectionEvent::Closed { reason } => {
            assert!(reason.contains("stale connection"), "{reason}");
        }
        other => panic!("expected Closed, got {other:?}"),
    }
    // Not before two PINGs went unanswered (a slow machine only makes it later).
    assert!(started.elapsed() >= 2 * interval, "{:?}", started.elapsed());
    match client.close_reason() {
        Some(Error::StaleConnection { pings, interval: i }) => {
            assert_eq!((pings, i), (2, interval));
        }
        other => panic!("expected StaleConnection, got {other:?}"),
    }
    assert!(client.is_closed());
    assert!(matches!(client.publish("a", "b").await, Err(Error::Closed)));
    silent.wait_pings(2).await;
    assert_eq!(
        silent.pings.load(Ordering::Relaxed),
        2,
        "max_pings_out PINGs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_connection_reconnects_to_the_next_server() {
    let silent = SilentServer::start().await;
    let broker = start_broker();
    let broker_addr = broker.local_addr().to_string();
    let client = ConnectOptions::new()
        .ping_interval(Duration::from_millis(200))
        .reconnect_delay(Duration::from_millis(10), Duration::from_millis(40))
        .servers([silent.addr.clone(), broker_addr.clone()])
        .connect_servers()
        .await
        .expect("connects to the first server");
    assert_eq!(client.server_info().server_id, "silent-server");
    let mut events = client.events();
    let mut sub = client.subscribe("ka.x").await.expect("subscribe");

    match next_event(&mut events).await {
        ConnectionEvent::Disconnected { reason } => {
            assert!(reason.contains("stale connection"), "{reason}");
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    match next_event(&mut events).await {
        ConnectionEvent::Reconnected { addr, .. } => assert_eq!(addr, broker_addr),
        other => panic!("expected Reconnected, got {other:?}"),
    }
    assert!(client.is_connected());
    // The subscription was re-sent to the broker.
    client.flush().await.expect("flush on the broker");
    let publisher = agentwire_client::connect(&broker_addr)
        .await
        .expect("connect the publisher");
    publisher.publish("ka.x", "alive").await.expect("publish");
    publisher.flush().await.expect("flush");
    let msg = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a message within the wait")
        .expect("the stream is open");
    assert_eq!(msg.payload, "alive");
    client.close().await.expect("close");
    publisher.close().await.expect("close");
}

#[tokio::test]
async fn a_server_that_answers_pings_is_kept() {
    let mut server = FakeServer::start(common::Config::default()).await;
    let client = ConnectOptions::new()
        .ping_interval(Duration::from_millis(250))
        .connect(&server.addr)
        .await
        .expect("connect");
    let conn = server.next_conn().await;
    let mut events = client.events();
    // The handshake's PING plus keepalive PINGs, each answered.
    conn.log
        .wait_for("three keepalive PINGs", |l| {
            l.frames.iter().filter(|r| **r == Rec::Ping).count() >= 4
        })
        .await;
    assert!(client.is_connected());
    let seen = drain_events(&mut events).await;
    assert!(
        seen.iter()
            .all(|ev| matches!(ev, ConnectionEvent::Connected { .. })),
        "no drop: {seen:?}"
    );
    // Flushes still pair with their PONGs after the keepalive's.
    client.flush().await.expect("flush");
    client.close().await.expect("close");
}

#[tokio::test]
async fn keepalive_can_be_turned_off() {
    let silent = SilentServer::start().await;
    let client = ConnectOptions::new()
        .reconnect(false)
        .ping_interval(Duration::ZERO)
        .connect(&silent.addr)
        .await
        .expect("connect");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(client.is_connected());
    assert_eq!(silent.pings.load(Ordering::Relaxed), 0);
    client.close().await.expect("close");
}

/// A broker that shuts down (ERR server_shutdown) or enters lame duck with no other server in
/// the list is restarted on the same port: the client reconnects there, its subscription
/// resumes, and nothing closes it for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_and_lame_duck_are_ridden_through_on_the_same_address() {
    let first = start_broker();
    let addr = first.local_addr();
    let client = ConnectOptions::new()
        .reconnect_delay(Duration::from_millis(20), Duration::from_millis(100))
        .connect(&addr.to_string())
        .await
        .expect("connect");
    let mut sub = client.subscribe("up.>").await.expect("subscribe");
    client.flush().await.expect("flush");
    let restart = move |old: Broker, lame: bool| {
        if lame {
            old.lame_duck();
            assert!(
                old.wait_drained(Duration::from_secs(15)),
                "lame duck drains"
            );
        }
        old.shutdown();
        old.join();
        let listener = std::net::TcpListener::bind(addr).expect("the same port again");
        agentwire_admin::start_with_listener(
            BrokerConfig {
                listen: addr,
                shards: 2,
                ..BrokerConfig::default()
            },
            listener,
        )
        .expect("restart")
    };
    let mut broker = first;
    for (round, lame) in [(0, false), (1, true)] {
        broker = tokio::task::spawn_blocking(move || restart(broker, lame))
            .await
            .expect("restart task");
        let publisher = agentwire_client::connect(&addr.to_string())
            .await
            .expect("publisher");
        let subject = format!("up.{round}");
        let got = tokio::time::timeout(WAIT, async {
            loop {
                publisher.publish(&subject, "x").await.expect("publish");
                publisher.flush().await.expect("flush");
                if let Ok(Some(m)) =
                    tokio::time::timeout(Duration::from_millis(100), sub.next()).await
                {
                    break m;
                }
            }
        })
        .await
        .expect("the subscription resumes on the restarted broker");
        assert_eq!(&*got.subject, subject);
        assert!(
            !client.is_closed(),
            "round {round}: the client is not closed"
        );
        assert!(client.fatal_error().is_none());
    }
    broker.shutdown();
    broker.join();
}
