//! The client's byte stream: plain TCP, or TLS over TCP (rustls). An enum rather than a boxed
//! stream, so the plain path keeps tokio's own owned TCP halves (no lock, no indirection);
//! the TLS stream is split with `tokio::io::split`.
//!
//! Also the TLS settings of [`crate::ConnectOptions`] and how they become a rustls client
//! configuration.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::error::{Error, HandshakeError};

/// TLS settings of a connection ([`crate::ConnectOptions::tls_ca_file`] and friends).
#[derive(Clone, Default)]
pub(crate) struct TlsOptions {
    /// CA certificates (PEM) the server's certificate must chain to.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain and key (PEM) for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// The name checked against the server's certificate; default the address's host.
    pub server_name: Option<String>,
    /// A ready configuration, used instead of the files.
    pub config: Option<Arc<ClientConfig>>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("server_name", &self.server_name)
            .field(
                "config",
                &self.config.as_ref().map(|_| "<rustls::ClientConfig>"),
            )
            .finish()
    }
}

impl TlsOptions {
    /// Whether TLS is asked for (a CA, a client certificate or a ready configuration).
    pub fn enabled(&self) -> bool {
        self.ca_file.is_some() || self.client_cert.is_some() || self.config.is_some()
    }

    /// The rustls configuration: the one given, or one built from the files.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, Error> {
        if let Some(c) = &self.config {
            return Ok(c.clone());
        }
        let bad =
            |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| Error::TlsConfig {
                reason: format!("cannot load {what} from {}: {e}", path.display()),
            };
        let mut roots = RootCertStore::empty();
        if self.ca_file.is_none() {
            return Err(Error::TlsConfig {
                reason: "a client certificate needs the CA of the server's certificate \
                         (tls_ca_file) or a tls_config"
                    .to_owned(),
            });
        }
        if let Some(ca) = &self.ca_file {
            let certs = CertificateDer::pem_file_iter(ca)
                .map_err(|e| bad("the CA", ca, &e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("the CA", ca, &e))?;
            if certs.is_empty() {
                return Err(bad("the CA", ca, &"no CERTIFICATE block"));
            }
            for c in certs {
                roots.add(c).map_err(|e| bad("the CA", ca, &e))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::TlsConfig {
                reason: e.to_string(),
            })?
            .with_root_certificates(roots);
        let config = match &self.client_cert {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .map_err(|e| bad("the client certificate", cert, &e))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad("the client certificate", cert, &e))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| bad("the client key", key, &e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| Error::TlsConfig {
                        reason: format!("client certificate: {e}"),
                    })?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }

    /// The name to check the server's certificate against, for a connection to `addr`
    /// (`host:port`): the configured one, else the host (an IP address is checked as one).
    pub fn server_name(&self, addr: &str) -> Result<ServerName<'static>, Error> {
        let host = match &self.server_name {
            Some(n) => n.as_str(),
            None => host_of(addr),
        };
        ServerName::try_from(host.to_owned()).map_err(|e| Error::TlsConfig {
            reason: format!("invalid TLS server name {host:?}: {e}"),
        })
    }
}

/// The host part of `host:port` (brackets of an IPv6 literal removed).
fn host_of(addr: &str) -> &str {
    let host = match addr.rfind(':') {
        Some(i) if !addr[i + 1..].contains(']') => &addr[..i],
        _ => addr,
    };
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// The rustls error inside an I/O error from a TLS stream, if that is what it is.
pub(crate) fn tls_error(e: &io::Error) -> Option<rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned()
}

/// An I/O error during the handshake: a TLS failure (bad certificate, alert from the server)
/// as [`HandshakeError::Tls`], anything else as [`HandshakeError::Io`].
pub(crate) fn handshake_io(e: io::Error) -> HandshakeError {
    match tls_error(&e) {
        Some(t) => HandshakeError::Tls(t),
        None => HandshakeError::Io(e),
    }
}

/// A connected stream.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// The read half of a [`Stream`].
#[derive(Debug)]
pub(crate) enum ReadHalf {
    Tcp(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<TlsStream<TcpStream>>),
}

/// The write half of a [`Stream`].
#[derive(Debug)]
pub(crate) enum WriteHalf {
    Tcp(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<TlsStream<TcpStream>>),
}

impl Stream {
    /// Splits into halves for the reader and writer tasks.
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Stream::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl AsyncRead for ReadHalf {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ReadHalf::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            WriteHalf::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            WriteHalf::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WriteHalf::Tcp(s) => s.is_write_vectored(),
            WriteHalf::Tls(s) => s.is_write_vectored(),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_flush(cx),
            WriteHalf::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            WriteHalf::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("127.0.0.1:4800"), "127.0.0.1");
        assert_eq!(host_of("broker.local:4800"), "broker.local");
        assert_eq!(host_of("[::1]:4800"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
    }
}
