//! Tests of [`super`] (frame dispatch): frames fed straight to [`handle_batch`] on a shard
//! built in the test (no acceptor, no event loop running), then checks of what that left in
//! the connections' outbound buffers, their subscriptions and the routing table. A
//! connection's stream is one end of a Unix socket pair that nothing reads: nothing is
//! flushed, the outbound bytes are inspected in place.

use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::sync::Arc;

use agentwire_protocol::{self as proto, features, flags, ErrorCode, Frame, HelloFrame};
use bytes::{Bytes, BytesMut};
use tokio::sync::watch;

use super::super::conn::Conn;
use super::super::remote::Stash;
use super::super::{Global, Shard};
use super::{handle_batch, ReaderState};
use crate::auth::Auth;
use crate::config::{Config, UserConfig};
use crate::routing::SubTarget;
use crate::transport::{StdStream, Transport};

/// A frame as a test sees it in a connection's outbound bytes.
#[derive(Debug, PartialEq, Eq)]
enum Out {
    Err(ErrorCode),
    Msg {
        sid: u32,
        flags: u8,
        subject: Vec<u8>,
    },
    Pong,
    Other(u8),
}

/// A shard of a one-shard broker (`shards` shards in all), with these users (none: open).
struct Harness {
    // Dropped in this order: the connections' streams before their reactor.
    shard: Rc<Shard>,
    peers: Vec<UnixStream>,
    _stop: watch::Sender<bool>,
    rt: tokio::runtime::Runtime,
}

impl Harness {
    fn new(users: Vec<UserConfig>, shards: usize) -> Harness {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let config = Config {
            shards,
            ..Config::default()
        };
        let auth = Auth::compile(&users).expect("users");
        let global = Arc::new(Global::new(config, "test".into(), auth, None));
        let (stop, shutdown) = watch::channel(false);
        let shard = Rc::new(Shard::new(global, 0, shutdown));
        Harness {
            shard,
            peers: Vec::new(),
            _stop: stop,
            rt,
        }
    }

    fn open() -> Harness {
        Harness::new(Vec::new(), 1)
    }

    /// A new connection on the shard, registered as the acceptor would.
    fn conn(&mut self) -> Client {
        let (a, b) = UnixStream::pair().expect("socket pair");
        let stream = {
            let _rt = self.rt.enter();
            Transport::from_std(StdStream::Unix(a)).expect("transport")
        };
        self.peers.push(b);
        let id = self
            .shard
            .global
            .next_conn_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let conn = Rc::new(Conn::new(id, Rc::new(stream), None, Box::default()));
        self.shard.conns.borrow_mut().insert(id, conn.clone());
        Client {
            conn,
            rs: ReaderState {
                handshaken: false,
                no_responders: false,
                name: String::new(),
            },
        }
    }

    /// Feeds `frames` (complete frames) as one read batch; returns the cross-shard stash.
    fn feed(&self, c: &mut Client, frames: BytesMut) -> Stash {
        let mut stash = Stash::default();
        let batch: Bytes = frames.freeze();
        handle_batch(&self.shard, &c.conn, &batch, &mut c.rs, &mut stash).expect("frames");
        stash
    }

    /// The routing table's matches for the literal subject `s`.
    fn routed(&self, s: &[u8]) -> Vec<SubTarget> {
        let m = self
            .shard
            .cache
            .borrow_mut()
            .lookup(&self.shard.global.routing, s);
        let mut v: Vec<SubTarget> = m.plain.clone();
        for g in &m.groups {
            v.extend(g.members.iter().copied());
        }
        v
    }

    fn subscriptions(&self) -> usize {
        self.shard.global.routing.subscription_count()
    }
}

struct Client {
    conn: Rc<Conn>,
    rs: ReaderState,
}

impl Client {
    /// Takes the frames queued for this connection.
    fn out(&self) -> Vec<Out> {
        let bytes = std::mem::take(&mut self.conn.st.borrow_mut().out);
        let mut v = Vec::new();
        let mut off = 0;
        while off < bytes.len() {
            let len = proto::frame_len(&bytes[off..], usize::MAX)
                .expect("frame length")
                .expect("complete frame");
            v.push(
                match proto::parse_frame(&bytes[off..off + len]).expect("frame") {
                    Frame::Err(e) => Out::Err(ErrorCode::from_u16(e.code).expect("code")),
                    Frame::Msg(m) => Out::Msg {
                        sid: m.sid,
                        flags: m.flags,
                        subject: m.subject.to_vec(),
                    },
                    Frame::Pong => Out::Pong,
                    f => Out::Other(f.op()),
                },
            );
            off += len;
        }
        v
    }

    fn target(&self, sid: u32) -> SubTarget {
        SubTarget {
            shard: 0,
            conn: self.conn.id,
            sid,
        }
    }

    fn sids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.conn.st.borrow().subs.keys().copied().collect();
        v.sort_unstable();
        v
    }
}

fn hello_with(features: u32, name: &[u8], token: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    proto::encode_hello(
        &mut b,
        &HelloFrame {
            version: proto::PROTOCOL_VERSION,
            features,
            name,
            token,
            public_key: b"",
            signature: b"",
        },
    )
    .expect("hello");
    b
}

fn hello() -> BytesMut {
    hello_with(features::HEADERS, b"test", b"")
}

fn sub(sid: u32, subject: &[u8], queue: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    proto::encode_sub(&mut b, sid, subject, queue).expect("sub");
    b
}

fn unsub(sid: u32, max: u32) -> BytesMut {
    let mut b = BytesMut::new();
    proto::encode_unsub(&mut b, sid, max);
    b
}

fn publ(subject: &[u8], reply: &[u8], payload: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    proto::encode_pub(&mut b, subject, reply, b"", payload).expect("pub");
    b
}

fn cat(parts: &[BytesMut]) -> BytesMut {
    let mut b = BytesMut::new();
    for p in parts {
        b.extend_from_slice(p);
    }
    b
}

/// A connection past its HELLO.
fn ready(h: &mut Harness) -> Client {
    let mut c = h.conn();
    h.feed(&mut c, hello());
    assert!(c.rs.handshaken);
    assert_eq!(c.out(), vec![]);
    c
}

#[test]
fn sub_then_unsub_updates_the_routing_table() {
    let mut h = Harness::open();
    let mut c = ready(&mut h);
    h.feed(&mut c, sub(1, b"orders.*", b""));
    assert_eq!(c.out(), vec![]);
    assert_eq!(c.sids(), vec![1]);
    assert_eq!(h.subscriptions(), 1);
    assert_eq!(h.routed(b"orders.new"), vec![c.target(1)]);
    assert_eq!(h.routed(b"payments.new"), vec![]);

    h.feed(&mut c, unsub(1, 0));
    assert_eq!(c.out(), vec![]);
    assert_eq!(c.sids(), Vec::<u32>::new());
    assert_eq!(h.subscriptions(), 0);
    assert_eq!(h.routed(b"orders.new"), vec![]);
}

#[test]
fn queue_subscription_is_routed_as_a_group_member() {
    let mut h = Harness::open();
    let mut c = ready(&mut h);
    h.feed(&mut c, sub(4, b"jobs.>", b"workers"));
    let m = h
        .shard
        .cache
        .borrow_mut()
        .lookup(&h.shard.global.routing, b"jobs.a.b");
    assert!(m.plain.is_empty());
    assert_eq!(m.groups.len(), 1);
    assert_eq!(m.groups[0].members, vec![c.target(4)]);
}

#[test]
fn duplicate_sid_is_refused_and_the_first_subscription_stays() {
    let mut h = Harness::open();
    let mut c = ready(&mut h);
    h.feed(&mut c, cat(&[sub(7, b"a", b""), sub(7, b"b", b"")]));
    assert_eq!(c.out(), vec![Out::Err(ErrorCode::DuplicateSid)]);
    assert_eq!(c.sids(), vec![7]);
    assert_eq!(h.subscriptions(), 1);
    assert_eq!(h.routed(b"a"), vec![c.target(7)]);
    assert_eq!(h.routed(b"b"), vec![]);
    assert!(!c.conn.st.borrow().closing, "duplicate_sid is not fatal");
}

#[test]
fn unsub_of_an_unknown_sid_is_refused() {
    let mut h = Harness::open();
    let mut c = ready(&mut h);
    h.feed(&mut c, unsub(3, 0));
    assert_eq!(c.out(), vec![Out::Err(ErrorCode::UnknownSid)]);
}

#[test]
fn invalid_subjects_and_queues_are_refused() {
    let mut h = Harness::open();
    let mut c = ready(&mut h);
    h.feed(
        &mut c,
        cat(&[
            sub(1, b"a..b", b""),
            sub(2, b"a", b"bad queue"),
            publ(b"a.*", b"", b"x"),
            publ(b"a", b"reply.*", b"x"),
        ]),
    );
    assert_eq!(
        c.out(),
        vec![
            Out::Err(ErrorCode::InvalidSubject),
            Out::Err(ErrorCode::InvalidQueue),
            Out::Err(ErrorCode::InvalidSubject),
            Out::Err(ErrorCode::InvalidSubject),
        ]
    );
    assert_eq!(c.sids(), Vec::<u32>::new());
    assert_eq!(h.subscriptions(), 0);
    assert_eq!(h.shard.counters.msgs_in.get(), 0);
}

#[test]
fn subscriptions_are_limited_per_connection() {
    let mut h = Harness::open();
    h.shard.limits.borrow_mut().max_subscriptions = 2;
    let mut c = ready(&mut h);
    h.feed(
        &mut c,
        cat(&[sub(1, b"a", b""), sub(2, b"b", b""), sub(3, b"c", b"")]),
    );
    assert_eq!(c.out(), vec![Out::Err(ErrorCode::TooManySubscriptions)]);
    assert_eq!(c.sids(), vec![1, 2]);
    assert_eq!(h.subscriptions(), 2);
}

#[test]
fn frames_before_hello_are_refused() {
    let mut h = Harness::open();
    let mut c = h.conn();
    h.feed(&mut c, cat(&[sub(1, b"a", b""), hello()]));
    assert_eq!(c.out(), vec![Out::Err(ErrorCode::HandshakeRequired)]);
    assert!(!c.rs.handshaken, "the rest of the batch is not handled");
    assert_eq!(h.subscriptions(), 0);
}

#[test]
fn hello_twice_and_ping() {
    let mut h = Harness::open();
    let mut c = ready(&mut h);
    let mut ping = BytesMut::new();
    proto::encode_ping(&mut ping);
    h.feed(&mut c, cat(&[hello(), ping]));
    assert_eq!(c.out(), vec![Out::Err(ErrorCode::UnexpectedOp), Out::Pong]);
}

#[test]
fn publish_is_delivered_to_a_local_subscriber() {
    let mut h = Harness::open();
    let mut s = ready(&mut h);
    let mut p = ready(&mut h);
    h.feed(&mut s, sub(5, b"orders.>", b""));
    h.feed(
        &mut p,
        cat(&[publ(b"orders.eu.1", b"", b"hi"), publ(b"other", b"", b"x")]),
    );
    assert_eq!(p.out(), vec![]);
    assert_eq!(
        s.out(),
        vec![Out::Msg {
            sid: 5,
            flags: 0,
            subject: b"orders.eu.1".to_vec()
        }]
    );
    assert_eq!(h.shard.counters.msgs_in.get(), 2);
    assert_eq!(h.shard.counters.msgs_out.get(), 1);
}

#[test]
fn unsub_with_a_maximum_ends_after_that_many_deliveries() {
    let mut h = Harness::open();
    let mut c = ready(&mut h);
    h.feed(&mut c, cat(&[sub(2, b"t", b""), unsub(2, 2)]));
    assert_eq!(c.sids(), vec![2], "kept until two are delivered");
    assert_eq!(h.routed(b"t"), vec![c.target(2)]);
    h.feed(
        &mut c,
        cat(&[
            publ(b"t", b"", b"1"),
            publ(b"t", b"", b"2"),
            publ(b"t", b"", b"3"),
        ]),
    );
    let msg = || Out::Msg {
        sid: 2,
        flags: 0,
        subject: b"t".to_vec(),
    };
    assert_eq!(c.out(), vec![msg(), msg()]);
    assert_eq!(c.sids(), Vec::<u32>::new());
    assert_eq!(h.subscriptions(), 0);
}

#[test]
fn oversized_payload_is_dropped() {
    let mut h = Harness::open();
    h.shard.limits.borrow_mut().max_payload = 8;
    let mut c = ready(&mut h);
    h.feed(&mut c, sub(1, b"big", b""));
    h.feed(&mut c, publ(b"big", b"", b"0123456789"));
    assert_eq!(c.out(), vec![Out::Err(ErrorCode::PayloadTooLarge)]);
    assert_eq!(h.shard.counters.msgs_in.get(), 0);
}

fn restricted() -> Harness {
    let mut alice = UserConfig::with_token("alice", "secret");
    alice.publish = Some(vec!["ok.>".into()]);
    alice.subscribe = Some(vec!["ok.>".into(), "_INBOX.>".into()]);
    Harness::new(vec![alice], 1)
}

#[test]
fn hello_with_a_bad_token_fails_authentication() {
    let mut h = restricted();
    let mut c = h.conn();
    h.feed(&mut c, hello_with(0, b"alice", b"wrong"));
    assert_eq!(c.out(), vec![Out::Err(ErrorCode::AuthFailed)]);
    assert!(!c.rs.handshaken);
    assert!(c.conn.st.borrow().closing, "auth_failed is fatal");
}

#[test]
fn publish_without_permission_is_denied_and_not_routed() {
    let mut h = restricted();
    let mut c = h.conn();
    h.feed(&mut c, hello_with(0, b"alice", b"secret"));
    assert!(c.rs.handshaken);
    assert_eq!(c.out(), vec![]);
    // A subscriber the user may not publish to (placed straight in the table).
    let mut open = h.conn();
    open.rs.handshaken = true;
    h.shard
        .global
        .routing
        .insert(b"secret.>", None, open.target(1));
    open.conn.st.borrow_mut().subs.insert(
        1,
        super::super::conn::Sub {
            pattern: b"secret.>"[..].into(),
            queue: None,
            max: 0,
            delivered: 0,
        },
    );
    h.feed(&mut c, publ(b"secret.plans", b"", b"x"));
    assert_eq!(c.out(), vec![Out::Err(ErrorCode::PermissionDenied)]);
    assert_eq!(open.out(), vec![], "nothing routed");
    assert_eq!(h.shard.counters.msgs_in.get(), 0);
    assert!(
        !c.conn.st.borrow().closing,
        "permission_denied is not fatal"
    );
    // Allowed subject: goes through.
    h.feed(
        &mut c,
        cat(&[sub(9, b"ok.x", b""), publ(b"ok.x", b"", b"y")]),
    );
    assert_eq!(
        c.out(),
        vec![Out::Msg {
            sid: 9,
            flags: 0,
            subject: b"ok.x".to_vec()
        }]
    );
}

#[test]
fn subscribe_without_permission_is_denied() {
    let mut h = restricted();
    let mut c = h.conn();
    h.feed(&mut c, hello_with(0, b"alice", b"secret"));
    h.feed(&mut c, sub(1, b"secret.>", b""));
    assert_eq!(c.out(), vec![Out::Err(ErrorCode::PermissionDenied)]);
    assert_eq!(c.sids(), Vec::<u32>::new());
    assert_eq!(h.subscriptions(), 0);
}

#[test]
fn request_without_responders_is_answered_no_responders() {
    let mut h = Harness::open();
    let mut c = h.conn();
    h.feed(&mut c, hello_with(features::NO_RESPONDERS, b"req", b""));
    assert!(c.rs.no_responders);
    h.feed(
        &mut c,
        cat(&[
            sub(3, b"_INBOX.1", b""),
            publ(b"svc.echo", b"_INBOX.1", b"ping"),
        ]),
    );
    assert_eq!(
        c.out(),
        vec![Out::Msg {
            sid: 3,
            flags: flags::MSG_NO_RESPONDERS,
            subject: b"_INBOX.1".to_vec()
        }]
    );
}

#[test]
fn request_without_the_feature_gets_nothing_back() {
    let mut h = Harness::open();
    let mut c = ready(&mut h);
    assert!(!c.rs.no_responders);
    h.feed(
        &mut c,
        cat(&[
            sub(3, b"_INBOX.1", b""),
            publ(b"svc.echo", b"_INBOX.1", b"ping"),
        ]),
    );
    assert_eq!(c.out(), vec![]);
}

#[test]
fn publish_to_a_subscriber_on_another_shard_is_staged_for_it() {
    let mut h = Harness::new(Vec::new(), 2);
    let mut p = ready(&mut h);
    let remote = SubTarget {
        shard: 1,
        conn: 999,
        sid: 8,
    };
    h.shard.global.routing.insert(b"x.y", None, remote);
    let frames = cat(&[publ(b"x.y", b"", b"a"), publ(b"x.y", b"", b"b")]);
    let first_len = publ(b"x.y", b"", b"a").len();
    let mut stash = h.feed(&mut p, frames);
    assert_eq!(p.out(), vec![]);
    h.shard.flush_staged(&mut stash);
    assert!(stash.items.is_empty(), "the queue had room");
    let q = &h.shard.global.shards[1].inbound[0];
    let batch = q.pop().expect("one batch for shard 1");
    assert!(
        q.pop().is_none(),
        "one batch per read batch and destination"
    );
    let items: Vec<_> = batch
        .items
        .iter()
        .map(|i| (i.conn, i.sid, i.off as usize, i.len as usize))
        .collect();
    assert_eq!(
        items,
        vec![
            (999, 8, 0, first_len),
            (999, 8, first_len, batch.frames.len() - first_len)
        ]
    );
    assert_eq!(h.shard.counters.cross.get(), 2);
}
