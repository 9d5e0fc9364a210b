//! The HTTP admin API (axum) under `/api/v1/`, plus `/healthz`, `/readyz` and `/metrics`.
//!
//! Every error is JSON: `{"error": {"code": "...", "message": "..."}}` with a fitting status
//! (400 bad input, 404 unknown component or version, 409 stale `expected_version`, 507 disk
//! full, 503 read-only or failing storage). The OpenAPI document is served at
//! `/api/v1/openapi.json`. Database work runs on the blocking pool, never on the shards. With
//! `[[admin.tokens]]` configured, every endpoint but `/healthz`, `/readyz` and `/metrics` needs a
//! bearer token: 401 without a known one, 403 for a `viewer` token on a write.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::auth::{same_secret, TokenName};
use super::registry::instance_json;
use super::store::{ChangeRequest, Changes, StoreError};
use super::{metrics, now_ms, promote_config, rollback_config, set_config, topology};
use crate::Node;

type AppState = Arc<Node>;

/// An API error: status, stable code, message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let (status, code) = match &e {
            StoreError::UnknownComponent(_) => (StatusCode::NOT_FOUND, "unknown_component"),
            StoreError::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid"),
            StoreError::VersionConflict { .. } => (StatusCode::CONFLICT, "version_conflict"),
            StoreError::NoSuchVersion { .. } => (StatusCode::NOT_FOUND, "no_such_version"),
            StoreError::UnknownEnvironment { .. } => (StatusCode::NOT_FOUND, "unknown_environment"),
            StoreError::RolloutInProgress { .. } => (StatusCode::CONFLICT, "rollout_in_progress"),
            StoreError::NoRollout(_) => (StatusCode::NOT_FOUND, "no_rollout"),
            StoreError::NoCanary(_) => (StatusCode::CONFLICT, "no_canary"),
            StoreError::Full(_) => (StatusCode::INSUFFICIENT_STORAGE, "disk_full"),
            StoreError::ReadOnly(_) => (StatusCode::SERVICE_UNAVAILABLE, "read_only"),
            StoreError::Storage(_) => (StatusCode::SERVICE_UNAVAILABLE, "storage"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(b)| b)
        .map_err(|e| ApiError::bad(format!("malformed JSON body: {}", e.body_text())))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(ApiError::from)
}

/// The router, for tests and for [`serve`].
pub fn router(global: Arc<Node>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(prometheus))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/system/status", get(status))
        .route("/api/v1/system/metrics", get(system_metrics))
        .route("/api/v1/system/optimize", post(optimize))
        .route("/api/v1/system/lameduck", post(lameduck))
        .route("/api/v1/system/reload", post(reload))
        .route("/api/v1/deployment/status", get(deployment))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/components", get(components))
        .route("/api/v1/components/graph", get(components_graph))
        .route("/api/v1/components/{name}", get(component))
        .route("/api/v1/config/components", get(config_components))
        .route(
            "/api/v1/config/components/{name}",
            get(config_get).put(config_put),
        )
        .route(
            "/api/v1/config/components/{name}/history",
            get(config_history),
        )
        .route(
            "/api/v1/config/components/{name}/rollback",
            post(config_rollback),
        )
        .merge(super::dashboard::router())
        .route(
            "/api/v1/config/components/{name}/promote",
            post(config_promote),
        )
        .route(
            "/api/v1/config/components/{name}/rollout",
            get(rollout_status),
        )
        .route(
            "/api/v1/config/components/{name}/rollout/promote",
            post(rollout_promote),
        )
        .route(
            "/api/v1/config/components/{name}/rollout/abort",
            post(rollout_abort),
        )
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .layer(middleware::from_fn_with_state(global.clone(), authorize))
        .with_state(global)
}

/// Bearer-token check when tokens are configured: `/healthz`, `/readyz` and `/metrics` stay open;
/// no or an unknown token → 401; a `viewer` token on anything but GET/HEAD → 403.
async fn authorize(State(g): State<AppState>, mut req: Request, next: Next) -> Response {
    let tokens = &g.config().admin.tokens;
    let path = req.uri().path();
    if tokens.is_empty()
        || matches!(path, "/healthz" | "/readyz" | "/metrics")
        || super::dashboard::is_public(path)
    {
        return next.run(req).await;
    }
    // The bearer header, else the dashboard's login cookie (browsers cannot send the header).
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|v| v.trim().to_owned())
        .or_else(|| super::dashboard::cookie_token(req.headers()));
    let Some(presented) = presented else {
        if let Some(r) = super::dashboard::login_redirect(&req) {
            return r;
        }
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this admin API needs a bearer token (Authorization: Bearer <token>; CLI --admin-token or AGENTWIRE_ADMIN_TOKEN)",
        )
        .into_response();
    };
    let Some(t) = tokens
        .iter()
        .find(|t| same_secret(t.token.as_bytes(), presented.as_bytes()))
    else {
        if let Some(r) = super::dashboard::login_redirect(&req) {
            return r;
        }
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown admin token",
        )
        .into_response();
    };
    let read = matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    if !read && t.role == agentwire_broker::config::AdminRole::Viewer {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("token {:?} is a viewer: it may read, not change", t.name),
        )
        .into_response();
    }
    req.extensions_mut().insert(TokenName(t.name.clone()));
    req.extensions_mut().insert(t.role);
    next.run(req).await
}

/// Serves the API on `listener` until `stop`.
pub async fn serve<L>(global: Arc<Node>, listener: L, mut stop: watch::Receiver<bool>)
where
    L: axum::serve::Listener<Addr = std::net::SocketAddr>,
{
    let app = router(global);
    let shutdown = async move {
        while !*stop.borrow() {
            if stop.changed().await.is_err() {
                break;
            }
        }
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!("admin API failed: {e}");
    }
}

async fn readyz(State(g): State<AppState>) -> Response {
    let ready = g.shards_running();
    if ready {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "shards are not running",
        )
        .into_response()
    }
}

async fn prometheus(State(g): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::render(&g),
    )
        .into_response()
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

async fn status(State(g): State<AppState>) -> Json<Value> {
    let instances = g.admin().registry.list("", "", true);
    let statuses = topology::evaluate(&instances);
    let unhealthy = instances.iter().filter(|i| !i.healthy).count();
    let overall = if unhealthy == 0
        && statuses
            .iter()
            .all(|c| c.status == topology::Status::Healthy)
    {
        "healthy"
    } else {
        "degraded"
    };
    let snap = g.stats();
    Json(json!({
        "status": overall,
        "server_id": g.server_id(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": g.admin().started.elapsed().as_secs(),
        "connections": snap.connections,
        "environment": g.admin().registry.default_environment(),
        "components": statuses,
        "last_updated_ms": now_ms(),
    }))
}

#[derive(Debug, Deserialize)]
struct SinceQuery {
    since: Option<u64>,
    name: Option<String>,
    limit: Option<usize>,
}

async fn system_metrics(
    State(g): State<AppState>,
    Query(q): Query<SinceQuery>,
) -> Result<Json<Value>, ApiError> {
    let mut v = metrics::current_json(&g);
    if let Some(since) = q.since {
        let limit = q.limit.unwrap_or(10_000).min(100_000);
        let name = q.name.clone();
        let g2 = g.clone();
        let hist = blocking(move || {
            g2.admin()
                .store
                .metrics_since(since, name.as_deref(), limit)
        })
        .await?;
        v["history"] = serde_json::to_value(hist).unwrap_or_default();
    }
    Ok(Json(v))
}

async fn optimize(State(g): State<AppState>) -> Json<Value> {
    Json(super::optimize::report(&g))
}

async fn lameduck(State(g): State<AppState>) -> Json<Value> {
    g.lame_duck();
    Json(json!({
        "lame_duck": true,
        "window_ms": g.config().lameduck_window_ms,
        "connections": g.stats().connections,
    }))
}

async fn reload(State(g): State<AppState>) -> Result<Json<Value>, ApiError> {
    match g.reload() {
        Ok(r) => Ok(Json(json!(r))),
        Err(e) => Err(ApiError::new(StatusCode::BAD_REQUEST, "reload_refused", e)),
    }
}

pub(crate) async fn deployment(State(g): State<AppState>) -> Result<Json<Value>, ApiError> {
    let g2 = g.clone();
    let rollouts = blocking(move || g2.admin().store.rollouts(None, None, 50)).await?;
    let cfg = &g.config();
    let versions: Vec<Value> = g
        .admin()
        .config_versions()
        .into_iter()
        .map(|(c, e, v)| json!({"component": c, "environment": e, "version": v}))
        .collect();
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "build": {
            "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
            "rustc_target": std::env::consts::ARCH,
            "os": std::env::consts::OS,
        },
        "server_id": g.server_id(),
        "started_at_ms": g.admin().started_ms,
        "uptime_s": g.admin().started.elapsed().as_secs(),
        "shards": g.shard_count(),
        "listeners": {
            "clients": cfg.listen.to_string(),
            "admin": g.admin().http_addr.read().map(|a| a.to_string()),
        },
        "data_dir": cfg.admin.data_dir.as_ref().map(|p| p.display().to_string()),
        "routing": match cfg.admin.routing {
            agentwire_broker::config::RoutingPolicy::Load => "load",
            agentwire_broker::config::RoutingPolicy::RoundRobin => "round-robin",
        },
        "config_versions": versions,
        "rollouts": rollouts,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertsQuery {
    state: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/v1/alerts[?state=firing|resolved][&limit=N]`: the firing alerts, the rules, and the
/// stored history (newest first, default 100, at most 10,000).
async fn alerts(
    State(g): State<AppState>,
    q: Result<Query<AlertsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad(e.body_text()))?;
    let state = match q.state.as_deref() {
        None | Some("") => None,
        Some(s @ ("firing" | "resolved")) => Some(s.to_owned()),
        Some(s) => {
            return Err(ApiError::bad(format!(
                "state must be firing or resolved (got {s:?})"
            )))
        }
    };
    let limit = q.limit.unwrap_or(100).min(10_000);
    let view = g.admin().alerts.snapshot();
    let st = state.clone();
    let g2 = g.clone();
    let history = blocking(move || g2.admin().store.alerts_history(st.as_deref(), limit)).await?;
    let firing = if state.as_deref() == Some("resolved") {
        Vec::new()
    } else {
        view.firing
    };
    Ok(Json(json!({
        "enabled": view.enabled,
        "evaluated_ms": view.evaluated_ms,
        "window_s": view.window_s,
        "firing": firing,
        "history": history,
        "rules": view.rules,
    })))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    capability: Option<String>,
    include_unhealthy: Option<bool>,
}

async fn components(State(g): State<AppState>, Query(q): Query<ListQuery>) -> Json<Value> {
    let list = g.admin().registry.list(
        "",
        q.capability.as_deref().unwrap_or(""),
        q.include_unhealthy.unwrap_or(true),
    );
    // Component statuses are derived from every live instance (a capability filter narrows the
    // instances listed, not the dependency checks).
    let all = g.admin().registry.list("", "", true);
    Json(json!({
        "instances": list.iter().map(instance_json).collect::<Vec<_>>(),
        "components": topology::evaluate(&all),
    }))
}

async fn components_graph(State(g): State<AppState>) -> Json<Value> {
    let all = g.admin().registry.list("", "", true);
    Json(json!(topology::graph(&all)))
}

async fn component(
    State(g): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let list = g.admin().registry.list(&name, "", true);
    let known = {
        let g2 = g.clone();
        let n = name.clone();
        blocking(move || g2.admin().store.component_exists(&n)).await?
    };
    if list.is_empty() && !known {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_component",
            format!("no component {name:?} is registered or known"),
        ));
    }
    let rtt = g
        .telemetry()
        .hist
        .round_trips()
        .into_iter()
        .find(|(c, _)| *c == name)
        .map(|(_, p)| p)
        .unwrap_or_default();
    let all = g.admin().registry.list("", "", true);
    let st = topology::evaluate(&all)
        .into_iter()
        .find(|c| c.name == name);
    Ok(Json(json!({
        "name": name,
        "status": st.as_ref().map_or("unhealthy", |c| c.status.as_str()),
        "depends_on": st.as_ref().map(|c| c.depends_on.clone()).unwrap_or_default(),
        "dependency_problems": st.as_ref().map(|c| c.dependency_problems.clone()).unwrap_or_default(),
        "incompatible": st.as_ref().is_some_and(|c| c.incompatible),
        "instances": list.iter().map(instance_json).collect::<Vec<_>>(),
        "request_round_trip_us": rtt,
    })))
}

async fn config_components(State(g): State<AppState>) -> Result<Json<Value>, ApiError> {
    let list = blocking(move || g.admin().store.components()).await?;
    Ok(Json(json!({"components": list})))
}

#[derive(Debug, Deserialize)]
struct EnvQuery {
    environment: Option<String>,
    limit: Option<usize>,
}

/// The environment named by the call, or the broker's default (`admin.environment`).
fn env_or_default(g: &AppState, e: Option<String>) -> String {
    e.filter(|s| !s.is_empty())
        .unwrap_or_else(|| g.admin().registry.default_environment().to_owned())
}

async fn config_get(
    State(g): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<EnvQuery>,
) -> Result<Json<Value>, ApiError> {
    // Without `environment`: the default environment's config, plus every environment's
    // current values under `environments`.
    let all = q.environment.as_deref().is_none_or(str::is_empty);
    let env = env_or_default(&g, q.environment);
    let (snap, others) = blocking(move || {
        let store = &g.admin().store;
        let snap = store.current(&name, &env)?;
        let mut others = BTreeMap::new();
        if all {
            let summary = store.components()?;
            let envs = summary
                .into_iter()
                .find(|c| c.component == name)
                .map(|c| c.environments)
                .unwrap_or_default();
            for (e, _) in envs {
                let s = store.current(&name, &e)?;
                others.insert(e, s);
            }
        }
        Ok((snap, all.then_some(others)))
    })
    .await?;
    let mut v = serde_json::to_value(snap).unwrap_or_default();
    if let (Some(others), Some(o)) = (others, v.as_object_mut()) {
        o.insert("environments".into(), json!(others));
    }
    Ok(Json(v))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    values: BTreeMap<String, Option<String>>,
    environment: Option<String>,
    expected_version: Option<u64>,
    #[serde(default)]
    create: bool,
    updated_by: Option<String>,
    /// A staged rollout: canaries first, then everyone (see `admin::rollout`).
    rollout: Option<super::rollout::RolloutRequest>,
}

/// Who makes a change: the admin token's name when tokens are in use (not something the
/// caller can choose), else the body's `updated_by`, the `X-Agentwire-User` header, or "api".
fn who(headers: &HeaderMap, token: Option<&TokenName>, body: Option<String>) -> String {
    if let Some(t) = token {
        return t.0.clone();
    }
    body.or_else(|| {
        headers
            .get("x-agentwire-user")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    })
    .unwrap_or_else(|| "api".to_owned())
}

async fn config_put(
    State(g): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    token: Option<Extension<TokenName>>,
    body: Result<Json<PutBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let b = json_body(body)?;
    let env = env_or_default(&g, b.environment);
    let by = who(&headers, token.as_ref().map(|Extension(t)| t), b.updated_by);
    let changes: Changes = b.values;
    let create = b.create;
    let expected = b.expected_version;
    if let Some(r) = b.rollout {
        let (snap, record) = blocking(move || {
            let change = ChangeRequest {
                component: &name,
                environment: &env,
                changes: &changes,
                expected_version: expected,
                create,
                by: &by,
            };
            super::rollout::start(&g, &change, &r)
        })
        .await?;
        let mut v = serde_json::to_value(snap).unwrap_or_default();
        v["rollout"] = serde_json::to_value(record).unwrap_or_default();
        return Ok(Json(v));
    }
    let snap =
        blocking(move || set_config(&g, &name, &env, &changes, expected, create, &by)).await?;
    Ok(Json(serde_json::to_value(snap).unwrap_or_default()))
}

async fn config_history(
    State(g): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<EnvQuery>,
) -> Result<Json<Value>, ApiError> {
    let env = env_or_default(&g, q.environment);
    let limit = q.limit.unwrap_or(100).min(10_000);
    let (n2, e2) = (name.clone(), env.clone());
    let versions = blocking(move || g.admin().store.history(&n2, &e2, limit)).await?;
    Ok(Json(
        json!({"component": name, "environment": env, "versions": versions}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    version: u64,
    environment: Option<String>,
    expected_version: Option<u64>,
    updated_by: Option<String>,
}

async fn config_rollback(
    State(g): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    token: Option<Extension<TokenName>>,
    body: Result<Json<RollbackBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let b = json_body(body)?;
    let env = env_or_default(&g, b.environment);
    let by = who(&headers, token.as_ref().map(|Extension(t)| t), b.updated_by);
    let snap =
        blocking(move || rollback_config(&g, &name, &env, b.version, b.expected_version, &by))
            .await?;
    Ok(Json(serde_json::to_value(snap).unwrap_or_default()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromoteBody {
    from: String,
    to: String,
    expected_version: Option<u64>,
    updated_by: Option<String>,
}

async fn config_promote(
    State(g): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    token: Option<Extension<TokenName>>,
    body: Result<Json<PromoteBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let b = json_body(body)?;
    let by = who(&headers, token.as_ref().map(|Extension(t)| t), b.updated_by);
    let (from, to) = (b.from, b.to);
    let f2 = from.clone();
    let (snap, from_version) =
        blocking(move || promote_config(&g, &name, &f2, &to, b.expected_version, &by)).await?;
    let mut v = serde_json::to_value(snap).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "promoted_from".into(),
            json!({"environment": from, "version": from_version}),
        );
        o.insert(
            "note".into(),
            json!(format!("promoted from {from} v{from_version}")),
        );
    }
    Ok(Json(v))
}

#[derive(Debug, Deserialize)]
struct RolloutQuery {
    environment: Option<String>,
    limit: Option<usize>,
}

/// The rollout in progress of a component in one environment (with each canary's figures
/// since the push) and its past rollouts, newest first.
async fn rollout_status(
    State(g): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<RolloutQuery>,
) -> Result<Json<Value>, ApiError> {
    let env = env_or_default(&g, q.environment);
    let limit = q.limit.unwrap_or(20).min(1000);
    let (g2, n2, e2) = (g.clone(), name.clone(), env.clone());
    let list = blocking(move || g2.admin().store.rollouts(Some(&n2), Some(&e2), limit)).await?;
    let active = g.admin().rollouts.live(&g, &name, &env);
    Ok(Json(json!({
        "component": name,
        "environment": env,
        "active": active,
        "rollouts": list,
    })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RolloutActionBody {
    environment: Option<String>,
    updated_by: Option<String>,
}

async fn rollout_action(
    g: AppState,
    name: String,
    headers: HeaderMap,
    token: Option<Extension<TokenName>>,
    body: Result<Json<RolloutActionBody>, JsonRejection>,
    promote: bool,
) -> Result<Json<Value>, ApiError> {
    let b = json_body(body)?;
    let env = env_or_default(&g, b.environment);
    let by = who(&headers, token.as_ref().map(|Extension(t)| t), b.updated_by);
    let record = blocking(move || {
        if promote {
            super::rollout::promote(&g, &name, &env, &by)
        } else {
            super::rollout::abort(&g, &name, &env, &by)
        }
    })
    .await?;
    Ok(Json(serde_json::to_value(record).unwrap_or_default()))
}

/// Promotes the rollout in progress now: its version goes to every instance.
async fn rollout_promote(
    State(g): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    token: Option<Extension<TokenName>>,
    body: Result<Json<RolloutActionBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    rollout_action(g, name, headers, token, body, true).await
}

/// Aborts the rollout in progress: the previous values come back as a new version.
async fn rollout_abort(
    State(g): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    token: Option<Extension<TokenName>>,
    body: Result<Json<RolloutActionBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    rollout_action(g, name, headers, token, body, false).await
}
