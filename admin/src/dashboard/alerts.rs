//! The alerts page (`/alerts`): firing alerts, recently resolved ones and the rules, from the
//! alert engine's snapshot (the in-memory part of `GET /api/v1/alerts`; the stored history is
//! in the API and `agentwire alerts --history`). Updates live.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use maud::{html, Markup};
use serde_json::Value;

use super::{json_table, layout, respond, Access, AppState, Nav};
use crate::Node;
use agentwire_broker::config::AdminRole;

/// The alert engine's snapshot as JSON (`{"enabled", "firing": [...], "resolved": [...],
/// "rules": [...]}`), or `None` when the engine is turned off (`alerts.enabled = false`).
pub fn alerts_json(g: &Node) -> Option<Value> {
    let view = g.admin().alerts.snapshot();
    if !view.enabled {
        return None;
    }
    serde_json::to_value(view).ok()
}

/// `GET /alerts`.
pub async fn page(State(g): State<AppState>, role: Option<Extension<AdminRole>>) -> Response {
    let body = html! { section #alerts-body { (body(&g)) } };
    respond(
        StatusCode::OK,
        layout(
            "Alerts",
            Nav::Alerts,
            Access::of(role),
            Some("alerts"),
            body,
        ),
    )
}

/// The alert lists.
pub fn body(g: &Node) -> Markup {
    render(alerts_json(g).as_ref())
}

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Renders an alerts document (or the no-engine note).
pub fn render(doc: Option<&Value>) -> Markup {
    let Some(doc) = doc else {
        return html! {
            p.note #no-alert-engine { "The alert engine is off (alerts.enabled = false): no alert rules are evaluated." }
        };
    };
    let firing = list(doc, "firing");
    let resolved = list(doc, "resolved");
    let history = list(doc, "history");
    html! {
        h2 { "Firing (" span #firing-count { (firing.len()) } ")" }
        @if firing.is_empty() { p.note { "Nothing is firing." } } @else { (json_table(firing, "firing")) }
        @if !resolved.is_empty() {
            h2 { "Resolved" }
            (json_table(resolved, "resolved"))
        }
        @if doc.get("history").is_some() {
            h2 { "History" }
            @if history.is_empty() { p.note { "No alert yet." } } @else { (json_table(history, "alert-history")) }
        }
        @let rules = list(doc, "rules");
        @if !rules.is_empty() {
            h2 { "Rules" }
            (json_table(rules, "alert-rules"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_an_engine_document_or_says_it_is_off() {
        assert!(render(None)
            .into_string()
            .contains("The alert engine is off"));
        let m = render(Some(&json!({
            "firing": [{"rule": "latency_p95", "component": "planner", "value": 612}],
            "history": [],
        })))
        .into_string();
        assert!(m.contains("latency_p95") && m.contains("planner"), "{m}");
        assert!(m.contains("<span id=\"firing-count\">1</span>"), "{m}");
        // Rules are listed; no history section unless the document has one.
        let m = render(Some(&json!({
            "firing": [],
            "resolved": [],
            "rules": [{"rule": "component_latency", "threshold": 500.0}],
        })))
        .into_string();
        assert!(
            m.contains("alert-rules") && m.contains("component_latency"),
            "{m}"
        );
        assert!(!m.contains("History"), "{m}");
    }
}
