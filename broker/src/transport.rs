//! The byte stream under a client connection: a TCP socket, or one end of a Unix socket pair
//! whose other end is fed by something in front of the shard (the TLS terminator, a fuzz or
//! test driver). Shards only see [`Incoming`] connections and [`Transport`] streams, so the
//! connection code is the same for all of them.

use std::net::SocketAddr;

use bytes::BytesMut;

/// A stream as it travels from the acceptor to its shard (std types: `Send`, no reactor yet).
#[derive(Debug)]
pub enum StdStream {
    /// A plain TCP connection.
    Tcp(std::net::TcpStream),
    /// One end of a Unix socket pair (TLS terminated in front, or an in-memory driver).
    Unix(std::os::unix::net::UnixStream),
}

/// An accepted connection handed to a shard.
#[derive(Debug)]
pub struct Incoming {
    /// The stream the shard reads and writes.
    pub stream: StdStream,
    /// The client's address, for logs (the TCP peer, also when TLS is terminated in front).
    pub peer: Option<SocketAddr>,
    /// Identity proven below the protocol: the subject name of a verified TLS client
    /// certificate (mutual TLS). `None` for plain connections.
    pub identity: Option<String>,
}

impl Incoming {
    /// A plain TCP connection.
    pub fn tcp(stream: std::net::TcpStream) -> Incoming {
        let peer = stream.peer_addr().ok();
        Incoming {
            stream: StdStream::Tcp(stream),
            peer,
            identity: None,
        }
    }
}

/// A connection's stream, registered with its shard's reactor. Used only through readiness
/// and `try_*` calls, so a shared reference is enough for both the reader and the writer.
#[derive(Debug)]
pub(crate) enum Transport {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Transport {
    /// Registers `s` with the current reactor (non-blocking, no delay for TCP).
    pub fn from_std(s: StdStream) -> std::io::Result<Transport> {
        match s {
            StdStream::Tcp(s) => {
                s.set_nonblocking(true)?;
                let s = tokio::net::TcpStream::from_std(s)?;
                let _ = s.set_nodelay(true);
                Ok(Transport::Tcp(s))
            }
            StdStream::Unix(s) => {
                s.set_nonblocking(true)?;
                Ok(Transport::Unix(tokio::net::UnixStream::from_std(s)?))
            }
        }
    }

    pub async fn readable(&self) -> std::io::Result<()> {
        match self {
            Transport::Tcp(s) => s.readable().await,
            Transport::Unix(s) => s.readable().await,
        }
    }

    pub async fn writable(&self) -> std::io::Result<()> {
        match self {
            Transport::Tcp(s) => s.writable().await,
            Transport::Unix(s) => s.writable().await,
        }
    }

    pub fn try_read_buf(&self, buf: &mut BytesMut) -> std::io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.try_read_buf(buf),
            Transport::Unix(s) => s.try_read_buf(buf),
        }
    }

    pub fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.try_write(buf),
            Transport::Unix(s) => s.try_write(buf),
        }
    }

    /// Half-closes the stream for writing (the peer reads end of stream after the last byte).
    pub fn shutdown_write(&self) {
        let _ = match self {
            Transport::Tcp(s) => socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write),
            Transport::Unix(s) => socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write),
        };
    }
}
