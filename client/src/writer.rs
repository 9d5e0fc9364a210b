//! The writer task: takes the whole write buffer at once and writes it to the socket, so many
//! publishes share one syscall.
//!
//! Publishers append to the shared buffer and wake this task only when the buffer goes from
//! empty to non-empty; while a write is in progress the next batch accumulates. The taken buffer
//! is swapped with a cleared spare, so both allocations are reused.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use crate::conn::{Inner, Origin};
use crate::error::CloseReason;
use crate::transport::WriteHalf;

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
///
/// Stops, without touching the buffer, once connection `generation` has dropped.
pub(crate) async fn run(inner: Arc<Inner>, mut wr: WriteHalf, generation: u64) {
    let mut out = BytesMut::with_capacity(INITIAL_CAPACITY);
    loop {
        let step = {
            let mut w = inner.write.lock();
            if w.closed || w.disconnected || w.generation != generation {
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
                let _ = wr.shutdown().await;
                inner.teardown(CloseReason::Closed, Origin::Writer);
                return;
            }
            Step::Write => {
                // (flush: TLS keeps records it could not send at once; a no-op on TCP)
                if let Err(e) = async {
                    wr.write_all(&out).await?;
                    wr.flush().await
                }
                .await
                {
                    tracing::debug!(error = %e, "write failed");
                    inner.connection_lost(Origin::Writer, generation, format!("write error: {e}"));
                    return;
                }
                inner.writes.fetch_add(1, Ordering::Relaxed);
                inner
                    .out_bytes
                    .fetch_add(out.len() as u64, Ordering::Relaxed);
                out.clear();
                inner.write.lock().in_flight = 0;
                inner.drained.notify_waiters();
            }
        }
    }
}
