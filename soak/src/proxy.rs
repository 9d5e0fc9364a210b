//! The fault proxy: a loopback TCP relay between some of the soak's clients and the broker that
//! can delay, blackhole, cut and refuse connections on command.
//!
//! Each accepted connection gets its own upstream connection and two pumps (one per direction).
//! A pump reads a chunk and hands it to its writer with a due time (now, or now + the delay), so
//! a delay adds latency without limiting throughput and order is kept. Modes:
//! - [`Mode::Pass`]: relay as is.
//! - [`Mode::Delay`]: every chunk is written `d` after it was read.
//! - [`Mode::Blackhole`]: chunks are read and dropped (the connections stay open; the streams are
//!   corrupt from then on, so a blackhole always ends with a [`FaultProxy::cut`]).
//! - [`Mode::Refuse`]: new connections are accepted and closed at once.
//!
//! [`FaultProxy::cut`] closes every open connection (both sides).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// What the proxy does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Relay as is.
    Pass,
    /// Relay every chunk this much later.
    Delay(Duration),
    /// Read and drop.
    Blackhole,
    /// Close new connections at once (open ones are untouched).
    Refuse,
}

/// Bound on connecting upstream.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Chunks queued per direction before the pump stops reading.
const QUEUE: usize = 256;
/// Read size per chunk.
const CHUNK: usize = 64 << 10;

/// A running proxy.
#[derive(Debug)]
pub struct FaultProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    cut: watch::Sender<u64>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and relays to `upstream`.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start(upstream: SocketAddr) -> Result<FaultProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("proxy: cannot bind 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let (mode, mode_rx) = watch::channel(Mode::Pass);
        let (cut, cut_rx) = watch::channel(0u64);
        let accepted = Arc::new(AtomicU64::new(0));
        let acc = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                acc.fetch_add(1, Ordering::Relaxed);
                if *mode_rx.borrow() == Mode::Refuse {
                    drop(sock);
                    continue;
                }
                tokio::spawn(relay(sock, upstream, mode_rx.clone(), cut_rx.clone()));
            }
        });
        Ok(FaultProxy {
            addr,
            mode,
            cut,
            accepted,
            task,
        })
    }

    /// Switches the mode.
    pub fn set_mode(&self, m: Mode) {
        self.mode.send_replace(m);
    }

    /// Closes every open connection.
    pub fn cut(&self) {
        self.cut.send_modify(|g| *g += 1);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

/// One proxied connection: until either side closes or a cut.
async fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    mode: watch::Receiver<Mode>,
    mut cut: watch::Receiver<u64>,
) {
    cut.mark_unchanged();
    let up = match tokio::time::timeout(UPSTREAM_TIMEOUT, TcpStream::connect(upstream)).await {
        Ok(Ok(s)) => s,
        _ => return,
    };
    let _ = client.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, uw) = up.into_split();
    tokio::select! {
        _ = pump(cr, uw, mode.clone()) => {}
        _ = pump(ur, cw, mode) => {}
        _ = cut.changed() => {}
    }
}

/// Relays one direction until EOF or an error, then writes out what is queued.
async fn pump(mut r: OwnedReadHalf, mut w: OwnedWriteHalf, mode: watch::Receiver<Mode>) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes)>(QUEUE);
    let reader = async move {
        let mut buf = BytesMut::with_capacity(CHUNK);
        loop {
            buf.reserve(CHUNK);
            match r.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let chunk = buf.split().freeze();
            let due = match *mode.borrow() {
                Mode::Blackhole => continue,
                Mode::Delay(d) => Instant::now() + d,
                Mode::Pass | Mode::Refuse => Instant::now(),
            };
            if tx.send((due, chunk)).await.is_err() {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if w.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 1024];
                    while let Ok(n) = s.read(&mut b).await {
                        if n == 0 || s.write_all(&b[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn roundtrip(s: &mut TcpStream) -> std::io::Result<usize> {
        s.write_all(b"ping").await?;
        let mut b = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut b))
            .await
            .map_err(|_| std::io::Error::other("timeout"))?
    }

    #[tokio::test]
    async fn relays_delays_cuts_and_refuses() {
        let p = FaultProxy::start(echo_server().await).await.expect("proxy");
        let mut s = TcpStream::connect(p.addr).await.expect("connect");
        assert_eq!(roundtrip(&mut s).await.expect("pass"), 4);
        p.set_mode(Mode::Delay(Duration::from_millis(150)));
        let t = std::time::Instant::now();
        roundtrip(&mut s).await.expect("delay");
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "both ways delayed"
        );
        p.set_mode(Mode::Pass);
        p.cut();
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut b))
            .await
            .expect("the cut closes the connection");
        assert!(matches!(n, Ok(0) | Err(_)));
        p.set_mode(Mode::Refuse);
        let mut s = TcpStream::connect(p.addr).await.expect("accepted");
        assert!(roundtrip(&mut s).await.is_err(), "refused");
    }
}
