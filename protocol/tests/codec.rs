//! Integration tests of the wire codec: round trips per frame type, golden bytes that pin the
//! layout documented in `PROTOCOL.md`, truncation at every byte offset, length checks, the
//! PUB → MSG rewrite, and property tests (arbitrary input never panics, random frames survive a
//! streaming decode split at random points, the subject matcher agrees with a reference).

use agentwire_protocol::{
    decode_frame, encode_err, encode_hello, encode_info, encode_msg, encode_msg_from_pub,
    encode_ping, encode_pong, encode_pub, encode_sub, encode_unsub, features, flags, frame_len,
    headers, op, parse_frame, pub_frame_len, subject, validate_literal, validate_pattern,
    validate_queue, DecodeError, EncodeError, ErrFrame, Frame, HelloFrame, InfoFrame, MsgFrame,
    PatternKind, PubFrame, SubFrame, UnsubFrame, DEFAULT_MAX_PAYLOAD, FRAME_OVERHEAD_ALLOWANCE,
    HEADER_LEN, MSG_TAIL_OFFSET, PUB_TAIL_OFFSET,
};
use bytes::{Buf, BufMut, BytesMut};
use proptest::prelude::*;

/// The frame limit a default server uses.
const MAX_FRAME: usize = DEFAULT_MAX_PAYLOAD as usize + FRAME_OVERHEAD_ALLOWANCE;

// ---------------------------------------------------------------------------------------------
// An owned description of a frame: encodes itself with the crate's encoders and compares with
// what the decoder returns.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Spec {
    Hello {
        version: u16,
        features: u32,
        name: Vec<u8>,
        token: Vec<u8>,
    },
    Info {
        version: u16,
        features: u32,
        max_payload: u32,
        shard_count: u16,
        shard_id: u16,
        client_id: u64,
        server_id: Vec<u8>,
        nonce: Vec<u8>,
    },
    Ping,
    Pong,
    Err {
        code: u16,
        fatal: bool,
        message: String,
    },
    Pub {
        subject: Vec<u8>,
        reply: Vec<u8>,
        headers: Vec<u8>,
        payload: Vec<u8>,
    },
    Sub {
        sid: u32,
        subject: Vec<u8>,
        queue: Vec<u8>,
    },
    Unsub {
        sid: u32,
        max_msgs: u32,
    },
    Msg {
        sid: u32,
        flags: u8,
        subject: Vec<u8>,
        reply: Vec<u8>,
        headers: Vec<u8>,
        payload: Vec<u8>,
    },
    Unknown {
        op: u8,
        flags: u8,
        body: Vec<u8>,
    },
}

impl Spec {
    fn encode(&self, dst: &mut BytesMut) {
        match self {
            Spec::Hello {
                version,
                features,
                name,
                token,
            } => encode_hello(
                dst,
                &HelloFrame {
                    version: *version,
                    features: *features,
                    name,
                    token,
                    public_key: b"",
                    signature: b"",
                },
            )
            .expect("HELLO fields fit their length fields"),
            Spec::Info {
                version,
                features,
                max_payload,
                shard_count,
                shard_id,
                client_id,
                server_id,
                nonce,
            } => encode_info(
                dst,
                &InfoFrame {
                    version: *version,
                    features: *features,
                    max_payload: *max_payload,
                    shard_count: *shard_count,
                    shard_id: *shard_id,
                    client_id: *client_id,
                    server_id,
                    nonce,
                },
            )
            .expect("INFO fields fit their length fields"),
            Spec::Ping => encode_ping(dst),
            Spec::Pong => encode_pong(dst),
            Spec::Err {
                code,
                fatal,
                message,
            } => encode_err(dst, *code, *fatal, message),
            Spec::Pub {
                subject,
                reply,
                headers,
                payload,
            } => encode_pub(dst, subject, reply, headers, payload)
                .expect("PUB fields fit their length fields"),
            Spec::Sub {
                sid,
                subject,
                queue,
            } => encode_sub(dst, *sid, subject, queue).expect("SUB fields fit"),
            Spec::Unsub { sid, max_msgs } => encode_unsub(dst, *sid, *max_msgs),
            Spec::Msg {
                sid,
                flags,
                subject,
                reply,
                headers,
                payload,
            } => encode_msg(dst, *sid, *flags, subject, reply, headers, payload)
                .expect("MSG fields fit their length fields"),
            Spec::Unknown { op, flags, body } => {
                // No encoder exists for ops this version does not know: write the common
                // header by hand, as a newer peer would.
                let len = u32::try_from(HEADER_LEN + body.len()).expect("test bodies are small");
                dst.put_u32_le(len);
                dst.put_u8(*op);
                dst.put_u8(*flags);
                dst.put_slice(body);
            }
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b.to_vec()
    }

    fn from_frame(f: &Frame<'_>) -> Spec {
        match *f {
            Frame::Hello(h) => Spec::Hello {
                version: h.version,
                features: h.features,
                name: h.name.to_vec(),
                token: h.token.to_vec(),
            },
            Frame::Info(i) => Spec::Info {
                version: i.version,
                features: i.features,
                max_payload: i.max_payload,
                shard_count: i.shard_count,
                shard_id: i.shard_id,
                client_id: i.client_id,
                server_id: i.server_id.to_vec(),
                nonce: i.nonce.to_vec(),
            },
            Frame::Ping => Spec::Ping,
            Frame::Pong => Spec::Pong,
            Frame::Err(e) => Spec::Err {
                code: e.code,
                fatal: e.fatal,
                message: String::from_utf8(e.message.to_vec())
                    .expect("encode_err writes UTF-8 messages"),
            },
            Frame::Pub(p) => Spec::Pub {
                subject: p.subject.to_vec(),
                reply: p.reply.to_vec(),
                headers: p.headers.to_vec(),
                payload: p.payload.to_vec(),
            },
            Frame::Sub(s) => Spec::Sub {
                sid: s.sid,
                subject: s.subject.to_vec(),
                queue: s.queue.to_vec(),
            },
            Frame::Unsub(u) => Spec::Unsub {
                sid: u.sid,
                max_msgs: u.max_msgs,
            },
            Frame::Msg(m) => Spec::Msg {
                sid: m.sid,
                flags: m.flags,
                subject: m.subject.to_vec(),
                reply: m.reply.to_vec(),
                headers: m.headers.to_vec(),
                payload: m.payload.to_vec(),
            },
            Frame::Unknown { op, flags, body } => Spec::Unknown {
                op,
                flags,
                body: body.to_vec(),
            },
        }
    }
}

/// Decodes exactly one frame that fills `bytes`, checking the consumed length.
fn decode_one(bytes: &[u8]) -> Frame<'_> {
    let (frame, used) = decode_frame(bytes, MAX_FRAME)
        .expect("a valid frame decodes")
        .expect("a complete frame is not reported as partial");
    assert_eq!(used, bytes.len(), "consumed length == encoded length");
    assert_eq!(
        parse_frame(bytes).expect("parse_frame agrees with decode_frame"),
        frame
    );
    frame
}

/// Encodes `spec`, decodes it, and checks it comes back unchanged with the whole frame consumed.
fn assert_round_trip(spec: &Spec) {
    let bytes = spec.to_bytes();
    assert_eq!(
        frame_len(&bytes, MAX_FRAME).expect("valid length"),
        Some(bytes.len()),
        "length field counts the whole frame"
    );
    let frame = decode_one(&bytes);
    assert_eq!(Spec::from_frame(&frame), *spec);
}

/// Feeds `chunks` one after another through a socket-reader style loop: append the chunk,
/// decode every complete frame, keep the rest. Returns the frames and the bytes left over.
fn stream_decode<'c>(chunks: impl IntoIterator<Item = &'c [u8]>) -> (Vec<Spec>, usize) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        while let Some((frame, used)) =
            decode_frame(&buf, MAX_FRAME).expect("a stream of valid frames never errors")
        {
            assert!(used >= HEADER_LEN && used <= buf.len());
            out.push(Spec::from_frame(&frame));
            buf.advance(used);
        }
    }
    (out, buf.len())
}

fn header_block(entries: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut b = BytesMut::new();
    for (n, v) in entries {
        headers::encode_header(&mut b, n, v).expect("valid header entry");
    }
    b.to_vec()
}

// ---------------------------------------------------------------------------------------------
// Round trips per frame type.
// ---------------------------------------------------------------------------------------------

fn sample_frames() -> Vec<Spec> {
    vec![
        Spec::Hello {
            version: 1,
            features: features::HEADERS | features::NO_RESPONDERS,
            name: b"agent-7".to_vec(),
            token: b"s3cret".to_vec(),
        },
        Spec::Hello {
            version: 0xffff,
            features: u32::MAX,
            name: Vec::new(),
            token: Vec::new(),
        },
        Spec::Info {
            version: 1,
            features: features::HEADERS,
            max_payload: DEFAULT_MAX_PAYLOAD,
            shard_count: 8,
            shard_id: 3,
            client_id: u64::MAX - 1,
            server_id: b"srv-abc".to_vec(),
            nonce: b"nonce!".to_vec(),
        },
        Spec::Ping,
        Spec::Pong,
        Spec::Err {
            code: 9,
            fatal: true,
            message: "slow consumer".to_owned(),
        },
        Spec::Err {
            code: 6,
            fatal: false,
            message: String::new(),
        },
        Spec::Pub {
            subject: b"a.b".to_vec(),
            reply: Vec::new(),
            headers: Vec::new(),
            payload: b"hello".to_vec(),
        },
        Spec::Pub {
            subject: b"svc.echo".to_vec(),
            reply: b"_INBOX.xyz.1".to_vec(),
            headers: header_block(&[(b"Trace-Id", b"42"), (b"k", b"")]),
            payload: vec![0, 1, 2, 255],
        },
        Spec::Pub {
            subject: b"empty".to_vec(),
            reply: Vec::new(),
            headers: header_block(&[(b"only", b"headers")]),
            payload: Vec::new(),
        },
        Spec::Sub {
            sid: 1,
            subject: b"a.*.c".to_vec(),
            queue: Vec::new(),
        },
        Spec::Sub {
            sid: u32::MAX,
            subject: b"jobs.>".to_vec(),
            queue: b"workers".to_vec(),
        },
        Spec::Unsub {
            sid: 1,
            max_msgs: 0,
        },
        Spec::Unsub {
            sid: 77,
            max_msgs: 1000,
        },
        Spec::Msg {
            sid: 5,
            flags: 0,
            subject: b"a.b".to_vec(),
            reply: b"_INBOX.r".to_vec(),
            headers: header_block(&[(b"h", b"v")]),
            payload: b"payload".to_vec(),
        },
        Spec::Msg {
            sid: 2,
            flags: flags::MSG_NO_RESPONDERS,
            subject: b"_INBOX.abc.1".to_vec(),
            reply: Vec::new(),
            headers: Vec::new(),
            payload: Vec::new(),
        },
        Spec::Unknown {
            op: op::CONTROL_FIRST,
            flags: 0x80,
            body: b"rkyv bytes".to_vec(),
        },
        Spec::Unknown {
            op: 0xff,
            flags: 0,
            body: Vec::new(),
        },
    ]
}

#[test]
fn round_trip_every_frame_type() {
    let frames = sample_frames();
    let mut ops: Vec<u8> = frames
        .iter()
        .map(|s| decode_one(&s.to_bytes()).op())
        .collect();
    ops.sort_unstable();
    ops.dedup();
    for o in [
        op::HELLO,
        op::INFO,
        op::PING,
        op::PONG,
        op::ERR,
        op::PUB,
        op::SUB,
        op::UNSUB,
        op::MSG,
        op::CONTROL_FIRST,
    ] {
        assert!(ops.contains(&o), "sample frames cover op {o:#04x}");
    }
    for spec in &frames {
        assert_round_trip(spec);
    }
}

#[test]
fn decoded_views_borrow_the_input() {
    let spec = Spec::Pub {
        subject: b"a.b".to_vec(),
        reply: b"r".to_vec(),
        headers: Vec::new(),
        payload: b"xyz".to_vec(),
    };
    let bytes = spec.to_bytes();
    let Frame::Pub(p) = decode_one(&bytes) else {
        panic!("expected PUB");
    };
    let range = bytes.as_ptr_range();
    assert!(range.contains(&p.subject.as_ptr()));
    assert!(range.contains(&p.payload.as_ptr()));
    assert_eq!(p.payload.as_ptr(), bytes[bytes.len() - 3..].as_ptr());
}

#[test]
fn err_frame_fatal_flag_and_code() {
    let mut b = BytesMut::new();
    encode_err(&mut b, 3, true, "frame too large");
    assert_eq!(b[5], flags::ERR_FATAL);
    let Frame::Err(e) = decode_one(&b) else {
        panic!("expected ERR");
    };
    assert_eq!(
        e,
        ErrFrame {
            code: 3,
            fatal: true,
            message: b"frame too large"
        }
    );
    let mut b = BytesMut::new();
    encode_err(&mut b, 4, false, "x");
    assert_eq!(b[5], 0);
}

#[test]
fn err_message_is_cut_at_a_char_boundary() {
    // 65,534 ASCII bytes then a 3-byte char: the char straddles the 65,535 limit and is dropped.
    let mut message = "a".repeat(u16::MAX as usize - 1);
    message.push('€');
    let mut b = BytesMut::new();
    encode_err(&mut b, 18, true, &message);
    let Frame::Err(e) = decode_one(&b) else {
        panic!("expected ERR");
    };
    assert_eq!(e.message.len(), u16::MAX as usize - 1);
    assert!(std::str::from_utf8(e.message).is_ok());
}

#[test]
fn err_message_over_the_limit_is_cut_to_the_limit() {
    let message = "a".repeat(u16::MAX as usize + 1);
    let mut b = BytesMut::new();
    encode_err(&mut b, 18, true, &message);
    let Frame::Err(e) = decode_one(&b) else {
        panic!("expected ERR");
    };
    assert_eq!(e.message, &message.as_bytes()[..u16::MAX as usize]);
}

#[test]
fn queue_names() {
    assert_eq!(validate_queue(b"workers.eu-1"), Ok(()));
    assert_eq!(validate_queue(&[b'q'; 255]), Ok(()));
    assert!(validate_queue(&[b'q'; 256]).is_err());
    assert!(validate_queue(b"").is_err());
    assert!(validate_queue(b"a>").is_err());
    assert!(validate_queue(b"*").is_err());
    assert!(validate_queue(b"a b").is_err());
    assert!(validate_queue(b"caf\xc3\xa9").is_err());
}

#[test]
fn encoders_reject_oversized_fields_and_write_nothing() {
    let long = vec![b'a'; u16::MAX as usize + 1];
    let mut b = BytesMut::new();
    assert_eq!(
        encode_pub(&mut b, &long, b"", b"", b""),
        Err(EncodeError::FieldTooLong {
            field: "subject",
            len: long.len(),
            max: u16::MAX as usize
        })
    );
    assert!(matches!(
        encode_pub(&mut b, b"a", &long, b"", b""),
        Err(EncodeError::FieldTooLong { field: "reply", .. })
    ));
    assert!(matches!(
        encode_msg(&mut b, 1, 0, &long, b"", b"", b""),
        Err(EncodeError::FieldTooLong {
            field: "subject",
            ..
        })
    ));
    assert!(matches!(
        encode_sub(&mut b, 1, b"a", &long),
        Err(EncodeError::FieldTooLong { field: "queue", .. })
    ));
    let hello = HelloFrame {
        version: 1,
        features: 0,
        name: &long,
        token: b"",
        public_key: b"",
        signature: b"",
    };
    assert!(matches!(
        encode_hello(&mut b, &hello),
        Err(EncodeError::FieldTooLong { field: "name", .. })
    ));
    let info = InfoFrame {
        version: 1,
        features: 0,
        max_payload: 0,
        shard_count: 1,
        shard_id: 0,
        client_id: 0,
        server_id: b"",
        nonce: &long,
    };
    assert!(matches!(
        encode_info(&mut b, &info),
        Err(EncodeError::FieldTooLong { field: "nonce", .. })
    ));
    assert!(b.is_empty(), "nothing is written on error");
    // The largest encodable subject is fine.
    encode_pub(&mut b, &long[1..], b"", b"", b"").expect("65,535-byte subject fits");
    assert_eq!(b.len(), PUB_TAIL_OFFSET + u16::MAX as usize);
}

#[test]
fn pub_frame_len_matches_the_encoder() {
    for spec in sample_frames() {
        if let Spec::Pub {
            subject,
            reply,
            headers,
            payload,
        } = &spec
        {
            assert_eq!(
                pub_frame_len(subject, reply, headers, payload).expect("encodable"),
                spec.to_bytes().len()
            );
        }
    }
}

#[test]
fn hello_and_info_accept_trailing_bytes() {
    let mut b = BytesMut::new();
    let hello = HelloFrame {
        version: 2,
        features: 1,
        name: b"n",
        token: b"t",
        public_key: b"",
        signature: b"",
    };
    encode_hello(&mut b, &hello).expect("valid HELLO");
    b.extend_from_slice(b"future");
    let len = u32::try_from(b.len()).expect("small frame");
    b[0..4].copy_from_slice(&len.to_le_bytes());
    assert_eq!(decode_one(&b), Frame::Hello(hello));

    let mut b = BytesMut::new();
    let info = InfoFrame {
        version: 2,
        features: 3,
        max_payload: 10,
        shard_count: 1,
        shard_id: 0,
        client_id: 9,
        server_id: b"s",
        nonce: b"",
    };
    encode_info(&mut b, &info).expect("valid INFO");
    b.extend_from_slice(&[0xaa; 9]);
    let len = u32::try_from(b.len()).expect("small frame");
    b[0..4].copy_from_slice(&len.to_le_bytes());
    assert_eq!(decode_one(&b), Frame::Info(info));
}

// ---------------------------------------------------------------------------------------------
// Golden bytes: the layout of PROTOCOL.md, byte for byte.
// ---------------------------------------------------------------------------------------------

/// Concatenates byte pieces, so golden frames can be written field by field.
fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// PUB of `svc.echo`, reply `_INBOX.7.1`, header `Id: 9`, payload `hi` (PROTOCOL.md example).
fn golden_pub() -> Vec<u8> {
    cat(&[
        &[0x29, 0x00, 0x00, 0x00], // len 41
        &[0x10, 0x00],             // op PUB, flags 0
        &[0x08, 0x00],             // subject_len 8
        &[0x0a, 0x00],             // reply_len 10
        &[0x07, 0x00, 0x00, 0x00], // headers_len 7
        b"svc.echo",
        b"_INBOX.7.1",
        &[0x02, 0x00],
        b"Id",
        &[0x01, 0x00],
        b"9",
        b"hi",
    ])
}

/// The MSG a broker delivers for [`golden_pub`] to subscription 5 (PROTOCOL.md example).
fn golden_msg() -> Vec<u8> {
    cat(&[
        &[0x2d, 0x00, 0x00, 0x00], // len 45
        &[0x13, 0x00],             // op MSG, flags 0
        &[0x05, 0x00, 0x00, 0x00], // sid 5
        &[0x08, 0x00],             // subject_len 8
        &[0x0a, 0x00],             // reply_len 10
        &[0x07, 0x00, 0x00, 0x00], // headers_len 7
        b"svc.echo",
        b"_INBOX.7.1",
        &[0x02, 0x00],
        b"Id",
        &[0x01, 0x00],
        b"9",
        b"hi",
    ])
}

/// Every golden frame with the description that must produce it.
fn golden_frames() -> Vec<(&'static str, Spec, Vec<u8>)> {
    vec![
        (
            "HELLO",
            Spec::Hello {
                version: 1,
                features: features::HEADERS | features::NO_RESPONDERS,
                name: b"cli".to_vec(),
                token: b"tk".to_vec(),
            },
            cat(&[
                &[0x15, 0x00, 0x00, 0x00], // len 21
                &[0x01, 0x00],             // op HELLO, flags 0
                &[0x01, 0x00],             // version 1
                &[0x03, 0x00, 0x00, 0x00], // features HEADERS | NO_RESPONDERS
                &[0x03, 0x00],             // name_len 3
                &[0x02, 0x00],             // token_len 2
                b"cli",
                b"tk",
            ]),
        ),
        (
            "INFO",
            Spec::Info {
                version: 1,
                features: features::HEADERS | features::NO_RESPONDERS,
                max_payload: 1 << 20,
                shard_count: 2,
                shard_id: 1,
                client_id: 0x0102_0304_0506_0708,
                server_id: b"srv1".to_vec(),
                nonce: Vec::new(),
            },
            cat(&[
                &[0x24, 0x00, 0x00, 0x00],                         // len 36
                &[0x02, 0x00],                                     // op INFO, flags 0
                &[0x01, 0x00],                                     // version 1
                &[0x03, 0x00, 0x00, 0x00],                         // features
                &[0x00, 0x00, 0x10, 0x00],                         // max_payload 1 MiB
                &[0x02, 0x00],                                     // shard_count 2
                &[0x01, 0x00],                                     // shard_id 1
                &[0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01], // client_id
                &[0x04, 0x00],                                     // server_id_len 4
                &[0x00, 0x00],                                     // nonce_len 0
                b"srv1",
            ]),
        ),
        ("PING", Spec::Ping, vec![0x06, 0x00, 0x00, 0x00, 0x03, 0x00]),
        ("PONG", Spec::Pong, vec![0x06, 0x00, 0x00, 0x00, 0x04, 0x00]),
        (
            "ERR non-fatal",
            Spec::Err {
                code: 6,
                fatal: false,
                message: "bad subject".to_owned(),
            },
            cat(&[
                &[0x15, 0x00, 0x00, 0x00], // len 21
                &[0x05, 0x00],             // op ERR, flags 0
                &[0x06, 0x00],             // code 6 invalid_subject
                &[0x0b, 0x00],             // message_len 11
                b"bad subject",
            ]),
        ),
        (
            "ERR fatal",
            Spec::Err {
                code: 9,
                fatal: true,
                message: "slow".to_owned(),
            },
            cat(&[
                &[0x0e, 0x00, 0x00, 0x00], // len 14
                &[0x05, 0x01],             // op ERR, flags FATAL
                &[0x09, 0x00],             // code 9 slow_consumer
                &[0x04, 0x00],             // message_len 4
                b"slow",
            ]),
        ),
        (
            "PUB plain",
            Spec::Pub {
                subject: b"a.b".to_vec(),
                reply: Vec::new(),
                headers: Vec::new(),
                payload: b"hi".to_vec(),
            },
            cat(&[
                &[0x13, 0x00, 0x00, 0x00], // len 19
                &[0x10, 0x00],             // op PUB, flags 0
                &[0x03, 0x00],             // subject_len 3
                &[0x00, 0x00],             // reply_len 0
                &[0x00, 0x00, 0x00, 0x00], // headers_len 0
                b"a.b",
                b"hi",
            ]),
        ),
        (
            "PUB with reply and headers",
            Spec::Pub {
                subject: b"svc.echo".to_vec(),
                reply: b"_INBOX.7.1".to_vec(),
                headers: header_block(&[(b"Id", b"9")]),
                payload: b"hi".to_vec(),
            },
            golden_pub(),
        ),
        (
            "SUB",
            Spec::Sub {
                sid: 7,
                subject: b"a.*".to_vec(),
                queue: Vec::new(),
            },
            cat(&[
                &[0x11, 0x00, 0x00, 0x00], // len 17
                &[0x11, 0x00],             // op SUB, flags 0
                &[0x07, 0x00, 0x00, 0x00], // sid 7
                &[0x03, 0x00],             // subject_len 3
                &[0x00, 0x00],             // queue_len 0
                b"a.*",
            ]),
        ),
        (
            "SUB with queue",
            Spec::Sub {
                sid: 258,
                subject: b"jobs.>".to_vec(),
                queue: b"w".to_vec(),
            },
            cat(&[
                &[0x15, 0x00, 0x00, 0x00], // len 21
                &[0x11, 0x00],             // op SUB, flags 0
                &[0x02, 0x01, 0x00, 0x00], // sid 258
                &[0x06, 0x00],             // subject_len 6
                &[0x01, 0x00],             // queue_len 1
                b"jobs.>",
                b"w",
            ]),
        ),
        (
            "UNSUB now",
            Spec::Unsub {
                sid: 7,
                max_msgs: 0,
            },
            cat(&[
                &[0x0e, 0x00, 0x00, 0x00], // len 14
                &[0x12, 0x00],             // op UNSUB, flags 0
                &[0x07, 0x00, 0x00, 0x00], // sid 7
                &[0x00, 0x00, 0x00, 0x00], // max_msgs 0
            ]),
        ),
        (
            "UNSUB after 3",
            Spec::Unsub {
                sid: 7,
                max_msgs: 3,
            },
            cat(&[
                &[0x0e, 0x00, 0x00, 0x00], // len 14
                &[0x12, 0x00],             // op UNSUB, flags 0
                &[0x07, 0x00, 0x00, 0x00], // sid 7
                &[0x03, 0x00, 0x00, 0x00], // max_msgs 3
            ]),
        ),
        (
            "MSG",
            Spec::Msg {
                sid: 5,
                flags: 0,
                subject: b"svc.echo".to_vec(),
                reply: b"_INBOX.7.1".to_vec(),
                headers: header_block(&[(b"Id", b"9")]),
                payload: b"hi".to_vec(),
            },
            golden_msg(),
        ),
        (
            "MSG no responders",
            Spec::Msg {
                sid: 1,
                flags: flags::MSG_NO_RESPONDERS,
                subject: b"_INBOX.7.1".to_vec(),
                reply: Vec::new(),
                headers: Vec::new(),
                payload: Vec::new(),
            },
            cat(&[
                &[0x1c, 0x00, 0x00, 0x00], // len 28
                &[0x13, 0x01],             // op MSG, flags NO_RESPONDERS
                &[0x01, 0x00, 0x00, 0x00], // sid 1
                &[0x0a, 0x00],             // subject_len 10
                &[0x00, 0x00],             // reply_len 0
                &[0x00, 0x00, 0x00, 0x00], // headers_len 0
                b"_INBOX.7.1",
            ]),
        ),
        (
            "unknown op",
            Spec::Unknown {
                op: 0x40,
                flags: 0x02,
                body: vec![0xde, 0xad],
            },
            vec![0x08, 0x00, 0x00, 0x00, 0x40, 0x02, 0xde, 0xad],
        ),
    ]
}

#[test]
fn golden_bytes_encode_exactly() {
    for (name, spec, golden) in golden_frames() {
        if matches!(spec, Spec::Unknown { .. }) {
            continue; // no encoder for unknown ops: the decode test below covers it
        }
        assert_eq!(spec.to_bytes(), golden, "encoding of {name}");
    }
}

#[test]
fn golden_bytes_decode_exactly() {
    for (name, spec, golden) in golden_frames() {
        let frame = decode_one(&golden);
        assert_eq!(Spec::from_frame(&frame), spec, "decoding of {name}");
    }
}

#[test]
fn golden_header_block() {
    assert_eq!(
        header_block(&[(b"Id", b"9"), (b"k", b"")]),
        [0x02, 0x00, b'I', b'd', 0x01, 0x00, b'9', 0x01, 0x00, b'k', 0x00, 0x00]
    );
}

#[test]
fn golden_pub_becomes_golden_msg() {
    let pub_bytes = golden_pub();
    let mut out = BytesMut::new();
    encode_msg_from_pub(&mut out, 5, 0, &pub_bytes).expect("small PUB");
    assert_eq!(&out[..], &golden_msg()[..]);
}

// ---------------------------------------------------------------------------------------------
// PUB → MSG.
// ---------------------------------------------------------------------------------------------

#[test]
fn msg_from_pub_keeps_every_field() {
    for spec in sample_frames() {
        let Spec::Pub {
            subject,
            reply,
            headers,
            payload,
        } = &spec
        else {
            continue;
        };
        let pub_bytes = spec.to_bytes();
        for (sid, fl) in [(0, 0), (42, flags::MSG_NO_RESPONDERS), (u32::MAX, 0xff)] {
            let mut out = BytesMut::new();
            encode_msg_from_pub(&mut out, sid, fl, &pub_bytes).expect("small PUB");
            assert_eq!(
                out.len(),
                pub_bytes.len() + MSG_TAIL_OFFSET - PUB_TAIL_OFFSET
            );
            let frame = decode_one(&out);
            assert_eq!(
                frame,
                Frame::Msg(MsgFrame {
                    sid,
                    flags: fl,
                    subject,
                    reply,
                    headers,
                    payload,
                })
            );
            // Same bytes as building the MSG from its parts.
            let mut direct = BytesMut::new();
            encode_msg(&mut direct, sid, fl, subject, reply, headers, payload).expect("small MSG");
            assert_eq!(out, direct);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Truncation.
// ---------------------------------------------------------------------------------------------

#[test]
fn every_prefix_of_a_frame_is_incomplete() {
    let mut all = sample_frames();
    all.extend(golden_frames().into_iter().map(|(_, s, _)| s));
    for spec in all {
        let bytes = spec.to_bytes();
        for cut in 0..bytes.len() {
            assert_eq!(
                decode_frame(&bytes[..cut], MAX_FRAME),
                Ok(None),
                "{spec:?} cut at {cut}"
            );
        }
        assert!(decode_frame(&bytes, MAX_FRAME).expect("complete").is_some());
    }
}

#[test]
fn every_prefix_of_a_stream_decodes_the_complete_frames() {
    let frames = sample_frames();
    let mut stream = Vec::new();
    let mut ends = Vec::new();
    for f in &frames {
        stream.extend_from_slice(&f.to_bytes());
        ends.push(stream.len());
    }
    for cut in 0..=stream.len() {
        let complete = ends.iter().filter(|&&e| e <= cut).count();
        let consumed = if complete == 0 { 0 } else { ends[complete - 1] };
        let (got, left) = stream_decode([&stream[..cut]]);
        assert_eq!(got, frames[..complete], "cut at {cut}");
        assert_eq!(left, cut - consumed, "cut at {cut}");
    }
}

#[test]
fn byte_at_a_time_stream() {
    let frames = sample_frames();
    let stream: Vec<u8> = frames.iter().flat_map(Spec::to_bytes).collect();
    let (got, left) = stream_decode(stream.chunks(1));
    assert_eq!(got, frames);
    assert_eq!(left, 0);
}

// ---------------------------------------------------------------------------------------------
// Lengths.
// ---------------------------------------------------------------------------------------------

#[test]
fn empty_input_is_incomplete() {
    assert_eq!(decode_frame(&[], MAX_FRAME), Ok(None));
    assert_eq!(frame_len(&[], MAX_FRAME), Ok(None));
    assert_eq!(frame_len(&[6, 0, 0], MAX_FRAME), Ok(None));
}

#[test]
fn length_under_the_header_is_rejected_with_four_bytes() {
    for len in 0u32..6 {
        let b = len.to_le_bytes();
        let want = DecodeError::LengthTooSmall {
            len,
            min: HEADER_LEN,
        };
        assert_eq!(decode_frame(&b, MAX_FRAME), Err(want.clone()));
        assert_eq!(frame_len(&b, MAX_FRAME), Err(want));
    }
    // parse_frame on a slice shorter than a header.
    assert!(matches!(
        parse_frame(&[5, 0, 0, 0, 3]),
        Err(DecodeError::LengthTooSmall { len: 5, .. })
    ));
    assert!(matches!(
        parse_frame(&[]),
        Err(DecodeError::LengthTooSmall { len: 0, .. })
    ));
}

#[test]
fn length_over_the_limit_is_rejected_with_four_bytes() {
    let max = 1024;
    let b = 1025u32.to_le_bytes();
    assert_eq!(
        decode_frame(&b, max),
        Err(DecodeError::FrameTooLarge { len: 1025, max })
    );
    assert_eq!(
        decode_frame(&u32::MAX.to_le_bytes(), MAX_FRAME),
        Err(DecodeError::FrameTooLarge {
            len: u32::MAX,
            max: MAX_FRAME
        })
    );
    // Exactly the limit is fine: just incomplete until all bytes are there.
    assert_eq!(decode_frame(&1024u32.to_le_bytes(), max), Ok(None));
    assert_eq!(frame_len(&1024u32.to_le_bytes(), max), Ok(Some(1024)));
    // A complete frame one byte over a tight limit.
    let mut ping = BytesMut::new();
    encode_ping(&mut ping);
    assert!(matches!(
        decode_frame(&ping, 5),
        Err(DecodeError::FrameTooLarge { len: 6, max: 5 })
    ));
    assert!(decode_frame(&ping, 6).expect("at the limit").is_some());
    assert_eq!(
        DecodeError::FrameTooLarge { len: 1, max: 0 }.code(),
        agentwire_protocol::ErrorCode::FrameTooLarge
    );
}

/// Builds a frame from a header and body, with the length field set to the real size.
fn raw(opc: u8, fl: u8, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(HEADER_LEN + body.len()).expect("small frame");
    cat(&[&len.to_le_bytes(), &[opc, fl], body])
}

fn assert_malformed(frame: &[u8], what: &str) {
    match decode_frame(frame, MAX_FRAME) {
        Err(e @ DecodeError::Malformed { op, .. }) => {
            assert_eq!(op, frame[4], "{what}: error names the op");
            assert_eq!(e.code(), agentwire_protocol::ErrorCode::MalformedFrame);
        }
        other => panic!("{what}: expected Malformed, got {other:?}"),
    }
}

#[test]
fn inner_lengths_exceeding_the_frame_are_malformed() {
    // PUB: subject_len past the end.
    assert_malformed(
        &raw(op::PUB, 0, &cat(&[&[9, 0, 0, 0, 0, 0, 0, 0], b"a.b"])),
        "PUB sl",
    );
    // PUB: headers_len u32::MAX (no overflow, no panic).
    assert_malformed(
        &raw(op::PUB, 0, &[1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, b'a']),
        "PUB hl",
    );
    // PUB: all three at their maximum.
    assert_malformed(&raw(op::PUB, 0, &[0xff; 8]), "PUB all max");
    // PUB: shorter than its fixed fields.
    assert_malformed(&raw(op::PUB, 0, &[0; 7]), "PUB short");
    // MSG: reply_len past the end, and short.
    assert_malformed(
        &raw(
            op::MSG,
            0,
            &[1, 0, 0, 0, 1, 0, 5, 0, 0, 0, 0, 0, b'a', b'r'],
        ),
        "MSG rl",
    );
    assert_malformed(&raw(op::MSG, 0, &[0xff; 12]), "MSG all max");
    assert_malformed(&raw(op::MSG, 0, &[0; 11]), "MSG short");
    // SUB: lengths must add up exactly, in both directions.
    assert_malformed(
        &raw(op::SUB, 0, &[1, 0, 0, 0, 4, 0, 0, 0, b'a']),
        "SUB over",
    );
    assert_malformed(
        &raw(op::SUB, 0, &[1, 0, 0, 0, 1, 0, 0, 0, b'a', b'b']),
        "SUB under",
    );
    assert_malformed(&raw(op::SUB, 0, &[0; 7]), "SUB short");
    // UNSUB is exactly 14 bytes.
    assert_malformed(&raw(op::UNSUB, 0, &[0; 7]), "UNSUB short");
    assert_malformed(&raw(op::UNSUB, 0, &[0; 9]), "UNSUB long");
    // HELLO: name + token past the end; short.
    assert_malformed(
        &raw(
            op::HELLO,
            0,
            &[1, 0, 0, 0, 0, 0, 2, 0, 2, 0, b'a', b'b', b'c'],
        ),
        "HELLO nl+tl",
    );
    assert_malformed(&raw(op::HELLO, 0, &[0; 9]), "HELLO short");
    // INFO: server_id + nonce past the end; short.
    let mut info = vec![0u8; 26];
    info[22] = 3; // server_id_len
    info[24] = 1; // nonce_len
    info.extend_from_slice(b"abc");
    assert_malformed(&raw(op::INFO, 0, &info), "INFO sl+nl");
    assert_malformed(&raw(op::INFO, 0, &[0; 25]), "INFO short");
    // ERR: message_len must match exactly.
    assert_malformed(&raw(op::ERR, 0, &[2, 0, 5, 0, b'a', b'b']), "ERR over");
    assert_malformed(&raw(op::ERR, 0, &[2, 0, 1, 0, b'a', b'b']), "ERR under");
    assert_malformed(&raw(op::ERR, 0, &[2, 0, 0]), "ERR short");
}

#[test]
fn ping_and_pong_with_a_body_are_malformed() {
    assert_malformed(&raw(op::PING, 0, &[0]), "PING with body");
    assert_malformed(&raw(op::PONG, 0, b"xx"), "PONG with body");
    // Flags on an empty PING are ignored.
    assert_eq!(decode_one(&raw(op::PING, 0xff, &[])), Frame::Ping);
}

#[test]
fn parse_frame_rejects_a_length_field_that_differs_from_the_slice() {
    let mut ping = BytesMut::new();
    encode_ping(&mut ping);
    // Slice longer than the length field.
    let mut longer = ping.to_vec();
    longer.push(0);
    assert!(matches!(
        parse_frame(&longer),
        Err(DecodeError::Malformed { op: op::PING, .. })
    ));
    // Slice shorter than the length field.
    let sub = Spec::Sub {
        sid: 1,
        subject: b"a.b".to_vec(),
        queue: Vec::new(),
    }
    .to_bytes();
    assert!(matches!(
        parse_frame(&sub[..sub.len() - 1]),
        Err(DecodeError::Malformed { op: op::SUB, .. })
    ));
    // decode_frame only hands parse_frame the frame's own bytes: trailing data is the next frame.
    let (frame, used) = decode_frame(&longer, MAX_FRAME)
        .expect("valid")
        .expect("complete");
    assert_eq!((frame, used), (Frame::Ping, 6));
}

#[test]
fn unknown_ops_keep_their_body_and_stay_in_sync() {
    let mut stream = raw(0x7f, 0x01, b"control");
    stream.extend_from_slice(&raw(0x06, 0, &[]));
    stream.extend_from_slice(&Spec::Ping.to_bytes());
    let (got, left) = stream_decode([&stream[..]]);
    assert_eq!(
        got,
        vec![
            Spec::Unknown {
                op: 0x7f,
                flags: 0x01,
                body: b"control".to_vec()
            },
            Spec::Unknown {
                op: 0x06,
                flags: 0,
                body: Vec::new()
            },
            Spec::Ping,
        ]
    );
    assert_eq!(left, 0);
}

#[test]
fn sub_and_unsub_views() {
    let bytes = Spec::Sub {
        sid: 9,
        subject: b"a.>".to_vec(),
        queue: b"q".to_vec(),
    }
    .to_bytes();
    assert_eq!(
        decode_one(&bytes),
        Frame::Sub(SubFrame {
            sid: 9,
            subject: b"a.>",
            queue: b"q"
        })
    );
    let bytes = Spec::Unsub {
        sid: 9,
        max_msgs: 2,
    }
    .to_bytes();
    assert_eq!(
        decode_one(&bytes),
        Frame::Unsub(UnsubFrame {
            sid: 9,
            max_msgs: 2
        })
    );
    let bytes = Spec::Pub {
        subject: b"x".to_vec(),
        reply: Vec::new(),
        headers: Vec::new(),
        payload: Vec::new(),
    }
    .to_bytes();
    assert_eq!(
        decode_one(&bytes),
        Frame::Pub(PubFrame {
            subject: b"x",
            reply: b"",
            headers: b"",
            payload: b""
        })
    );
}

// ---------------------------------------------------------------------------------------------
// Property tests.
// ---------------------------------------------------------------------------------------------

fn bytes_up_to(n: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=n)
}

fn known_op(o: u8) -> bool {
    matches!(
        o,
        op::HELLO
            | op::INFO
            | op::PING
            | op::PONG
            | op::ERR
            | op::PUB
            | op::SUB
            | op::UNSUB
            | op::MSG
    )
}

fn arb_spec() -> impl Strategy<Value = Spec> {
    prop_oneof![
        (any::<u16>(), any::<u32>(), bytes_up_to(40), bytes_up_to(40)).prop_map(
            |(version, features, name, token)| Spec::Hello {
                version,
                features,
                name,
                token
            }
        ),
        (
            (any::<u16>(), any::<u32>(), any::<u32>()),
            (any::<u16>(), any::<u16>(), any::<u64>()),
            bytes_up_to(40),
            bytes_up_to(40)
        )
            .prop_map(
                |(
                    (version, features, max_payload),
                    (shard_count, shard_id, client_id),
                    server_id,
                    nonce,
                )| Spec::Info {
                    version,
                    features,
                    max_payload,
                    shard_count,
                    shard_id,
                    client_id,
                    server_id,
                    nonce
                }
            ),
        Just(Spec::Ping),
        Just(Spec::Pong),
        (any::<u16>(), any::<bool>(), "\\PC{0,40}").prop_map(|(code, fatal, message)| {
            Spec::Err {
                code,
                fatal,
                message,
            }
        }),
        arb_pub(),
        (any::<u32>(), bytes_up_to(80), bytes_up_to(40)).prop_map(|(sid, subject, queue)| {
            Spec::Sub {
                sid,
                subject,
                queue,
            }
        }),
        (any::<u32>(), any::<u32>()).prop_map(|(sid, max_msgs)| Spec::Unsub { sid, max_msgs }),
        arb_msg(),
        (
            any::<u8>().prop_filter("unknown op", |o| !known_op(*o)),
            any::<u8>(),
            bytes_up_to(64)
        )
            .prop_map(|(op, flags, body)| Spec::Unknown { op, flags, body }),
    ]
}

fn arb_pub() -> impl Strategy<Value = Spec> {
    (
        bytes_up_to(80),
        bytes_up_to(80),
        bytes_up_to(80),
        bytes_up_to(300),
    )
        .prop_map(|(subject, reply, headers, payload)| Spec::Pub {
            subject,
            reply,
            headers,
            payload,
        })
}

fn arb_msg() -> impl Strategy<Value = Spec> {
    (
        any::<u32>(),
        any::<u8>(),
        bytes_up_to(80),
        bytes_up_to(80),
        bytes_up_to(80),
        bytes_up_to(300),
    )
        .prop_map(|(sid, flags, subject, reply, headers, payload)| Spec::Msg {
            sid,
            flags,
            subject,
            reply,
            headers,
            payload,
        })
}

/// Independent reference for the pattern grammar: split on `.`, check each token.
fn reference_pattern(s: &[u8]) -> Option<PatternKind> {
    if s.is_empty() || s.len() > subject::MAX_SUBJECT_LEN {
        return None;
    }
    let toks: Vec<&[u8]> = s.split(|&b| b == b'.').collect();
    if toks.len() > subject::MAX_TOKENS {
        return None;
    }
    let mut kind = PatternKind::Literal;
    for (i, t) in toks.iter().enumerate() {
        if t.is_empty() || t.iter().any(|&b| !(0x21..=0x7e).contains(&b)) {
            return None;
        }
        match *t {
            b"*" => kind = PatternKind::Wildcard,
            b">" if i + 1 == toks.len() => kind = PatternKind::Wildcard,
            _ if t.contains(&b'*') || t.contains(&b'>') => return None,
            _ => {}
        }
    }
    Some(kind)
}

/// Independent reference matcher over token lists.
fn reference_matches(pattern: &[&str], subject: &[&str]) -> bool {
    match pattern.split_first() {
        None => subject.is_empty(),
        Some((&">", rest)) => rest.is_empty() && !subject.is_empty(),
        Some((&"*", rest)) => !subject.is_empty() && reference_matches(rest, &subject[1..]),
        Some((t, rest)) => subject.first() == Some(t) && reference_matches(rest, &subject[1..]),
    }
}

fn subject_bytes(tokens: &[&str]) -> Vec<u8> {
    tokens.join(".").into_bytes()
}

/// Decodes everything `buf` holds, touching every view, and returns how many frames it held.
/// Stops at the first error or incomplete frame.
fn decode_all(mut buf: &[u8], max_frame: usize) -> usize {
    let mut n = 0;
    while let Ok(Some((frame, used))) = decode_frame(buf, max_frame) {
        assert!(used >= HEADER_LEN && used <= buf.len() && used <= max_frame);
        if let Frame::Pub(PubFrame { headers: h, .. }) | Frame::Msg(MsgFrame { headers: h, .. }) =
            frame
        {
            let _ = headers::validate(h);
        }
        buf = &buf[used..];
        n += 1;
    }
    n
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(data in bytes_up_to(300), max_frame in 0usize..400) {
        decode_all(&data, max_frame);
        decode_all(&data, MAX_FRAME);
        let _ = parse_frame(&data);
        let _ = headers::validate(&data);
        let _ = headers::iter(&data).count();
        let _ = validate_pattern(&data);
        let _ = validate_literal(&data);
        let _ = validate_queue(&data);
    }

    #[test]
    fn arbitrary_bodies_with_a_valid_length_never_panic(
        opc in prop_oneof![
            Just(op::HELLO), Just(op::INFO), Just(op::PING), Just(op::PONG), Just(op::ERR),
            Just(op::PUB), Just(op::SUB), Just(op::UNSUB), Just(op::MSG), any::<u8>()
        ],
        fl in any::<u8>(),
        body in bytes_up_to(64),
    ) {
        let frame = raw(opc, fl, &body);
        let parsed = parse_frame(&frame);
        prop_assert_eq!(&decode_frame(&frame, MAX_FRAME).map(|o| o.map(|(f, _)| f)), &parsed.clone().map(Some));
        match parsed {
            Ok(f) => {
                prop_assert_eq!(f.op(), opc);
                // Every frame that decodes re-encodes (the encoder takes UTF-8 ERR messages
                // only) to a frame that decodes the same.
                let encodable = match f {
                    Frame::Err(e) => std::str::from_utf8(e.message).is_ok(),
                    _ => true,
                };
                if encodable {
                    let spec = Spec::from_frame(&f);
                    let again = spec.to_bytes();
                    prop_assert_eq!(Spec::from_frame(&decode_one(&again)), spec);
                }
            }
            Err(DecodeError::Malformed { op, .. }) => prop_assert_eq!(op, opc),
            Err(e) => return Err(TestCaseError::fail(format!("unexpected error {e:?}"))),
        }
        for cut in 0..frame.len() {
            prop_assert_eq!(decode_frame(&frame[..cut], MAX_FRAME), Ok(None));
        }
    }

    #[test]
    fn any_frame_round_trips(spec in arb_spec()) {
        assert_round_trip(&spec);
    }

    #[test]
    fn pub_sub_msg_round_trip(p in arb_pub(), m in arb_msg(), sid in any::<u32>(), subj in bytes_up_to(200), queue in bytes_up_to(60)) {
        assert_round_trip(&p);
        assert_round_trip(&m);
        assert_round_trip(&Spec::Sub { sid, subject: subj, queue });
    }

    #[test]
    fn msg_from_pub_matches_the_pub(p in arb_pub(), sid in any::<u32>(), fl in any::<u8>()) {
        let Spec::Pub { subject, reply, headers, payload } = &p else {
            unreachable!("arb_pub makes PUBs");
        };
        let mut out = BytesMut::new();
        encode_msg_from_pub(&mut out, sid, fl, &p.to_bytes()).expect("small PUB");
        prop_assert_eq!(
            Spec::from_frame(&decode_one(&out)),
            Spec::Msg {
                sid,
                flags: fl,
                subject: subject.clone(),
                reply: reply.clone(),
                headers: headers.clone(),
                payload: payload.clone()
            }
        );
    }

    #[test]
    fn streaming_decode_at_random_split_points(
        frames in prop::collection::vec(arb_spec(), 1..16),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let stream: Vec<u8> = frames.iter().flat_map(Spec::to_bytes).collect();
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.push(0);
        points.push(stream.len());
        points.sort_unstable();
        points.dedup();
        let chunks = points.windows(2).map(|w| &stream[w[0]..w[1]]);
        let (got, left) = stream_decode(chunks);
        prop_assert_eq!(got, frames);
        prop_assert_eq!(left, 0);
    }

    #[test]
    fn header_blocks_round_trip(
        entries in prop::collection::vec(
            (prop::collection::vec(0x21u8..=0x7e, 1..20).prop_filter("no colon", |n| !n.contains(&b':')),
             bytes_up_to(40)),
            0..8,
        )
    ) {
        let mut b = BytesMut::new();
        for (n, v) in &entries {
            headers::encode_header(&mut b, n, v).expect("valid entry");
        }
        prop_assert_eq!(headers::validate(&b), Ok(()));
        let got: Vec<(Vec<u8>, Vec<u8>)> = headers::iter(&b)
            .map(|e| e.map(|(n, v)| (n.to_vec(), v.to_vec())))
            .collect::<Result<_, _>>()
            .expect("valid block");
        prop_assert_eq!(got, entries);
        // Every strict prefix that cuts an entry is reported, never a panic.
        for cut in 0..b.len() {
            let _ = headers::validate(&b[..cut]);
        }
    }

    #[test]
    fn pattern_validator_agrees_with_reference(
        s in prop::collection::vec(
            prop_oneof![
                4 => prop::sample::select(&b"ab."[..]),
                1 => prop::sample::select(&b"*> \x7f\x00\x21\x7e"[..]),
            ],
            0..24,
        )
    ) {
        let want = reference_pattern(&s);
        prop_assert_eq!(validate_pattern(&s).ok(), want);
        prop_assert_eq!(validate_literal(&s).is_ok(), want == Some(PatternKind::Literal));
    }

    #[test]
    fn queue_validator_agrees_with_reference(
        q in prop_oneof![
            bytes_up_to(300),
            prop::collection::vec(
                prop_oneof![
                    8 => 0x21u8..=0x7e,
                    1 => prop::sample::select(&b"*> \x7f\x00"[..]),
                ],
                0..300,
            ),
        ]
    ) {
        let want = !q.is_empty()
            && q.len() <= subject::MAX_QUEUE_LEN
            && q.iter().all(|&b| (0x21..=0x7e).contains(&b) && b != b'*' && b != b'>');
        prop_assert_eq!(validate_queue(&q).is_ok(), want);
    }

    #[test]
    fn matcher_agrees_with_reference(
        subj in prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..6),
        pat in prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "*"]), 0..6),
        tail in any::<bool>(),
    ) {
        let mut pat = pat;
        if tail || pat.is_empty() {
            pat.push(">");
        }
        let (p, s) = (subject_bytes(&pat), subject_bytes(&subj));
        prop_assert!(validate_pattern(&p).is_ok());
        prop_assert_eq!(validate_literal(&s), Ok(()));
        prop_assert_eq!(subject::matches(&p, &s), reference_matches(&pat, &subj));
    }

    #[test]
    fn matcher_agrees_on_patterns_derived_from_the_subject(
        subj in prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "dd"]), 1..8),
        edits in prop::collection::vec(0u8..4, 8),
        cut in any::<prop::sample::Index>(),
    ) {
        // Start from the subject itself, so matches are common, then wildcard or alter tokens
        // and maybe replace a tail with `>`.
        let mut pat: Vec<&str> = subj
            .iter()
            .zip(&edits)
            .map(|(t, e)| match e {
                0 => "*",
                1 => "zz",
                _ => t,
            })
            .collect();
        let at = cut.index(pat.len() + 1);
        if at < pat.len() {
            pat.truncate(at);
            pat.push(">");
        }
        let (p, s) = (subject_bytes(&pat), subject_bytes(&subj));
        prop_assert!(validate_pattern(&p).is_ok());
        prop_assert_eq!(subject::matches(&p, &s), reference_matches(&pat, &subj));
        // A literal always matches itself.
        prop_assert!(subject::matches(&s, &s));
    }
}

// ---------------------------------------------------------------------------------------------
// PROTOCOL.md stays in sync with the code.
// ---------------------------------------------------------------------------------------------

const SPEC: &str = include_str!("../PROTOCOL.md");

/// The hex dumps of PROTOCOL.md (lines `0000  29 00 ...  |...|`), one `Vec` per dump.
fn spec_hex_dumps() -> Vec<Vec<u8>> {
    let mut dumps: Vec<Vec<u8>> = Vec::new();
    let mut in_dump = false;
    for line in SPEC.lines() {
        let is_dump_line = line.len() > 6
            && line.as_bytes()[..4].iter().all(u8::is_ascii_hexdigit)
            && line[4..].starts_with("  ");
        if !is_dump_line {
            in_dump = false;
            continue;
        }
        if !in_dump {
            dumps.push(Vec::new());
            in_dump = true;
        }
        let hex = line[6..].split('|').next().expect("split yields one piece");
        let cur = dumps.last_mut().expect("a dump was started");
        for byte in hex.split_whitespace() {
            cur.push(u8::from_str_radix(byte, 16).expect("hex byte in PROTOCOL.md"));
        }
    }
    dumps
}

#[test]
fn protocol_md_worked_example_is_the_golden_bytes() {
    let dumps = spec_hex_dumps();
    let no_responders = golden_frames()
        .into_iter()
        .find(|(name, _, _)| *name == "MSG no responders")
        .map(|(_, _, bytes)| bytes)
        .expect("golden no-responders MSG");
    assert_eq!(dumps, vec![golden_pub(), golden_msg(), no_responders]);
}

#[test]
fn protocol_md_error_table_matches_error_codes() {
    use agentwire_protocol::ErrorCode;
    let mut rows = Vec::new();
    for line in SPEC.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | code | `name` | fatal | sent when |
        if cells.len() == 6 && cells[1].parse::<u16>().is_ok() && cells[2].starts_with('`') {
            rows.push((
                cells[1].parse::<u16>().expect("checked above"),
                cells[2].trim_matches('`').to_owned(),
                cells[3] == "yes",
            ));
        }
    }
    let want: Vec<(u16, String, bool)> = ErrorCode::ALL
        .iter()
        .map(|c| (c.as_u16(), c.name().to_owned(), c.is_fatal()))
        .collect();
    assert_eq!(rows, want);
}

#[test]
fn hello_auth_extension_round_trips_and_is_checked() {
    let pk = [7u8; 32];
    let sig = [9u8; 64];
    let hello = HelloFrame {
        version: 1,
        features: 0,
        name: b"worker",
        token: b"",
        public_key: &pk,
        signature: &sig,
    };
    let mut b = BytesMut::new();
    encode_hello(&mut b, &hello).expect("valid HELLO");
    assert_eq!(b[5], agentwire_protocol::flags::HELLO_AUTH_EXT);
    assert_eq!(decode_one(&b), Frame::Hello(hello));
    // Flagged but cut short: the lengths no longer fit the frame.
    for cut in [1usize, 4, 40, 100] {
        let mut t = b[..b.len() - cut].to_vec();
        let len = u32::try_from(t.len()).expect("small frame");
        t[0..4].copy_from_slice(&len.to_le_bytes());
        assert!(
            decode_frame(&t, 1 << 20).is_err(),
            "HELLO cut by {cut} bytes must be malformed"
        );
    }
    // Without a key or signature, no extension and no flag.
    let mut b = BytesMut::new();
    let plain = HelloFrame {
        public_key: b"",
        signature: b"",
        ..hello
    };
    encode_hello(&mut b, &plain).expect("valid HELLO");
    assert_eq!(b[5], 0);
    assert_eq!(decode_one(&b), Frame::Hello(plain));
}
