//! TLS termination in front of the shards (rustls, `ring` provider).
//!
//! The acceptor hands every TCP connection to a task on its own runtime that runs the TLS
//! handshake (bounded by `limits.handshake_timeout_ms`), then gives the shard one end of a Unix
//! socket pair ([`Incoming`] with the TCP peer and the verified client identity) and copies
//! bytes both ways between the TLS stream and the other end. Shards never see TLS: their hot
//! path is the same as for plain TCP. [`admin_config`] is the admin API's HTTPS configuration
//! (its listener is the admin plane's).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;
use crate::shard::Global;
use crate::transport::{Incoming, StdStream};

/// Bytes copied per read between the TLS stream and the shard's socket.
const PROXY_BUFFER: usize = 64 << 10;
/// Once the broker has closed its side, how long the client may still take to close its own
/// before the proxy drops the connection.
pub(crate) const LINGER: Duration = Duration::from_secs(5);

/// Why the TLS configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A PEM file cannot be read or holds nothing usable.
    #[error("TLS: cannot load {what} from {path}: {reason}")]
    Load {
        /// Which file (certificate, key, client CA).
        what: &'static str,
        /// Its path.
        path: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the certificate, key or CA set.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA set cannot build a verifier.
    #[error("TLS: client CA: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

fn load_err(what: &'static str, path: &Path, reason: impl ToString) -> TlsSetupError {
    TlsSetupError::Load {
        what,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Every certificate of a PEM file (at least one).
fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| load_err(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| load_err(what, path, e))?;
    if certs.is_empty() {
        return Err(load_err(what, path, "no CERTIFICATE block"));
    }
    Ok(certs)
}

/// The rustls provider used everywhere: ring.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the server configuration: certificate chain and key, and with `client_ca` a verifier
/// that requires a client certificate chaining to it. ALPN is left empty (the client port
/// speaks only the agentwire protocol; the admin API only HTTP/1.1).
///
/// # Errors
/// A file that cannot be read or parsed, or a key that does not match the certificate.
pub fn server_config(cfg: &TlsConfig) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let certs = load_certs("certificate", &cfg.cert)?;
    let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| load_err("key", &cfg.key, e))?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &cfg.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in load_certs("client CA", ca)? {
                roots.add(c).map_err(|e| load_err("client CA", ca, e))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(builder.with_single_cert(certs, key)?))
}

/// The admin API's configuration: the same certificate and key, no client certificate asked
/// (admin callers authenticate with bearer tokens), ALPN `http/1.1`.
///
/// # Errors
/// As [`server_config`].
pub fn admin_config(cfg: &TlsConfig) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let plain = TlsConfig {
        client_ca: None,
        ..cfg.clone()
    };
    let mut c = Arc::unwrap_or_clone(server_config(&plain)?);
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

/// The identity a client certificate proves: its subject Common Name, else its first DNS
/// subject alternative name. `None` when the certificate cannot be parsed or names neither.
pub fn identity_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    if let Some(cn) = x
        .subject()
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok())
    {
        return Some(cn.to_owned());
    }
    let san = x.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
        _ => None,
    })
}

/// The identity of the client of an established server-side TLS stream (mutual TLS only).
fn peer_identity<IO>(tls: &TlsStream<IO>) -> Option<String> {
    let (_, conn) = tls.get_ref();
    conn.peer_certificates()?.first().and_then(identity_of)
}

fn count_failure(global: &Global) {
    global
        .telemetry
        .tls_handshake_failures
        .fetch_add(1, Ordering::Relaxed);
}

/// Runs the TLS handshake of an accepted connection (already counted in `conn_count`), hands
/// the plaintext side to `shard` and proxies until both sides are done. On a failed handshake
/// the connection is closed and `conn_count` given back.
pub(crate) async fn terminate(
    global: Arc<Global>,
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    shard: mpsc::UnboundedSender<Incoming>,
) {
    let release = || {
        global.conn_count.fetch_sub(1, Ordering::Relaxed);
    };
    let _ = stream.set_nodelay(true);
    // The limits now (a reload may have changed them since start).
    let deadline = Duration::from_millis(global.limits.load().handshake_timeout_ms);
    let tls = match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            count_failure(&global);
            release();
            tracing::info!(%peer, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            count_failure(&global);
            release();
            tracing::info!(%peer, after_ms = deadline.as_millis() as u64, "TLS handshake timed out");
            return;
        }
    };
    let identity = peer_identity(&tls);
    let (ours, theirs) = match std::os::unix::net::UnixStream::pair() {
        Ok(p) => p,
        Err(e) => {
            release();
            tracing::warn!(%peer, "cannot create a socket pair for a TLS connection: {e}");
            return;
        }
    };
    let ours = match ours
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(ours))
    {
        Ok(s) => s,
        Err(e) => {
            release();
            tracing::warn!(%peer, "cannot register a TLS connection's socket: {e}");
            return;
        }
    };
    tracing::debug!(%peer, ?identity, "TLS handshake done");
    let incoming = Incoming {
        stream: StdStream::Unix(theirs),
        peer: Some(peer),
        identity,
    };
    if shard.send(incoming).is_err() {
        // The shard is gone (shutdown): nobody will account for this connection.
        release();
        return;
    }
    // From here the shard owns the connection's accounting.
    proxy(tls, ours).await;
}

/// Copies both ways until the shard has closed its side and the client its own (or `LINGER`
/// after the shard's close). End of stream on one side is passed on as a half-close (a TLS
/// close_notify + FIN toward the client), so an ERR the broker sends before closing arrives.
async fn proxy(tls: TlsStream<TcpStream>, plain: tokio::net::UnixStream) {
    let (tls_rd, tls_wr) = tokio::io::split(tls);
    let (plain_rd, plain_wr) = plain.into_split();
    let up = pump(tls_rd, plain_wr);
    let down = pump(plain_rd, tls_wr);
    tokio::pin!(up, down);
    tokio::select! {
        _ = &mut down => {
            let _ = tokio::time::timeout(LINGER, up).await;
        }
        _ = &mut up => {
            let _ = down.await;
        }
    }
}

/// Copies `rd` to `wr` until end of stream (then shuts `wr` down for writing) or an error.
async fn pump<R, W>(mut rd: R, mut wr: W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; PROXY_BUFFER];
    loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if wr.write_all(&buf[..n]).await.is_err() || wr.flush().await.is_err() {
            return;
        }
    }
    let _ = wr.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::identity_of;
    use rcgen::{CertificateParams, DnType, KeyPair};
    use rustls::pki_types::CertificateDer;

    fn cert(cn: Option<&str>, sans: &[&str]) -> CertificateDer<'static> {
        let key = KeyPair::generate().expect("key");
        let mut p =
            CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .expect("params");
        p.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        p.self_signed(&key).expect("certificate").der().clone()
    }

    #[test]
    fn identity_is_the_common_name_else_the_first_dns_name() {
        assert_eq!(
            identity_of(&cert(Some("planner"), &["planner.svc"])).as_deref(),
            Some("planner")
        );
        assert_eq!(
            identity_of(&cert(None, &["worker-3.agents", "other.agents"])).as_deref(),
            Some("worker-3.agents")
        );
        assert_eq!(
            identity_of(&cert(None, &["10.0.0.1"])),
            None,
            "an IP SAN names no one"
        );
        assert_eq!(
            identity_of(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])),
            None
        );
    }
}
