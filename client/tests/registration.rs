//! Integration tests of the control plane on the client side (registration, heartbeats, live
//! config, discovery) against the fake server of `common/mod.rs`, which answers REGISTER as a
//! test tells it and otherwise lets the test write control frames by hand.
//!
//! Waits are bounded (`WAIT`); timing assertions are lower bounds on counts within a generous
//! window, never exact intervals.

mod common;

use common::*;

use std::sync::Arc;
use std::time::Duration;

use agentwire_client::{
    Client, ConfigSnapshot, ConfigUpdate, ConfigWatch, ConnectOptions, DiscoverQuery, Error,
    ErrorCode, Heartbeat, InstanceInfo, Registered, Registration,
};
use agentwire_protocol::control::{
    decode_control, encode_control, ControlBody, Discover, Discovered,
};
use agentwire_protocol::{encode_err, op, HEADER_LEN};
use bytes::{BufMut, BytesMut};
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn registration(instance_id: &str) -> Registration {
    Registration {
        component: "planner".into(),
        instance_id: instance_id.into(),
        version: "1.2.3".into(),
        environment: String::new(),
        capabilities: vec!["plan".into(), "route".into()],
        subjects: vec!["planner.>".into()],
        metadata: vec![("zone".into(), "eu-1".into())],
        heartbeat_ms: 30_000,
        depends_on: Vec::new(),
    }
}

fn config(
    component: &str,
    environment: &str,
    version: u64,
    values: &[(&str, &str)],
) -> ConfigUpdate {
    ConfigUpdate {
        component: component.into(),
        environment: environment.into(),
        version,
        values: values
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        updated_at_ms: 1_700_000_000_000 + version,
        updated_by: "ops".into(),
    }
}

/// One encoded control frame.
fn frame<T: ControlBody>(body: &T) -> Vec<u8> {
    let mut b = BytesMut::new();
    encode_control(&mut b, body).expect("control body encodes");
    b.to_vec()
}

/// A control frame of op `op` whose body is `body`, valid or not.
fn raw_frame(op: u8, body: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u32_le(u32::try_from(HEADER_LEN + body.len()).expect("small frame"));
    b.put_u8(op);
    b.put_u8(0);
    b.put_slice(body);
    b.to_vec()
}

fn err_frame(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    encode_err(&mut b, code.as_u16(), false, message);
    b.to_vec()
}

/// Answers every REGISTER with REGISTERED: heartbeat every `heartbeat_ms`, config `cfg`.
fn accept(heartbeat_ms: u32, cfg: ConfigUpdate) -> OnRegister {
    Arc::new(move |reg: &Registration| {
        frame(&Registered {
            instance_id: reg.instance_id.clone(),
            heartbeat_ms,
            unhealthy_after: 3,
            remove_after: 10,
            config: cfg.clone(),
        })
    })
}

async fn start(on_register: Option<OnRegister>, request_timeout: Duration) -> (Client, Conn) {
    let mut server = FakeServer::start(Config {
        on_register,
        ..Config::default()
    })
    .await;
    let client = ConnectOptions::new()
        .name("registration-test")
        .request_timeout(request_timeout)
        .connect(&server.addr)
        .await
        .expect("connect to the fake server");
    let conn = server.next_conn().await;
    (client, conn)
}

fn heartbeats(log: &Log) -> Vec<Heartbeat> {
    log.controls(op::HEARTBEAT)
        .iter()
        .map(|b| decode_control::<Heartbeat>(b).expect("HEARTBEAT body validates"))
        .collect()
}

fn count_op(data: &LogData, op: u8) -> usize {
    data.frames
        .iter()
        .filter(|r| matches!(r, Rec::Control { op: o, .. } if *o == op))
        .count()
}

/// Next config from a watch, bounded.
async fn next_config(w: &mut ConfigWatch) -> Option<ConfigSnapshot> {
    tokio::time::timeout(WAIT, w.next())
        .await
        .expect("config watch produced or ended within the wait")
}

// ---------------------------------------------------------------------------------------------
// Registration
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn register_sends_the_registration_and_returns_the_config() {
    let cfg = config("planner", "default", 3, &[("a", "1"), ("b", "2")]);
    let (client, conn) = start(Some(accept(60_000, cfg)), Duration::from_secs(10)).await;
    assert!(client.membership().is_none());
    assert!(matches!(client.config_watch(), Err(Error::NotRegistered)));

    let reg = registration("planner-0");
    let m = client.register(reg.clone()).await.expect("registered");
    assert_eq!(m.instance_id(), "planner-0");
    assert_eq!(m.component(), "planner");
    assert_eq!(m.registration(), &reg);
    assert_eq!(m.heartbeat_interval(), Duration::from_secs(60));
    assert_eq!((m.unhealthy_after(), m.remove_after()), (3, 10));
    assert!(m.is_active());
    let c = m.config();
    assert_eq!(c.version(), 3);
    assert_eq!(c.get("b"), Some("2"));
    assert_eq!(c.get("zz"), None);
    assert_eq!((c.component(), c.environment()), ("planner", "default"));
    assert_eq!(c.updated_by(), "ops");

    // The server read exactly the registration, followed by the PING that bounds its answer.
    let sent = conn.log.controls(op::REGISTER);
    assert_eq!(sent.len(), 1);
    assert_eq!(
        decode_control::<Registration>(&sent[0]).expect("valid"),
        reg
    );
    let frames = conn.log.frames();
    let at = frames
        .iter()
        .position(|r| matches!(r, Rec::Control { op: o, .. } if *o == op::REGISTER))
        .expect("REGISTER recorded");
    assert_eq!(frames.get(at + 1), Some(&Rec::Ping));

    let again = client
        .membership()
        .expect("registered connection has a membership");
    assert_eq!(again.instance_id(), "planner-0");
    let mut w = client.config_watch().expect("registered");
    assert_eq!(next_config(&mut w).await.map(|c| c.version()), Some(3));
}

#[tokio::test]
async fn invalid_registration_names_the_field_and_sends_nothing() {
    let cfg = config("planner", "default", 0, &[]);
    let (client, conn) = start(Some(accept(60_000, cfg)), Duration::from_secs(10)).await;
    let err = client
        .register(registration("bad id"))
        .await
        .expect_err("space in the instance id");
    assert!(
        matches!(
            err,
            Error::InvalidControl {
                what: "registration",
                field: "instance_id",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("instance_id"), "{err}");
    client.flush().await.expect("flush");
    assert!(conn.log.controls(op::REGISTER).is_empty());
    // Nothing was sent, so the connection may still register.
    client
        .register(registration("planner-0"))
        .await
        .expect("a valid registration afterwards");
}

#[tokio::test]
async fn duplicate_instance_is_a_typed_error_and_the_connection_stays_usable() {
    let cfg = config("planner", "default", 1, &[]);
    let ok = accept(60_000, cfg);
    let on_register: OnRegister = Arc::new(move |reg: &Registration| {
        if reg.instance_id == "taken" {
            err_frame(
                ErrorCode::DuplicateInstance,
                "planner/taken is held by client 3",
            )
        } else {
            ok(reg)
        }
    });
    let (client, conn) = start(Some(on_register), Duration::from_secs(10)).await;
    let err = client
        .register(registration("taken"))
        .await
        .expect_err("the instance id is taken");
    let Error::Registration(e) = &err else {
        panic!("expected a registration refusal, got {err:?}");
    };
    assert_eq!(e.code, 22);
    assert_eq!(e.error_code(), Some(ErrorCode::DuplicateInstance));
    assert_eq!(e.message, "planner/taken is held by client 3");
    assert!(!e.fatal);
    assert!(err.to_string().contains("duplicate_instance"), "{err}");

    assert!(!client.is_closed());
    client.flush().await.expect("the connection is still up");
    assert!(client.membership().is_none());
    // A refused registration may be retried with another instance id.
    let m = client
        .register(registration("free"))
        .await
        .expect("registered under a free id");
    assert_eq!(m.instance_id(), "free");
    assert_eq!(conn.log.controls(op::REGISTER).len(), 2);
}

#[tokio::test]
async fn a_server_without_the_control_plane_refuses_with_unknown_op() {
    let on_register: OnRegister = Arc::new(|_: &Registration| {
        err_frame(
            ErrorCode::UnknownOp,
            "op 0x40 is a control-plane op this server version does not support",
        )
    });
    let (client, _conn) = start(Some(on_register), Duration::from_secs(10)).await;
    let err = client
        .register(registration("planner-0"))
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, Error::Registration(e) if e.error_code() == Some(ErrorCode::UnknownOp)),
        "{err:?}"
    );
}

#[tokio::test]
async fn register_times_out_when_the_server_never_answers() {
    let (client, conn) = start(None, Duration::from_millis(300)).await;
    let started = Instant::now();
    let err = client
        .register(registration("planner-0"))
        .await
        .expect_err("no answer");
    assert!(
        matches!(err, Error::ControlTimeout { op: "REGISTER", after } if after == Duration::from_millis(300)),
        "{err:?}"
    );
    assert!(started.elapsed() < WAIT, "bounded by the request timeout");
    assert!(!client.is_closed());
    // The server's state is unknown now: no second registration on this connection.
    assert!(matches!(
        client.register(registration("planner-1")).await,
        Err(Error::AlreadyRegistered)
    ));
    assert_eq!(conn.log.controls(op::REGISTER).len(), 1);

    // A late REGISTERED is undone with a DEREGISTER, and starts no heartbeats.
    conn.send(Cmd::Raw(frame(&Registered {
        instance_id: "planner-0".into(),
        heartbeat_ms: 20,
        unhealthy_after: 3,
        remove_after: 10,
        config: config("planner", "default", 1, &[]),
    })));
    conn.log
        .wait_for("DEREGISTER after a late REGISTERED", |d| {
            count_op(d, op::DEREGISTER) == 1
        })
        .await;
    assert!(client.membership().is_none());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(heartbeats(&conn.log).is_empty());
}

#[tokio::test]
async fn an_err_after_the_registrations_pong_is_not_its_answer() {
    let (client, conn) = start(None, Duration::from_millis(800)).await;
    let pending = tokio::spawn({
        let client = client.clone();
        async move { client.register(registration("planner-0")).await }
    });
    // The PONG of the PING sent with the REGISTER is written as soon as the server reads them;
    // an ERR sent after it answers something else.
    conn.log
        .wait_for("REGISTER and its PING", |d| {
            d.frames.windows(2).any(|w| {
                matches!(
                    w[0],
                    Rec::Control {
                        op: op::REGISTER,
                        ..
                    }
                ) && w[1] == Rec::Ping
            })
        })
        .await;
    conn.send(Cmd::Raw(err_frame(
        ErrorCode::DuplicateInstance,
        "unrelated",
    )));
    let result = tokio::time::timeout(WAIT, pending)
        .await
        .expect("register ends within the wait")
        .expect("register task");
    assert!(
        matches!(result, Err(Error::ControlTimeout { op: "REGISTER", .. })),
        "{result:?}"
    );
    let last = client.last_error().expect("the ERR was recorded");
    assert_eq!(last.error_code(), Some(ErrorCode::DuplicateInstance));
}

#[tokio::test]
async fn a_second_register_call_errors_without_sending() {
    let cfg = config("planner", "default", 1, &[]);
    let (client, conn) = start(Some(accept(60_000, cfg)), Duration::from_secs(10)).await;
    let _m = client
        .register(registration("planner-0"))
        .await
        .expect("first");
    for id in ["planner-0", "planner-1"] {
        let err = client
            .register(registration(id))
            .await
            .expect_err("second registration");
        assert!(matches!(err, Error::AlreadyRegistered), "{err:?}");
    }
    client.flush().await.expect("flush");
    assert_eq!(conn.log.controls(op::REGISTER).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_register_calls_send_one_registration() {
    let cfg = config("planner", "default", 1, &[]);
    let (client, conn) = start(Some(accept(60_000, cfg)), Duration::from_secs(10)).await;
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.register(registration(&format!("p-{i}"))).await })
        })
        .collect();
    let mut registered = 0;
    for call in calls {
        match call.await.expect("register task") {
            Ok(_) => registered += 1,
            Err(Error::AlreadyRegistered) => {}
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    assert_eq!(registered, 1);
    client.flush().await.expect("flush");
    assert_eq!(conn.log.controls(op::REGISTER).len(), 1);
}

#[tokio::test]
async fn closing_fails_a_pending_registration_at_once() {
    let mut server = FakeServer::start(Config::default()).await;
    // Reconnect off: the drop closes the client (with it on, the registration fails with
    // `Disconnected`; see `tests/reconnect.rs`).
    let client = ConnectOptions::new()
        .name("registration-test")
        .request_timeout(Duration::from_secs(60))
        .reconnect(false)
        .connect(&server.addr)
        .await
        .expect("connect to the fake server");
    let conn = server.next_conn().await;
    let pending = tokio::spawn({
        let client = client.clone();
        async move { client.register(registration("planner-0")).await }
    });
    conn.log
        .wait_for("REGISTER", |d| count_op(d, op::REGISTER) == 1)
        .await;
    conn.send(Cmd::Close);
    let result = tokio::time::timeout(WAIT, pending)
        .await
        .expect("register fails long before its 60 s timeout")
        .expect("register task");
    assert!(matches!(result, Err(Error::Closed)), "{result:?}");
    assert!(matches!(
        client.register(registration("planner-0")).await,
        Err(Error::Closed)
    ));
}

// ---------------------------------------------------------------------------------------------
// Heartbeats and deregistration
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn heartbeats_follow_the_servers_interval_and_carry_the_load() {
    let cfg = config("planner", "default", 1, &[]);
    // The registration asks for 30 s; the server's 50 ms is what counts.
    let (client, conn) = start(Some(accept(50, cfg)), Duration::from_secs(10)).await;
    let m = client
        .register(registration("planner-0"))
        .await
        .expect("registered");
    assert_eq!(m.heartbeat_interval(), Duration::from_millis(50));
    m.set_load(3, 9);
    m.record_latency(Duration::from_millis(2));
    let loaded = |h: &Heartbeat| h.in_flight == 3 && h.queue_depth == 9 && h.latency_us == 2000;
    // Two heartbeats with the load within the wait: at the registration's 30 s that is impossible.
    conn.log
        .wait_for("two heartbeats carrying the load", |d| {
            d.frames
                .iter()
                .filter_map(|r| match r {
                    Rec::Control {
                        op: op::HEARTBEAT,
                        body,
                    } => decode_control::<Heartbeat>(body).ok(),
                    _ => None,
                })
                .filter(|h| loaded(h))
                .count()
                >= 2
        })
        .await;
    let beats = heartbeats(&conn.log);
    let last = beats.last().expect("heartbeats");
    assert!(loaded(last), "{last:?}");
    if cfg!(target_os = "linux") {
        assert!(last.mem_bytes > 0, "resident memory from /proc: {last:?}");
    }
    assert!(last.cpu_permille <= 64_000);

    // The load can change between heartbeats, also through a detached reporter.
    m.load_reporter().set_load(0, 1);
    conn.log
        .wait_for("a heartbeat with the new load", |d| {
            d.frames.iter().any(|r| match r {
                Rec::Control {
                    op: op::HEARTBEAT,
                    body,
                } => decode_control::<Heartbeat>(body)
                    .is_ok_and(|h| h.in_flight == 0 && h.queue_depth == 1),
                _ => false,
            })
        })
        .await;
}

// Multi-threaded: the heartbeat task and the deregistering caller run in parallel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregister_sends_deregister_and_stops_heartbeats() {
    let cfg = config("planner", "default", 1, &[]);
    let (client, conn) = start(Some(accept(50, cfg)), Duration::from_secs(10)).await;
    let m = client
        .register(registration("planner-0"))
        .await
        .expect("registered");
    let mut w = m.config_watch();
    assert_eq!(next_config(&mut w).await.map(|c| c.version()), Some(1));
    conn.log
        .wait_for("a heartbeat", |d| count_op(d, op::HEARTBEAT) >= 1)
        .await;

    m.deregister().await.expect("deregistered");
    let frames = conn.log.frames();
    let at = frames
        .iter()
        .position(|r| {
            matches!(
                r,
                Rec::Control {
                    op: op::DEREGISTER,
                    ..
                }
            )
        })
        .expect("the server read DEREGISTER before deregister returned");
    assert_eq!(
        frames[at],
        Rec::Control {
            op: op::DEREGISTER,
            body: Vec::new()
        }
    );
    assert!(!m.is_active());
    assert!(client.membership().is_none());
    assert_eq!(next_config(&mut w).await, None, "the config stream ends");

    // Six intervals later: nothing after the DEREGISTER but the flush's PING.
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.flush().await.expect("flush");
    let after: Vec<Rec> = conn.log.frames()[at + 1..].to_vec();
    assert!(
        after.iter().all(|r| *r == Rec::Ping),
        "frames after DEREGISTER: {after:?}"
    );

    m.deregister().await.expect("deregistering twice is fine");
    assert_eq!(conn.log.controls(op::DEREGISTER).len(), 1);
    assert!(matches!(
        client.register(registration("planner-0")).await,
        Err(Error::AlreadyRegistered)
    ));
}

#[tokio::test]
async fn closing_the_client_stops_heartbeats_and_ends_config_streams() {
    let cfg = config("planner", "default", 1, &[]);
    let (client, conn) = start(Some(accept(30, cfg)), Duration::from_secs(10)).await;
    let m = client
        .register(registration("planner-0"))
        .await
        .expect("registered");
    let mut w = client.config_watch().expect("registered");
    assert!(next_config(&mut w).await.is_some());
    client.close().await.expect("close");
    assert_eq!(next_config(&mut w).await, None);
    assert!(!m.is_active());
    conn.log.wait_for("EOF", |d| d.eof).await;
    m.deregister()
        .await
        .expect("deregistering a closed connection is fine");
}

// ---------------------------------------------------------------------------------------------
// Config push
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn config_push_reaches_config_watch_in_order_and_older_versions_are_ignored() {
    let cfg = config("planner", "default", 2, &[("mode", "fast")]);
    let (client, conn) = start(Some(accept(60_000, cfg)), Duration::from_secs(10)).await;
    let m = client
        .register(registration("planner-0"))
        .await
        .expect("registered");
    let mut w = m.config_watch();
    let first = next_config(&mut w).await.expect("current config");
    assert_eq!((first.version(), first.get("mode")), (2, Some("fast")));

    conn.send(Cmd::Raw(frame(&config(
        "planner",
        "default",
        3,
        &[("mode", "safe")],
    ))));
    let v3 = next_config(&mut w).await.expect("v3");
    assert_eq!((v3.version(), v3.get("mode")), (3, Some("safe")));

    // Older, equal, another component's, another environment's: all ignored.
    let mut ignored = Vec::new();
    ignored.extend(frame(&config("planner", "default", 1, &[("mode", "old")])));
    ignored.extend(frame(&config("planner", "default", 3, &[("mode", "same")])));
    ignored.extend(frame(&config(
        "router",
        "default",
        9,
        &[("mode", "router")],
    )));
    ignored.extend(frame(&config(
        "planner",
        "staging",
        9,
        &[("mode", "staging")],
    )));
    conn.send(Cmd::Raw(ignored));
    conn.send(Cmd::Raw(frame(&config(
        "planner",
        "default",
        4,
        &[("mode", "fast"), ("retries", "2")],
    ))));
    let v4 = next_config(&mut w).await.expect("v4");
    assert_eq!(v4.version(), 4);
    assert_eq!(v4.get("retries"), Some("2"));
    assert_eq!(m.config().version(), 4);

    // A new watch starts at the current version.
    let mut w2 = client.config_watch().expect("registered");
    assert_eq!(next_config(&mut w2).await.map(|c| c.version()), Some(4));

    // A later push of an older version still changes nothing.
    conn.send(Cmd::Raw(frame(&config("planner", "default", 3, &[]))));
    client.flush().await.expect("flush");
    assert_eq!(m.config().version(), 4);
    conn.send(Cmd::Raw(frame(&config("planner", "default", 5, &[]))));
    assert_eq!(next_config(&mut w).await.map(|c| c.version()), Some(5));
    assert_eq!(next_config(&mut w2).await.map(|c| c.version()), Some(5));
}

#[tokio::test]
async fn garbage_control_bodies_are_ignored_without_closing_the_connection() {
    let cfg = config("planner", "default", 1, &[]);
    let (client, conn) = start(Some(accept(60_000, cfg)), Duration::from_secs(10)).await;
    let m = client
        .register(registration("planner-0"))
        .await
        .expect("registered");
    let mut w = m.config_watch();
    assert_eq!(next_config(&mut w).await.map(|c| c.version()), Some(1));

    let mut garbage = Vec::new();
    garbage.extend(raw_frame(op::CONFIG, &[0xff; 40]));
    garbage.extend(raw_frame(op::CONFIG, &[]));
    let valid = frame(&config("planner", "default", 7, &[]));
    // A valid body cut short, and one with its bytes flipped.
    garbage.extend(raw_frame(op::CONFIG, &valid[HEADER_LEN..valid.len() - 5]));
    let flipped: Vec<u8> = valid[HEADER_LEN..].iter().map(|b| b ^ 0xa5).collect();
    garbage.extend(raw_frame(op::CONFIG, &flipped));
    garbage.extend(raw_frame(op::DISCOVERED, &[0x01; 17]));
    garbage.extend(raw_frame(op::REGISTERED, &[0x02; 9]));
    garbage.extend(raw_frame(0x7e, b"a future op"));
    conn.send(Cmd::Raw(garbage));
    conn.send(Cmd::Raw(frame(&config(
        "planner",
        "default",
        2,
        &[("k", "v")],
    ))));

    let next = next_config(&mut w)
        .await
        .expect("the valid push after the garbage");
    assert_eq!((next.version(), next.get("k")), (2, Some("v")));
    assert!(!client.is_closed());
    client.flush().await.expect("the connection is still up");
    assert!(m.is_active());
    assert!(client.fatal_error().is_none());
}

// ---------------------------------------------------------------------------------------------
// Discovery
// ---------------------------------------------------------------------------------------------

fn instance(component: &str, id: &str, healthy: bool) -> InstanceInfo {
    InstanceInfo {
        component: component.into(),
        instance_id: id.into(),
        version: "1".into(),
        environment: "default".into(),
        capabilities: vec!["beta".into()],
        healthy,
        health_score: if healthy { 97 } else { 10 },
        load: Heartbeat {
            in_flight: 4,
            ..Heartbeat::default()
        },
        ..InstanceInfo::default()
    }
}

#[tokio::test]
async fn discover_round_trip_with_concurrent_requests_answered_out_of_order() {
    // Not registered: discovery does not need it.
    let (client, conn) = start(None, Duration::from_secs(10)).await;
    let by_component = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .discover(DiscoverQuery::new().component("alpha"))
                .await
        }
    });
    let by_capability = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .discover(
                    DiscoverQuery::new()
                        .capability("beta")
                        .include_unhealthy(true),
                )
                .await
        }
    });
    conn.log
        .wait_for("two DISCOVERs", |d| count_op(d, op::DISCOVER) == 2)
        .await;
    let sent: Vec<Discover> = conn
        .log
        .controls(op::DISCOVER)
        .iter()
        .map(|b| decode_control::<Discover>(b).expect("DISCOVER validates"))
        .collect();
    assert_ne!(sent[0].request_id, sent[1].request_id);
    let alpha = sent
        .iter()
        .find(|d| d.component == "alpha")
        .expect("component query");
    assert_eq!(
        (alpha.capability.as_str(), alpha.include_unhealthy),
        ("", false)
    );
    let beta = sent
        .iter()
        .find(|d| d.capability == "beta")
        .expect("capability query");
    assert_eq!(
        (beta.component.as_str(), beta.include_unhealthy),
        ("", true)
    );

    let alpha_answer = vec![instance("alpha", "alpha-0", true)];
    let beta_answer = vec![
        instance("alpha", "alpha-0", true),
        instance("gamma", "gamma-3", false),
    ];
    // The later request is answered first; a DISCOVERED nobody waits for is ignored.
    let mut answers = frame(&Discovered {
        request_id: beta.request_id,
        truncated: false,
        instances: beta_answer.clone(),
    });
    answers.extend(frame(&Discovered {
        request_id: 999_999,
        truncated: false,
        instances: vec![instance("zeta", "zeta-0", true)],
    }));
    answers.extend(frame(&Discovered {
        request_id: alpha.request_id,
        truncated: false,
        instances: alpha_answer.clone(),
    }));
    conn.send(Cmd::Raw(answers));

    let got_alpha = tokio::time::timeout(WAIT, by_component)
        .await
        .expect("within the wait")
        .expect("task")
        .expect("discovered");
    let got_beta = tokio::time::timeout(WAIT, by_capability)
        .await
        .expect("within the wait")
        .expect("task")
        .expect("discovered");
    assert_eq!(got_alpha, alpha_answer);
    assert_eq!(got_beta, beta_answer);

    // Invalid filters are refused before anything is sent.
    let err = client
        .discover(DiscoverQuery::new().capability("no spaces"))
        .await
        .expect_err("invalid capability");
    assert!(
        matches!(
            err,
            Error::InvalidControl {
                field: "capability",
                ..
            }
        ),
        "{err:?}"
    );
    client.flush().await.expect("flush");
    assert_eq!(conn.log.controls(op::DISCOVER).len(), 2);
}

#[tokio::test]
async fn discover_times_out_without_an_answer() {
    let (client, conn) = start(None, Duration::from_millis(200)).await;
    let err = client
        .discover(DiscoverQuery::new())
        .await
        .expect_err("no answer");
    assert!(
        matches!(err, Error::ControlTimeout { op: "DISCOVER", .. }),
        "{err:?}"
    );
    // A late answer is dropped quietly and the connection stays up.
    let late = decode_control::<Discover>(&conn.log.controls(op::DISCOVER)[0]).expect("valid");
    conn.send(Cmd::Raw(frame(&Discovered {
        request_id: late.request_id,
        truncated: false,
        instances: Vec::new(),
    })));
    client.flush().await.expect("flush");
    assert!(!client.is_closed());
}
