//! Broker configuration: listen address, shard count and the limits, with documented defaults.
//!
//! Values come from, in rising priority: the defaults below, a TOML config file
//! (`--config FILE`), then command-line flags. Unknown keys in the file are an error, so a typo
//! never silently falls back to a default.
//!
//! ```toml
//! listen = "127.0.0.1:4800"
//! shards = 2                      # 0 = one per core
//! listen_backlog = 4096           # accept queue (capped by net.core.somaxconn)
//! [limits]
//! max_payload = 1048576           # bytes of headers + payload in one message
//! max_connections = 65536
//! max_subscriptions = 65536       # per connection
//! max_pending = 67108864          # outbound bytes buffered per connection
//! write_deadline_ms = 10000       # a write that makes no progress this long: slow consumer
//! handshake_timeout_ms = 2000     # no HELLO this long after connecting: ERR handshake_timeout
//! ping_interval_ms = 5000         # nothing read this long: the broker sends PING
//! max_pings_out = 2               # that many PINGs with nothing read back: ERR stale_connection
//! max_pending_total = 1073741824  # outbound bytes of all connections; past it the fullest close
//! [admin]
//! listen = "127.0.0.1:8480"       # HTTP admin API, /metrics, dashboard (library default: off)
//! data_dir = "./agentwire-data"   # config center + metrics samples (library default: in memory)
//! heartbeat_ms = 1000             # heartbeat interval asked of registered components
//! unhealthy_after = 3             # missed intervals before an instance is unhealthy
//! remove_after = 10               # missed intervals before it is removed
//! routing = "load"                # queue groups: "load" (power of two choices) or "round-robin"
//! metrics_sample_ms = 10000       # how often a metrics sample is stored
//! metrics_retention_s = 2592000   # stored samples older than this are deleted (30 days)
//! environment = "default"         # config environment of registrations/admin calls naming none
//! [tls]                           # optional: every client connection and the admin API use TLS
//! cert = "server.pem"             # certificate chain (PEM), leaf first
//! key = "server.key"              # its private key (PEM: PKCS#8, PKCS#1 or SEC1)
//! client_ca = "ca.pem"            # optional: require client certificates signed by these CAs
//! [[users]]                       # none: the broker runs open (and says so in its log)
//! name = "planner"
//! token = "s3cret"                # or token_hash = "$argon2id$...", or public_key = "<base64>"
//! publish = ["tasks.>"]           # allow lists (absent: everything); deny lists win
//! subscribe = ["results.>"]
//! deny_publish = ["tasks.admin.>"]
//! components = ["planner"]        # component names this user may register (absent: any)
//! allow_responses = true          # may answer requests it received (default true)
//! ```
//!
//! `SIGHUP` re-reads the file and applies `[[users]]` and `[limits]` live (see
//! [`crate::server::ServerHandle::reload`]).

pub mod alerts;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4800";

/// Per-connection and server-wide limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest headers + payload of one message, in bytes (default 1 MiB). A larger PUB is
    /// answered with `payload_too_large` and dropped; a frame longer than this + 4096 is fatal.
    pub max_payload: u32,
    /// Most client connections at once (default 65,536); past it a new connection gets
    /// `too_many_connections` and is closed.
    pub max_connections: usize,
    /// Most subscriptions one connection may hold (default 65,536).
    pub max_subscriptions: usize,
    /// Most outbound bytes buffered for one connection (default 64 MiB); past it the connection
    /// is a slow consumer and is closed with `slow_consumer`.
    pub max_pending: usize,
    /// A write to a client that makes no progress for this long marks it a slow consumer
    /// (default 10 s).
    pub write_deadline_ms: u64,
    /// A client that has not sent HELLO this long after connecting gets `handshake_timeout`
    /// and is closed (default 2 s).
    pub handshake_timeout_ms: u64,
    /// A connection the broker has read nothing from for this long is sent a PING (default 5 s).
    pub ping_interval_ms: u64,
    /// Unanswered keep-alive PINGs after which the connection is closed with
    /// `stale_connection` (default 2).
    pub max_pings_out: u32,
    /// Outbound bytes buffered for all connections together (default 1 GiB; each shard holds
    /// an equal share). Past it, the connections with the most bytes waiting are closed as slow
    /// consumers first, so the broker's memory stays bounded whatever clients do.
    pub max_pending_total: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload: agentwire_protocol::DEFAULT_MAX_PAYLOAD,
            max_connections: 65_536,
            max_subscriptions: 65_536,
            max_pending: 64 << 20,
            write_deadline_ms: 10_000,
            handshake_timeout_ms: 2_000,
            ping_interval_ms: 5_000,
            max_pings_out: 2,
            max_pending_total: 1 << 30,
        }
    }
}

impl Limits {
    /// The largest frame accepted: max payload + room for fixed fields and subjects.
    pub fn max_frame(&self) -> usize {
        self.max_payload as usize + agentwire_protocol::FRAME_OVERHEAD_ALLOWANCE
    }

    /// Outbound bytes above which a publisher is paced (waits for a consumer that is still
    /// reading): half of `max_pending`, at most 1 MiB. Small enough to keep the broker's memory
    /// low, large enough that a consumer always has a full socket's worth queued.
    pub fn soft_pending(&self) -> usize {
        (self.max_pending / 2).min(1 << 20)
    }

    /// `write_deadline_ms` as a duration.
    pub fn write_deadline(&self) -> Duration {
        Duration::from_millis(self.write_deadline_ms)
    }
}

/// How queue groups choose the member that gets a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RoutingPolicy {
    /// Power of two choices on the least load (outstanding requests, reply latency, pending
    /// bytes, heartbeat load); unhealthy members get nothing while a healthy one exists.
    #[default]
    Load,
    /// Each member in turn.
    RoundRobin,
}

impl std::str::FromStr for RoutingPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "load" => Ok(RoutingPolicy::Load),
            "round-robin" => Ok(RoutingPolicy::RoundRobin),
            _ => Err(format!("unknown routing policy {s:?} (load, round-robin)")),
        }
    }
}

/// What an admin token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminRole {
    /// Reads (GET).
    Viewer,
    /// Reads and writes: config changes, rollback, optimize, lame duck.
    Operator,
}

/// A bearer token of the admin API.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminToken {
    /// Who holds it (named in refusals, and recorded as `updated_by` of the config changes
    /// made with it).
    pub name: String,
    /// The secret, sent as `Authorization: Bearer <token>`.
    pub token: String,
    /// What it may do.
    pub role: AdminRole,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("AdminToken")
            .field("name", &self.name)
            .field("token", &"<redacted>")
            .field("role", &self.role)
            .finish()
    }
}

/// The admin plane: registry, config center, metrics and the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the HTTP admin API (`/api/v1/...`, `/metrics`); `None`: no HTTP listener.
    pub listen: Option<SocketAddr>,
    /// Directory of the embedded database; `None`: an in-memory database (nothing survives a
    /// restart; the `agentwire serve` default is `./agentwire-data`).
    pub data_dir: Option<std::path::PathBuf>,
    /// Heartbeat interval asked of registered components, ms (default 1000).
    pub heartbeat_ms: u32,
    /// Missed heartbeat intervals before an instance is marked unhealthy (default 3).
    pub unhealthy_after: u32,
    /// Missed heartbeat intervals before an instance is removed (default 10).
    pub remove_after: u32,
    /// Queue-group member choice (default `load`).
    pub routing: RoutingPolicy,
    /// How often a metrics sample is written to `performance_metrics`, ms (default 10,000).
    pub metrics_sample_ms: u64,
    /// Age after which stored samples are deleted, seconds (default 30 days).
    pub metrics_retention_s: u64,
    /// Bearer tokens of the HTTP API; none: the API is open (then it must listen on loopback,
    /// unless `insecure`).
    pub tokens: Vec<AdminToken>,
    /// Allow an open API (no tokens) on a non-loopback address.
    pub insecure: bool,
    /// The config environment of registrations that name none, and of admin API and CLI calls
    /// that name none (default `default`).
    pub environment: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: None,
            data_dir: None,
            heartbeat_ms: 1000,
            unhealthy_after: 3,
            remove_after: 10,
            routing: RoutingPolicy::Load,
            metrics_sample_ms: 10_000,
            metrics_retention_s: 30 * 24 * 3600,
            tokens: Vec::new(),
            insecure: false,
            environment: "default".to_owned(),
        }
    }
}

/// TLS on the client port and the admin API (the `[tls]` table).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain, PEM, leaf first.
    pub cert: std::path::PathBuf,
    /// The private key of the leaf certificate, PEM.
    pub key: std::path::PathBuf,
    /// CA certificates (PEM) that client certificates must chain to; set: mutual TLS, every
    /// client must present a valid certificate, whose subject name becomes the connection's
    /// identity.
    #[serde(default)]
    pub client_ca: Option<std::path::PathBuf>,
}

/// A client user (`[[users]]`): how it proves who it is, and what it may do.
///
/// Exactly one credential: `token` (plaintext in the file; the broker warns),
/// `token_hash` (an argon2 PHC string, `agentwire hash-token` prints one), or `public_key`
/// (ed25519, base64; the client signs the INFO nonce; `agentwire keygen` makes a pair). A user
/// with none of them can only be named by a verified TLS client certificate (mutual TLS).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The user's name (unique; also the TLS certificate subject that names it).
    pub name: String,
    /// Plaintext token.
    #[serde(default)]
    pub token: Option<String>,
    /// Argon2 hash of the token (PHC string, `$argon2id$...`).
    #[serde(default)]
    pub token_hash: Option<String>,
    /// Ed25519 public key, base64 (standard or URL-safe, padding optional).
    #[serde(default)]
    pub public_key: Option<String>,
    /// Subjects (wildcards allowed) it may publish to; absent: all.
    #[serde(default)]
    pub publish: Option<Vec<String>>,
    /// Patterns it may subscribe to; absent: all.
    #[serde(default)]
    pub subscribe: Option<Vec<String>>,
    /// Denied for both publish and subscribe (wins over the allow lists).
    #[serde(default)]
    pub deny: Vec<String>,
    /// Denied for publish.
    #[serde(default)]
    pub deny_publish: Vec<String>,
    /// Denied for subscribe.
    #[serde(default)]
    pub deny_subscribe: Vec<String>,
    /// Component names it may register as; absent: any.
    #[serde(default)]
    pub components: Option<Vec<String>>,
    /// It may publish to the reply subject of a request delivered to it, whatever its publish
    /// permissions (default true).
    #[serde(default = "yes")]
    pub allow_responses: bool,
}

fn yes() -> bool {
    true
}

impl UserConfig {
    /// A user with a plaintext token and no restrictions (tests, examples).
    pub fn with_token(name: &str, token: &str) -> UserConfig {
        UserConfig {
            name: name.to_owned(),
            token: Some(token.to_owned()),
            token_hash: None,
            public_key: None,
            publish: None,
            subscribe: None,
            deny: Vec::new(),
            deny_publish: Vec::new(),
            deny_subscribe: Vec::new(),
            components: None,
            allow_responses: true,
        }
    }
}

impl std::fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret (the hash is as good as one for offline guessing).
        let red = |o: &Option<String>| o.as_ref().map(|_| "<redacted>");
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("token", &red(&self.token))
            .field("token_hash", &red(&self.token_hash))
            .field("public_key", &self.public_key)
            .field("publish", &self.publish)
            .field("subscribe", &self.subscribe)
            .field("deny", &self.deny)
            .field("deny_publish", &self.deny_publish)
            .field("deny_subscribe", &self.deny_subscribe)
            .field("components", &self.components)
            .field("allow_responses", &self.allow_responses)
            .finish()
    }
}

/// The whole server configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on for clients (default 127.0.0.1:4800).
    pub listen: SocketAddr,
    /// Shard threads; 0 means one per available core.
    pub shards: usize,
    /// Accept queue of the client listener (default 4096; the kernel caps it at
    /// `net.core.somaxconn`): room for a reconnect herd after a restart.
    pub listen_backlog: u32,
    /// The limits.
    pub limits: Limits,
    /// Bytes read from a socket per read call, at least (default 64 KiB).
    pub read_buffer: usize,
    /// Capacity of each shard-to-shard queue, in batches (one batch = the messages one read of
    /// one connection sends to that shard; default 32).
    pub cross_shard_queue: usize,
    /// Entries in each shard's subject match cache (default 16,384).
    pub match_cache: usize,
    /// How long shutdown waits for buffered data to reach clients (default 5 s).
    pub shutdown_grace_ms: u64,
    /// Lame duck: clients are closed at random moments spread over this window (default 10 s).
    pub lameduck_window_ms: u64,
    /// The admin plane.
    pub admin: AdminConfig,
    /// TLS on the client port and the admin API; `None`: plain TCP and HTTP.
    pub tls: Option<TlsConfig>,
    /// Client users; none: no authentication (the broker runs open).
    pub users: Vec<UserConfig>,
    /// The alert engine (`[alerts]`).
    pub alerts: alerts::AlertsConfig,
}

// `alerts` holds f64 thresholds; validation rejects NaN, so equality is reflexive.
impl Eq for alerts::AlertsConfig {}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN
                .parse()
                .expect("DEFAULT_LISTEN is a valid socket address"),
            shards: 0,
            listen_backlog: 4096,
            limits: Limits::default(),
            read_buffer: 64 << 10,
            cross_shard_queue: 32,
            match_cache: 16_384,
            shutdown_grace_ms: 5_000,
            lameduck_window_ms: 10_000,
            admin: AdminConfig::default(),
            tls: None,
            users: Vec::new(),
            alerts: Default::default(),
        }
    }
}

/// What a reload applied ([`crate::server::ServerHandle::reload`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReloadReport {
    /// Users now configured.
    pub users: usize,
    /// Changed settings that apply only after a restart.
    pub needs_restart: Vec<String>,
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The path.
        path: String,
        /// The cause (names the key and line).
        source: toml::de::Error,
    },
    /// A value out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads a TOML file over the defaults.
    ///
    /// # Errors
    /// The file cannot be read, is not valid TOML, holds an unknown key, or a value out of range.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let cfg: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The number of shard threads to start.
    pub fn shard_count(&self) -> usize {
        if self.shards == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.shards
        }
    }

    /// Checks ranges. The `[[users]]` rules (keys, token hashes, subject patterns) are checked
    /// when they are compiled ([`crate::auth::Auth::compile`]): at start, on reload, and by
    /// [`crate::auth::check_config`], which does both.
    ///
    /// # Errors
    /// The first value out of range, named.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.shards > 1024 {
            return bad("shards must be at most 1024");
        }
        if self.limits.max_payload == 0 || self.limits.max_payload > 64 << 20 {
            return bad("limits.max_payload must be between 1 and 67108864 bytes");
        }
        if self.limits.max_connections == 0 {
            return bad("limits.max_connections must be at least 1");
        }
        if self.limits.max_pending < 1024 {
            return bad("limits.max_pending must be at least 1024 bytes");
        }
        if self.limits.write_deadline_ms == 0 {
            return bad("limits.write_deadline_ms must be at least 1");
        }
        if self.limits.handshake_timeout_ms < 10 {
            return bad("limits.handshake_timeout_ms must be at least 10");
        }
        if self.limits.ping_interval_ms < 10 {
            return bad("limits.ping_interval_ms must be at least 10");
        }
        if self.limits.max_pending_total < 1024 {
            return bad("limits.max_pending_total must be at least 1024 bytes");
        }
        if self.limits.max_pings_out == 0 {
            return bad("limits.max_pings_out must be at least 1");
        }
        if self.listen_backlog == 0 {
            return bad("listen_backlog must be at least 1");
        }
        if self.read_buffer < 4096 {
            return bad("read_buffer must be at least 4096 bytes");
        }
        if self.cross_shard_queue < 16 {
            return bad("cross_shard_queue must be at least 16");
        }
        if self.match_cache == 0 {
            return bad("match_cache must be at least 1");
        }
        let a = &self.admin;
        if a.heartbeat_ms < 10 || a.heartbeat_ms > 3_600_000 {
            return bad("admin.heartbeat_ms must be between 10 and 3600000");
        }
        if a.unhealthy_after == 0 || a.remove_after <= a.unhealthy_after {
            return bad("admin.unhealthy_after must be at least 1 and below admin.remove_after");
        }
        if !agentwire_protocol::control::is_name_token(&a.environment) {
            return bad(
                "admin.environment must be a name (1..=128 bytes of letters, digits, '_' or '-')",
            );
        }
        if a.metrics_sample_ms < 100 {
            return bad("admin.metrics_sample_ms must be at least 100");
        }
        if a.metrics_retention_s == 0 {
            return bad("admin.metrics_retention_s must be at least 1");
        }
        if let Some(l) = a.listen {
            if !l.ip().is_loopback() && a.tokens.is_empty() && !a.insecure {
                return Err(ConfigError::Invalid(format!(
                    "refusing to serve the admin API on {l}, a non-loopback address, with no admin \
                     token: add [[admin.tokens]] to the config file, or pass --insecure-admin"
                )));
            }
        }
        self.alerts.validate().map_err(ConfigError::Invalid)?;
        for t in &a.tokens {
            if t.token.len() < 16 {
                return Err(ConfigError::Invalid(format!(
                    "admin token {:?} is shorter than 16 characters",
                    t.name
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = Config::default();
        c.validate().expect("defaults validate");
        assert_eq!(c.listen.to_string(), "127.0.0.1:4800");
        assert_eq!(c.limits.max_payload, 1 << 20);
        assert_eq!(c.limits.max_frame(), (1 << 20) + 4096);
    }

    #[test]
    fn parses_file_and_rejects_unknown_keys() {
        let c: Config =
            toml::from_str("listen = \"127.0.0.1:0\"\nshards = 3\n[limits]\nmax_payload = 2048\n")
                .expect("valid config");
        assert_eq!(c.shards, 3);
        assert_eq!(c.limits.max_payload, 2048);
        assert_eq!(c.limits.max_pending, Limits::default().max_pending);
        let e = toml::from_str::<Config>("shardz = 3\n").expect_err("unknown key");
        assert!(e.to_string().contains("shardz"), "{e}");
        let e = toml::from_str::<Config>("[limits]\nmax_pendng = 3\n").expect_err("unknown key");
        assert!(e.to_string().contains("max_pendng"), "{e}");
    }

    #[test]
    fn admin_on_a_public_address_needs_a_token() {
        let mut c = Config::default();
        c.admin.listen = Some("0.0.0.0:8480".parse().expect("addr"));
        let e = c
            .validate()
            .expect_err("open admin API on a public address");
        assert!(e.to_string().contains("--insecure-admin"), "{e}");
        c.admin.insecure = true;
        c.validate().expect("explicitly insecure");
        c.admin.insecure = false;
        c.admin.tokens.push(AdminToken {
            name: "ops".into(),
            token: "0123456789abcdef-secret".into(),
            role: AdminRole::Operator,
        });
        c.validate().expect("with a token");
        assert!(
            !format!("{c:?}").contains("secret"),
            "tokens are never printed"
        );
        c.admin.tokens[0].token = "short".into();
        assert!(c.validate().is_err());
        let parsed: Config = toml::from_str(
            "[admin]\n[[admin.tokens]]\nname = \"v\"\ntoken = \"0123456789abcdef\"\nrole = \"viewer\"\n",
        )
        .expect("tokens parse");
        assert_eq!(parsed.admin.tokens[0].role, AdminRole::Viewer);
    }

    #[test]
    fn validate_names_the_bad_value() {
        let mut c = Config::default();
        c.limits.max_payload = 0;
        let e = c.validate().expect_err("zero payload");
        assert!(e.to_string().contains("max_payload"));
    }

    #[test]
    fn admin_environment_is_a_name() {
        let c: Config = toml::from_str("[admin]\nenvironment = \"prod\"\n").expect("parses");
        assert_eq!(c.admin.environment, "prod");
        assert_eq!(Config::default().admin.environment, "default");
        let mut c = Config::default();
        c.admin.environment = "not a name".into();
        let e = c.validate().expect_err("bad environment");
        assert!(e.to_string().contains("admin.environment"), "{e}");
    }
}
