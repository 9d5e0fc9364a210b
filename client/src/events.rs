//! Connection events: [`Client::events`](crate::Client::events) streams what happens to the
//! connection (drops, reconnects, server errors, the close).
//!
//! Each listener has its own bounded channel; an event that does not fit (a listener that
//! stopped reading for [`EVENT_CAPACITY`] events) is dropped for that listener only, with a
//! debug log, so a slow listener never holds up the connection.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use parking_lot::Mutex;
use tokio::sync::mpsc;

/// Events buffered per listener.
pub const EVENT_CAPACITY: usize = 256;

/// Something that happened to the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// The connection to `addr` is up (the first event of a stream opened while connected).
    Connected {
        /// The server's address as given.
        addr: String,
    },
    /// The connection dropped (EOF, a socket error, or the keepalive found it stale); the
    /// client reconnects.
    Disconnected {
        /// What ended it, e.g. `EOF`, the socket error, or `stale connection: ...`.
        reason: String,
    },
    /// The client reconnected to `addr` after a drop, re-sent its subscriptions (and
    /// registration) and what was published meanwhile.
    Reconnected {
        /// The server's address as given.
        addr: String,
        /// Time from the drop to the reconnect.
        after: Duration,
        /// Connection attempts it took (1: the first one succeeded).
        attempts: u32,
    },
    /// The server sent an ERR.
    ServerError {
        /// The wire code ([`crate::ErrorCode`]).
        code: u16,
        /// The server's detail.
        message: String,
    },
    /// The server reported this client as a slow consumer (ERR `slow_consumer`; also reported
    /// as [`ConnectionEvent::ServerError`]).
    ServerSlowConsumer,
    /// A subscription of this client reached its pending limits
    /// ([`crate::ConnectOptions::subscription_pending_limits`],
    /// [`crate::SubscribeOptions::pending_limits`]): its consumer is not keeping up, and new
    /// messages for it are dropped until it catches up. Sent once when the subscription starts
    /// dropping; again only after it has drained to half its limits and starts dropping anew.
    /// Other subscriptions and the connection are not affected.
    SlowConsumer {
        /// The subscription id ([`crate::Subscriber::sid`]).
        sid: u32,
        /// The subject or pattern subscribed to.
        subject: String,
        /// Messages the subscription has dropped in all, this one included
        /// ([`crate::Subscriber::dropped`] counts on).
        dropped: u64,
    },
    /// The client closed for good; the stream ends after this event.
    Closed {
        /// Why, as the error later calls get.
        reason: String,
    },
}

/// A stream of [`ConnectionEvent`]s from [`Client::events`](crate::Client::events); it ends
/// after [`ConnectionEvent::Closed`].
#[derive(Debug)]
pub struct ConnectionEvents {
    rx: mpsc::Receiver<ConnectionEvent>,
}

impl ConnectionEvents {
    /// The next event; `None` once the client has closed and every event was read.
    pub async fn next(&mut self) -> Option<ConnectionEvent> {
        self.rx.recv().await
    }
}

impl Stream for ConnectionEvents {
    type Item = ConnectionEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ConnectionEvent>> {
        self.get_mut().rx.poll_recv(cx)
    }
}

/// The listeners of one connection.
#[derive(Debug, Default)]
pub(crate) struct EventHub {
    state: Mutex<HubState>,
}

#[derive(Debug, Default)]
struct HubState {
    listeners: Vec<mpsc::Sender<ConnectionEvent>>,
    closed: bool,
}

impl EventHub {
    /// A new listener; `first` (the current state) is its first event.
    pub(crate) fn listen(&self, first: Option<ConnectionEvent>) -> ConnectionEvents {
        let (tx, rx) = mpsc::channel(EVENT_CAPACITY);
        let mut st = self.state.lock();
        if !st.closed {
            if let Some(ev) = first {
                let _ = tx.try_send(ev);
            }
            st.listeners.push(tx);
        }
        ConnectionEvents { rx }
    }

    /// Sends `ev` to every listener (dropping it for a full one, forgetting closed ones).
    pub(crate) fn emit(&self, ev: ConnectionEvent) {
        let mut st = self.state.lock();
        st.listeners.retain(|tx| match tx.try_send(ev.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::debug!(event = ?ev, "an event listener is full; event dropped for it");
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    /// Sends the final `ev` and ends every stream.
    pub(crate) fn close(&self, ev: ConnectionEvent) {
        self.emit(ev);
        let mut st = self.state.lock();
        st.closed = true;
        st.listeners.clear();
    }
}
