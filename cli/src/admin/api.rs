//! The plumbing every admin command shares: where the admin API is and how to reach it
//! ([`AdminTarget`]: address, `--json`, bearer token, `--tls-ca`), the one HTTP [`call`], the
//! [`Failure`] worded for the user and the exit code it ends in ([`finish`]), and the URL
//! pieces ([`enc`], [`env_query`]).

use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use crate::EXIT_FAILURE;

/// Default admin API address.
pub(crate) const DEFAULT_ADMIN: &str = "127.0.0.1:8480";

/// Where the admin API is, and the output form.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct AdminTarget {
    /// Admin API address of the broker.
    #[arg(long, env = "AGENTWIRE_ADMIN", default_value = DEFAULT_ADMIN)]
    admin: String,
    /// Print the API's JSON instead of text.
    #[arg(long)]
    pub(super) json: bool,
    /// Bearer token for an admin API with `[[admin.tokens]]`.
    #[arg(long, env = "AGENTWIRE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Talk HTTPS to the admin API (a broker with TLS), trusting the CA certificates of this
    /// PEM file. (An `--admin https://...` address also means HTTPS, with the built-in web
    /// roots unless this is given.)
    #[arg(long, env = "AGENTWIRE_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
}

impl AdminTarget {
    /// The base URL (`http://ADDR` or `https://ADDR`) of the admin API.
    pub(super) fn base_url(&self) -> String {
        if self.admin.starts_with("https://") || self.admin.starts_with("http://") {
            self.admin.trim_end_matches('/').to_owned()
        } else if self.tls_ca.is_some() {
            format!("https://{}", self.admin)
        } else {
            format!("http://{}", self.admin)
        }
    }

    /// An HTTP agent: with `--tls-ca`, one that trusts only that CA.
    pub(super) fn agent(&self) -> Result<ureq::Agent, Failure> {
        let mut b = ureq::AgentBuilder::new().timeout(Duration::from_secs(10));
        if let Some(ca) = &self.tls_ca {
            b = b.tls_config(tls_client_config(ca).map_err(Failure)?);
        }
        Ok(b.build())
    }
}

/// A rustls client configuration that trusts the CA certificates of a PEM file.
pub(crate) fn tls_client_config(
    ca: &std::path::Path,
) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    let bad = |e: &dyn std::fmt::Display| format!("cannot load the CA from {}: {e}", ca.display());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).map_err(|e| bad(&e))? {
        roots.add(c.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    if roots.is_empty() {
        return Err(bad(&"no CERTIFICATE block"));
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

/// A failed call, already worded for the user.
pub(super) struct Failure(pub(super) String);

pub(super) fn call(
    method: &str,
    t: &AdminTarget,
    path: &str,
    body: Option<Value>,
) -> Result<Value, Failure> {
    let url = format!("{}{}", t.base_url(), path);
    let agent = t.agent()?;
    let mut req = agent.request(method, &url);
    if let Some(tok) = &t.admin_token {
        req = req.set("Authorization", &format!("Bearer {tok}"));
    }
    let r = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    match r {
        Ok(resp) => resp
            .into_json::<Value>()
            .map_err(|e| Failure(format!("the admin API at {} answered with bad JSON: {e}", t.admin))),
        Err(ureq::Error::Status(code, resp)) => {
            let v: Value = resp.into_json().unwrap_or(Value::Null);
            let msg = v["error"]["message"].as_str().unwrap_or("no message").to_owned();
            let c = v["error"]["code"].as_str().unwrap_or("error").to_owned();
            Err(Failure(format!("{c} (HTTP {code}): {msg}")))
        }
        Err(e) => Err(Failure(format!(
            "cannot reach the admin API at {}: {e} — is `agentwire serve` running with its admin API on that address?",
            t.admin
        ))),
    }
}

pub(super) fn finish(r: Result<(), Failure>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(m)) => {
            eprintln!("agentwire: {m}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// `?environment=E` when an environment is named, else nothing (the broker's default).
pub(super) fn env_query(environment: Option<&str>, sep: char) -> String {
    environment.map_or_else(String::new, |e| format!("{sep}environment={}", enc(e)))
}

/// Percent-encodes a path segment (names are `[A-Za-z0-9_-]`; anything else is escaped so a
/// bad name reaches the API and gets its error).
pub(super) fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
