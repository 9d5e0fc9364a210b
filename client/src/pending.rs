//! Per-subscription pending limits: how many messages and bytes a subscription may hold that its
//! consumer has not taken yet, and [`SubscribeOptions`] to set them per subscription.
//!
//! The reader task hands each subscription its messages in batches (one per socket read). Before
//! a message joins a batch the reader checks it against the subscription's limits, using counters
//! it shares with the [`crate::Subscriber`] ([`PendingCounters`]): the reader adds a whole batch
//! at once when it sends it, the subscriber subtracts what it took once per batch it finishes. A
//! message over a limit is dropped (the reader never waits for a consumer), counted, and the
//! first drop of a run is reported as [`crate::ConnectionEvent::SlowConsumer`].

use std::sync::atomic::{AtomicU64, Ordering};

use crate::message::Message;

/// Default limit of messages a subscription holds that its consumer has not taken (65,536).
pub const DEFAULT_PENDING_MSGS: usize = 65_536;
/// Default limit of bytes a subscription holds that its consumer has not taken (64 MiB).
pub const DEFAULT_PENDING_BYTES: usize = 64 << 20;

/// The pending limits of one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PendingLimits {
    /// Messages (at least 1).
    pub(crate) msgs: u64,
    /// Bytes, counted as [`pending_size`] (at least 1).
    pub(crate) bytes: u64,
}

impl PendingLimits {
    pub(crate) fn new(msgs: usize, bytes: usize) -> PendingLimits {
        PendingLimits {
            msgs: (msgs as u64).max(1),
            bytes: (bytes as u64).max(1),
        }
    }
}

impl Default for PendingLimits {
    fn default() -> Self {
        PendingLimits::new(DEFAULT_PENDING_MSGS, DEFAULT_PENDING_BYTES)
    }
}

/// Counters one subscription's reader side and [`crate::Subscriber`] share.
#[derive(Debug, Default)]
pub(crate) struct PendingCounters {
    /// Messages sent to the stream and not yet taken (the reader adds per batch, the subscriber
    /// subtracts per finished batch: between the two it over-counts, never under-counts).
    pub(crate) msgs: AtomicU64,
    /// Bytes of those messages ([`pending_size`]).
    pub(crate) bytes: AtomicU64,
    /// Messages dropped because a limit was reached.
    pub(crate) dropped: AtomicU64,
}

impl PendingCounters {
    /// Counts a batch handed to the stream.
    #[inline]
    pub(crate) fn add(&self, msgs: u64, bytes: u64) {
        self.msgs.fetch_add(msgs, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts messages the consumer took (always after the [`PendingCounters::add`] of their
    /// batch: the channel orders the two).
    #[inline]
    pub(crate) fn sub(&self, msgs: u64, bytes: u64) {
        self.msgs.fetch_sub(msgs, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// (messages, bytes) pending now, as the reader sees them.
    #[inline]
    pub(crate) fn load(&self) -> (u64, u64) {
        (
            self.msgs.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

/// What a message counts toward the byte limit: subject, reply, headers and payload.
#[inline]
pub(crate) fn pending_size(m: &Message) -> u64 {
    let reply = m.reply.as_ref().map_or(0, |r| r.as_bytes().len());
    let headers = m.headers.as_ref().map_or(0, |h| h.as_encoded().len());
    (m.subject.as_bytes().len() + reply + headers + m.payload.len()) as u64
}

/// Options of one subscription, for [`crate::Client::subscribe_with`]: a queue group and pending
/// limits other than the client's defaults
/// ([`crate::ConnectOptions::subscription_pending_limits`]).
///
/// ```no_run
/// use agentwire_client::SubscribeOptions;
/// # async fn example(client: agentwire_client::Client) -> Result<(), agentwire_client::Error> {
/// // A worker that may fall behind: hold at most 1,000 messages or 8 MiB, drop past that.
/// let mut jobs = client
///     .subscribe_with(
///         "jobs.>",
///         SubscribeOptions::new().queue("workers").pending_limits(1_000, 8 << 20),
///     )
///     .await?;
/// while let Some(job) = jobs.next().await {
///     println!("{} ({} dropped so far)", job.subject, jobs.dropped());
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    pub(crate) queue: Option<String>,
    pub(crate) pending_msgs: Option<usize>,
    pub(crate) pending_bytes: Option<usize>,
}

impl SubscribeOptions {
    /// No queue group, the client's default pending limits.
    pub fn new() -> SubscribeOptions {
        SubscribeOptions::default()
    }

    /// Subscribes as a member of queue group `queue` (as [`crate::Client::queue_subscribe`]).
    pub fn queue(mut self, queue: impl Into<String>) -> SubscribeOptions {
        self.queue = Some(queue.into());
        self
    }

    /// The most messages and bytes (subject, reply, headers and payload) this subscription holds
    /// that its consumer has not taken; each at least 1. Past either, new messages are dropped
    /// and counted ([`crate::Subscriber::dropped`]).
    pub fn pending_limits(mut self, msgs: usize, bytes: usize) -> SubscribeOptions {
        self.pending_msgs = Some(msgs);
        self.pending_bytes = Some(bytes);
        self
    }

    /// The limits to use, given the client's defaults.
    pub(crate) fn limits(&self, defaults: PendingLimits) -> PendingLimits {
        PendingLimits {
            msgs: self
                .pending_msgs
                .map_or(defaults.msgs, |m| (m as u64).max(1)),
            bytes: self
                .pending_bytes
                .map_or(defaults.bytes, |b| (b as u64).max(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_default_and_override() {
        let d = PendingLimits::default();
        assert_eq!((d.msgs, d.bytes), (65_536, 64 << 20));
        let client = PendingLimits::new(10, 1000);
        assert_eq!(SubscribeOptions::new().limits(client), client);
        let own = SubscribeOptions::new().pending_limits(0, 5).limits(client);
        assert_eq!((own.msgs, own.bytes), (1, 5), "at least 1");
    }

    #[test]
    fn counters_add_and_sub() {
        let c = PendingCounters::default();
        c.add(3, 30);
        c.sub(1, 10);
        assert_eq!(c.load(), (2, 20));
    }
}
