//! Integration tests of automatic reconnect against the fake server (`common/mod.rs`): the
//! server drops the connection or is stopped and restarted on the same port, and the client
//! reconnects, re-sends its subscriptions (same sids, same queue groups, the request inbox) and
//! its registration, then what was published while it was down, in order.
//!
//! Also the connection events ([`Client::events`]) around a drop, a server error and the end.
//!
//! Loopback only; every wait bounded (`WAIT`); reconnect backoff shortened to 10–40 ms.

mod common;

use common::*;

use std::sync::Arc;
use std::time::Duration;

use agentwire_client::{
    Client, ConfigUpdate, ConnectOptions, ConnectionEvent, ConnectionEvents, Error, ErrorCode,
    Registered, Registration,
};
use agentwire_protocol::control::{encode_control, ControlBody};
use agentwire_protocol::op;
use bytes::BytesMut;

fn options() -> ConnectOptions {
    ConnectOptions::new()
        .name("reconnect-test")
        .connect_timeout(Duration::from_secs(2))
        .reconnect_delay(Duration::from_millis(10), Duration::from_millis(40))
}

async fn connect_with(server: &mut FakeServer, opts: ConnectOptions) -> (Client, Conn) {
    let client = opts
        .connect(&server.addr)
        .await
        .expect("connect to the fake server");
    let conn = server.next_conn().await;
    (client, conn)
}

/// The SUB frames a connection read, as (sid, subject, queue), sorted by sid.
fn subs(data: &LogData) -> Vec<(u32, String, String)> {
    let mut v: Vec<_> = data
        .frames
        .iter()
        .filter_map(|f| match f {
            Rec::Sub {
                sid,
                subject,
                queue,
            } => Some((*sid, subject.clone(), queue.clone())),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

/// The payloads of the PUBs on `subject` a connection read, in order.
fn pub_payloads(data: &LogData, subject: &str) -> Vec<String> {
    data.frames
        .iter()
        .filter_map(|f| match f {
            Rec::Pub {
                subject: s,
                payload,
                ..
            } if s == subject => Some(String::from_utf8_lossy(payload).into_owned()),
            _ => None,
        })
        .collect()
}

/// Waits (bounded) until the client sees the drop.
async fn wait_disconnected(client: &Client) {
    tokio::time::timeout(WAIT, async {
        while client.is_connected() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the client saw the drop within the wait");
}

#[tokio::test]
async fn drop_reconnects_and_resends_the_same_subscriptions() {
    let mut server = FakeServer::start(Config::default()).await;
    let (client, conn) = connect_with(&mut server, options()).await;
    let mut plain = client.subscribe("orders.*").await.expect("subscribe");
    let mut grouped = client
        .queue_subscribe("jobs.run", "workers")
        .await
        .expect("queue subscribe");
    // A request creates the inbox subscription (no responders: answered at once).
    let err = client
        .request("nobody.home", "?", Duration::from_secs(2))
        .await
        .expect_err("no responders");
    assert!(matches!(err, Error::NoResponders { .. }), "{err}");
    client.flush().await.expect("flush");
    let before = subs(&conn.log.data.lock().expect("log lock"));
    assert_eq!(before.len(), 3, "{before:?}");
    assert!(before.iter().any(|(_, s, _)| s.starts_with("_INBOX.")));

    conn.send(Cmd::Close);
    let conn2 = server.next_conn().await;
    conn2
        .log
        .wait_for("the three SUBs again", |l| subs(l).len() == 3)
        .await;
    let after = subs(&conn2.log.data.lock().expect("log lock"));
    assert_eq!(after, before, "same sids, subjects and queue groups");
    client.flush().await.expect("flush on the new connection");
    assert!(client.is_connected());

    // The server delivers on the old sids; the same streams get the messages.
    conn2.send(Cmd::Msg {
        sid: before
            .iter()
            .find(|(_, s, _)| s == "orders.*")
            .map(|(sid, _, _)| *sid)
            .expect("orders sid"),
        subject: "orders.new",
        payload: b"after".to_vec(),
    });
    let msg = next(&mut plain)
        .await
        .expect("a message on the same stream");
    assert_eq!(msg.payload, "after");
    client.publish("jobs.run", "job-1").await.expect("publish");
    let msg = next(&mut grouped).await.expect("routed to the queue sub");
    assert_eq!(msg.payload, "job-1");
    // Requests work again (the inbox SUB was re-sent).
    let err = client
        .request("nobody.home", "?", Duration::from_secs(2))
        .await
        .expect_err("no responders");
    assert!(matches!(err, Error::NoResponders { .. }), "{err}");
    client.close().await.expect("close");
}

#[tokio::test]
async fn publishes_while_down_arrive_in_order_after_restart() {
    let mut server = FakeServer::start(Config::default()).await;
    let (client, conn) = connect_with(&mut server, options()).await;
    client.publish("seq", "0").await.expect("publish");
    client.flush().await.expect("flush");
    let addr = server.stop().await;
    conn.send(Cmd::Close);
    wait_disconnected(&client).await;
    for i in 1..=50 {
        client
            .publish("seq", i.to_string())
            .await
            .expect("buffered while down");
    }
    tokio::time::sleep(Duration::from_millis(100)).await; // a few failed attempts
    let mut server = FakeServer::start_on(&addr, Config::default()).await;
    let conn2 = server.next_conn().await;
    client.flush().await.expect("flush after the reconnect");
    let got = pub_payloads(&conn2.log.data.lock().expect("log lock"), "seq");
    let want: Vec<String> = (1..=50).map(|i| i.to_string()).collect();
    assert_eq!(got, want);
    client.close().await.expect("close");
}

#[tokio::test]
async fn full_reconnect_buffer_is_a_typed_error() {
    let mut server = FakeServer::start(Config::default()).await;
    let (client, conn) = connect_with(&mut server, options().reconnect_buffer_size(1000)).await;
    let addr = server.stop().await;
    conn.send(Cmd::Close);
    wait_disconnected(&client).await;
    let payload = vec![b'x'; 300];
    let mut ok = 0;
    let err = loop {
        match client.publish("big", payload.clone()).await {
            Ok(()) => ok += 1,
            Err(e) => break e,
        }
        assert!(ok < 10, "the buffer must fill");
    };
    assert_eq!(ok, 3, "three 300-byte payloads fit in 1000 bytes");
    match err {
        Error::ReconnectBufferFull { limit, pending } => {
            assert_eq!(limit, 1000);
            assert!(pending <= 1000 && pending > 900, "{pending}");
        }
        other => panic!("unexpected error: {other}"),
    }
    // A smaller publish still fits; nothing was dropped: all arrive once the server is back.
    client.publish("big", "tail").await.expect("fits");
    let mut server = FakeServer::start_on(&addr, Config::default()).await;
    let conn2 = server.next_conn().await;
    client.flush().await.expect("flush after the reconnect");
    let got = pub_payloads(&conn2.log.data.lock().expect("log lock"), "big");
    assert_eq!(got.len(), 4);
    assert_eq!(got[3], "tail");
    client.close().await.expect("close");
}

#[tokio::test]
async fn reconnect_goes_to_the_next_server_in_the_list() {
    let mut a = FakeServer::start(Config::default()).await;
    let mut b = FakeServer::start(Config::default()).await;
    let client = options()
        .servers([a.addr.clone(), b.addr.clone()])
        .connect_servers()
        .await
        .expect("connect to the first");
    let conn_a = a.next_conn().await;
    let _sub = client.subscribe("x.y").await.expect("subscribe");
    client.flush().await.expect("flush");
    let _ = a.stop().await;
    conn_a.send(Cmd::Close);
    let conn_b = b.next_conn().await;
    conn_b
        .log
        .wait_for("the SUB on the second server", |l| subs(l).len() == 1)
        .await;
    client.flush().await.expect("flush on the second server");
    client.close().await.expect("close");
}

#[tokio::test]
async fn request_in_flight_at_the_drop_fails_with_disconnected() {
    let mut server = FakeServer::start(Config::default()).await;
    let (client, conn) = connect_with(&mut server, options()).await;
    // Something subscribed that never answers, so the request waits.
    let _responder = client.subscribe("slow.op").await.expect("subscribe");
    client.flush().await.expect("flush");
    let requester = client.clone();
    let pending = tokio::spawn(async move {
        requester
            .request("slow.op", "?", Duration::from_secs(30))
            .await
    });
    conn.log
        .wait_for("the request PUB", |l| {
            !pub_payloads(l, "slow.op").is_empty()
        })
        .await;
    conn.send(Cmd::Close);
    let result = tokio::time::timeout(WAIT, pending)
        .await
        .expect("the request ends within the wait")
        .expect("the request task ran");
    assert!(matches!(result, Err(Error::Disconnected)), "{result:?}");
    let _conn2 = server.next_conn().await;
    client.flush().await.expect("reconnected");
    client.close().await.expect("close");
}

#[tokio::test]
async fn max_reconnects_exhausted_closes_with_a_typed_reason() {
    let mut server = FakeServer::start(Config::default()).await;
    let (client, conn) = connect_with(&mut server, options().max_reconnects(Some(3))).await;
    let mut sub = client.subscribe("a.b").await.expect("subscribe");
    client.flush().await.expect("flush");
    let _ = server.stop().await;
    conn.send(Cmd::Close);
    wait_disconnected(&client).await;
    // A flush made while reconnecting waits, then gets the final reason.
    let flush = client.flush().await;
    assert!(
        matches!(flush, Err(Error::ReconnectFailed { attempts: 3 })),
        "{flush:?}"
    );
    assert!(next(&mut sub).await.is_none(), "the subscriber stream ends");
    assert!(client.is_closed());
    assert!(matches!(
        client.close_reason(),
        Some(Error::ReconnectFailed { attempts: 3 })
    ));
    assert!(client.publish("a.b", "late").await.is_err());
}

#[tokio::test]
async fn reconnect_off_closes_on_drop() {
    let mut server = FakeServer::start(Config::default()).await;
    let (client, conn) = connect_with(&mut server, options().reconnect(false)).await;
    let mut sub = client.subscribe("a.b").await.expect("subscribe");
    client.flush().await.expect("flush");
    conn.send(Cmd::Close);
    assert!(next(&mut sub).await.is_none(), "the subscriber stream ends");
    assert!(client.is_closed());
}

#[tokio::test]
async fn close_while_reconnecting_ends_at_once() {
    let mut server = FakeServer::start(Config::default()).await;
    let (client, conn) = connect_with(&mut server, options()).await;
    let mut sub = client.subscribe("a.b").await.expect("subscribe");
    let _ = server.stop().await;
    conn.send(Cmd::Close);
    wait_disconnected(&client).await;
    tokio::time::timeout(WAIT, client.close())
        .await
        .expect("close returns within the wait")
        .expect("close");
    assert!(next(&mut sub).await.is_none());
}

fn frame<T: ControlBody>(body: &T) -> Vec<u8> {
    let mut b = BytesMut::new();
    encode_control(&mut b, body).expect("control body encodes");
    b.to_vec()
}

fn config(version: u64, value: &str) -> ConfigUpdate {
    ConfigUpdate {
        component: "planner".into(),
        environment: String::new(),
        version,
        values: vec![("mode".into(), value.into())],
        updated_at_ms: 1_700_000_000_000 + version,
        updated_by: "ops".into(),
    }
}

#[tokio::test]
async fn registered_client_reregisters_and_takes_a_newer_config() {
    // The first connection registers at config v1; later ones are answered with v2.
    let answers = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = answers.clone();
    let on_register: OnRegister = Arc::new(move |reg: &Registration| {
        let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (version, value) = if n == 0 { (1, "one") } else { (2, "two") };
        frame(&Registered {
            instance_id: reg.instance_id.clone(),
            heartbeat_ms: 30_000,
            unhealthy_after: 3,
            remove_after: 10,
            config: config(version, value),
        })
    });
    let cfg = Config {
        on_register: Some(on_register),
        ..Config::default()
    };
    let mut server = FakeServer::start(cfg).await;
    let (client, conn) = connect_with(&mut server, options()).await;
    let reg = Registration {
        component: "planner".into(),
        instance_id: "planner-1".into(),
        capabilities: vec!["plan".into()],
        subjects: vec!["planner.>".into()],
        heartbeat_ms: 30_000,
        ..Registration::default()
    };
    let membership = client.register(reg.clone()).await.expect("register");
    let mut watch = membership.config_watch();
    let first = tokio::time::timeout(WAIT, watch.next())
        .await
        .expect("the first config within the wait")
        .expect("a config");
    assert_eq!(first.version(), 1);

    conn.send(Cmd::Close);
    let conn2 = server.next_conn().await;
    conn2
        .log
        .wait_for("the REGISTER again", |l| {
            l.frames
                .iter()
                .any(|f| matches!(f, Rec::Control { op: o, .. } if *o == op::REGISTER))
        })
        .await;
    let bodies = conn2.log.controls(op::REGISTER);
    let again: Registration =
        agentwire_protocol::control::decode_control(&bodies[0]).expect("REGISTER validates");
    assert_eq!(again, reg, "the same registration");
    let second = tokio::time::timeout(WAIT, watch.next())
        .await
        .expect("the newer config within the wait")
        .expect("the watch stays open");
    assert_eq!(second.version(), 2);
    assert_eq!(second.get("mode"), Some("two"));
    assert!(membership.is_active());
    client.close().await.expect("close");
}

#[tokio::test]
async fn registration_pending_at_the_drop_fails_with_disconnected() {
    // The server never answers REGISTER.
    let mut server = FakeServer::start(Config::default()).await;
    let (client, conn) = connect_with(
        &mut server,
        options().request_timeout(Duration::from_secs(60)),
    )
    .await;
    let reg = Registration {
        component: "planner".into(),
        instance_id: "planner-2".into(),
        ..Registration::default()
    };
    let pending = tokio::spawn({
        let client = client.clone();
        let reg = reg.clone();
        async move { client.register(reg).await }
    });
    conn.log
        .wait_for("REGISTER", |l| {
            !l.frames.is_empty()
                && l.frames
                    .iter()
                    .any(|f| matches!(f, Rec::Control { op: o, .. } if *o == op::REGISTER))
        })
        .await;
    conn.send(Cmd::Close);
    let result = tokio::time::timeout(WAIT, pending)
        .await
        .expect("register fails long before its 60 s timeout")
        .expect("register task");
    assert!(matches!(result, Err(Error::Disconnected)), "{result:?}");
    let _conn2 = server.next_conn().await;
    client.flush().await.expect("reconnected");
    client.close().await.expect("close");
}

/// Next event, bounded.
async fn next_event(events: &mut ConnectionEvents) -> Option<ConnectionEvent> {
    tokio::time::timeout(WAIT, events.next())
        .await
        .expect("an event within the wait")
}

#[tokio::test]
async fn events_show_disconnected_then_reconnected_then_closed() {
    let mut server = FakeServer::start(Config::default()).await;
    let (client, conn) = connect_with(&mut server, options()).await;
    let mut events = client.events();
    assert_eq!(
        next_event(&mut events).await,
        Some(ConnectionEvent::Connected {
            addr: server.addr.clone()
        })
    );
    conn.send(Cmd::Close);
    let _conn2 = server.next_conn().await;
    assert!(matches!(
        next_event(&mut events).await,
        Some(ConnectionEvent::Disconnected { .. })
    ));
    match next_event(&mut events).await {
        Some(ConnectionEvent::Reconnected {
            addr,
            attempts,
            after,
        }) => {
            assert_eq!(addr, server.addr);
            assert_eq!(attempts, 1);
            assert!(after < WAIT);
        }
        other => panic!("expected Reconnected, got {other:?}"),
    }
    client.close().await.expect("close");
    assert!(matches!(
        next_event(&mut events).await,
        Some(ConnectionEvent::Closed { .. })
    ));
    assert_eq!(next_event(&mut events).await, None, "the stream ends");
    assert_eq!(
        next_event(&mut client.events()).await,
        None,
        "a stream opened after the close ends at once"
    );
}

#[tokio::test]
async fn events_report_server_errors_and_slow_consumer() {
    let mut server = FakeServer::start(Config::default()).await;
    let (client, conn) = connect_with(&mut server, options()).await;
    let mut events = client.events();
    assert!(matches!(
        next_event(&mut events).await,
        Some(ConnectionEvent::Connected { .. })
    ));
    conn.send(Cmd::Err {
        code: ErrorCode::SlowConsumer,
        fatal: false,
        message: "falling behind",
    });
    assert_eq!(
        next_event(&mut events).await,
        Some(ConnectionEvent::ServerError {
            code: ErrorCode::SlowConsumer.as_u16(),
            message: "falling behind".into(),
        })
    );
    assert_eq!(
        next_event(&mut events).await,
        Some(ConnectionEvent::ServerSlowConsumer)
    );
    client.close().await.expect("close");
}

#[tokio::test]
async fn events_end_with_closed_when_reconnects_run_out() {
    let mut server = FakeServer::start(Config::default()).await;
    let (client, conn) = connect_with(&mut server, options().max_reconnects(Some(2))).await;
    let mut events = client.events();
    let _ = next_event(&mut events).await;
    let _ = server.stop().await;
    conn.send(Cmd::Close);
    assert!(matches!(
        next_event(&mut events).await,
        Some(ConnectionEvent::Disconnected { .. })
    ));
    match next_event(&mut events).await {
        Some(ConnectionEvent::Closed { reason }) => {
            assert!(reason.contains("gave up reconnecting after 2"), "{reason}");
        }
        other => panic!("expected Closed, got {other:?}"),
    }
    assert_eq!(next_event(&mut events).await, None);
}
