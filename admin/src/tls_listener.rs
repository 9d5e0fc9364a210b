//! The admin API's HTTPS listener: the data plane's TLS settings
//! ([`agentwire_broker::tls::admin_config`]) behind `axum::serve`, failed handshakes counted
//! with the client port's.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use agentwire_broker::DataPlane;
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// The admin API's listener over TLS, for `axum::serve`: a task accepts TCP connections and
/// runs each handshake in its own task (a slow or failing client blocks nobody); finished
/// handshakes come out of [`axum::serve::Listener::accept`].
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `listener` (on the current runtime) until `stop`.
    pub fn new(
        listener: tokio::net::TcpListener,
        config: Arc<ServerConfig>,
        global: Arc<dyn DataPlane>,
        mut stop: watch::Receiver<bool>,
    ) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    r = stop.changed() => {
                        if r.is_err() || *stop.borrow() {
                            return;
                        }
                        continue;
                    }
                    a = listener.accept() => match a {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!("admin accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    },
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                let g = global.clone();
                tokio::spawn(async move {
                    let hs = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                    match hs.await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            g.telemetry()
                                .tls_handshake_failures
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::info!(%peer, "admin TLS handshake failed: {e}");
                        }
                        Err(_) => {
                            g.telemetry()
                                .tls_handshake_failures
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::info!(%peer, "admin TLS handshake timed out");
                        }
                    }
                });
            }
        });
        Ok(TlsListener { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accepting task stopped (shutdown): no more connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
