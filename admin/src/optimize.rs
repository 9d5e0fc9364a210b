//! `POST /api/v1/system/optimize`: a bottleneck report (hottest subjects from a 1-in-1,024
//! sample of publishes, slowest consumers by bytes waiting, shard imbalance, slowest components
//! by request round trip, unhealthy instances) and the safe actions it took: deleting stored
//! samples past retention, and forgetting stale reply-latency estimates so that members shunned
//! for an old slowness are probed again.

use std::sync::atomic::Ordering::Relaxed;

use serde_json::{json, Value};

use super::now_ms;
use crate::Node;
use agentwire_broker::telemetry::load::PROBE_AFTER_US;

/// Builds the report and takes the safe actions.
pub fn report(global: &Node) -> Value {
    let admin = global.admin();
    let hottest: Vec<Value> = global
        .telemetry()
        .hot
        .take_top(10)
        .into_iter()
        .map(|(s, n)| json!({"subject": s, "estimated_publishes": n}))
        .collect();
    let loads = global.loads();
    let mut slow: Vec<(u64, u64)> = loads
        .iter()
        .map(|(c, l)| (*c, l.pending_bytes.load(Relaxed)))
        .filter(|(_, p)| *p > 0)
        .collect();
    slow.sort_by_key(|x| std::cmp::Reverse(x.1));
    slow.truncate(10);
    let slowest_consumers: Vec<Value> = slow
        .into_iter()
        .map(|(c, p)| json!({"connection": c, "pending_bytes": p}))
        .collect();
    let figures = global.shard_figures();
    let per_shard: Vec<u64> = figures.iter().map(|f| f.msgs_in + f.msgs_out).collect();
    let conns: Vec<u64> = figures.iter().map(|f| f.conns_open).collect();
    let max = per_shard.iter().copied().max().unwrap_or(0);
    let min = per_shard.iter().copied().min().unwrap_or(0);
    let imbalance = if min == 0 {
        if max == 0 {
            1.0
        } else {
            f64::INFINITY
        }
    } else {
        max as f64 / min as f64
    };
    let mut comps = global.telemetry().hist.round_trips();
    comps.sort_by_key(|x| std::cmp::Reverse(x.1.p99));
    let slowest_components: Vec<Value> = comps
        .into_iter()
        .filter(|(_, p)| p.count > 0)
        .take(10)
        .map(|(c, p)| json!({"component": c, "round_trip_us": p}))
        .collect();
    let unhealthy: Vec<Value> = admin
        .registry
        .list("", "", true)
        .into_iter()
        .filter(|i| !i.healthy)
        .map(|i| json!({"component": i.component, "instance_id": i.instance_id}))
        .collect();

    let mut actions = Vec::new();
    let mut forgotten = 0u64;
    for (_, l) in &loads {
        if l.outstanding() == 0
            && l.latency_ewma_us.load(Relaxed) > 0
            && l.now_us().saturating_sub(l.last_answer_us.load(Relaxed)) > PROBE_AFTER_US
        {
            l.latency_ewma_us.store(0, Relaxed);
            forgotten += 1;
        }
    }
    actions.push(json!({
        "action": "forget_stale_latency_estimates",
        "connections": forgotten,
    }));
    let retention_ms = global
        .config()
        .admin
        .metrics_retention_s
        .saturating_mul(1000);
    match admin
        .store
        .prune_metrics(now_ms().saturating_sub(retention_ms))
    {
        Ok(n) => actions.push(json!({"action": "prune_metric_samples", "deleted": n})),
        Err(e) => actions.push(json!({"action": "prune_metric_samples", "error": e.to_string()})),
    }
    let mut findings = Vec::new();
    if imbalance > 2.0 && max > 10_000 {
        findings.push(format!(
            "shard load is uneven ({imbalance:.1}x between the busiest and the idlest shard): \
             the busiest clients share a shard"
        ));
    }
    if !unhealthy.is_empty() {
        findings.push(format!("{} unhealthy instance(s)", unhealthy.len()));
    }
    if let Some(c) = slowest_consumers.first() {
        findings.push(format!(
            "connection {} has {} bytes waiting to be written",
            c["connection"], c["pending_bytes"]
        ));
    }
    json!({
        "generated_at_ms": now_ms(),
        "hottest_subjects": hottest,
        "slowest_consumers": slowest_consumers,
        "shard_imbalance": {
            "messages_per_shard": per_shard,
            "connections_per_shard": conns,
            "max_over_min": if imbalance.is_finite() { json!(imbalance) } else { json!(null) },
        },
        "slowest_components": slowest_components,
        "unhealthy_instances": unhealthy,
        "findings": findings,
        "actions": actions,
    })
}
