//! The web dashboard, served by the admin HTTP server at `/`: server-rendered HTML ([`maud`]),
//! charts drawn as inline SVG by the server ([`charts`]), and live updates over server-sent
//! events (`/dashboard/events`) applied by a small script of ours (`assets/dashboard.js`) that
//! replaces page fragments by id. No front-end build step, no CDN, nothing to keep in sync.
//!
//! Pages: overview (`/`, [`overview`]), components (`/components[/{name}]`, [`components`]),
//! config (`/config[/{name}]`, [`config`]), alerts (`/alerts`, [`alerts`]) and connections
//! (`/connections`, [`connections`]). The figures of the overview's charts come from an
//! in-memory ring of one sample a second over the last 15 minutes ([`live`]).
//!
//! Auth: browsers cannot send bearer headers when they navigate, so `/login` takes an admin token
//! in a form and stores it in an HttpOnly, `SameSite=Strict` cookie that the API's `authorize`
//! middleware treats like `Authorization: Bearer` ([`cookie_token`]). A viewer sees no edit form
//! and its POSTs get 403 there. With no admin tokens configured everything is open, as the API.

pub mod alerts;
pub mod charts;
pub mod components;
pub mod config;
pub mod connections;
pub mod live;
pub mod overview;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use base64::Engine as _;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde::Deserialize;

use crate::Node;
use agentwire_broker::config::AdminRole;

type AppState = Arc<Node>;

/// Name of the cookie holding the admin token (URL-safe base64 of the token).
pub const COOKIE: &str = "agentwire_admin";

/// The dashboard's routes (merged into the admin router, under its `authorize` layer).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(overview::page))
        .route("/components", get(components::list_page))
        .route("/components/{name}", get(components::detail_page))
        .route("/config", get(config::list_page).post(config::create))
        .route(
            "/config/{name}",
            get(config::detail_page).post(config::edit),
        )
        .route("/config/{name}/rollback", post(config::rollback))
        .route("/alerts", get(alerts::page))
        .route("/connections", get(connections::page))
        .route("/dashboard/events", get(events))
        .route("/dashboard/assets/dashboard.css", get(css))
        .route("/dashboard/assets/dashboard.js", get(js))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
}

/// Paths served without a token even when tokens are configured: the login form and the
/// static assets (nothing secret in them).
pub fn is_public(path: &str) -> bool {
    matches!(path, "/login" | "/logout") || path.starts_with("/dashboard/assets/")
}

/// Whether `path` is a dashboard page (HTML): without a valid token it redirects to `/login`
/// instead of answering JSON 401.
pub fn is_page(path: &str) -> bool {
    path == "/"
        || ["/components", "/config", "/alerts", "/connections"]
            .iter()
            .any(|p| path == *p || path.strip_prefix(p).is_some_and(|r| r.starts_with('/')))
}

/// For a dashboard page requested without a usable token: the redirect to the login form.
pub fn login_redirect(req: &Request) -> Option<Response> {
    let path = req.uri().path();
    if req.method() == axum::http::Method::GET && is_page(path) {
        Some(Redirect::to("/login").into_response())
    } else {
        None
    }
}

/// The admin token carried by the dashboard's cookie, if any.
pub fn cookie_token(headers: &HeaderMap) -> Option<String> {
    for v in headers.get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for part in v.split(';') {
            let Some((k, val)) = part.trim().split_once('=') else {
                continue;
            };
            if k.trim() == COOKIE {
                let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(val.trim())
                    .ok()?;
                return String::from_utf8(bytes).ok();
            }
        }
    }
    None
}

/// What the caller may do, from the role the `authorize` middleware found (none: no tokens
/// are configured, everything is open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// May change things (config edits, rollback).
    pub write: bool,
    /// Tokens are configured (the header shows a logout button).
    pub logged_in: bool,
}

impl Access {
    /// From the role extension set by the middleware.
    pub fn of(role: Option<Extension<AdminRole>>) -> Access {
        match role {
            None => Access {
                write: true,
                logged_in: false,
            },
            Some(Extension(r)) => Access {
                write: r == AdminRole::Operator,
                logged_in: true,
            },
        }
    }
}

/// Which nav entry is highlighted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// `/`.
    Overview,
    /// `/components`.
    Components,
    /// `/config`.
    Config,
    /// `/alerts`.
    Alerts,
    /// `/connections`.
    Connections,
    /// `/login`.
    Login,
}

/// Wraps a page body in the common layout. `live` names the fragment set the page's script
/// subscribes to on `/dashboard/events` (none: a static page).
pub fn layout(title: &str, nav: Nav, access: Access, live: Option<&str>, body: Markup) -> Markup {
    let item = |n: Nav, href: &str, label: &str| {
        html! { a href=(href) class=@if n == nav { "active" } { (label) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · agentwire" }
                link rel="stylesheet" href="/dashboard/assets/dashboard.css";
                script src="/dashboard/assets/dashboard.js" defer {}
            }
            body data-live=[live] {
                header {
                    span.brand { "agentwire" }
                    nav {
                        (item(Nav::Overview, "/", "Overview"))
                        (item(Nav::Components, "/components", "Components"))
                        (item(Nav::Config, "/config", "Config"))
                        (item(Nav::Alerts, "/alerts", "Alerts"))
                        (item(Nav::Connections, "/connections", "Connections"))
                    }
                    span.right {
                        @if live.is_some() { span #live-status .live { "connecting" } }
                        @if access.logged_in {
                            span.role { @if access.write { "operator" } @else { "viewer" } }
                            form.inline method="post" action="/logout" {
                                button type="submit" { "Log out" }
                            }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// A page as an HTML response.
pub fn respond(status: StatusCode, m: Markup) -> Response {
    (status, Html(m.into_string())).into_response()
}

/// Runs blocking store work on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, super::store::StoreError> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("internal error: {e}")),
    }
}

/// A count, short: 950, 12.3 k, 4.56 M.
pub fn human(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.2} G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.1} k", v / 1e3)
    } else if a >= 10.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Bytes, short: 512 B, 1.5 KiB, 3.2 MiB.
pub fn human_bytes(v: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = v;
    let mut u = 0;
    while v.abs() >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Microseconds, short: 850 µs, 1.2 ms, 3.4 s.
pub fn human_us(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.1} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

/// How long ago `ms` (ms since the epoch) was, short.
pub fn ago(ms: u64) -> String {
    let d = super::now_ms().saturating_sub(ms) / 1000;
    if ms == 0 {
        "-".into()
    } else if d < 120 {
        format!("{d} s ago")
    } else if d < 7200 {
        format!("{} min ago", d / 60)
    } else {
        format!("{} h ago", d / 3600)
    }
}

/// A JSON value as a table cell: strings bare, the rest as compact JSON.
fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A list of JSON objects as a table: one column per key, in order of first appearance. Used
/// for data whose exact shape belongs to another part of the broker (alerts, rollouts).
pub fn json_table(items: &[serde_json::Value], id: &str) -> Markup {
    let mut cols: Vec<String> = Vec::new();
    for it in items {
        if let Some(o) = it.as_object() {
            for k in o.keys() {
                if !cols.contains(k) {
                    cols.push(k.clone());
                }
            }
        }
    }
    html! {
        table #(id) {
            thead { tr { @for c in &cols { th { (c) } } } }
            tbody {
                @for it in items {
                    tr { @for c in &cols { td { (cell(&it[c.as_str()])) } } }
                }
            }
        }
    }
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    page: Option<String>,
    name: Option<String>,
}

/// Renders the live fragments of a page, `{element id: inner HTML}`.
fn fragments(g: &Node, page: &str, name: Option<&str>) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    let mut put = |id: &str, markup: Markup| {
        m.insert(
            id.to_owned(),
            serde_json::Value::String(markup.into_string()),
        );
    };
    match page {
        "overview" => {
            put("tiles", overview::tiles(g));
            put("charts", overview::charts(g));
            put("shards", overview::shards(g));
        }
        "components" => {
            put("components-table", components::table(g));
            put("graph", components::graph(g));
        }
        "component" => {
            if let Some(n) = name {
                put("instances", components::instances(g, n));
            }
        }
        "connections" => put("connections-body", connections::body(g)),
        "alerts" => put("alerts-body", alerts::body(g)),
        _ => {}
    }
    serde_json::Value::Object(m)
}

/// `GET /dashboard/events?page=P[&name=N]`: server-sent events, one `fragments` event per
/// new live sample (every second), until the client leaves or the broker stops.
async fn events(State(g): State<AppState>, Query(q): Query<EventsQuery>) -> Response {
    let page = q.page.unwrap_or_else(|| "overview".into());
    let name = q.name;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<SseEvent, std::convert::Infallible>>(2);
    let mut ticks = g.admin().live.subscribe();
    tokio::spawn(async move {
        loop {
            let stopped = ticks.borrow_and_update().1;
            if stopped {
                break;
            }
            let data = fragments(&g, &page, name.as_deref()).to_string();
            if tx
                .send(Ok(SseEvent::default().event("fragments").data(data)))
                .await
                .is_err()
            {
                break;
            }
            // Next sample, or give up waiting when the sampler is gone.
            match tokio::time::timeout(Duration::from_secs(10), ticks.changed()).await {
                Ok(Ok(())) | Err(_) => {}
                Ok(Err(_)) => break,
            }
        }
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("assets/dashboard.css"),
    )
        .into_response()
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("assets/dashboard.js"),
    )
        .into_response()
}

fn login_form(g: &Node, error: Option<&str>) -> Markup {
    let open = g.config().admin.tokens.is_empty();
    let body = html! {
        @if open {
            p.note { "No admin tokens are configured: the dashboard and the API are open. "
                a href="/" { "Go to the overview" } }
        } @else {
            @if let Some(e) = error { p.error #login-error { (e) } }
            form #login-form method="post" action="/login" {
                label { "Admin token " input type="password" name="token" autocomplete="current-password" required; }
                button type="submit" { "Log in" }
            }
            p.note { "The token is kept in an HttpOnly cookie for this site only (SameSite=Strict)." }
        }
    };
    layout(
        "Log in",
        Nav::Login,
        Access {
            write: false,
            logged_in: false,
        },
        None,
        body,
    )
}

async fn login_page(State(g): State<AppState>) -> Response {
    respond(StatusCode::OK, login_form(&g, None))
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
}

fn cookie_header(value: &str, max_age: Option<u64>, secure: bool) -> Option<HeaderValue> {
    let mut c = format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict");
    if let Some(s) = max_age {
        c.push_str(&format!("; Max-Age={s}"));
    }
    if secure {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).ok()
}

async fn login(
    State(g): State<AppState>,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let tokens = &g.config().admin.tokens;
    let Ok(Form(f)) = form else {
        return respond(
            StatusCode::BAD_REQUEST,
            login_form(&g, Some("the form needs a token field")),
        );
    };
    let presented = f.token.trim();
    let known = tokens
        .iter()
        .any(|t| super::auth::same_secret(t.token.as_bytes(), presented.as_bytes()));
    if !known {
        return respond(
            StatusCode::UNAUTHORIZED,
            login_form(&g, Some("unknown admin token")),
        );
    }
    let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(presented.as_bytes());
    let mut resp = Redirect::to("/").into_response();
    if let Some(h) = cookie_header(&value, None, g.config().tls.is_some()) {
        resp.headers_mut().insert(header::SET_COOKIE, h);
    }
    resp
}

async fn logout(State(g): State<AppState>) -> Response {
    let mut resp = Redirect::to("/login").into_response();
    if let Some(h) = cookie_header("", Some(0), g.config().tls.is_some()) {
        resp.headers_mut().insert(header::SET_COOKIE, h);
    }
    resp
}

/// Marks text as already-escaped HTML (SVG built by [`charts`]).
pub fn raw(s: String) -> Markup {
    PreEscaped(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_round_trip() {
        let tok = "operator token; with=odd chars";
        let v = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tok.as_bytes());
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("other=1; {COOKIE}={v}; x=y")).expect("header"),
        );
        assert_eq!(cookie_token(&h).as_deref(), Some(tok));
        let mut bad = HeaderMap::new();
        bad.insert(
            header::COOKIE,
            HeaderValue::from_static("agentwire_admin=%%%"),
        );
        assert_eq!(cookie_token(&bad), None);
        assert_eq!(cookie_token(&HeaderMap::new()), None);
    }

    #[test]
    fn pages_and_public_paths() {
        for p in ["/", "/components", "/components/x", "/config/a", "/alerts"] {
            assert!(is_page(p), "{p}");
        }
        for p in ["/api/v1/components", "/configx", "/metrics", "/login"] {
            assert!(!is_page(p), "{p}");
        }
        assert!(is_public("/dashboard/assets/dashboard.js"));
        assert!(!is_public("/dashboard/events"));
    }

    #[test]
    fn human_figures() {
        assert_eq!(human(950.0), "950");
        assert_eq!(human(12_345.0), "12.3 k");
        assert_eq!(human(4_560_000.0), "4.56 M");
        assert_eq!(human_bytes(1536.0), "1.5 KiB");
        assert_eq!(human_us(1200.0), "1.2 ms");
    }
}
