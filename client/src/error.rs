//! Errors of the client library.
//!
//! One enum, [`Error`], for everything a caller can get back, with messages that say what went
//! wrong and what to try next. [`ServerError`] is an ERR frame from the broker, kept as data (code,
//! stable name, message, fatal flag) so callers can match on the code.

use std::fmt;
use std::io;
use std::time::Duration;

use agentwire_protocol::headers::HeaderError;
use agentwire_protocol::{DecodeError, EncodeError, ErrFrame, ErrorCode, SubjectError};

/// An ERR frame sent by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// The wire code ([`ErrorCode`]); codes this client does not know are kept as they are.
    pub code: u16,
    /// The code's stable short name, e.g. `slow_consumer`, or `unknown` for a newer code.
    pub name: &'static str,
    /// The server's human-readable detail.
    pub message: String,
    /// Whether the server closes the connection after this error.
    pub fatal: bool,
}

impl ServerError {
    pub(crate) fn from_frame(frame: &ErrFrame<'_>) -> ServerError {
        ServerError {
            code: frame.code,
            name: ErrorCode::from_u16(frame.code).map_or("unknown", ErrorCode::name),
            message: String::from_utf8_lossy(frame.message).into_owned(),
            fatal: frame.fatal,
        }
    }

    /// The typed code, if this client knows it.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_u16(self.code)
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.code)?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        if self.fatal {
            f.write_str(" [the server closed the connection]")?;
        }
        Ok(())
    }
}

impl std::error::Error for ServerError {}

/// Why the handshake (INFO → HELLO + PING → PONG) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The server answered with an ERR (bad version, auth failure, connection limit, ...).
    #[error("the server rejected the connection: {0}")]
    Rejected(ServerError),
    /// The first frame was not INFO, or the server sent a client-only frame.
    #[error(
        "the server sent op {op:#04x} where {expected} was expected — is this an agentwire server?"
    )]
    UnexpectedFrame {
        /// The op code received.
        op: u8,
        /// What the client waited for.
        expected: &'static str,
    },
    /// The server closed the connection before the handshake completed.
    #[error("the server closed the connection during the handshake")]
    ClosedByServer,
    /// The credentials cannot be sent (e.g. a token longer than 65,535 bytes).
    #[error("cannot send the credentials: {0}")]
    Credentials(String),
    /// The server sent bytes that are not a valid frame.
    #[error("the server sent a malformed frame: {0} — is this an agentwire server?")]
    Protocol(DecodeError),
    /// Reading or writing the socket failed.
    #[error("i/o error: {0}")]
    Io(io::Error),
    /// The TLS handshake failed, or the server ended it with an alert: a server certificate
    /// not signed by the trusted CA, a name mismatch, a server that requires a client
    /// certificate (with TLS 1.3 that alert arrives after the TLS handshake, while the client
    /// waits for INFO: it is reported here all the same).
    #[error("TLS handshake failed: {0}")]
    Tls(rustls::Error),
    /// The handshake did not complete within the connect timeout.
    #[error("no answer within {after:?} — is the server overloaded, or not an agentwire server?")]
    Timeout {
        /// The connect timeout.
        after: Duration,
    },
}

/// Everything a client call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The TCP connection could not be opened.
    #[error("cannot connect to {addr}: {} — is `agentwire serve` running?", io_text(.source))]
    Connect {
        /// The address as given.
        addr: String,
        /// The socket error.
        source: io::Error,
    },
    /// [`crate::ConnectOptions::connect_servers`] was called with an empty server list.
    #[error("no server to connect to — give addresses with ConnectOptions::servers")]
    NoServers,
    /// The TCP connection did not open within the connect timeout.
    #[error("cannot connect to {addr}: no answer within {after:?} — is `agentwire serve` running and reachable?")]
    ConnectTimeout {
        /// The address as given.
        addr: String,
        /// The connect timeout.
        after: Duration,
    },
    /// The TCP connection opened but the protocol handshake failed.
    #[error("handshake with {addr} failed: {source}")]
    Handshake {
        /// The address as given.
        addr: String,
        /// What went wrong.
        source: HandshakeError,
    },
    /// The TLS settings cannot be used (a CA or certificate file that cannot be read, an
    /// invalid server name).
    #[error("TLS configuration: {reason}")]
    TlsConfig {
        /// What is wrong.
        reason: String,
    },
    /// A socket error on an established connection.
    #[error("connection i/o error: {0}")]
    Io(#[from] io::Error),
    /// The server sent bytes that are not a valid frame; the connection was closed.
    #[error("the server sent a malformed frame: {0}")]
    Protocol(#[from] DecodeError),
    /// The server answered with an ERR (for a pending operation: the one that closed the
    /// connection).
    #[error("server error: {0}")]
    Server(ServerError),
    /// A subject or subscription pattern that breaks the subject grammar.
    #[error("invalid subject {subject:?}: {source} (tokens of printable ASCII separated by `.`; wildcards `*` and `>` only in subscriptions)")]
    InvalidSubject {
        /// The subject as given.
        subject: String,
        /// The rule it breaks.
        source: SubjectError,
    },
    /// A queue group name that breaks the queue grammar.
    #[error(
        "invalid queue group {queue:?}: {source} (1 to 255 bytes of printable ASCII, no wildcards)"
    )]
    InvalidQueue {
        /// The queue group as given.
        queue: String,
        /// The rule it breaks.
        source: SubjectError,
    },
    /// A header name or value that cannot be encoded, or a malformed header block.
    #[error("invalid header: {0}")]
    InvalidHeader(#[from] HeaderError),
    /// Headers + payload exceed the server's `max_payload`.
    #[error("message of {len} bytes (headers + payload) exceeds the server's max_payload of {max} bytes — split it, or raise max_payload on the server")]
    PayloadTooLarge {
        /// Headers + payload, in bytes.
        len: usize,
        /// The server's limit ([`crate::ServerInfo::max_payload`]).
        max: u32,
    },
    /// The server did not offer the headers feature, so headers cannot be sent.
    #[error(
        "the server does not support message headers — upgrade the server or send without headers"
    )]
    HeadersNotSupported,
    /// A request matched no subscriber on the server.
    #[error("no responders for request on {subject:?}: nothing is subscribed to that subject")]
    NoResponders {
        /// The request subject.
        subject: String,
    },
    /// A request got no reply in time.
    #[error("request on {subject:?} timed out after {after:?} without a reply — is the responder running and fast enough?")]
    Timeout {
        /// The request subject.
        subject: String,
        /// The timeout given.
        after: Duration,
    },
    /// The server did not answer a flush's PING in time.
    #[error("flush timed out after {after:?}: the server did not answer PING — is it overloaded?")]
    FlushTimeout {
        /// The client's request timeout.
        after: Duration,
    },
    /// Closing did not finish in time: the server did not read the pending messages, which were
    /// dropped.
    #[error("close timed out after {after:?}: the server did not read the pending messages; they were dropped")]
    CloseTimeout {
        /// The client's request timeout.
        after: Duration,
    },
    /// A publish waited for space in the write buffer and no write completed for a whole
    /// request timeout: the server is not reading. Nothing of this publish was sent.
    #[error("the server read nothing for {after:?} and {pending} bytes are waiting to be sent — is it overloaded or stuck?")]
    WriteStalled {
        /// The client's request timeout.
        after: Duration,
        /// Bytes buffered or being written.
        pending: usize,
    },
    /// A frame could not be encoded (a field too long for its length field).
    #[error("cannot encode frame: {0}")]
    Encode(#[from] EncodeError),
    /// The connection is closed (by [`crate::Client::close`], [`crate::Client::drain`], the
    /// server, or a network error); open a new one with [`crate::connect`].
    #[error("the connection is closed")]
    Closed,
    /// The connection dropped while this operation waited (a request, a flush): the client is
    /// reconnecting by itself. The operation's effect on the server is unknown; retry it.
    #[error("the connection dropped while waiting; the client is reconnecting — retry")]
    Disconnected,
    /// A publish while the client reconnects did not fit in the reconnect buffer
    /// ([`crate::ConnectOptions::reconnect_buffer_size`]). Nothing of this publish was kept.
    #[error("the reconnect buffer is full ({pending} of {limit} bytes) while the client reconnects — retry later or raise reconnect_buffer_size")]
    ReconnectBufferFull {
        /// The reconnect buffer size in bytes.
        limit: usize,
        /// Bytes already buffered.
        pending: usize,
    },
    /// The client gave up reconnecting after [`crate::ConnectOptions::max_reconnects`] failed
    /// attempts in a row, and closed.
    #[error("gave up reconnecting after {attempts} failed attempts; the connection is closed")]
    ReconnectFailed {
        /// Failed attempts in a row.
        attempts: u32,
    },
    /// The client keepalive found the connection stale: nothing was read from the server for
    /// `pings` PINGs sent `interval` apart ([`crate::ConnectOptions::ping_interval`]). With
    /// reconnect on the client reconnects instead; this is the close reason with it off.
    #[error("stale connection: nothing read from the server for {pings} keepalive PINGs sent {interval:?} apart — is the server or the network down?")]
    StaleConnection {
        /// Keepalive PINGs sent with nothing read back ([`crate::ConnectOptions::max_pings_out`]).
        pings: u32,
        /// The ping interval.
        interval: Duration,
    },
    /// [`crate::Client::respond`] was given a message that carries no reply subject.
    #[error("the message on {subject} has no reply subject to respond to")]
    NoReplySubject {
        /// The message's subject.
        subject: String,
    },
    /// A [`crate::Registration`] or [`crate::DiscoverQuery`] field breaks its rule (nothing was
    /// sent), or the server's REGISTERED body did not validate (the registration's state is then
    /// unknown, as after a timeout).
    #[error("invalid {what}: {field}: {reason}")]
    InvalidControl {
        /// What was being checked: `registration`, `discover query` or
        /// `REGISTERED from the server`.
        what: &'static str,
        /// The field's name, e.g. `instance_id`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The server refused the registration with a non-fatal ERR, e.g. `duplicate_instance`
    /// (another live connection holds the instance id), `invalid_control` (a field the server
    /// rejects) or `unknown_op` (the server does not support registration). The connection stays
    /// open and [`crate::Client::register`] may be called again.
    #[error("registration refused: {0}")]
    Registration(ServerError),
    /// [`crate::Client::register`] was already called on this connection: it is registered, a
    /// registration is in progress, it was deregistered, or an earlier attempt timed out with the
    /// server's answer unknown. One registration per connection: open a new connection.
    #[error("this connection has already registered (one registration per connection; open a new connection for another instance)")]
    AlreadyRegistered,
    /// The call needs a registered connection ([`crate::Client::register`] first).
    #[error("this connection is not registered — call register first")]
    NotRegistered,
    /// A control-plane exchange (REGISTER, DISCOVER) got no answer within the request timeout.
    #[error("{op} got no answer within {after:?} — is the server overloaded, or too old for the control plane?")]
    ControlTimeout {
        /// The op that went unanswered: `REGISTER` or `DISCOVER`.
        op: &'static str,
        /// The client's request timeout.
        after: Duration,
    },
}

/// Turns a control body's field check failure into [`Error::InvalidControl`].
pub(crate) fn invalid_control(
    what: &'static str,
    e: agentwire_protocol::control::ControlError,
) -> Error {
    use agentwire_protocol::control::ControlError;
    let (field, reason) = match e {
        ControlError::Field { field, reason } => (field, reason),
        ControlError::Invalid { reason, .. } => ("body", reason),
    };
    Error::InvalidControl {
        what,
        field,
        reason,
    }
}

/// A short lowercase description of a socket error for connect messages.
fn io_text(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        io::ErrorKind::ConnectionReset => "connection reset".to_owned(),
        io::ErrorKind::TimedOut => "timed out".to_owned(),
        io::ErrorKind::AddrNotAvailable => "address not available".to_owned(),
        io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => e.to_string(),
    }
}

/// Why a connection ended, kept so every pending operation can be failed with it.
#[derive(Debug, Clone)]
pub(crate) enum CloseReason {
    /// Closed by the client, EOF, a socket error or a malformed frame.
    Closed,
    /// A fatal ERR from the server.
    Server(ServerError),
    /// The connection dropped and the client is reconnecting (fails what was in flight).
    Disconnected,
    /// Reconnecting failed this many times in a row; the client closed.
    ReconnectFailed(u32),
    /// The keepalive sent `pings` PINGs, `interval` apart, and read nothing back.
    Stale {
        /// PINGs sent with nothing read.
        pings: u32,
        /// The ping interval.
        interval: Duration,
    },
}

impl CloseReason {
    pub(crate) fn to_error(&self) -> Error {
        match self {
            CloseReason::Closed => Error::Closed,
            CloseReason::Server(e) => Error::Server(e.clone()),
            CloseReason::Disconnected => Error::Disconnected,
            CloseReason::ReconnectFailed(attempts) => Error::ReconnectFailed {
                attempts: *attempts,
            },
            CloseReason::Stale { pings, interval } => Error::StaleConnection {
                pings: *pings,
                interval: *interval,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_message_is_actionable() {
        let e = Error::Connect {
            addr: "127.0.0.1:4800".into(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(
            e.to_string(),
            "cannot connect to 127.0.0.1:4800: connection refused — is `agentwire serve` running?"
        );
    }

    #[test]
    fn server_error_display() {
        let frame = ErrFrame {
            code: ErrorCode::SlowConsumer.as_u16(),
            fatal: true,
            message: b"outbound buffer over 64 MiB",
        };
        let e = ServerError::from_frame(&frame);
        assert_eq!(e.name, "slow_consumer");
        assert_eq!(e.error_code(), Some(ErrorCode::SlowConsumer));
        assert_eq!(
            e.to_string(),
            "slow_consumer (9): outbound buffer over 64 MiB [the server closed the connection]"
        );
        let unknown = ServerError::from_frame(&ErrFrame {
            code: 999,
            fatal: false,
            message: b"",
        });
        assert_eq!(unknown.to_string(), "unknown (999)");
    }
}
