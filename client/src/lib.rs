//! agentwire-client: the async Rust client of the agentwire message broker.
//!
//! Connect with [`connect`] (or [`ConnectOptions`]), then publish, subscribe and make requests
//! through the [`Client`] handle:
//!
//! ```no_run
//! use std::time::Duration;
//!
//! # async fn example() -> Result<(), agentwire_client::Error> {
//! let client = agentwire_client::connect("127.0.0.1:4800").await?;
//!
//! // A service answering requests on `math.double`.
//! let mut service = client.subscribe("math.double").await?;
//! let responder = client.clone();
//! tokio::spawn(async move {
//!     while let Some(req) = service.next().await {
//!         let n: u64 = std::str::from_utf8(&req.payload).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
//!         if let Some(reply) = req.reply {
//!             let _ = responder.publish(&reply, (2 * n).to_string()).await;
//!         }
//!     }
//! });
//!
//! let answer = client.request("math.double", "21", Duration::from_secs(1)).await?;
//! assert_eq!(answer.payload, "42");
//! client.drain().await?;
//! # Ok(()) }
//! ```
//!
//! How it works: each connection runs one reader and one writer task (`tokio::spawn`; any
//! runtime flavour). Publishes are encoded straight into a shared write buffer that the writer
//! sends in one write per batch; past [`ConnectOptions::write_buffer_limit`] publishers wait.
//! The reader decodes frames from large read chunks and hands out messages whose fields are
//! slices of those chunks. [`Client::flush`] is a PING answered by a PONG once the server has
//! read everything sent before it.

mod client;
mod conn;
mod connect;
mod error;
mod headers;
mod message;
mod reader;
mod subject;
mod subscriber;
mod writer;

pub use agentwire_protocol::headers::HeaderError;
pub use agentwire_protocol::{ErrorCode, SubjectError};
pub use bytes::Bytes;
pub use client::{Client, ServerInfo, Statistics};
pub use connect::{
    ConnectOptions, DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_BUFFER_SIZE, DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_WRITE_BUFFER_LIMIT,
};
pub use error::{Error, HandshakeError, ServerError};
pub use headers::{Headers, Iter as HeadersIter};
pub use message::{Message, OutboundMessage};
pub use subject::Subject;
pub use subscriber::Subscriber;

/// Connects to the broker at `addr` (`host:port`, e.g. `"127.0.0.1:4800"`) with default
/// [`ConnectOptions`].
///
/// ```no_run
/// # async fn example() -> Result<(), agentwire_client::Error> {
/// let client = agentwire_client::connect("127.0.0.1:4800").await?;
/// println!("connected to {}", client.server_info().server_id);
/// # Ok(()) }
/// ```
///
/// # Errors
/// [`Error::Connect`] or [`Error::ConnectTimeout`] when the TCP connection cannot be opened
/// (is `agentwire serve` running?), [`Error::Handshake`] when the server rejects the client.
pub async fn connect(addr: &str) -> Result<Client, Error> {
    ConnectOptions::new().connect(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>(_: &T) {}
    fn assert_send_type<T: Send>() {}

    #[test]
    fn handles_are_send_and_sync() {
        assert_send_sync::<Client>();
        assert_send_sync::<Error>();
        assert_send_type::<Subscriber>();
    }

    #[allow(dead_code)]
    fn futures_are_send(c: &Client, s: &mut Subscriber, h: &Headers) {
        assert_send(&c.publish("a", "b"));
        assert_send(&c.publish_with_headers("a", h, "b"));
        assert_send(&c.request("a", "b", std::time::Duration::from_secs(1)));
        assert_send(&c.subscribe("a"));
        assert_send(&c.flush());
        assert_send(&c.drain());
        assert_send(&c.close());
        assert_send(&s.next());
        assert_send(&s.unsubscribe_after(1));
    }
}
