//! [`ConnectOptions`]: the settings of a connection, as a builder, and their defaults.
//!
//! Connecting with them is [`ConnectOptions::connect`] (in `connect.rs`); the TCP, TLS and
//! protocol handshake is in `handshake.rs`.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use crate::credentials::Credentials;
use crate::pending::PendingLimits;
use crate::transport::TlsOptions;

/// Default bound on TCP connect plus handshake.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default bound on [`Client::flush`](crate::Client::flush),
/// [`Client::drain`](crate::Client::drain), [`Client::close`](crate::Client::close) and stalled
/// writes.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default pending outbound bytes past which publishers wait (8 MiB).
pub const DEFAULT_WRITE_BUFFER_LIMIT: usize = 8 << 20;
/// Default read chunk (64 KiB): each read batch is frozen and handed out as message slices, so
/// the next read needs a fresh allocation; at 256 KiB those came from mmap with a page fault
/// per page (10% of a 1 KiB 1->1 profile), at 64 KiB they are reused heap memory.
pub const DEFAULT_READ_BUFFER_SIZE: usize = 64 << 10;
/// Default shortest wait before a reconnect attempt (the first one).
pub const DEFAULT_RECONNECT_DELAY_MIN: Duration = Duration::from_millis(50);
/// Default longest wait between reconnect attempts (the exponential backoff's cap).
pub const DEFAULT_RECONNECT_DELAY_MAX: Duration = Duration::from_secs(2);
/// Default bytes publishes may buffer while the client reconnects (8 MiB).
pub const DEFAULT_RECONNECT_BUFFER_SIZE: usize = 8 << 20;
/// Default time with nothing read from the server after which the client PINGs it.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(5);
/// Default keepalive PINGs in a row with nothing read back before the connection is stale.
pub const DEFAULT_MAX_PINGS_OUT: u32 = 2;

/// Options for a connection, as a builder.
///
/// ```no_run
/// use std::time::Duration;
/// use agentwire_client::ConnectOptions;
/// # async fn example() -> Result<(), agentwire_client::Error> {
/// let client = ConnectOptions::new()
///     .name("billing-worker")
///     .connect_timeout(Duration::from_secs(2))
///     .request_timeout(Duration::from_secs(5))
///     .write_buffer_limit(16 << 20)
///     .connect("127.0.0.1:4800")
///     .await?;
/// # drop(client); Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub(crate) name: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) write_buffer_limit: usize,
    pub(crate) read_buffer_size: usize,
    pub(crate) stamp_send_time: bool,
    pub(crate) servers: Vec<String>,
    pub(crate) reconnect: bool,
    pub(crate) max_reconnects: Option<u32>,
    pub(crate) reconnect_delay_min: Duration,
    pub(crate) reconnect_delay_max: Duration,
    pub(crate) reconnect_buffer_size: usize,
    pub(crate) tls: TlsOptions,
    pub(crate) credentials: Credentials,
    pub(crate) pending_limits: PendingLimits,
    pub(crate) ping_interval: Duration,
    pub(crate) max_pings_out: u32,
    pub(crate) environment: String,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions::new()
    }
}

impl ConnectOptions {
    /// Defaults: no name, 5 s connect timeout, 10 s request timeout, 8 MiB write buffer limit,
    /// 64 KiB read chunks, no server list, reconnect on, unlimited reconnect attempts, reconnect
    /// backoff from 50 ms to 2 s, keepalive PINGs after 5 s of silence (stale after 2), and
    /// subscriptions holding at most 65,536 messages and 64 MiB not yet taken.
    pub fn new() -> ConnectOptions {
        ConnectOptions {
            name: String::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            write_buffer_limit: DEFAULT_WRITE_BUFFER_LIMIT,
            read_buffer_size: DEFAULT_READ_BUFFER_SIZE,
            stamp_send_time: false,
            servers: Vec::new(),
            reconnect: true,
            max_reconnects: None,
            reconnect_delay_min: DEFAULT_RECONNECT_DELAY_MIN,
            reconnect_delay_max: DEFAULT_RECONNECT_DELAY_MAX,
            reconnect_buffer_size: DEFAULT_RECONNECT_BUFFER_SIZE,
            tls: TlsOptions::default(),
            credentials: Credentials::None,
            pending_limits: PendingLimits::default(),
            ping_interval: DEFAULT_PING_INTERVAL,
            max_pings_out: DEFAULT_MAX_PINGS_OUT,
            environment: String::new(),
        }
    }

    /// Authenticates with a token (`[[users]] token` or `token_hash` on the server). Replaces
    /// credentials set before. Reconnects use it too.
    pub fn token(mut self, token: impl Into<String>) -> ConnectOptions {
        self.credentials = Credentials::Token(token.into());
        self
    }

    /// Authenticates with `credentials` (a token or an ed25519 key pair, e.g. from
    /// [`Credentials::from_file`]). Replaces credentials set before.
    pub fn credentials(mut self, credentials: Credentials) -> ConnectOptions {
        self.credentials = credentials;
        self
    }

    /// The default pending limits of this client's subscriptions: the most messages and bytes
    /// (subject, reply, headers and payload) a subscription holds that its consumer has not
    /// taken (defaults [`crate::DEFAULT_PENDING_MSGS`] and [`crate::DEFAULT_PENDING_BYTES`];
    /// each at least 1). Past either, new messages for it are dropped, counted
    /// ([`crate::Subscriber::dropped`]) and reported
    /// ([`crate::ConnectionEvent::SlowConsumer`]); memory stays bounded and the connection and
    /// other subscriptions keep flowing. [`crate::SubscribeOptions::pending_limits`] overrides
    /// them for one subscription.
    ///
    /// ```no_run
    /// use agentwire_client::ConnectOptions;
    /// # async fn example() -> Result<(), agentwire_client::Error> {
    /// let client = ConnectOptions::new()
    ///     .subscription_pending_limits(10_000, 16 << 20)
    ///     .connect("127.0.0.1:4800")
    ///     .await?;
    /// # drop(client); Ok(()) }
    /// ```
    pub fn subscription_pending_limits(mut self, msgs: usize, bytes: usize) -> ConnectOptions {
        self.pending_limits = PendingLimits::new(msgs, bytes);
        self
    }

    /// Client keepalive: when nothing has been read from the server for this long, the client
    /// PINGs it; after [`ConnectOptions::max_pings_out`] such PINGs with still nothing read,
    /// the connection is stale and dropped (reconnecting when on, else the client closes with
    /// [`Error::StaleConnection`](crate::Error::StaleConnection)). Any bytes read count as a sign
    /// of life. Default 5 s;
    /// [`Duration::ZERO`] turns the keepalive off.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use agentwire_client::ConnectOptions;
    /// # async fn example() -> Result<(), agentwire_client::Error> {
    /// // Notice a half-open connection within about 3 s.
    /// let client = ConnectOptions::new()
    ///     .ping_interval(Duration::from_secs(1))
    ///     .max_pings_out(2)
    ///     .connect("127.0.0.1:4800")
    ///     .await?;
    /// # drop(client); Ok(()) }
    /// ```
    pub fn ping_interval(mut self, interval: Duration) -> ConnectOptions {
        self.ping_interval = interval;
        self
    }

    /// Keepalive PINGs in a row with nothing read back before the connection counts as stale
    /// (default 2, at least 1); see [`ConnectOptions::ping_interval`].
    pub fn max_pings_out(mut self, max: u32) -> ConnectOptions {
        self.max_pings_out = max.max(1);
        self
    }

    /// Connects over TLS, trusting the CA certificates of this PEM file (and no other) for the
    /// server's certificate. Reconnects use the same TLS settings.
    ///
    /// ```no_run
    /// use agentwire_client::ConnectOptions;
    /// # async fn example() -> Result<(), agentwire_client::Error> {
    /// let client = ConnectOptions::new()
    ///     .tls_ca_file("ca.pem")
    ///     .tls_client_cert("planner.pem", "planner.key") // only for mutual TLS
    ///     .connect("broker.internal:4800")
    ///     .await?;
    /// # drop(client); Ok(()) }
    /// ```
    pub fn tls_ca_file(mut self, path: impl Into<std::path::PathBuf>) -> ConnectOptions {
        self.tls.ca_file = Some(path.into());
        self
    }

    /// Presents this client certificate chain and key (PEM files) to the server, for mutual
    /// TLS. Needs [`ConnectOptions::tls_ca_file`] (or [`ConnectOptions::tls_config`]).
    pub fn tls_client_cert(
        mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> ConnectOptions {
        self.tls.client_cert = Some((cert.into(), key.into()));
        self
    }

    /// The name the server's certificate must carry (default: the host part of the address
    /// connected to; an IP address is checked as an IP address SAN).
    pub fn tls_server_name(mut self, name: impl Into<String>) -> ConnectOptions {
        self.tls.server_name = Some(name.into());
        self
    }

    /// Connects over TLS with this rustls configuration (trust roots, client certificate,
    /// everything); the file settings are then ignored.
    pub fn tls_config(mut self, config: Arc<rustls::ClientConfig>) -> ConnectOptions {
        self.tls.config = Some(config);
        self
    }

    /// Whether connections use TLS ([`ConnectOptions::tls_ca_file`] or
    /// [`ConnectOptions::tls_config`] given).
    pub fn tls_enabled(&self) -> bool {
        self.tls.enabled()
    }

    /// The broker addresses (`host:port`) [`ConnectOptions::connect_servers`] tries, in order;
    /// reconnects go round robin over them, starting after the address that dropped.
    /// Replaces any list set before. ([`ConnectOptions::connect`] uses its one address.)
    ///
    /// ```no_run
    /// use agentwire_client::ConnectOptions;
    /// # async fn example() -> Result<(), agentwire_client::Error> {
    /// let client = ConnectOptions::new()
    ///     .servers(["127.0.0.1:4800", "127.0.0.1:4801"])
    ///     .connect_servers()
    ///     .await?;
    /// # drop(client); Ok(()) }
    /// ```
    pub fn servers<I, S>(mut self, list: I) -> ConnectOptions
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.servers = list.into_iter().map(Into::into).collect();
        self
    }

    /// Bytes that publishes may buffer while the client reconnects (default 8 MiB). Past it a
    /// publish fails with [`Error::ReconnectBufferFull`](crate::Error::ReconnectBufferFull) instead
    /// of waiting.
    pub fn reconnect_buffer_size(mut self, bytes: usize) -> ConnectOptions {
        self.reconnect_buffer_size = bytes;
        self
    }

    /// Whether the client reconnects by itself when the connection drops (EOF or a socket
    /// error; not a close by this client, a fatal ERR from the server or a malformed frame).
    /// Default on.
    ///
    /// While reconnecting, subscriptions stay open and are re-sent with the same ids, publishes
    /// are buffered ([`ConnectOptions::reconnect_buffer_size`]) and sent after the
    /// re-subscribe, and requests and flushes in flight at the drop fail with
    /// [`Error::Disconnected`](crate::Error::Disconnected). Off: a dropped connection closes the
    /// client.
    pub fn reconnect(mut self, on: bool) -> ConnectOptions {
        self.reconnect = on;
        self
    }

    /// How many reconnect attempts in a row may fail before the client gives up and closes
    /// (`None`, the default: never give up). Then the client closes: waiters and later calls get
    /// [`Error::ReconnectFailed`](crate::Error::ReconnectFailed) and subscriber streams end.
    pub fn max_reconnects(mut self, max: Option<u32>) -> ConnectOptions {
        self.max_reconnects = max;
        self
    }

    /// The reconnect backoff: the first attempt waits about `min`, each next one twice as long,
    /// capped at `max`, every wait with ±20% jitter (defaults 50 ms and 2 s; `max` is raised to
    /// `min` when smaller). See [`ConnectOptions::reconnect_delay_for`].
    pub fn reconnect_delay(mut self, min: Duration, max: Duration) -> ConnectOptions {
        self.reconnect_delay_min = min;
        self.reconnect_delay_max = max.max(min);
        self
    }

    /// The wait before reconnect attempt number `attempt` (0 for the first) under
    /// [`ConnectOptions::reconnect_delay`]: `min * 2^attempt` capped at `max`, then scaled by a
    /// random factor in [0.8, 1.2].
    pub fn reconnect_delay_for(&self, attempt: u32) -> Duration {
        let jitter = rand::thread_rng().gen_range(0.8..=1.2);
        backoff(
            attempt,
            self.reconnect_delay_min,
            self.reconnect_delay_max,
            jitter,
        )
    }

    /// Whether the client is to reconnect by itself ([`ConnectOptions::reconnect`]).
    pub fn reconnect_enabled(&self) -> bool {
        self.reconnect
    }

    /// The reconnect attempt limit ([`ConnectOptions::max_reconnects`]).
    pub fn reconnect_limit(&self) -> Option<u32> {
        self.max_reconnects
    }

    /// The server list ([`ConnectOptions::servers`]).
    pub fn server_list(&self) -> &[String] {
        &self.servers
    }

    /// The config environment of registrations on this client that name none
    /// ([`crate::Registration::environment`] empty). Unset (or empty): the broker's default
    /// environment (`admin.environment`, itself `default` unless configured).
    pub fn environment(mut self, name: impl Into<String>) -> ConnectOptions {
        self.environment = name.into();
        self
    }

    /// The client name the server shows in logs and monitoring.
    pub fn name(mut self, name: impl Into<String>) -> ConnectOptions {
        self.name = name.into();
        self
    }

    /// Bound on opening the TCP connection and completing the handshake (TLS included).
    pub fn connect_timeout(mut self, timeout: Duration) -> ConnectOptions {
        self.connect_timeout = timeout;
        self
    }

    /// Bound on [`Client::flush`](crate::Client::flush), [`Client::drain`](crate::Client::drain)
    /// and [`Client::close`](crate::Client::close), and on how long a publish waits for buffer
    /// space without any write completing ([`Error::WriteStalled`](crate::Error::WriteStalled)).
    /// Requests take their own timeout.
    pub fn request_timeout(mut self, timeout: Duration) -> ConnectOptions {
        self.request_timeout = timeout;
        self
    }

    /// Pending outbound bytes past which publishes wait for the socket (at least 1). A single
    /// message larger than this is still accepted when the buffer is below the limit.
    pub fn write_buffer_limit(mut self, bytes: usize) -> ConnectOptions {
        self.write_buffer_limit = bytes.max(1);
        self
    }

    /// Stamps every message published on this connection with its send time (header
    /// [`crate::SENT_AT_HEADER`], µs since the Unix epoch), so the broker can measure publish →
    /// deliver latency (its `publish_to_deliver` histogram). Off by default: it costs a header
    /// per message.
    pub fn stamp_send_time(mut self, on: bool) -> ConnectOptions {
        self.stamp_send_time = on;
        self
    }

    /// Size of each read from the socket (at least 4 KiB). Messages are slices of these chunks.
    pub fn read_buffer_size(mut self, bytes: usize) -> ConnectOptions {
        self.read_buffer_size = bytes.max(4096);
        self
    }

    /// The read chunk size ([`ConnectOptions::read_buffer_size`]).
    pub(crate) fn read_size(&self) -> usize {
        self.read_buffer_size
    }
}

/// `min * 2^attempt` capped at `max` (`max` at least `min`), scaled by `jitter` (meant to be in
/// [0.8, 1.2]).
fn backoff(attempt: u32, min: Duration, max: Duration, jitter: f64) -> Duration {
    let max = max.max(min);
    let base = min
        .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .map_or(max, |d| d.min(max));
    // Past what a `Duration` holds (only with a huge cap): the unjittered wait.
    Duration::try_from_secs_f64(jitter.clamp(0.0, 2.0) * base.as_secs_f64()).unwrap_or(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(2);

    #[test]
    fn backoff_doubles_from_min_and_caps_at_max() {
        let waits: Vec<_> = (0..8).map(|a| backoff(a, MIN, MAX, 1.0)).collect();
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(backoff(u32::MAX, MIN, MAX, 1.0), MAX, "no overflow");
        assert_eq!(
            backoff(40, Duration::from_secs(u64::MAX / 2), Duration::MAX, 1.0),
            Duration::MAX,
            "an overflowing product is the cap"
        );
    }

    #[test]
    fn backoff_jitter_scales_the_wait() {
        assert_eq!(backoff(0, MIN, MAX, 0.8), Duration::from_millis(40));
        assert_eq!(backoff(0, MIN, MAX, 1.2), Duration::from_millis(60));
        assert_eq!(backoff(9, MIN, MAX, 1.2), Duration::from_millis(2400));
        assert_eq!(
            backoff(0, MIN, Duration::ZERO, 1.0),
            MIN,
            "max raised to min"
        );
    }

    #[test]
    fn reconnect_delay_for_stays_within_twenty_percent() {
        let opts = ConnectOptions::new();
        for attempt in 0..10 {
            let base = backoff(attempt, MIN, MAX, 1.0);
            for _ in 0..50 {
                let d = opts.reconnect_delay_for(attempt);
                assert!(
                    d >= base.mul_f64(0.8) && d <= base.mul_f64(1.2),
                    "{attempt}: {d:?}"
                );
            }
        }
    }

    #[test]
    fn reconnect_defaults_and_setters() {
        let opts = ConnectOptions::new();
        assert!(opts.reconnect_enabled());
        assert_eq!(opts.reconnect_limit(), None);
        assert!(opts.server_list().is_empty());
        let opts = opts
            .servers(["127.0.0.1:1", "127.0.0.1:2"])
            .reconnect(false)
            .max_reconnects(Some(3))
            .reconnect_delay(Duration::from_millis(10), Duration::from_millis(40));
        assert!(!opts.reconnect_enabled());
        assert_eq!(opts.reconnect_limit(), Some(3));
        assert_eq!(opts.server_list(), ["127.0.0.1:1", "127.0.0.1:2"]);
        for _ in 0..20 {
            assert!(opts.reconnect_delay_for(5) <= Duration::from_millis(48));
        }
    }
}
