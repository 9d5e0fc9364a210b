//! The client tools of `agentwire`: `pub`, `sub`, `req`, `reply`. Each connects with the
//! client library, does its one job, and exits with a message a person can act on.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use agentwire_client::{Client, ConnectOptions, Error as ClientError};
use bytes::Bytes;

use super::{Command, DEFAULT_SERVER, EXIT_FAILURE, EXIT_USAGE};

/// `agentwire pub SUBJECT DATA`.
#[derive(Debug, clap::Args)]
pub(crate) struct PubArgs {
    /// Subject to publish on (literal: no wildcards).
    subject: String,
    /// Payload (UTF-8 text).
    data: String,
    /// Publish this many copies.
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// Broker address.
    #[arg(long, env = "AGENTWIRE_SERVER", default_value = DEFAULT_SERVER)]
    server: String,
    #[command(flatten)]
    auth: AuthFlags,
    #[command(flatten)]
    tls: TlsFlags,
}

/// `agentwire sub SUBJECT`.
#[derive(Debug, clap::Args)]
pub(crate) struct SubArgs {
    /// Subject pattern (`*` matches one token, `>` the rest).
    subject: String,
    /// Join this queue group (each message goes to one member).
    #[arg(long)]
    queue: Option<String>,
    /// Exit after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Print each message as a JSON object instead of `SUBJECT DATA`.
    #[arg(long)]
    json: bool,
    /// Broker address.
    #[arg(long, env = "AGENTWIRE_SERVER", default_value = DEFAULT_SERVER)]
    server: String,
    #[command(flatten)]
    auth: AuthFlags,
    #[command(flatten)]
    tls: TlsFlags,
}

/// `agentwire req SUBJECT DATA`.
#[derive(Debug, clap::Args)]
pub(crate) struct ReqArgs {
    /// Subject of the service.
    subject: String,
    /// Request payload (UTF-8 text).
    data: String,
    /// How long to wait for the reply, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    timeout: u64,
    /// Broker address.
    #[arg(long, env = "AGENTWIRE_SERVER", default_value = DEFAULT_SERVER)]
    server: String,
    #[command(flatten)]
    auth: AuthFlags,
    #[command(flatten)]
    tls: TlsFlags,
}

/// `agentwire reply SUBJECT`.
#[derive(Debug, clap::Args)]
pub(crate) struct ReplyArgs {
    /// Subject pattern to serve.
    subject: String,
    /// Join this queue group (load is spread over the members).
    #[arg(long)]
    queue: Option<String>,
    /// Exit after answering this many requests.
    #[arg(long)]
    count: Option<u64>,
    /// Broker address.
    #[arg(long, env = "AGENTWIRE_SERVER", default_value = DEFAULT_SERVER)]
    server: String,
    #[command(flatten)]
    auth: AuthFlags,
    #[command(flatten)]
    tls: TlsFlags,
}

/// How the tool authenticates (needed when the broker has `[[users]]`).
#[derive(Debug, clap::Args)]
pub(crate) struct AuthFlags {
    /// Token of a `[[users]]` entry.
    #[arg(
        long,
        env = "AGENTWIRE_TOKEN",
        hide_env_values = true,
        conflicts_with = "creds"
    )]
    token: Option<String>,
    /// Credentials file of an ed25519 user (written by `agentwire keygen`).
    #[arg(long, env = "AGENTWIRE_CREDS")]
    creds: Option<std::path::PathBuf>,
}

impl AuthFlags {
    /// The client credentials these flags name.
    pub(crate) fn credentials(&self) -> Result<agentwire_client::Credentials, String> {
        if let Some(t) = &self.token {
            return Ok(agentwire_client::Credentials::Token(t.clone()));
        }
        if let Some(p) = &self.creds {
            return agentwire_client::Credentials::from_file(p).map_err(|e| e.to_string());
        }
        Ok(agentwire_client::Credentials::None)
    }
}

/// TLS flags of the client tools.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct TlsFlags {
    /// Connect over TLS, trusting the CA certificates of this PEM file for the broker's
    /// certificate.
    #[arg(long, env = "AGENTWIRE_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS; needs --tls-key and --tls-ca.
    #[arg(long, env = "AGENTWIRE_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "AGENTWIRE_TLS_KEY")]
    tls_key: Option<PathBuf>,
}

impl TlsFlags {
    /// Adds the TLS settings to `opts`.
    fn apply(&self, mut opts: ConnectOptions) -> Result<ConnectOptions, Failure> {
        let usage = |m: &str| Failure {
            code: EXIT_USAGE,
            message: m.to_owned(),
        };
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err(usage("--tls-cert needs --tls-key")),
            (None, Some(_)) => return Err(usage("--tls-key needs --tls-cert")),
            (Some(c), Some(k)) => {
                if self.tls_ca.is_none() {
                    return Err(usage(
                        "--tls-cert needs --tls-ca (the CA of the broker's certificate)",
                    ));
                }
                opts = opts.tls_client_cert(c, k);
            }
            (None, None) => {}
        }
        if let Some(ca) = &self.tls_ca {
            opts = opts.tls_ca_file(ca);
        }
        Ok(opts)
    }
}

/// A failure with the exit code it maps to.
pub(super) struct Failure {
    pub(super) code: u8,
    pub(super) message: String,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match e {
            ClientError::InvalidSubject { .. } | ClientError::InvalidQueue { .. } => EXIT_USAGE,
            _ => EXIT_FAILURE,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

pub(crate) fn run(cmd: Command) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agentwire: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let (name, result) = match cmd {
        Command::Pub(a) => ("pub", rt.block_on(publish(a))),
        Command::Sub(a) => ("sub", rt.block_on(subscribe(a))),
        Command::Req(a) => ("req", rt.block_on(request(a))),
        Command::Reply(a) => ("reply", rt.block_on(reply(a))),
        _ => unreachable!("serve and the admin commands are dispatched before the client tools"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("agentwire {name}: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

pub(super) async fn connect(
    server: &str,
    auth: &AuthFlags,
    tls: &TlsFlags,
    name: &str,
) -> Result<Client, Failure> {
    let credentials = auth.credentials().map_err(|message| Failure {
        code: EXIT_USAGE,
        message,
    })?;
    let mut opts = tls.apply(ConnectOptions::new().name(name).credentials(credentials))?;
    if let Some(e) = cli_environment() {
        opts = opts.environment(e);
    }
    Ok(opts.connect(server).await?)
}

/// `AGENTWIRE_ENVIRONMENT`: the config environment of registrations made by the CLI's client
/// tools (unset or empty: the broker's default).
pub(crate) fn cli_environment() -> Option<String> {
    std::env::var("AGENTWIRE_ENVIRONMENT")
        .ok()
        .filter(|e| !e.is_empty())
}

async fn publish(a: PubArgs) -> Result<(), Failure> {
    let client = connect(&a.server, &a.auth, &a.tls, "agentwire-pub").await?;
    let payload = Bytes::from(a.data.into_bytes());
    for _ in 0..a.count {
        client.publish(&a.subject, payload.clone()).await?;
    }
    client.flush().await?;
    if let Some(e) = client.last_error() {
        return Err(Failure {
            code: EXIT_FAILURE,
            message: format!("the broker reported: {e}"),
        });
    }
    client.close().await?;
    Ok(())
}

fn print_message(
    out: &mut impl Write,
    m: &agentwire_client::Message,
    json: bool,
) -> std::io::Result<()> {
    let data = String::from_utf8_lossy(&m.payload);
    if json {
        let mut obj = serde_json::json!({
            "subject": m.subject.as_str(),
            "data": data,
        });
        if let Some(r) = &m.reply {
            obj["reply"] = serde_json::Value::from(r.as_str());
        }
        if let Some(h) = &m.headers {
            let map: serde_json::Map<String, serde_json::Value> = h
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        serde_json::Value::from(String::from_utf8_lossy(v).into_owned()),
                    )
                })
                .collect();
            obj["headers"] = serde_json::Value::Object(map);
        }
        writeln!(out, "{obj}")
    } else {
        writeln!(out, "{} {}", m.subject.as_str(), data)
    }
}

async fn subscribe(a: SubArgs) -> Result<(), Failure> {
    let client = connect(&a.server, &a.auth, &a.tls, "agentwire-sub").await?;
    let mut sub = match &a.queue {
        Some(q) => client.queue_subscribe(&a.subject, q).await?,
        None => client.subscribe(&a.subject).await?,
    };
    client.flush().await?;
    if let Some(e) = client.last_error() {
        return Err(Failure {
            code: EXIT_USAGE,
            message: format!("the broker refused the subscription: {e}"),
        });
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut n = 0u64;
    while a.count.is_none_or(|c| n < c) {
        let Some(m) = sub.next().await else {
            let _ = out.flush();
            return Err(Failure {
                code: EXIT_FAILURE,
                message: "connection to the broker closed".into(),
            });
        };
        n += 1;
        let _ = print_message(&mut out, &m, a.json);
        // Flush per message when interactive-ish; batch when a count is given.
        if a.count.is_none() {
            let _ = out.flush();
        }
    }
    let _ = out.flush();
    Ok(())
}

async fn request(a: ReqArgs) -> Result<(), Failure> {
    let client = connect(&a.server, &a.auth, &a.tls, "agentwire-req").await?;
    let m = client
        .request(
            &a.subject,
            Bytes::from(a.data.into_bytes()),
            Duration::from_millis(a.timeout),
        )
        .await?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let _ = out.write_all(&m.payload);
    let _ = out.write_all(b"\n");
    Ok(())
}

async fn reply(a: ReplyArgs) -> Result<(), Failure> {
    let client = connect(&a.server, &a.auth, &a.tls, "agentwire-reply").await?;
    let mut sub = match &a.queue {
        Some(q) => client.queue_subscribe(&a.subject, q).await?,
        None => client.subscribe(&a.subject).await?,
    };
    client.flush().await?;
    let mut n = 0u64;
    while a.count.is_none_or(|c| n < c) {
        let Some(m) = sub.next().await else {
            return Err(Failure {
                code: EXIT_FAILURE,
                message: "connection to the broker closed".into(),
            });
        };
        if m.reply.is_some() {
            client.respond(&m, m.payload.clone()).await?;
            n += 1;
        }
    }
    client.flush().await?;
    Ok(())
}
