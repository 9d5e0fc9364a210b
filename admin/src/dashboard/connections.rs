//! The connections page (`/connections`): the busiest connections by requests routed to them
//! and bytes waiting (the per-connection load records the queue-group routing keeps), and slow
//! consumers per shard. Updates live.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use maud::{html, Markup};

use super::{human, human_bytes, human_us, layout, respond, Access, AppState, Nav};
use crate::Node;
use agentwire_broker::config::AdminRole;

/// Rows shown in the top-talkers table.
const TOP: usize = 50;

/// `GET /connections`.
pub async fn page(State(g): State<AppState>, role: Option<Extension<AdminRole>>) -> Response {
    let body = html! { section #connections-body { (body(&g)) } };
    respond(
        StatusCode::OK,
        layout(
            "Connections",
            Nav::Connections,
            Access::of(role),
            Some("connections"),
            body,
        ),
    )
}

/// Totals, slow consumers per shard, and the top talkers.
pub fn body(g: &Node) -> Markup {
    use std::sync::atomic::Ordering::Relaxed;
    let snap = g.stats();
    let shards = g.shard_figures();
    let mut rows: Vec<_> = g
        .loads()
        .into_iter()
        .map(|(id, l)| {
            (
                id,
                l.dispatched.load(Relaxed),
                l.outstanding(),
                l.latency_ewma_us.load(Relaxed),
                l.pending_bytes.load(Relaxed),
                l.healthy(),
            )
        })
        .collect();
    let total = rows.len();
    rows.sort_by(|a, b| (b.1, b.4).cmp(&(a.1, a.4)).then(a.0.cmp(&b.0)));
    rows.truncate(TOP);
    html! {
        div.tiles {
            div.tile { div.label { "open connections" } div.value #v-open data-value=(snap.connections) { (snap.connections) } }
            div.tile { div.label { "accepted (total)" } div.value { (human(snap.connections_total as f64)) } }
            div.tile { div.label { "slow consumers (total)" } div.value #v-slow-consumers data-value=(snap.slow_consumers) { (snap.slow_consumers) } }
            div.tile { div.label { "dropped messages" } div.value { (human(snap.dropped as f64)) } }
        }
        h2 { "Per shard" }
        table #shard-table {
            thead { tr { th { "shard" } th { "open" } th { "slow consumers" } th { "dropped" } th { "messages in" } th { "messages out" } } }
            tbody { @for s in &shards { tr {
                td { (s.shard) } td { (s.conns_open) } td { (s.slow_consumers) } td { (s.dropped) }
                td { (human(s.msgs_in as f64)) } td { (human(s.msgs_out as f64)) }
            } } }
        }
        h2 { "Top talkers (" (rows.len()) " of " (total) ")" }
        p.note { "By requests routed to the connection as a queue-group member, then bytes waiting to be written to it." }
        table #talkers {
            thead { tr { th { "connection" } th { "component" } th { "requests routed" } th { "outstanding" } th { "reply latency" } th { "bytes waiting" } th { "healthy" } } }
            tbody { @for (id, dispatched, out, lat, pending, healthy) in &rows { tr data-conn=(id) {
                td { (id) }
                td { (g.admin().registry.component_of(*id).unwrap_or_default()) }
                td { (human(*dispatched as f64)) }
                td { (out) }
                td { (human_us(f64::from(*lat))) }
                td { (human_bytes(*pending as f64)) }
                td { (if *healthy { "yes" } else { "no" }) }
            } } }
        }
    }
}
