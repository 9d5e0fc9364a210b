//! Authentication and permissions against a real broker on 127.0.0.1: tokens, argon2 hashes,
//! ed25519 keys; each failure with a clear error; denied publish and subscribe keep the
//! connection; replies to received requests allowed; reload removes users and changes rules.

mod common;

use std::time::Duration;

use agentwire_broker::config::UserConfig;
use agentwire_client::{ConnectOptions, Credentials, Error, ErrorCode, HandshakeError};
use agentwire_protocol::{self as proto, Frame, HelloFrame};
use bytes::BytesMut;
use common::{eventually, Raw, WAIT};

fn planner() -> UserConfig {
    let mut u = UserConfig::with_token("planner", "s3cret-planner");
    u.publish = Some(vec!["tasks.>".into()]);
    u.subscribe = Some(vec!["results.>".into(), "_INBOX.>".into()]);
    u.components = Some(vec!["planner".into()]);
    u
}

fn worker(key: &Credentials) -> UserConfig {
    let mut u = UserConfig::with_token("worker", "unused");
    u.token = None;
    u.public_key = key.public_key();
    u.publish = Some(vec!["results.>".into()]);
    u.subscribe = Some(vec!["tasks.>".into()]);
    u
}

fn opts() -> ConnectOptions {
    ConnectOptions::new()
        .reconnect(false)
        .connect_timeout(Duration::from_secs(5))
}

/// The server's refusal of a handshake, or a panic naming what happened instead.
fn refusal(r: Result<agentwire_client::Client, Error>) -> (u16, String) {
    match r {
        Err(Error::Handshake {
            source: HandshakeError::Rejected(e),
            ..
        }) => (e.code, e.message.clone()),
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, the client was admitted"),
    }
}

#[tokio::test]
async fn tokens_keys_and_their_failures() {
    let key = Credentials::generate();
    let mut hashed = UserConfig::with_token("hashed", "x");
    hashed.token = None;
    hashed.token_hash = Some(agentwire_broker::auth::hash_token("hunter2-hunter2").expect("hash"));
    let mut cfg = common::config(2);
    cfg.users = vec![planner(), worker(&key), hashed];
    let server = common::start(cfg);
    let addr = server.local_addr().to_string();

    let (code, msg) = refusal(opts().connect(&addr).await);
    assert_eq!(code, ErrorCode::AuthFailed.as_u16());
    assert!(msg.contains("authentication required"), "{msg}");

    let (code, msg) = refusal(opts().token("wrong-token").connect(&addr).await);
    assert_eq!(code, ErrorCode::AuthFailed.as_u16());
    assert!(
        msg.contains("unknown token") && !msg.contains("wrong-token"),
        "{msg}"
    );

    let stranger = Credentials::generate();
    let (code, msg) = refusal(opts().credentials(stranger).connect(&addr).await);
    assert_eq!(code, ErrorCode::AuthFailed.as_u16());
    assert!(msg.contains("not a configured user"), "{msg}");

    // The right key, but a signature of something else than this connection's nonce.
    let (mut raw, info) = Raw::connect_no_hello(server.local_addr()).await;
    let Frame::Info(i) = info.parse() else {
        panic!("INFO first")
    };
    assert_eq!(i.nonce.len(), 24, "a nonce when a user has a public key");
    let Credentials::Key(sk) = &key else {
        panic!("generate makes a key")
    };
    let sig = ed25519_dalek::Signer::sign(sk, b"agentwire-auth-v1:some other nonce");
    let mut b = BytesMut::new();
    proto::encode_hello(
        &mut b,
        &HelloFrame {
            version: proto::PROTOCOL_VERSION,
            features: 0,
            name: b"replayer",
            token: b"",
            public_key: sk.verifying_key().as_bytes(),
            signature: &sig.to_bytes(),
        },
    )
    .expect("encode");
    raw.send(&b).await;
    let (code, fatal, msg) = raw.expect_err().await;
    assert_eq!(code, ErrorCode::AuthFailed.as_u16());
    assert!(fatal);
    assert!(msg.contains("does not verify"), "{msg}");
    raw.expect_closed().await;

    // And the good ones.
    let p = opts()
        .token("s3cret-planner")
        .connect(&addr)
        .await
        .expect("planner");
    let w = opts()
        .credentials(key)
        .connect(&addr)
        .await
        .expect("worker");
    let h = opts()
        .token("hunter2-hunter2")
        .connect(&addr)
        .await
        .expect("hashed");
    p.flush().await.expect("planner flush");
    w.flush().await.expect("worker flush");
    h.flush().await.expect("hashed flush");
    server.shutdown();
    server.join();
}

#[tokio::test]
async fn denied_operations_keep_the_connection_and_responses_are_allowed() {
    let key = Credentials::generate();
    let mut cfg = common::config(2);
    cfg.users = vec![planner(), worker(&key)];
    let server = common::start(cfg);
    let addr = server.local_addr().to_string();
    let p = opts()
        .token("s3cret-planner")
        .connect(&addr)
        .await
        .expect("planner");
    let w = opts()
        .credentials(key)
        .connect(&addr)
        .await
        .expect("worker");

    // Denied subscribe: an ERR naming the subject, the connection stays.
    let _denied = p.subscribe("tasks.>").await.expect("the SUB is sent");
    p.flush().await.expect("flush");
    eventually(
        || {
            p.last_error()
                .is_some_and(|e| e.code == ErrorCode::PermissionDenied.as_u16())
        },
        "planner sees permission_denied for its SUB",
    )
    .await;
    let e = p.last_error().expect("error");
    assert!(
        e.message.contains("subscribe") && e.message.contains("tasks.>"),
        "{}",
        e.message
    );
    assert!(!e.fatal);

    // Denied publish: an ERR naming the subject, nothing delivered, the connection stays.
    let mut all = w
        .subscribe("tasks.>")
        .await
        .expect("worker may subscribe to tasks.>");
    w.flush().await.expect("flush");
    p.publish("results.forged", "x").await.expect("sent");
    p.flush().await.expect("flush");
    eventually(
        || {
            p.last_error()
                .is_some_and(|e| e.message.contains("results.forged"))
        },
        "planner sees permission_denied for its PUB",
    )
    .await;
    p.publish("tasks.one", "job")
        .await
        .expect("allowed publish");
    let m = tokio::time::timeout(WAIT, all.next())
        .await
        .expect("delivery in time")
        .expect("stream open");
    assert_eq!(&*m.subject, "tasks.one");

    // Replies: the worker may publish only to results.>, but may answer a request it got.
    let mut service = w.subscribe("tasks.plan").await.expect("sub");
    w.flush().await.expect("flush");
    let responder = w.clone();
    let serving = tokio::spawn(async move {
        if let Some(req) = service.next().await {
            if let Some(reply) = req.reply {
                let _ = responder.publish(&reply, "planned").await;
                let _ = responder.flush().await;
                // A second answer to the same request is not allowed.
                let _ = responder.publish(&reply, "again").await;
                let _ = responder.flush().await;
            }
        }
    });
    let answer = p
        .request("tasks.plan", "go", Duration::from_secs(5))
        .await
        .expect("the worker's reply is allowed");
    assert_eq!(answer.payload, "planned");
    serving.await.expect("served");
    eventually(
        || {
            w.last_error()
                .is_some_and(|e| e.code == ErrorCode::PermissionDenied.as_u16())
        },
        "a second reply is denied",
    )
    .await;

    // Registration: only the components the user may register.
    let reg = |c: &str| agentwire_client::Registration {
        component: c.into(),
        instance_id: format!("{c}-0"),
        ..Default::default()
    };
    let denied = p.register(reg("billing")).await;
    assert!(denied.is_err(), "planner may not register billing");
    let ok = p
        .register(reg("planner"))
        .await
        .expect("planner may register planner");
    drop(ok);
    server.shutdown();
    server.join();
}

#[tokio::test]
async fn reload_closes_removed_users_and_applies_new_rules() {
    let mut cfg = common::config(2);
    let mut a = UserConfig::with_token("alice", "alice-token-1");
    let b = UserConfig::with_token("bob", "bob-token-1");
    cfg.users = vec![a.clone(), b];
    let server = common::start(cfg.clone());
    let addr = server.local_addr().to_string();
    let alice = opts()
        .token("alice-token-1")
        .connect(&addr)
        .await
        .expect("alice");
    let bob = opts()
        .token("bob-token-1")
        .connect(&addr)
        .await
        .expect("bob");
    let mut sub = alice.subscribe("news.>").await.expect("sub");
    alice.flush().await.expect("flush");
    bob.flush().await.expect("flush");

    a.publish = Some(vec!["news.alice.>".into()]);
    cfg.users = vec![a];
    let report = server.reload(&cfg).expect("valid reload");
    assert_eq!(report.users, 1);
    eventually(|| bob.is_closed(), "bob's connection is closed").await;
    let e = bob.fatal_error().expect("bob got a fatal error");
    assert_eq!(e.code, ErrorCode::AuthFailed.as_u16());
    assert!(e.message.contains("removed"), "{}", e.message);
    let (code, _) = refusal(opts().token("bob-token-1").connect(&addr).await);
    assert_eq!(code, ErrorCode::AuthFailed.as_u16());

    // Alice stays, under her new rule.
    alice.publish("news.general", "x").await.expect("sent");
    alice.flush().await.expect("flush");
    eventually(
        || {
            alice
                .last_error()
                .is_some_and(|e| e.code == ErrorCode::PermissionDenied.as_u16())
        },
        "the new publish rule applies at once",
    )
    .await;
    alice.publish("news.alice.1", "y").await.expect("sent");
    let m = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("delivery in time")
        .expect("open");
    assert_eq!(&*m.subject, "news.alice.1");

    // A bad reload changes nothing.
    let mut bad = cfg.clone();
    bad.users[0].publish = Some(vec!["a..b".into()]);
    assert!(server.reload(&bad).is_err());
    alice.publish("news.alice.2", "z").await.expect("sent");
    let m = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("delivery in time")
        .expect("open");
    assert_eq!(&*m.subject, "news.alice.2");
    server.shutdown();
    server.join();
}
