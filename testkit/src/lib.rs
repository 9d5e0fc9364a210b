//! agentwire-testkit: what the integration tests of every crate share: test configs on
//! 127.0.0.1:0, a raw protocol client for sending exactly the bytes a test wants (bad input
//! included), JSON calls on the admin API, free ports, temporary directories, waiting for a
//! process or a condition. Starting a broker is each crate's own (the data plane alone, or with
//! the admin plane); running the `agentwire` binary takes its path (`CARGO_BIN_EXE_agentwire`
//! in the CLI crate's tests).

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output};
use std::time::Duration;

use agentwire_broker::Config;
use agentwire_protocol::{self as proto, Frame, HelloFrame};
use bytes::{Buf, BytesMut};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for something that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(10);

/// A config for tests: loopback, ephemeral port, `shards` shards.
pub fn config(shards: usize) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().expect("literal address"),
        shards,
        shutdown_grace_ms: 1000,
        ..Config::default()
    }
}

/// A test config with the admin API on an ephemeral loopback port and heartbeats every
/// `heartbeat_ms`.
pub fn admin_config(heartbeat_ms: u32) -> Config {
    let mut c = config(2);
    c.admin.listen = Some("127.0.0.1:0".parse().expect("literal"));
    c.admin.heartbeat_ms = heartbeat_ms;
    c
}

/// [`admin_config`] with 100 ms heartbeats, unhealthy after 5 missed and removed only after 50,
/// so that instances stay listed through slow moments on shared machines.
pub fn admin_config_lasting() -> Config {
    let mut c = admin_config(100);
    c.admin.unhealthy_after = 5;
    c.admin.remove_after = 50;
    c
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr")
}

/// Waits until every one of `addrs` accepts TCP connections; panics with `what` after
/// `within`.
pub fn wait_listening(addrs: &[SocketAddr], within: Duration, what: &str) {
    let deadline = std::time::Instant::now() + within;
    while addrs
        .iter()
        .any(|a| std::net::TcpStream::connect(a).is_err())
    {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends signal `sig` (`TERM`, `INT`, ...) to `child` with kill(1).
pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(ok.success());
}

/// Waits for `child` to exit and returns its status; panics with `what` after `within`.
pub fn wait_exit(child: &mut Child, within: Duration, what: &str) -> ExitStatus {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process's stdout followed by its stderr, as text.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A new directory `agentwire-{name}-{pid}-{nanos}` under the system temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "agentwire-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Blocking HTTP call with a JSON body (run from `spawn_blocking` in async tests): the status
/// and the JSON answer (a string when the answer is not JSON). `timeout` bounds the whole call.
pub fn http_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Option<Duration>,
) -> (u16, Value) {
    let url = format!("http://{addr}{path}");
    let mut req = ureq::request(method, &url).set("Content-Type", "application/json");
    if let Some(t) = timeout {
        req = req.timeout(t);
    }
    let r = match body {
        Some(b) => req.send_string(b),
        None => req.call(),
    };
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let status = resp.status();
    let text = resp.into_string().expect("body");
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

/// [`http_json`] from async tests, on a blocking thread.
pub async fn ahttp_json(
    addr: SocketAddr,
    method: &'static str,
    path: &str,
    body: Option<String>,
    timeout: Option<Duration>,
) -> (u16, Value) {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || http_json(addr, method, &path, body.as_deref(), timeout))
        .await
        .expect("http task")
}

/// A frame read by [`Raw`], kept as its bytes.
#[derive(Debug, Clone)]
pub struct RawFrame(pub Vec<u8>);

impl RawFrame {
    /// Parses the frame.
    pub fn parse(&self) -> Frame<'_> {
        proto::parse_frame(&self.0).expect("the broker sends well-formed frames")
    }
    /// The op code.
    pub fn op(&self) -> u8 {
        self.0[4]
    }
}

/// A protocol client that sends raw bytes and reads raw frames.
pub struct Raw {
    /// The connection to the broker.
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    /// Connects and reads INFO (no HELLO yet).
    pub async fn connect_no_hello(addr: SocketAddr) -> (Raw, RawFrame) {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect to test broker");
        stream.set_nodelay(true).expect("nodelay");
        let mut r = Raw {
            stream,
            buf: BytesMut::new(),
        };
        let info = r.next().await.expect("INFO frame");
        assert_eq!(info.op(), proto::op::INFO);
        (r, info)
    }

    /// Connects, reads INFO, sends HELLO and completes a PING/PONG.
    pub async fn connect(addr: SocketAddr) -> Raw {
        let (mut r, _) = Raw::connect_no_hello(addr).await;
        r.hello().await;
        r.ping_pong().await;
        r
    }

    /// Sends HELLO with the usual features.
    pub async fn hello(&mut self) {
        let mut b = BytesMut::new();
        proto::encode_hello(
            &mut b,
            &HelloFrame {
                version: proto::PROTOCOL_VERSION,
                features: proto::features::HEADERS | proto::features::NO_RESPONDERS,
                name: b"raw-test",
                token: b"",
                public_key: b"",
                signature: b"",
            },
        )
        .expect("encode hello");
        self.send(&b).await;
    }

    /// Writes bytes.
    pub async fn send(&mut self, b: &[u8]) {
        self.stream.write_all(b).await.expect("write to broker");
    }

    /// Sends a PING and waits for its PONG, returning every other frame read meanwhile.
    pub async fn ping_pong(&mut self) -> Vec<RawFrame> {
        let mut b = BytesMut::new();
        proto::encode_ping(&mut b);
        self.send(&b).await;
        let mut others = Vec::new();
        loop {
            let f = self.next().await.expect("frame before PONG");
            if f.op() == proto::op::PONG {
                return others;
            }
            others.push(f);
        }
    }

    /// Sends SUB.
    pub async fn sub(&mut self, sid: u32, subject: &str, queue: &str) {
        let mut b = BytesMut::new();
        proto::encode_sub(&mut b, sid, subject.as_bytes(), queue.as_bytes()).expect("encode sub");
        self.send(&b).await;
    }

    /// Sends PUB.
    pub async fn publish(&mut self, subject: &str, payload: &[u8]) {
        let mut b = BytesMut::new();
        proto::encode_pub(&mut b, subject.as_bytes(), b"", b"", payload).expect("encode pub");
        self.send(&b).await;
    }

    /// Reads the next frame, or `None` at EOF; panics after [`WAIT`].
    pub async fn next(&mut self) -> Option<RawFrame> {
        tokio::time::timeout(WAIT, self.next_inner())
            .await
            .expect("a frame or EOF within the wait")
    }

    async fn next_inner(&mut self) -> Option<RawFrame> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if self.buf.len() >= len {
                    let f = self.buf[..len].to_vec();
                    self.buf.advance(len);
                    return Some(RawFrame(f));
                }
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads frames until an ERR and returns (code, fatal, message).
    pub async fn expect_err(&mut self) -> (u16, bool, String) {
        loop {
            let f = self.next().await.expect("an ERR frame before EOF");
            if let Frame::Err(e) = f.parse() {
                return (
                    e.code,
                    e.fatal,
                    String::from_utf8_lossy(e.message).into_owned(),
                );
            }
        }
    }

    /// Asserts the broker closes the connection (EOF) soon, skipping other frames.
    pub async fn expect_closed(&mut self) {
        while self.next().await.is_some() {}
    }
}

/// Polls `f` until it returns true, panicking after [`WAIT`].
pub async fn eventually(mut f: impl FnMut() -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
