//! The [`Client`] handle itself: the shared connection state and the lifeline that closes the
//! connection when the last handle goes away. Its methods (publish, subscribe, request,
//! register, ...) are in `client.rs`; [`crate::Subscriber`] and [`crate::Membership`] hold a
//! `Client` to keep the connection open.

use std::fmt;
use std::sync::Arc;

use crate::conn::Inner;

/// A connection to an agentwire broker. Cheap to clone: clones share the connection.
///
/// The connection closes when [`Client::close`] or [`Client::drain`] is called, when the server or
/// the network ends it, or when the last `Client` clone and the last
/// [`Subscriber`](crate::Subscriber) are dropped (pending publishes are still written then).
///
/// ```no_run
/// # async fn example() -> Result<(), agentwire_client::Error> {
/// let client = agentwire_client::connect("127.0.0.1:4800").await?;
/// let mut sub = client.subscribe("greetings.>").await?;
/// client.publish("greetings.en", "hello").await?;
/// if let Some(msg) = sub.next().await {
///     println!("{}: {:?}", msg.subject, msg.payload);
/// }
/// client.drain().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
    /// Shared by every clone and subscriber: its drop starts a graceful close.
    _lifeline: Arc<Lifeline>,
}

/// Closes the connection gracefully when the last handle goes away.
struct Lifeline(Arc<Inner>);

impl Drop for Lifeline {
    fn drop(&mut self) {
        self.0.begin_close();
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("server_id", &self.inner.info.server_id)
            .field("client_id", &self.inner.info.client_id)
            .field("closed", &self.inner.is_closed())
            .finish()
    }
}

impl Client {
    pub(crate) fn new(inner: Arc<Inner>) -> Client {
        Client {
            _lifeline: Arc::new(Lifeline(inner.clone())),
            inner,
        }
    }
}
