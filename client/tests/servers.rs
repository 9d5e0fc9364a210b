//! Integration tests of [`ConnectOptions::servers`] and [`ConnectOptions::connect_servers`]
//! against the fake server (`common/mod.rs`): the client connects to the first address that
//! accepts it, in list order. Loopback only; every wait bounded.

mod common;

use common::*;

use std::time::Duration;

use agentwire_client::{ConnectOptions, Error};
use tokio::net::TcpListener;

/// A loopback address nothing listens on (bound, then released).
async fn dead_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("bound address").to_string();
    drop(listener);
    addr
}

#[tokio::test]
async fn first_server_down_connects_to_the_second() {
    let mut server = FakeServer::start(Config::default()).await;
    let down = dead_addr().await;
    let client = ConnectOptions::new()
        .name("test-client")
        .connect_timeout(Duration::from_secs(2))
        .servers([down.clone(), server.addr.clone()])
        .connect_servers()
        .await
        .expect("the second address accepts the client");
    let conn = server.next_conn().await;
    assert_eq!(client.server_info().server_id, "fake-server");
    let mut sub = client.subscribe("a.b").await.expect("subscribe");
    client.flush().await.expect("flush");
    conn.log
        .wait_for("the SUB", |l| {
            l.frames
                .iter()
                .any(|f| matches!(f, Rec::Sub { subject, .. } if subject == "a.b"))
        })
        .await;
    client.publish("a.b", "hi").await.expect("publish");
    let msg = next(&mut sub).await.expect("the routed message");
    assert_eq!(msg.payload, "hi");
}

#[tokio::test]
async fn first_server_up_is_used() {
    let mut first = FakeServer::start(Config::default()).await;
    let mut second = FakeServer::start(Config::default()).await;
    let client = ConnectOptions::new()
        .servers([first.addr.clone(), second.addr.clone()])
        .connect_servers()
        .await
        .expect("the first address accepts the client");
    let _conn = first.next_conn().await;
    assert!(
        tokio::time::timeout(Duration::from_millis(200), second.conns.recv())
            .await
            .is_err(),
        "the second server saw no connection"
    );
    client.close().await.expect("close");
}

#[tokio::test]
async fn all_servers_down_is_the_last_error() {
    let a = dead_addr().await;
    let b = dead_addr().await;
    let err = ConnectOptions::new()
        .connect_timeout(Duration::from_secs(2))
        .servers([a, b.clone()])
        .connect_servers()
        .await
        .expect_err("nothing listens");
    match err {
        Error::Connect { addr, .. } => assert_eq!(addr, b),
        Error::ConnectTimeout { addr, .. } => assert_eq!(addr, b),
        other => panic!("unexpected error: {other}"),
    }
}

#[tokio::test]
async fn empty_server_list_is_a_typed_error() {
    let err = ConnectOptions::new()
        .connect_servers()
        .await
        .expect_err("no servers");
    assert!(matches!(err, Error::NoServers), "{err}");
}
