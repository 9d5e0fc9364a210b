//! The admin plane against a real broker on loopback: registration visible in the REST API,
//! heartbeat loss → unhealthy → removed (with `$SYS.components` events), config pushed live to
//! every instance, rollback, optimistic versions (409), bad input (400/404), the config
//! surviving a restart, discovery, and load-aware queue-group routing.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use agentwire_admin::Broker;
use agentwire_broker::config::RoutingPolicy;
use agentwire_broker::Config;
use agentwire_client::{Client, ConnectOptions, DiscoverQuery, Registration};
use agentwire_protocol::{self as proto, control};
use bytes::BytesMut;
use common::{eventually, Raw, WAIT};
use serde_json::{json, Value};

fn temp_dir(tag: &str) -> PathBuf {
    common::temp_dir(&format!("admin-test-{tag}"))
}

fn admin_config(data_dir: Option<PathBuf>) -> Config {
    let mut c = common::admin_config(50);
    c.admin.data_dir = data_dir;
    c.admin.unhealthy_after = 3;
    c.admin.remove_after = 6;
    c
}

struct Api(SocketAddr);

impl Api {
    fn of(h: &Broker) -> Api {
        Api(h.admin_addr().expect("admin API configured"))
    }

    /// HTTP call on a blocking thread: status and JSON body.
    async fn acall(
        &self,
        method: &'static str,
        path: String,
        body: Option<String>,
    ) -> (u16, Value) {
        common::ahttp_json(self.0, method, &path, body, None).await
    }
}

async fn client(h: &Broker, name: &str) -> Client {
    ConnectOptions::new()
        .name(name)
        .request_timeout(Duration::from_secs(5))
        .connect(&h.local_addr().to_string())
        .await
        .expect("connect")
}

fn reg(component: &str, id: &str) -> Registration {
    Registration {
        component: component.into(),
        instance_id: id.into(),
        version: "1.0.0".into(),
        capabilities: vec!["plan".into()],
        subjects: vec![format!("{component}.>")],
        ..Registration::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_appears_in_the_api_and_heartbeat_loss_removes_it() {
    let h = common::start(admin_config(None));
    let api = Api::of(&h);
    let watcher = client(&h, "watcher").await;
    let mut events = watcher.subscribe("$SYS.components.>").await.expect("sub");
    watcher.flush().await.expect("flush");

    let c = client(&h, "planner-0").await;
    let m = c
        .register(reg("planner", "planner-0"))
        .await
        .expect("register");
    assert_eq!(m.config().version(), 0);
    let joined = tokio::time::timeout(WAIT, events.next())
        .await
        .expect("event")
        .expect("open");
    assert_eq!(&*joined.subject, "$SYS.components.planner.joined");
    let v: Value = serde_json::from_slice(&joined.payload).expect("json payload");
    assert_eq!(v["instance_id"], "planner-0");

    let (code, list) = api.acall("GET", "/api/v1/components".into(), None).await;
    assert_eq!(code, 200);
    assert_eq!(list["instances"][0]["component"], "planner");
    assert_eq!(list["instances"][0]["status"], "healthy");
    let (code, st) = api.acall("GET", "/api/v1/system/status".into(), None).await;
    assert_eq!(code, 200);
    assert_eq!(st["components"][0]["name"], "planner");
    assert_eq!(st["components"][0]["instances"], 1);

    // Heartbeats keep it healthy well past the unhealthy threshold (3 × 50 ms).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_, one) = api
        .acall("GET", "/api/v1/components/planner".into(), None)
        .await;
    assert_eq!(one["instances"][0]["status"], "healthy", "{one}");

    // A raw registration that never heartbeats: unhealthy, then removed, with events.
    let mut raw = Raw::connect(h.local_addr()).await;
    let mut b = BytesMut::new();
    control::encode_control(&mut b, &reg("mute", "mute-0")).expect("encode");
    raw.send(&b).await;
    let f = raw.next().await.expect("REGISTERED");
    assert_eq!(f.op(), proto::op::REGISTERED);
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let e = tokio::time::timeout(WAIT, events.next())
            .await
            .expect("event")
            .expect("open");
        if e.subject.starts_with("$SYS.components.mute.") {
            seen.push(e.subject.to_string());
        }
    }
    assert_eq!(
        seen,
        [
            "$SYS.components.mute.joined",
            "$SYS.components.mute.unhealthy",
            "$SYS.components.mute.left"
        ]
    );
    let (_, list) = api
        .acall(
            "GET",
            "/api/v1/components?include_unhealthy=true".into(),
            None,
        )
        .await;
    let ids: Vec<&str> = list["instances"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|i| i["instance_id"].as_str())
        .collect();
    assert_eq!(ids, ["planner-0"]);

    // A disconnect removes at once.
    c.close().await.expect("close");
    let left = loop {
        let e = tokio::time::timeout(WAIT, events.next())
            .await
            .expect("event")
            .expect("open");
        if e.subject.starts_with("$SYS.components.planner.") {
            break e;
        }
    };
    assert_eq!(&*left.subject, "$SYS.components.planner.left");
    let v: Value = serde_json::from_slice(&left.payload).expect("json");
    assert_eq!(v["reason"], "disconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_is_pushed_to_every_instance_versioned_and_rolled_back() {
    let h = common::start(admin_config(None));
    let api = Api::of(&h);
    let mut members = Vec::new();
    let mut watches = Vec::new();
    for i in 0..3 {
        let c = client(&h, &format!("worker-{i}")).await;
        let m = c
            .register(reg("worker", &format!("worker-{i}")))
            .await
            .expect("register");
        let mut w = m.config_watch();
        let first = tokio::time::timeout(WAIT, w.next())
            .await
            .expect("current")
            .expect("open");
        assert_eq!(first.version(), 0);
        watches.push(w);
        members.push((c, m));
    }
    let put = |body: Value| {
        (
            "PUT",
            "/api/v1/config/components/worker".to_owned(),
            Some(body.to_string()),
        )
    };
    let (m, p, b) = put(json!({"values": {"latency_ms": "5", "mode": "fast"}}));
    let (code, v1) = api.acall(m, p, b).await;
    assert_eq!(code, 200, "{v1}");
    assert_eq!(v1["version"], 1);
    for w in &mut watches {
        let c = tokio::time::timeout(WAIT, w.next())
            .await
            .expect("push")
            .expect("open");
        assert_eq!(c.version(), 1);
        assert_eq!(c.get("latency_ms"), Some("5"));
    }
    let (m, p, b) =
        put(json!({"values": {"latency_ms": "9", "mode": null}, "expected_version": 1}));
    let (code, v2) = api.acall(m, p, b).await;
    assert_eq!(code, 200, "{v2}");
    assert_eq!(v2["values"], json!({"latency_ms": "9"}));
    for w in &mut watches {
        let c = tokio::time::timeout(WAIT, w.next())
            .await
            .expect("push")
            .expect("open");
        assert_eq!(c.version(), 2);
        assert_eq!(c.get("mode"), None);
    }
    // A stale expected version: 409, nothing changes.
    let (m, p, b) = put(json!({"values": {"latency_ms": "1"}, "expected_version": 1}));
    let (code, e) = api.acall(m, p, b).await;
    assert_eq!(code, 409, "{e}");
    assert_eq!(e["error"]["code"], "version_conflict");
    // Rollback to 1 is version 3 with version 1's values, pushed.
    let (code, v3) = api
        .acall(
            "POST",
            "/api/v1/config/components/worker/rollback".into(),
            Some(json!({"version": 1}).to_string()),
        )
        .await;
    assert_eq!(code, 200, "{v3}");
    assert_eq!(v3["version"], 3);
    assert_eq!(v3["values"], json!({"latency_ms": "5", "mode": "fast"}));
    for w in &mut watches {
        let c = tokio::time::timeout(WAIT, w.next())
            .await
            .expect("push")
            .expect("open");
        assert_eq!(c.version(), 3);
        assert_eq!(c.get("mode"), Some("fast"));
    }
    let (code, hist) = api
        .acall(
            "GET",
            "/api/v1/config/components/worker/history".into(),
            None,
        )
        .await;
    assert_eq!(code, 200);
    let versions: Vec<u64> = hist["versions"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|v| v["version"].as_u64())
        .collect();
    assert_eq!(versions, [3, 2, 1]);
    assert_eq!(hist["versions"][0]["rollback_of"], 1);
    // An instance registering now gets version 3 at once.
    let late = client(&h, "worker-late").await;
    let lm = late
        .register(reg("worker", "worker-9"))
        .await
        .expect("register");
    assert_eq!(lm.config().version(), 3);
    // Another environment is independent.
    let (code, prod) = api
        .acall(
            "GET",
            "/api/v1/config/components/worker?environment=prod".into(),
            None,
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(prod["version"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_requests_get_clear_errors() {
    let h = common::start(admin_config(None));
    let api = Api::of(&h);
    let path = "/api/v1/config/components/ghost".to_owned();
    let (code, e) = api
        .acall(
            "PUT",
            path.clone(),
            Some(json!({"values": {"a": "1"}}).to_string()),
        )
        .await;
    assert_eq!(code, 404, "{e}");
    assert_eq!(e["error"]["code"], "unknown_component");
    let (code, e) = api
        .acall("PUT", path.clone(), Some("{not json".into()))
        .await;
    assert_eq!(code, 400, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("JSON"),
        "{e}"
    );
    let (code, e) = api
        .acall(
            "PUT",
            path.clone(),
            Some(json!({"values": {"bad key!": "1"}, "create": true}).to_string()),
        )
        .await;
    assert_eq!(code, 400, "{e}");
    let (code, e) = api
        .acall(
            "PUT",
            path.clone(),
            Some(json!({"values": {"a": "1"}, "bogus": 1}).to_string()),
        )
        .await;
    assert_eq!(code, 400, "unknown fields are refused: {e}");
    // Nothing was written by the failures.
    let (code, _) = api.acall("GET", path.clone(), None).await;
    assert_eq!(code, 404);
    let (code, ok) = api
        .acall(
            "PUT",
            path.clone(),
            Some(json!({"values": {"a": "1"}, "create": true}).to_string()),
        )
        .await;
    assert_eq!(code, 200, "{ok}");
    assert_eq!(ok["version"], 1);
    let (code, e) = api
        .acall(
            "POST",
            format!("{path}/rollback"),
            Some(json!({"version": 7}).to_string()),
        )
        .await;
    assert_eq!(code, 404, "{e}");
    let (code, _) = api.acall("GET", "/api/v1/nope".into(), None).await;
    assert_eq!(code, 404);
    let (code, doc) = api.acall("GET", "/api/v1/openapi.json".into(), None).await;
    assert_eq!(code, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    for p in [
        "/healthz",
        "/readyz",
        "/api/v1/deployment/status",
        "/api/v1/system/metrics",
    ] {
        let (code, _) = api.acall("GET", p.into(), None).await;
        assert_eq!(code, 200, "{p}");
    }
    let (code, rep) = api
        .acall("POST", "/api/v1/system/optimize".into(), None)
        .await;
    assert_eq!(code, 200);
    assert!(rep["actions"].is_array(), "{rep}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_survives_a_restart() {
    let dir = temp_dir("restart");
    {
        let h = common::start(admin_config(Some(dir.clone())));
        let api = Api::of(&h);
        let (code, v) = api
            .acall(
                "PUT",
                "/api/v1/config/components/keeper".into(),
                Some(json!({"values": {"k": "v1"}, "create": true}).to_string()),
            )
            .await;
        assert_eq!(code, 200, "{v}");
        let (code, _) = api
            .acall(
                "PUT",
                "/api/v1/config/components/keeper".into(),
                Some(json!({"values": {"k": "v2"}}).to_string()),
            )
            .await;
        assert_eq!(code, 200);
        h.shutdown();
        h.join();
    }
    let h = common::start(admin_config(Some(dir.clone())));
    let api = Api::of(&h);
    let (code, v) = api
        .acall("GET", "/api/v1/config/components/keeper".into(), None)
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["version"], 2);
    assert_eq!(v["values"]["k"], "v2");
    let c = client(&h, "keeper").await;
    let m = c
        .register(reg("keeper", "keeper-0"))
        .await
        .expect("register");
    assert_eq!(m.config().version(), 2);
    assert_eq!(m.config().get("k"), Some("v2"));
    drop(c);
    h.shutdown();
    h.join();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_by_component_and_capability() {
    let h = common::start(admin_config(None));
    let mut keep = Vec::new();
    for (comp, id, cap) in [("a", "a-0", "x"), ("a", "a-1", "y"), ("b", "b-0", "x")] {
        let c = client(&h, id).await;
        let mut r = reg(comp, id);
        r.capabilities = vec![cap.into()];
        let m = c.register(r).await.expect("register");
        keep.push((c, m));
    }
    let q = client(&h, "asker").await;
    let by_comp = q
        .discover(DiscoverQuery::new().component("a"))
        .await
        .expect("discover");
    let ids: Vec<_> = by_comp.iter().map(|i| i.instance_id.as_str()).collect();
    assert_eq!(ids, ["a-0", "a-1"]);
    let by_cap = q
        .discover(DiscoverQuery::new().capability("x"))
        .await
        .expect("discover");
    let ids: Vec<_> = by_cap.iter().map(|i| i.instance_id.as_str()).collect();
    assert_eq!(ids, ["a-0", "b-0"]);
    assert!(q
        .discover(DiscoverQuery::new().component("none"))
        .await
        .expect("discover")
        .is_empty());
}

/// Two repliers in a queue group, one 20 ms slower per request; 150 requests one at a time.
/// Returns how many the slow one answered.
async fn slow_share(policy: RoutingPolicy) -> usize {
    let mut cfg = admin_config(None);
    cfg.admin.routing = policy;
    let h = common::start(cfg);
    let mut tasks = Vec::new();
    let counts = std::sync::Arc::new([
        std::sync::atomic::AtomicUsize::new(0),
        std::sync::atomic::AtomicUsize::new(0),
    ]);
    let mut clients = Vec::new();
    for i in 0..2usize {
        let c = client(&h, &format!("rep-{i}")).await;
        let mut s = c.queue_subscribe("svc.echo", "svc").await.expect("sub");
        c.flush().await.expect("flush");
        let c2 = c.clone();
        let counts = counts.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(m) = s.next().await {
                counts[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i == 1 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if c2.respond(&m, m.payload.clone()).await.is_err() {
                    break;
                }
            }
        }));
        clients.push(c);
    }
    let req = client(&h, "requester").await;
    for _ in 0..150 {
        req.request("svc.echo", "x", Duration::from_secs(5))
            .await
            .expect("reply");
    }
    let slow = counts[1].load(std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        let _ = c.close().await;
    }
    for t in tasks {
        t.abort();
    }
    slow
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_aware_routing_avoids_the_slow_member() {
    let rr = slow_share(RoutingPolicy::RoundRobin).await;
    let load = slow_share(RoutingPolicy::Load).await;
    // Round robin gives each member half; by load the slow one is only probed.
    assert!(
        (60..=90).contains(&rr),
        "round robin gave the slow member {rr} of 150"
    );
    assert!(
        load <= 15,
        "load-aware routing gave the slow member {load} of 150 (rr: {rr})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_text_has_the_broker_figures() {
    let h = common::start(admin_config(None));
    let api = Api::of(&h);
    let c = client(&h, "m").await;
    let _m = c
        .register(reg("metered", "metered-0"))
        .await
        .expect("register");
    c.publish("some.subject", "x").await.expect("publish");
    c.flush().await.expect("flush");
    eventually(|| h.stats().msgs_in >= 1, "the publish counted").await;
    let (code, text) = api.acall("GET", "/metrics".into(), None).await;
    assert_eq!(code, 200);
    let text = text.as_str().expect("text body").to_owned();
    assert!(
        text.contains("agentwire_messages_in_total{shard="),
        "{text}"
    );
    assert!(
        text.contains("agentwire_component_instances{component=\"metered\",status=\"healthy\"} 1"),
        "{text}"
    );
    assert!(!text.contains("some.subject"), "no raw subject in labels");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_error_counts_from_heartbeats_reach_the_metrics() {
    let h = common::start(admin_config(None));
    let api = Api::of(&h);
    let c = client(&h, "counted").await;
    let m = c
        .register(reg("counted", "counted-0"))
        .await
        .expect("register");
    let load = m.load_reporter();
    for i in 0..10 {
        load.record_request(i % 5 != 0);
    }
    let want_req = "agentwire_component_requests_total{component=\"counted\"} 10";
    let want_err = "agentwire_component_errors_total{component=\"counted\"} 2";
    let mut text = String::new();
    for _ in 0..200 {
        let (code, body) = api.acall("GET", "/metrics".into(), None).await;
        assert_eq!(code, 200);
        text = body.as_str().expect("text body").to_owned();
        if text.contains(want_req) && text.contains(want_err) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(text.contains(want_req), "{text}");
    assert!(text.contains(want_err), "{text}");
    let (_, comp) = api
        .acall("GET", "/api/v1/components/counted".into(), None)
        .await;
    assert_eq!(comp["instances"][0]["load"]["errors_total"], 2, "{comp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stamped_messages_feed_the_publish_to_deliver_histogram() {
    let h = common::start(admin_config(None));
    let api = Api::of(&h);
    let sub = client(&h, "sub").await;
    let mut s = sub.subscribe("e2e.>").await.expect("sub");
    sub.flush().await.expect("flush");
    let publisher = ConnectOptions::new()
        .stamp_send_time(true)
        .connect(&h.local_addr().to_string())
        .await
        .expect("connect");
    for i in 0..50 {
        publisher
            .publish(&format!("e2e.{i}"), "x")
            .await
            .expect("publish");
    }
    publisher.flush().await.expect("flush");
    for _ in 0..50 {
        let m = tokio::time::timeout(WAIT, s.next())
            .await
            .expect("message")
            .expect("open");
        let stamp = m
            .headers
            .as_ref()
            .and_then(|h| h.get_str(agentwire_client::SENT_AT_HEADER))
            .expect("the stamp travels with the message");
        assert!(stamp.parse::<u64>().is_ok(), "{stamp}");
    }
    // The shard records a batch's stamps right after writing it, so the last samples may land
    // just after the subscriber read the messages: poll (bounded) until all 50 are counted.
    let mut v = Value::Null;
    for _ in 0..200 {
        let (code, got) = api
            .acall("GET", "/api/v1/system/metrics".into(), None)
            .await;
        assert_eq!(code, 200);
        v = got;
        if v["latency_us"]["publish_to_deliver"]["count"] == 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let p = &v["latency_us"]["publish_to_deliver"];
    assert_eq!(p["count"], 50, "{v}");
    assert!(p["p99"].as_u64().expect("p99") < 10_000_000, "{p}");
    // Unstamped traffic adds nothing.
    sub.publish("e2e.plain", "y").await.expect("publish");
    sub.flush().await.expect("flush");
    let (_, v) = api
        .acall("GET", "/api/v1/system/metrics".into(), None)
        .await;
    assert_eq!(v["latency_us"]["publish_to_deliver"]["count"], 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_samples_are_stored_and_read_back_with_since() {
    let mut cfg = admin_config(None);
    cfg.admin.metrics_sample_ms = 100;
    let h = common::start(cfg);
    let api = Api::of(&h);
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let c = client(&h, "p").await;
    for _ in 0..10 {
        c.publish("x.y", "z").await.expect("publish");
    }
    c.flush().await.expect("flush");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (code, v) = api
            .acall(
                "GET",
                format!("/api/v1/system/metrics?since={since}&name=connections"),
                None,
            )
            .await;
        assert_eq!(code, 200, "{v}");
        let hist = v["history"].as_array().cloned().unwrap_or_default();
        if hist.len() >= 2 {
            assert!(
                hist.iter().all(|s| s["metric_name"] == "connections"),
                "{v}"
            );
            assert!(hist
                .iter()
                .all(|s| s["timestamp_ms"].as_u64() >= Some(since)));
            assert!(
                hist.iter().any(|s| s["metric_value"].as_f64() >= Some(1.0)),
                "{v}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no samples stored: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_tokens_and_roles() {
    use agentwire_broker::config::{AdminRole, AdminToken};
    let mut cfg = admin_config(None);
    cfg.admin.tokens = vec![
        AdminToken {
            name: "watcher".into(),
            token: "viewer-token-0123456789".into(),
            role: AdminRole::Viewer,
        },
        AdminToken {
            name: "ops".into(),
            token: "operator-token-0123456789".into(),
            role: AdminRole::Operator,
        },
    ];
    let h = common::start(cfg);
    let addr = h.admin_addr().expect("admin");
    let call = move |method: &'static str, path: &'static str, token: Option<&'static str>| {
        tokio::task::spawn_blocking(move || {
            let mut req = ureq::request(method, &format!("http://{addr}{path}"))
                .set("Content-Type", "application/json");
            if let Some(t) = token {
                req = req.set("Authorization", &format!("Bearer {t}"));
            }
            let body = json!({"values": {"k": "v"}, "create": true, "updated_by": "someone-else"})
                .to_string();
            let r = if method == "GET" {
                req.call()
            } else {
                req.send_string(&body)
            };
            match r {
                Ok(r) => r.status(),
                Err(ureq::Error::Status(code, _)) => code,
                Err(e) => panic!("{e}"),
            }
        })
    };
    let status = "/api/v1/system/status";
    let put = "/api/v1/config/components/guarded";
    assert_eq!(call("GET", status, None).await.expect("task"), 401);
    assert_eq!(
        call("GET", status, Some("not-a-token-at-all"))
            .await
            .expect("task"),
        401
    );
    assert_eq!(
        call("GET", status, Some("viewer-token-0123456789"))
            .await
            .expect("task"),
        200
    );
    assert_eq!(
        call("PUT", put, Some("viewer-token-0123456789"))
            .await
            .expect("task"),
        403
    );
    assert_eq!(
        call("PUT", put, Some("operator-token-0123456789"))
            .await
            .expect("task"),
        200
    );
    // The change is recorded under the token's name, whatever the body claims.
    let who = tokio::task::spawn_blocking(move || {
        let v: Value = ureq::get(&format!("http://{addr}{put}"))
            .set("Authorization", "Bearer viewer-token-0123456789")
            .call()
            .expect("GET config")
            .into_json()
            .expect("json");
        v["updated_by"].as_str().map(str::to_owned)
    })
    .await
    .expect("task");
    assert_eq!(who.as_deref(), Some("ops"));
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(call("GET", open, None).await.expect("task"), 200, "{open}");
    }
}
