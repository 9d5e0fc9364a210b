//! Fuzz target: one client connection through the broker's per-connection state machine
//! (handshake, PUB/SUB/UNSUB/PING, control frames), over the in-memory transport.
//!
//! One broker runs per process (one shard, no admin API, small limits so the limit paths are
//! reached). Each input is read with `arbitrary::Unstructured` as a plan: a HELLO (usually)
//! and a sequence of ops (frames built with the protocol encoder from a small subject alphabet,
//! so subscriptions and publications match; control ops 0x40-0x7f with random or well-formed
//! bodies; raw garbage, frames with a random op, bad lengths, a cut at the end) grouped into
//! separate writes. Sometimes a second, subscribed connection is opened first, so deliveries
//! cross connections. The plan is written over a socket pair attached with
//! `ServerHandle::attach`, the connection is half-closed, and everything the broker sends is
//! read until end of stream, all within a deadline (a hang is a finding).
//!
//! Checked on every connection: the bytes decode as whole, valid frames of ops a server sends,
//! none over the frame limit (`max_payload + 4096`); the first is INFO and only the first;
//! nothing follows a fatal ERR; ERR codes are known; a MSG names a sid the client subscribed
//! and a subject that sid's pattern matches. When the
//! plan is made only of well-formed frames, the broker's answer is predicted: a missing or
//! wrong first frame ends in the one fatal ERR it calls for, and after a good HELLO no fatal
//! ERR but `slow_consumer` comes and every PING gets its PONG. Every [`PROBE_EVERY`] inputs a
//! long-lived connection must still answer a PING and no connection may be left open.

#![no_main]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream as StdUnix;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use agentwire_broker::{Config, Limits, ServerHandle};
use agentwire_protocol::control::{self, Discover, Heartbeat, Registration};
use agentwire_protocol::{self as proto, features, flags, op, ErrorCode, Frame, HelloFrame};
use arbitrary::{Result as AResult, Unstructured};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The broker's `max_payload` (small, so `payload_too_large` is reached).
const MAX_PAYLOAD: u32 = 64;
/// The broker's `max_subscriptions` per connection.
const MAX_SUBS: usize = 4;
/// How long one input may take before it counts as a hang.
const DEADLINE: Duration = Duration::from_secs(10);
/// Inputs between two liveness probes of the broker.
const PROBE_EVERY: u64 = 512;

/// Literal subject tokens: few, so publications match subscriptions; `$SYS.components.*` is
/// where REGISTER events are published.
const TOKENS: [&[u8]; 8] = [
    b"a",
    b"b",
    b"c",
    b"$SYS",
    b"components",
    b"joined",
    b"left",
    b"_INBOX",
];
/// Names for control bodies (components, instances, capabilities).
const NAMES: [&str; 4] = ["a", "b", "svc", "bad name"];

/// A known finding (a `$SYS.components` event over the frame limit) was seen (reported once
/// per process).
static KNOWN_OVERSIZE: AtomicBool = AtomicBool::new(false);
/// The other known finding was seen.
static KNOWN_OVERSIZE_DISCOVERED: AtomicBool = AtomicBool::new(false);

/// The process-wide broker, its runtime for the client side, and the probe connection.
struct World {
    server: agentwire_admin::Broker,
    rt: tokio::runtime::Runtime,
    probe: Mutex<Option<StdUnix>>,
    inputs: AtomicU64,
    _sigpipe: tokio::signal::unix::Signal,
}

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let mut cfg = Config {
        listen: "127.0.0.1:0".parse().expect("literal address"),
        shards: 1,
        limits: Limits {
            max_payload: MAX_PAYLOAD,
            max_connections: 64,
            max_subscriptions: MAX_SUBS,
            max_pending: 4096,
            max_pending_total: 1 << 20,
            write_deadline_ms: 10_000,
            // Inputs end with a half-close, never by a deadline: keep the timers out of reach.
            handshake_timeout_ms: 60_000,
            ping_interval_ms: 600_000,
            max_pings_out: 2,
        },
        shutdown_grace_ms: 5_000,
        ..Config::default()
    };
    cfg.admin.listen = None;
    cfg.admin.data_dir = None;
    let server = agentwire_admin::start(cfg).expect("the fuzz broker starts");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    // libFuzzer's main leaves SIGPIPE at its default (terminate); a write to a closed socket,
    // by the broker or by this driver, must be EPIPE instead. A tokio handler does that.
    let sigpipe = rt.block_on(async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::pipe())
            .expect("SIGPIPE handler")
    });
    let world = World {
        server,
        rt,
        probe: Mutex::new(None),
        inputs: AtomicU64::new(0),
        _sigpipe: sigpipe,
    };
    *world.probe.lock().expect("probe lock") = Some(open_probe(&world.server));
    world
});

// ---------------------------------------------------------------------------------------------
// The plan: what one input sends.

/// How the first frame of the main connection is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum First {
    /// A HELLO with the supported version.
    Hello,
    /// A HELLO with another version (fatal `unsupported_version`).
    BadVersion,
    /// No HELLO: the ops start at once.
    Nothing,
}

/// The main connection's plan.
#[derive(Debug)]
struct Plan {
    first: First,
    /// The writes, in order (each a separate `write_all`).
    chunks: Vec<Vec<u8>>,
    /// Only frames built with the encoder: the broker's answer is predictable.
    clean: bool,
    /// Op of the first frame written, if any (for the prediction).
    first_op: Option<u8>,
    /// PINGs written.
    pings: usize,
    /// Every pattern each sid was subscribed with.
    sids: HashMap<u32, Vec<Vec<u8>>>,
    /// Subscriptions of the second connection, if one is opened: (sid, pattern, queue).
    second: Option<Vec<(u32, Vec<u8>, Vec<u8>)>>,
}

fn literal(u: &mut Unstructured<'_>) -> AResult<Vec<u8>> {
    if u.ratio(1, 16)? {
        // Anything, mostly invalid.
        let n = u.int_in_range(0..=8)?;
        return Ok(u.bytes(n)?.to_vec());
    }
    let n = u.int_in_range(1..=3)?;
    let mut s = Vec::new();
    for i in 0..n {
        if i > 0 {
            s.push(b'.');
        }
        s.extend_from_slice(u.choose(&TOKENS)?);
    }
    Ok(s)
}

fn pattern(u: &mut Unstructured<'_>) -> AResult<Vec<u8>> {
    if u.ratio(1, 16)? {
        let n = u.int_in_range(0..=8)?;
        return Ok(u.bytes(n)?.to_vec());
    }
    let n = u.int_in_range(1..=3)?;
    let mut s = Vec::new();
    for i in 0..n {
        if i > 0 {
            s.push(b'.');
        }
        match u.int_in_range(0..=9u8)? {
            8 => s.push(b'*'),
            9 => s.push(b'>'),
            k => s.extend_from_slice(TOKENS[usize::from(k)]),
        }
    }
    Ok(s)
}

fn queue(u: &mut Unstructured<'_>) -> AResult<Vec<u8>> {
    Ok(match u.int_in_range(0..=7u8)? {
        0 => b"q".to_vec(),
        1 => b"r".to_vec(),
        2 => {
            let n = u.int_in_range(0..=4)?;
            u.bytes(n)?.to_vec()
        }
        _ => Vec::new(),
    })
}

fn name(u: &mut Unstructured<'_>) -> AResult<String> {
    Ok((*u.choose(&NAMES)?).to_owned())
}

/// A control frame: a random body, or a well-formed one of the op.
fn control_frame(u: &mut Unstructured<'_>, out: &mut BytesMut) -> AResult<()> {
    let opc = if u.ratio(1, 8)? {
        u.int_in_range(op::CONTROL_FIRST..=op::CONTROL_LAST)?
    } else {
        u.int_in_range(op::REGISTER..=op::LAMEDUCK)?
    };
    if u.ratio(1, 2)? {
        let n = u.int_in_range(0..=64)?;
        let body = u.bytes(n)?;
        raw_frame(out, opc, 0, body);
        return Ok(());
    }
    let r = match opc {
        op::REGISTER => control::encode_control(
            out,
            &Registration {
                component: name(u)?,
                instance_id: name(u)?,
                version: if u.ratio(1, 8)? {
                    "\u{7}".into()
                } else {
                    "1".into()
                },
                environment: match u.int_in_range(0..=2u8)? {
                    0 => String::new(),
                    1 => "prod".into(),
                    _ => name(u)?,
                },
                capabilities: if u.ratio(1, 2)? {
                    vec![name(u)?]
                } else {
                    Vec::new()
                },
                subjects: if u.ratio(1, 2)? {
                    vec![String::from_utf8_lossy(&pattern(u)?).into_owned()]
                } else {
                    Vec::new()
                },
                metadata: if u.ratio(1, 4)? {
                    // Up to the longest value allowed (4096 bytes).
                    let n = if u.ratio(1, 2)? {
                        u.int_in_range(3000..=control::MAX_META_VALUE_LEN)?
                    } else {
                        1
                    };
                    let c = if u.ratio(1, 2)? { "\"" } else { "v" };
                    vec![(name(u)?, c.repeat(n))]
                } else {
                    Vec::new()
                },
                heartbeat_ms: u.int_in_range(0..=2000)?,
                depends_on: match u.int_in_range(0..=3u8)? {
                    0 => vec![name(u)?],
                    1 => vec![format!("{}@^1.2", name(u)?)],
                    2 => vec![format!("{}@not a range", name(u)?)],
                    _ => Vec::new(),
                },
            },
        ),
        op::HEARTBEAT => control::encode_control(
            out,
            &Heartbeat {
                in_flight: u.arbitrary()?,
                queue_depth: u.arbitrary()?,
                latency_us: u.arbitrary()?,
                cpu_permille: u.arbitrary()?,
                mem_bytes: u.arbitrary()?,
                requests_total: u.arbitrary()?,
                errors_total: u.arbitrary()?,
            },
        ),
        op::DISCOVER => control::encode_control(
            out,
            &Discover {
                request_id: u.arbitrary()?,
                component: if u.ratio(1, 2)? {
                    name(u)?
                } else {
                    String::new()
                },
                capability: if u.ratio(1, 2)? {
                    name(u)?
                } else {
                    String::new()
                },
                include_unhealthy: u.arbitrary()?,
            },
        ),
        op::DEREGISTER => {
            control::encode_deregister(out);
            Ok(())
        }
        // Ops only servers send: an empty body.
        _ => {
            raw_frame(out, opc, 0, b"");
            Ok(())
        }
    };
    r.expect("control bodies of this size encode");
    Ok(())
}

/// A frame with a correct length and whatever op, flags and body.
fn raw_frame(out: &mut BytesMut, opc: u8, fl: u8, body: &[u8]) {
    let len = (proto::HEADER_LEN + body.len()) as u32;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[opc, fl]);
    out.extend_from_slice(body);
}

fn hello(out: &mut BytesMut, version: u16, feats: u32, name: &[u8]) {
    proto::encode_hello(
        out,
        &HelloFrame {
            version,
            features: feats,
            name,
            token: b"",
            public_key: b"",
            signature: b"",
        },
    )
    .expect("HELLO encodes");
}

fn build(u: &mut Unstructured<'_>) -> AResult<Plan> {
    let mut plan = Plan {
        first: match u.int_in_range(0..=15u8)? {
            0 => First::Nothing,
            1 => First::BadVersion,
            _ => First::Hello,
        },
        chunks: Vec::new(),
        clean: true,
        first_op: None,
        pings: 0,
        sids: HashMap::new(),
        second: None,
    };
    if u.ratio(1, 4)? {
        let n = u.int_in_range(1..=3)?;
        let mut subs = Vec::new();
        for i in 0..n {
            subs.push((100 + i, pattern(u)?, queue(u)?));
        }
        plan.second = Some(subs);
    }
    let mut cur = BytesMut::new();
    match plan.first {
        First::Hello => {
            let feats = u.int_in_range(0..=3u32)?;
            hello(&mut cur, proto::PROTOCOL_VERSION, feats, b"fuzz");
            plan.first_op = Some(op::HELLO);
        }
        First::BadVersion => {
            let mut v: u16 = u.arbitrary()?;
            if v == proto::PROTOCOL_VERSION {
                v = 0;
            }
            hello(&mut cur, v, features::NO_RESPONDERS, b"fuzz");
            plan.first_op = Some(op::HELLO);
        }
        First::Nothing => {}
    }
    let mut truncate = 0usize;
    while !u.is_empty() && plan.chunks.len() < 64 {
        let before = cur.len();
        let mut this_op = None;
        match u.int_in_range(0..=19u8)? {
            0..=3 => {
                let subject = literal(u)?;
                let reply = if u.ratio(1, 4)? {
                    literal(u)?
                } else {
                    Vec::new()
                };
                let mut hdrs = BytesMut::new();
                match u.int_in_range(0..=7u8)? {
                    0 => {
                        let v = if u.ratio(1, 2)? {
                            b"1700000000000000".to_vec()
                        } else {
                            let n = u.int_in_range(0..=8)?;
                            u.bytes(n)?.to_vec()
                        };
                        let _ = proto::headers::encode_header(&mut hdrs, b"Aw-Sent-Us", &v);
                    }
                    1 => {
                        let n = u.int_in_range(0..=12)?;
                        hdrs.extend_from_slice(u.bytes(n)?);
                    }
                    _ => {}
                }
                let len = match u.int_in_range(0..=7u8)? {
                    0 => u.int_in_range(MAX_PAYLOAD - 2..=MAX_PAYLOAD + 2)? as usize,
                    1 => u.int_in_range(0..=MAX_PAYLOAD as usize + 256)?,
                    _ => u.int_in_range(0..=8)?,
                };
                let payload = vec![b'x'; len.saturating_sub(hdrs.len())];
                proto::encode_pub(&mut cur, &subject, &reply, &hdrs, &payload)
                    .expect("PUB encodes");
                this_op = Some(op::PUB);
            }
            4..=6 => {
                let sid = u.int_in_range(0..=7u32)?;
                let p = pattern(u)?;
                let q = queue(u)?;
                proto::encode_sub(&mut cur, sid, &p, &q).expect("SUB encodes");
                plan.sids.entry(sid).or_default().push(p);
                this_op = Some(op::SUB);
            }
            7 | 8 => {
                let sid = u.int_in_range(0..=7u32)?;
                let max = u.int_in_range(0..=3u32)?;
                proto::encode_unsub(&mut cur, sid, max);
                this_op = Some(op::UNSUB);
            }
            9 | 10 => {
                proto::encode_ping(&mut cur);
                plan.pings += 1;
                this_op = Some(op::PING);
            }
            11 => {
                proto::encode_pong(&mut cur);
                this_op = Some(op::PONG);
            }
            12 => {
                let v = if u.ratio(1, 2)? {
                    proto::PROTOCOL_VERSION
                } else {
                    u.arbitrary()?
                };
                hello(&mut cur, v, u.int_in_range(0..=3u32)?, b"again");
                this_op = Some(op::HELLO);
            }
            13 | 14 => {
                control_frame(u, &mut cur)?;
                this_op = Some(cur[before + 4]);
            }
            15 => {
                // A frame of any op with a correct length but a random body.
                plan.clean = false;
                let o: u8 = u.arbitrary()?;
                let f: u8 = u.arbitrary()?;
                let n = u.int_in_range(0..=24)?;
                raw_frame(&mut cur, o, f, u.bytes(n)?);
            }
            16 => {
                // Garbage.
                plan.clean = false;
                let n = u.int_in_range(1..=16)?;
                cur.extend_from_slice(u.bytes(n)?);
            }
            17 => {
                // A length below the header, or over the frame limit.
                plan.clean = false;
                let len: u32 = if u.ratio(1, 2)? {
                    u.int_in_range(0..=5)?
                } else {
                    u.int_in_range(
                        (MAX_PAYLOAD as usize + proto::FRAME_OVERHEAD_ALLOWANCE + 1) as u32
                            ..=u32::MAX,
                    )?
                };
                cur.extend_from_slice(&len.to_le_bytes());
                cur.extend_from_slice(&[op::PUB, 0]);
            }
            18 => {
                // End of this write.
                if !cur.is_empty() {
                    plan.chunks.push(cur.split().to_vec());
                }
            }
            _ => {
                // Cut the stream short at the end.
                truncate = u.int_in_range(1..=8)?;
            }
        }
        if this_op.is_some()
            && cur.len() - before > MAX_PAYLOAD as usize + proto::FRAME_OVERHEAD_ALLOWANCE
        {
            // Over the frame limit (a REGISTER with long metadata): fatal, not predicted.
            plan.clean = false;
        }
        if plan.first_op.is_none() {
            plan.first_op = this_op;
        }
    }
    if !cur.is_empty() {
        plan.chunks.push(cur.to_vec());
    }
    if truncate > 0 {
        if let Some(last) = plan.chunks.last_mut() {
            let keep = last.len().saturating_sub(truncate);
            last.truncate(keep);
            plan.clean = false;
        }
    }
    Ok(plan)
}

// ---------------------------------------------------------------------------------------------
// Driving the broker.

/// Attaches a new socket pair to the broker; returns our end.
fn attach(server: &ServerHandle) -> StdUnix {
    let start = Instant::now();
    loop {
        // A connection of the previous input may not be counted out yet: retry briefly.
        let (ours, theirs) = StdUnix::pair().expect("socket pair");
        match server.attach(theirs) {
            Ok(()) => return ours,
            Err(e) => {
                assert!(
                    start.elapsed() < DEADLINE,
                    "attach refused for {DEADLINE:?}: {e} (connections leaked?)"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

fn tokio_stream(s: StdUnix) -> tokio::net::UnixStream {
    s.set_nonblocking(true).expect("non-blocking");
    tokio::net::UnixStream::from_std(s).expect("register with the client runtime")
}

/// Reads until `buf` holds a PONG frame after `from` (whole frames only), or end of stream.
async fn read_until_pong(s: &mut tokio::net::unix::OwnedReadHalf, buf: &mut Vec<u8>) {
    let mut at = 0usize;
    loop {
        while buf.len() - at >= 4 {
            let len = u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
            if len < proto::HEADER_LEN || buf.len() - at < len {
                break;
            }
            let o = buf[at + 4];
            at += len;
            if o == op::PONG {
                return;
            }
        }
        match s.read_buf(buf).await {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("read from the broker: {e}"),
        }
    }
}

/// Reads to end of stream. Returns whether the stream ended with a reset instead: the broker
/// closed its end with bytes of ours still unread (Linux reports that to the peer as
/// ECONNRESET, after the data that was queued).
async fn read_all(s: &mut tokio::net::unix::OwnedReadHalf, buf: &mut Vec<u8>) -> bool {
    loop {
        match s.read_buf(buf).await {
            Ok(0) => return false,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(e) => panic!("read from the broker: {e}"),
        }
    }
}

/// Runs the plan; returns the bytes the broker sent on the main and the second connection.
async fn exchange(server: &ServerHandle, plan: &Plan) -> ((Vec<u8>, bool), (Vec<u8>, bool)) {
    // The second connection: HELLO, its SUBs and a PING; its PONG means the SUBs are routed.
    let mut second = None;
    let mut out2 = Vec::new();
    if let Some(subs) = &plan.second {
        let (mut rd, mut wr) = tokio_stream(attach(server)).into_split();
        let mut b = BytesMut::new();
        hello(
            &mut b,
            proto::PROTOCOL_VERSION,
            features::NO_RESPONDERS,
            b"sub",
        );
        for (sid, p, q) in subs {
            proto::encode_sub(&mut b, *sid, p, q).expect("SUB encodes");
        }
        proto::encode_ping(&mut b);
        wr.write_all(&b).await.expect("write to the broker");
        read_until_pong(&mut rd, &mut out2).await;
        second = Some((rd, wr));
    }
    let (mut rd, mut wr) = tokio_stream(attach(server)).into_split();
    let writer = async move {
        for c in &plan.chunks {
            // The broker closes after a fatal error: later writes fail, which is fine.
            if wr.write_all(c).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
        let _ = wr.shutdown().await;
    };
    let reader = async move {
        let mut out = Vec::new();
        let reset = read_all(&mut rd, &mut out).await;
        (out, reset)
    };
    match second {
        None => (tokio::join!(writer, reader).1, (out2, false)),
        Some((mut rd2, mut wr2)) => {
            let main = async move {
                let out = tokio::join!(writer, reader).1;
                let _ = wr2.shutdown().await;
                out
            };
            let other = async move {
                let reset = read_all(&mut rd2, &mut out2).await;
                (out2, reset)
            };
            tokio::join!(main, other)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checking what the broker sent.

/// What a connection's output held.
#[derive(Debug, Default)]
struct Seen {
    pongs: usize,
    /// The fatal ERR's code, if one came.
    fatal: Option<u16>,
    /// Every ERR code, in order.
    errs: Vec<u16>,
    frames: usize,
}

/// Decodes `out` as the broker's side of a connection and checks the invariants every
/// connection must keep. `sids`: the patterns per sid, when known (clean plans).
fn check_stream(who: &str, out: &[u8], sids: Option<&HashMap<u32, Vec<Vec<u8>>>>) -> Seen {
    let mut seen = Seen::default();
    let mut at = 0usize;
    let ctx = |at: usize| {
        format!(
            "{who}: at byte {at} of {}: {:02x?}",
            out.len(),
            &out[..out.len().min(256)]
        )
    };
    while at < out.len() {
        // The frame limit a client applies to what it receives (PROTOCOL.md section 1).
        let limit = MAX_PAYLOAD as usize + proto::FRAME_OVERHEAD_ALLOWANCE;
        let (frame, used) = match proto::decode_frame(&out[at..], usize::MAX) {
            Ok(Some(f)) => f,
            Ok(None) => panic!("broker's stream ends inside a frame; {}", ctx(at)),
            Err(e) => panic!("broker sent an invalid frame ({e}); {}", ctx(at)),
        };
        if used > limit {
            match frame {
                // Known finding (admin/tests/fuzz_regressions.rs): a `$SYS.components` event
                // is the registration as JSON and can exceed the limit. Noted once, not fatal,
                // so the run goes on looking for the rest.
                Frame::Msg(m) if m.subject.starts_with(b"$SYS.components.") => {
                    if !KNOWN_OVERSIZE.swap(true, Ordering::Relaxed) {
                        eprintln!(
                            "known finding: {} event of {used} bytes over the frame limit {limit}",
                            String::from_utf8_lossy(m.subject)
                        );
                    }
                }
                // Known finding too: DISCOVERED lists the instances with their metadata.
                Frame::Unknown {
                    op: op::DISCOVERED, ..
                } => {
                    if !KNOWN_OVERSIZE_DISCOVERED.swap(true, Ordering::Relaxed) {
                        eprintln!(
                            "known finding: DISCOVERED of {used} bytes over the frame limit {limit}"
                        );
                    }
                }
                _ => panic!(
                    "broker sent a frame of {used} bytes (op {:#04x}), over the frame limit \
                     {limit}; {}",
                    frame.op(),
                    ctx(at)
                ),
            }
        }
        assert!(
            seen.fatal.is_none(),
            "broker sent op {:#04x} after a fatal ERR (code {:?}); {}",
            frame.op(),
            seen.fatal,
            ctx(at)
        );
        if seen.frames == 0 {
            assert!(
                matches!(frame, Frame::Info(_)),
                "broker's first frame is op {:#04x}, not INFO; {}",
                frame.op(),
                ctx(at)
            );
        }
        match frame {
            Frame::Info(i) => {
                assert_eq!(seen.frames, 0, "INFO twice; {}", ctx(at));
                assert_eq!(i.max_payload, MAX_PAYLOAD, "INFO max_payload; {}", ctx(at));
            }
            Frame::Ping => {}
            Frame::Pong => seen.pongs += 1,
            Frame::Err(e) => {
                assert!(
                    ErrorCode::from_u16(e.code).is_some(),
                    "ERR with unknown code {}; {}",
                    e.code,
                    ctx(at)
                );
                let code = ErrorCode::from_u16(e.code).expect("checked");
                assert_eq!(
                    e.fatal,
                    code.is_fatal(),
                    "ERR {code} with fatal flag {}; {}",
                    e.fatal,
                    ctx(at)
                );
                assert!(
                    std::str::from_utf8(e.message).is_ok(),
                    "ERR message is not UTF-8; {}",
                    ctx(at)
                );
                seen.errs.push(e.code);
                if e.fatal {
                    seen.fatal = Some(e.code);
                }
            }
            Frame::Msg(m) => {
                assert!(
                    proto::validate_literal(m.subject).is_ok(),
                    "MSG on an invalid subject {:?}; {}",
                    String::from_utf8_lossy(m.subject),
                    ctx(at)
                );
                // A client's PUB over max_payload is dropped; the broker's own `$SYS` events
                // are bounded by the frame limit only (checked for every frame above).
                assert!(
                    m.subject.starts_with(b"$SYS.")
                        || m.headers.len() + m.payload.len() <= MAX_PAYLOAD as usize,
                    "MSG over max_payload; {}",
                    ctx(at)
                );
                assert!(
                    m.flags & !flags::MSG_NO_RESPONDERS == 0,
                    "MSG with unknown flags {:#04x}; {}",
                    m.flags,
                    ctx(at)
                );
                if let Some(sids) = sids {
                    let pats = sids.get(&m.sid).unwrap_or_else(|| {
                        panic!("MSG for sid {} never subscribed; {}", m.sid, ctx(at))
                    });
                    assert!(
                        pats.iter().any(|p| proto::subject::matches(p, m.subject)),
                        "MSG on {:?} for sid {} whose patterns {:?} do not match; {}",
                        String::from_utf8_lossy(m.subject),
                        m.sid,
                        pats.iter()
                            .map(|p| String::from_utf8_lossy(p).into_owned())
                            .collect::<Vec<_>>(),
                        ctx(at)
                    );
                }
            }
            Frame::Unknown { op: o, .. }
                if matches!(
                    o,
                    op::REGISTERED | op::CONFIG | op::DISCOVERED | op::LAMEDUCK
                ) => {}
            other => panic!(
                "broker sent op {:#04x}, which servers never send; {}",
                other.op(),
                ctx(at)
            ),
        }
        seen.frames += 1;
        at += used;
    }
    assert!(
        seen.frames > 0,
        "{who}: the broker closed without sending INFO"
    );
    seen
}

/// The predictions for a plan made only of well-formed frames.
fn check_clean(plan: &Plan, seen: &Seen, out: &[u8]) {
    let slow = ErrorCode::SlowConsumer.as_u16();
    let show = || format!("plan {plan:?}; output {:02x?}", &out[..out.len().min(512)]);
    match (plan.first, plan.first_op) {
        (_, None) => assert_eq!(seen.frames, 1, "only INFO expected; {}", show()),
        (First::BadVersion, _) => {
            assert_eq!(
                seen.errs,
                [ErrorCode::UnsupportedVersion.as_u16()],
                "a bad HELLO version must get exactly unsupported_version; {}",
                show()
            );
            assert_eq!(seen.frames, 2, "INFO, ERR expected; {}", show());
        }
        (First::Nothing, Some(first)) if first != op::HELLO => {
            assert_eq!(
                seen.errs,
                [ErrorCode::HandshakeRequired.as_u16()],
                "a first frame other than HELLO must get exactly handshake_required; {}",
                show()
            );
            assert_eq!(seen.frames, 2, "INFO, ERR expected; {}", show());
        }
        // A good HELLO first (or a HELLO op drawn first, whose version decides).
        (First::Nothing, Some(_)) => {}
        (First::Hello, _) => match seen.fatal {
            None => assert_eq!(
                seen.pongs,
                plan.pings,
                "every PING after a good HELLO gets a PONG; {}",
                show()
            ),
            Some(c) => assert_eq!(
                c,
                slow,
                "no fatal ERR but slow_consumer after a good HELLO and well-formed frames; {}",
                show()
            ),
        },
    }
}

/// Opens the long-lived probe connection and completes its handshake.
fn open_probe(server: &ServerHandle) -> StdUnix {
    let mut s = attach(server);
    s.set_read_timeout(Some(DEADLINE)).expect("read timeout");
    let mut b = BytesMut::new();
    hello(&mut b, proto::PROTOCOL_VERSION, 0, b"probe");
    s.write_all(&b).expect("write the probe HELLO");
    s
}

/// PING on the probe connection; `Ok` on its PONG, `Err` when the connection ended.
fn probe_once(s: &mut StdUnix) -> Result<(), String> {
    let mut b = BytesMut::new();
    proto::encode_ping(&mut b);
    s.write_all(&b).map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut at = 0;
        while let Some((f, used)) = proto::decode_frame(&buf[at..], usize::MAX)
            .map_err(|e| format!("invalid frame on the probe connection: {e}"))?
        {
            at += used;
            match f {
                Frame::Pong => return Ok(()),
                Frame::Ping => {
                    let mut p = BytesMut::new();
                    proto::encode_pong(&mut p);
                    s.write_all(&p).map_err(|e| format!("write: {e}"))?;
                }
                Frame::Err(e) if e.fatal => {
                    return Err(format!(
                        "closed with ERR {}: {}",
                        e.code,
                        String::from_utf8_lossy(e.message)
                    ))
                }
                _ => {}
            }
        }
        buf.drain(..at);
        match s.read(&mut chunk) {
            Ok(0) => return Err("end of stream".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("the broker does not answer a PING within {DEADLINE:?}: {e}"),
        }
    }
}

/// The broker is alive (answers a PING on a long-lived connection) and holds no connection
/// but the probe.
fn probe(w: &World) {
    let mut guard = w.probe.lock().expect("probe lock");
    let s = guard.as_mut().expect("probe connection");
    if let Err(why) = probe_once(s) {
        // The probe connection itself may have been closed for a reason of its own: a fresh one
        // must work.
        let mut fresh = open_probe(&w.server);
        if let Err(again) = probe_once(&mut fresh) {
            panic!(
                "the broker is dead: the probe connection failed ({why}), a new one too ({again})"
            );
        }
        *guard = Some(fresh);
    }
    let start = Instant::now();
    loop {
        let open = agentwire_broker::shard::open_connections(w.server.global());
        if open == 1 {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{} connections open after every input ended (only the probe should be)",
            open
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fuzz_target!(|data: &[u8]| {
    let w = &*WORLD;
    let mut u = Unstructured::new(data);
    let Ok(plan) = build(&mut u) else {
        return;
    };
    let ((out, reset), (out2, reset2)) = w.rt.block_on(async {
        match tokio::time::timeout(DEADLINE, exchange(&w.server, &plan)).await {
            Ok(r) => r,
            Err(_) => panic!("broker hang: no end of stream within {DEADLINE:?}; plan {plan:?}"),
        }
    });
    let sids = plan.clean.then_some(&plan.sids);
    let seen = check_stream("main connection", &out, sids);
    assert!(
        !reset || seen.fatal.is_some(),
        "the broker dropped unread input without a fatal ERR; plan {plan:?}"
    );
    if plan.clean {
        check_clean(&plan, &seen, &out);
    }
    if let Some(subs) = &plan.second {
        let mut sids2: HashMap<u32, Vec<Vec<u8>>> = HashMap::new();
        for (sid, p, _) in subs {
            sids2.entry(*sid).or_default().push(p.clone());
        }
        let seen2 = check_stream("second connection", &out2, Some(&sids2));
        assert!(
            !reset2 || seen2.fatal.is_some(),
            "the broker dropped the subscribed connection's input without a fatal ERR"
        );
        if let Some(c) = seen2.fatal {
            assert_eq!(
                c,
                ErrorCode::SlowConsumer.as_u16(),
                "the subscribed connection got a fatal ERR; plan {plan:?}"
            );
        } else {
            assert_eq!(
                seen2.pongs, 1,
                "the subscribed connection's PING gets one PONG"
            );
        }
    }
    if w.inputs.fetch_add(1, Ordering::Relaxed) % PROBE_EVERY == 0 {
        probe(w);
    }
});
