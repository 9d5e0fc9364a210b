//! The config pages: `/config` (every component's environments, versions and current values;
//! a form to create a component's config) and `/config/{name}?env=E` (current values, the edit
//! form, history with a diff of each version against the one before, a comparison of any two
//! versions, rollback buttons, and the staged rollouts reported by `GET
//! /api/v1/deployment/status`).
//!
//! Edits and rollbacks go through [`crate::set_config`] and
//! [`crate::rollback_config`], the code path of the REST API: same validation, same live
//! push to instances, same history. Errors are shown in the page with the form as it was sent.
//! Forms are shown to operators only; a viewer's POST is refused (403) by the middleware.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use maud::{html, Markup};
use serde::Deserialize;

use super::{ago, json_table, layout, respond, Access, AppState, Nav};
use crate::store::{Changes, ComponentSummary, ConfigSnapshot, StoreError, VersionInfo};
use crate::{rollback_config, set_config};
use agentwire_broker::config::AdminRole;

/// The HTTP status of a store error (as the REST API answers).
fn status_of(e: &StoreError) -> StatusCode {
    match e {
        StoreError::UnknownComponent(_)
        | StoreError::NoSuchVersion { .. }
        | StoreError::UnknownEnvironment { .. }
        | StoreError::NoRollout(_) => StatusCode::NOT_FOUND,
        StoreError::RolloutInProgress { .. } | StoreError::NoCanary(_) => StatusCode::CONFLICT,
        StoreError::Invalid { .. } => StatusCode::BAD_REQUEST,
        StoreError::VersionConflict { .. } => StatusCode::CONFLICT,
        StoreError::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
        StoreError::ReadOnly(_) | StoreError::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn run<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StoreError::Storage(format!("internal error: {e}"))))
}

/// Parses the edit form's text: one `key=value` per line sets a key, `-key` removes it; blank
/// lines and lines starting with `#` are skipped. Keys and values are trimmed.
///
/// # Errors
/// A line that is neither form, an empty key, or no change at all (message names the line).
pub fn parse_changes(text: &str) -> Result<Changes, String> {
    let mut out = Changes::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(key) = line.strip_prefix('-') {
            let key = key.trim();
            if key.is_empty() {
                return Err(format!("line {}: `-` needs a key to remove", n + 1));
            }
            out.insert(key.to_owned(), None);
        } else if let Some((k, v)) = line.split_once('=') {
            let k = k.trim();
            if k.is_empty() {
                return Err(format!("line {}: the key before `=` is empty", n + 1));
            }
            out.insert(k.to_owned(), Some(v.trim().to_owned()));
        } else {
            return Err(format!(
                "line {}: expected `key=value` or `-key`, got {line:?}",
                n + 1
            ));
        }
    }
    if out.is_empty() {
        return Err("no change given: write `key=value` lines".into());
    }
    Ok(out)
}

/// One key's change between two versions: (key, old value, new value).
pub type KeyDiff = (String, Option<String>, Option<String>);

/// The keys that differ between `old` and `new`.
pub fn diff(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Vec<KeyDiff> {
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| old.get(*k) != new.get(*k))
        .map(|k| ((*k).clone(), old.get(k).cloned(), new.get(k).cloned()))
        .collect()
}

fn diff_list(d: &[KeyDiff]) -> Markup {
    html! {
        @if d.is_empty() { span.note { "no change" } }
        ul.diff {
            @for (k, a, b) in d {
                @match (a, b) {
                    (None, Some(b)) => li.add { "+ " code { (k) } " = " code { (b) } },
                    (Some(a), None) => li.del { "− " code { (k) } " (was " code { (a) } ")" },
                    (Some(a), Some(b)) => li.chg { "~ " code { (k) } ": " code { (a) } " → " code { (b) } },
                    (None, None) => {},
                }
            }
        }
    }
}

fn values_table(values: &BTreeMap<String, String>, id: &str) -> Markup {
    html! {
        @if values.is_empty() { p.note { "No values set." } }
        @else {
            table #(id) .values {
                thead { tr { th { "key" } th { "value" } } }
                tbody { @for (k, v) in values { tr data-key=(k) { td { code { (k) } } td { code { (v) } } } } }
            }
        }
    }
}

/// `GET /config`.
pub async fn list_page(State(g): State<AppState>, role: Option<Extension<AdminRole>>) -> Response {
    list_render(g, Access::of(role), None, None).await
}

async fn list_render(
    g: AppState,
    access: Access,
    error: Option<(StatusCode, String)>,
    form: Option<&CreateForm>,
) -> Response {
    let g2 = g.clone();
    let loaded = run(move || {
        let comps = g2.admin().store.components()?;
        let mut out: Vec<(ComponentSummary, Vec<ConfigSnapshot>)> = Vec::new();
        for c in comps.into_iter().take(200) {
            let mut snaps = Vec::new();
            for (env, _) in &c.environments {
                snaps.push(g2.admin().store.current(&c.component, env)?);
            }
            out.push((c, snaps));
        }
        Ok(out)
    })
    .await;
    let (status, err) = match (&error, &loaded) {
        (Some((s, e)), _) => (*s, Some(e.clone())),
        (None, Err(e)) => (status_of(e), Some(e.to_string())),
        _ => (StatusCode::OK, None),
    };
    let list = loaded.unwrap_or_default();
    let body = html! {
        @if let Some(e) = &err { p.error #config-error { (e) } }
        @if list.is_empty() { p.note { "No component has configuration yet." } }
        @for (c, snaps) in &list {
            section.component-config data-component=(c.component) {
                h2 { a href={ "/config/" (c.component) } { (c.component) } }
                @if snaps.is_empty() { p.note { "No values set in any environment." } }
                @for s in snaps {
                    h3 {
                        a href={ "/config/" (c.component) "?env=" (s.environment) } { (s.environment) }
                        " · version " (s.version) " · " (ago(s.updated_at_ms)) " by " (s.updated_by)
                    }
                    (values_table(&s.values, &format!("values-{}-{}", c.component, s.environment)))
                }
            }
        }
        @if access.write {
            h2 { "New configuration" }
            form #create-form method="post" action="/config" {
                label { "component " input name="component" required value=[form.map(|f| f.component.as_str())]; }
                label { "environment " input name="environment" value=(form.map_or("default", |f| f.environment.as_str())); }
                label.block { "values (one " code { "key=value" } " per line)"
                    textarea name="changes" rows="4" { (form.map_or("", |f| f.changes.as_str())) } }
                button type="submit" { "Create" }
            }
        }
    };
    respond(status, layout("Config", Nav::Config, access, None, body))
}

/// The create form.
#[derive(Debug, Deserialize)]
pub struct CreateForm {
    component: String,
    #[serde(default)]
    environment: String,
    #[serde(default)]
    changes: String,
}

/// The environment named, or the broker's default environment (`--environment`).
fn env_or_default(g: &AppState, e: &str) -> String {
    let e = e.trim();
    if e.is_empty() {
        g.admin().registry.default_environment().to_owned()
    } else {
        e.to_owned()
    }
}

fn who(name: Option<Extension<crate::auth::TokenName>>) -> String {
    name.map_or_else(|| "dashboard".to_owned(), |Extension(t)| t.0)
}

/// `POST /config`: creates a component's config (a first version).
pub(crate) async fn create(
    State(g): State<AppState>,
    role: Option<Extension<AdminRole>>,
    name: Option<Extension<crate::auth::TokenName>>,
    form: Result<Form<CreateForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let access = Access::of(role);
    let Ok(Form(f)) = form else {
        return list_render(
            g,
            access,
            Some((StatusCode::BAD_REQUEST, "malformed form".into())),
            None,
        )
        .await;
    };
    let changes = match parse_changes(&f.changes) {
        Ok(c) => c,
        Err(e) => {
            return list_render(g, access, Some((StatusCode::BAD_REQUEST, e)), Some(&f)).await
        }
    };
    let env = env_or_default(&g, &f.environment);
    let (g2, comp, e2, by) = (
        g.clone(),
        f.component.trim().to_owned(),
        env.clone(),
        who(name),
    );
    match run(move || set_config(&g2, &comp, &e2, &changes, None, true, &by)).await {
        Ok(s) => Redirect::to(&format!(
            "/config/{}?env={}&saved={}",
            enc(&s.component),
            enc(&s.environment),
            s.version
        ))
        .into_response(),
        Err(e) => list_render(g, access, Some((status_of(&e), e.to_string())), Some(&f)).await,
    }
}

/// Percent-encodes a query or path value.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Query of the detail page.
#[derive(Debug, Default, Deserialize)]
pub struct DetailQuery {
    env: Option<String>,
    from: Option<u64>,
    to: Option<u64>,
    saved: Option<u64>,
}

/// What the detail page shows besides the stored data: a message, and the form as sent.
#[derive(Debug, Default)]
struct Notice {
    status: Option<StatusCode>,
    error: Option<String>,
    changes: Option<String>,
}

impl Notice {
    /// An error notice with `status` and no form text to put back.
    fn error(status: StatusCode, msg: impl Into<String>) -> Notice {
        Notice {
            status: Some(status),
            error: Some(msg.into()),
            changes: None,
        }
    }
}

/// `GET /config/{name}`.
pub async fn detail_page(
    State(g): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<DetailQuery>,
    role: Option<Extension<AdminRole>>,
) -> Response {
    detail_render(g, name, q, Access::of(role), Notice::default()).await
}

struct Loaded {
    current: ConfigSnapshot,
    history: Vec<VersionInfo>,
    environments: Vec<(String, u64)>,
    compare: Option<(VersionInfo, VersionInfo)>,
}

async fn detail_render(
    g: AppState,
    name: String,
    q: DetailQuery,
    access: Access,
    notice: Notice,
) -> Response {
    let env = env_or_default(&g, q.env.as_deref().unwrap_or(""));
    let (g2, n2, e2) = (g.clone(), name.clone(), env.clone());
    let (from, to) = (q.from, q.to);
    let loaded = run(move || {
        let store = &g2.admin().store;
        let current = store.current(&n2, &e2)?;
        let history = store.history(&n2, &e2, 50)?;
        let environments = store
            .components()?
            .into_iter()
            .find(|c| c.component == n2)
            .map(|c| c.environments)
            .unwrap_or_default();
        let compare = match (from, to) {
            (Some(a), Some(b)) => Some((store.version(&n2, &e2, a)?, store.version(&n2, &e2, b)?)),
            _ => None,
        };
        Ok(Loaded {
            current,
            history,
            environments,
            compare,
        })
    })
    .await;
    let rollouts = rollouts(&g, &name, &env).await;
    let (status, error) = match (&notice.error, &loaded) {
        (Some(e), _) => (
            notice.status.unwrap_or(StatusCode::BAD_REQUEST),
            Some(e.clone()),
        ),
        (None, Err(e)) => (status_of(e), Some(e.to_string())),
        (None, Ok(_)) => (StatusCode::OK, None),
    };
    let base = format!("/config/{}", enc(&name));
    let body = html! {
        p { a href={ "/components/" (enc(&name)) } { "Instances of " (name) } " · " a href="/config" { "All configs" } }
        @if let Some(e) = &error { p.error #config-error { (e) } }
        @if let Some(v) = q.saved { p.ok #config-saved { "Saved: version " (v) " is live." } }
        @if let Ok(l) = &loaded {
            nav.envs {
                "environments: "
                @for (e, v) in &l.environments {
                    a href={ (base) "?env=" (enc(e)) } class=@if *e == env { "active" } { (e) " (v" (v) ")" } " "
                }
                @if !l.environments.iter().any(|(e, _)| *e == env) { b { (env) " (nothing set)" } }
            }
            h2 { "Current values (" (env) ", version " span #current-version { (l.current.version) } ")" }
            (values_table(&l.current.values, "current-values"))
            @if access.write {
                h2 { "Edit" }
                form #config-form method="post" action=(base) {
                    input type="hidden" name="environment" value=(env);
                    input type="hidden" name="expected_version" value=(l.current.version);
                    label.block {
                        "Changes: one " code { "key=value" } " per line sets a key, " code { "-key" } " removes it"
                        textarea #changes name="changes" rows="5" placeholder="latency_ms=5" {
                            (notice.changes.as_deref().unwrap_or(""))
                        }
                    }
                    button #config-submit type="submit" { "Save as version " (l.current.version + 1) }
                }
            }
            h2 { "History" }
            @if l.history.is_empty() { p.note { "No version yet." } }
            @else {
                form.inline #compare-form method="get" action=(base) {
                    input type="hidden" name="env" value=(env);
                    "Compare version " input type="number" name="from" min="1" required value=[q.from];
                    " with " input type="number" name="to" min="1" required value=[q.to];
                    button type="submit" { "Compare" }
                }
                @if let Some((a, b)) = &l.compare {
                    div #compare {
                        h3 { "Version " (a.version) " → version " (b.version) }
                        (diff_list(&diff(&a.values, &b.values)))
                    }
                }
                table #history {
                    thead { tr { th { "version" } th { "when" } th { "by" } th { "action" } th { "changes from the version before" } th {} } }
                    tbody {
                        @for (i, v) in l.history.iter().enumerate() {
                            @let empty = BTreeMap::new();
                            @let before = l.history.get(i + 1).map_or(&empty, |p| &p.values);
                            tr data-version=(v.version) {
                                td { (v.version) }
                                td { (ago(v.updated_at_ms)) }
                                td { (v.updated_by) }
                                td { (v.action) @if let Some(r) = v.rollback_of { " of " (r) } }
                                td { (diff_list(&diff(before, &v.values))) }
                                td {
                                    @if access.write && v.version != l.current.version {
                                        form.inline method="post" action={ (base) "/rollback" } {
                                            input type="hidden" name="environment" value=(env);
                                            input type="hidden" name="version" value=(v.version);
                                            input type="hidden" name="expected_version" value=(l.current.version);
                                            button type="submit" { "Roll back to " (v.version) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Rollouts" }
        section #rollouts { (rollouts) }
    };
    respond(
        status,
        layout(&format!("Config {name}"), Nav::Config, access, None, body),
    )
}

/// The staged rollouts of `component` in `environment`: the one in progress with each canary's
/// figures since the push (as `GET /api/v1/config/components/{name}/rollout` answers), then the
/// past ones, newest first.
async fn rollouts(g: &AppState, component: &str, environment: &str) -> Markup {
    let (g2, c2, e2) = (g.clone(), component.to_owned(), environment.to_owned());
    let past = match run(move || g2.admin().store.rollouts(Some(&c2), Some(&e2), 20)).await {
        Ok(list) => list,
        Err(e) => return html! { p.error { "cannot read the rollouts: " (e) } },
    };
    let active = g.admin().rollouts.live(g, component, environment);
    let items: Vec<serde_json::Value> = past
        .iter()
        .map(|r| {
            serde_json::json!({
                "id": r.id,
                "state": r.state,
                "versions": format!("v{} → v{}", r.from_version, r.to_version),
                "rollback": r.rollback_version.map(|v| format!("v{v}")),
                "canaries": r.canaries.join(", "),
                "started": r.started_at_ms,
                "by": r.started_by,
                "ended": r.ended_at_ms,
                "reason": r.reason,
            })
        })
        .collect();
    html! {
        @if let Some(a) = active {
            div #rollout-active {
                h3 { "In progress" }
                (json_table(std::slice::from_ref(&a), "rollout-active-table"))
            }
        }
        @if items.is_empty() {
            p.note { "No staged rollout of " (component) " in " (environment) ". Stage one with "
                code { "agentwire config set " (component) " k=v --canary 1 --bake 30" } "." }
        } @else {
            (json_table(&items, "rollout-table"))
        }
    }
}

/// The edit form.
#[derive(Debug, Deserialize)]
pub struct EditForm {
    #[serde(default)]
    environment: String,
    #[serde(default)]
    expected_version: String,
    #[serde(default)]
    changes: String,
}

/// `POST /config/{name}`: a new version from the edit form.
pub(crate) async fn edit(
    State(g): State<AppState>,
    Path(name): Path<String>,
    role: Option<Extension<AdminRole>>,
    token: Option<Extension<crate::auth::TokenName>>,
    form: Result<Form<EditForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let access = Access::of(role);
    let Ok(Form(f)) = form else {
        let n = Notice::error(StatusCode::BAD_REQUEST, "malformed form");
        return detail_render(g, name, DetailQuery::default(), access, n).await;
    };
    let env = env_or_default(&g, &f.environment);
    let q = DetailQuery {
        env: Some(env.clone()),
        ..DetailQuery::default()
    };
    let fail = |status: StatusCode, e: String, changes: String| Notice {
        status: Some(status),
        error: Some(e),
        changes: Some(changes),
    };
    let expected = match f.expected_version.trim() {
        "" => None,
        v => match v.parse::<u64>() {
            Ok(v) => Some(v),
            Err(_) => {
                let n = fail(
                    StatusCode::BAD_REQUEST,
                    format!("expected_version {v:?} is not a number"),
                    f.changes,
                );
                return detail_render(g, name, q, access, n).await;
            }
        },
    };
    let changes = match parse_changes(&f.changes) {
        Ok(c) => c,
        Err(e) => {
            let n = fail(StatusCode::BAD_REQUEST, e, f.changes);
            return detail_render(g, name, q, access, n).await;
        }
    };
    let (g2, n2, e2, by) = (g.clone(), name.clone(), env.clone(), who(token));
    match run(move || set_config(&g2, &n2, &e2, &changes, expected, false, &by)).await {
        Ok(s) => Redirect::to(&format!(
            "/config/{}?env={}&saved={}",
            enc(&name),
            enc(&env),
            s.version
        ))
        .into_response(),
        Err(e) => {
            let n = fail(status_of(&e), e.to_string(), f.changes);
            detail_render(g, name, q, access, n).await
        }
    }
}

/// The rollback form.
#[derive(Debug, Deserialize)]
pub struct RollbackForm {
    #[serde(default)]
    environment: String,
    version: u64,
    expected_version: Option<u64>,
}

/// `POST /config/{name}/rollback`.
pub(crate) async fn rollback(
    State(g): State<AppState>,
    Path(name): Path<String>,
    role: Option<Extension<AdminRole>>,
    token: Option<Extension<crate::auth::TokenName>>,
    form: Result<Form<RollbackForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let access = Access::of(role);
    let Ok(Form(f)) = form else {
        let n = Notice::error(
            StatusCode::BAD_REQUEST,
            "malformed rollback form (needs a version number)",
        );
        return detail_render(g, name, DetailQuery::default(), access, n).await;
    };
    let env = env_or_default(&g, &f.environment);
    let (g2, n2, e2, by) = (g.clone(), name.clone(), env.clone(), who(token));
    let (to, expected) = (f.version, f.expected_version);
    match run(move || rollback_config(&g2, &n2, &e2, to, expected, &by)).await {
        Ok(s) => Redirect::to(&format!(
            "/config/{}?env={}&saved={}",
            enc(&name),
            enc(&env),
            s.version
        ))
        .into_response(),
        Err(e) => {
            let q = DetailQuery {
                env: Some(env),
                ..DetailQuery::default()
            };
            let n = Notice::error(status_of(&e), e.to_string());
            detail_render(g, name, q, access, n).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_parse_with_line_errors() {
        let c = parse_changes("a=1\n\n# note\n - b \nc = x=y\n").expect("valid");
        assert_eq!(c.get("a"), Some(&Some("1".to_owned())));
        assert_eq!(c.get("b"), Some(&None));
        assert_eq!(c.get("c"), Some(&Some("x=y".to_owned())));
        assert!(parse_changes("oops")
            .expect_err("invalid")
            .contains("line 1"));
        assert!(parse_changes("a=1\n=2")
            .expect_err("invalid")
            .contains("line 2"));
        assert!(parse_changes("-").is_err());
        assert!(parse_changes("  \n")
            .expect_err("invalid")
            .contains("no change"));
    }

    #[test]
    fn diffs_name_added_removed_and_changed_keys() {
        let m = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>()
        };
        let d = diff(&m(&[("a", "1"), ("b", "2")]), &m(&[("b", "3"), ("c", "4")]));
        assert_eq!(
            d,
            vec![
                ("a".into(), Some("1".into()), None),
                ("b".into(), Some("2".into()), Some("3".into())),
                ("c".into(), None, Some("4".into())),
            ]
        );
        assert_eq!(enc("a b/é"), "a%20b%2F%C3%A9");
    }
}
