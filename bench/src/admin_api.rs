//! The broker's HTTP admin API, as the `registry` and `apistatus` scenarios call it: blocking
//! `ureq` calls (run them on the blocking pool or a thread of their own), one keep-alive
//! [`ureq::Agent`] per caller.
//!
//! - `PUT /api/v1/config/components/{name}` with `{"values": {key: value}, "create": true}`:
//!   a new config version, pushed live to every registered instance; the answer is the
//!   snapshot, whose `version` is what the instances' config watches will yield.
//! - `GET /api/v1/system/status`: the overall status (a JSON object).

use std::io::Read;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

/// Bound on one admin call (connect, send, answer).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest answer read, bytes (a status with many instances is a few hundred KiB).
const MAX_BODY: u64 = 16 << 20;

/// A keep-alive HTTP client for one broker's admin API.
#[derive(Debug, Clone)]
pub struct AdminApi {
    agent: ureq::Agent,
    base: String,
}

impl AdminApi {
    /// A client for the admin API at `addr` (`host:port`), with a fresh agent (its own
    /// keep-alive connection pool); over HTTPS trusting `tls_ca` when given.
    ///
    /// # Errors
    /// A CA file that cannot be read.
    pub fn new(addr: &str, tls_ca: Option<&std::path::Path>) -> Result<AdminApi> {
        let mut b = ureq::AgentBuilder::new()
            .timeout(CALL_TIMEOUT)
            .max_idle_connections_per_host(4);
        let scheme = match tls_ca {
            Some(ca) => {
                use rustls::pki_types::pem::PemObject;
                let mut roots = rustls::RootCertStore::empty();
                for c in rustls::pki_types::CertificateDer::pem_file_iter(ca)
                    .with_context(|| format!("cannot read {}", ca.display()))?
                {
                    roots.add(c.with_context(|| format!("bad PEM in {}", ca.display()))?)?;
                }
                let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                b = b.tls_config(std::sync::Arc::new(config));
                "https"
            }
            None => "http",
        };
        Ok(AdminApi {
            agent: b.build(),
            base: format!("{scheme}://{addr}"),
        })
    }

    /// Sets `key` = `value` in `component`'s config (default environment, creating the
    /// component if unknown). Returns when the request was about to be sent, and the new
    /// version.
    ///
    /// # Errors
    /// Transport errors, a status other than 2xx (with the API's error message), or an answer
    /// without a numeric `version`.
    pub fn put_config(&self, component: &str, key: &str, value: &str) -> Result<(Instant, u64)> {
        let url = format!("{}/api/v1/config/components/{component}", self.base);
        let body =
            json!({ "values": { key: value }, "create": true, "updated_by": "agentwire-bench" });
        let sent = Instant::now();
        let resp = self
            .agent
            .put(&url)
            .send_json(body)
            .map_err(|e| call_error("PUT", &url, e))?;
        let v = read_json(resp).with_context(|| format!("PUT {url}"))?;
        let version = v
            .get("version")
            .and_then(Value::as_u64)
            .ok_or_else(|| anyhow!("PUT {url}: answer has no numeric \"version\""))?;
        Ok((sent, version))
    }

    /// `GET /api/v1/system/status`, answer read to the end and checked to be a JSON object.
    ///
    /// # Errors
    /// Transport errors, a status other than 2xx, or an answer that is not a JSON object.
    pub fn status(&self) -> Result<()> {
        let url = format!("{}/api/v1/system/status", self.base);
        let resp = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| call_error("GET", &url, e))?;
        let v = read_json(resp).with_context(|| format!("GET {url}"))?;
        if !v.is_object() {
            bail!("GET {url}: the answer is not a JSON object");
        }
        Ok(())
    }
}

/// Reads a whole answer (so the connection can be reused) as JSON.
fn read_json(resp: ureq::Response) -> Result<Value> {
    let mut body = Vec::new();
    resp.into_reader()
        .take(MAX_BODY)
        .read_to_end(&mut body)
        .context("reading the answer")?;
    serde_json::from_slice(&body).context("the answer is not JSON")
}

/// A sentence for a failed call, with the API's own error message when it sent one.
fn call_error(method: &str, url: &str, e: ureq::Error) -> anyhow::Error {
    match e {
        ureq::Error::Status(code, resp) => {
            let msg = read_json(resp)
                .ok()
                .and_then(|v| {
                    v.pointer("/error/message")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or_default();
            anyhow!("{method} {url}: HTTP {code} {msg}")
        }
        ureq::Error::Transport(t) => anyhow!("{method} {url}: {t}"),
    }
}
