//! Shared helpers for the broker's integration tests: start a real broker on 127.0.0.1:0, and a
//! raw protocol client for sending exactly the bytes a test wants (bad input included).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use agentwire_broker::{Config, ServerHandle};
use agentwire_protocol::{self as proto, Frame, HelloFrame};
use bytes::{Buf, BytesMut};
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

/// Starts a broker with `cfg`.
pub fn start(cfg: Config) -> ServerHandle {
    agentwire_broker::start(cfg).expect("broker starts on 127.0.0.1:0")
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
