//! The admin commands of `agentwire`: `status`, `components [NAME|--graph]`, `config
//! get|set|history|rollback|promote|rollout`, `top`, `optimize`, `deployment`, `alerts`. Each is a call to the broker's HTTP admin API (`--admin
//! ADDR`, default 127.0.0.1:8480, or `AGENTWIRE_ADMIN`), printed for a person or, with
//! `--json`, as the API's JSON.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};

use super::{EXIT_FAILURE, EXIT_USAGE};

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
    fn base_url(&self) -> String {
        if self.admin.starts_with("https://") || self.admin.starts_with("http://") {
            self.admin.trim_end_matches('/').to_owned()
        } else if self.tls_ca.is_some() {
            format!("https://{}", self.admin)
        } else {
            format!("http://{}", self.admin)
        }
    }

    /// An HTTP agent: with `--tls-ca`, one that trusts only that CA.
    fn agent(&self) -> Result<ureq::Agent, Failure> {
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

/// `agentwire components [NAME]`.
#[derive(Debug, clap::Args)]
pub(crate) struct ComponentsArgs {
    /// Show one component (its instances and round-trip latency).
    name: Option<String>,
    /// Print the dependency graph (`depends_on` edges and whether each is met).
    #[arg(long, conflicts_with = "name")]
    graph: bool,
    #[command(flatten)]
    t: AdminTarget,
}

/// `agentwire config ...`.
#[derive(Debug, clap::Args)]
pub(crate) struct ConfigArgs {
    #[command(subcommand)]
    cmd: ConfigCmd,
}

#[derive(Debug, clap::Subcommand)]
enum ConfigCmd {
    /// Print a component's current config.
    Get {
        /// Component name.
        component: String,
        /// Environment (default: the broker's, `admin.environment`).
        #[arg(
            long = "env",
            visible_alias = "environment",
            env = "AGENTWIRE_ENVIRONMENT"
        )]
        environment: Option<String>,
        #[command(flatten)]
        t: AdminTarget,
    },
    /// Set keys (KEY=VALUE) and delete keys (--unset KEY) as one new version, pushed live.
    Set {
        /// Component name.
        component: String,
        /// KEY=VALUE pairs.
        pairs: Vec<String>,
        /// Keys to delete.
        #[arg(long)]
        unset: Vec<String>,
        /// Environment (default: the broker's, `admin.environment`).
        #[arg(
            long = "env",
            visible_alias = "environment",
            env = "AGENTWIRE_ENVIRONMENT"
        )]
        environment: Option<String>,
        /// Refuse (exit 1) unless the current version is this one.
        #[arg(long)]
        expected_version: Option<u64>,
        /// Declare the component if no instance ever registered.
        #[arg(long)]
        create: bool,
        /// Who makes the change (recorded in the history).
        #[arg(long, env = "USER", default_value = "cli")]
        by: String,
        #[command(flatten)]
        stage: super::rollout::StageFlags,
        #[command(flatten)]
        t: AdminTarget,
    },
    /// Staged rollouts: status, promote, abort.
    Rollout(super::rollout::RolloutArgs),
    /// List versions, newest first.
    History {
        /// Component name.
        component: String,
        /// Environment (default: the broker's, `admin.environment`).
        #[arg(
            long = "env",
            visible_alias = "environment",
            env = "AGENTWIRE_ENVIRONMENT"
        )]
        environment: Option<String>,
        /// Most versions to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        t: AdminTarget,
    },
    /// Copy one environment's current values into another as a new version there, pushed
    /// live to that environment's instances (history: "promoted from FROM vN").
    Promote {
        /// Component name.
        component: String,
        /// Source environment.
        #[arg(long)]
        from: String,
        /// Target environment.
        #[arg(long)]
        to: String,
        /// Refuse (exit 1) unless the target's current version is this one.
        #[arg(long)]
        expected_version: Option<u64>,
        /// Who makes the change.
        #[arg(long, env = "USER", default_value = "cli")]
        by: String,
        #[command(flatten)]
        t: AdminTarget,
    },
    /// Make a new version equal to an earlier one, pushed live.
    Rollback {
        /// Component name.
        component: String,
        /// The version to return to.
        version: u64,
        /// Environment (default: the broker's, `admin.environment`).
        #[arg(
            long = "env",
            visible_alias = "environment",
            env = "AGENTWIRE_ENVIRONMENT"
        )]
        environment: Option<String>,
        /// Refuse (exit 1) unless the current version is this one.
        #[arg(long)]
        expected_version: Option<u64>,
        /// Who makes the change.
        #[arg(long, env = "USER", default_value = "cli")]
        by: String,
        #[command(flatten)]
        t: AdminTarget,
    },
}

/// `agentwire top`.
#[derive(Debug, clap::Args)]
pub(crate) struct TopArgs {
    /// Refresh interval, ms.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Stop after this many refreshes (default: until interrupted).
    #[arg(long)]
    iterations: Option<u64>,
    #[command(flatten)]
    t: AdminTarget,
}

/// `agentwire alerts`.
#[derive(Debug, clap::Args)]
pub(crate) struct AlertsArgs {
    /// Also list the stored history (firings and resolutions, newest first).
    #[arg(long)]
    history: bool,
    /// Only alerts in this state.
    #[arg(long, value_parser = ["firing", "resolved"])]
    state: Option<String>,
    /// Most history rows.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    #[command(flatten)]
    t: AdminTarget,
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

pub(super) fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
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

/// `agentwire status`.
pub(crate) fn status(t: AdminTarget) -> ExitCode {
    finish((|| {
        let v = call("GET", &t, "/api/v1/system/status", None)?;
        if t.json {
            print_json(&v);
            return Ok(());
        }
        println!(
            "status {}  server {}  version {}  uptime {}s  connections {}",
            v["status"].as_str().unwrap_or("?"),
            v["server_id"].as_str().unwrap_or("?"),
            v["version"].as_str().unwrap_or("?"),
            v["uptime_s"],
            v["connections"]
        );
        let comps = v["components"].as_array().cloned().unwrap_or_default();
        if comps.is_empty() {
            println!("no registered components");
            return Ok(());
        }
        println!(
            "{:<24} {:<10} {:>9} {:>7} versions",
            "COMPONENT", "STATUS", "INSTANCES", "HEALTH"
        );
        for c in comps {
            println!(
                "{:<24} {:<10} {:>4}/{:<4} {:>7} {}",
                c["name"].as_str().unwrap_or("?"),
                c["status"].as_str().unwrap_or("?"),
                c["healthy_instances"],
                c["instances"],
                c["health_score"],
                join_strs(&c["versions"], ",")
            );
            print_dependency_problems(&c);
        }
        Ok(())
    })())
}

/// The strings in the JSON array `v`, joined with `sep` (empty when `v` is not an array).
pub(super) fn join_strs(v: &Value, sep: &str) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(sep)
        })
        .unwrap_or_default()
}

/// One line per unmet dependency of a component (`status` and `components` output).
fn print_dependency_problems(c: &Value) {
    for p in c["dependency_problems"].as_array().into_iter().flatten() {
        let found = join_strs(&p["found_versions"], ",");
        println!(
            "  ! depends on {} {} [{}]: {}{}",
            p["dependency"].as_str().unwrap_or("?"),
            p["wanted"].as_str().unwrap_or("*"),
            p["environment"].as_str().unwrap_or("?"),
            p["problem"].as_str().unwrap_or("?"),
            if found.is_empty() {
                String::new()
            } else {
                format!(" (found {found})")
            }
        );
    }
}

fn print_instances(list: &[Value]) {
    if list.is_empty() {
        println!("no live instances");
        return;
    }
    println!(
        "{:<20} {:<20} {:<10} {:<10} {:>6} {:>9} {:>9}",
        "COMPONENT", "INSTANCE", "VERSION", "STATUS", "HEALTH", "IN-FLIGHT", "LAT-US"
    );
    for i in list {
        println!(
            "{:<20} {:<20} {:<10} {:<10} {:>6} {:>9} {:>9}",
            i["component"].as_str().unwrap_or("?"),
            i["instance_id"].as_str().unwrap_or("?"),
            i["version"].as_str().unwrap_or(""),
            i["status"].as_str().unwrap_or("?"),
            i["health_score"],
            i["load"]["in_flight"],
            i["load"]["latency_us"]
        );
    }
}

/// `agentwire components [NAME]`.
pub(crate) fn components(a: ComponentsArgs) -> ExitCode {
    finish((|| {
        let path = match &a.name {
            Some(n) => format!("/api/v1/components/{}", enc(n)),
            None if a.graph => "/api/v1/components/graph".to_owned(),
            None => "/api/v1/components".to_owned(),
        };
        let v = call("GET", &a.t, &path, None)?;
        if a.t.json {
            print_json(&v);
            return Ok(());
        }
        if a.graph {
            print_graph(&v);
            return Ok(());
        }
        print_instances(&v["instances"].as_array().cloned().unwrap_or_default());
        if a.name.is_some() {
            let deps = join_strs(&v["depends_on"], " ");
            println!(
                "status {}{}{}",
                v["status"].as_str().unwrap_or("?"),
                if deps.is_empty() {
                    String::new()
                } else {
                    format!("  depends on: {deps}")
                },
                if v["incompatible"] == true {
                    "  (incompatible versions)"
                } else {
                    ""
                }
            );
            print_dependency_problems(&v);
        } else {
            for c in v["components"].as_array().into_iter().flatten() {
                if c["status"] != "healthy" || c["incompatible"] == true {
                    println!(
                        "{}: {}{}",
                        c["name"].as_str().unwrap_or("?"),
                        c["status"].as_str().unwrap_or("?"),
                        if c["incompatible"] == true {
                            " (incompatible versions)"
                        } else {
                            ""
                        }
                    );
                    print_dependency_problems(c);
                }
            }
        }
        if let Some(r) = v.get("request_round_trip_us") {
            if r["count"].as_u64().unwrap_or(0) > 0 {
                println!(
                    "request round trip: p50 {} µs, p99 {} µs over {} requests",
                    r["p50"], r["p99"], r["count"]
                );
            }
        }
        Ok(())
    })())
}

/// The dependency graph as text: nodes with status and versions, then edges.
fn print_graph(v: &Value) {
    for n in v["nodes"].as_array().into_iter().flatten() {
        println!(
            "{:<24} {:<10} {}",
            n["component"].as_str().unwrap_or("?"),
            n["status"].as_str().unwrap_or("?"),
            join_strs(&n["versions"], ",")
        );
    }
    for e in v["edges"].as_array().into_iter().flatten() {
        println!(
            "{} -> {} {} {}",
            e["from"].as_str().unwrap_or("?"),
            e["to"].as_str().unwrap_or("?"),
            e["requirement"].as_str().unwrap_or("*"),
            if e["ok"] == true { "ok" } else { "UNMET" }
        );
    }
}

/// `?environment=E` when an environment is named, else nothing (the broker's default).
fn env_query(environment: Option<&str>, sep: char) -> String {
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

fn print_config(v: &Value) {
    println!(
        "{} [{}] version {} (updated {} by {})",
        v["component"].as_str().unwrap_or("?"),
        v["environment"].as_str().unwrap_or("?"),
        v["version"],
        v["updated_at_ms"],
        v["updated_by"].as_str().unwrap_or("")
    );
    if let Some(m) = v["values"].as_object() {
        for (k, val) in m {
            println!("  {k} = {}", val.as_str().unwrap_or(""));
        }
    }
}

/// A config change (set or rollback): sends it and prints the new version.
fn write_config(t: &AdminTarget, method: &str, path: String, body: Value) -> ExitCode {
    finish((|| {
        let v = call(method, t, &path, Some(body))?;
        if t.json {
            print_json(&v);
        } else {
            print_config(&v);
        }
        Ok(())
    })())
}

/// `agentwire config ...`.
pub(crate) fn config(a: ConfigArgs) -> ExitCode {
    match a.cmd {
        ConfigCmd::Get {
            component,
            environment,
            t,
        } => finish((|| {
            let v = call(
                "GET",
                &t,
                &format!(
                    "/api/v1/config/components/{}{}",
                    enc(&component),
                    env_query(environment.as_deref(), '?')
                ),
                None,
            )?;
            if t.json {
                print_json(&v);
            } else if let Some(all) = v["environments"].as_object().filter(|m| !m.is_empty()) {
                // No --env: every environment's current values.
                for e in all.values() {
                    print_config(e);
                }
            } else {
                print_config(&v);
            }
            Ok(())
        })()),
        ConfigCmd::Set {
            component,
            pairs,
            unset,
            environment,
            expected_version,
            create,
            by,
            stage,
            t,
        } => {
            let mut values = serde_json::Map::new();
            for p in &pairs {
                let Some((k, v)) = p.split_once('=') else {
                    eprintln!("agentwire config set: {p:?} is not KEY=VALUE");
                    return ExitCode::from(EXIT_USAGE);
                };
                values.insert(k.to_owned(), Value::from(v));
            }
            for k in unset {
                values.insert(k, Value::Null);
            }
            if values.is_empty() {
                eprintln!("agentwire config set: give at least one KEY=VALUE or --unset KEY");
                return ExitCode::from(EXIT_USAGE);
            }
            let mut body = json!({"values": values, "create": create, "updated_by": by});
            if let Some(e) = environment {
                body["environment"] = Value::from(e);
            }
            if let Some(e) = expected_version {
                body["expected_version"] = Value::from(e);
            }
            if stage.canary.is_some() {
                return super::rollout::set_staged(&t, &component, body, &stage);
            }
            write_config(
                &t,
                "PUT",
                format!("/api/v1/config/components/{}", enc(&component)),
                body,
            )
        }
        ConfigCmd::Rollout(r) => super::rollout::run(r),
        ConfigCmd::History {
            component,
            environment,
            limit,
            t,
        } => finish((|| {
            let v = call(
                "GET",
                &t,
                &format!(
                    "/api/v1/config/components/{}/history?limit={limit}{}",
                    enc(&component),
                    env_query(environment.as_deref(), '&')
                ),
                None,
            )?;
            if t.json {
                print_json(&v);
                return Ok(());
            }
            for ver in v["versions"].as_array().cloned().unwrap_or_default() {
                let what = match (ver["rollback_of"].as_u64(), ver["note"].as_str()) {
                    (Some(r), _) => format!("rollback to {r}"),
                    (None, Some(note)) => note.to_owned(),
                    (None, None) => ver["action"].as_str().unwrap_or("set").to_owned(),
                };
                let vals = ver["values"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default();
                println!(
                    "v{:<5} {:<16} by {:<12} at {}  {}",
                    ver["version"],
                    what,
                    ver["updated_by"].as_str().unwrap_or(""),
                    ver["updated_at_ms"],
                    vals
                );
            }
            Ok(())
        })()),
        ConfigCmd::Rollback {
            component,
            version,
            environment,
            expected_version,
            by,
            t,
        } => {
            let mut body = json!({"version": version, "updated_by": by});
            if let Some(e) = environment {
                body["environment"] = Value::from(e);
            }
            if let Some(e) = expected_version {
                body["expected_version"] = Value::from(e);
            }
            write_config(
                &t,
                "POST",
                format!("/api/v1/config/components/{}/rollback", enc(&component)),
                body,
            )
        }
        ConfigCmd::Promote {
            component,
            from,
            to,
            expected_version,
            by,
            t,
        } => finish((|| {
            let mut body = json!({"from": from, "to": to, "updated_by": by});
            if let Some(e) = expected_version {
                body["expected_version"] = Value::from(e);
            }
            let v = call(
                "POST",
                &t,
                &format!("/api/v1/config/components/{}/promote", enc(&component)),
                Some(body),
            )?;
            if t.json {
                print_json(&v);
            } else {
                print_config(&v);
                println!("  ({})", v["note"].as_str().unwrap_or("promoted"));
            }
            Ok(())
        })()),
    }
}

/// `agentwire optimize`.
pub(crate) fn optimize(t: AdminTarget) -> ExitCode {
    finish((|| {
        let v = call("POST", &t, "/api/v1/system/optimize", Some(json!({})))?;
        print_json(&v);
        Ok(())
    })())
}

fn alert_line(a: &Value) -> String {
    let labels = a["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("?")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let age = |k: &str| {
        a[k].as_u64()
            .map(|ms| {
                format!(
                    "{}s ago",
                    agentwire_admin::now_ms().saturating_sub(ms) / 1000
                )
            })
            .unwrap_or_else(|| "-".into())
    };
    format!(
        "{:<18} {:<40} {:<9} {:>12} {:>12} {}{}",
        a["rule"].as_str().unwrap_or("?"),
        labels,
        a["state"].as_str().unwrap_or("?"),
        age("fired_ms"),
        age("resolved_ms"),
        a["summary"].as_str().unwrap_or(""),
        if a["notified"] == false {
            " (cooldown: not notified)"
        } else {
            ""
        }
    )
}

/// `agentwire alerts`.
pub(crate) fn alerts(a: AlertsArgs) -> ExitCode {
    finish((|| {
        let mut path = format!("/api/v1/alerts?limit={}", a.limit);
        if let Some(s) = &a.state {
            path.push_str(&format!("&state={s}"));
        }
        let v = call("GET", &a.t, &path, None)?;
        if a.t.json {
            print_json(&v);
            return Ok(());
        }
        if v["enabled"] == false {
            println!("the alert engine is off ([alerts] enabled = false)");
        }
        let head = format!(
            "{:<18} {:<40} {:<9} {:>12} {:>12} SUMMARY",
            "RULE", "LABELS", "STATE", "FIRED", "RESOLVED"
        );
        let firing = v["firing"].as_array().cloned().unwrap_or_default();
        if a.state.as_deref() != Some("resolved") {
            if firing.is_empty() {
                println!("no alert firing");
            } else {
                println!("{head}");
                for f in &firing {
                    println!("{}", alert_line(f));
                }
            }
        }
        if a.history || a.state.as_deref() == Some("resolved") {
            let h = v["history"].as_array().cloned().unwrap_or_default();
            println!("\nhistory ({} shown, newest first):", h.len());
            if !h.is_empty() {
                println!("{head}");
            }
            for x in &h {
                println!("{}", alert_line(x));
            }
        }
        Ok(())
    })())
}

/// `agentwire drain`: lame duck through the admin API.
pub(crate) fn drain(t: AdminTarget) -> ExitCode {
    finish((|| {
        let v = call("POST", &t, "/api/v1/system/lameduck", Some(json!({})))?;
        if t.json {
            print_json(&v);
        } else {
            println!(
                "lame duck: no new connections; {} client(s) move away within {} ms, then the broker exits",
                v["connections"], v["window_ms"]
            );
        }
        Ok(())
    })())
}

/// `agentwire reload`: the broker re-reads its config file and applies users and limits.
pub(crate) fn reload(t: AdminTarget) -> ExitCode {
    finish((|| {
        let v = call("POST", &t, "/api/v1/system/reload", Some(json!({})))?;
        if t.json {
            print_json(&v);
        } else {
            println!("reloaded: {} user(s)", v["users"]);
            if let Some(l) = v["needs_restart"].as_array().filter(|l| !l.is_empty()) {
                println!("changed but applied only on restart: {l:?}");
            }
        }
        Ok(())
    })())
}

/// `agentwire deployment`.
pub(crate) fn deployment(t: AdminTarget) -> ExitCode {
    finish((|| {
        let v = call("GET", &t, "/api/v1/deployment/status", None)?;
        print_json(&v);
        Ok(())
    })())
}

/// `agentwire dashboard`: checks that the web dashboard answers and prints its address.
pub(crate) fn dashboard(t: AdminTarget) -> ExitCode {
    finish((|| {
        let url = format!("{}/", t.base_url());
        match t.agent()?.get(&format!("{url}login")).call() {
            Ok(_) => {
                println!("{url}");
                Ok(())
            }
            Err(e) => Err(Failure(format!(
                "the dashboard at {url} does not answer: {e}"
            ))),
        }
    })())
}

/// `agentwire top`: rates and latency, refreshed.
pub(crate) fn top(a: TopArgs) -> ExitCode {
    finish((|| {
        let mut prev: Option<(Value, std::time::Instant)> = None;
        let mut n = 0u64;
        loop {
            let v = call("GET", &a.t, "/api/v1/system/metrics", None)?;
            let now = std::time::Instant::now();
            if a.t.json {
                println!("{}", serde_json::to_string(&v).unwrap_or_default());
            } else {
                let (rin, rout) = match &prev {
                    Some((p, t)) => {
                        let s = now.duration_since(*t).as_secs_f64().max(1e-3);
                        let d = |k: &str| {
                            (v["totals"][k].as_u64().unwrap_or(0))
                                .saturating_sub(p["totals"][k].as_u64().unwrap_or(0))
                                as f64
                                / s
                        };
                        (d("msgs_in"), d("msgs_out"))
                    }
                    None => (0.0, 0.0),
                };
                let mut out = String::new();
                out.push_str("\x1b[2J\x1b[H");
                out.push_str(&format!(
                    "agentwire top — in {rin:.0} msg/s  out {rout:.0} msg/s  connections {}  subscriptions {}  instances {} ({} unhealthy)\n",
                    v["totals"]["connections"], v["subscriptions"], v["instances"], v["unhealthy_instances"]
                ));
                let r = &v["latency_us"]["residence"];
                out.push_str(&format!(
                    "broker residence µs: p50 {} p99 {} p99.9 {} max {}\n\n",
                    r["p50"], r["p99"], r["p999"], r["max"]
                ));
                out.push_str(&format!(
                    "{:<24} {:>10} {:>10} {:>10} {:>10}\n",
                    "COMPONENT", "REQUESTS", "P50 µs", "P99 µs", "MAX µs"
                ));
                if let Some(m) = v["latency_us"]["request_round_trip"].as_object() {
                    for (c, p) in m {
                        out.push_str(&format!(
                            "{:<24} {:>10} {:>10} {:>10} {:>10}\n",
                            c, p["count"], p["p50"], p["p99"], p["max"]
                        ));
                    }
                }
                print!("{out}");
                let _ = std::io::stdout().flush();
            }
            prev = Some((v, now));
            n += 1;
            if a.iterations.is_some_and(|max| n >= max) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(a.interval_ms.max(100)));
        }
    })())
}
