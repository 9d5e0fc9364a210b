//! Fuzz target: arbitrary bytes through a socket-reader style streaming decode loop.
//!
//! The first input byte picks the frame limit and the read-chunk size; the rest is the byte
//! stream. Each chunk is appended to a buffer and every complete frame is decoded and removed,
//! as a connection does. Decoded headers go through `headers::validate`, decoded subjects, reply
//! subjects and queue names through the subject validators, and a decoded PUB is rewritten into
//! a MSG that must decode to the same fields. The chunked decode must also agree frame for frame
//! with decoding the whole stream at once. Any panic or failed assertion is a finding.

#![no_main]

use agentwire_protocol::{
    decode_frame, encode_msg_from_pub, headers, validate_literal, validate_pattern, validate_queue,
    DecodeError, Frame, MsgFrame, DEFAULT_MAX_PAYLOAD, FRAME_OVERHEAD_ALLOWANCE, HEADER_LEN,
};
use bytes::{Buf, BytesMut};
use libfuzzer_sys::fuzz_target;

/// What the decoder reported for one step: a frame (op and length), or an error.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Frame { op: u8, len: usize },
    Error(DecodeError),
}

/// Checks everything a receiver would check on a decoded frame.
fn inspect(frame: &Frame<'_>, raw: &[u8]) {
    match *frame {
        Frame::Pub(p) => {
            let _ = validate_literal(p.subject);
            if !p.reply.is_empty() {
                let _ = validate_literal(p.reply);
            }
            let _ = headers::validate(p.headers);
            let mut out = BytesMut::new();
            encode_msg_from_pub(&mut out, 7, 0, raw).expect("a decoded PUB fits a MSG");
            let (msg, used) = decode_frame(&out, usize::MAX)
                .expect("a MSG built from a valid PUB decodes")
                .expect("a MSG built from a valid PUB is complete");
            assert_eq!(used, out.len());
            assert_eq!(
                msg,
                Frame::Msg(MsgFrame {
                    sid: 7,
                    flags: 0,
                    subject: p.subject,
                    reply: p.reply,
                    headers: p.headers,
                    payload: p.payload,
                })
            );
        }
        Frame::Msg(m) => {
            let _ = validate_literal(m.subject);
            if !m.reply.is_empty() {
                let _ = validate_literal(m.reply);
            }
            let _ = headers::validate(m.headers);
        }
        Frame::Sub(s) => {
            let _ = validate_pattern(s.subject);
            if !s.queue.is_empty() {
                let _ = validate_queue(s.queue);
            }
        }
        _ => {}
    }
}

/// Decodes every complete frame at the front of `buf`, recording each step; stops at the first
/// error (a connection closes there) or incomplete frame. Returns how many bytes it consumed
/// and whether it hit an error.
fn drain(buf: &[u8], max_frame: usize, steps: &mut Vec<Step>) -> (usize, bool) {
    let mut at = 0;
    loop {
        match decode_frame(&buf[at..], max_frame) {
            Ok(Some((frame, used))) => {
                assert!(used >= HEADER_LEN, "a frame holds at least its header");
                assert!(
                    used <= buf.len() - at,
                    "a frame never extends past the input"
                );
                assert!(used <= max_frame, "a frame never exceeds the limit");
                inspect(&frame, &buf[at..at + used]);
                steps.push(Step::Frame {
                    op: frame.op(),
                    len: used,
                });
                at += used;
            }
            Ok(None) => return (at, false),
            Err(e) => {
                steps.push(Step::Error(e));
                return (at, true);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, stream)) = data.split_first() else {
        return;
    };
    // A tight limit half of the time, so FrameTooLarge is reached; the default otherwise.
    let max_frame = if ctl & 0x80 != 0 {
        16 + usize::from(ctl & 0x70)
    } else {
        DEFAULT_MAX_PAYLOAD as usize + FRAME_OVERHEAD_ALLOWANCE
    };
    let chunk = usize::from(ctl & 0x0f) + 1;

    // Streaming, as a socket reader: append a chunk, decode all complete frames, keep the rest.
    let mut buf = BytesMut::new();
    let mut streamed = Vec::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        let (used, failed) = drain(&buf, max_frame, &mut streamed);
        buf.advance(used);
        if failed {
            break;
        }
    }

    // All at once: the same frames, in the same order, and the same error if any.
    let mut whole = Vec::new();
    drain(stream, max_frame, &mut whole);
    assert_eq!(streamed, whole, "chunked and one-shot decoding disagree");
});
