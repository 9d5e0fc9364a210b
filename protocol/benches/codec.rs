//! Codec micro-benchmarks: nanoseconds per frame for the decoder and the encoders on the hot
//! path, with 16 B and 128 B payloads and the subject the load scenarios use.
//!
//! - `decode_frame/pub` and `decode_frame/msg`: a buffer of back-to-back frames decoded one
//!   after the other, as the broker (PUB) and the client (MSG) do with a read chunk.
//! - `encode_pub`: what a client does per publish.
//! - `encode_msg_from_pub`: what the broker does per delivery of a decoded PUB.
//!
//! Run with `cargo bench -p agentwire-protocol --bench codec` (not part of CI).

use std::hint::black_box;

use agentwire_protocol::{
    decode_frame, encode_msg, encode_msg_from_pub, encode_pub, Frame, DEFAULT_MAX_PAYLOAD,
    FRAME_OVERHEAD_ALLOWANCE,
};
use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput};

/// Frames per iteration: enough that the loop, not the timer, dominates.
const FRAMES: usize = 1024;
/// The subject of the load scenarios.
const SUBJECT: &[u8] = b"bench.pubsub";
/// Payload sizes measured.
const SIZES: [usize; 2] = [16, 128];

fn max_frame() -> usize {
    DEFAULT_MAX_PAYLOAD as usize + FRAME_OVERHEAD_ALLOWANCE
}

/// `FRAMES` PUB frames back to back.
fn pub_stream(size: usize) -> BytesMut {
    let payload = vec![0xa5u8; size];
    let mut b = BytesMut::new();
    for _ in 0..FRAMES {
        encode_pub(&mut b, SUBJECT, b"", b"", &payload).expect("a small PUB encodes");
    }
    b
}

/// `FRAMES` MSG frames back to back.
fn msg_stream(size: usize) -> BytesMut {
    let payload = vec![0xa5u8; size];
    let mut b = BytesMut::new();
    for sid in 0..FRAMES as u32 {
        encode_msg(&mut b, sid, 0, SUBJECT, b"", b"", &payload).expect("a small MSG encodes");
    }
    b
}

/// Decodes every frame of `buf`; returns the payload bytes seen (so nothing is optimised out).
fn decode_all(buf: &[u8], max: usize) -> usize {
    let mut at = 0;
    let mut seen = 0;
    while let Ok(Some((frame, used))) = decode_frame(&buf[at..], max) {
        seen += match frame {
            Frame::Pub(p) => p.payload.len(),
            Frame::Msg(m) => m.payload.len(),
            _ => 0,
        };
        at += used;
    }
    seen
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_frame");
    g.throughput(Throughput::Elements(FRAMES as u64));
    for size in SIZES {
        let pubs = pub_stream(size);
        g.bench_with_input(BenchmarkId::new("pub", size), &pubs, |b, buf| {
            b.iter(|| decode_all(black_box(buf), max_frame()))
        });
        let msgs = msg_stream(size);
        g.bench_with_input(BenchmarkId::new("msg", size), &msgs, |b, buf| {
            b.iter(|| decode_all(black_box(buf), max_frame()))
        });
    }
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(FRAMES as u64));
    for size in SIZES {
        let payload = vec![0xa5u8; size];
        let mut out = BytesMut::with_capacity(FRAMES * (size + 64));
        g.bench_with_input(BenchmarkId::new("pub", size), &payload, |b, payload| {
            b.iter(|| {
                out.clear();
                for _ in 0..FRAMES {
                    encode_pub(&mut out, SUBJECT, b"", b"", black_box(payload))
                        .expect("a small PUB encodes");
                }
                out.len()
            })
        });

        let mut one = BytesMut::new();
        encode_pub(&mut one, SUBJECT, b"", b"", &payload).expect("a small PUB encodes");
        let pub_frame = one.freeze();
        g.bench_with_input(
            BenchmarkId::new("msg_from_pub", size),
            &pub_frame,
            |b, frame| {
                b.iter(|| {
                    out.clear();
                    for sid in 0..FRAMES as u32 {
                        encode_msg_from_pub(&mut out, sid, 0, black_box(frame))
                            .expect("a small MSG encodes");
                    }
                    out.len()
                })
            },
        );
    }
    g.finish();
}

/// What `criterion_group!` + `criterion_main!` expand to, without their undocumented `pub fn`.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    decode(&mut c);
    encode(&mut c);
    c.final_summary();
}
