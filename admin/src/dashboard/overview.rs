//! The overview page (`/`): current rates and totals, line charts of messages and bytes per
//! second, connections and residence latency p50/p99 over the last 15 minutes, and the shard
//! balance. Its three fragments (`tiles`, `charts`, `shards`) are pushed every second.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use maud::{html, Markup};

use super::charts::{bar_chart, line_chart, Series};
use super::live::{Sample, CAPACITY, EVERY};
use super::{human, human_bytes, human_us, layout, respond, Access, AppState, Nav};
use crate::{now_ms, Node};
use agentwire_broker::config::AdminRole;

/// `GET /`.
pub async fn page(State(g): State<AppState>, role: Option<Extension<AdminRole>>) -> Response {
    let body = html! {
        section #tiles { (tiles(&g)) }
        section #charts .charts { (charts(&g)) }
        section #shards { (shards(&g)) }
    };
    respond(
        StatusCode::OK,
        layout(
            "Overview",
            Nav::Overview,
            Access::of(role),
            Some("overview"),
            body,
        ),
    )
}

fn tile(id: &str, label: &str, shown: String, value: impl std::fmt::Display) -> Markup {
    html! {
        div.tile {
            div.label { (label) }
            div.value #(id) data-value=(value.to_string()) { (shown) }
        }
    }
}

/// The figure tiles: rates, totals, connections, latency, instances.
pub fn tiles(g: &Node) -> Markup {
    let s = g.admin().live.last().unwrap_or_default();
    let snap = g.stats();
    let (instances, unhealthy) = g.admin().registry.counts();
    html! {
        div.tiles {
            (tile("v-msgs-in", "messages in /s", human(s.msgs_in_s), format!("{:.1}", s.msgs_in_s)))
            (tile("v-msgs-out", "messages out /s", human(s.msgs_out_s), format!("{:.1}", s.msgs_out_s)))
            (tile("v-bytes-in", "bytes in /s", human_bytes(s.bytes_in_s), format!("{:.0}", s.bytes_in_s)))
            (tile("v-bytes-out", "bytes out /s", human_bytes(s.bytes_out_s), format!("{:.0}", s.bytes_out_s)))
            (tile("v-msgs-in-total", "messages in (total)", human(snap.msgs_in as f64), snap.msgs_in))
            (tile("v-msgs-out-total", "messages out (total)", human(snap.msgs_out as f64), snap.msgs_out))
            (tile("v-connections", "connections", snap.connections.to_string(), snap.connections))
            (tile("v-p50", "latency p50", human_us(s.p50_us as f64), s.p50_us))
            (tile("v-p99", "latency p99", human_us(s.p99_us as f64), s.p99_us))
            (tile("v-instances", "instances (unhealthy)", format!("{instances} ({unhealthy})"), instances))
            (tile("v-slow", "slow consumers", snap.slow_consumers.to_string(), snap.slow_consumers))
        }
    }
}

fn series<'a>(samples: &[Sample], label: &'a str, f: fn(&Sample) -> f64) -> Series<'a> {
    Series {
        label,
        points: samples.iter().map(|s| (s.ts_ms, f(s))).collect(),
    }
}

/// The four line charts over the ring (15 minutes).
pub fn charts(g: &Node) -> Markup {
    let samples = g.admin().live.samples();
    let now = now_ms();
    let window = CAPACITY as u64 * EVERY.as_millis() as u64;
    let count = |v: f64| human(v);
    let bytes = |v: f64| human_bytes(v);
    let us = |v: f64| human_us(v);
    html! {
        (line_chart("chart-msgs", "Messages /s", &[
            series(&samples, "in", |s| s.msgs_in_s),
            series(&samples, "out", |s| s.msgs_out_s),
        ], now, window, count))
        (line_chart("chart-bytes", "Bytes /s", &[
            series(&samples, "in", |s| s.bytes_in_s),
            series(&samples, "out", |s| s.bytes_out_s),
        ], now, window, bytes))
        (line_chart("chart-conns", "Connections", &[
            series(&samples, "open", |s| s.connections as f64),
        ], now, window, count))
        (line_chart("chart-latency", "Broker latency (read → written)", &[
            series(&samples, "p50", |s| s.p50_us as f64),
            series(&samples, "p99", |s| s.p99_us as f64),
        ], now, window, us))
    }
}

/// Messages in per shard since start, and connections per shard.
pub fn shards(g: &Node) -> Markup {
    let f = g.shard_figures();
    let msgs: Vec<(String, f64)> = f
        .iter()
        .map(|s| (format!("shard {}", s.shard), s.msgs_in as f64))
        .collect();
    let conns: Vec<(String, f64)> = f
        .iter()
        .map(|s| (format!("shard {}", s.shard), s.conns_open as f64))
        .collect();
    html! {
        div.charts {
            (bar_chart("shard-msgs", "Shard balance: messages in (total)", &msgs, human))
            (bar_chart("shard-conns", "Shard balance: open connections", &conns, human))
        }
    }
}
