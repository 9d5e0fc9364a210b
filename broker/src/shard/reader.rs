//! The reading side of a connection: [`serve`] (register it, send INFO, run the reader, then
//! drop its subscriptions and clean up) and the read loop (read big, find every complete frame,
//! hand the batch to [`super::dispatch`], flush and pace once per batch).

use std::rc::Rc;
use std::time::{Duration, Instant};

use agentwire_protocol::{self as proto, features, ErrorCode, InfoFrame};
use bytes::BytesMut;

use super::conn::Conn;
use super::dispatch::{handle_batch, ReaderState};
use super::remote::Stash;
use super::writer::write_loop;
use super::Shard;
use crate::routing::SubTarget;
use crate::stats::ShardStats;
use crate::transport::{Incoming, Transport};

/// Smallest read, and the read size of an idle connection.
const MIN_READ: usize = 4096;

/// Serves one accepted connection until it closes.
pub(crate) async fn serve(shard: Rc<Shard>, incoming: Incoming) {
    let global = shard.global.clone();
    let stream = match Transport::from_std(incoming.stream) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot register connection: {e}");
            global
                .conn_count
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
    };
    let peer = incoming.peer;
    let id = global
        .next_conn_id
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let stream = Rc::new(stream);
    let nonce: Box<[u8]> = if global.auth.load().wants_nonce() {
        let mut n = [0u8; 24];
        rand::Rng::fill(&mut rand::thread_rng(), &mut n[..]);
        n.into()
    } else {
        Box::default()
    };
    let conn = Rc::new(Conn::new(id, stream, incoming.identity, nonce));
    shard.conns.borrow_mut().insert(id, conn.clone());
    global.loads.write().insert(id, conn.load.clone());
    if let Some(name) = &conn.identity {
        global.identities.lock().insert(id, name.clone());
    }
    ShardStats::add(&shard.handle.stats.conns_total, 1);
    ShardStats::add(&shard.handle.stats.conns_open, 1);
    tracing::debug!(conn = id, shard = shard.id, ?peer, identity = ?conn.identity, "connection open");

    {
        let limits = *shard.limits.borrow();
        let info = InfoFrame {
            version: proto::PROTOCOL_VERSION,
            features: features::HEADERS | features::NO_RESPONDERS,
            max_payload: limits.max_payload,
            shard_count: global.shards.len() as u16,
            shard_id: shard.id,
            client_id: id,
            server_id: global.server_id.as_bytes(),
            nonce: &conn.nonce,
        };
        let mut st = conn.st.borrow_mut();
        if proto::encode_info(&mut st.out, &info).is_err() {
            tracing::error!("server id too long for INFO");
        }
    }
    let writer = tokio::task::spawn_local(write_loop(shard.clone(), conn.clone()));
    conn.wake_writer.notify_one();

    let why = read_loop(&shard, &conn).await;
    tracing::debug!(conn = id, shard = shard.id, "connection closing: {why}");
    super::control::connection_closed(&shard, &conn);
    conn.load.set_healthy(false);
    global.loads.write().remove(&id);
    if conn.identity.is_some() {
        global.identities.lock().remove(&id);
    }

    // Stop deliveries and drop the subscriptions at once; then let the writer finish.
    let subs = {
        let mut st = conn.st.borrow_mut();
        st.closing = true;
        std::mem::take(&mut st.subs)
    };
    if !subs.is_empty() {
        let target = |sid| SubTarget {
            shard: shard.id,
            conn: id,
            sid,
        };
        global.routing.remove_many(
            subs.iter()
                .map(|(sid, s)| (&*s.pattern, s.queue.as_deref(), target(*sid))),
        );
    }
    conn.wake_writer.notify_one();
    let grace = Duration::from_millis(global.config.shutdown_grace_ms);
    let abort = writer.abort_handle();
    if tokio::time::timeout(grace, writer).await.is_err() {
        abort.abort();
    }
    shard.conns.borrow_mut().remove(&id);
    {
        let mut st = conn.st.borrow_mut();
        st.out = BytesMut::new();
        st.inflight = 0;
        shard.account(&mut st);
    }
    ShardStats::add_neg(&shard.handle.stats.conns_open);
    global
        .conn_count
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    if shard.conns.borrow().is_empty() {
        shard.conns_gone.notify_waiters();
    }
}

/// Reads and handles frames until the connection ends; returns why it ended.
async fn read_loop(shard: &Rc<Shard>, conn: &Rc<Conn>) -> String {
    let cfg = &shard.global.config;
    let max_frame = cfg.limits.max_frame();
    // Reads start small and grow (up to `read_buffer`) while they fill the buffer, so 10,000
    // idle connections cost little; an idle connection drops its buffer between reads.
    let mut buf = BytesMut::new();
    let mut read_size = MIN_READ.min(cfg.read_buffer);
    let mut stash = Stash::default();
    let mut rs = ReaderState {
        handshaken: false,
        no_responders: false,
        name: String::new(),
    };
    let mut stop_sig = shard.shutdown.clone();
    let mut need = 0usize;
    loop {
        if *stop_sig.borrow() {
            conn.send_err(shard, ErrorCode::ServerShutdown, "server shutting down");
            shard.flush();
            return "server shutdown".into();
        }
        let r = tokio::select! {
            biased;
            _ = conn.stop.notified() => return "closed by server".into(),
            r = stop_sig.changed() => {
                if r.is_err() {
                    return "server gone".into();
                }
                continue;
            }
            r = conn.stream.readable() => r,
        };
        if let Err(e) = r {
            return format!("read error: {e}");
        }
        let want = read_size.max(need.saturating_sub(buf.len()));
        if buf.capacity() - buf.len() < want / 2 {
            buf.reserve(want);
        }
        let spare = buf.capacity() - buf.len();
        match conn.stream.try_read_buf(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Ok(0) => {
                if !buf.is_empty() {
                    ShardStats::add(&shard.handle.stats.truncated_frames, 1);
                    return format!("peer closed mid-frame ({} bytes buffered)", buf.len());
                }
                return "peer closed".into();
            }
            Ok(n) => {
                conn.last_read.set(Instant::now());
                conn.pings_out.set(0);
                if n == spare {
                    read_size = (read_size * 2).min(cfg.read_buffer);
                } else if n < read_size / 4 {
                    read_size = (read_size / 2).max(MIN_READ.min(cfg.read_buffer));
                }
            }
            Err(e) => return format!("read error: {e}"),
        }
        // Find the complete frames at the front of the buffer.
        let mut complete = 0usize;
        let mut fatal = None;
        need = 0;
        loop {
            match proto::frame_len(&buf[complete..], max_frame) {
                Ok(Some(len)) if buf.len() - complete >= len => complete += len,
                Ok(Some(len)) => {
                    need = len;
                    break;
                }
                Ok(None) => break,
                Err(e) => {
                    fatal = Some(e);
                    break;
                }
            }
        }
        if complete > 0 {
            shard.read_at.set(Instant::now());
            let batch = buf.split_to(complete).freeze();
            if let Err(e) = handle_batch(shard, conn, &batch, &mut rs, &mut stash) {
                fatal = Some(e);
            }
        }
        shard.flush_staged(&mut stash);
        if let Some(e) = fatal {
            conn.send_err(shard, e.code(), &e.to_string());
            shard.flush();
            shard.push_stash(&mut stash).await;
            return format!("protocol error: {e}");
        }
        if conn.st.borrow().closing {
            shard.flush();
            shard.push_stash(&mut stash).await;
            return "closed by server".into();
        }
        let congested = shard.flush();
        shard.record_stamped();
        if complete > 0 {
            shard
                .global
                .telemetry
                .hist
                .residence
                .record(shard.read_at.get().elapsed().as_micros() as u64);
        }
        shard.push_stash(&mut stash).await;
        shard.pace(congested).await;
        if buf.is_empty() && read_size <= MIN_READ {
            // Idle: give the memory back (frozen batches keep what they still need).
            buf = BytesMut::new();
        }
    }
}
