//! [`ConnectOptions`] and the handshake: TCP connect, INFO, HELLO + PING, PONG.
//!
//! The handshake runs on the socket directly, before the reader and writer tasks exist; bytes
//! that arrive after the PONG are handed to the reader so none are lost.

use std::sync::Arc;
use std::time::Duration;

use agentwire_protocol::{
    decode_frame, encode_hello, encode_ping, encode_pong, features, EncodeError, Frame, HelloFrame,
    DEFAULT_MAX_PAYLOAD, FRAME_OVERHEAD_ALLOWANCE, PROTOCOL_VERSION,
};
use bytes::{Buf, BytesMut};
use rand::distributions::Alphanumeric;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::conn::{lock, Inner, Settings};
use crate::error::{Error, HandshakeError, ServerError};
use crate::{reader, writer, Client, ServerInfo};

/// Default bound on TCP connect plus handshake.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default bound on [`Client::flush`], [`Client::drain`], [`Client::close`] and stalled writes.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default pending outbound bytes past which publishers wait (8 MiB).
pub const DEFAULT_WRITE_BUFFER_LIMIT: usize = 8 << 20;
/// Default read chunk (64 KiB): each read batch is frozen and handed out as message slices, so
/// the next read needs a fresh allocation; at 256 KiB those came from mmap with a page fault
/// per page (10% of a 1 KiB 1->1 profile), at 64 KiB they are reused heap memory.
pub const DEFAULT_READ_BUFFER_SIZE: usize = 64 << 10;

/// Options for a connection, as a builder.
///
/// ```no_run
/// use std::time::Duration;
/// use agentwire_client::ConnectOptions;
/// # async fn example() -> Result<(), agentwire_client::Error> {
/// let client = ConnectOptions::new()
///     .name("billing-worker")
///     .connect_timeout(Duration::from_secs(2))
///     .request_timeout(Duration::from_secs(5))
///     .write_buffer_limit(16 << 20)
///     .connect("127.0.0.1:4800")
///     .await?;
/// # drop(client); Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    name: String,
    connect_timeout: Duration,
    request_timeout: Duration,
    write_buffer_limit: usize,
    read_buffer_size: usize,
    stamp_send_time: bool,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions::new()
    }
}

impl ConnectOptions {
    /// Defaults: no name, 5 s connect timeout, 10 s request timeout, 8 MiB write buffer limit,
    /// 64 KiB read chunks.
    pub fn new() -> ConnectOptions {
        ConnectOptions {
            name: String::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            write_buffer_limit: DEFAULT_WRITE_BUFFER_LIMIT,
            read_buffer_size: DEFAULT_READ_BUFFER_SIZE,
            stamp_send_time: false,
        }
    }

    /// The client name the server shows in logs and monitoring.
    pub fn name(mut self, name: impl Into<String>) -> ConnectOptions {
        self.name = name.into();
        self
    }

    /// Bound on opening the TCP connection and completing the handshake.
    pub fn connect_timeout(mut self, timeout: Duration) -> ConnectOptions {
        self.connect_timeout = timeout;
        self
    }

    /// Bound on [`Client::flush`], [`Client::drain`] and [`Client::close`], and on how long a
    /// publish waits for buffer space without any write completing ([`Error::WriteStalled`]).
    /// Requests take their own timeout.
    pub fn request_timeout(mut self, timeout: Duration) -> ConnectOptions {
        self.request_timeout = timeout;
        self
    }

    /// Pending outbound bytes past which publishes wait for the socket (at least 1). A single
    /// message larger than this is still accepted when the buffer is below the limit.
    pub fn write_buffer_limit(mut self, bytes: usize) -> ConnectOptions {
        self.write_buffer_limit = bytes.max(1);
        self
    }

    /// Stamps every message published on this connection with its send time (header
    /// [`crate::SENT_AT_HEADER`], µs since the Unix epoch), so the broker can measure publish →
    /// deliver latency (its `publish_to_deliver` histogram). Off by default: it costs a header
    /// per message.
    pub fn stamp_send_time(mut self, on: bool) -> ConnectOptions {
        self.stamp_send_time = on;
        self
    }

    /// Size of each read from the socket (at least 4 KiB). Messages are slices of these chunks.
    pub fn read_buffer_size(mut self, bytes: usize) -> ConnectOptions {
        self.read_buffer_size = bytes.max(4096);
        self
    }

    /// Connects to `addr` (`host:port`) and completes the handshake.
    ///
    /// # Errors
    /// [`Error::Connect`] or [`Error::ConnectTimeout`] when the TCP connection cannot be opened,
    /// [`Error::Handshake`] when the server rejects the client or does not speak the protocol.
    pub async fn connect(self, addr: &str) -> Result<Client, Error> {
        if self.name.len() > usize::from(u16::MAX) {
            return Err(Error::Encode(EncodeError::FieldTooLong {
                field: "name",
                len: self.name.len(),
                max: usize::from(u16::MAX),
            }));
        }
        let deadline = Instant::now() + self.connect_timeout;
        let mut stream = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(Error::ConnectTimeout {
                    addr: addr.to_owned(),
                    after: self.connect_timeout,
                })
            }
            Ok(Err(source)) => {
                return Err(Error::Connect {
                    addr: addr.to_owned(),
                    source,
                })
            }
            Ok(Ok(s)) => s,
        };
        stream.set_nodelay(true).map_err(|source| Error::Connect {
            addr: addr.to_owned(),
            source,
        })?;
        let handshake = handshake(&mut stream, &self.name, self.read_buffer_size);
        let (info, leftover) = match tokio::time::timeout_at(deadline, handshake).await {
            Ok(Ok(done)) => done,
            Ok(Err(source)) => {
                return Err(Error::Handshake {
                    addr: addr.to_owned(),
                    source,
                })
            }
            Err(_) => {
                return Err(Error::Handshake {
                    addr: addr.to_owned(),
                    source: HandshakeError::Timeout {
                        after: self.connect_timeout,
                    },
                })
            }
        };
        tracing::debug!(
            addr,
            server_id = %info.server_id,
            client_id = info.client_id,
            "connected"
        );
        let settings = Settings {
            request_timeout: self.request_timeout,
            write_buffer_limit: self.write_buffer_limit,
            stamp_send_time: self.stamp_send_time,
        };
        let inner = Arc::new(Inner::new(
            info,
            settings,
            format!("_INBOX.{}", random_token()),
        ));
        let (rd, wr) = stream.into_split();
        let reader = tokio::spawn(reader::run(
            inner.clone(),
            rd,
            leftover,
            self.read_buffer_size,
        ));
        let writer = tokio::spawn(writer::run(inner.clone(), wr));
        *lock(&inner.reader_task) = Some(reader.abort_handle());
        *lock(&inner.writer_task) = Some(writer.abort_handle());
        if inner.torn_down.load(std::sync::atomic::Ordering::Acquire) {
            // The connection died before the handles were stored: stop whichever task is left.
            reader.abort();
            writer.abort();
        }
        Ok(Client::new(inner))
    }
}

/// 22 random alphanumeric characters (about 131 bits).
pub(crate) fn random_token() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(22)
        .map(char::from)
        .collect()
}

/// Reads once into `buf`, growing it first if needed; `Ok(false)` at EOF.
async fn fill(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    want: usize,
) -> Result<bool, HandshakeError> {
    if buf.capacity() - buf.len() < want.max(1024) {
        buf.reserve(want.max(1024));
    }
    let n = stream.read_buf(buf).await.map_err(HandshakeError::Io)?;
    Ok(n > 0)
}

/// What the handshake does with one decoded frame.
enum Next {
    Info(ServerInfo),
    Pong,
    Ping,
    Skip,
}

/// INFO → HELLO + PING → PONG. Returns the server's info and the bytes read past the PONG.
async fn handshake(
    stream: &mut TcpStream,
    name: &str,
    read_size: usize,
) -> Result<(ServerInfo, BytesMut), HandshakeError> {
    let mut buf = BytesMut::with_capacity(read_size);
    let mut max_frame = DEFAULT_MAX_PAYLOAD as usize + FRAME_OVERHEAD_ALLOWANCE;
    let mut info = None;
    loop {
        let decoded = decode_frame(&buf, max_frame).map_err(HandshakeError::Protocol)?;
        let Some((frame, len)) = decoded else {
            if !fill(stream, &mut buf, read_size).await? {
                return Err(HandshakeError::ClosedByServer);
            }
            continue;
        };
        let expected = if info.is_none() { "INFO" } else { "PONG" };
        let next = match frame {
            Frame::Err(e) => return Err(HandshakeError::Rejected(ServerError::from_frame(&e))),
            Frame::Info(i) if info.is_none() => Next::Info(ServerInfo {
                server_id: String::from_utf8_lossy(i.server_id).into_owned(),
                client_id: i.client_id,
                shard_id: i.shard_id,
                shard_count: i.shard_count,
                max_payload: i.max_payload,
                version: i.version,
                features: i.features,
            }),
            Frame::Pong if info.is_some() => Next::Pong,
            Frame::Ping if info.is_some() => Next::Ping,
            Frame::Info(_) | Frame::Unknown { .. } if info.is_some() => Next::Skip,
            other => {
                return Err(HandshakeError::UnexpectedFrame {
                    op: other.op(),
                    expected,
                })
            }
        };
        buf.advance(len);
        match next {
            Next::Info(i) => {
                max_frame = (i.max_payload as usize).saturating_add(FRAME_OVERHEAD_ALLOWANCE);
                let mut out = BytesMut::with_capacity(64 + name.len());
                encode_hello(
                    &mut out,
                    &HelloFrame {
                        version: PROTOCOL_VERSION,
                        // Want only what the server offers (PROTOCOL.md, feature bits).
                        features: (features::HEADERS | features::NO_RESPONDERS) & i.features,
                        name: name.as_bytes(),
                        token: b"",
                    },
                )
                .expect("the name's length was checked in connect; the token is empty");
                encode_ping(&mut out);
                stream.write_all(&out).await.map_err(HandshakeError::Io)?;
                info = Some(i);
            }
            Next::Ping => {
                let mut out = BytesMut::with_capacity(8);
                encode_pong(&mut out);
                stream.write_all(&out).await.map_err(HandshakeError::Io)?;
            }
            Next::Pong => {
                let info = info.expect("a PONG is accepted only after INFO: matched above");
                return Ok((info, buf));
            }
            Next::Skip => {}
        }
    }
}
