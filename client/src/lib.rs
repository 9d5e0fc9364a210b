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
//! Components register over their ordinary connection ([`Client::register`]): the returned
//! [`Membership`] sends heartbeats with the load the application reports, and streams the
//! component's live config. [`Client::discover`] lists the registered instances:
//!
//! ```no_run
//! use agentwire_client::{DiscoverQuery, Registration};
//!
//! # async fn example() -> Result<(), agentwire_client::Error> {
//! let client = agentwire_client::connect("127.0.0.1:4800").await?;
//! let membership = client
//!     .register(Registration {
//!         component: "summarizer".into(),
//!         instance_id: "summarizer-7".into(),
//!         capabilities: vec!["summarize".into()],
//!         subjects: vec!["summarizer.>".into()],
//!         ..Registration::default()
//!     })
//!     .await?;
//! let mut configs = membership.config_watch();
//! tokio::spawn(async move {
//!     while let Some(config) = configs.next().await {
//!         println!("config v{}: max_tokens={:?}", config.version(), config.get("max_tokens"));
//!     }
//! });
//! membership.set_load(1, 0);
//!
//! for instance in client.discover(DiscoverQuery::new().capability("summarize")).await? {
//!     println!("{} healthy={}", instance.instance_id, instance.healthy);
//! }
//! membership.deregister().await?;
//! # Ok(()) }
//! ```
//!
//! TLS: [`ConnectOptions::tls_ca_file`] (trust this CA), [`ConnectOptions::tls_client_cert`]
//! (mutual TLS), [`ConnectOptions::tls_server_name`] or [`ConnectOptions::tls_config`] (a
//! ready `rustls::ClientConfig`). A refused TLS handshake is [`HandshakeError::Tls`].
//!
//! How it works: each connection runs one reader and one writer task (`tokio::spawn`; any
//! runtime flavour). Publishes are encoded straight into a shared write buffer that the writer
//! sends in one write per batch; past [`ConnectOptions::write_buffer_limit`] publishers wait.
//! The reader decodes frames from large read chunks and hands out messages whose fields are
//! slices of those chunks. [`Client::flush`] is a PING answered by a PONG once the server has
//! read everything sent before it.
//!
//! Each subscription buffers at most its pending limits of messages and bytes that its consumer
//! has not taken ([`ConnectOptions::subscription_pending_limits`], [`SubscribeOptions`]); past
//! them new messages are dropped ([`Subscriber::dropped`], [`ConnectionEvent::SlowConsumer`])
//! rather than held in memory or waited for. A keepalive task per connection PINGs a server it
//! has read nothing from for [`ConnectOptions::ping_interval`] and drops the connection as stale
//! after [`ConnectOptions::max_pings_out`] PINGs with no answer.

mod client;
mod config;
mod conn;
mod connect;
mod control;
mod control_frames;
mod control_state;
mod credentials;
mod error;
mod events;
mod handle;
mod handshake;
mod headers;
mod heartbeat;
mod info;
mod keepalive;
mod load;
mod message;
mod options;
mod outbound;
mod pending;
mod reader;
mod reconnect;
mod subject;
mod subs;
mod subscriber;
mod sync;
mod tasks;
mod transport;
mod writer;

pub use agentwire_protocol::control::{
    ConfigUpdate, Heartbeat, InstanceInfo, Registered, Registration,
};
pub use agentwire_protocol::headers::HeaderError;
pub use agentwire_protocol::{ErrorCode, SubjectError};
pub use bytes::Bytes;
pub use config::{ConfigSnapshot, ConfigWatch};
pub use control::{DiscoverQuery, Membership};
pub use credentials::{Credentials, CredentialsError};
pub use error::{Error, HandshakeError, ServerError};
pub use events::{ConnectionEvent, ConnectionEvents, EVENT_CAPACITY};
pub use handle::Client;
pub use headers::{Headers, Iter as HeadersIter, SENT_AT_HEADER};
pub use info::{ServerInfo, Statistics};
pub use load::LoadReporter;
pub use message::{Message, OutboundMessage};
pub use options::{
    ConnectOptions, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_PINGS_OUT, DEFAULT_PING_INTERVAL,
    DEFAULT_READ_BUFFER_SIZE, DEFAULT_RECONNECT_BUFFER_SIZE, DEFAULT_RECONNECT_DELAY_MAX,
    DEFAULT_RECONNECT_DELAY_MIN, DEFAULT_REQUEST_TIMEOUT, DEFAULT_WRITE_BUFFER_LIMIT,
};
pub use pending::{SubscribeOptions, DEFAULT_PENDING_BYTES, DEFAULT_PENDING_MSGS};
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
        assert_send_sync::<Membership>();
        assert_send_sync::<SubscribeOptions>();
        assert_send_sync::<LoadReporter>();
        assert_send_sync::<ConfigSnapshot>();
        assert_send_type::<ConfigWatch>();
        assert_send_sync::<ConnectionEvents>();
        assert_send_sync::<ConnectionEvent>();
    }

    #[allow(dead_code)]
    fn futures_are_send(c: &Client, s: &mut Subscriber, h: &Headers) {
        assert_send(&c.publish("a", "b"));
        assert_send(&c.publish_with_headers("a", h, "b"));
        assert_send(&c.request("a", "b", std::time::Duration::from_secs(1)));
        assert_send(&c.subscribe("a"));
        assert_send(&c.subscribe_with("a", SubscribeOptions::new()));
        assert_send(&c.flush());
        assert_send(&c.drain());
        assert_send(&c.close());
        assert_send(&s.next());
        assert_send(&s.unsubscribe_after(1));
        assert_send(&c.register(Registration::default()));
        assert_send(&c.discover(DiscoverQuery::new()));
    }

    #[allow(dead_code)]
    fn control_futures_are_send(m: &Membership, w: &mut ConfigWatch) {
        assert_send(&m.deregister());
        assert_send(&w.next());
    }
}
