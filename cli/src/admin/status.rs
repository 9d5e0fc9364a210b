//! The commands that show the broker's state: `status`, `components [NAME|--graph]`, `top`,
//! `alerts`, `deployment`, and `dashboard` (checks that the web dashboard answers).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use super::api::{call, enc, finish, AdminTarget, Failure};
use super::output::{
    alert_line, join_strs, print_dependency_problems, print_graph, print_instances, print_json,
};

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
