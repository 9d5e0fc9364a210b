//! Errors of the protocol layer and the table of stable wire error codes.
//!
//! Wire codes (`ErrorCode`) are carried in ERR frames and never reused: a retired code stays
//! reserved. The Rust error enums here (`DecodeError`, `EncodeError`, `SubjectError`) are the
//! codec's own typed errors; each maps onto the wire code a broker would answer with.

use std::fmt;

/// Stable numeric error codes carried by ERR frames. The table in `PROTOCOL.md` is generated from
/// the same list; a code is never reused for a different meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The client asked for a protocol version the server does not speak. Fatal.
    UnsupportedVersion = 1,
    /// A frame whose lengths do not add up, or a field out of range. Fatal: the stream can no
    /// longer be trusted.
    MalformedFrame = 2,
    /// A frame longer than the server's frame limit (max payload + 4096). Fatal.
    FrameTooLarge = 3,
    /// A PUB whose headers + payload exceed the max payload. The frame is dropped.
    PayloadTooLarge = 4,
    /// An op code this server does not know. The frame is skipped; the connection stays open.
    UnknownOp = 5,
    /// A subject or subscription pattern that breaks the subject grammar. The frame is dropped.
    InvalidSubject = 6,
    /// A queue group name that breaks the queue grammar. The frame is dropped.
    InvalidQueue = 7,
    /// The connection already holds the maximum number of subscriptions. The SUB is dropped.
    TooManySubscriptions = 8,
    /// The connection did not read its messages fast enough and its outbound buffer passed the
    /// limit. Fatal.
    SlowConsumer = 9,
    /// The server is at its connection limit. Fatal.
    TooManyConnections = 10,
    /// The first frame from a client was not HELLO. Fatal.
    HandshakeRequired = 11,
    /// A SUB reused a subscription id that is still active. The SUB is dropped.
    DuplicateSid = 12,
    /// An UNSUB named a subscription id that is not active. Informational.
    UnknownSid = 13,
    /// The server is shutting down. Fatal.
    ServerShutdown = 14,
    /// The HELLO proves no configured user, or the user was removed by a reload. Fatal.
    AuthFailed = 15,
    /// Publish, subscribe or registration not permitted for this user; the frame is dropped.
    PermissionDenied = 16,
    /// The client sent an op that only servers send (INFO, MSG, ERR) or a second HELLO.
    UnexpectedOp = 17,
    /// The server failed internally; the connection is closed. Fatal.
    Internal = 18,
    /// A PUB whose header block is not well formed. The message is dropped.
    InvalidHeaders = 19,
    /// A control-plane frame whose body does not validate, or whose fields break their rules
    /// (the message names the field). The frame is dropped.
    InvalidControl = 20,
    /// HEARTBEAT or DEREGISTER on a connection that is not registered, or a second REGISTER on
    /// one that is. The frame is dropped.
    NotRegistered = 21,
    /// REGISTER with an instance id that another live connection holds. The frame is dropped.
    DuplicateInstance = 22,
    /// The client did not complete its handshake (HELLO) within the server's deadline. Fatal.
    HandshakeTimeout = 23,
    /// The client answered none of the server's last keep-alive PINGs. Fatal.
    StaleConnection = 24,
}

impl ErrorCode {
    /// Every code, in numeric order (the table of record).
    pub const ALL: [ErrorCode; 24] = [
        ErrorCode::UnsupportedVersion,
        ErrorCode::MalformedFrame,
        ErrorCode::FrameTooLarge,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnknownOp,
        ErrorCode::InvalidSubject,
        ErrorCode::InvalidQueue,
        ErrorCode::TooManySubscriptions,
        ErrorCode::SlowConsumer,
        ErrorCode::TooManyConnections,
        ErrorCode::HandshakeRequired,
        ErrorCode::DuplicateSid,
        ErrorCode::UnknownSid,
        ErrorCode::ServerShutdown,
        ErrorCode::AuthFailed,
        ErrorCode::PermissionDenied,
        ErrorCode::UnexpectedOp,
        ErrorCode::Internal,
        ErrorCode::InvalidHeaders,
        ErrorCode::InvalidControl,
        ErrorCode::NotRegistered,
        ErrorCode::DuplicateInstance,
        ErrorCode::HandshakeTimeout,
        ErrorCode::StaleConnection,
    ];

    /// The numeric value on the wire.
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// The code for a wire value, if known. Unknown codes from a newer server are kept as raw
    /// numbers by the caller.
    pub fn from_u16(v: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| c.as_u16() == v)
    }

    /// A short stable name, e.g. `slow_consumer` (used in logs and metric labels).
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::MalformedFrame => "malformed_frame",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::InvalidSubject => "invalid_subject",
            ErrorCode::InvalidQueue => "invalid_queue",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::HandshakeRequired => "handshake_required",
            ErrorCode::DuplicateSid => "duplicate_sid",
            ErrorCode::UnknownSid => "unknown_sid",
            ErrorCode::ServerShutdown => "server_shutdown",
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::UnexpectedOp => "unexpected_op",
            ErrorCode::Internal => "internal",
            ErrorCode::InvalidHeaders => "invalid_headers",
            ErrorCode::InvalidControl => "invalid_control",
            ErrorCode::NotRegistered => "not_registered",
            ErrorCode::DuplicateInstance => "duplicate_instance",
            ErrorCode::HandshakeTimeout => "handshake_timeout",
            ErrorCode::StaleConnection => "stale_connection",
        }
    }

    /// Whether the server closes the connection after sending this code.
    pub fn is_fatal(self) -> bool {
        matches!(
            self,
            ErrorCode::UnsupportedVersion
                | ErrorCode::MalformedFrame
                | ErrorCode::FrameTooLarge
                | ErrorCode::SlowConsumer
                | ErrorCode::TooManyConnections
                | ErrorCode::HandshakeRequired
                | ErrorCode::ServerShutdown
                | ErrorCode::AuthFailed
                | ErrorCode::Internal
                | ErrorCode::HandshakeTimeout
                | ErrorCode::StaleConnection
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.as_u16())
    }
}

/// Why a byte sequence is not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The length field is smaller than the fixed header.
    #[error("frame length {len} is shorter than the {min}-byte header")]
    LengthTooSmall {
        /// The length read from the wire.
        len: u32,
        /// The smallest legal frame.
        min: usize,
    },
    /// The length field exceeds the receiver's frame limit; nothing was buffered for it.
    #[error("frame length {len} exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The length read from the wire.
        len: u32,
        /// The receiver's limit.
        max: usize,
    },
    /// The frame's inner lengths do not add up to its length, or it is too short for its op.
    #[error("malformed {op:#04x} frame: {reason}")]
    Malformed {
        /// The op of the frame.
        op: u8,
        /// What did not add up.
        reason: &'static str,
    },
}

impl DecodeError {
    /// The wire code a server answers this error with.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            DecodeError::LengthTooSmall { .. } | DecodeError::Malformed { .. } => {
                ErrorCode::MalformedFrame
            }
        }
    }
}

/// Why a frame could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A variable field is longer than its length field can carry.
    #[error("{field} is {len} bytes, more than the {max} its length field can carry")]
    FieldTooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The largest encodable length.
        max: usize,
    },
    /// The whole frame would exceed the 32-bit length field.
    #[error("frame of {len} bytes exceeds the 4 GiB length field")]
    FrameTooLong {
        /// The computed frame length.
        len: usize,
    },
    /// A control body could not be archived.
    #[error("control body could not be archived")]
    ControlBody,
}

/// Why a subject, pattern or queue name is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// The subject has no bytes.
    #[error("subject is empty")]
    Empty,
    /// The subject is longer than the limit.
    #[error("subject is {len} bytes, longer than the limit of {max}")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The subject has more tokens than the limit.
    #[error("subject has more than {max} tokens")]
    TooManyTokens {
        /// The limit.
        max: usize,
    },
    /// Two dots in a row, or a leading or trailing dot.
    #[error("empty token at byte {position}")]
    EmptyToken {
        /// Byte offset where the empty token starts.
        position: usize,
    },
    /// A byte outside the allowed set (printable ASCII 0x21..=0x7E).
    #[error("byte {byte:#04x} at {position} is not allowed (printable ASCII only, no spaces)")]
    BadByte {
        /// The byte.
        byte: u8,
        /// Its offset.
        position: usize,
    },
    /// `*` or `>` inside a token (they must be whole tokens), or `>` not last.
    #[error("bad wildcard at byte {position}: {reason}")]
    BadWildcard {
        /// Byte offset of the wildcard.
        position: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// A wildcard where a literal subject is required (publish subjects, reply subjects).
    #[error("wildcards are not allowed here (publish and reply subjects must be literal)")]
    WildcardNotAllowed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_dense_ordered_and_round_trip() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(
                usize::from(code.as_u16()),
                i + 1,
                "{code:?} is in numeric order"
            );
            assert_eq!(ErrorCode::from_u16(code.as_u16()), Some(*code));
        }
        assert_eq!(ErrorCode::from_u16(0), None);
        assert_eq!(ErrorCode::from_u16(ErrorCode::ALL.len() as u16 + 1), None);
        assert_eq!(ErrorCode::from_u16(u16::MAX), None);
    }

    #[test]
    fn names_are_unique_snake_case() {
        let mut names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.name()).collect();
        for n in &names {
            assert!(
                n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{n}"
            );
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
        assert_eq!(ErrorCode::SlowConsumer.to_string(), "slow_consumer (9)");
    }

    #[test]
    fn fatal_codes_are_the_documented_ones() {
        let fatal: Vec<u16> = ErrorCode::ALL
            .iter()
            .filter(|c| c.is_fatal())
            .map(|c| c.as_u16())
            .collect();
        assert_eq!(fatal, [1, 2, 3, 9, 10, 11, 14, 15, 18, 23, 24]);
    }

    #[test]
    fn decode_errors_map_to_wire_codes() {
        assert_eq!(
            DecodeError::LengthTooSmall { len: 0, min: 6 }.code(),
            ErrorCode::MalformedFrame
        );
        assert_eq!(
            DecodeError::Malformed {
                op: 0x10,
                reason: "x"
            }
            .code(),
            ErrorCode::MalformedFrame
        );
        assert_eq!(
            DecodeError::FrameTooLarge { len: 9, max: 8 }.code(),
            ErrorCode::FrameTooLarge
        );
    }
}
