//! The alerts page (`/alerts`): firing alerts, resolved ones and the history, from the alert
//! engine's JSON (the same document as `GET /api/v1/alerts`). The page reads it through
//! [`alerts_json`], the one place to wire the engine in; until then it says there is no alert
//! engine. Updates live.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use maud::{html, Markup};
use serde_json::Value;

use super::{json_table, layout, respond, Access, AppState, Nav};
use crate::admin::DataPlane;
use crate::config::AdminRole;

/// The alert engine's current document (`{"firing": [...], "resolved": [...], "history":
/// [...]}`, the shape of `GET /api/v1/alerts`), or `None` when this build has no alert engine.
///
/// To wire the engine in, return its JSON here, e.g.
/// `Some(crate::admin::alerts::api_json(g))`.
pub fn alerts_json(g: &dyn DataPlane) -> Option<Value> {
    let _ = g;
    None
}

/// `GET /alerts`.
pub async fn page(State(g): State<AppState>, role: Option<Extension<AdminRole>>) -> Response {
    let body = html! { section #alerts-body { (body(&*g)) } };
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
pub fn body(g: &dyn DataPlane) -> Markup {
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
            p.note #no-alert-engine { "No alert engine in this build: no alert rules are evaluated." }
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
        h2 { "History" }
        @if history.is_empty() { p.note { "No alert yet." } } @else { (json_table(history, "alert-history")) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_an_engine_document_or_says_there_is_none() {
        assert!(render(None).into_string().contains("No alert engine"));
        let m = render(Some(&json!({
            "firing": [{"rule": "latency_p95", "component": "planner", "value": 612}],
            "history": [],
        })))
        .into_string();
        assert!(m.contains("latency_p95") && m.contains("planner"), "{m}");
        assert!(m.contains("<span id=\"firing-count\">1</span>"), "{m}");
    }
}
