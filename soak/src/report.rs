//! The summary: message and request counts, latency inside and outside faults (HDR), reconnect
//! times per fault kind, the windows, broker RSS, errors by code; the verdict (exit 1 when
//! anything was lost outside faults, a reconnect took longer than `--max-reconnect-ms`, a client
//! never recovered, the slow consumer was not cut, or the broker did not exit 0); and a short
//! text form for stderr.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::track::{account, ReqOutcome, Snapshot, Windows};

/// What the run itself knows besides the ledger.
#[derive(Debug, Default)]
pub struct RunInfo {
    /// The settings, as JSON.
    pub config: Value,
    /// Wall time of the traffic, s.
    pub duration_s: f64,
    /// Broker RSS samples: (s since start, KiB).
    pub rss: Vec<(f64, u64)>,
    /// Problems stopping or restarting the broker.
    pub broker_problems: Vec<String>,
    /// Scale: (peak agents, registrations, failures).
    pub scale: Option<(usize, u64, u64)>,
    /// Storm clients.
    pub storm_clients: usize,
    /// Peak of connected tracked clients.
    pub peak_connected: usize,
    /// Open clients not connected at the end.
    pub down_at_end: usize,
    /// Clients closed for good without the soak asking (a fatal ERR, reconnect given up).
    pub dead: usize,
}

fn percentiles(mut v: Vec<u64>) -> Value {
    if v.is_empty() {
        return json!({ "count": 0 });
    }
    v.sort_unstable();
    let q = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    json!({
        "count": v.len(),
        "p50": q(0.50) as f64 / 1000.0,
        "p90": q(0.90) as f64 / 1000.0,
        "p99": q(0.99) as f64 / 1000.0,
        "max": q(1.0) as f64 / 1000.0,
    })
}

fn latency(v: &[u32]) -> Value {
    let Ok(mut h) = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3) else {
        return Value::Null;
    };
    for x in v {
        h.saturating_record(u64::from(*x).max(1));
    }
    if h.is_empty() {
        return json!({ "count": 0 });
    }
    let ms = |us: u64| us as f64 / 1000.0;
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

/// Builds the JSON summary and the list of failures (empty: success).
pub fn build(snap: &Snapshot, info: &RunInfo, max_reconnect_ms: u64) -> (Value, Vec<String>) {
    let w = Windows(&snap.windows);
    let crate::track::Accounting {
        total: counts,
        by_role,
        lost_examples,
        lat_in,
        lat_out,
    } = account(snap);
    let mut failures = Vec::new();
    if counts.lost_outside_faults > 0 {
        failures.push(format!(
            "{} messages lost outside fault windows (first: {:?})",
            counts.lost_outside_faults,
            lost_examples.first()
        ));
    }

    // Reconnects by fault kind.
    let mut by_kind: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut all = Vec::new();
    let mut over = Vec::new();
    for r in &snap.reconnects {
        let kind = w
            .attribute(r.drop_us, r.group)
            .map_or("unattributed", |k| k.name());
        by_kind.entry(kind).or_default().push(r.after_us);
        all.push(r.after_us);
        if r.after_us > max_reconnect_ms * 1000 {
            over.push((kind, r.after_us));
        }
    }
    if let Some(worst) = over.iter().max_by_key(|o| o.1) {
        failures.push(format!(
            "{} reconnects took longer than {max_reconnect_ms} ms (worst {:.0} ms, after {})",
            over.len(),
            worst.1 as f64 / 1000.0,
            worst.0
        ));
    }
    let reconnect: BTreeMap<&str, Value> = by_kind
        .into_iter()
        .map(|(k, v)| (k, percentiles(v)))
        .collect();

    // Windows.
    let mut windows = Vec::new();
    for win in &snap.windows {
        if win.not_recovered > 0 {
            failures.push(format!(
                "{} of {} clients did not recover within the recovery timeout after {} at {:.1} s",
                win.not_recovered,
                win.clients,
                win.kind.name(),
                win.action_us as f64 / 1e6
            ));
        }
        if let Some(e) = win.detail.get("error").and_then(Value::as_str) {
            failures.push(format!("the {} injector failed: {e}", win.kind.name()));
        }
        if win.detail.get("exit_ok") == Some(&Value::Bool(false)) {
            failures.push(format!(
                "the broker's exit after {} was {}",
                win.kind.name(),
                win.detail.get("exit").unwrap_or(&Value::Null)
            ));
        }
        if win.detail.get("cut") == Some(&Value::Bool(false)) {
            failures.push("the slow consumer was not cut by the broker".to_owned());
        }
        let mut detail = win.detail.clone();
        if let Some(o) = detail.as_object_mut() {
            o.remove("healed_us");
        }
        windows.push(json!({
            "kind": win.kind.name(),
            "start_s": win.start_us as f64 / 1e6,
            "action_s": win.action_us as f64 / 1e6,
            "healed_s": win.healed_us as f64 / 1e6,
            "end_s": win.end_us as f64 / 1e6,
            "affects": if win.affects.is_empty() { json!("all") } else { json!(win.affects) },
            "clients": win.clients,
            "not_recovered": win.not_recovered,
            "detail": detail,
        }));
    }
    failures.extend(info.broker_problems.iter().cloned());
    if info.dead > 0 {
        failures.push(format!(
            "{} clients were closed for good by the server instead of reconnecting (see client_errors)",
            info.dead
        ));
    }
    if info.down_at_end > info.dead {
        failures.push(format!(
            "{} clients were still reconnecting at the end",
            info.down_at_end - info.dead
        ));
    }

    // Requests.
    let mut req = BTreeMap::new();
    for (sent, o) in &snap.requests {
        let side = if w.any(*sent) {
            "in_faults"
        } else {
            "outside_faults"
        };
        let name = match o {
            ReqOutcome::Ok => "ok",
            ReqOutcome::Timeout => "timeout",
            ReqOutcome::NoResponders => "no_responders",
            ReqOutcome::Other => "other_error",
        };
        *req.entry(side)
            .or_insert_with(BTreeMap::new)
            .entry(name)
            .or_insert(0u64) += 1;
        *req.entry("total")
            .or_insert_with(BTreeMap::new)
            .entry(name)
            .or_insert(0u64) += 1;
    }

    let rss_max = info.rss.iter().map(|r| r.1).max().unwrap_or(0);
    let summary = json!({
        "ok": failures.is_empty(),
        "failures": failures.clone(),
        "config": info.config,
        "duration_s": info.duration_s,
        "messages": counts,
        "lost_outside_faults": counts.lost_outside_faults,
        "lost_in_faults": counts.lost_in_faults,
        "lost_outside_examples": lost_examples,
        "messages_by_role": by_role,
        "requests": req,
        "latency": { "outside_faults": latency(&lat_out), "inside_faults": latency(&lat_in) },
        "reconnect_ms": reconnect,
        "reconnect_ms_all": percentiles(all),
        "faults": windows,
        "clients": {
            "peak_connected": info.peak_connected,
            "storm_clients": info.storm_clients,
            "agents_peak": info.scale.map(|s| s.0),
            "agent_registrations": info.scale.map(|s| s.1),
            "agent_failures": info.scale.map(|s| s.2),
            "down_at_end": info.down_at_end,
            "closed_by_server": info.dead,
        },
        "broker_rss_kib": {
            "max": rss_max,
            "first": info.rss.first().map(|r| r.1),
            "last": info.rss.last().map(|r| r.1),
            "samples": info.rss.iter().map(|(t, k)| json!([(t * 10.0).round() / 10.0, k])).collect::<Vec<_>>(),
        },
        "errors_by_code": snap.server_errors,
        "client_errors": snap.client_errors,
    });
    (summary, failures)
}

/// A few lines for stderr.
pub fn text(v: &Value) -> String {
    let g = |path: &[&str]| {
        let mut x = v;
        for p in path {
            x = x.get(*p).unwrap_or(&Value::Null);
        }
        x.clone()
    };
    let mut out = String::new();
    out.push_str(&format!(
        "agentwire-soak: {:.1} s, published {}, delivered {} of {} expected, lost {} in faults / {} outside, {} duplicated, {} out of order\n",
        g(&["duration_s"]).as_f64().unwrap_or(0.0),
        g(&["messages", "published"]),
        g(&["messages", "delivered"]),
        g(&["messages", "expected"]),
        g(&["messages", "lost_in_faults"]),
        g(&["messages", "lost_outside_faults"]),
        g(&["messages", "duplicated"]),
        g(&["messages", "out_of_order"]),
    ));
    out.push_str(&format!(
        "  requests: {}\n  latency outside faults: {}\n  latency inside faults: {}\n",
        g(&["requests", "total"]),
        g(&["latency", "outside_faults"]),
        g(&["latency", "inside_faults"])
    ));
    if let Some(m) = g(&["reconnect_ms"]).as_object() {
        for (k, r) in m {
            out.push_str(&format!("  reconnect after {k}: {r}\n"));
        }
    }
    out.push_str(&format!(
        "  clients: {}\n  broker RSS max {} KiB\n  errors by code: {}\n",
        g(&["clients"]),
        g(&["broker_rss_kib", "max"]),
        g(&["errors_by_code"])
    ));
    match g(&["failures"]).as_array() {
        Some(f) if !f.is_empty() => {
            out.push_str("FAILED:\n");
            for x in f {
                out.push_str(&format!("  - {}\n", x.as_str().unwrap_or("?")));
            }
        }
        _ => out.push_str("OK: nothing lost outside faults, every reconnect in time\n"),
    }
    out
}
