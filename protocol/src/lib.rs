//! agentwire-protocol: the wire format of agentwire, with no sockets and no runtime.
//!
//! - [`frame`]: the byte layout and the zero-copy decoder ([`decode_frame`]).
//! - [`encode`]: encoders into a caller's `BytesMut`.
//! - [`subject`]: the subject, pattern and queue grammar.
//! - [`headers`]: the message header block.
//! - [`control`]: control-plane bodies (registration, heartbeats, config push, discovery).
//! - [`error`]: typed errors and the table of stable wire error codes.
//!
//! The full specification, written for implementers in other languages, is `PROTOCOL.md` beside
//! this crate's `Cargo.toml`.

pub mod control;
pub mod encode;
pub mod error;
pub mod frame;
pub mod headers;
pub mod subject;

pub use encode::{
    encode_err, encode_hello, encode_info, encode_msg, encode_msg_from_pub, encode_ping,
    encode_pong, encode_pub, encode_sub, encode_unsub, msg_head_for_pub, pub_frame_len,
};
pub use error::{DecodeError, EncodeError, ErrorCode, SubjectError};
pub use frame::{
    decode_frame, features, flags, frame_len, op, parse_frame, ErrFrame, Frame, HelloFrame,
    InfoFrame, MsgFrame, PubFrame, SubFrame, UnsubFrame, AUTH_SIGN_PREFIX, DEFAULT_MAX_PAYLOAD,
    FRAME_OVERHEAD_ALLOWANCE, HEADER_LEN, MSG_TAIL_OFFSET, PROTOCOL_VERSION, PUB_TAIL_OFFSET,
};
pub use subject::{validate_literal, validate_pattern, validate_queue, PatternKind};
