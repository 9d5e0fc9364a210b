//! Staged config rollout against a real broker on loopback, with four instances from the
//! client library that report requests in their heartbeats (all of them failing while their
//! config says `error_rate=1.0`): a bad canary is rolled back by itself and the other instances
//! never see the bad version; a good change reaches everyone after the bake; a second change
//! during a rollout is refused (409); promote, abort, `failed` without auto-rollback, and the
//! rollouts in `GET /api/v1/deployment/status`.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentwire_admin::Broker;
use agentwire_broker::Config;
use agentwire_client::{ConnectOptions, Registration};
use serde_json::{json, Value};

/// Generous bound for anything the broker should do within a few seconds.
const LONG_WAIT: Duration = Duration::from_secs(30);

fn config() -> Config {
    common::admin_config_lasting()
}

async fn acall(
    admin: SocketAddr,
    method: &'static str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    common::ahttp_json(admin, method, path, body.map(|b| b.to_string()), None).await
}

/// Every (version, values) an instance received, by instance id.
type Seen = Arc<Mutex<BTreeMap<String, Vec<(u64, BTreeMap<String, String>)>>>>;

/// Starts `n` instances of `planner`: each records 5 requests per 100 ms, all failing while its
/// config has `error_rate=1.0`, and keeps every config version it receives in `seen`.
async fn instances(h: &Broker, n: usize, seen: &Seen) -> Vec<agentwire_client::Client> {
    let mut clients = Vec::new();
    for i in 0..n {
        let id = format!("planner-{i}");
        let c = ConnectOptions::new()
            .name(&id)
            .connect(&h.local_addr().to_string())
            .await
            .expect("connect");
        let m = c
            .register(Registration {
                component: "planner".into(),
                instance_id: id.clone(),
                version: "1.0.0".into(),
                ..Registration::default()
            })
            .await
            .expect("register");
        let load = m.load_reporter();
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (f2, seen2, id2) = (failing.clone(), seen.clone(), id.clone());
        let mut watch = m.config_watch();
        tokio::spawn(async move {
            while let Some(cfg) = watch.next().await {
                let values: BTreeMap<String, String> = cfg.values().iter().cloned().collect();
                f2.store(
                    values.get("error_rate").map(String::as_str) == Some("1.0"),
                    std::sync::atomic::Ordering::Relaxed,
                );
                seen2
                    .lock()
                    .expect("seen")
                    .entry(id2.clone())
                    .or_default()
                    .push((cfg.version(), values));
            }
        });
        tokio::spawn(async move {
            let _keep = m;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let fail = failing.load(std::sync::atomic::Ordering::Relaxed);
                for _ in 0..5 {
                    load.record_request(!fail);
                }
                load.record_latency(Duration::from_millis(2));
            }
        });
        clients.push(c);
    }
    clients
}

/// Polls the rollout status of planner until `done` says so.
async fn wait_rollout(admin: SocketAddr, id: u64, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + LONG_WAIT;
    loop {
        let (s, v) = acall(
            admin,
            "GET",
            "/api/v1/config/components/planner/rollout",
            None,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let r = v["rollouts"]
            .as_array()
            .and_then(|l| l.iter().find(|r| r["id"].as_u64() == Some(id)).cloned())
            .unwrap_or(Value::Null);
        if done(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "rollout {id} did not get there: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every instance has received `version`.
async fn wait_all_have(seen: &Seen, n: usize, version: u64) {
    let deadline = Instant::now() + LONG_WAIT;
    loop {
        let ok = {
            let s = seen.lock().expect("seen");
            s.len() == n && s.values().all(|v| v.iter().any(|(ver, _)| *ver == version))
        };
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not every instance got v{version}: {:?}",
            seen.lock().expect("seen")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn put(values: Value, rollout: Value) -> Option<Value> {
    Some(json!({"values": values, "rollout": rollout}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_canary_rolls_back_and_good_change_reaches_everyone() {
    let h = common::start(config());
    let admin = h.admin_addr().expect("admin");
    let seen: Seen = Arc::default();
    let _clients = instances(&h, 4, &seen).await;
    wait_all_have(&seen, 4, 0).await;

    let watcher = ConnectOptions::new()
        .connect(&h.local_addr().to_string())
        .await
        .expect("connect");
    let mut events = watcher
        .subscribe("$SYS.rollout.planner.>")
        .await
        .expect("sub");
    watcher.flush().await.expect("flush");

    // A bad change on one canary: rolled back by itself.
    let (s, v) = acall(
        admin,
        "PUT",
        "/api/v1/config/components/planner",
        put(
            json!({"error_rate": "1.0"}),
            json!({"canary": 1, "bake_seconds": 30}),
        ),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["version"], 1);
    let r = &v["rollout"];
    assert_eq!(r["state"], "baking");
    let id = r["id"].as_u64().expect("id");
    let canary = r["canaries"][0].as_str().expect("a canary").to_owned();
    assert_eq!(r["canaries"].as_array().map(Vec::len), Some(1));
    let started = Instant::now();
    let done = wait_rollout(admin, id, |r| r["state"] == "rolled_back").await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "rolled back before the bake ended"
    );
    assert_eq!(done["rollback_version"], 2);
    let reason = done["reason"].as_str().unwrap_or("");
    assert!(
        reason.starts_with(&format!("{canary}: error rate ")),
        "{reason}"
    );
    wait_all_have(&seen, 4, 2).await;
    {
        let s = seen.lock().expect("seen");
        for (inst, versions) in s.iter() {
            let saw_bad = versions.iter().any(|(ver, _)| *ver == 1);
            assert_eq!(saw_bad, *inst == canary, "{inst}: {versions:?}");
            let last = versions.last().expect("a version");
            assert!(
                last.1.is_empty(),
                "v2 restores v0 (no values): {versions:?}"
            );
        }
    }
    // The events: baking then rolled_back.
    let mut names = Vec::new();
    while names.len() < 2 {
        let m = tokio::time::timeout(LONG_WAIT, events.next())
            .await
            .expect("a rollout event")
            .expect("open");
        names.push(m.subject.to_string());
        let body: Value = serde_json::from_slice(&m.payload).expect("json");
        assert_eq!(body["id"], id);
    }
    assert_eq!(
        names,
        [
            "$SYS.rollout.planner.baking",
            "$SYS.rollout.planner.rolled_back"
        ]
    );

    // A good change with 25% (one of four): everyone has it after the bake.
    let (s, v) = acall(
        admin,
        "PUT",
        "/api/v1/config/components/planner",
        put(
            json!({"latency_ms": "1"}),
            json!({"canary": "25%", "bake_seconds": 2}),
        ),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let id = v["rollout"]["id"].as_u64().expect("id");
    assert_eq!(v["version"], 3);
    let done = wait_rollout(admin, id, |r| r["state"] == "promoted").await;
    assert!(
        done["reason"].as_str().unwrap_or("").contains("healthy"),
        "{done}"
    );
    wait_all_have(&seen, 4, 3).await;
    let (_, cur) = acall(admin, "GET", "/api/v1/config/components/planner", None).await;
    assert_eq!(cur["version"], 3);

    // Both in the deployment status, newest first, with the existing fields kept.
    let (s, d) = acall(admin, "GET", "/api/v1/deployment/status", None).await;
    assert_eq!(s, 200);
    assert!(d["config_versions"].is_array() && d["shards"].is_number());
    let states: Vec<_> = d["rollouts"]
        .as_array()
        .expect("rollouts")
        .iter()
        .map(|r| r["state"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(states, ["promoted", "rolled_back"]);
    h.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rollout_at_a_time_promote_abort_and_failed() {
    let h = common::start(config());
    let admin = h.admin_addr().expect("admin");
    let seen: Seen = Arc::default();
    let _clients = instances(&h, 4, &seen).await;
    wait_all_have(&seen, 4, 0).await;
    let path = "/api/v1/config/components/planner";

    // No instances of another component: nothing to canary.
    let (s, v) = acall(
        admin,
        "PUT",
        "/api/v1/config/components/nobody",
        Some(json!({"values": {"a": "1"}, "create": true, "rollout": {"canary": 1, "bake_seconds": 5}})),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("no_canary")),
        "{v}"
    );
    // Bad policies.
    for bad in [
        json!({"canary": 0, "bake_seconds": 5}),
        json!({"canary": "x%", "bake_seconds": 5}),
        json!({"canary": 1, "bake_seconds": 5, "max_error_rate": 2.0}),
        json!({"canary": 1}),
    ] {
        let (s, v) = acall(admin, "PUT", path, put(json!({"a": "1"}), bad.clone())).await;
        assert!(s == 400 || s == 422, "{bad}: {s} {v}");
    }

    let (s, v) = acall(
        admin,
        "PUT",
        path,
        put(
            json!({"depth": "2"}),
            json!({"canary": 2, "bake_seconds": 300}),
        ),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let id = v["rollout"]["id"].as_u64().expect("id");
    // A second rollout, a plain change and a rollback are refused while it is in progress.
    let (s, v) = acall(
        admin,
        "PUT",
        path,
        put(
            json!({"depth": "3"}),
            json!({"canary": 1, "bake_seconds": 5}),
        ),
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"]["code"], "rollout_in_progress");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("rollout {id}")),
        "{v}"
    );
    let (s, _) = acall(admin, "PUT", path, Some(json!({"values": {"depth": "3"}}))).await;
    assert_eq!(s, 409);
    // The status shows it with each canary's figures.
    let (_, st) = acall(admin, "GET", &format!("{path}/rollout"), None).await;
    assert_eq!(st["active"]["id"], id);
    assert_eq!(
        st["active"]["canary_figures"].as_array().map(Vec::len),
        Some(2)
    );
    // Promote now: everyone gets v1.
    let (s, v) = acall(
        admin,
        "POST",
        &format!("{path}/rollout/promote"),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "promoted");
    wait_all_have(&seen, 4, 1).await;
    let (s, v) = acall(
        admin,
        "POST",
        &format!("{path}/rollout/promote"),
        Some(json!({})),
    )
    .await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("no_rollout")));

    // Abort: v2 goes to the canary only, then v3 (v1's values) to everyone.
    let (s, v) = acall(
        admin,
        "PUT",
        path,
        put(
            json!({"depth": "9"}),
            json!({"canary": 1, "bake_seconds": 300}),
        ),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let canary = v["rollout"]["canaries"][0]
        .as_str()
        .expect("canary")
        .to_owned();
    let (s, v) = acall(
        admin,
        "POST",
        &format!("{path}/rollout/abort"),
        Some(json!({"updated_by": "tester"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "aborted");
    assert_eq!(v["rollback_version"], 3);
    assert_eq!(v["reason"], "aborted by tester");
    wait_all_have(&seen, 4, 3).await;
    {
        let s = seen.lock().expect("seen");
        for (inst, versions) in s.iter() {
            assert_eq!(
                versions.iter().any(|(v, _)| *v == 2),
                *inst == canary,
                "{inst}: {versions:?}"
            );
            assert_eq!(
                versions.last().map(|l| l.1.get("depth").cloned()),
                Some(Some("2".into()))
            );
        }
    }

    // Without auto-rollback a failing canary leaves the rollout `failed`, still in progress.
    let (s, v) = acall(
        admin,
        "PUT",
        path,
        put(
            json!({"error_rate": "1.0"}),
            json!({"canary": 1, "bake_seconds": 300, "auto_rollback": false}),
        ),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let id = v["rollout"]["id"].as_u64().expect("id");
    let r = wait_rollout(admin, id, |r| r["state"] == "failed").await;
    assert!(
        r["reason"].as_str().unwrap_or("").contains("error rate"),
        "{r}"
    );
    assert!(r["ended_at_ms"].is_null());
    let (s, _) = acall(admin, "PUT", path, Some(json!({"values": {"depth": "3"}}))).await;
    assert_eq!(s, 409, "failed is still in progress");
    let (s, v) = acall(
        admin,
        "POST",
        &format!("{path}/rollout/abort"),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "aborted");
    let (s, _) = acall(admin, "PUT", path, Some(json!({"values": {"depth": "3"}}))).await;
    assert_eq!(s, 200, "changes are accepted again");
    h.shutdown();
}
