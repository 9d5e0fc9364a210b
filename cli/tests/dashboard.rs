//! The web dashboard against a real broker on loopback: login cookie and roles over plain HTTP
//! (redirect to `/login`, the cookie accepted like a bearer token, a viewer's POST refused, the
//! edit form through the config center, the live event stream), and the real-browser test:
//! headless Debian chromium driven by `cli/tests/browser/dashboard.mjs` (playwright-core)
//! while traffic runs and a registered instance watches its config. The browser test fails,
//! never skips, when chromium, node or the script's `node_modules` are missing
//! (`scripts/test.sh` installs them).

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentwire_admin::Broker;
use agentwire_broker::config::{AdminRole, AdminToken};
use agentwire_broker::Config;
use agentwire_client::{Client, ConnectOptions, Registration};
use serde_json::Value;

const OPERATOR: &str = "operator-token-0123456789";
const VIEWER: &str = "viewer-token-0123456789";

fn dash_config(tokens: bool) -> Config {
    let mut c = common::admin_config(200);
    c.admin.data_dir = None;
    if tokens {
        c.admin.tokens = vec![
            AdminToken {
                name: "watcher".into(),
                token: VIEWER.into(),
                role: AdminRole::Viewer,
            },
            AdminToken {
                name: "ops".into(),
                token: OPERATOR.into(),
                role: AdminRole::Operator,
            },
        ];
    }
    c
}

fn cookie(token: &str) -> String {
    use base64::Engine as _;
    format!(
        "agentwire_admin={}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.as_bytes())
    )
}

/// A blocking HTTP call that does not follow redirects: (status, Location, Set-Cookie, body).
fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: Option<&str>,
) -> (u16, String, String, String) {
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let mut req = agent.request(method, &format!("http://{addr}{path}"));
    if let Some(c) = cookie {
        req = req.set("Cookie", c);
    }
    let r = match form {
        Some(f) => req
            .set("Content-Type", "application/x-www-form-urlencoded")
            .send_string(f),
        None => req.call(),
    };
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let status = resp.status();
    let loc = resp.header("location").unwrap_or_default().to_owned();
    let set = resp.header("set-cookie").unwrap_or_default().to_owned();
    let body = resp.into_string().expect("body");
    (status, loc, set, body)
}

async fn acall(
    addr: SocketAddr,
    method: &'static str,
    path: String,
    cookie: Option<String>,
    form: Option<String>,
) -> (u16, String, String, String) {
    tokio::task::spawn_blocking(move || {
        call(addr, method, &path, cookie.as_deref(), form.as_deref())
    })
    .await
    .expect("http task")
}

async fn client(h: &Broker, name: &str) -> Client {
    ConnectOptions::new()
        .name(name)
        .connect(&h.local_addr().to_string())
        .await
        .expect("connect")
}

fn reg(component: &str, id: &str, depends_on: Option<&str>) -> Registration {
    Registration {
        component: component.into(),
        instance_id: id.into(),
        version: "1.2.0".into(),
        capabilities: vec!["plan".into()],
        subjects: vec![format!("{component}.>")],
        depends_on: depends_on.map(|d| vec![d.to_owned()]).unwrap_or_default(),
        ..Registration::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_cookie_roles_forms_and_live_events() {
    let h = common::start(dash_config(true));
    let addr = h.admin_addr().expect("admin");
    let c = client(&h, "planner-0").await;
    let m = c
        .register(reg("planner", "planner-0", None))
        .await
        .expect("register");
    let mut watch = m.config_watch();
    let first = tokio::time::timeout(common::WAIT, watch.next())
        .await
        .expect("current config")
        .expect("open");
    assert_eq!(first.version(), 0);

    // No token: pages redirect to the login form, the API answers 401, assets are open.
    let (s, loc, ..) = acall(addr, "GET", "/".into(), None, None).await;
    assert_eq!((s, loc.as_str()), (303, "/login"));
    let (s, ..) = acall(addr, "GET", "/config/planner".into(), None, None).await;
    assert_eq!(s, 303);
    let (s, ..) = acall(addr, "GET", "/api/v1/system/status".into(), None, None).await;
    assert_eq!(s, 401);
    let (s, ..) = acall(addr, "GET", "/dashboard/events".into(), None, None).await;
    assert_eq!(s, 401, "the event stream needs a token");
    let (s, _, _, js) = acall(
        addr,
        "GET",
        "/dashboard/assets/dashboard.js".into(),
        None,
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert!(js.contains("EventSource"));

    // Login: a wrong token is refused in the page; the right one sets the cookie.
    let (s, _, set, body) = acall(
        addr,
        "POST",
        "/login".into(),
        None,
        Some("token=wrong-token-000000000".into()),
    )
    .await;
    assert_eq!(s, 401);
    assert!(
        set.is_empty() && body.contains("unknown admin token"),
        "{body}"
    );
    let (s, loc, set, _) = acall(
        addr,
        "POST",
        "/login".into(),
        None,
        Some(format!("token={OPERATOR}")),
    )
    .await;
    assert_eq!((s, loc.as_str()), (303, "/"));
    assert!(
        set.starts_with(&cookie(OPERATOR))
            && set.contains("HttpOnly")
            && set.contains("SameSite=Strict"),
        "{set}"
    );
    // The cookie counts as a bearer token, in the pages and in the API.
    let op = cookie(OPERATOR);
    let view = cookie(VIEWER);
    let (s, _, _, v) = acall(
        addr,
        "GET",
        "/api/v1/system/status".into(),
        Some(view.clone()),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, _, _, page) = acall(addr, "GET", "/".into(), Some(op.clone()), None).await;
    assert_eq!(s, 200);
    assert!(page.contains("id=\"v-msgs-in-total\""), "{page}");
    let (s, loc, ..) = acall(
        addr,
        "GET",
        "/".into(),
        Some(cookie("not-a-known-token-0000")),
        None,
    )
    .await;
    assert_eq!((s, loc.as_str()), (303, "/login"), "an unknown cookie");

    // A viewer sees no edit form and its POSTs are refused.
    let (s, _, _, page) = acall(
        addr,
        "GET",
        "/config/planner".into(),
        Some(view.clone()),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert!(!page.contains("id=\"config-form\""), "{page}");
    let (s, ..) = acall(
        addr,
        "POST",
        "/config/planner".into(),
        Some(view.clone()),
        Some("environment=default&changes=depth%3D9".into()),
    )
    .await;
    assert_eq!(s, 403);

    // The operator's form: a bad line is shown in the page (400), a good one is a new version
    // pushed to the instance; a stale expected version is a conflict (409).
    let (s, _, _, page) = acall(
        addr,
        "GET",
        "/config/planner".into(),
        Some(op.clone()),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert!(page.contains("id=\"config-form\""), "{page}");
    let (s, _, _, page) = acall(
        addr,
        "POST",
        "/config/planner".into(),
        Some(op.clone()),
        Some("environment=default&changes=depth".into()),
    )
    .await;
    assert_eq!(s, 400);
    assert!(page.contains("line 1: expected"), "{page}");
    let (s, loc, ..) = acall(
        addr,
        "POST",
        "/config/planner".into(),
        Some(op.clone()),
        Some("environment=default&expected_version=0&changes=depth%3D4%0Amode%3Dfast".into()),
    )
    .await;
    assert_eq!(
        (s, loc.as_str()),
        (303, "/config/planner?env=default&saved=1")
    );
    let got = tokio::time::timeout(common::WAIT, watch.next())
        .await
        .expect("pushed")
        .expect("open");
    assert_eq!((got.version(), got.get("depth")), (1, Some("4")));
    let (s, _, _, page) = acall(
        addr,
        "POST",
        "/config/planner".into(),
        Some(op.clone()),
        Some("environment=default&expected_version=0&changes=depth%3D5".into()),
    )
    .await;
    assert_eq!(s, 409, "{page}");
    assert!(page.contains("version conflict"), "{page}");
    // Rollback through the page's button form.
    let (s, ..) = acall(
        addr,
        "POST",
        "/config/planner".into(),
        Some(op.clone()),
        Some("environment=default&changes=-mode".into()),
    )
    .await;
    assert_eq!(s, 303);
    let (s, loc, ..) = acall(
        addr,
        "POST",
        "/config/planner/rollback".into(),
        Some(op.clone()),
        Some("environment=default&version=1&expected_version=2".into()),
    )
    .await;
    assert_eq!(
        (s, loc.as_str()),
        (303, "/config/planner?env=default&saved=3")
    );
    let (_, _, _, page) = acall(
        addr,
        "GET",
        "/config/planner?from=2&to=3".into(),
        Some(op.clone()),
        None,
    )
    .await;
    assert!(page.contains("id=\"compare\""), "{page}");
    assert!(page.contains("rollback"), "{page}");

    // The live stream: `fragments` events with the overview's pieces, once a second.
    let stream = tokio::task::spawn_blocking(move || {
        let resp = ureq::get(&format!("http://{addr}/dashboard/events?page=overview"))
            .set("Cookie", &op)
            .timeout(Duration::from_secs(20))
            .call()
            .expect("event stream");
        assert_eq!(
            resp.header("content-type").unwrap_or_default(),
            "text/event-stream"
        );
        let mut events = 0;
        let mut tiles = false;
        let reader = BufReader::new(resp.into_reader());
        for line in reader.lines().take(10_000) {
            let line = line.expect("stream line");
            if line == "event: fragments" {
                events += 1;
            }
            if let Some(data) = line.strip_prefix("data: ") {
                let v: Value = serde_json::from_str(data).expect("fragment JSON");
                tiles |= v["tiles"].as_str().is_some_and(|t| t.contains("v-msgs-in"));
            }
            if events >= 2 && tiles {
                break;
            }
        }
        (events, tiles)
    })
    .await
    .expect("stream task");
    assert!(stream.0 >= 2 && stream.1, "{stream:?}");
    drop(m);
    h.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_the_dashboard_is_open() {
    let h = common::start(dash_config(false));
    let addr = h.admin_addr().expect("admin");
    for p in ["/", "/components", "/config", "/alerts", "/connections"] {
        let (s, _, _, page) = acall(addr, "GET", p.into(), None, None).await;
        assert_eq!(s, 200, "{p}: {page}");
        assert!(page.contains("<!DOCTYPE html>"), "{p}");
        assert!(!page.contains("Log out"), "{p}");
    }
    let (s, _, _, page) = acall(addr, "GET", "/components/nothing".into(), None, None).await;
    assert_eq!(s, 404, "{page}");
    let (s, loc, ..) = acall(
        addr,
        "POST",
        "/config".into(),
        None,
        Some("component=fresh&environment=prod&changes=a%3D1".into()),
    )
    .await;
    assert_eq!((s, loc.as_str()), (303, "/config/fresh?env=prod&saved=1"));
    // `agentwire dashboard` checks the dashboard answers and prints its address.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(common::BIN)
            .args(["dashboard", "--admin", &addr.to_string()])
            .output()
            .expect("run agentwire dashboard")
    })
    .await
    .expect("cli task");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("http://{addr}/\n")
    );
    h.shutdown();
}

/// Where the screenshots go: `<target dir>/dashboard-screenshots`.
fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("dashboard-screenshots")
}

/// Fails (never skips) when the browser test cannot run here.
fn require_browser(script_dir: &std::path::Path) {
    let mut missing = Vec::new();
    if !std::path::Path::new("/usr/bin/chromium").exists() {
        missing.push("Debian's chromium (/usr/bin/chromium)");
    }
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        missing.push("node");
    }
    if !script_dir.join("node_modules/playwright-core").is_dir() {
        missing.push("cli/tests/browser/node_modules (npm ci there)");
    }
    assert!(
        missing.is_empty(),
        "the dashboard browser test cannot run: missing {}. scripts/test.sh installs them \
         (apt-get install chromium, npm ci in cli/tests/browser).",
        missing.join(", ")
    );
}

#[ignore = "needs chromium and playwright-core: run by scripts/test.sh, which installs them (cargo test -p agentwire-cli --test dashboard -- --ignored)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_real_browser() {
    let script_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    require_browser(&script_dir);
    let shots = screenshot_dir();
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).expect("screenshot dir");

    // The component latency rule with a low threshold, a short window and `for`: the store
    // component below answers in 40 ms, so the alerts page must show it firing.
    let mut cfg = dash_config(true);
    cfg.alerts = toml::from_str(
        "eval_interval_ms = 200\nwindow_s = 5\nmin_samples = 3\n\
         [component_latency]\nthreshold = 20\nfor_s = 1\n\
         [resources]\nenabled = false\n[anomaly]\nenabled = false\n",
    )
    .expect("alerts config");
    cfg.validate().expect("valid test config");
    let h = common::start(cfg);
    let admin = h.admin_addr().expect("admin");

    // Components: planner (depends on store) with one instance watching its config, and store.
    let pc = client(&h, "planner-0").await;
    let planner = pc
        .register(reg("planner", "planner-0", Some("store")))
        .await
        .expect("register planner");
    let sc = client(&h, "store-0").await;
    let _store = sc
        .register(reg("store", "store-0", None))
        .await
        .expect("register store");
    // The store serves `store.>` in its queue group, answering each request after 40 ms.
    let mut store_reqs = sc
        .queue_subscribe("store.>", "store")
        .await
        .expect("store serves");
    let store_server = tokio::spawn(async move {
        while let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_secs(10), store_reqs.next()).await
        {
            let sc = sc.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(40)).await;
                let _ = sc.respond(&m, &b"stored"[..]).await;
            });
        }
    });
    let mut watch = planner.config_watch();
    let first = tokio::time::timeout(common::WAIT, watch.next())
        .await
        .expect("current config")
        .expect("open");
    assert_eq!(first.version(), 0);
    let received = tokio::spawn(async move {
        // Bounded: the browser run is at most 240 s.
        let deadline = Instant::now() + Duration::from_secs(300);
        while Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(5), watch.next()).await {
                Ok(Some(c)) if c.get("latency_ms") == Some("7") => return Some(c.version()),
                Ok(Some(_)) | Err(_) => {}
                Ok(None) => return None,
            }
        }
        None
    });

    // Traffic for the overview to show: a publisher and a subscriber, until the run ends.
    let stop = Arc::new(AtomicBool::new(false));
    let sub_client = client(&h, "load-sub").await;
    let mut sub = sub_client.subscribe("load.>").await.expect("subscribe");
    let drain = tokio::spawn(async move {
        let mut n = 0u64;
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
            n += 1;
        }
        n
    });
    let pub_client = client(&h, "load-pub").await;
    let traffic = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(300) {
                for _ in 0..20 {
                    if pub_client
                        .publish("load.tick", &b"dashboard traffic"[..])
                        .await
                        .is_ok()
                    {
                        sent += 1;
                    }
                }
                // A request to the slow store (answered in 40 ms) every round.
                let c = pub_client.clone();
                tokio::spawn(async move {
                    let _ = c
                        .request("store.get", &b"key"[..], Duration::from_secs(2))
                        .await;
                });
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sent
        })
    };

    let url = format!("http://{admin}");
    let shots2 = shots.clone();
    let script = script_dir.join("dashboard.mjs");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(&script)
            .arg(&url)
            .arg(&shots2)
            .env("DASH_OPERATOR_TOKEN", OPERATOR)
            .env("DASH_VIEWER_TOKEN", VIEWER)
            .env("DASH_COMPONENT", "planner")
            .env("DASH_CONFIG", "latency_ms=7")
            // The store's 40 ms answers fire the component latency rule (threshold 20 ms).
            .env("DASH_EXPECT_ALERT", "1")
            .output()
            .expect("run node")
    })
    .await
    .expect("browser task");
    stop.store(true, Ordering::Relaxed);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "the browser test failed ({}):\n{stdout}\n{stderr}",
        out.status
    );

    // The instance received the value set through the UI form.
    let v = tokio::time::timeout(Duration::from_secs(30), received)
        .await
        .expect("the config push within 30 s")
        .expect("watch task");
    assert!(
        v.is_some(),
        "the planner instance never received latency_ms=7"
    );
    let sent = traffic.await.expect("traffic task");
    assert!(sent > 0);
    for name in [
        "login",
        "config-viewer",
        "overview",
        "components",
        "component-detail",
        "config",
        "config-list",
        "alerts",
        "connections",
    ] {
        let p = shots.join(format!("{name}.png"));
        let len = std::fs::metadata(&p).map_or(0, |m| m.len());
        assert!(len > 1000, "screenshot {} missing or empty", p.display());
    }
    // The alert the page showed is the engine's: the store's latency rule, in the API too.
    let (code, _, _, body) = acall(
        admin,
        "GET",
        "/api/v1/alerts".into(),
        Some(cookie(OPERATOR)),
        None,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let alerts: Value = serde_json::from_str(&body).expect("alerts JSON");
    let fired = alerts["firing"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(alerts["resolved"].as_array().into_iter().flatten())
        .any(|a| a["rule"] == "component_latency" && a["labels"]["component"] == "store");
    assert!(fired, "no component_latency alert for store: {alerts}");
    store_server.abort();
    drop(sub_client);
    let _ = drain.await;
    h.shutdown();
}
