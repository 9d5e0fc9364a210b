//! Pub/sub, wildcards, queue groups, request/reply and unsubscribe against a real broker on
//! 127.0.0.1:0, through the client library.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use agentwire_client::{Client, Error, Headers, Subscriber};
use bytes::Bytes;
use common::{config, start, WAIT};

async fn connect(addr: std::net::SocketAddr) -> Client {
    agentwire_client::connect(&addr.to_string())
        .await
        .expect("client connects to the test broker")
}

async fn next(sub: &mut Subscriber) -> agentwire_client::Message {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a message within the wait")
        .expect("subscription still open")
}

/// Nothing more arrives on `sub` after `client` flushed (a round trip through the broker).
async fn assert_quiet(sub: &mut Subscriber) {
    if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await {
        panic!("unexpected message on {}", m.subject);
    }
}

#[tokio::test]
async fn pubsub_across_shards_in_order() {
    let server = start(config(2));
    let publisher = connect(server.local_addr()).await;
    let subscriber = connect(server.local_addr()).await;
    assert_ne!(
        publisher.server_info().shard_id,
        subscriber.server_info().shard_id,
        "consecutive connections land on different shards"
    );
    assert_eq!(publisher.server_info().shard_count, 2);
    let mut sub = subscriber.subscribe("orders.new").await.expect("subscribe");
    subscriber.flush().await.expect("flush");
    const N: u32 = 5_000;
    for i in 0..N {
        publisher
            .publish("orders.new", Bytes::from(i.to_le_bytes().to_vec()))
            .await
            .expect("publish");
    }
    publisher.flush().await.expect("flush");
    for i in 0..N {
        let m = next(&mut sub).await;
        assert_eq!(m.subject, "orders.new");
        assert_eq!(&m.payload[..], &i.to_le_bytes(), "message {i} in order");
    }
    // Counters are published once per batch, just after the batch is written: wait for them.
    common::eventually(
        || server.stats().cross_shard >= u64::from(N),
        "cross-shard counter",
    )
    .await;
}

#[tokio::test]
async fn pubsub_same_shard_and_headers() {
    let server = start(config(1));
    let a = connect(server.local_addr()).await;
    let mut sub = a.subscribe("greet").await.expect("subscribe");
    a.flush().await.expect("flush");
    let mut h = Headers::new();
    h.insert("Trace-Id", "t-1").expect("valid header");
    a.publish_with_headers("greet", &h, Bytes::from_static(b"hi"))
        .await
        .expect("publish");
    let m = next(&mut sub).await;
    assert_eq!(&m.payload[..], b"hi");
    let got = m.headers.expect("headers arrive");
    assert_eq!(got.get("Trace-Id"), Some(&b"t-1"[..]));
}

#[tokio::test]
async fn wildcards() {
    let server = start(config(2));
    let p = connect(server.local_addr()).await;
    let s = connect(server.local_addr()).await;
    let mut star = s.subscribe("a.*").await.expect("sub");
    let mut full = s.subscribe("a.>").await.expect("sub");
    let mut lit = s.subscribe("a.b.c").await.expect("sub");
    let mut mid = s.subscribe("*.b.*").await.expect("sub");
    s.flush().await.expect("flush");
    for subj in ["a.b", "a.b.c", "a.x.y.z", "b.c", "a", "x.b.y"] {
        p.publish(subj, Bytes::from(subj)).await.expect("publish");
    }
    p.flush().await.expect("flush");
    async fn take(sub: &mut Subscriber, n: usize) -> Vec<String> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(next(sub).await.subject.to_string());
        }
        v
    }
    assert_eq!(take(&mut star, 1).await, ["a.b"]);
    assert_eq!(take(&mut full, 3).await, ["a.b", "a.b.c", "a.x.y.z"]);
    assert_eq!(take(&mut lit, 1).await, ["a.b.c"]);
    assert_eq!(take(&mut mid, 2).await, ["a.b.c", "x.b.y"]);
    s.flush().await.expect("flush");
    assert_quiet(&mut star).await;
    assert_quiet(&mut full).await;
    assert_quiet(&mut lit).await;
    assert_quiet(&mut mid).await;
}

#[tokio::test]
async fn queue_group_delivers_each_message_to_exactly_one_member() {
    let server = start(config(2));
    let publisher = connect(server.local_addr()).await;
    let mut members = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..4 {
        let c = connect(server.local_addr()).await;
        members.push(c.queue_subscribe("jobs.*", "workers").await.expect("qsub"));
        c.flush().await.expect("flush");
        clients.push(c);
    }
    let watcher = connect(server.local_addr()).await;
    let mut all = watcher.subscribe("jobs.>").await.expect("sub");
    watcher.flush().await.expect("flush");
    const N: u32 = 4_000;
    for i in 0..N {
        publisher
            .publish("jobs.run", Bytes::from(i.to_le_bytes().to_vec()))
            .await
            .expect("publish");
    }
    publisher.flush().await.expect("flush");
    for i in 0..N {
        assert_eq!(&next(&mut all).await.payload[..], &i.to_le_bytes());
    }
    // Every message reaches exactly one member: collect until N distinct, then check quiet.
    let mut seen = HashSet::new();
    let mut per_member = [0u32; 4];
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.len() < N as usize {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {N} reached the group",
            seen.len()
        );
        for (k, m) in members.iter_mut().enumerate() {
            while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(5), m.next()).await
            {
                let id = u32::from_le_bytes(msg.payload[..4].try_into().expect("4-byte id"));
                assert!(seen.insert(id), "message {id} delivered twice");
                per_member[k] += 1;
            }
        }
    }
    for m in members.iter_mut() {
        assert_quiet(m).await;
    }
    for (k, n) in per_member.iter().enumerate() {
        assert!(*n > 0, "member {k} got nothing: {per_member:?}");
    }
}

#[tokio::test]
async fn request_reply_timeout_and_no_responders() {
    let server = start(config(2));
    let requester = connect(server.local_addr()).await;
    let service = connect(server.local_addr()).await;
    assert_ne!(
        requester.server_info().shard_id,
        service.server_info().shard_id
    );
    let mut svc = service.subscribe("math.double").await.expect("sub");
    service.flush().await.expect("flush");
    let responder = service.clone();
    let task = tokio::spawn(async move {
        while let Some(m) = svc.next().await {
            let n = m.payload.len();
            if n % 2 == 0 {
                responder
                    .respond(&m, Bytes::from(vec![b'x'; n * 2]))
                    .await
                    .expect("respond");
            } else {
                let reply = m.reply.expect("requests carry a reply subject");
                responder
                    .publish(reply.as_str(), Bytes::from(vec![b'x'; n * 2]))
                    .await
                    .expect("reply");
            }
        }
    });
    for i in 1..=20usize {
        let r = requester
            .request("math.double", Bytes::from(vec![b'y'; i]), WAIT)
            .await
            .expect("a reply");
        assert_eq!(r.payload.len(), i * 2);
    }
    match requester
        .request("nobody.home", Bytes::from_static(b"?"), WAIT)
        .await
    {
        Err(Error::NoResponders { .. }) => {}
        other => panic!("expected no responders, got {other:?}"),
    }
    // respond() needs a reply subject.
    let mut plain = service.subscribe("plain").await.expect("sub");
    service.flush().await.expect("flush");
    requester
        .publish("plain", Bytes::from_static(b"x"))
        .await
        .expect("pub");
    let m = next(&mut plain).await;
    match service.respond(&m, Bytes::new()).await {
        Err(Error::NoReplySubject { subject }) => assert_eq!(subject, "plain"),
        other => panic!("expected NoReplySubject, got {other:?}"),
    }
    let _silent = service.subscribe("silent").await.expect("sub");
    service.flush().await.expect("flush");
    match requester
        .request(
            "silent",
            Bytes::from_static(b"?"),
            Duration::from_millis(200),
        )
        .await
    {
        Err(Error::Timeout { .. }) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    task.abort();
}

#[tokio::test]
async fn unsubscribe_and_auto_unsubscribe() {
    let server = start(config(2));
    let p = connect(server.local_addr()).await;
    let s = connect(server.local_addr()).await;
    let mut once = s.subscribe("t").await.expect("sub");
    let mut control = s.subscribe("t").await.expect("sub");
    s.flush().await.expect("flush");
    p.publish("t", Bytes::from_static(b"1")).await.expect("pub");
    p.flush().await.expect("flush");
    assert_eq!(&next(&mut once).await.payload[..], b"1");
    assert_eq!(&next(&mut control).await.payload[..], b"1");
    once.unsubscribe().await.expect("unsubscribe");
    s.flush().await.expect("flush");
    p.publish("t", Bytes::from_static(b"2")).await.expect("pub");
    p.flush().await.expect("flush");
    assert_eq!(&next(&mut control).await.payload[..], b"2");

    let mut three = s.subscribe("u").await.expect("sub");
    three.unsubscribe_after(3).await.expect("auto-unsubscribe");
    s.flush().await.expect("flush");
    for i in 0..10u8 {
        p.publish("u", Bytes::from(vec![i])).await.expect("pub");
    }
    p.flush().await.expect("flush");
    for i in 0..3u8 {
        assert_eq!(&next(&mut three).await.payload[..], &[i]);
    }
    let end = tokio::time::timeout(WAIT, three.next())
        .await
        .expect("stream ends");
    assert!(end.is_none(), "the stream ends after 3 messages");
    s.flush().await.expect("flush");
    // The broker removed the subscription: only `control` remains on this connection's table.
    common::eventually(
        || server.global().routing.subscription_count() == 1,
        "auto-unsubscribe removal",
    )
    .await;
}

/// The acceptance case: with 2 shards, 1 publisher → 1 subscriber on the other shard,
/// 1,000,000 messages of 128 bytes all arrive, in order, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_million_128_byte_messages_across_shards() {
    let server = start(config(2));
    let publisher = connect(server.local_addr()).await;
    let subscriber = connect(server.local_addr()).await;
    assert_ne!(
        publisher.server_info().shard_id,
        subscriber.server_info().shard_id
    );
    // No client-side pending limit: a starved reader task must not turn into client drops.
    let mut sub = subscriber
        .subscribe_with(
            "bulk",
            agentwire_client::SubscribeOptions::new().pending_limits(usize::MAX, usize::MAX),
        )
        .await
        .expect("subscribe");
    subscriber.flush().await.expect("flush");
    const N: u64 = 1_000_000;
    let reader = tokio::spawn(async move {
        for i in 0..N {
            let m = tokio::time::timeout(WAIT, sub.next())
                .await
                .unwrap_or_else(|_| panic!("message {i} within the wait"))
                .unwrap_or_else(|| panic!("subscription open at message {i}"));
            assert_eq!(m.payload.len(), 128);
            assert_eq!(&m.payload[..8], &i.to_le_bytes(), "message {i} in order");
        }
    });
    let mut payload = [0u8; 128];
    for i in 0..N {
        payload[..8].copy_from_slice(&i.to_le_bytes());
        publisher
            .publish("bulk", Bytes::copy_from_slice(&payload))
            .await
            .expect("publish");
    }
    publisher.flush().await.expect("flush");
    reader.await.expect("all 1,000,000 delivered in order");
    // Counters are published once per batch, just after the batch is written: wait for them.
    common::eventually(
        || server.stats().msgs_in == N && server.stats().msgs_out == N,
        "message counters",
    )
    .await;
    let stats = server.stats();
    assert_eq!(stats.slow_consumers, 0);
    assert_eq!(stats.dropped, 0);
}

/// With the smallest cross-shard queue the publisher's reader must wait for room (never drop):
/// everything still arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cross_shard_queue_applies_backpressure_without_loss() {
    let mut cfg = config(2);
    cfg.cross_shard_queue = 16;
    let server = start(cfg);
    let publisher = connect(server.local_addr()).await;
    let subscriber = connect(server.local_addr()).await;
    // What is tested is the broker's backpressure: the client keeps everything it reads (no
    // client-side pending limit, which would drop when this reader task is starved).
    let mut sub = subscriber
        .subscribe_with(
            "q",
            agentwire_client::SubscribeOptions::new().pending_limits(usize::MAX, usize::MAX),
        )
        .await
        .expect("subscribe");
    subscriber.flush().await.expect("flush");
    const N: u64 = 200_000;
    let reader = tokio::spawn(async move {
        for i in 0..N {
            let m = tokio::time::timeout(WAIT, sub.next())
                .await
                .expect("message within the wait")
                .expect("open");
            assert_eq!(&m.payload[..8], &i.to_le_bytes(), "message {i} in order");
            if i % 50_000 == 0 {
                // A brief pause lets the queue fill up behind this subscriber.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    for i in 0..N {
        publisher
            .publish("q", Bytes::copy_from_slice(&i.to_le_bytes()))
            .await
            .expect("publish");
    }
    publisher.flush().await.expect("flush");
    reader.await.expect("all delivered in order");
    assert_eq!(server.stats().dropped, 0);
}
