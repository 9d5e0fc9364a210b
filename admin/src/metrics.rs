//! Metrics: the Prometheus exposition at `/metrics` (through the `metrics` facade and
//! `metrics-exporter-prometheus`), the figures of `GET /api/v1/system/metrics`, and the sampler
//! that stores a sample in the `performance_metrics` table every `metrics_sample_ms`, deleting
//! samples older than `metrics_retention_s`.
//!
//! The counters themselves are the shards' relaxed atomics; a scrape reads them into a
//! recorder made for that scrape, so several brokers in one process (tests) never mix figures.
//! Label sets are bounded: shard index, error code name, component name, quantile. Never a
//! subject.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::json;
use tokio::sync::watch;

use super::now_ms;
use super::store::MetricSample;
use crate::Node;
use agentwire_broker::telemetry::hist::Percentiles;

/// Reads one percentile.
type Pick = fn(&Percentiles) -> u64;

const QUANTILES: [(&str, Pick); 5] = [
    ("0.5", |p| p.p50),
    ("0.9", |p| p.p90),
    ("0.95", |p| p.p95),
    ("0.99", |p| p.p99),
    ("0.999", |p| p.p999),
];

/// Renders every metric in the Prometheus text format.
pub fn render(global: &Node) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || record_all(global));
    handle.render()
}

fn record_all(global: &Node) {
    use metrics::{counter, gauge};
    for f in global.shard_figures() {
        let shard = f.shard.to_string();
        counter!("agentwire_messages_in_total", "shard" => shard.clone()).absolute(f.msgs_in);
        counter!("agentwire_messages_out_total", "shard" => shard.clone()).absolute(f.msgs_out);
        counter!("agentwire_bytes_in_total", "shard" => shard.clone()).absolute(f.bytes_in);
        counter!("agentwire_bytes_out_total", "shard" => shard.clone()).absolute(f.bytes_out);
        counter!("agentwire_cross_shard_messages_total", "shard" => shard.clone())
            .absolute(f.cross_shard);
        counter!("agentwire_connections_accepted_total", "shard" => shard.clone())
            .absolute(f.conns_total);
        gauge!("agentwire_connections", "shard" => shard.clone()).set(f.conns_open as f64);
        counter!("agentwire_slow_consumers_total", "shard" => shard.clone())
            .absolute(f.slow_consumers);
        counter!("agentwire_dropped_messages_total", "shard" => shard).absolute(f.dropped);
    }
    let snap = global.stats();
    for (code, n) in &snap.errors {
        counter!("agentwire_errors_total", "code" => code.clone()).absolute(*n);
    }
    gauge!("agentwire_subscriptions").set(global.subscription_count() as f64);
    let admin = global.admin();
    gauge!("agentwire_uptime_seconds").set(admin.started.elapsed().as_secs_f64());
    counter!("agentwire_tls_handshake_failures_total").absolute(
        global
            .telemetry()
            .tls_handshake_failures
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    record_process(global);
    let mut per_component: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for i in admin.registry.list("", "", true) {
        let e = per_component.entry(i.component).or_default();
        if i.healthy {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    for (c, (healthy, unhealthy)) in per_component {
        gauge!("agentwire_component_instances", "component" => c.clone(), "status" => "healthy")
            .set(healthy as f64);
        gauge!("agentwire_component_instances", "component" => c, "status" => "unhealthy")
            .set(unhealthy as f64);
    }
    for (c, t) in admin.registry.request_totals() {
        counter!("agentwire_component_requests_total", "component" => c.clone())
            .absolute(t.requests);
        counter!("agentwire_component_errors_total", "component" => c).absolute(t.errors);
    }
    // 1 when the component is not healthy: an instance unhealthy, or a dependency missing or
    // unhealthy (`super::topology`); incompatible dependency versions have their own gauge.
    for c in super::topology::evaluate(&admin.registry.list("", "", true)) {
        let degraded = c.status != super::topology::Status::Healthy;
        gauge!("agentwire_component_degraded", "component" => c.name.clone()).set(if degraded {
            1.0
        } else {
            0.0
        });
        gauge!("agentwire_component_incompatible", "component" => c.name).set(if c.incompatible {
            1.0
        } else {
            0.0
        });
    }
    for (rule, n) in admin.alerts.firing_counts() {
        gauge!("agentwire_alerts_firing", "rule" => rule).set(n as f64);
    }
    for (c, e, v) in admin.config_versions() {
        gauge!("agentwire_config_version", "component" => c, "environment" => e).set(v as f64);
    }
    let res = global.telemetry().hist.residence.percentiles();
    let p2d = global.telemetry().hist.publish_to_deliver.percentiles();
    for (q, f) in QUANTILES {
        gauge!("agentwire_residence_microseconds", "quantile" => q).set(f(&res) as f64);
        gauge!("agentwire_publish_to_deliver_microseconds", "quantile" => q).set(f(&p2d) as f64);
    }
    gauge!("agentwire_residence_microseconds_count").set(res.count as f64);
    for (c, p) in global.telemetry().hist.round_trips() {
        for (q, f) in QUANTILES {
            gauge!("agentwire_request_round_trip_microseconds", "component" => c.clone(), "quantile" => q)
                .set(f(&p) as f64);
        }
        gauge!("agentwire_request_round_trip_microseconds_count", "component" => c)
            .set(p.count as f64);
    }
}

/// CPU, memory and data-dir disk figures ([`super::process`]); unavailable ones are left out.
fn record_process(global: &Node) {
    use metrics::gauge;
    let p = super::process::read(global.config().admin.data_dir.as_deref());
    gauge!("agentwire_process_cpu_cores").set(p.cpu_cores);
    let figures = [
        ("agentwire_process_cpu_ratio", p.cpu_ratio),
        (
            "agentwire_process_resident_memory_bytes",
            p.resident_memory_bytes,
        ),
        ("agentwire_process_memory_limit_bytes", p.memory_limit_bytes),
        (
            "agentwire_data_dir_disk_used_ratio",
            p.data_dir_disk_used_ratio,
        ),
    ];
    for (name, v) in figures {
        if let Some(v) = v {
            gauge!(name).set(v);
        }
    }
}

/// Current figures as JSON (`GET /api/v1/system/metrics`).
pub fn current_json(global: &Node) -> serde_json::Value {
    let snap = global.stats();
    let admin = global.admin();
    let shards = global.shard_figures();
    let (instances, unhealthy) = admin.registry.counts();
    json!({
        "timestamp_ms": now_ms(),
        "uptime_s": admin.started.elapsed().as_secs_f64(),
        "totals": snap,
        "subscriptions": global.subscription_count(),
        "shards": shards,
        "instances": instances,
        "unhealthy_instances": unhealthy,
        "latency_us": {
            "residence": global.telemetry().hist.residence.percentiles(),
            "publish_to_deliver": global.telemetry().hist.publish_to_deliver.percentiles(),
            "request_round_trip": global.telemetry().hist.round_trips().into_iter()
                .map(|(c, p)| (c, serde_json::to_value(p).unwrap_or_default()))
                .collect::<serde_json::Map<_, _>>(),
        },
    })
}

/// Stores a sample every `metrics_sample_ms` and prunes old samples, until stopped.
pub async fn sampler(global: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let cfg = &global.config().admin;
    let every = Duration::from_millis(cfg.metrics_sample_ms);
    let retention_ms = cfg.metrics_retention_s.saturating_mul(1000);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (global.stats(), std::time::Instant::now());
    let mut last_prune = None::<std::time::Instant>;
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    return;
                }
                continue;
            }
        }
        let now = std::time::Instant::now();
        let snap = global.stats();
        let secs = now.duration_since(last.1).as_secs_f64().max(1e-3);
        let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
        let ts = now_ms();
        let sample = |name: &str, v: f64, component: Option<String>| MetricSample {
            metric_name: name.to_owned(),
            metric_value: v,
            component_name: component,
            timestamp_ms: ts,
            tags: json!({}),
            metadata: json!({}),
        };
        let mut samples = vec![
            sample(
                "messages_in_per_s",
                rate(snap.msgs_in, last.0.msgs_in),
                None,
            ),
            sample(
                "messages_out_per_s",
                rate(snap.msgs_out, last.0.msgs_out),
                None,
            ),
            sample("connections", snap.connections as f64, None),
            sample("slow_consumers_total", snap.slow_consumers as f64, None),
            sample(
                "residence_p99_us",
                global.telemetry().hist.residence.percentiles().p99 as f64,
                None,
            ),
        ];
        let (instances, unhealthy) = global.admin().registry.counts();
        samples.push(sample("instances", instances as f64, None));
        samples.push(sample("unhealthy_instances", unhealthy as f64, None));
        for (c, p) in global.telemetry().hist.round_trips() {
            if p.count > 0 {
                samples.push(sample(
                    "request_round_trip_p95_us",
                    p.p95 as f64,
                    Some(c.clone()),
                ));
                samples.push(sample("request_round_trip_p99_us", p.p99 as f64, Some(c)));
            }
        }
        last = (snap, now);
        let prune = last_prune.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(3600));
        if prune {
            last_prune = Some(now);
        }
        let g = global.clone();
        let r = tokio::task::spawn_blocking(move || {
            g.admin().store.record_metrics(&samples)?;
            if prune {
                g.admin()
                    .store
                    .prune_metrics(now_ms().saturating_sub(retention_ms))?;
            }
            Ok::<_, super::store::StoreError>(())
        })
        .await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("cannot store a metrics sample: {e}"),
            Err(e) => tracing::warn!("metrics sampler task failed: {e}"),
        }
    }
}
