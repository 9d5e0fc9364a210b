//! Server start-up and shutdown: binds (or takes) the listener, starts one thread per shard and
//! an acceptor thread that spreads connections over the shards round robin, and stops them all
//! on request.
//!
//! Tests start a server on `127.0.0.1:0` with [`start`] and read the bound address from the
//! returned [`ServerHandle`].

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use agentwire_protocol::{self as proto, ErrorCode};
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

use crate::config::{Config, ConfigError, ReloadReport};
use crate::plane::{ControlPlane, DataPlane};
use crate::shard::{self, Global};
use crate::stats::StatsSnapshot;
use crate::transport::Incoming;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A thread or runtime could not be started.
    #[error("cannot start the server: {0}")]
    Runtime(#[from] std::io::Error),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The TLS certificate, key or client CA cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsSetupError),
}

/// Why [`ServerHandle::attach`] did not take a connection (the stream is dropped: its peer
/// reads end of stream).
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The server is at `limits.max_connections`.
    #[error("server is at max_connections ({0})")]
    TooManyConnections(usize),
    /// The server is in lame duck or shutting down: it takes no new connections.
    #[error("server is not taking new connections (lame duck or shutting down)")]
    NotAccepting,
}

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    global: Arc<Global>,
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
    /// The shards' connection queues, for [`ServerHandle::attach`].
    attach_to: Vec<mpsc::UnboundedSender<Incoming>>,
    /// Round-robin cursor of [`ServerHandle::attach`].
    attach_next: AtomicUsize,
}

impl ServerHandle {
    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The state shared by the shards (routing table, counters, configuration).
    pub fn global(&self) -> &Arc<Global> {
        &self.global
    }

    /// The running data plane, for what runs beside it (the admin plane).
    pub fn data_plane(&self) -> Arc<dyn DataPlane> {
        self.global.clone()
    }

    /// The stop signal: `true` once [`ServerHandle::shutdown`] was called (or the handle
    /// dropped). Threads started beside the data plane watch it and end.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Joins `thread` with the server's own on [`ServerHandle::join`] and drop (a thread that
    /// ends on [`ServerHandle::stop_signal`]).
    pub fn adopt_thread(&mut self, thread: JoinHandle<()>) {
        self.threads.push(thread);
    }

    /// The verified TLS client identities (mutual TLS) of the connections open now, by
    /// connection id.
    pub fn tls_identities(&self) -> Vec<(u64, String)> {
        let mut v: Vec<_> = self
            .global
            .identities
            .lock()
            .iter()
            .map(|(id, name)| (*id, name.clone()))
            .collect();
        v.sort();
        v
    }

    /// TLS handshakes that failed so far (client and admin ports).
    pub fn tls_handshake_failures(&self) -> u64 {
        self.global
            .telemetry
            .tls_handshake_failures
            .load(Ordering::Relaxed)
    }

    /// Counters summed over every shard.
    pub fn stats(&self) -> StatsSnapshot {
        shard::snapshot(&self.global)
    }

    /// Enters lame-duck mode: no new connections, every client gets a LAMEDUCK notice and is
    /// closed at a random moment within `lameduck_window_ms`. [`ServerHandle::wait_drained`]
    /// waits for the last one.
    pub fn lame_duck(&self) {
        self.global.enter_lame_duck();
    }

    /// Applies the users and limits of `config` while running (what `SIGHUP` does with the
    /// config file): connections of removed users are closed with `ERR auth_failed`, changed
    /// permissions and limits apply at once. Other settings need a restart: they are named in
    /// the report and left as they are.
    ///
    /// # Errors
    /// `config` does not validate; nothing is changed then.
    pub fn reload(&self, config: &Config) -> Result<ReloadReport, ConfigError> {
        self.global.reload(config)
    }

    /// Where `POST /api/v1/system/reload` (`agentwire reload`) reads the configuration from:
    /// `agentwire serve` re-reads its config file and flags, as on `SIGHUP`.
    pub fn set_reload_source(
        &self,
        source: impl Fn() -> Result<Config, String> + Send + Sync + 'static,
    ) {
        *self.global.reload_source.lock() = Some(Box::new(source));
    }

    /// Whether lame duck was entered (by [`ServerHandle::lame_duck`] or the admin API).
    pub fn is_lame_duck(&self) -> bool {
        *self.global.lame.borrow()
    }

    /// Waits until no client is connected, at most `max`. Returns whether none is left.
    pub fn wait_drained(&self, max: Duration) -> bool {
        let deadline = std::time::Instant::now() + max;
        loop {
            if self.global.conn_count.load(Ordering::Relaxed) == 0 {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Asks the server to stop: no new connections; each connection gets its buffered data and
    /// an ERR server_shutdown, then is closed. Returns at once; [`ServerHandle::join`] waits.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits for every thread to finish (after [`ServerHandle::shutdown`]).
    pub fn join(mut self) {
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a server thread panicked");
            }
        }
    }

    /// The in-memory entry, for tests and fuzzing: serves one end of a Unix socket pair
    /// (`UnixStream::pair()`) as a client connection, exactly as an accepted TCP connection
    /// (INFO, handshake, limits, keep-alive), without the listener. The caller speaks the
    /// protocol on the other end. Shards are picked round robin, like the acceptor's.
    ///
    /// The connection counts against `limits.max_connections` from here until its shard closes
    /// it. The stream may be blocking or not; the shard makes it non-blocking.
    ///
    /// # Errors
    /// [`AttachError::TooManyConnections`] at `max_connections` (the broker's acceptor would
    /// refuse it too), [`AttachError::NotAccepting`] in lame duck or after shutdown. The stream
    /// is dropped then, so the other end reads end of stream.
    pub fn attach(&self, stream: std::os::unix::net::UnixStream) -> Result<(), AttachError> {
        if *self.stop.borrow() || *self.global.lame.borrow() {
            return Err(AttachError::NotAccepting);
        }
        let max = self.global.config.limits.max_connections;
        // As the acceptor: counted before the hand-over, the shard subtracts it at the end.
        if self.global.conn_count.fetch_add(1, Ordering::Relaxed) >= max {
            self.global.conn_count.fetch_sub(1, Ordering::Relaxed);
            self.global.shards[0]
                .stats
                .count_error(ErrorCode::TooManyConnections);
            return Err(AttachError::TooManyConnections(max));
        }
        let i = self.attach_next.fetch_add(1, Ordering::Relaxed) % self.attach_to.len();
        let incoming = Incoming {
            stream: crate::transport::StdStream::Unix(stream),
            peer: None,
            identity: None,
        };
        if self.attach_to[i].send(incoming).is_err() {
            // The shard has stopped.
            self.global.conn_count.fetch_sub(1, Ordering::Relaxed);
            return Err(AttachError::NotAccepting);
        }
        Ok(())
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn new_server_id() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("AW{:016X}", h.finish())
}

/// What runs beside the data plane, given at start.
#[derive(Default, Clone)]
pub struct Parts {
    /// Answers control frames (REGISTER, HEARTBEAT, DEREGISTER, DISCOVER); `None`: they are
    /// refused with `ERR unknown_op`.
    pub control: Option<Arc<dyn ControlPlane>>,
}

impl std::fmt::Debug for Parts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parts")
            .field("control", &self.control.is_some())
            .finish()
    }
}

/// Binds `config.listen` and starts a bare data plane (no control plane).
///
/// # Errors
/// An invalid configuration, an address that cannot be bound, or threads that cannot start.
pub fn start(config: Config) -> Result<ServerHandle, StartError> {
    start_with(config, None, Parts::default())
}

/// Starts the server with `parts` beside it, on `listener` or, when `None`, on a new listener
/// bound to `config.listen`.
///
/// # Errors
/// An invalid configuration, an address that cannot be bound, or threads that cannot start.
pub fn start_with(
    config: Config,
    listener: Option<std::net::TcpListener>,
    parts: Parts,
) -> Result<ServerHandle, StartError> {
    config.validate()?;
    let listener = match listener {
        Some(l) => l,
        None => bind(config.listen, config.listen_backlog).map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?,
    };
    start_parts(config, listener, parts)
}

/// Binds `addr` with an accept queue of `backlog` connections (the kernel caps it at
/// `net.core.somaxconn`). std's `bind` uses 128, which a reconnect herd of a thousand clients
/// overflows: every dropped SYN then waits for the kernel's 1 s / 3 s retransmit.
fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

/// Starts a bare data plane on an already bound listener.
///
/// # Errors
/// An invalid configuration, or threads that cannot start.
pub fn start_with_listener(
    config: Config,
    listener: std::net::TcpListener,
) -> Result<ServerHandle, StartError> {
    start_with(config, Some(listener), Parts::default())
}

fn start_parts(
    config: Config,
    listener: std::net::TcpListener,
    parts: Parts,
) -> Result<ServerHandle, StartError> {
    let auth = crate::auth::Auth::compile(&config.users).map_err(ConfigError::Invalid)?;
    crate::auth::log_auth(&auth);
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let tls = match &config.tls {
        Some(t) => Some(crate::tls::server_config(t)?),
        None => None,
    };
    let global = Arc::new(Global::new(config, new_server_id(), auth, parts.control));
    let (stop, stop_rx) = watch::channel(false);
    let mut threads = Vec::new();
    let mut senders = Vec::new();
    for id in 0..global.shards.len() {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        let g = global.clone();
        let s = stop_rx.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("shard-{id}"))
                .spawn(move || {
                    if let Err(e) = shard::run(g, id as u16, rx, s) {
                        tracing::error!(shard = id, "shard failed: {e}");
                    }
                })?,
        );
    }
    let attach_to = senders.clone();
    let g = global.clone();
    let s = stop_rx.clone();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let tls_on = acceptor.is_some();
    threads.push(
        std::thread::Builder::new()
            .name("acceptor".into())
            .spawn(move || {
                if let Err(e) = accept_loop(g, listener, senders, acceptor, s) {
                    tracing::error!("acceptor failed: {e}");
                }
            })?,
    );
    tracing::info!(
        %addr,
        shards = global.shards.len(),
        server_id = %global.server_id,
        max_payload = global.config.limits.max_payload,
        max_connections = global.config.limits.max_connections,
        tls = tls_on,
        mutual_tls = global.config.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        "agentwire listening"
    );
    Ok(ServerHandle {
        addr,
        global,
        stop,
        threads,
        attach_to,
        attach_next: AtomicUsize::new(0),
    })
}

fn accept_loop(
    global: Arc<Global>,
    listener: std::net::TcpListener,
    shards: Vec<mpsc::UnboundedSender<Incoming>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let mut lame = global.lame.subscribe();
        let mut next = 0usize;
        // TLS sessions (handshake, then the proxy to the shard) of this runtime.
        let mut sessions = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
                r = stop.changed() => {
                    if r.is_err() || *stop.borrow() {
                        break;
                    }
                    continue;
                }
                r = lame.changed() => {
                    if r.is_err() || *lame.borrow() {
                        // Lame duck: close the listener; new connections are refused.
                        break;
                    }
                    continue;
                }
                a = listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let max = global.limits.load().max_connections;
            if global.conn_count.fetch_add(1, Ordering::Relaxed) >= max {
                global.conn_count.fetch_sub(1, Ordering::Relaxed);
                global.shards[0]
                    .stats
                    .count_error(ErrorCode::TooManyConnections);
                tracing::warn!(%peer, max, "connection refused: max_connections reached");
                tokio::spawn(refuse(stream, max));
                continue;
            }
            if let Some(acceptor) = &tls {
                // The handshake runs in its own task: a slow or hostile client never holds up
                // the accept loop. It gives `conn_count` back if it drops the connection.
                let i = next % shards.len();
                next = next.wrapping_add(1);
                sessions.spawn(crate::tls::terminate(
                    global.clone(),
                    acceptor.clone(),
                    stream,
                    peer,
                    shards[i].clone(),
                ));
                continue;
            }
            let std_stream = match stream.into_std() {
                Ok(s) => s,
                Err(e) => {
                    global.conn_count.fetch_sub(1, Ordering::Relaxed);
                    tracing::warn!("cannot hand over connection: {e}");
                    continue;
                }
            };
            let i = next % shards.len();
            next = next.wrapping_add(1);
            if shards[i].send(Incoming::tcp(std_stream)).is_err() {
                global.conn_count.fetch_sub(1, Ordering::Relaxed);
            }
        }
        drop(listener);
        // The TLS sessions live on this runtime: keep it until their connections end (lame
        // duck and shutdown close them through the shards, which still need the proxy to
        // deliver LAMEDUCK or the final ERR); once stopped, at most the shutdown grace and the
        // proxy's linger more.
        let grace = Duration::from_millis(global.config.shutdown_grace_ms)
            + crate::tls::LINGER
            + Duration::from_secs(1);
        let far = tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let mut deadline = (*stop.borrow()).then(|| tokio::time::Instant::now() + grace);
        while !sessions.is_empty() {
            tokio::select! {
                r = sessions.join_next() => {
                    if r.is_none() {
                        break;
                    }
                }
                r = stop.changed(), if deadline.is_none() => {
                    if r.is_err() || *stop.borrow() {
                        deadline = Some(tokio::time::Instant::now() + grace);
                    }
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => break,
            }
        }
        Ok(())
    })
}

async fn refuse(mut stream: tokio::net::TcpStream, max: usize) {
    let mut b = BytesMut::new();
    proto::encode_err(
        &mut b,
        ErrorCode::TooManyConnections.as_u16(),
        true,
        &format!("server is at max_connections ({max}); try again later"),
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(&b).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
