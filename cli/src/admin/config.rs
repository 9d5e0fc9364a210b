//! `agentwire config get|set|history|rollback|promote|rollout`: a component's config through
//! the admin API (`/api/v1/config/components/...`); `set --canary` and `rollout` are staged
//! rollouts ([`super::rollout`]).

use std::process::ExitCode;

use serde_json::{json, Value};

use super::api::{call, enc, env_query, finish, AdminTarget};
use super::output::{print_config, print_json};
use crate::EXIT_USAGE;

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
