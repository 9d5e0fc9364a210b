//! The writing side of a connection: the writer task, which writes what the flush's direct
//! write ([`Conn::write_now`]) could not, double-buffered, within the write deadline.

use std::rc::Rc;
use std::time::Instant;

use bytes::BytesMut;

use super::conn::Conn;
use super::Shard;

/// Largest spare outbound buffer kept between writes.
const MAX_SPARE: usize = 1 << 20;

/// Writes the connection's outbound bytes that [`Conn::write_now`] could not, double-buffered:
/// while one buffer is being written the shard appends to the other.
pub(super) async fn write_loop(shard: Rc<Shard>, conn: Rc<Conn>) {
    let limits = *shard.limits.borrow();
    let soft = limits.soft_pending();
    let deadline = limits.write_deadline();
    let mut spare = BytesMut::new();
    loop {
        let next = {
            let mut st = conn.st.borrow_mut();
            if st.out.is_empty() {
                if st.closing {
                    break;
                }
                None
            } else {
                let b = std::mem::replace(&mut st.out, std::mem::take(&mut spare));
                st.inflight = b.len();
                st.last_progress = Instant::now();
                Some(b)
            }
        };
        let Some(buf) = next else {
            conn.wake_writer.notified().await;
            continue;
        };
        let mut pos = 0usize;
        while pos < buf.len() {
            match conn.stream.try_write(&buf[pos..]) {
                Ok(n) if n > 0 => {
                    pos += n;
                    let mut st = conn.st.borrow_mut();
                    st.inflight -= n;
                    st.last_progress = Instant::now();
                    let pending = st.pending();
                    shard.account(&mut st);
                    drop(st);
                    if pending <= soft {
                        conn.drained.notify_waiters();
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    match tokio::time::timeout(deadline, conn.stream.writable()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => {
                            fail_writer(&conn);
                            return;
                        }
                        Err(_) => {
                            conn.st.borrow_mut().inflight = 0;
                            conn.slow_consumer(&shard, "no write progress within write_deadline");
                            // The ERR cannot be written to a peer that does not read: just close.
                            conn.stop.notify_one();
                            return;
                        }
                    }
                }
                Ok(_) | Err(_) => {
                    fail_writer(&conn);
                    return;
                }
            }
        }
        let mut buf = buf;
        buf.clear();
        spare = if buf.capacity() <= MAX_SPARE {
            buf
        } else {
            BytesMut::new()
        };
        conn.drained.notify_waiters();
    }
    conn.stream.shutdown_write();
}

/// The socket failed for writing: stop deliveries and the reader.
fn fail_writer(conn: &Conn) {
    let mut st = conn.st.borrow_mut();
    st.inflight = 0;
    st.closing = true;
    drop(st);
    conn.stop.notify_one();
}
