//! Bad input against a real broker: every case gets its documented ERR (and a close where the
//! stream can no longer be trusted), is counted, and leaves other clients unaffected.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use agentwire_client::{Client, Subscriber};
use agentwire_protocol::{self as proto, ErrorCode};
use bytes::{BufMut, Bytes, BytesMut};
use common::{config, start, Raw, WAIT};

/// A publisher and a subscriber that must keep working whatever the bad client does.
struct Bystanders {
    publisher: Client,
    subscriber: Client,
    sub: Subscriber,
    sent: u32,
}

impl Bystanders {
    async fn new(addr: SocketAddr) -> Bystanders {
        let publisher = agentwire_client::connect(&addr.to_string())
            .await
            .expect("connect");
        let subscriber = agentwire_client::connect(&addr.to_string())
            .await
            .expect("connect");
        let sub = subscriber.subscribe("healthy.>").await.expect("subscribe");
        subscriber.flush().await.expect("flush");
        Bystanders {
            publisher,
            subscriber,
            sub,
            sent: 0,
        }
    }

    /// Publishes a numbered message and checks it arrives, in order.
    async fn check(&mut self) {
        self.sent += 1;
        let n = self.sent;
        self.publisher
            .publish("healthy.check", Bytes::from(n.to_le_bytes().to_vec()))
            .await
            .expect("bystander publish");
        self.publisher.flush().await.expect("bystander flush");
        let m = tokio::time::timeout(WAIT, self.sub.next())
            .await
            .expect("bystander message within the wait")
            .expect("bystander subscription open");
        assert_eq!(
            &m.payload[..],
            &n.to_le_bytes(),
            "bystander got every message in order"
        );
        assert!(!self.subscriber.is_closed());
    }
}

fn code(c: ErrorCode) -> u16 {
    c.as_u16()
}

#[tokio::test]
async fn malformed_frames_are_fatal_and_isolated() {
    let server = start(config(2));
    let mut ok = Bystanders::new(server.local_addr()).await;
    ok.check().await;

    // A PUB whose subject length runs past the frame.
    let mut raw = Raw::connect(server.local_addr()).await;
    let mut b = BytesMut::new();
    b.put_u32_le(20);
    b.put_u8(proto::op::PUB);
    b.put_u8(0);
    b.put_u16_le(500);
    b.put_u16_le(0);
    b.put_u32_le(0);
    b.put_slice(b"abcdef");
    raw.send(&b).await;
    let (c, fatal, msg) = raw.expect_err().await;
    assert_eq!(c, code(ErrorCode::MalformedFrame), "{msg}");
    assert!(fatal);
    raw.expect_closed().await;
    ok.check().await;

    // A length shorter than the header.
    let mut raw = Raw::connect(server.local_addr()).await;
    raw.send(&[3, 0, 0, 0, proto::op::PING, 0]).await;
    let (c, fatal, _) = raw.expect_err().await;
    assert_eq!(c, code(ErrorCode::MalformedFrame));
    assert!(fatal);
    raw.expect_closed().await;

    // PING with a body.
    let mut raw = Raw::connect(server.local_addr()).await;
    raw.send(&[7, 0, 0, 0, proto::op::PING, 0, 9]).await;
    let (c, _, _) = raw.expect_err().await;
    assert_eq!(c, code(ErrorCode::MalformedFrame));
    raw.expect_closed().await;
    ok.check().await;
    assert!(server.stats().error_count(ErrorCode::MalformedFrame) >= 3);
}

#[tokio::test]
async fn oversized_frames_and_payloads() {
    let mut cfg = config(2);
    cfg.limits.max_payload = 1024;
    let server = start(cfg);
    let mut ok = Bystanders::new(server.local_addr()).await;

    // A frame over the limit is refused from its length alone (only 6 bytes sent).
    let mut raw = Raw::connect(server.local_addr()).await;
    let mut b = BytesMut::new();
    b.put_u32_le(64 << 20);
    b.put_u8(proto::op::PUB);
    b.put_u8(0);
    raw.send(&b).await;
    let (c, fatal, msg) = raw.expect_err().await;
    assert_eq!(c, code(ErrorCode::FrameTooLarge), "{msg}");
    assert!(fatal);
    raw.expect_closed().await;
    ok.check().await;

    // A payload over max_payload but within the frame limit: dropped, connection stays.
    let mut raw = Raw::connect(server.local_addr()).await;
    raw.publish("healthy.check", &[7u8; 2000]).await;
    let (c, fatal, msg) = raw.expect_err().await;
    assert_eq!(c, code(ErrorCode::PayloadTooLarge), "{msg}");
    assert!(!fatal);
    assert!(msg.contains("1024"), "names the limit: {msg}");
    assert!(raw.ping_pong().await.is_empty());
    ok.check().await; // and the bystander did not get the oversized message

    // The client library refuses it before sending.
    let c = agentwire_client::connect(&server.local_addr().to_string())
        .await
        .expect("connect");
    assert_eq!(c.server_info().max_payload, 1024);
    let e = c
        .publish("healthy.check", Bytes::from(vec![0u8; 2000]))
        .await
        .expect_err("payload too large");
    assert!(
        matches!(e, agentwire_client::Error::PayloadTooLarge { .. }),
        "{e:?}"
    );
}

#[tokio::test]
async fn invalid_subjects_unknown_ops_and_unexpected_ops() {
    let server = start(config(2));
    let mut ok = Bystanders::new(server.local_addr()).await;
    let mut raw = Raw::connect(server.local_addr()).await;

    for bad in ["a..b", "a.*", "a.>", "", "a b"] {
        raw.publish(bad, b"x").await;
        let (c, fatal, msg) = raw.expect_err().await;
        assert_eq!(c, code(ErrorCode::InvalidSubject), "publish {bad:?}: {msg}");
        assert!(!fatal);
    }
    for bad in ["a.>.b", "a*", ".a", "a.b."] {
        raw.sub(1, bad, "").await;
        let (c, fatal, msg) = raw.expect_err().await;
        assert_eq!(
            c,
            code(ErrorCode::InvalidSubject),
            "subscribe {bad:?}: {msg}"
        );
        assert!(!fatal);
    }
    raw.sub(1, "x", "bad queue").await;
    let (c, _, _) = raw.expect_err().await;
    assert_eq!(c, code(ErrorCode::InvalidQueue));

    // Unknown op and a reserved control-plane op: skipped, connection stays.
    for op in [0x20u8, 0x50, 0xff] {
        raw.send(&[9, 0, 0, 0, op, 0, 1, 2, 3]).await;
        let (c, fatal, msg) = raw.expect_err().await;
        assert_eq!(c, code(ErrorCode::UnknownOp), "{msg}");
        assert!(!fatal);
    }
    // Control-plane ops with bodies that do not validate, or out of turn: dropped, named.
    for op in [0x40u8, 0x42, 0x45] {
        raw.send(&[9, 0, 0, 0, op, 0, 1, 2, 3]).await;
        let (c, fatal, msg) = raw.expect_err().await;
        assert_eq!(c, code(ErrorCode::InvalidControl), "{op:#x}: {msg}");
        assert!(!fatal);
    }
    let mut b = BytesMut::new();
    proto::control::encode_control(&mut b, &proto::control::Heartbeat::default()).expect("encode");
    raw.send(&b).await;
    let (c, fatal, msg) = raw.expect_err().await;
    assert_eq!(c, code(ErrorCode::NotRegistered), "{msg}");
    assert!(!fatal);
    let mut b = BytesMut::new();
    proto::control::encode_control(
        &mut b,
        &proto::control::Registration {
            component: "bad component".into(),
            instance_id: "i".into(),
            ..Default::default()
        },
    )
    .expect("encode");
    raw.send(&b).await;
    let (c, _, msg) = raw.expect_err().await;
    assert_eq!(c, code(ErrorCode::InvalidControl));
    assert!(msg.contains("component"), "{msg}");
    // A server-only control op from a client.
    raw.send(&[6, 0, 0, 0, 0x44, 0]).await;
    let (c, _, _) = raw.expect_err().await;
    assert_eq!(c, code(ErrorCode::UnexpectedOp));
    // A server-only op from a client.
    let mut b = BytesMut::new();
    proto::encode_msg(&mut b, 1, 0, b"a", b"", b"", b"x").expect("encode");
    raw.send(&b).await;
    let (c, fatal, _) = raw.expect_err().await;
    assert_eq!(c, code(ErrorCode::UnexpectedOp));
    assert!(!fatal);

    // Still a working connection: subscribe and receive.
    raw.sub(7, "healthy.>", "").await;
    assert!(raw.ping_pong().await.is_empty());
    ok.check().await;
    let f = raw
        .next()
        .await
        .expect("the raw subscriber gets the message");
    assert_eq!(f.op(), proto::op::MSG);

    // Duplicate sid and unknown sid.
    raw.sub(7, "other", "").await;
    let (c, _, _) = raw.expect_err().await;
    assert_eq!(c, code(ErrorCode::DuplicateSid));
    let mut b = BytesMut::new();
    proto::encode_unsub(&mut b, 99, 0);
    raw.send(&b).await;
    let (c, _, _) = raw.expect_err().await;
    assert_eq!(c, code(ErrorCode::UnknownSid));
    ok.check().await;
}

#[tokio::test]
async fn handshake_rules() {
    let server = start(config(1));
    // First frame not HELLO.
    let (mut raw, info) = Raw::connect_no_hello(server.local_addr()).await;
    match info.parse() {
        proto::Frame::Info(i) => {
            assert_eq!(i.version, proto::PROTOCOL_VERSION);
            assert_eq!(i.shard_count, 1);
            assert_eq!(i.max_payload, proto::DEFAULT_MAX_PAYLOAD);
        }
        other => panic!("expected INFO, got {other:?}"),
    }
    raw.publish("a", b"x").await;
    let (c, fatal, _) = raw.expect_err().await;
    assert_eq!(c, code(ErrorCode::HandshakeRequired));
    assert!(fatal);
    raw.expect_closed().await;

    // Unsupported version.
    let (mut raw, _) = Raw::connect_no_hello(server.local_addr()).await;
    let mut b = BytesMut::new();
    proto::encode_hello(
        &mut b,
        &proto::HelloFrame {
            version: 99,
            features: 0,
            name: b"future",
            token: b"",
            public_key: b"",
            signature: b"",
        },
    )
    .expect("encode");
    raw.send(&b).await;
    let (c, fatal, msg) = raw.expect_err().await;
    assert_eq!(c, code(ErrorCode::UnsupportedVersion));
    assert!(fatal);
    assert!(msg.contains("99"), "{msg}");
    raw.expect_closed().await;
}

#[tokio::test]
async fn vanishing_mid_frame_is_counted_and_isolated() {
    let server = start(config(2));
    let mut ok = Bystanders::new(server.local_addr()).await;
    let mut raw = Raw::connect(server.local_addr()).await;
    raw.sub(1, "healthy.>", "").await;
    assert!(raw.ping_pong().await.is_empty());
    let mut b = BytesMut::new();
    proto::encode_pub(&mut b, b"healthy.check", b"", b"", &[1u8; 100]).expect("encode");
    raw.send(&b[..b.len() / 2]).await;
    drop(raw);
    common::eventually(
        || server.stats().truncated_frames == 1,
        "truncated frame counted",
    )
    .await;
    // Its subscription is gone with it: the bystander still gets everything.
    common::eventually(
        || server.global().routing.subscription_count() == 1,
        "subscription removed",
    )
    .await;
    ok.check().await;
    ok.check().await;
}

#[tokio::test]
async fn limits_on_subscriptions_and_connections() {
    let mut cfg = config(2);
    cfg.limits.max_subscriptions = 2;
    cfg.limits.max_connections = 3;
    let server = start(cfg);
    let mut raw = Raw::connect(server.local_addr()).await;
    raw.sub(1, "a", "").await;
    raw.sub(2, "b", "").await;
    raw.sub(3, "c", "").await;
    let (c, fatal, msg) = raw.expect_err().await;
    assert_eq!(c, code(ErrorCode::TooManySubscriptions), "{msg}");
    assert!(!fatal);
    let _b = Raw::connect(server.local_addr()).await;
    let _c = Raw::connect(server.local_addr()).await;
    // The fourth connection is refused with an ERR instead of INFO.
    let mut s = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .expect("tcp connect");
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read_to_end(&mut s, &mut buf))
        .await
        .expect("refusal within the wait")
        .expect("read");
    let f = proto::parse_frame(&buf).expect("one ERR frame");
    match f {
        proto::Frame::Err(e) => {
            assert_eq!(e.code, code(ErrorCode::TooManyConnections));
            assert!(e.fatal);
        }
        other => panic!("expected ERR, got {other:?}"),
    }
    // The client library reports it as a handshake failure with the server's message.
    drop(_c);
    let e = async {
        // Wait for the slot to be freed, then fill it and try once more.
        common::eventually(|| server.stats().connections == 2, "slot freed").await;
        let _c2 = Raw::connect(server.local_addr()).await;
        agentwire_client::connect(&server.local_addr().to_string()).await
    }
    .await
    .expect_err("refused");
    assert!(e.to_string().contains("max_connections"), "{e}");
}

// Multi-threaded: the healthy subscriber must keep reading while this test publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_cut_off_and_others_carry_on() {
    let mut cfg = config(2);
    cfg.limits.max_pending = 1 << 20;
    let server = start(cfg);
    // Connection order decides shards: publisher s0, slow s1, spare s0, healthy s1.
    let publisher = agentwire_client::connect(&server.local_addr().to_string())
        .await
        .expect("connect");
    let mut slow = Raw::connect(server.local_addr()).await;
    let _spare = Raw::connect(server.local_addr()).await;
    let healthy = agentwire_client::connect(&server.local_addr().to_string())
        .await
        .expect("connect");
    assert_eq!(healthy.server_info().shard_id, 1);
    slow.sub(1, "firehose", "").await;
    assert!(slow.ping_pong().await.is_empty());
    let mut hs = healthy.subscribe("firehose").await.expect("subscribe");
    healthy.flush().await.expect("flush");

    // The slow client never reads. 8 MiB of messages must not stall the others.
    const N: u32 = 8192;
    let payload = vec![0u8; 1024];
    let reader = tokio::spawn(async move {
        for i in 0..N {
            let m = tokio::time::timeout(WAIT, hs.next())
                .await
                .expect("healthy subscriber keeps receiving")
                .expect("open");
            assert_eq!(&m.payload[..4], &i.to_le_bytes());
        }
    });
    for i in 0..N {
        let mut p = payload.clone();
        p[..4].copy_from_slice(&i.to_le_bytes());
        publisher
            .publish("firehose", Bytes::from(p))
            .await
            .expect("publish");
    }
    tokio::time::timeout(Duration::from_secs(20), publisher.flush())
        .await
        .expect("publisher is not stalled by the slow consumer")
        .expect("flush");
    reader
        .await
        .expect("healthy subscriber got all messages in order");
    common::eventually(
        || server.stats().slow_consumers == 1,
        "slow consumer counted",
    )
    .await;
    // The slow client finds ERR slow_consumer after what was already written, then EOF.
    let (c, fatal, msg) = slow.expect_err().await;
    assert_eq!(c, code(ErrorCode::SlowConsumer), "{msg}");
    assert!(fatal);
    slow.expect_closed().await;
}

#[tokio::test]
async fn handshake_deadline_and_keepalive() {
    let mut cfg = common::config(2);
    cfg.limits.handshake_timeout_ms = 100;
    cfg.limits.ping_interval_ms = 50;
    cfg.limits.max_pings_out = 2;
    let h = common::start(cfg);

    // No HELLO: closed with handshake_timeout.
    let (mut silent, _) = Raw::connect_no_hello(h.local_addr()).await;
    let (c, fatal, msg) = silent.expect_err().await;
    assert_eq!(c, code(ErrorCode::HandshakeTimeout), "{msg}");
    assert!(fatal);
    silent.expect_closed().await;

    // Handshaken but never answering: PINGs, then stale_connection.
    let mut mute = Raw::connect(h.local_addr()).await;
    let mut pings = 0;
    let err = loop {
        let f = mute.next().await.expect("a frame before the close");
        match f.op() {
            proto::op::PING => pings += 1,
            proto::op::ERR => break f,
            op => panic!("unexpected op {op:#x}"),
        }
    };
    assert_eq!(pings, 2, "max_pings_out PINGs before giving up");
    let proto::Frame::Err(e) = err.parse() else {
        panic!("ERR expected");
    };
    assert_eq!(e.code, code(ErrorCode::StaleConnection));
    mute.expect_closed().await;

    // A client that answers stays connected well past that.
    let mut live = Raw::connect(h.local_addr()).await;
    let until = tokio::time::Instant::now() + std::time::Duration::from_millis(600);
    let mut answered = 0;
    while tokio::time::Instant::now() < until {
        if let Ok(Some(f)) =
            tokio::time::timeout(std::time::Duration::from_millis(100), live.next()).await
        {
            assert_eq!(f.op(), proto::op::PING, "only keep-alive PINGs arrive");
            let mut b = BytesMut::new();
            proto::encode_pong(&mut b);
            live.send(&b).await;
            answered += 1;
        }
    }
    assert!(answered >= 3, "pinged while idle ({answered})");
    assert!(live
        .ping_pong()
        .await
        .iter()
        .all(|f| f.op() == proto::op::PING));
    assert!(h.stats().error_count(ErrorCode::StaleConnection) >= 1);
    assert!(h.stats().error_count(ErrorCode::HandshakeTimeout) >= 1);
}

// The total cap: two consumers that never read, one that does, all on one shard. The broker's
// buffers pass max_pending_total long before either stuck one reaches its own max_pending; the
// fullest are closed, the reader gets everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_pending_total_closes_the_fullest_first() {
    let mut cfg = config(1);
    cfg.limits.max_pending_total = 4 << 20;
    let server = start(cfg);
    let publisher = agentwire_client::connect(&server.local_addr().to_string())
        .await
        .expect("connect");
    let mut stuck_a = Raw::connect(server.local_addr()).await;
    let mut stuck_b = Raw::connect(server.local_addr()).await;
    stuck_a.sub(1, "flood", "").await;
    stuck_b.sub(1, "flood", "").await;
    assert!(stuck_a.ping_pong().await.is_empty());
    assert!(stuck_b.ping_pong().await.is_empty());
    let reader_client = agentwire_client::connect(&server.local_addr().to_string())
        .await
        .expect("connect");
    let mut rs = reader_client.subscribe("flood").await.expect("subscribe");
    reader_client.flush().await.expect("flush");

    const N: u32 = 40_000; // 40 MiB: far past the cap, far below 2 × max_pending (64 MiB)
    let reader = tokio::spawn(async move {
        for i in 0..N {
            let m = tokio::time::timeout(WAIT, rs.next())
                .await
                .expect("the reading subscriber keeps receiving")
                .expect("open");
            assert_eq!(&m.payload[..4], &i.to_le_bytes());
        }
    });
    let payload = vec![0u8; 1024];
    for i in 0..N {
        let mut p = payload.clone();
        p[..4].copy_from_slice(&i.to_le_bytes());
        publisher
            .publish("flood", Bytes::from(p))
            .await
            .expect("publish");
    }
    tokio::time::timeout(Duration::from_secs(30), publisher.flush())
        .await
        .expect("publisher not stalled")
        .expect("flush");
    reader.await.expect("reader got everything in order");
    common::eventually(
        || server.stats().slow_consumers == 2,
        "both stuck consumers closed",
    )
    .await;
    for stuck in [&mut stuck_a, &mut stuck_b] {
        let (c, fatal, msg) = stuck.expect_err().await;
        assert_eq!(c, code(ErrorCode::SlowConsumer), "{msg}");
        assert!(fatal);
        assert!(msg.contains("max_pending_total"), "{msg}");
    }
}
