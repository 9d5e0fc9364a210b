//! How the admin commands print the API's answers for a person: the JSON as is
//! ([`print_json`]), and the text forms of instances, dependency problems, the dependency
//! graph, a config version and an alert.

use serde_json::Value;

pub(super) fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
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
pub(super) fn print_dependency_problems(c: &Value) {
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

pub(super) fn print_instances(list: &[Value]) {
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

/// The dependency graph as text: nodes with status and versions, then edges.
pub(super) fn print_graph(v: &Value) {
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

pub(super) fn print_config(v: &Value) {
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

pub(super) fn alert_line(a: &Value) -> String {
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
