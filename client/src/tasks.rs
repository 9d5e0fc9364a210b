//! Starting a connection's background tasks: the reader, the writer and the keepalive of one
//! connection generation (the first connection and every reconnect).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;

use crate::conn::Inner;
use crate::sync::lock;
use crate::transport::Stream;
use crate::{keepalive, reader, writer};

/// Spawns the reader and writer of connection `generation` on `stream`.
pub(crate) fn start_tasks(
    inner: &Arc<Inner>,
    stream: Stream,
    leftover: BytesMut,
    read_size: usize,
    generation: u64,
) {
    let (rd, wr) = stream.into_split();
    let reader = tokio::spawn(reader::run(
        inner.clone(),
        rd,
        leftover,
        read_size,
        generation,
    ));
    let writer = tokio::spawn(writer::run(inner.clone(), wr, generation));
    *lock(&inner.reader_task) = Some(reader.abort_handle());
    *lock(&inner.writer_task) = Some(writer.abort_handle());
    keepalive::start(inner, generation);
    let stale = {
        let w = inner.write.lock();
        w.closed || w.generation != generation
    };
    if stale || inner.torn_down.load(Ordering::Acquire) {
        // The connection died before the handles were stored: stop whichever task is left.
        reader.abort();
        writer.abort();
    }
    inner.writer_wake.notify_one();
}
