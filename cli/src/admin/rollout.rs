//! Staged config rollouts from the command line: `agentwire config set NAME k=v --canary N|P%
//! --bake S [--no-auto-rollback] [--wait]` and `agentwire config rollout status|promote|abort
//! NAME`, all through the admin API (`PUT /api/v1/config/components/{name}` with a `rollout`
//! object, `GET .../{name}/rollout`, `POST .../{name}/rollout/{promote,abort}`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::api::{call, enc, finish, AdminTarget, Failure};
use super::output::{join_strs, print_json};
use crate::EXIT_FAILURE;

/// The staging flags of `agentwire config set`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct StageFlags {
    /// Stage the change: push it to this many instances first (or a share of them, e.g. 25%),
    /// then to everyone after the bake, or roll it back.
    #[arg(long)]
    pub(super) canary: Option<String>,
    /// Bake time with --canary: how long the canaries must stay healthy (e.g. 10, 30s, 5m).
    #[arg(long, requires = "canary", default_value = "30", value_parser = crate::duration::parse_duration_s)]
    bake: u64,
    /// With --canary: on a failed check, stop as `failed` and wait for promote or abort.
    #[arg(long, requires = "canary")]
    no_auto_rollback: bool,
    /// With --canary: the highest canary error rate, 0..1 [default: 0.01].
    #[arg(long, requires = "canary")]
    max_error_rate: Option<f64>,
    /// With --canary: the highest canary latency in ms [default: 500].
    #[arg(long, requires = "canary")]
    max_latency_ms: Option<u64>,
    /// With --canary: requests a canary must handle before its error rate counts [default: 10].
    #[arg(long, requires = "canary")]
    min_requests: Option<u64>,
    /// With --canary: wait for the rollout to end; exit 1 unless it is promoted.
    #[arg(long, requires = "canary")]
    wait: bool,
}

/// `agentwire config rollout ...`.
#[derive(Debug, clap::Args)]
pub(crate) struct RolloutArgs {
    #[command(subcommand)]
    cmd: RolloutCmd,
}

#[derive(Debug, clap::Subcommand)]
enum RolloutCmd {
    /// The rollout in progress (canaries and their figures) and the past ones.
    Status(RolloutTarget),
    /// Promote the rollout in progress now: its version goes to every instance.
    Promote(RolloutTarget),
    /// Abort the rollout in progress: the previous values come back as a new version.
    Abort(RolloutTarget),
}

#[derive(Debug, clap::Args)]
struct RolloutTarget {
    /// Component name.
    component: String,
    /// Environment (default: the broker's default environment).
    #[arg(long = "env", env = "AGENTWIRE_ENVIRONMENT")]
    environment: Option<String>,
    /// Who promotes or aborts (recorded).
    #[arg(long, env = "USER", default_value = "cli")]
    by: String,
    #[command(flatten)]
    t: AdminTarget,
}

fn canary_json(c: &str) -> Value {
    match c.trim().parse::<u64>() {
        Ok(n) => Value::from(n),
        Err(_) => Value::from(c.trim()),
    }
}

fn canaries_text(r: &Value) -> String {
    join_strs(&r["canaries"], ",")
}

/// One line about a rollout record.
fn describe(r: &Value) -> String {
    let mut s = format!(
        "rollout {} of {} [{}]: {} v{} (from v{}) on canaries {}",
        r["id"],
        r["component"].as_str().unwrap_or("?"),
        r["environment"].as_str().unwrap_or("?"),
        r["state"].as_str().unwrap_or("?"),
        r["to_version"],
        r["from_version"],
        canaries_text(r),
    );
    if let Some(v) = r["rollback_version"].as_u64() {
        s.push_str(&format!("; v{v} restored v{}'s values", r["from_version"]));
    }
    if let Some(reason) = r["reason"].as_str().filter(|x| !x.is_empty()) {
        s.push_str(&format!("; {reason}"));
    }
    s
}

/// `agentwire config set ... --canary ...`: starts the rollout, prints its id and state, and
/// with `--wait` follows it to the end.
pub(super) fn set_staged(
    t: &AdminTarget,
    component: &str,
    mut body: Value,
    stage: &StageFlags,
) -> ExitCode {
    let Some(canary) = &stage.canary else {
        return ExitCode::from(EXIT_FAILURE);
    };
    let mut rollout = json!({
        "canary": canary_json(canary),
        "bake_seconds": stage.bake,
        "auto_rollback": !stage.no_auto_rollback,
    });
    if let Some(r) = stage.max_error_rate {
        rollout["max_error_rate"] = Value::from(r);
    }
    if let Some(l) = stage.max_latency_ms {
        rollout["max_latency_ms"] = Value::from(l);
    }
    if let Some(m) = stage.min_requests {
        rollout["min_requests"] = Value::from(m);
    }
    body["rollout"] = rollout;
    let path = format!("/api/v1/config/components/{}", enc(component));
    let started = match call("PUT", t, &path, Some(body)) {
        Ok(v) => v,
        Err(f) => return finish(Err(f)),
    };
    let record = started["rollout"].clone();
    if t.json && !stage.wait {
        print_json(&started);
        return ExitCode::SUCCESS;
    }
    if !t.json {
        println!(
            "{} (bake {} s, auto-rollback {})",
            describe(&record),
            stage.bake,
            if stage.no_auto_rollback { "off" } else { "on" }
        );
    }
    if !stage.wait {
        return ExitCode::SUCCESS;
    }
    let id = record["id"].as_u64().unwrap_or(0);
    // The environment the broker chose (the default one when none was named).
    let environment = record["environment"].as_str().unwrap_or("");
    let status_path = format!(
        "/api/v1/config/components/{}/rollout?environment={}",
        enc(component),
        enc(environment)
    );
    // Bounded: the bake plus two minutes for the checks, then give up (the rollout goes on).
    let deadline = Instant::now() + Duration::from_secs(stage.bake.saturating_add(120));
    let began = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let v = match call("GET", t, &status_path, None) {
            Ok(v) => v,
            Err(f) => return finish(Err(f)),
        };
        let list = v["rollouts"].as_array().cloned().unwrap_or_default();
        let Some(r) = list.iter().find(|r| r["id"].as_u64() == Some(id)) else {
            return finish(Err(Failure(format!("rollout {id} is no longer listed"))));
        };
        let state = r["state"].as_str().unwrap_or("?");
        if state != "baking" {
            if t.json {
                print_json(r);
            } else {
                println!(
                    "{} (after {:.1} s)",
                    describe(r),
                    began.elapsed().as_secs_f64()
                );
            }
            return if state == "promoted" {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILURE)
            };
        }
        if Instant::now() >= deadline {
            return finish(Err(Failure(format!(
                "rollout {id} still baking after {} s; it goes on (agentwire config rollout status {component})",
                began.elapsed().as_secs()
            ))));
        }
    }
}

/// `agentwire config rollout status|promote|abort NAME`.
pub(super) fn run(a: RolloutArgs) -> ExitCode {
    match a.cmd {
        RolloutCmd::Status(r) => finish((|| {
            let v = call(
                "GET",
                &r.t,
                &format!(
                    "/api/v1/config/components/{}/rollout{}",
                    enc(&r.component),
                    r.environment
                        .as_deref()
                        .map(|e| format!("?environment={}", enc(e)))
                        .unwrap_or_default()
                ),
                None,
            )?;
            if r.t.json {
                print_json(&v);
                return Ok(());
            }
            match v["active"].as_object() {
                Some(_) => {
                    let a = &v["active"];
                    println!(
                        "{} (baking {:.1} s of {})",
                        describe(a),
                        a["bake_elapsed_ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
                        a["policy"]["bake_seconds"]
                    );
                    for c in a["canary_figures"].as_array().cloned().unwrap_or_default() {
                        println!(
                            "  {:<24} {:<11} requests {:>6}  errors {:>6}  latency {} µs",
                            c["instance_id"].as_str().unwrap_or("?"),
                            c["presence"].as_str().unwrap_or("?"),
                            c["requests"],
                            c["errors"],
                            c["latency_us"]
                        );
                    }
                }
                None => println!(
                    "no rollout of {} [{}] in progress",
                    r.component,
                    v["environment"].as_str().unwrap_or("?")
                ),
            }
            for p in v["rollouts"].as_array().cloned().unwrap_or_default() {
                if p["state"].as_str() == Some("baking") {
                    continue;
                }
                println!("  {}", describe(&p));
            }
            Ok(())
        })()),
        RolloutCmd::Promote(r) => action(&r, "promote"),
        RolloutCmd::Abort(r) => action(&r, "abort"),
    }
}

fn action(r: &RolloutTarget, what: &str) -> ExitCode {
    finish((|| {
        let v = call(
            "POST",
            &r.t,
            &format!(
                "/api/v1/config/components/{}/rollout/{what}",
                enc(&r.component)
            ),
            Some(json!({"environment": r.environment, "updated_by": r.by})),
        )?;
        if r.t.json {
            print_json(&v);
        } else {
            println!("{}", describe(&v));
        }
        Ok(())
    })())
}
