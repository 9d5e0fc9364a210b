//! Environments, promote and component dependencies against real brokers on loopback: real
//! clients registering with `depends_on` and versions (degraded → healthy as dependencies
//! arrive, back to degraded when one leaves, incompatible versions flagged, the graph and the
//! Prometheus gauge), the broker's and the client's default environment, `promote` over HTTP
//! (live push, history, 404/409/400), and the same through the `agentwire` binary.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use agentwire_admin::Broker;
use agentwire_client::{Client, ConnectOptions, Membership, Registration};
use common::{admin_config_lasting as admin_config, free_addr, text, BIN, WAIT};
use serde_json::{json, Value};

/// Generous bound for anything the broker should show soon (slow, shared machines).
const POLL: Duration = Duration::from_secs(30);

#[derive(Clone, Copy)]
struct Api(SocketAddr);

impl Api {
    fn of(h: &Broker) -> Api {
        Api(h.admin_addr().expect("admin API configured"))
    }

    async fn get(self, path: &str) -> (u16, Value) {
        common::ahttp_json(self.0, "GET", path, None, Some(Duration::from_secs(10))).await
    }

    async fn send(self, method: &'static str, path: &str, body: Value) -> (u16, Value) {
        let b = Some(body.to_string());
        common::ahttp_json(self.0, method, path, b, Some(Duration::from_secs(10))).await
    }

    /// GETs `path` until `ok` holds (at most [`POLL`]); returns the last body.
    async fn until(self, path: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + POLL;
        loop {
            let (code, v) = self.get(path).await;
            if code == 200 && ok(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last {path}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn connect(h: &Broker, opts: ConnectOptions) -> Client {
    opts.request_timeout(Duration::from_secs(10))
        .connect(&h.local_addr().to_string())
        .await
        .expect("connect")
}

async fn instance(h: &Broker, reg: Registration) -> (Client, Membership) {
    let c = connect(h, ConnectOptions::new().name(&reg.instance_id)).await;
    let m = c.register(reg).await.expect("register");
    (c, m)
}

fn component<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list["components"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}

fn status_of(list: &Value, name: &str) -> String {
    component(list, name).map_or_else(String::new, |c| {
        c["status"].as_str().unwrap_or("").to_owned()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependencies_degrade_recover_and_flag_incompatible_versions() {
    let h = common::start(admin_config());
    let api = Api::of(&h);

    let (_pc, _pm) = instance(
        &h,
        Registration::new("planner", "planner-0")
            .version("1.0.0")
            .depends_on(["memory@>=1.2, <2", "llm"]),
    )
    .await;
    // Both dependencies missing: degraded, with the reasons.
    let v = api
        .until("/api/v1/components", "planner degraded", |v| {
            status_of(v, "planner") == "degraded"
        })
        .await;
    let p = component(&v, "planner").expect("planner listed");
    assert_eq!(p["depends_on"], json!(["llm", "memory@>=1.2, <2"]), "{p}");
    let problems = p["dependency_problems"].as_array().expect("problems");
    assert_eq!(problems.len(), 2, "{p}");
    assert!(problems.iter().all(|x| x["problem"] == "missing"), "{p}");
    let mem = problems
        .iter()
        .find(|x| x["dependency"] == "memory")
        .expect("memory problem");
    assert_eq!(mem["wanted"], ">=1.2, <2");
    assert_eq!(mem["found_versions"], json!([]));
    assert_eq!(v["instances"][0]["depends_on"][0], "memory@>=1.2, <2");
    let (_, st) = api.get("/api/v1/system/status").await;
    assert_eq!(st["status"], "degraded", "{st}");
    assert_eq!(status_of(&st, "planner"), "degraded");
    let (_, metrics) = api.get("/metrics").await;
    let text = metrics.as_str().expect("prometheus text");
    assert!(
        text.contains("agentwire_component_degraded{component=\"planner\"} 1"),
        "{text}"
    );

    // An incompatible memory arrives: still missing llm (degraded), memory flagged.
    let (mc, _mm) = instance(&h, Registration::new("memory", "memory-0").version("2.3.0")).await;
    let (_lc, _lm) = instance(&h, Registration::new("llm", "llm-0").version("latest")).await;
    let v = api
        .until("/api/v1/components/planner", "memory incompatible", |v| {
            v["incompatible"] == true
                && v["dependency_problems"]
                    .as_array()
                    .is_some_and(|a| a.len() == 1)
        })
        .await;
    assert_eq!(
        v["status"], "healthy",
        "incompatible is flagged, not degraded: {v}"
    );
    let d = &v["dependency_problems"][0];
    assert_eq!(d["dependency"], "memory");
    assert_eq!(d["problem"], "incompatible");
    assert_eq!(d["found_versions"], json!(["2.3.0"]));
    assert_eq!(d["environment"], "default");
    let g = api
        .until("/api/v1/components/graph", "graph with both edges", |g| {
            g["edges"].as_array().is_some_and(|e| e.len() == 2)
        })
        .await;
    let edge = |to: &str| {
        g["edges"]
            .as_array()
            .and_then(|e| e.iter().find(|x| x["to"] == to))
            .cloned()
            .expect("edge")
    };
    assert_eq!(edge("memory")["ok"], false, "{g}");
    assert_eq!(edge("memory")["requirement"], ">=1.2, <2");
    assert_eq!(edge("llm")["ok"], true, "{g}");
    assert_eq!(edge("llm")["from"], "planner");
    let nodes: Vec<&str> = g["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["component"].as_str())
        .collect();
    assert_eq!(nodes, vec!["llm", "memory", "planner"]);

    // A compatible memory: healthy, nothing to report.
    let (_mc2, _mm2) = instance(&h, Registration::new("memory", "memory-1").version("1.4.2")).await;
    mc.close().await.expect("close the incompatible one");
    let v = api
        .until("/api/v1/components", "planner healthy", |v| {
            let p = component(v, "planner");
            status_of(v, "planner") == "healthy"
                && p.is_some_and(|p| p["dependency_problems"] == json!([]))
        })
        .await;
    assert_eq!(
        component(&v, "planner").expect("planner")["incompatible"],
        false
    );
    let (_, st) = api.get("/api/v1/system/status").await;
    assert_eq!(st["status"], "healthy", "{st}");
    let (_, metrics) = api.get("/metrics").await;
    let text = metrics.as_str().expect("prometheus text");
    assert!(
        text.contains("agentwire_component_degraded{component=\"planner\"} 0"),
        "{text}"
    );

    // llm leaves: degraded again, `missing`.
    drop(_lm);
    _lc.close().await.expect("close llm");
    let v = api
        .until(
            "/api/v1/components/planner",
            "planner degraded again",
            |v| v["status"] == "degraded",
        )
        .await;
    assert_eq!(v["dependency_problems"][0]["dependency"], "llm");
    assert_eq!(v["dependency_problems"][0]["problem"], "missing");
    let g = api
        .until("/api/v1/components/graph", "llm node missing", |g| {
            g["nodes"].as_array().is_some_and(|n| {
                n.iter()
                    .any(|x| x["component"] == "llm" && x["status"] == "missing")
            })
        })
        .await;
    assert!(g["edges"].as_array().is_some_and(|e| e.len() == 2));

    // A registration with a bad range is refused by the client before it is sent.
    let c = connect(&h, ConnectOptions::new()).await;
    let e = c
        .register(Registration::new("bad", "bad-0").depends_on(["memory@^^1"]))
        .await
        .expect_err("bad range");
    assert!(e.to_string().contains("depends_on"), "{e}");
    h.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environments_default_and_promote_over_http() {
    let mut cfg = admin_config();
    cfg.admin.environment = "test".into();
    let h = common::start(cfg);
    let api = Api::of(&h);

    // No environment anywhere: the broker's (`test`). The client's own default: `prod`.
    let (_tc, tm) = instance(&h, Registration::new("planner", "planner-test")).await;
    assert_eq!(tm.config().environment(), "test");
    let pc = connect(&h, ConnectOptions::new().environment("prod")).await;
    let pm = pc
        .register(Registration::new("planner", "planner-prod"))
        .await
        .expect("register in prod");
    assert_eq!(pm.config().environment(), "prod");
    let mut prod_watch = pm.config_watch();
    let first = tokio::time::timeout(WAIT, prod_watch.next())
        .await
        .expect("current config")
        .expect("open");
    assert_eq!(first.version(), 0);
    let v = api
        .until("/api/v1/components/planner", "both instances", |v| {
            v["instances"].as_array().is_some_and(|a| a.len() == 2)
        })
        .await;
    let mut envs: Vec<&str> = v["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter_map(|i| i["environment"].as_str())
        .collect();
    envs.sort_unstable();
    assert_eq!(envs, vec!["prod", "test"]);

    // A PUT without environment lands in `test`.
    let (code, t1) = api
        .send(
            "PUT",
            "/api/v1/config/components/planner",
            json!({"values": {"depth": "3", "mode": "fast"}}),
        )
        .await;
    assert_eq!(code, 200, "{t1}");
    assert_eq!(t1["environment"], "test");
    let (code, t2) = api
        .send(
            "PUT",
            "/api/v1/config/components/planner",
            json!({"values": {"depth": "4"}, "expected_version": 1}),
        )
        .await;
    assert_eq!(code, 200, "{t2}");
    let (_, p1) = api
        .send(
            "PUT",
            "/api/v1/config/components/planner",
            json!({"values": {"old": "x"}, "environment": "prod"}),
        )
        .await;
    assert_eq!(p1["version"], 1);
    let c = tokio::time::timeout(WAIT, prod_watch.next())
        .await
        .expect("push")
        .expect("open");
    assert_eq!(c.get("old"), Some("x"));

    // Promote test (v2) into prod: a new prod version, pushed live, recorded.
    let (code, p2) = api
        .send(
            "POST",
            "/api/v1/config/components/planner/promote",
            json!({"from": "test", "to": "prod", "expected_version": 1, "updated_by": "alice"}),
        )
        .await;
    assert_eq!(code, 200, "{p2}");
    assert_eq!(p2["environment"], "prod");
    assert_eq!(p2["version"], 2);
    assert_eq!(p2["values"], json!({"depth": "4", "mode": "fast"}));
    assert_eq!(
        p2["promoted_from"],
        json!({"environment": "test", "version": 2})
    );
    let c = tokio::time::timeout(WAIT, prod_watch.next())
        .await
        .expect("promotion pushed")
        .expect("open");
    assert_eq!(c.version(), 2);
    assert_eq!(c.get("depth"), Some("4"));
    assert_eq!(c.get("old"), None);
    let (_, hist) = api
        .get("/api/v1/config/components/planner/history?environment=prod")
        .await;
    let top = &hist["versions"][0];
    assert_eq!(top["action"], "promote", "{hist}");
    assert_eq!(top["updated_by"], "alice");
    assert_eq!(top["note"], "promoted from test v2");
    assert_eq!(hist["versions"][1]["action"], "set");

    // Every environment's current values when none is named.
    let (_, all) = api.get("/api/v1/config/components/planner").await;
    assert_eq!(all["environment"], "test", "{all}");
    assert_eq!(all["environments"]["prod"]["version"], 2, "{all}");
    assert_eq!(all["environments"]["test"]["values"]["depth"], "4");
    let (_, one) = api
        .get("/api/v1/config/components/planner?environment=prod")
        .await;
    assert!(one.get("environments").is_none(), "{one}");

    // Errors: stale version 409, unknown source environment or component 404, bad body 400.
    let promote = |body: Value| api.send("POST", "/api/v1/config/components/planner/promote", body);
    let (code, e) = promote(json!({"from": "test", "to": "prod", "expected_version": 1})).await;
    assert_eq!(code, 409, "{e}");
    assert_eq!(e["error"]["code"], "version_conflict");
    let (code, e) = promote(json!({"from": "staging", "to": "prod"})).await;
    assert_eq!(code, 404, "{e}");
    assert_eq!(e["error"]["code"], "unknown_environment");
    let (code, e) = api
        .send(
            "POST",
            "/api/v1/config/components/nope/promote",
            json!({"from": "test", "to": "prod"}),
        )
        .await;
    assert_eq!(code, 404, "{e}");
    assert_eq!(e["error"]["code"], "unknown_component");
    let (code, e) = promote(json!({"from": "test"})).await;
    assert_eq!(code, 400, "{e}");
    let (code, e) = promote(json!({"from": "test", "to": "test"})).await;
    assert_eq!(code, 400, "{e}");
    let (code, e) = promote(json!({"from": "test", "to": "prod"})).await;
    assert_eq!(code, 400, "no change: {e}");
    h.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_needs_an_operator_token() {
    let mut cfg = admin_config();
    cfg.admin.tokens = vec![
        agentwire_broker::config::AdminToken {
            name: "viewer".into(),
            token: "viewer-token-0123456789".into(),
            role: agentwire_broker::config::AdminRole::Viewer,
        },
        agentwire_broker::config::AdminToken {
            name: "ops".into(),
            token: "operator-token-0123456789".into(),
            role: agentwire_broker::config::AdminRole::Operator,
        },
    ];
    let h = common::start(cfg);
    let api = Api::of(&h);
    let call = move |token: &'static str, path: &'static str, body: Value| {
        tokio::task::spawn_blocking(move || {
            let r = ureq::post(&format!("http://{}{path}", api.0))
                .set("Authorization", &format!("Bearer {token}"))
                .send_json(body);
            match r {
                Ok(r) => {
                    let code = r.status();
                    (code, r.into_json::<Value>().unwrap_or(Value::Null))
                }
                Err(ureq::Error::Status(code, r)) => {
                    (code, r.into_json::<Value>().unwrap_or(Value::Null))
                }
                Err(e) => panic!("{path}: {e}"),
            }
        })
    };
    let put = tokio::task::spawn_blocking(move || {
        ureq::put(&format!(
            "http://{}/api/v1/config/components/planner",
            api.0
        ))
        .set("Authorization", "Bearer operator-token-0123456789")
        .send_json(json!({"values": {"a": "1"}, "environment": "test", "create": true}))
        .map(|r| r.status())
        .map_err(|e| e.to_string())
    })
    .await
    .expect("task");
    assert_eq!(put, Ok(200));
    let body = json!({"from": "test", "to": "prod"});
    let (code, e) = call(
        "viewer-token-0123456789",
        "/api/v1/config/components/planner/promote",
        body.clone(),
    )
    .await
    .expect("task");
    assert_eq!(code, 403, "{e}");
    let (code, v) = call(
        "operator-token-0123456789",
        "/api/v1/config/components/planner/promote",
        body,
    )
    .await
    .expect("task");
    assert_eq!(code, 200, "{v}");
    let (_, hist) = tokio::task::spawn_blocking(move || {
        let r = ureq::get(&format!(
            "http://{}/api/v1/config/components/planner/history?environment=prod",
            api.0
        ))
        .set("Authorization", "Bearer viewer-token-0123456789")
        .call()
        .expect("history");
        (r.status(), r.into_json::<Value>().expect("json"))
    })
    .await
    .expect("task");
    assert_eq!(
        hist["versions"][0]["updated_by"], "ops",
        "the token's name: {hist}"
    );
    h.shutdown();
}

// ----------------------------------------------------------------------------------------------
// Through the `agentwire` binary.

struct Served {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    data_dir: std::path::PathBuf,
}

impl Served {
    fn start(extra: &[&str]) -> Served {
        let addr = free_addr();
        let admin = free_addr();
        let data_dir = std::env::temp_dir().join(format!(
            "agentwire-topology-test-{}-{}",
            std::process::id(),
            addr.port()
        ));
        let child = Command::new(BIN)
            .args(["serve", "--listen", &addr.to_string()])
            .args(["--admin", &admin.to_string(), "--shards", "1"])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn agentwire serve");
        let what = format!("broker did not start on {addr}");
        common::wait_listening(&[addr, admin], POLL, &what);
        Served {
            child,
            addr,
            admin,
            data_dir,
        }
    }

    fn tool(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = Command::new(BIN);
        c.args(args)
            .args(["--admin", &self.admin.to_string()])
            .env_remove("AGENTWIRE_ENVIRONMENT")
            .env_remove("AGENTWIRE_ADMIN_TOKEN");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("run agentwire")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

#[test]
fn environments_and_promote_through_the_cli() {
    let b = Served::start(&["--environment", "staging"]);
    // `config set` without --env: the broker's default environment (staging).
    let o = b.tool(&["config", "set", "planner", "depth=3", "--create"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("[staging] version 1"), "{}", text(&o));
    // AGENTWIRE_ENVIRONMENT names the environment of the admin commands.
    let o = b.tool(
        &["config", "set", "planner", "depth=4", "mode=fast"],
        &[("AGENTWIRE_ENVIRONMENT", "test")],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("[test] version 1"), "{}", text(&o));
    let o = b.tool(
        &[
            "config", "promote", "planner", "--from", "test", "--to", "prod", "--by", "carol",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("[prod] version 1"), "{}", text(&o));
    assert!(text(&o).contains("promoted from test v1"), "{}", text(&o));
    let o = b.tool(
        &["config", "get", "planner", "--env", "prod", "--json"],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["values"], json!({"depth": "4", "mode": "fast"}));
    let o = b.tool(&["config", "history", "planner", "--env", "prod"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("promoted from test v1"), "{}", text(&o));
    assert!(text(&o).contains("carol"), "{}", text(&o));
    // Without --env, `config get` shows every environment.
    let o = b.tool(&["config", "get", "planner"], &[]);
    let t = text(&o);
    assert!(
        t.contains("[prod]") && t.contains("[staging]") && t.contains("[test]"),
        "{t}"
    );
    // Errors: stale expected version (exit 1, the API's code), unknown source environment.
    let o = b.tool(
        &[
            "config",
            "promote",
            "planner",
            "--from",
            "staging",
            "--to",
            "prod",
            "--expected-version",
            "0",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("version_conflict"), "{}", text(&o));
    let o = b.tool(
        &[
            "config", "promote", "planner", "--from", "dev", "--to", "prod",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("unknown_environment"), "{}", text(&o));
    let o = b.tool(&["config", "promote", "planner", "--from", "test"], &[]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "missing --to is a usage error: {}",
        text(&o)
    );
    let _ = b.addr;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependency_status_through_the_cli() {
    let b = Served::start(&[]);
    let c = ConnectOptions::new()
        .request_timeout(Duration::from_secs(10))
        .connect(&b.addr.to_string())
        .await
        .expect("connect");
    let _m = c
        .register(
            Registration::new("planner", "planner-0")
                .version("1.0.0")
                .depends_on(["memory@^1.2"]),
        )
        .await
        .expect("register");
    let admin = b.admin;
    let run = |args: Vec<&'static str>| {
        tokio::task::spawn_blocking(move || {
            Command::new(BIN)
                .args(&args)
                .args(["--admin", &admin.to_string()])
                .env_remove("AGENTWIRE_ADMIN_TOKEN")
                .output()
                .expect("run agentwire")
        })
    };
    let deadline = Instant::now() + POLL;
    loop {
        let o = run(vec!["status"]).await.expect("task");
        let t = text(&o);
        if t.contains("degraded") && t.contains("depends on memory ^1.2 [default]: missing") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed the problem: {t}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let o = run(vec!["components", "planner"]).await.expect("task");
    let t = text(&o);
    assert!(
        t.contains("status degraded") && t.contains("depends on: memory@^1.2"),
        "{t}"
    );
    let o = run(vec!["components"]).await.expect("task");
    assert!(text(&o).contains("planner: degraded"), "{}", text(&o));
    let o = run(vec!["components", "--graph"]).await.expect("task");
    let t = text(&o);
    assert!(t.contains("planner -> memory ^1.2 UNMET"), "{t}");
    assert!(t.contains("missing"), "{t}");
    let o = run(vec!["components", "--graph", "--json"])
        .await
        .expect("task");
    let g: Value = serde_json::from_slice(&o.stdout).expect("graph json");
    assert_eq!(g["edges"][0]["ok"], false);
    c.close().await.expect("close");
}
