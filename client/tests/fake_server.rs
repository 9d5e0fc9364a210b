//! Integration tests of agentwire-client against a tiny fake server (`common/mod.rs`).
//!
//! The fake server speaks the protocol with `agentwire-protocol` on a real loopback socket: it
//! sends INFO, answers PING with PONG (or holds the PONGs when told to), records every frame it
//! reads, routes each PUB to the matching SUBs of the same connection (so request/reply and
//! no-responders work on one client), and on command delivers MSGs, ERRs, PINGs or closes.
//! Waits are bounded; timing-dependent tests run on a paused clock.

mod common;

use common::*;

use std::time::Duration;

use agentwire_client::{ConnectOptions, Error, HandshakeError, Headers, OutboundMessage};
use agentwire_protocol::{features, ErrorCode};
use bytes::Bytes;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;

// ---------------------------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn handshake_exchanges_info_and_hello() {
    let mut server = FakeServer::start(Config::default()).await;
    let (client, conn) = connect(&mut server).await;
    let info = client.server_info();
    assert_eq!(info.server_id, "fake-server");
    assert_eq!(info.client_id, 7);
    assert_eq!((info.shard_id, info.shard_count), (1, 2));
    assert_eq!(info.max_payload, 1 << 20);
    assert_eq!(info.version, 1);
    assert_eq!(
        conn.log.frames()[..2],
        [
            Rec::Hello {
                version: agentwire_protocol::PROTOCOL_VERSION,
                features: features::HEADERS | features::NO_RESPONDERS,
                name: "test-client".into(),
            },
            Rec::Ping,
        ]
    );
    assert!(!client.is_closed());
}

#[tokio::test]
async fn handshake_err_is_a_typed_error() {
    let mut server = FakeServer::start(Config {
        reject_hello: Some((ErrorCode::AuthFailed, true, "bad token")),
        ..Config::default()
    })
    .await;
    let err = ConnectOptions::new()
        .connect(&server.addr)
        .await
        .expect_err("the server rejects the HELLO");
    let _ = server.next_conn().await;
    match &err {
        Error::Handshake {
            source: HandshakeError::Rejected(e),
            ..
        } => {
            assert_eq!(e.code, ErrorCode::AuthFailed.as_u16());
            assert_eq!(e.name, "auth_failed");
            assert_eq!(e.message, "bad token");
            assert!(e.fatal);
        }
        other => panic!("expected a rejected handshake, got {other:?}"),
    }
    assert!(err.to_string().contains("auth_failed"), "{err}");
}

#[tokio::test]
async fn handshake_with_a_non_agentwire_server_fails_cleanly() {
    let mut server = FakeServer::start(Config {
        first_bytes: Some(b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec()),
        ..Config::default()
    })
    .await;
    let err = ConnectOptions::new()
        .connect_timeout(Duration::from_secs(5))
        .connect(&server.addr)
        .await
        .expect_err("not an agentwire server");
    let _ = server.next_conn().await;
    assert!(matches!(err, Error::Handshake { .. }), "{err:?}");
}

#[tokio::test]
async fn connection_refused_says_what_to_do() {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("bound address").to_string();
    drop(listener);
    let err = agentwire_client::connect(&addr)
        .await
        .expect_err("nothing listens there");
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("cannot connect to {addr}: connection refused — is `agentwire serve` running?")
    );
}

// ---------------------------------------------------------------------------------------------
// Publishing
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn publishes_coalesce_and_flush_orders_after_them() {
    let mut server = FakeServer::start(Config::default()).await;
    let (client, conn) = connect(&mut server).await;
    for i in 0..1000u32 {
        client
            .publish("bench.x", i.to_le_bytes().to_vec())
            .await
            .expect("publish");
    }
    client.flush().await.expect("flush");
    // Everything published before the flush was read before its PING.
    let frames = conn.log.frames();
    let pubs: Vec<u32> = frames[2..1002]
        .iter()
        .map(|r| match r {
            Rec::Pub { payload, .. } => {
                u32::from_le_bytes(payload[..4].try_into().expect("4-byte payload"))
            }
            other => panic!("expected a PUB, got {other:?}"),
        })
        .collect();
    assert_eq!(pubs, (0..1000).collect::<Vec<_>>());
    assert_eq!(frames[1002], Rec::Ping);
    let stats = client.statistics();
    assert_eq!(stats.out_msgs, 1000);
    // On this single-threaded runtime the writer runs only when the publisher yields: the 1000
    // PUBs and the PING go out in a single write.
    assert_eq!(stats.writes, 1, "{stats:?}");
}

#[tokio::test]
async fn publish_variants_encode_reply_and_headers() {
    let mut server = FakeServer::start(Config::default()).await;
    let (client, conn) = connect(&mut server).await;
    let mut h = Headers::new();
    h.insert("Trace-Id", "t1").expect("valid header");
    client
        .publish_with_reply("a.b", "r.1", "p1")
        .await
        .expect("publish");
    client
        .publish_with_headers("a.c", &h, Bytes::from_static(b"p2"))
        .await
        .expect("publish");
    client
        .publish_message(OutboundMessage::new("a.d", b"p3").reply("r.2").headers(&h))
        .await
        .expect("publish");
    client.flush().await.expect("flush");
    assert_eq!(
        conn.log.pubs(),
        [
            Rec::Pub {
                subject: "a.b".into(),
                reply: "r.1".into(),
                headers: vec![],
                payload: b"p1".to_vec()
            },
            Rec::Pub {
                subject: "a.c".into(),
                reply: String::new(),
                headers: h.as_encoded().to_vec(),
                payload: b"p2".to_vec()
            },
            Rec::Pub {
                subject: "a.d".into(),
                reply: "r.2".into(),
                headers: h.as_encoded().to_vec(),
                payload: b"p3".to_vec()
            },
        ]
    );
}

#[tokio::test]
async fn backpressure_waits_and_loses_nothing() {
    let mut server = FakeServer::start(Config::default()).await;
    let client = ConnectOptions::new()
        .write_buffer_limit(1024)
        .connect(&server.addr)
        .await
        .expect("connect");
    let conn = server.next_conn().await;
    let payload = Bytes::from(vec![7u8; 100]);
    for _ in 0..5000 {
        client
            .publish("bp", payload.clone())
            .await
            .expect("publish");
    }
    client.flush().await.expect("flush");
    assert_eq!(conn.log.pubs().len(), 5000);
    assert!(client.statistics().writes > 1);
}

#[tokio::test(start_paused = true)]
async fn a_server_that_stops_reading_cannot_hang_the_client() {
    let mut server = FakeServer::start(Config::default()).await;
    let client = ConnectOptions::new()
        .write_buffer_limit(64 * 1024)
        .request_timeout(Duration::from_secs(2))
        .connect(&server.addr)
        .await
        .expect("connect");
    let conn = server.next_conn().await;
    client.flush().await.expect("flush");
    conn.send(Cmd::StopReading);
    // Fill the socket buffers until publishing stalls (bounded: 1 GiB at most).
    let payload = Bytes::from(vec![0u8; 64 * 1024]);
    let mut stalled = None;
    for _ in 0..16 * 1024 {
        if let Err(e) = client.publish("fill", payload.clone()).await {
            stalled = Some(e);
            break;
        }
    }
    let err = stalled.expect("publishing stalled");
    assert!(
        matches!(err, Error::WriteStalled { after, .. } if after == Duration::from_secs(2)),
        "{err:?}"
    );
    let err = client
        .close()
        .await
        .expect_err("close cannot write the pending bytes");
    assert!(matches!(err, Error::CloseTimeout { .. }), "{err:?}");
    assert!(client.is_closed());
}

#[tokio::test]
async fn invalid_subjects_and_queues_are_rejected_before_sending() {
    let mut server = FakeServer::start(Config::default()).await;
    let (client, conn) = connect(&mut server).await;
    for bad in ["", "a..b", ".a", "a.", "a b", "a.*", ">"] {
        let err = client.publish(bad, "x").await.expect_err(bad);
        assert!(
            matches!(err, Error::InvalidSubject { .. }),
            "{bad}: {err:?}"
        );
    }
    let err = client
        .publish_with_reply("ok", "r.>", "x")
        .await
        .expect_err("wildcard reply");
    assert!(matches!(err, Error::InvalidSubject { ref subject, .. } if subject == "r.>"));
    let err = client.subscribe("a.>.b").await.expect_err("bad pattern");
    assert!(matches!(err, Error::InvalidSubject { .. }), "{err:?}");
    let err = client
        .queue_subscribe("a.*", "bad queue")
        .await
        .expect_err("bad queue");
    assert!(matches!(err, Error::InvalidQueue { .. }), "{err:?}");
    let err = client
        .request("a.*", "x", Duration::from_secs(1))
        .await
        .expect_err("wildcard request");
    assert!(matches!(err, Error::InvalidSubject { .. }), "{err:?}");
    client.flush().await.expect("flush");
    assert!(conn.log.pubs().is_empty());
    assert!(!conn
        .log
        .frames()
        .iter()
        .any(|r| matches!(r, Rec::Sub { .. })));
    assert!(err.to_string().contains("a.*"));
}

#[tokio::test]
async fn payload_over_max_payload_is_rejected() {
    let mut server = FakeServer::start(Config {
        max_payload: 1024,
        ..Config::default()
    })
    .await;
    let (client, conn) = connect(&mut server).await;
    client
        .publish("ok", vec![0u8; 1024])
        .await
        .expect("exactly max_payload");
    let err = client
        .publish("big", vec![0u8; 1025])
        .await
        .expect_err("over max_payload");
    assert!(
        matches!(
            err,
            Error::PayloadTooLarge {
                len: 1025,
                max: 1024
            }
        ),
        "{err:?}"
    );
    let mut h = Headers::new();
    h.insert("k", "vvvv").expect("valid header");
    let hl = h.as_encoded().len();
    let err = client
        .publish_with_headers("big", &h, vec![0u8; 1025 - hl])
        .await
        .expect_err("headers count");
    assert!(
        matches!(err, Error::PayloadTooLarge { len: 1025, .. }),
        "{err:?}"
    );
    client.flush().await.expect("flush");
    assert_eq!(conn.log.pubs().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Subscriptions
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn subscriber_receives_routed_messages() {
    let mut server = FakeServer::start(Config::default()).await;
    let (client, conn) = connect(&mut server).await;
    let mut sub = client.subscribe("orders.*").await.expect("subscribe");
    let mut h = Headers::new();
    h.append("k", "v1").expect("valid header");
    h.append("k", "v2").expect("valid header");
    client
        .publish_message(
            OutboundMessage::new("orders.eu", b"hello")
                .reply("answers.1")
                .headers(&h),
        )
        .await
        .expect("publish");
    client
        .publish("other.eu", "not for us")
        .await
        .expect("publish");
    client
        .publish("orders.us", "second")
        .await
        .expect("publish");
    let m = next(&mut sub).await.expect("a message");
    assert_eq!(m.subject, "orders.eu");
    assert_eq!(m.reply.as_deref(), Some("answers.1"));
    assert_eq!(m.payload, "hello");
    let got = m.headers.expect("headers");
    assert_eq!(got.get_all("k").collect::<Vec<_>>(), [&b"v1"[..], b"v2"]);
    // The Stream impl yields the same messages.
    let m = tokio::time::timeout(WAIT, StreamExt::next(&mut sub))
        .await
        .expect("within the wait")
        .expect("a message");
    assert_eq!(
        (m.subject.as_str(), &m.payload[..]),
        ("orders.us", &b"second"[..])
    );
    assert!(m.reply.is_none() && m.headers.is_none());
    assert!(conn.log.frames().contains(&Rec::Sub {
        sid: sub.sid(),
        subject: "orders.*".into(),
        queue: String::new()
    }));
    assert_eq!(sub.subject(), "orders.*");
}

#[tokio::test]
async fn queue_subscribe_sends_the_group() {
    let mut server = FakeServer::start(Config::default()).await;
    let (client, conn) = connect(&mut server).await;
    let sub = client
        .queue_subscribe("jobs.>", "workers")
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    assert!(conn.log.frames().contains(&Rec::Sub {
        sid: sub.sid(),
        subject: "jobs.>".into(),
        queue: "workers".into()
    }));
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_late_messages_are_dropped() {
    let mut server = FakeServer::start(Config::default()).await;
    let (client, conn) = connect(&mut server).await;
    let gone = client.subscribe("a").await.expect("subscribe");
    let mut live = client.subscribe("b").await.expect("subscribe");
    let gone_sid = gone.sid();
    gone.unsubscribe().await.expect("unsubscribe");
    client.flush().await.expect("flush");
    assert!(conn.log.frames().contains(&Rec::Unsub {
        sid: gone_sid,
        max: 0
    }));
    // A MSG for the old sid arriving late is dropped; the connection carries on.
    conn.send(Cmd::Msg {
        sid: gone_sid,
        subject: "a",
        payload: b"late".to_vec(),
    });
    conn.send(Cmd::Msg {
        sid: live.sid(),
        subject: "b",
        payload: b"live".to_vec(),
    });
    let m = next(&mut live).await.expect("a message");
    assert_eq!(m.payload, "live");
    // Dropping a subscriber unsubscribes it too.
    let live_sid = live.sid();
    drop(live);
    client.flush().await.expect("flush");
    assert!(conn.log.frames().contains(&Rec::Unsub {
        sid: live_sid,
        max: 0
    }));
}

#[tokio::test]
async fn unsubscribe_after_ends_the_stream_exactly() {
    let mut server = FakeServer::start(Config::default()).await;
    let (client, conn) = connect(&mut server).await;
    let mut sub = client.subscribe("t").await.expect("subscribe");
    sub.unsubscribe_after(3).await.expect("unsubscribe_after");
    client.flush().await.expect("flush");
    assert!(conn.log.frames().contains(&Rec::Unsub {
        sid: sub.sid(),
        max: 3
    }));
    // The server sends more than asked (straight MSGs, ignoring its limit): the client still
    // ends the stream after exactly 3.
    for i in 0..5u8 {
        conn.send(Cmd::Msg {
            sid: sub.sid(),
            subject: "t",
            payload: vec![i],
        });
    }
    let mut got = Vec::new();
    while let Some(m) = next(&mut sub).await {
        got.push(m.payload[0]);
        assert!(got.len() <= 3, "too many: {got:?}");
    }
    assert_eq!(got, [0, 1, 2]);
}

#[tokio::test]
async fn unsubscribe_after_counts_from_what_was_yielded() {
    let mut server = FakeServer::start(Config::default()).await;
    let (client, conn) = connect(&mut server).await;
    let mut sub = client.subscribe("t").await.expect("subscribe");
    for _ in 0..2 {
        client.publish("t", "x").await.expect("publish");
    }
    assert!(next(&mut sub).await.is_some());
    assert!(next(&mut sub).await.is_some());
    sub.unsubscribe_after(2).await.expect("unsubscribe_after");
    client.flush().await.expect("flush");
    // The protocol counts all deliveries: 2 already + 2 more.
    assert!(conn.log.frames().contains(&Rec::Unsub {
        sid: sub.sid(),
        max: 4
    }));
    for _ in 0..4 {
        client.publish("t", "y").await.expect("publish");
    }
    assert!(next(&mut sub).await.is_some());
    assert!(next(&mut sub).await.is_some());
    assert!(next(&mut sub).await.is_none());
    // Zero more: ends at once.
    let mut other = client.subscribe("u").await.expect("subscribe");
    other.unsubscribe_after(0).await.expect("unsubscribe_after");
    assert!(next(&mut other).await.is_none());
}

#[tokio::test]
async fn large_messages_span_reads() {
    let mut server = FakeServer::start(Config::default()).await;
    let client = ConnectOptions::new()
        .read_buffer_size(4096)
        .connect(&server.addr)
        .await
        .expect("connect");
    let conn = server.next_conn().await;
    let mut sub = client.subscribe("big").await.expect("subscribe");
    client.flush().await.expect("flush");
    let payload: Vec<u8> = (0..600_000u32).map(|i| i as u8).collect();
    conn.send(Cmd::Msg {
        sid: sub.sid(),
        subject: "big",
        payload: payload.clone(),
    });
    conn.send(Cmd::Msg {
        sid: sub.sid(),
        subject: "big",
        payload: b"small".to_vec(),
    });
    assert_eq!(next(&mut sub).await.expect("big message").payload, payload);
    assert_eq!(
        next(&mut sub).await.expect("small message").payload,
        "small"
    );
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// Subscribes a responder on `subject` that answers with the payload doubled.
async fn spawn_doubler(client: &agentwire_client::Client, subject: &str) {
    let mut svc = client.subscribe(subject).await.expect("subscribe");
    let responder = client.clone();
    tokio::spawn(async move {
        while let Some(req) = svc.next().await {
            let mut body = req.payload.to_vec();
            body.extend_from_slice(&req.payload);
            if let Some(reply) = req.reply {
                let _ = responder.publish(&reply, body).await;
            }
        }
    });
}

#[tokio::test]
async fn request_gets_its_reply() {
    let mut server = FakeServer::start(Config::default()).await;
    let (client, conn) = connect(&mut server).await;
    spawn_doubler(&client, "svc.double").await;
    let reply = client
        .request("svc.double", "ab", Duration::from_secs(5))
        .await
        .expect("a reply");
    assert_eq!(reply.payload, "abab");
    let reply = client
        .request_with_headers("svc.double", &Headers::new(), "c", Duration::from_secs(5))
        .await
        .expect("a reply");
    assert_eq!(reply.payload, "cc");
    // One shared inbox subscription, `_INBOX.<22>.>`.
    let inbox_subs: Vec<_> = conn
        .log
        .frames()
        .into_iter()
        .filter_map(|r| match r {
            Rec::Sub { subject, .. } if subject.starts_with("_INBOX.") => Some(subject),
            _ => None,
        })
        .collect();
    assert_eq!(inbox_subs.len(), 1, "{inbox_subs:?}");
    assert_eq!(inbox_subs[0].len(), "_INBOX.".len() + 22 + 2);
    assert!(inbox_subs[0].ends_with(".>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_on_a_multi_thread_runtime() {
    let mut server = FakeServer::start(Config::default()).await;
    let (client, _conn) = connect(&mut server).await;
    spawn_doubler(&client, "svc.double").await;
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let body = i.to_string();
            let reply = c
                .request("svc.double", body.clone(), Duration::from_secs(10))
                .await
                .expect("a reply");
            assert_eq!(reply.payload, format!("{body}{body}"));
        }));
    }
    for t in tasks {
        t.await.expect("request task");
    }
}

#[tokio::test(start_paused = true)]
async fn request_times_out() {
    let mut server = FakeServer::start(Config::default()).await;
    let (client, conn) = connect(&mut server).await;
    // Something is subscribed (so no no-responders), but it never answers.
    let _silent = client.subscribe("svc.silent").await.expect("subscribe");
    let started = tokio::time::Instant::now();
    let err = client
        .request("svc.silent", "x", Duration::from_secs(3))
        .await
        .expect_err("no reply");
    assert!(
        matches!(err, Error::Timeout { ref subject, after } if subject == "svc.silent" && after == Duration::from_secs(3)),
        "{err:?}"
    );
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(conn.log.pubs().len(), 1);
    // The client still works after a timeout.
    client.flush().await.expect("flush");
}

#[tokio::test]
async fn request_without_subscribers_fails_fast_with_no_responders() {
    let mut server = FakeServer::start(Config::default()).await;
    let (client, _conn) = connect(&mut server).await;
    let err = client
        .request("nobody.home", "x", Duration::from_secs(30))
        .await
        .expect_err("no responders");
    assert!(
        matches!(err, Error::NoResponders { ref subject } if subject == "nobody.home"),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Server errors, closing and draining
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn server_close_fails_pending_ops_and_ends_streams() {
    let mut server = FakeServer::start(Config::default()).await;
    // Reconnect off: the drop closes the client (with it on, see `tests/reconnect.rs`).
    let client = ConnectOptions::new()
        .name("test-client")
        .reconnect(false)
        .connect(&server.addr)
        .await
        .expect("connect to the fake server");
    let conn = server.next_conn().await;
    let mut sub = client.subscribe("s").await.expect("subscribe");
    let _silent = client.subscribe("svc.silent").await.expect("subscribe");
    client.flush().await.expect("flush");
    conn.send(Cmd::AnswerPings(false));
    let flusher = {
        let c = client.clone();
        tokio::spawn(async move { c.flush().await })
    };
    let requester = {
        let c = client.clone();
        tokio::spawn(async move { c.request("svc.silent", "x", Duration::from_secs(60)).await })
    };
    conn.log
        .wait_for("the held PING and the request", |l| {
            l.frames.iter().filter(|r| **r == Rec::Ping).count() >= 2
                && l.frames
                    .iter()
                    .any(|r| matches!(r, Rec::Pub { subject, .. } if subject == "svc.silent"))
        })
        .await;
    conn.send(Cmd::Close);
    let flushed = tokio::time::timeout(WAIT, flusher)
        .await
        .expect("flush ends")
        .expect("flush task");
    assert!(matches!(flushed, Err(Error::Closed)), "{flushed:?}");
    let requested = tokio::time::timeout(WAIT, requester)
        .await
        .expect("request ends")
        .expect("request task");
    assert!(matches!(requested, Err(Error::Closed)), "{requested:?}");
    assert!(next(&mut sub).await.is_none());
    assert!(client.is_closed());
    assert!(matches!(client.publish("s", "x").await, Err(Error::Closed)));
    assert!(matches!(client.subscribe("s").await, Err(Error::Closed)));
    assert!(matches!(client.flush().await, Err(Error::Closed)));
    assert!(matches!(
        client.request("s", "x", Duration::from_secs(1)).await,
        Err(Error::Closed)
    ));
    client
        .close()
        .await
        .expect("closing a closed client is fine");
}

#[tokio::test]
async fn fatal_err_fails_pending_ops_with_the_server_error() {
    let mut server = FakeServer::start(Config::default()).await;
    let (client, conn) = connect(&mut server).await;
    let mut sub = client.subscribe("s").await.expect("subscribe");
    client.flush().await.expect("flush");
    conn.send(Cmd::AnswerPings(false));
    let flusher = {
        let c = client.clone();
        tokio::spawn(async move { c.flush().await })
    };
    conn.log
        .wait_for("the held PING", |l| {
            l.frames.iter().filter(|r| **r == Rec::Ping).count() >= 2
        })
        .await;
    conn.send(Cmd::Err {
        code: ErrorCode::SlowConsumer,
        fatal: true,
        message: "too slow",
    });
    let flushed = tokio::time::timeout(WAIT, flusher)
        .await
        .expect("flush ends")
        .expect("flush task");
    match flushed {
        Err(Error::Server(e)) => {
            assert_eq!(e.code, ErrorCode::SlowConsumer.as_u16());
            assert!(e.fatal);
        }
        other => panic!("expected the server error, got {other:?}"),
    }
    assert!(next(&mut sub).await.is_none());
    assert_eq!(client.fatal_error().map(|e| e.name), Some("slow_consumer"));
    assert!(client.last_error().is_none());
    assert!(matches!(client.publish("s", "x").await, Err(Error::Closed)));
}

#[tokio::test]
async fn non_fatal_err_is_recorded_and_the_connection_stays_up() {
    let mut server = FakeServer::start(Config::default()).await;
    let (client, conn) = connect(&mut server).await;
    conn.send(Cmd::Err {
        code: ErrorCode::PermissionDenied,
        fatal: false,
        message: "not allowed on secret.>",
    });
    // Server PINGs are answered.
    conn.send(Cmd::Ping);
    conn.log
        .wait_for("the client's PONG", |l| l.frames.contains(&Rec::Pong))
        .await;
    client.flush().await.expect("flush");
    let e = client.last_error().expect("the ERR was recorded");
    assert_eq!(e.name, "permission_denied");
    assert_eq!(e.message, "not allowed on secret.>");
    assert!(!client.is_closed());
    client.publish("x", "still works").await.expect("publish");
}

#[tokio::test]
async fn drain_delivers_what_was_received_then_closes() {
    let mut server = FakeServer::start(Config::default()).await;
    let (client, conn) = connect(&mut server).await;
    let mut sub = client.subscribe("d").await.expect("subscribe");
    client.flush().await.expect("flush");
    for i in 0..3u8 {
        conn.send(Cmd::Msg {
            sid: sub.sid(),
            subject: "d",
            payload: vec![i],
        });
    }
    client.publish("out", "last words").await.expect("publish");
    client.drain().await.expect("drain");
    assert!(client.is_closed());
    let mut got = Vec::new();
    while let Some(m) = next(&mut sub).await {
        got.push(m.payload[0]);
    }
    assert_eq!(got, [0, 1, 2]);
    conn.log.wait_for("EOF", |l| l.eof).await;
    let frames = conn.log.frames();
    let unsub = frames
        .iter()
        .position(|r| {
            *r == Rec::Unsub {
                sid: sub.sid(),
                max: 0,
            }
        })
        .expect("drain unsubscribed");
    assert!(
        frames[unsub..].contains(&Rec::Ping),
        "drain flushed after unsubscribing"
    );
    assert_eq!(conn.log.pubs().len(), 1);
    assert!(matches!(client.publish("x", "y").await, Err(Error::Closed)));
    assert!(matches!(client.drain().await, Err(Error::Closed)));
}

#[tokio::test]
async fn close_sends_pending_publishes_and_ends_streams() {
    let mut server = FakeServer::start(Config::default()).await;
    let (client, conn) = connect(&mut server).await;
    let mut sub = client.subscribe("c").await.expect("subscribe");
    for _ in 0..100 {
        client.publish("out", "x").await.expect("publish");
    }
    client.close().await.expect("close");
    assert!(client.is_closed());
    assert!(next(&mut sub).await.is_none());
    conn.log.wait_for("EOF", |l| l.eof).await;
    assert_eq!(conn.log.pubs().len(), 100);
}

#[tokio::test]
async fn dropping_every_handle_closes_gracefully() {
    let mut server = FakeServer::start(Config::default()).await;
    let (client, conn) = connect(&mut server).await;
    let clone = client.clone();
    for _ in 0..10 {
        clone.publish("out", "x").await.expect("publish");
    }
    drop(client);
    drop(clone);
    conn.log.wait_for("EOF", |l| l.eof).await;
    assert_eq!(conn.log.pubs().len(), 10);
}
