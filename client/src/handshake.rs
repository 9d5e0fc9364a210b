//! The handshake of a connection: TCP connect, the TLS session when configured, then INFO,
//! HELLO + PING, PONG.
//!
//! The handshake runs on the socket directly, before the reader and writer tasks exist; bytes
//! that arrive after the PONG are handed to the reader so none are lost.

use agentwire_protocol::{
    decode_frame, encode_hello, encode_ping, encode_pong, features, EncodeError, Frame, HelloFrame,
    DEFAULT_MAX_PAYLOAD, FRAME_OVERHEAD_ALLOWANCE, PROTOCOL_VERSION,
};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::credentials::Credentials;
use crate::error::{Error, HandshakeError, ServerError};
use crate::info::ServerInfo;
use crate::options::ConnectOptions;
use crate::transport::{handshake_io, Stream};

/// Opens a TCP connection to `addr` with `opts`, the TLS session when configured, and completes the
/// handshake, all bounded by the connect timeout. Returns the stream, the server's INFO and
/// the bytes read past the PONG.
pub(crate) async fn open(
    opts: &ConnectOptions,
    addr: &str,
) -> Result<(Stream, ServerInfo, BytesMut), Error> {
    if opts.name.len() > usize::from(u16::MAX) {
        return Err(Error::Encode(EncodeError::FieldTooLong {
            field: "name",
            len: opts.name.len(),
            max: usize::from(u16::MAX),
        }));
    }
    let tls = match opts.tls.enabled() {
        true => Some((opts.tls.client_config()?, opts.tls.server_name(addr)?)),
        false => None,
    };
    let deadline = Instant::now() + opts.connect_timeout;
    let tcp = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
        Err(_) => {
            return Err(Error::ConnectTimeout {
                addr: addr.to_owned(),
                after: opts.connect_timeout,
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
    tcp.set_nodelay(true).map_err(|source| Error::Connect {
        addr: addr.to_owned(),
        source,
    })?;
    let mut stream = match tls {
        None => Stream::Tcp(tcp),
        Some((config, name)) => {
            let connector = tokio_rustls::TlsConnector::from(config);
            match tokio::time::timeout_at(deadline, connector.connect(name, tcp)).await {
                Ok(Ok(s)) => Stream::Tls(Box::new(s)),
                Ok(Err(e)) => {
                    return Err(Error::Handshake {
                        addr: addr.to_owned(),
                        source: handshake_io(e),
                    })
                }
                Err(_) => {
                    return Err(Error::Handshake {
                        addr: addr.to_owned(),
                        source: HandshakeError::Timeout {
                            after: opts.connect_timeout,
                        },
                    })
                }
            }
        }
    };
    let handshake = handshake(
        &mut stream,
        &opts.name,
        &opts.credentials,
        opts.read_buffer_size,
    );
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
                    after: opts.connect_timeout,
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
    Ok((stream, info, leftover))
}

/// Reads once into `buf`, growing it first if needed; `Ok(false)` at EOF.
async fn fill(
    stream: &mut Stream,
    buf: &mut BytesMut,
    want: usize,
) -> Result<bool, HandshakeError> {
    if buf.capacity() - buf.len() < want.max(1024) {
        buf.reserve(want.max(1024));
    }
    let n = stream.read_buf(buf).await.map_err(handshake_io)?;
    Ok(n > 0)
}

/// What the handshake does with one decoded frame.
enum Next {
    Info(ServerInfo, Vec<u8>),
    Pong,
    Ping,
    Skip,
}

/// INFO → HELLO + PING → PONG. Returns the server's info and the bytes read past the PONG.
async fn handshake(
    stream: &mut Stream,
    name: &str,
    credentials: &Credentials,
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
            Frame::Info(i) if info.is_none() => Next::Info(
                ServerInfo {
                    server_id: String::from_utf8_lossy(i.server_id).into_owned(),
                    client_id: i.client_id,
                    shard_id: i.shard_id,
                    shard_count: i.shard_count,
                    max_payload: i.max_payload,
                    version: i.version,
                    features: i.features,
                },
                i.nonce.to_vec(),
            ),
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
            Next::Info(i, nonce) => {
                max_frame = (i.max_payload as usize).saturating_add(FRAME_OVERHEAD_ALLOWANCE);
                let (token, public_key, signature) = credentials.hello_fields(&nonce);
                let mut out = BytesMut::with_capacity(160 + name.len() + token.len());
                encode_hello(
                    &mut out,
                    &HelloFrame {
                        version: PROTOCOL_VERSION,
                        // Want only what the server offers (PROTOCOL.md, feature bits).
                        features: (features::HEADERS | features::NO_RESPONDERS) & i.features,
                        name: name.as_bytes(),
                        token: &token,
                        public_key: &public_key,
                        signature: &signature,
                    },
                )
                .map_err(|e| HandshakeError::Credentials(e.to_string()))?;
                encode_ping(&mut out);
                stream.write_all(&out).await.map_err(handshake_io)?;
                stream.flush().await.map_err(handshake_io)?;
                info = Some(i);
            }
            Next::Ping => {
                let mut out = BytesMut::with_capacity(8);
                encode_pong(&mut out);
                stream.write_all(&out).await.map_err(handshake_io)?;
                stream.flush().await.map_err(handshake_io)?;
            }
            Next::Pong => {
                let info = info.expect("a PONG is accepted only after INFO: matched above");
                return Ok((info, buf));
            }
            Next::Skip => {}
        }
    }
}
