//! Frame layout and the zero-copy decoder.
//!
//! Every frame starts with the same 6-byte header, little-endian:
//!
//! ```text
//!  0               4       5       6
//! +---------------+-------+-------+----------------------------+
//! | len: u32      | op:u8 |flags:u8| body (len - 6 bytes)      |
//! +---------------+-------+-------+----------------------------+
//! ```
//!
//! `len` counts the whole frame, header included, so a receiver needs 4 bytes to know how much
//! to wait for. Bodies are fixed fields followed by variable parts whose lengths the fixed fields
//! give. PUB and MSG share their tail (subject, reply, headers, payload) so a broker turns a PUB
//! into a MSG by writing a new 10-byte head in front of the PUB's bytes 6.. (see
//! [`crate::encode::encode_msg_from_pub`]). `PROTOCOL.md` draws every body.
//!
//! Decoding returns [`Frame`] views that borrow the input: no allocation, no copy. "Not enough
//! bytes yet" is `Ok(None)`; a length over the receiver's limit is rejected before anything is
//! buffered for it.

use crate::error::DecodeError;

/// Bytes in the common header: `len: u32, op: u8, flags: u8`.
pub const HEADER_LEN: usize = 6;
/// Protocol version spoken by this crate.
pub const PROTOCOL_VERSION: u16 = 1;
/// Default largest headers + payload of one message (1 MiB).
pub const DEFAULT_MAX_PAYLOAD: u32 = 1 << 20;
/// Allowance on top of the max payload for fixed fields, subject, reply and the like: a frame
/// may be at most `max_payload + FRAME_OVERHEAD_ALLOWANCE` bytes long.
pub const FRAME_OVERHEAD_ALLOWANCE: usize = 4096;

/// Fixed body sizes, header included.
pub(crate) const HELLO_FIXED: usize = HEADER_LEN + 10;
pub(crate) const INFO_FIXED: usize = HEADER_LEN + 26;
pub(crate) const ERR_FIXED: usize = HEADER_LEN + 4;
pub(crate) const PUB_FIXED: usize = HEADER_LEN + 8;
pub(crate) const SUB_FIXED: usize = HEADER_LEN + 8;
pub(crate) const UNSUB_LEN: usize = HEADER_LEN + 8;
pub(crate) const MSG_FIXED: usize = HEADER_LEN + 12;

/// Frame op codes.
pub mod op {
    /// Client → server: handshake answer (version, features, name, credentials).
    pub const HELLO: u8 = 0x01;
    /// Server → client: first frame on a connection (server id, limits, shard).
    pub const INFO: u8 = 0x02;
    /// Either way: liveness probe; the peer answers PONG after everything it read before.
    pub const PING: u8 = 0x03;
    /// Either way: answer to PING.
    pub const PONG: u8 = 0x04;
    /// Server → client: error with a stable code.
    pub const ERR: u8 = 0x05;
    /// Client → server: publish a message.
    pub const PUB: u8 = 0x10;
    /// Client → server: subscribe to a pattern, optionally in a queue group.
    pub const SUB: u8 = 0x11;
    /// Client → server: unsubscribe now or after N more messages.
    pub const UNSUB: u8 = 0x12;
    /// Server → client: a message delivered to a subscription.
    pub const MSG: u8 = 0x13;
    /// Client → server: register this connection as an instance of a component (rkyv body).
    pub const REGISTER: u8 = 0x40;
    /// Server → client: registration accepted, with the current config (rkyv body).
    pub const REGISTERED: u8 = 0x41;
    /// Client → server: heartbeat with load (rkyv body).
    pub const HEARTBEAT: u8 = 0x42;
    /// Client → server: end this connection's registration (no body).
    pub const DEREGISTER: u8 = 0x43;
    /// Server → client: the component's config changed (rkyv body).
    pub const CONFIG: u8 = 0x44;
    /// Client → server: list live instances (rkyv body).
    pub const DISCOVER: u8 = 0x45;
    /// Server → client: answer to DISCOVER (rkyv body).
    pub const DISCOVERED: u8 = 0x46;
    /// Server → client: the server is going away (lame duck); reconnect elsewhere (rkyv body).
    pub const LAMEDUCK: u8 = 0x47;
    /// First op code reserved for control-plane ops (registration, config, ...).
    pub const CONTROL_FIRST: u8 = 0x40;
    /// Last op code reserved for control-plane ops.
    pub const CONTROL_LAST: u8 = 0x7f;
}

/// Flag bits, per op.
pub mod flags {
    /// MSG: the broker found no subscriber for a request; the message is empty and its subject is
    /// the request's reply subject.
    pub const MSG_NO_RESPONDERS: u8 = 0x01;
    /// ERR: the server closes the connection after this frame.
    pub const ERR_FATAL: u8 = 0x01;
    /// HELLO: the auth extension (public key + signature of the INFO nonce) follows the token.
    pub const HELLO_AUTH_EXT: u8 = 0x01;
}

/// The subject and reply subject of a complete, well-formed PUB frame (`None` when it is not
/// one). Cheap: reads two lengths, no full parse.
pub fn pub_subject_and_reply(frame: &[u8]) -> Option<(&[u8], &[u8])> {
    if frame.len() < PUB_FIXED || frame[4] != op::PUB {
        return None;
    }
    let sl = u16_at(frame, 6) as usize;
    let rl = u16_at(frame, 8) as usize;
    let subject = frame.get(PUB_FIXED..PUB_FIXED + sl)?;
    let reply = frame.get(PUB_FIXED + sl..PUB_FIXED + sl + rl)?;
    Some((subject, reply))
}

/// What an ed25519 client signs: this prefix, then the INFO nonce (PROTOCOL.md §2,
/// Authentication). The prefix keeps the signature from meaning anything elsewhere.
pub const AUTH_SIGN_PREFIX: &[u8] = b"agentwire-auth-v1:";

/// Feature bits exchanged in HELLO and INFO.
pub mod features {
    /// Message headers are understood.
    pub const HEADERS: u32 = 0x01;
    /// The client wants a no-responders MSG when a request matches no subscriber.
    pub const NO_RESPONDERS: u32 = 0x02;
}

/// HELLO: the client's answer to INFO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloFrame<'a> {
    /// Protocol version the client speaks.
    pub version: u16,
    /// Feature bits the client wants ([`features`]).
    pub features: u32,
    /// Client name for logs and monitoring (may be empty).
    pub name: &'a [u8],
    /// Authentication token (empty when none).
    pub token: &'a [u8],
    /// Ed25519 public key (32 bytes) for challenge-response authentication (empty when none;
    /// sent in the auth extension, flag [`flags::HELLO_AUTH_EXT`]).
    pub public_key: &'a [u8],
    /// Ed25519 signature (64 bytes) of the INFO nonce, by `public_key`'s secret key.
    pub signature: &'a [u8],
}

/// INFO: the first frame a server sends on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InfoFrame<'a> {
    /// Protocol version the server speaks.
    pub version: u16,
    /// Feature bits the server offers.
    pub features: u32,
    /// Largest headers + payload the server accepts in one PUB.
    pub max_payload: u32,
    /// Number of shards (event-loop threads) of the server.
    pub shard_count: u16,
    /// The shard that owns this connection.
    pub shard_id: u16,
    /// The server's id for this connection.
    pub client_id: u64,
    /// The server's id (unique per process start).
    pub server_id: &'a [u8],
    /// A nonce for challenge-response authentication (empty when unused).
    pub nonce: &'a [u8],
}

/// ERR: an error with a stable code ([`crate::ErrorCode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrFrame<'a> {
    /// The wire code; see [`crate::ErrorCode::from_u16`].
    pub code: u16,
    /// Whether the server closes the connection after this frame.
    pub fatal: bool,
    /// Human-readable detail (UTF-8).
    pub message: &'a [u8],
}

/// PUB: a message from a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PubFrame<'a> {
    /// Literal subject.
    pub subject: &'a [u8],
    /// Reply subject (empty when none).
    pub reply: &'a [u8],
    /// Encoded headers (empty when none); see [`crate::headers`].
    pub headers: &'a [u8],
    /// The payload.
    pub payload: &'a [u8],
}

/// SUB: subscribe to a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubFrame<'a> {
    /// Subscription id, chosen by the client, unique among its active subscriptions.
    pub sid: u32,
    /// Pattern, wildcards allowed.
    pub subject: &'a [u8],
    /// Queue group (empty for a plain subscription).
    pub queue: &'a [u8],
}

/// UNSUB: end a subscription now (`max_msgs == 0`) or after `max_msgs` messages in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsubFrame {
    /// Subscription id.
    pub sid: u32,
    /// 0: now; N: after N messages delivered in total to this subscription.
    pub max_msgs: u32,
}

/// MSG: a message delivered to a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsgFrame<'a> {
    /// The subscription it is delivered to.
    pub sid: u32,
    /// Flag bits ([`flags::MSG_NO_RESPONDERS`]).
    pub flags: u8,
    /// The subject it was published on.
    pub subject: &'a [u8],
    /// Reply subject (empty when none).
    pub reply: &'a [u8],
    /// Encoded headers (empty when none).
    pub headers: &'a [u8],
    /// The payload.
    pub payload: &'a [u8],
}

/// One decoded frame, borrowing the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// HELLO.
    Hello(HelloFrame<'a>),
    /// INFO.
    Info(InfoFrame<'a>),
    /// PING.
    Ping,
    /// PONG.
    Pong,
    /// ERR.
    Err(ErrFrame<'a>),
    /// PUB.
    Pub(PubFrame<'a>),
    /// SUB.
    Sub(SubFrame<'a>),
    /// UNSUB.
    Unsub(UnsubFrame),
    /// MSG.
    Msg(MsgFrame<'a>),
    /// An op this version does not know (including the reserved control-plane range). Its length
    /// was valid, so a receiver can skip it and stay in sync.
    Unknown {
        /// The op code.
        op: u8,
        /// The flag byte.
        flags: u8,
        /// The body after the common header.
        body: &'a [u8],
    },
}

impl Frame<'_> {
    /// The op code of this frame.
    pub fn op(&self) -> u8 {
        match self {
            Frame::Hello(_) => op::HELLO,
            Frame::Info(_) => op::INFO,
            Frame::Ping => op::PING,
            Frame::Pong => op::PONG,
            Frame::Err(_) => op::ERR,
            Frame::Pub(_) => op::PUB,
            Frame::Sub(_) => op::SUB,
            Frame::Unsub(_) => op::UNSUB,
            Frame::Msg(_) => op::MSG,
            Frame::Unknown { op, .. } => *op,
        }
    }
}

#[inline]
fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

#[inline]
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline]
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Reads the length of the frame at the start of `buf`.
///
/// Returns `Ok(None)` when fewer than 4 bytes are there, `Ok(Some(len))` otherwise (the frame is
/// complete when `buf.len() >= len`).
///
/// # Errors
/// [`DecodeError::LengthTooSmall`] for a length under the header size and
/// [`DecodeError::FrameTooLarge`] for one over `max_frame`: both before any byte is buffered
/// for the frame.
#[inline]
pub fn frame_len(buf: &[u8], max_frame: usize) -> Result<Option<usize>, DecodeError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32_at(buf, 0);
    let ulen = len as usize;
    if ulen < HEADER_LEN {
        return Err(DecodeError::LengthTooSmall {
            len,
            min: HEADER_LEN,
        });
    }
    if ulen > max_frame {
        return Err(DecodeError::FrameTooLarge {
            len,
            max: max_frame,
        });
    }
    Ok(Some(ulen))
}

/// Decodes the frame at the start of `buf`.
///
/// Returns `Ok(None)` while the frame is incomplete, or the frame and the number of bytes it
/// took.
///
/// # Errors
/// As [`frame_len`], and [`DecodeError::Malformed`] when the inner lengths do not add up.
#[inline]
pub fn decode_frame(
    buf: &[u8],
    max_frame: usize,
) -> Result<Option<(Frame<'_>, usize)>, DecodeError> {
    let Some(len) = frame_len(buf, max_frame)? else {
        return Ok(None);
    };
    if buf.len() < len {
        return Ok(None);
    }
    Ok(Some((parse_frame(&buf[..len])?, len)))
}

/// Parses one complete frame (`frame.len()` must equal its length field; callers get that from
/// [`frame_len`]).
///
/// # Errors
/// [`DecodeError::Malformed`] when the frame's inner lengths do not add up to its length, or its
/// length field differs from `frame.len()`.
pub fn parse_frame(frame: &[u8]) -> Result<Frame<'_>, DecodeError> {
    let len = frame.len();
    if len < HEADER_LEN {
        return Err(DecodeError::LengthTooSmall {
            len: len as u32,
            min: HEADER_LEN,
        });
    }
    let opc = frame[4];
    if u32_at(frame, 0) as usize != len {
        return Err(DecodeError::Malformed {
            op: opc,
            reason: "length field differs from the frame size",
        });
    }
    let flags = frame[5];
    let bad = |reason| DecodeError::Malformed { op: opc, reason };
    match opc {
        op::PUB => {
            if len < PUB_FIXED {
                return Err(bad("shorter than its fixed fields"));
            }
            let sl = u16_at(frame, 6) as usize;
            let rl = u16_at(frame, 8) as usize;
            let hl = u32_at(frame, 10) as usize;
            let (subject, reply, headers, payload) = split_tail(&frame[PUB_FIXED..], sl, rl, hl)
                .ok_or_else(|| bad("field lengths exceed the frame"))?;
            Ok(Frame::Pub(PubFrame {
                subject,
                reply,
                headers,
                payload,
            }))
        }
        op::MSG => {
            if len < MSG_FIXED {
                return Err(bad("shorter than its fixed fields"));
            }
            let sid = u32_at(frame, 6);
            let sl = u16_at(frame, 10) as usize;
            let rl = u16_at(frame, 12) as usize;
            let hl = u32_at(frame, 14) as usize;
            let (subject, reply, headers, payload) = split_tail(&frame[MSG_FIXED..], sl, rl, hl)
                .ok_or_else(|| bad("field lengths exceed the frame"))?;
            Ok(Frame::Msg(MsgFrame {
                sid,
                flags,
                subject,
                reply,
                headers,
                payload,
            }))
        }
        op::PING | op::PONG => {
            if len != HEADER_LEN {
                return Err(bad("PING/PONG carry no body"));
            }
            Ok(if opc == op::PING {
                Frame::Ping
            } else {
                Frame::Pong
            })
        }
        op::SUB => {
            if len < SUB_FIXED {
                return Err(bad("shorter than its fixed fields"));
            }
            let sid = u32_at(frame, 6);
            let sl = u16_at(frame, 10) as usize;
            let ql = u16_at(frame, 12) as usize;
            if SUB_FIXED + sl + ql != len {
                return Err(bad("field lengths differ from the frame size"));
            }
            let subject = &frame[SUB_FIXED..SUB_FIXED + sl];
            let queue = &frame[SUB_FIXED + sl..];
            Ok(Frame::Sub(SubFrame {
                sid,
                subject,
                queue,
            }))
        }
        op::UNSUB => {
            if len != UNSUB_LEN {
                return Err(bad("UNSUB is exactly 14 bytes"));
            }
            Ok(Frame::Unsub(UnsubFrame {
                sid: u32_at(frame, 6),
                max_msgs: u32_at(frame, 10),
            }))
        }
        op::HELLO => {
            if len < HELLO_FIXED {
                return Err(bad("shorter than its fixed fields"));
            }
            let version = u16_at(frame, 6);
            let features = u32_at(frame, 8);
            let nl = u16_at(frame, 12) as usize;
            let tl = u16_at(frame, 14) as usize;
            // Trailing bytes after the known fields are allowed: later versions append fields.
            if HELLO_FIXED + nl + tl > len {
                return Err(bad("field lengths exceed the frame"));
            }
            let name = &frame[HELLO_FIXED..HELLO_FIXED + nl];
            let token = &frame[HELLO_FIXED + nl..HELLO_FIXED + nl + tl];
            let (mut public_key, mut signature): (&[u8], &[u8]) = (b"", b"");
            if frame[5] & flags::HELLO_AUTH_EXT != 0 {
                // Auth extension: pk_len u16, sig_len u16, public key, signature.
                let at = HELLO_FIXED + nl + tl;
                if at + 4 > len {
                    return Err(bad("auth extension flagged but missing"));
                }
                let pl = u16_at(frame, at) as usize;
                let sl = u16_at(frame, at + 2) as usize;
                if at + 4 + pl + sl > len {
                    return Err(bad("auth extension lengths exceed the frame"));
                }
                public_key = &frame[at + 4..at + 4 + pl];
                signature = &frame[at + 4 + pl..at + 4 + pl + sl];
            }
            Ok(Frame::Hello(HelloFrame {
                version,
                features,
                name,
                token,
                public_key,
                signature,
            }))
        }
        op::INFO => {
            if len < INFO_FIXED {
                return Err(bad("shorter than its fixed fields"));
            }
            let sl = u16_at(frame, 28) as usize;
            let nl = u16_at(frame, 30) as usize;
            if INFO_FIXED + sl + nl > len {
                return Err(bad("field lengths exceed the frame"));
            }
            Ok(Frame::Info(InfoFrame {
                version: u16_at(frame, 6),
                features: u32_at(frame, 8),
                max_payload: u32_at(frame, 12),
                shard_count: u16_at(frame, 16),
                shard_id: u16_at(frame, 18),
                client_id: u64_at(frame, 20),
                server_id: &frame[INFO_FIXED..INFO_FIXED + sl],
                nonce: &frame[INFO_FIXED + sl..INFO_FIXED + sl + nl],
            }))
        }
        op::ERR => {
            if len < ERR_FIXED {
                return Err(bad("shorter than its fixed fields"));
            }
            let code = u16_at(frame, 6);
            let ml = u16_at(frame, 8) as usize;
            if ERR_FIXED + ml != len {
                return Err(bad("field lengths differ from the frame size"));
            }
            Ok(Frame::Err(ErrFrame {
                code,
                fatal: flags & flags::ERR_FATAL != 0,
                message: &frame[ERR_FIXED..],
            }))
        }
        _ => Ok(Frame::Unknown {
            op: opc,
            flags,
            body: &frame[HEADER_LEN..],
        }),
    }
}

/// The parts of a PUB/MSG tail: subject, reply, headers, payload.
type Tail<'a> = (&'a [u8], &'a [u8], &'a [u8], &'a [u8]);

/// Splits a PUB/MSG tail into subject, reply, headers and payload (the rest).
#[inline]
fn split_tail(tail: &[u8], sl: usize, rl: usize, hl: usize) -> Option<Tail<'_>> {
    let fixed = sl.checked_add(rl)?.checked_add(hl)?;
    if fixed > tail.len() {
        return None;
    }
    let (subject, rest) = tail.split_at(sl);
    let (reply, rest) = rest.split_at(rl);
    let (headers, payload) = rest.split_at(hl);
    Some((subject, reply, headers, payload))
}

/// Offset of the PUB tail (subject onwards) in a PUB frame.
pub const PUB_TAIL_OFFSET: usize = PUB_FIXED;
/// Offset of the MSG tail (subject onwards) in a MSG frame.
pub const MSG_TAIL_OFFSET: usize = MSG_FIXED;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_tail_boundaries() {
        let tail = b"subjreplyhdrpay";
        assert_eq!(
            split_tail(tail, 4, 5, 3),
            Some((&b"subj"[..], &b"reply"[..], &b"hdr"[..], &b"pay"[..]))
        );
        // Lengths that use the whole tail leave an empty payload.
        assert_eq!(
            split_tail(tail, 4, 5, 6),
            Some((&b"subj"[..], &b"reply"[..], &b"hdrpay"[..], &b""[..]))
        );
        assert_eq!(split_tail(tail, 4, 5, 7), None);
        assert_eq!(
            split_tail(b"", 0, 0, 0),
            Some((&b""[..], &b""[..], &b""[..], &b""[..]))
        );
        // Sums that would overflow are rejected, not wrapped.
        assert_eq!(split_tail(tail, usize::MAX, 1, 0), None);
        assert_eq!(split_tail(tail, 1, 1, usize::MAX), None);
    }

    #[test]
    fn little_endian_readers() {
        let b = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09];
        assert_eq!(u16_at(&b, 1), 0x0302);
        assert_eq!(u32_at(&b, 0), 0x0403_0201);
        assert_eq!(u64_at(&b, 1), 0x0908_0706_0504_0302);
    }

    #[test]
    fn fixed_sizes_match_the_documented_layout() {
        assert_eq!(HEADER_LEN, 6);
        assert_eq!(HELLO_FIXED, 16);
        assert_eq!(INFO_FIXED, 32);
        assert_eq!(ERR_FIXED, 10);
        assert_eq!(PUB_FIXED, 14);
        assert_eq!(SUB_FIXED, 14);
        assert_eq!(UNSUB_LEN, 14);
        assert_eq!(MSG_FIXED, 18);
        // A MSG head is a PUB head plus the 4-byte sid: the PUB → MSG rewrite depends on it.
        assert_eq!(MSG_TAIL_OFFSET - PUB_TAIL_OFFSET, 4);
    }

    #[test]
    fn frame_op_names_every_variant() {
        let cases = [
            (
                Frame::Hello(HelloFrame {
                    version: 1,
                    features: 0,
                    name: b"",
                    token: b"",
                    public_key: b"",
                    signature: b"",
                }),
                op::HELLO,
            ),
            (
                Frame::Info(InfoFrame {
                    version: 1,
                    features: 0,
                    max_payload: 0,
                    shard_count: 1,
                    shard_id: 0,
                    client_id: 0,
                    server_id: b"",
                    nonce: b"",
                }),
                op::INFO,
            ),
            (Frame::Ping, op::PING),
            (Frame::Pong, op::PONG),
            (
                Frame::Err(ErrFrame {
                    code: 1,
                    fatal: true,
                    message: b"",
                }),
                op::ERR,
            ),
            (
                Frame::Pub(PubFrame {
                    subject: b"a",
                    reply: b"",
                    headers: b"",
                    payload: b"",
                }),
                op::PUB,
            ),
            (
                Frame::Sub(SubFrame {
                    sid: 1,
                    subject: b"a",
                    queue: b"",
                }),
                op::SUB,
            ),
            (
                Frame::Unsub(UnsubFrame {
                    sid: 1,
                    max_msgs: 0,
                }),
                op::UNSUB,
            ),
            (
                Frame::Msg(MsgFrame {
                    sid: 1,
                    flags: 0,
                    subject: b"a",
                    reply: b"",
                    headers: b"",
                    payload: b"",
                }),
                op::MSG,
            ),
            (
                Frame::Unknown {
                    op: 0x41,
                    flags: 0,
                    body: b"",
                },
                0x41,
            ),
        ];
        for (frame, want) in cases {
            assert_eq!(frame.op(), want, "{frame:?}");
        }
    }
}
