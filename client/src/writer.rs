//! The writer task: takes the whole write buffer at once and writes it to the socket, so many
//! publishes share one syscall.
//!
//! Publishers append to the shared buffer and wake this task only when the buffer goes from
//! empty to non-empty; while a write is in progress the next batch accumulates. The taken buffer
//! is swapped with a cleared spare, so both allocations are reused.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::net::tcp::OwnedWriteHalf;

use crate::conn::{lock, Inner, Origin};
use crate::error::CloseReason;

/// Initial capacity of each of the two write buffers.
const INITIAL_CAPACITY: usize = 64 * 1024;

enum Step {
    Write,
    Wait,
    Finish,
    Stop,
}

/// Runs until a graceful close has written everything, the connection is torn down, or a write
/// fails.
pub(crate) async fn run(inner: Arc<Inner>, wr: Arc<OwnedWriteHalf>) {
    let mut out = BytesMut::with_capacity(INITIAL_CAPACITY);
    loop {
        let step = {
            let mut w = lock(&inner.write);
            if w.closed {
                Step::Stop
            } else if !w.buf.is_empty() {
                std::mem::swap(&mut w.buf, &mut out);
                w.in_flight = out.len();
                Step::Write
            } else if w.closing {
                Step::Finish
            } else {
                Step::Wait
            }
        };
        match step {
            Step::Stop => return,
            Step::Wait => inner.writer_wake.notified().await,
            Step::Finish => {
                // Dropping the last reference to the write half shuts the socket down for
                // writing (the FIN the server reads as a clean close).
                lock(&inner.write).sock = None;
                drop(wr);
                inner.teardown(CloseReason::Closed, Origin::Writer);
                return;
            }
            Step::Write => {
                if let Err(e) = write_all(&wr, &out).await {
                    tracing::debug!(error = %e, "write failed");
                    inner.teardown(CloseReason::Closed, Origin::Writer);
                    return;
                }
                inner.writes.fetch_add(1, Ordering::Relaxed);
                inner
                    .out_bytes
                    .fetch_add(out.len() as u64, Ordering::Relaxed);
                out.clear();
                lock(&inner.write).in_flight = 0;
                inner.drained.notify_waiters();
            }
        }
    }
}

/// Writes all of `buf` through the shared write half (readiness + `try_write`, so the half can
/// be shared with callers that write directly while this task is idle).
async fn write_all(wr: &OwnedWriteHalf, buf: &[u8]) -> std::io::Result<()> {
    let mut pos = 0;
    while pos < buf.len() {
        match wr.try_write(&buf[pos..]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => pos += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => wr.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
