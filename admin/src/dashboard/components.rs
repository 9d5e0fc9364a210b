//! The components pages: `/components` (every component: instances, health, versions, load,
//! request latency, and the dependency graph) and `/components/{name}` (its instances one by
//! one). Both update live.
//!
//! The dependency graph comes from [`dependency_graph`]: the same JSON as `GET
//! /api/v1/components/graph` (declared `depends_on` of the live instances, checked by
//! [`crate::topology`]), read with [`Graph::from_api_json`]. An unmet dependency (no
//! healthy instance, or none in the declared version range) is drawn red and dashed.

use std::collections::{BTreeMap, BTreeSet};

use agentwire_protocol::control::InstanceInfo;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use maud::{html, Markup};

use super::{ago, human, human_bytes, human_us, layout, respond, Access, AppState, Nav};
use crate::Node;
use agentwire_broker::config::AdminRole;
use agentwire_broker::telemetry::hist::Percentiles;

/// `GET /components`.
pub async fn list_page(State(g): State<AppState>, role: Option<Extension<AdminRole>>) -> Response {
    let body = html! {
        section #components-table { (table(&g)) }
        h2 { "Dependency graph" }
        section #graph { (graph(&g)) }
    };
    respond(
        StatusCode::OK,
        layout(
            "Components",
            Nav::Components,
            Access::of(role),
            Some("components"),
            body,
        ),
    )
}

/// `GET /components/{name}`.
pub async fn detail_page(
    State(g): State<AppState>,
    Path(name): Path<String>,
    role: Option<Extension<AdminRole>>,
) -> Response {
    let known = {
        let (g2, n) = (g.clone(), name.clone());
        super::blocking(move || g2.admin().store.component_exists(&n))
            .await
            .unwrap_or(false)
    };
    let live = g.admin().registry.has_component(&name);
    let status = if known || live {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    let body = html! {
        @if status == StatusCode::NOT_FOUND {
            p.error { "No component " code { (name) } " is registered or known." }
        }
        p { a href={ "/config/" (name) } { "Config of " (name) } " · " a href="/components" { "All components" } }
        section #instances data-name=(name) { (instances(&g, &name)) }
    };
    // The live script reads the name from `#instances[data-name]` for its event stream.
    respond(
        status,
        layout(
            &format!("Component {name}"),
            Nav::Components,
            Access::of(role),
            Some("component"),
            body,
        ),
    )
}

fn round_trips(g: &Node) -> BTreeMap<String, Percentiles> {
    g.telemetry().hist.round_trips().into_iter().collect()
}

/// One row per component.
pub fn table(g: &Node) -> Markup {
    let mut by: BTreeMap<String, Vec<InstanceInfo>> = BTreeMap::new();
    for i in g.admin().registry.list("", "", true) {
        by.entry(i.component.clone()).or_default().push(i);
    }
    let rtt = round_trips(g);
    let all: Vec<InstanceInfo> = by.values().flatten().cloned().collect();
    let topo: BTreeMap<String, crate::topology::ComponentStatus> = crate::topology::evaluate(&all)
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
    html! {
        @if by.is_empty() {
            p.note { "No component instance is registered." }
        } @else {
            table #components {
                thead { tr {
                    th { "component" } th { "status" } th { "instances" } th { "versions" }
                    th { "health" } th { "in flight" } th { "queue" } th { "reported latency" }
                    th { "request p50" } th { "request p99" } th { "dependencies" }
                } }
                tbody {
                    @for (name, list) in &by {
                        @let healthy = list.iter().filter(|i| i.healthy).count();
                        @let t = topo.get(name);
                        @let status = t.map_or("unhealthy", |t| t.status.as_str());
                        @let incompatible = t.is_some_and(|t| t.incompatible);
                        @let problems: Vec<String> = t.map(|t| t.dependency_problems.iter().map(|p| {
                            format!("{} {}: {}", p.dependency, p.wanted, serde_json::to_value(p.problem).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default())
                        }).collect()).unwrap_or_default();
                        @let versions: BTreeSet<&str> = list.iter().map(|i| i.version.as_str()).collect();
                        @let score = list.iter().map(|i| u64::from(i.health_score)).sum::<u64>() / list.len().max(1) as u64;
                        @let in_flight: u64 = list.iter().map(|i| u64::from(i.load.in_flight)).sum();
                        @let queue: u64 = list.iter().map(|i| u64::from(i.load.queue_depth)).sum();
                        @let lat = list.iter().map(|i| f64::from(i.load.latency_us)).sum::<f64>() / list.len().max(1) as f64;
                        @let r = rtt.get(name).copied().unwrap_or_default();
                        tr data-component=(name) {
                            td { a href={ "/components/" (name) } { (name) } }
                            td {
                                span class={ "badge " (status) } { (status) }
                                @if incompatible { " " span.badge.incompatible { "incompatible" } }
                            }
                            td { (healthy) " / " (list.len()) }
                            td { (versions.into_iter().collect::<Vec<_>>().join(", ")) }
                            td { (score) }
                            td { (in_flight) }
                            td { (queue) }
                            td { (human_us(lat)) }
                            td { @if r.count > 0 { (human_us(r.p50 as f64)) } @else { "-" } }
                            td { @if r.count > 0 { (human_us(r.p99 as f64)) } @else { "-" } }
                            td.deps { @if problems.is_empty() { "ok" } @else { (problems.join("; ")) } }
                        }
                    }
                }
            }
        }
    }
}

/// The instances of one component.
pub fn instances(g: &Node, name: &str) -> Markup {
    let list = g.admin().registry.list(name, "", true);
    let r = round_trips(g).get(name).copied().unwrap_or_default();
    html! {
        p {
            "Request round trip (broker-measured): "
            @if r.count > 0 {
                "p50 " (human_us(r.p50 as f64)) ", p99 " (human_us(r.p99 as f64)) " over " (human(r.count as f64)) " requests"
            } @else { "no requests in the window" }
        }
        @if list.is_empty() {
            p.note { "No live instance." }
        } @else {
            table #instance-table {
                thead { tr {
                    th { "instance" } th { "version" } th { "environment" } th { "status" }
                    th { "health" } th { "in flight" } th { "queue" } th { "latency" }
                    th { "cpu" } th { "memory" } th { "last heartbeat" } th { "capabilities" }
                    th { "subjects" }
                } }
                tbody {
                    @for i in &list {
                        @let status = if i.healthy { "healthy" } else { "unhealthy" };
                        tr data-instance=(i.instance_id) {
                            td { (i.instance_id) }
                            td { (i.version) }
                            td { (i.environment) }
                            td { span class={ "badge " (status) } { (status) } }
                            td { (i.health_score) }
                            td { (i.load.in_flight) }
                            td { (i.load.queue_depth) }
                            td { (human_us(f64::from(i.load.latency_us))) }
                            td { (format!("{:.1}%", f64::from(i.load.cpu_permille) / 10.0)) }
                            td { (human_bytes(i.load.mem_bytes as f64)) }
                            td { (ago(i.last_seen_ms)) }
                            td { (i.capabilities.join(", ")) }
                            td { (i.subjects.join(", ")) }
                        }
                    }
                }
            }
        }
    }
}

/// A dependency graph: components and "A depends on B" edges.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Graph {
    /// Component name → status (`healthy`, `degraded`, `unhealthy`, or `absent` for a
    /// dependency with no live instance).
    pub nodes: BTreeMap<String, String>,
    /// (from, to): `from` depends on `to`.
    pub edges: BTreeSet<(String, String)>,
    /// Edges not met: `to` has no live or healthy instance, or none in the declared version
    /// range (the node's status tells which).
    pub incompatible: BTreeSet<(String, String)>,
}

impl Graph {
    /// Reads the JSON of `GET /api/v1/components/graph`, taking `nodes` as a list of objects
    /// with `name` (or `component`) and `status`, and `edges` as objects with `from`/`to` (or
    /// a node's `depends_on` list). Unknown shapes give an empty graph.
    pub fn from_api_json(v: &serde_json::Value) -> Graph {
        let mut g = Graph::default();
        let empty = Vec::new();
        for n in v["nodes"].as_array().unwrap_or(&empty) {
            let Some(name) = n["name"].as_str().or_else(|| n["component"].as_str()) else {
                continue;
            };
            g.nodes.insert(
                name.to_owned(),
                n["status"].as_str().unwrap_or("healthy").to_owned(),
            );
            for d in n["depends_on"].as_array().unwrap_or(&empty) {
                if let Some(d) = d.as_str().or_else(|| d["name"].as_str()) {
                    g.edges.insert((name.to_owned(), d.to_owned()));
                }
            }
        }
        for e in v["edges"].as_array().unwrap_or(&empty) {
            if let (Some(a), Some(b)) = (e["from"].as_str(), e["to"].as_str()) {
                g.edges.insert((a.to_owned(), b.to_owned()));
                if e["ok"] == serde_json::Value::Bool(false) {
                    g.incompatible.insert((a.to_owned(), b.to_owned()));
                }
            }
        }
        for (a, b) in g.edges.clone() {
            for n in [a, b] {
                g.nodes.entry(n).or_insert_with(|| "absent".into());
            }
        }
        g
    }

    /// Each node's layer: 0 for a node that depends on nothing, else one more than its deepest
    /// dependency (cycles are cut after as many rounds as there are nodes).
    pub fn layers(&self) -> BTreeMap<String, usize> {
        let mut layer: BTreeMap<String, usize> =
            self.nodes.keys().map(|n| (n.clone(), 0)).collect();
        for _ in 0..self.nodes.len() {
            let mut changed = false;
            for (a, b) in &self.edges {
                let want = layer.get(b).copied().unwrap_or(0) + 1;
                if let Some(la) = layer.get_mut(a) {
                    if *la < want && want < self.nodes.len().max(1) {
                        *la = want;
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        layer
    }
}

/// The dependency graph of the live components, as `GET /api/v1/components/graph` answers it.
pub fn dependency_graph(g: &Node) -> Graph {
    let all = g.admin().registry.list("", "", true);
    let v = serde_json::to_value(crate::topology::graph(&all)).unwrap_or_default();
    Graph::from_api_json(&v)
}

/// The graph as SVG: one column per layer (dependencies on the left), arrows from a component
/// to what it depends on.
pub fn graph(g: &Node) -> Markup {
    let graph = dependency_graph(g);
    if graph.nodes.is_empty() {
        return html! { p.note { "No components to draw." } };
    }
    let layers = graph.layers();
    let mut cols: BTreeMap<usize, Vec<&String>> = BTreeMap::new();
    for (n, l) in &layers {
        cols.entry(*l).or_default().push(n);
    }
    let (bw, bh, gx, gy) = (140.0, 30.0, 60.0, 16.0);
    let mut pos: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for (l, names) in &cols {
        for (i, n) in names.iter().enumerate() {
            pos.insert(
                n.as_str(),
                (10.0 + *l as f64 * (bw + gx), 10.0 + i as f64 * (bh + gy)),
            );
        }
    }
    let width = 20.0 + cols.len() as f64 * (bw + gx);
    let rows = cols.values().map(Vec::len).max().unwrap_or(1);
    let height = 20.0 + rows as f64 * (bh + gy);
    let vb = format!("0 0 {width} {height}");
    html! {
        svg #graph-svg xmlns="http://www.w3.org/2000/svg" viewBox=(vb) role="img" aria-label="dependency graph"
            style={ "max-width:" (width) "px" } {
            defs {
                marker #arrow viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse" {
                    path d="M 0 0 L 10 5 L 0 10 z" fill="#666" {}
                }
            }
            @for (a, b) in &graph.edges {
                @if let (Some(pa), Some(pb)) = (pos.get(a.as_str()), pos.get(b.as_str())) {
                    @if graph.incompatible.contains(&(a.clone(), b.clone())) {
                        line.incompatible x1=(pa.0) y1=(pa.1 + bh / 2.0) x2=(pb.0 + bw) y2=(pb.1 + bh / 2.0)
                            stroke="#c62828" stroke-width="1.6" stroke-dasharray="5 3" marker-end="url(#arrow)" {
                            title { (a) " depends on " (b) ": not met (missing, unhealthy, or no instance in the declared version range)" }
                        }
                    } @else {
                        line x1=(pa.0) y1=(pa.1 + bh / 2.0) x2=(pb.0 + bw) y2=(pb.1 + bh / 2.0)
                            stroke="#666" stroke-width="1.2" marker-end="url(#arrow)" {}
                    }
                }
            }
            @for (n, status) in &graph.nodes {
                @if let Some(p) = pos.get(n.as_str()) {
                    g.node data-node=(n) {
                        rect class={ "node " (status) } x=(p.0) y=(p.1) width=(bw) height=(bh) rx="5" {}
                        text x=(p.0 + bw / 2.0) y=(p.1 + 19.0) text-anchor="middle" { (n) }
                    }
                }
            }
        }
        p.note { "Arrows point from a component to what it depends on (declared "
            code { "depends_on" } " at registration); a red dashed arrow: not met (no healthy instance, or none in the declared version range)." }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn graph_from_api_json_and_layers() {
        let g = Graph::from_api_json(&json!({
            "nodes": [{"name": "api", "status": "healthy", "depends_on": ["planner"]},
                      {"name": "planner", "status": "degraded"}],
            "edges": [{"from": "planner", "to": "store"}],
        }));
        assert_eq!(g.nodes.len(), 3);
        assert_eq!(g.nodes["store"], "absent");
        assert!(g.incompatible.is_empty());
        let bad =
            Graph::from_api_json(&json!({"nodes": [{"component": "api", "status": "healthy"},
            {"component": "llm", "status": "healthy"}],
            "edges": [{"from": "api", "to": "llm", "requirement": "^2", "ok": false}]}));
        assert!(bad
            .incompatible
            .contains(&("api".to_owned(), "llm".to_owned())));
        let l = g.layers();
        assert_eq!((l["store"], l["planner"], l["api"]), (0, 1, 2));
        // A cycle terminates.
        let c = Graph::from_api_json(&json!({"edges": [
            {"from": "a", "to": "b"}, {"from": "b", "to": "a"}]}));
        assert_eq!(c.layers().len(), 2);
        assert_eq!(Graph::from_api_json(&json!(null)), Graph::default());
    }
}
