//! Raw protocol connections for the injectors that must misbehave below the client library: the
//! slow consumer (subscribes, then stops reading) and the garbage clients (random bytes and
//! malformed frames). Frames are built with `agentwire-protocol`'s encoders or by hand
//! (`PROTOCOL.md`), and everything received is decoded with its checked decoder.

use std::net::SocketAddr;
use std::time::Duration;

use agentwire_protocol::{
    decode_frame, encode_hello, encode_ping, features, Frame, HelloFrame, DEFAULT_MAX_PAYLOAD,
    FRAME_OVERHEAD_ALLOWANCE, PROTOCOL_VERSION,
};
use anyhow::{anyhow, bail, Result};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// What arrived on a raw connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    /// INFO.
    Info,
    /// PONG.
    Pong,
    /// An ERR with this code.
    Err(u16),
    /// A MSG.
    Msg,
    /// Any other frame (op).
    Other(u8),
    /// The server closed the connection (or reset it).
    Closed,
    /// Nothing before the deadline.
    Timeout,
    /// Bytes that do not decode.
    Malformed,
}

/// A raw connection.
#[derive(Debug)]
pub struct Raw {
    s: TcpStream,
    buf: BytesMut,
    /// Bytes read so far.
    pub bytes_read: u64,
}

impl Raw {
    /// Connects; `rcvbuf` sets a small receive buffer (the slow consumer).
    ///
    /// # Errors
    /// When the connection cannot be opened.
    pub async fn connect(addr: SocketAddr, rcvbuf: Option<u32>) -> Result<Raw> {
        let sock = TcpSocket::new_v4()?;
        if let Some(n) = rcvbuf {
            sock.set_recv_buffer_size(n)?;
        }
        let s = tokio::time::timeout(Duration::from_secs(2), sock.connect(addr))
            .await
            .map_err(|_| anyhow!("connect to {addr} timed out"))??;
        Ok(Raw {
            s,
            buf: BytesMut::with_capacity(64 << 10),
            bytes_read: 0,
        })
    }

    /// Writes bytes.
    ///
    /// # Errors
    /// When the socket fails.
    pub async fn send(&mut self, b: &[u8]) -> Result<()> {
        self.s.write_all(b).await?;
        Ok(())
    }

    /// The next frame, or what happened instead, waiting until `deadline`.
    pub async fn next(&mut self, deadline: Instant) -> Got {
        let max = DEFAULT_MAX_PAYLOAD as usize + FRAME_OVERHEAD_ALLOWANCE;
        loop {
            match decode_frame(&self.buf, max) {
                Err(_) => return Got::Malformed,
                Ok(Some((f, len))) => {
                    let g = match f {
                        Frame::Info(_) => Got::Info,
                        Frame::Pong => Got::Pong,
                        Frame::Err(e) => Got::Err(e.code),
                        Frame::Msg(_) => Got::Msg,
                        other => Got::Other(other.op()),
                    };
                    self.buf.advance(len);
                    return g;
                }
                Ok(None) => {}
            }
            self.buf.reserve(64 << 10);
            match tokio::time::timeout_at(deadline, self.s.read_buf(&mut self.buf)).await {
                Err(_) => return Got::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => return Got::Closed,
                Ok(Ok(n)) => self.bytes_read += n as u64,
            }
        }
    }

    /// Reads INFO, sends HELLO (protocol `version`) followed by `then`.
    ///
    /// # Errors
    /// When INFO does not come within 2 s or the socket fails.
    pub async fn hello(&mut self, version: u16, then: &[u8]) -> Result<()> {
        let g = self.next(Instant::now() + Duration::from_secs(2)).await;
        if g != Got::Info {
            bail!("expected INFO, got {g:?}");
        }
        let mut out = BytesMut::new();
        encode_hello(
            &mut out,
            &HelloFrame {
                version,
                features: features::HEADERS | features::NO_RESPONDERS,
                name: b"agentwire-soak-raw",
                token: b"",
                public_key: b"",
                signature: b"",
            },
        )?;
        out.extend_from_slice(then);
        self.send(&out).await
    }

    /// Handshake and subscribe `subject` as sid 1, then wait for the PONG that proves it.
    ///
    /// # Errors
    /// When the broker does not answer as expected within 3 s.
    pub async fn subscribe(&mut self, subject: &str) -> Result<()> {
        let mut out = BytesMut::new();
        agentwire_protocol::encode_sub(&mut out, 1, subject.as_bytes(), b"")?;
        encode_ping(&mut out);
        self.hello(PROTOCOL_VERSION, &out).await?;
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match self.next(deadline).await {
                Got::Pong => return Ok(()),
                Got::Other(_) => {}
                g => bail!("subscribe: expected PONG, got {g:?}"),
            }
        }
    }
}

/// A frame header by hand: `len` (whole frame), `op`, flags 0.
pub fn header(len: u32, op: u8) -> Vec<u8> {
    let mut v = len.to_le_bytes().to_vec();
    v.push(op);
    v.push(0);
    v
}
