//! `ServerHandle::attach`, the in-memory entry: a connection handed over as one end of a Unix
//! socket pair gets INFO, does the handshake, and exchanges messages with a TCP client (both
//! ways, across shards); it counts against `max_connections` until it closes; a stopped server
//! refuses it.

mod common;

use std::os::unix::net::UnixStream as StdUnix;
use std::time::Duration;

use agentwire_broker::{AttachError, ServerHandle};
use agentwire_protocol::{self as proto, Frame, HelloFrame};
use bytes::{Buf, BytesMut};
use common::{eventually, Raw, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// A raw protocol client on an attached socket pair.
struct Attached {
    stream: UnixStream,
    buf: BytesMut,
}

impl Attached {
    /// Attaches one end of a new socket pair to `h` and keeps the other.
    fn open(h: &ServerHandle) -> Attached {
        let (ours, theirs) = StdUnix::pair().expect("socket pair");
        h.attach(theirs).expect("the broker takes the connection");
        ours.set_nonblocking(true).expect("non-blocking");
        Attached {
            stream: UnixStream::from_std(ours).expect("register with tokio"),
            buf: BytesMut::new(),
        }
    }

    async fn send(&mut self, b: &[u8]) {
        self.stream.write_all(b).await.expect("write to broker");
    }

    /// The next frame's bytes, or `None` at end of stream; panics after [`WAIT`].
    async fn next(&mut self) -> Option<Vec<u8>> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some((_, used)) =
                    proto::decode_frame(&self.buf, usize::MAX).expect("valid frames")
                {
                    let f = self.buf[..used].to_vec();
                    self.buf.advance(used);
                    return Some(f);
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("a frame or end of stream within the wait")
    }

    /// Reads INFO, sends HELLO, and completes a PING/PONG.
    async fn handshake(&mut self) {
        let info = self.next().await.expect("INFO");
        assert_eq!(info[4], proto::op::INFO, "the first frame is INFO");
        let mut b = BytesMut::new();
        proto::encode_hello(
            &mut b,
            &HelloFrame {
                version: proto::PROTOCOL_VERSION,
                features: proto::features::HEADERS,
                name: b"attached",
                token: b"",
                public_key: b"",
                signature: b"",
            },
        )
        .expect("encode hello");
        proto::encode_ping(&mut b);
        self.send(&b).await;
        let pong = self.next().await.expect("PONG");
        assert_eq!(pong[4], proto::op::PONG);
    }
}

#[tokio::test]
async fn attached_and_tcp_clients_exchange_messages() {
    let h = common::start(common::config(2));
    let mut a = Attached::open(&h);
    a.handshake().await;
    let mut t = Raw::connect(h.local_addr()).await;

    // TCP → attached.
    let mut b = BytesMut::new();
    proto::encode_sub(&mut b, 1, b"greet.*", b"").expect("encode sub");
    proto::encode_ping(&mut b);
    a.send(&b).await;
    assert_eq!(a.next().await.expect("PONG")[4], proto::op::PONG);
    t.publish("greet.world", b"hello").await;
    let m = a.next().await.expect("MSG");
    match proto::parse_frame(&m).expect("valid MSG") {
        Frame::Msg(m) => {
            assert_eq!(m.sid, 1);
            assert_eq!(m.subject, b"greet.world");
            assert_eq!(m.payload, b"hello");
        }
        other => panic!("expected MSG, got {other:?}"),
    }

    // Attached → TCP.
    t.sub(7, "back", "").await;
    t.ping_pong().await;
    let mut b = BytesMut::new();
    proto::encode_pub(&mut b, b"back", b"", b"", b"hi there").expect("encode pub");
    a.send(&b).await;
    let f = t.next().await.expect("MSG");
    match f.parse() {
        Frame::Msg(m) => {
            assert_eq!(m.sid, 7);
            assert_eq!(m.subject, b"back");
            assert_eq!(m.payload, b"hi there");
        }
        other => panic!("expected MSG, got {other:?}"),
    }

    // Counted while open, counted out when it closes (a half-close: the broker ends it).
    assert_eq!(agentwire_broker::shard::open_connections(h.global()), 2);
    a.stream.shutdown().await.expect("half-close");
    while a.next().await.is_some() {}
    let g = h.global().clone();
    eventually(
        || agentwire_broker::shard::open_connections(&g) == 1,
        "the attached connection counted out",
    )
    .await;
}

#[tokio::test]
async fn attach_is_refused_at_max_connections_and_after_shutdown() {
    let mut cfg = common::config(1);
    cfg.limits.max_connections = 1;
    let h = common::start(cfg);
    let mut a = Attached::open(&h);
    a.handshake().await;

    let (ours, theirs) = StdUnix::pair().expect("socket pair");
    match h.attach(theirs) {
        Err(AttachError::TooManyConnections(1)) => {}
        other => panic!("expected TooManyConnections(1), got {other:?}"),
    }
    // The refused stream was dropped: its peer reads end of stream.
    ours.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    assert_eq!(std::io::Read::read(&mut &ours, &mut byte).expect("EOF"), 0);
    // A refusal does not leak a count.
    assert_eq!(agentwire_broker::shard::open_connections(h.global()), 1);

    h.shutdown();
    let (_ours, theirs) = StdUnix::pair().expect("socket pair");
    match h.attach(theirs) {
        Err(AttachError::NotAccepting) => {}
        other => panic!("expected NotAccepting, got {other:?}"),
    }
    h.join();
}
