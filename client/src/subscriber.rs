//! [`Subscriber`]: the stream of messages of one subscription.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use agentwire_protocol::encode_unsub;
use futures_core::Stream;
use tokio::sync::mpsc;

use crate::error::Error;
use crate::handle::Client;
use crate::message::Message;
use crate::pending::{pending_size, PendingCounters, PendingLimits};
use crate::sync::lock;

/// The messages of one subscription, as a [`Stream`] (or with [`Subscriber::next`]).
///
/// The stream ends after the messages already received when the subscription ends: by
/// [`Subscriber::unsubscribe`], the limit of [`Subscriber::unsubscribe_after`],
/// [`Client::drain`], [`Client::close`], or the connection closing. Dropping a subscriber
/// unsubscribes it. A subscriber keeps its connection open, like a [`Client`] clone.
///
/// Received messages wait here until read, up to the subscription's pending limits (default
/// [`DEFAULT_PENDING_MSGS`](crate::DEFAULT_PENDING_MSGS) messages and
/// [`DEFAULT_PENDING_BYTES`](crate::DEFAULT_PENDING_BYTES) bytes; see
/// [`ConnectOptions::subscription_pending_limits`](crate::ConnectOptions::subscription_pending_limits)
/// and [`SubscribeOptions`](crate::SubscribeOptions)). Past a limit new messages are dropped,
/// counted by [`Subscriber::dropped`] and reported as
/// [`ConnectionEvent::SlowConsumer`](crate::ConnectionEvent::SlowConsumer): a consumer that
/// stops reading costs bounded memory and never holds up the connection or other subscriptions.
#[derive(Debug)]
pub struct Subscriber {
    client: Client,
    sid: u32,
    subject: String,
    rx: mpsc::UnboundedReceiver<Vec<Message>>,
    /// The batch being read (the reader sends one batch per read of the socket).
    batch: std::vec::IntoIter<Message>,
    /// Messages this stream has yielded.
    yielded: u64,
    /// The stream ends once `yielded` reaches this (set by `unsubscribe_after`).
    limit: Option<u64>,
    /// Whether dropping this still has to unsubscribe.
    active: bool,
    /// Pending and dropped counts, shared with the reader.
    counters: Arc<PendingCounters>,
    /// Limits on what may wait here.
    limits: PendingLimits,
    /// Messages (and their bytes) taken from the current batch and not yet subtracted from
    /// `counters` (done once the batch is finished: one update per batch, not per message).
    taken: (u64, u64),
}

impl Subscriber {
    pub(crate) fn new(
        client: Client,
        sid: u32,
        subject: &str,
        rx: mpsc::UnboundedReceiver<Vec<Message>>,
        counters: Arc<PendingCounters>,
        limits: PendingLimits,
    ) -> Subscriber {
        Subscriber {
            client,
            sid,
            subject: subject.to_owned(),
            rx,
            batch: Vec::new().into_iter(),
            yielded: 0,
            limit: None,
            active: true,
            counters,
            limits,
            taken: (0, 0),
        }
    }

    /// Messages and bytes received for this subscription and not yet taken from it (bytes as
    /// counted toward the limit: subject, reply, headers and payload). At most the pending
    /// limits ([`Subscriber::pending_limits`]).
    ///
    /// ```no_run
    /// # async fn example(client: agentwire_client::Client) -> Result<(), agentwire_client::Error> {
    /// let sub = client.subscribe("telemetry.>").await?;
    /// let (msgs, bytes) = sub.pending();
    /// if sub.dropped() > 0 {
    ///     eprintln!("falling behind: {msgs} messages ({bytes} B) waiting, {} dropped", sub.dropped());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn pending(&self) -> (u64, u64) {
        let (msgs, bytes) = self.counters.load();
        (
            msgs.saturating_sub(self.taken.0),
            bytes.saturating_sub(self.taken.1),
        )
    }

    /// Messages dropped because this subscription was at its pending limits when they arrived.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// This subscription's pending limits: (messages, bytes).
    pub fn pending_limits(&self) -> (u64, u64) {
        (self.limits.msgs, self.limits.bytes)
    }

    /// Subtracts what was taken from the batch just finished from the shared counters.
    #[inline]
    fn release_taken(&mut self) {
        if self.taken.0 != 0 {
            let (msgs, bytes) = std::mem::take(&mut self.taken);
            self.counters.sub(msgs, bytes);
        }
    }

    /// The subscription id on the wire.
    pub fn sid(&self) -> u32 {
        self.sid
    }

    /// The subject or pattern subscribed to.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The next message, or `None` once the subscription has ended and its received messages
    /// were read.
    pub async fn next(&mut self) -> Option<Message> {
        std::future::poll_fn(|cx| self.poll_message(cx)).await
    }

    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        if self.limit.is_some_and(|l| self.yielded >= l) {
            return Poll::Ready(None);
        }
        loop {
            if let Some(m) = self.batch.next() {
                self.yielded += 1;
                self.taken.0 += 1;
                self.taken.1 += pending_size(&m);
                if self.batch.len() == 0 {
                    self.release_taken();
                }
                return Poll::Ready(Some(m));
            }
            self.release_taken();
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(batch)) => self.batch = batch.into_iter(),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Ends the subscription now. Messages already received can still be read from a stream
    /// that is kept; this consumes the subscriber, so they are dropped here.
    ///
    /// Succeeds without doing anything when the subscription already ended.
    ///
    /// # Errors
    /// [`Error::Closed`] if the connection closed while the UNSUB was being queued.
    pub async fn unsubscribe(mut self) -> Result<(), Error> {
        self.active = false;
        self.client.inner.remove_sub(self.sid).map(|_| ())
    }

    /// Ends the stream after `n` more messages (`0`: now, dropping any already received and not
    /// yet read).
    ///
    /// "More" counts from what this stream has yielded so far. On the wire, the protocol's
    /// UNSUB `max_msgs` counts every delivery to the subscription since it began, so the server
    /// is told `yielded so far + n`; the client counts deliveries too and ends the stream after
    /// exactly `n` more. Calling it again replaces the limit.
    ///
    /// Succeeds without doing anything when the subscription already ended.
    ///
    /// ```no_run
    /// # async fn example(client: agentwire_client::Client) -> Result<(), agentwire_client::Error> {
    /// let mut sub = client.subscribe("ticks").await?;
    /// sub.unsubscribe_after(3).await?;
    /// let mut got = 0;
    /// while sub.next().await.is_some() {
    ///     got += 1;
    /// }
    /// assert!(got <= 3);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Closed`] if the connection closed while the UNSUB was being queued.
    pub async fn unsubscribe_after(&mut self, n: u32) -> Result<(), Error> {
        let limit = self.yielded + u64::from(n);
        self.limit = Some(limit);
        let inner = &*self.client.inner;
        if n == 0 {
            self.active = false;
            return inner.remove_sub(self.sid).map(|_| ());
        }
        let mut subs = lock(&inner.subs);
        let Some(entry) = subs.get_mut(&self.sid) else {
            return Ok(());
        };
        entry.max = limit;
        let sid = self.sid;
        if entry.delivered >= limit {
            // Enough messages are already queued here: end the subscription now.
            subs.remove(&sid);
            drop(subs);
            self.active = false;
            return inner.enqueue_control(|b| {
                encode_unsub(b, sid, 0);
                Ok(())
            });
        }
        let server_limit = u32::try_from(limit).ok();
        entry.server_limited = server_limit.is_some();
        // Queued under `subs`: while reconnecting, the re-subscribe sends the limit instead.
        match server_limit {
            Some(max) => inner.enqueue_control_connected(|b| {
                encode_unsub(b, sid, max);
                Ok(())
            }),
            // Past the protocol's 32-bit count: the reader unsubscribes when the limit is hit.
            None => Ok(()),
        }
    }
}

impl Stream for Subscriber {
    type Item = Message;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.get_mut().poll_message(cx)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if self.active {
            let _ = self.client.inner.remove_sub(self.sid);
        }
    }
}
