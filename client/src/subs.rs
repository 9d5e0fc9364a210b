//! The subscriptions of a connection as the reader sees them ([`SubEntry`]): where each one's
//! messages go, its limits, and the messages of the current read batch not yet handed over.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::message::Message;
use crate::pending::{PendingCounters, PendingLimits};

/// Where the reader sends the messages of one subscription.
#[derive(Debug)]
pub(crate) enum SubKind {
    /// A [`crate::Subscriber`]'s channel; the reader sends each read batch's messages for the
    /// subscription as one `Vec` (one channel operation and at most one wake-up per batch).
    Stream(mpsc::UnboundedSender<Vec<Message>>),
    /// The shared request inbox: replies go to [`crate::conn::Inner::requests`] by token.
    Inbox,
}

/// One active subscription, as the reader sees it.
#[derive(Debug)]
pub(crate) struct SubEntry {
    pub(crate) kind: SubKind,
    /// The subject or pattern, re-sent after a reconnect.
    pub(crate) subject: String,
    /// The queue group (empty for none), re-sent after a reconnect.
    pub(crate) queue: String,
    /// Messages the reader has dispatched to it.
    pub(crate) delivered: u64,
    /// End after this many deliveries in all (0: no limit).
    pub(crate) max: u64,
    /// Whether the server was told the same limit (otherwise the client unsubscribes itself when
    /// the limit is reached).
    pub(crate) server_limited: bool,
    /// Messages of the current read batch not yet sent to the stream.
    pub(crate) pending: Vec<Message>,
    /// Bytes of `pending` (as counted toward the byte limit).
    pub(crate) pending_bytes: u64,
    /// The stream's pending counters when the current batch's first message for it came (the
    /// consumer only lowers them meanwhile, so this plus `pending` never under-counts).
    pub(crate) base: (u64, u64),
    /// Limits on what the stream may hold that its consumer has not taken.
    pub(crate) limits: PendingLimits,
    /// Pending and dropped counts shared with the [`crate::Subscriber`].
    pub(crate) counters: Arc<PendingCounters>,
    /// Dropping messages (a limit was hit and the stream has not drained to half the limits
    /// since): the next drop is not reported again.
    pub(crate) slow: bool,
}

impl SubEntry {
    pub(crate) fn new(kind: SubKind, subject: &str, queue: &str) -> SubEntry {
        SubEntry::with_limits(kind, subject, queue, PendingLimits::default()).0
    }

    /// An entry with pending limits; returns the counters to share with its subscriber.
    pub(crate) fn with_limits(
        kind: SubKind,
        subject: &str,
        queue: &str,
        limits: PendingLimits,
    ) -> (SubEntry, Arc<PendingCounters>) {
        let counters = Arc::new(PendingCounters::default());
        let entry = SubEntry {
            kind,
            subject: subject.to_owned(),
            queue: queue.to_owned(),
            delivered: 0,
            max: 0,
            server_limited: false,
            pending: Vec::new(),
            pending_bytes: 0,
            base: (0, 0),
            limits,
            counters: counters.clone(),
            slow: false,
        };
        (entry, counters)
    }

    /// Hands the messages of the current batch to the stream, counted as pending. `false` when
    /// the subscriber is gone.
    pub(crate) fn send_pending(&mut self) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        let batch = std::mem::take(&mut self.pending);
        let bytes = std::mem::take(&mut self.pending_bytes);
        match &self.kind {
            SubKind::Stream(tx) => {
                self.counters.add(batch.len() as u64, bytes);
                tx.send(batch).is_ok()
            }
            SubKind::Inbox => true,
        }
    }
}
