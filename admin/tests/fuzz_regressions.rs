//! Regression tests for what the `connection` fuzz target (`admin/fuzz/`) found, each a
//! minimized plan replayed over an attached socket pair.
//!
//! - A `$SYS.components.*` event is the registration as JSON, so it can be larger than the
//!   REGISTER frame that caused it (JSON escapes `"` and `\`, and adds field names): a REGISTER
//!   within the frame limit could produce an event MSG over it (`max_payload + 4096`), which a
//!   client applying the limit to what it receives (PROTOCOL.md section 1) refuses. With the
//!   default limits the same holds at scale: a ~1 MiB REGISTER of quotes makes a ~2 MiB event
//!   that every `$SYS.components.>` watcher receives.
//! - DISCOVERED (the answer to DISCOVER) lists every matching instance with its metadata, so
//!   registrations that each fit the limit make an answer over it, and the asking client
//!   closes its connection.
//! - HEARTBEAT carries cumulative request and error totals chosen by the client; the broker
//!   added their increases to per-component sums with `+`, so counters near `u64::MAX` (or a
//!   "reset" right after them) overflowed: a panic on the shard thread in debug builds, a
//!   wrapped total in release.

// Fixed: events over `max_payload` are sent without their client-chosen lists, flagged
// `"truncated": true`; DISCOVERED over it leaves metadata out, then cuts the list, flagged
// `truncated`. The request sums saturate.

mod common;

use std::os::unix::net::UnixStream as StdUnix;

use agentwire_protocol::control::{encode_control, Discover, Heartbeat, Registration};
use agentwire_protocol::{self as proto, Frame, HelloFrame, FRAME_OVERHEAD_ALLOWANCE};
use bytes::{Buf, BytesMut};
use common::WAIT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// A raw client on an attached socket pair, past its handshake.
struct Attached {
    s: UnixStream,
    buf: BytesMut,
}

impl Attached {
    async fn open(h: &agentwire_admin::Broker) -> Attached {
        let (ours, theirs) = StdUnix::pair().expect("socket pair");
        h.attach(theirs).expect("attach");
        ours.set_nonblocking(true).expect("non-blocking");
        let mut a = Attached {
            s: UnixStream::from_std(ours).expect("register with tokio"),
            buf: BytesMut::new(),
        };
        let mut b = BytesMut::new();
        proto::encode_hello(
            &mut b,
            &HelloFrame {
                version: proto::PROTOCOL_VERSION,
                features: 0,
                name: b"replay",
                token: b"",
                public_key: b"",
                signature: b"",
            },
        )
        .expect("encode hello");
        a.send(&b).await;
        a
    }

    async fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).await.expect("write");
    }

    /// The next frame's bytes (no size limit: the test checks sizes itself).
    async fn next(&mut self) -> Vec<u8> {
        tokio::time::timeout(WAIT, async {
            loop {
                if self.buf.len() >= 4 {
                    let len =
                        u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                            as usize;
                    if self.buf.len() >= len {
                        let f = self.buf[..len].to_vec();
                        self.buf.advance(len);
                        return f;
                    }
                }
                let n = self.s.read_buf(&mut self.buf).await.expect("read");
                assert!(n > 0, "end of stream");
            }
        })
        .await
        .expect("a frame within the wait")
    }

    /// Sends PING and reads up to its PONG.
    async fn ping_pong(&mut self) {
        let mut b = BytesMut::new();
        proto::encode_ping(&mut b);
        self.send(&b).await;
        while self.next().await[4] != proto::op::PONG {}
    }
}

/// Found with an event of 6,389 bytes against a limit of 5,120; now the event is sent without
/// its client-chosen lists (`Event::payload_within`).
#[tokio::test]
async fn sys_events_stay_within_the_frame_limit() {
    let mut cfg = common::config(1);
    cfg.limits.max_payload = 1024;
    let limit = cfg.limits.max_payload as usize + FRAME_OVERHEAD_ALLOWANCE;
    let h = common::start(cfg);

    let mut watcher = Attached::open(&h).await;
    let mut b = BytesMut::new();
    proto::encode_sub(&mut b, 1, b"$SYS.components.>", b"").expect("encode sub");
    watcher.send(&b).await;
    watcher.ping_pong().await;

    // A REGISTER whose metadata value is all quotes: the frame fits the limit, its JSON (every
    // quote escaped) would not.
    let mut component = Attached::open(&h).await;
    let mut b = BytesMut::new();
    encode_control(
        &mut b,
        &Registration {
            component: "svc".into(),
            instance_id: "i1".into(),
            version: "1".into(),
            metadata: vec![("k".into(), "\"".repeat(3000))],
            ..Registration::default()
        },
    )
    .expect("encode REGISTER");
    assert!(b.len() <= limit, "the REGISTER fits the limit");
    component.send(&b).await;
    component.ping_pong().await;

    loop {
        let f = watcher.next().await;
        if let Ok(Frame::Msg(m)) = proto::parse_frame(&f) {
            assert_eq!(m.subject, b"$SYS.components.svc.joined");
            assert!(
                f.len() <= limit,
                "the joined event is a frame of {} bytes, over the frame limit {limit}",
                f.len()
            );
            let v: serde_json::Value = serde_json::from_slice(m.payload).expect("JSON event");
            assert_eq!(v["truncated"], true);
            assert_eq!(v["instance_id"], "i1");
            assert_eq!(v["event"], "joined");
            return;
        }
    }
}

/// DISCOVERED carried every matching instance with its metadata, so two registrations that
/// each fit the limit made an answer over it; now it is trimmed and flagged `truncated`.
#[tokio::test]
async fn discovered_stays_within_the_frame_limit() {
    let mut cfg = common::config(1);
    cfg.limits.max_payload = 1024;
    let limit = cfg.limits.max_payload as usize + FRAME_OVERHEAD_ALLOWANCE;
    let h = common::start(cfg);

    let mut members = Vec::new();
    for id in ["i1", "i2"] {
        let mut c = Attached::open(&h).await;
        let mut b = BytesMut::new();
        encode_control(
            &mut b,
            &Registration {
                component: "svc".into(),
                instance_id: id.into(),
                version: "1".into(),
                metadata: vec![("k".into(), "v".repeat(3000))],
                ..Registration::default()
            },
        )
        .expect("encode REGISTER");
        assert!(b.len() <= limit, "each REGISTER fits the limit");
        c.send(&b).await;
        c.ping_pong().await;
        members.push(c);
    }

    let mut asker = Attached::open(&h).await;
    let mut b = BytesMut::new();
    encode_control(
        &mut b,
        &Discover {
            request_id: 1,
            component: "svc".into(),
            ..Discover::default()
        },
    )
    .expect("encode DISCOVER");
    asker.send(&b).await;
    loop {
        let f = asker.next().await;
        if f[4] == proto::op::DISCOVERED {
            assert!(
                f.len() <= limit,
                "DISCOVERED is a frame of {} bytes, over the frame limit {limit}",
                f.len()
            );
            let d: agentwire_protocol::control::Discovered =
                agentwire_protocol::control::decode_control(&f[proto::HEADER_LEN..])
                    .expect("a valid DISCOVERED");
            assert!(d.truncated, "flagged as trimmed");
            assert_eq!(d.instances.len(), 2, "both instances, without metadata");
            assert!(d.instances.iter().all(|i| i.metadata.is_empty()));
            return;
        }
    }
}

/// Found by a 2-minute run after heartbeats gained request totals: a HEARTBEAT with totals near
/// `u64::MAX` after another overflowed the component's sum on the shard thread. Now the sums
/// saturate, and the connection (and shard) keep answering.
#[tokio::test]
async fn hostile_request_totals_do_not_overflow() {
    let h = common::start(common::config(1));
    let mut c = Attached::open(&h).await;
    let mut b = BytesMut::new();
    encode_control(
        &mut b,
        &Registration {
            component: "svc".into(),
            instance_id: "i1".into(),
            version: "1".into(),
            ..Registration::default()
        },
    )
    .expect("encode REGISTER");
    c.send(&b).await;
    c.ping_pong().await;
    for (requests_total, errors_total) in [(u64::MAX, u64::MAX), (5, 0), (u64::MAX, u64::MAX)] {
        let mut b = BytesMut::new();
        encode_control(
            &mut b,
            &Heartbeat {
                requests_total,
                errors_total,
                ..Heartbeat::default()
            },
        )
        .expect("encode HEARTBEAT");
        c.send(&b).await;
        c.ping_pong().await;
    }
    // A second connection on the same (only) shard is still served.
    let mut other = Attached::open(&h).await;
    other.ping_pong().await;
}
