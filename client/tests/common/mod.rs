//! The fake server shared by the integration tests (`fake_server.rs`, `registration.rs`).
//!
//! It speaks the protocol with `agentwire-protocol` on a real loopback socket: it sends INFO,
//! answers PING with PONG (or holds the PONGs when told to), records every frame it reads (control
//! frames with their bodies), routes each PUB to the matching SUBs of the same connection (so
//! request/reply and no-responders work on one client), answers REGISTER through
//! [`Config::on_register`], and on command delivers MSGs, ERRs, PINGs, raw bytes or closes. Waits
//! are bounded.

// Each test crate uses a different part of the harness.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentwire_client::ConnectOptions;
use agentwire_protocol::control::{decode_control, Registration};
use agentwire_protocol::subject::matches;
use agentwire_protocol::{
    decode_frame, encode_err, encode_info, encode_msg, encode_msg_from_pub, encode_ping,
    encode_pong, features, flags, ErrorCode, Frame, InfoFrame,
};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};

/// How long a test waits for a condition before failing.
pub const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// The fake server
// ---------------------------------------------------------------------------------------------

/// How the fake server behaves.
#[derive(Clone)]
pub struct Config {
    pub max_payload: u32,
    pub features: u32,
    /// Answer HELLO with this ERR (code, fatal, message).
    pub reject_hello: Option<(ErrorCode, bool, &'static str)>,
    /// Send these bytes instead of INFO.
    pub first_bytes: Option<Vec<u8>>,
    /// Answer PINGs at once (otherwise hold them until `Cmd::AnswerPings(true)`).
    pub answer_pings: bool,
    /// Answers a REGISTER (whose body validated) with the bytes it returns, written before
    /// anything the server reads after the REGISTER is answered (as a real server, which handles
    /// frames in order). `None`: never answer.
    pub on_register: Option<OnRegister>,
}

/// Produces the server's answer to a REGISTER: encoded frames (REGISTERED, ERR, ...).
pub type OnRegister = Arc<dyn Fn(&Registration) -> Vec<u8> + Send + Sync>;

impl Default for Config {
    fn default() -> Self {
        Config {
            max_payload: 1 << 20,
            features: features::HEADERS | features::NO_RESPONDERS,
            reject_hello: None,
            first_bytes: None,
            answer_pings: true,
            on_register: None,
        }
    }
}

/// A frame the server read, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rec {
    Hello {
        version: u16,
        features: u32,
        name: String,
    },
    Ping,
    Pong,
    Pub {
        subject: String,
        reply: String,
        headers: Vec<u8>,
        payload: Vec<u8>,
    },
    Sub {
        sid: u32,
        subject: String,
        queue: String,
    },
    Unsub {
        sid: u32,
        max: u32,
    },
    /// A control-plane frame (op `0x40`..), with its body.
    Control {
        op: u8,
        body: Vec<u8>,
    },
    Other(u8),
}

#[derive(Default)]
pub struct LogData {
    pub frames: Vec<Rec>,
    pub eof: bool,
}

/// What one connection recorded, shared with the test.
#[derive(Default)]
pub struct Log {
    pub data: Mutex<LogData>,
    pub changed: Notify,
}

impl Log {
    pub fn push(&self, r: Rec) {
        self.data.lock().expect("log lock").frames.push(r);
        self.changed.notify_waiters();
    }

    pub fn frames(&self) -> Vec<Rec> {
        self.data.lock().expect("log lock").frames.clone()
    }

    /// The bodies of the control frames of op `op` the server read, in order.
    pub fn controls(&self, op: u8) -> Vec<Vec<u8>> {
        self.frames()
            .into_iter()
            .filter_map(|r| match r {
                Rec::Control { op: o, body } if o == op => Some(body),
                _ => None,
            })
            .collect()
    }

    pub fn pubs(&self) -> Vec<Rec> {
        self.frames()
            .into_iter()
            .filter(|r| matches!(r, Rec::Pub { .. }))
            .collect()
    }

    /// Waits (bounded) until `cond` holds for the log.
    pub async fn wait_for(&self, what: &str, cond: impl Fn(&LogData) -> bool) {
        let waited = tokio::time::timeout(WAIT, async {
            loop {
                let notified = self.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if cond(&self.data.lock().expect("log lock")) {
                    return;
                }
                notified.await;
            }
        })
        .await;
        assert!(waited.is_ok(), "server never saw: {what}");
    }
}

/// Commands a test sends to a server connection.
pub enum Cmd {
    Msg {
        sid: u32,
        subject: &'static str,
        payload: Vec<u8>,
    },
    Err {
        code: ErrorCode,
        fatal: bool,
        message: &'static str,
    },
    Ping,
    /// Write these bytes as they are (encoded control frames, garbage, ...).
    Raw(Vec<u8>),
    AnswerPings(bool),
    /// Stop reading the socket (a stuck server).
    StopReading,
    Close,
}

/// The server side of one accepted connection.
pub struct Conn {
    pub log: Arc<Log>,
    pub cmd: mpsc::UnboundedSender<Cmd>,
}

impl Conn {
    pub fn send(&self, c: Cmd) {
        self.cmd.send(c).expect("fake connection task is running");
    }
}

pub struct FakeServer {
    pub addr: String,
    pub conns: mpsc::UnboundedReceiver<Conn>,
    /// The accept loop (owns the listener).
    accept: tokio::task::JoinHandle<()>,
}

impl FakeServer {
    pub async fn start(cfg: Config) -> FakeServer {
        FakeServer::start_on("127.0.0.1:0", cfg).await
    }

    /// Starts on a given address (e.g. the address of a server stopped before: a restart).
    pub async fn start_on(addr: &str, cfg: Config) -> FakeServer {
        let listener = TcpListener::bind(addr).await.expect("bind loopback");
        let addr = listener.local_addr().expect("bound address").to_string();
        let (tx, conns) = mpsc::unbounded_channel();
        let accept = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let log = Arc::new(Log::default());
                let (cmd, cmds) = mpsc::unbounded_channel();
                tokio::spawn(serve_conn(sock, cfg.clone(), log.clone(), cmds));
                if tx.send(Conn { log, cmd }).is_err() {
                    return;
                }
            }
        });
        FakeServer {
            addr,
            conns,
            accept,
        }
    }

    /// Stops accepting and releases the port (connections already accepted stay until closed
    /// with `Cmd::Close`).
    pub async fn stop(self) -> String {
        self.accept.abort();
        let _ = self.accept.await;
        self.addr
    }

    pub async fn next_conn(&mut self) -> Conn {
        tokio::time::timeout(WAIT, self.conns.recv())
            .await
            .expect("a connection within the wait")
            .expect("the accept loop is running")
    }
}

struct FakeSub {
    sid: u32,
    pattern: Vec<u8>,
    delivered: u32,
    max: u32,
}

async fn serve_conn(
    mut sock: TcpStream,
    cfg: Config,
    log: Arc<Log>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
) {
    let mut out = BytesMut::new();
    match &cfg.first_bytes {
        Some(raw) => out.extend_from_slice(raw),
        None => encode_info(
            &mut out,
            &InfoFrame {
                version: 1,
                features: cfg.features,
                max_payload: cfg.max_payload,
                shard_count: 2,
                shard_id: 1,
                client_id: 7,
                server_id: b"fake-server",
                nonce: b"",
            },
        )
        .expect("INFO encodes"),
    }
    if sock.write_all(&out).await.is_err() {
        return;
    }
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut subs: Vec<FakeSub> = Vec::new();
    let mut answer_pings = cfg.answer_pings;
    let mut held_pings = 0usize;
    let mut cmds_open = true;
    let mut reading = true;
    loop {
        out.clear();
        let mut close = false;
        tokio::select! {
            cmd = cmds.recv(), if cmds_open => match cmd {
                None => cmds_open = false,
                Some(Cmd::Close) => close = true,
                Some(Cmd::Msg { sid, subject, payload }) => {
                    encode_msg(&mut out, sid, 0, subject.as_bytes(), b"", b"", &payload)
                        .expect("MSG encodes");
                }
                Some(Cmd::Err { code, fatal, message }) => {
                    encode_err(&mut out, code.as_u16(), fatal, message);
                    close = fatal;
                }
                Some(Cmd::Ping) => encode_ping(&mut out),
                Some(Cmd::Raw(bytes)) => out.extend_from_slice(&bytes),
                Some(Cmd::StopReading) => reading = false,
                Some(Cmd::AnswerPings(on)) => {
                    answer_pings = on;
                    if on {
                        for _ in 0..std::mem::take(&mut held_pings) {
                            encode_pong(&mut out);
                        }
                    }
                }
            },
            read = sock.read_buf(&mut buf), if reading => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let mut st = ConnState {
                        cfg: &cfg,
                        log: &log,
                        subs: &mut subs,
                        out: &mut out,
                        answer_pings,
                        held_pings: &mut held_pings,
                    };
                    close = process(&mut st, &mut buf);
                }
            },
        }
        if !out.is_empty() && sock.write_all(&out).await.is_err() {
            break;
        }
        if close {
            break;
        }
    }
    log.data.lock().expect("log lock").eof = true;
    log.changed.notify_waiters();
}

struct ConnState<'a> {
    cfg: &'a Config,
    log: &'a Log,
    subs: &'a mut Vec<FakeSub>,
    out: &'a mut BytesMut,
    answer_pings: bool,
    held_pings: &'a mut usize,
}

/// Handles every complete frame in `buf`; returns whether to close the connection.
fn process(st: &mut ConnState<'_>, buf: &mut BytesMut) -> bool {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    loop {
        let (frame, len) = match decode_frame(buf, 16 << 20) {
            Ok(Some(f)) => f,
            Ok(None) => return false,
            Err(_) => return true,
        };
        let whole = &buf[..len];
        match frame {
            Frame::Hello(h) => {
                st.log.push(Rec::Hello {
                    version: h.version,
                    features: h.features,
                    name: text(h.name),
                });
                if let Some((code, fatal, message)) = st.cfg.reject_hello {
                    encode_err(st.out, code.as_u16(), fatal, message);
                    if fatal {
                        return true;
                    }
                }
            }
            Frame::Ping => {
                st.log.push(Rec::Ping);
                if st.answer_pings {
                    encode_pong(st.out);
                } else {
                    *st.held_pings += 1;
                }
            }
            Frame::Pong => st.log.push(Rec::Pong),
            Frame::Pub(p) => {
                st.log.push(Rec::Pub {
                    subject: text(p.subject),
                    reply: text(p.reply),
                    headers: p.headers.to_vec(),
                    payload: p.payload.to_vec(),
                });
                let mut delivered = false;
                for s in st.subs.iter_mut() {
                    if matches(&s.pattern, p.subject) {
                        encode_msg_from_pub(st.out, s.sid, 0, whole).expect("MSG encodes");
                        s.delivered += 1;
                        delivered = true;
                    }
                }
                st.subs.retain(|s| s.max == 0 || s.delivered < s.max);
                if !delivered && !p.reply.is_empty() {
                    if let Some(s) = st.subs.iter().find(|s| matches(&s.pattern, p.reply)) {
                        let nr = flags::MSG_NO_RESPONDERS;
                        encode_msg(st.out, s.sid, nr, p.reply, b"", b"", b"").expect("MSG encodes");
                    }
                }
            }
            Frame::Sub(s) => {
                st.log.push(Rec::Sub {
                    sid: s.sid,
                    subject: text(s.subject),
                    queue: text(s.queue),
                });
                st.subs.push(FakeSub {
                    sid: s.sid,
                    pattern: s.subject.to_vec(),
                    delivered: 0,
                    max: 0,
                });
            }
            Frame::Unsub(u) => {
                st.log.push(Rec::Unsub {
                    sid: u.sid,
                    max: u.max_msgs,
                });
                match st.subs.iter_mut().find(|s| s.sid == u.sid) {
                    Some(s) => s.max = u.max_msgs,
                    None => {
                        encode_err(st.out, ErrorCode::UnknownSid.as_u16(), false, "no such sid")
                    }
                }
                st.subs
                    .retain(|s| !(s.sid == u.sid && (s.max == 0 || s.delivered >= s.max)));
            }
            Frame::Unknown { op, body, .. } => {
                st.log.push(Rec::Control {
                    op,
                    body: body.to_vec(),
                });
                if op == agentwire_protocol::op::REGISTER {
                    if let (Some(answer), Ok(reg)) =
                        (&st.cfg.on_register, decode_control::<Registration>(body))
                    {
                        st.out.extend_from_slice(&answer(&reg));
                    }
                }
            }
            other => st.log.push(Rec::Other(other.op())),
        }
        buf.advance(len);
    }
}

pub async fn connect(server: &mut FakeServer) -> (agentwire_client::Client, Conn) {
    let client = ConnectOptions::new()
        .name("test-client")
        .connect(&server.addr)
        .await
        .expect("connect to the fake server");
    let conn = server.next_conn().await;
    (client, conn)
}

/// Next message from a subscriber, bounded.
pub async fn next(sub: &mut agentwire_client::Subscriber) -> Option<agentwire_client::Message> {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("subscriber produced or ended within the wait")
}
