//! The alert engine against a real broker on loopback: a registered component, served by the
//! client library, answers requests after the delay in its `latency_ms` config key; with 600 ms
//! under request load the `component_latency` rule fires in `GET /api/v1/alerts`, on
//! `$SYS.alerts.>`, in `/metrics` and at a webhook (whose first attempt fails and is retried);
//! with the key set back to 0 it resolves and the history keeps it.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use agentwire_broker::config::alerts::{AlertsConfig, WebhookConfig};
use agentwire_broker::Config;
use agentwire_client::{Client, ConnectOptions, Registration};
use serde_json::{json, Value};

/// A generous bound for things that take a few evaluation windows.
const SLOW: Duration = Duration::from_secs(45);

/// The bound on one admin API call.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

async fn ahttp(
    addr: SocketAddr,
    method: &'static str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    common::ahttp_json(addr, method, path, body, Some(HTTP_TIMEOUT)).await
}

/// A webhook receiver: answers 500 to the first POST and 200 to the others; every body read
/// is sent on the channel with the status given. Serves at most `max` connections.
fn webhook_receiver(max: usize) -> (SocketAddr, mpsc::Receiver<(u16, Value)>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for (i, conn) in l.incoming().take(max).enumerate() {
            let Ok(mut s) = conn else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut r = BufReader::new(match s.try_clone() {
                Ok(c) => c,
                Err(_) => continue,
            });
            let mut len = 0usize;
            let mut line = String::new();
            for _ in 0..100 {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len.min(1 << 20)];
            let _ = r.read_exact(&mut body);
            let status = if i == 0 { 500 } else { 200 };
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if tx.send((status, v)).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

fn config(webhook: SocketAddr) -> Config {
    let mut c = common::admin_config(200);
    let mut a: AlertsConfig = toml::from_str(
        "eval_interval_ms = 200\nwindow_s = 5\nmin_samples = 3\n\
         [component_latency]\nfor_s = 1\n\
         [resources]\nenabled = false\n[anomaly]\nenabled = false\n",
    )
    .expect("alerts config");
    a.webhooks.push(WebhookConfig {
        url: format!("http://{webhook}/hook"),
        timeout_ms: 2000,
        max_attempts: 5,
        backoff_ms: 100,
        queue: 16,
    });
    c.alerts = a;
    c.validate().expect("valid test config");
    c
}

async fn client(addr: SocketAddr, name: &str) -> Client {
    ConnectOptions::new()
        .name(name)
        .request_timeout(Duration::from_secs(10))
        .connect(&addr.to_string())
        .await
        .expect("connect")
}

fn firing_for(v: &Value, component: &str) -> bool {
    v["firing"].as_array().is_some_and(|a| {
        a.iter()
            .any(|x| x["rule"] == "component_latency" && x["labels"]["component"] == component)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_latency_fires_under_a_600ms_delay_and_resolves_after() {
    let (hook_addr, hook_rx) = webhook_receiver(50);
    let h = common::start(config(hook_addr));
    let addr = h.local_addr();
    let api = h.admin_addr().expect("admin API");

    let watcher = client(addr, "watcher").await;
    let mut events = watcher.subscribe("$SYS.alerts.>").await.expect("sub");
    watcher.flush().await.expect("flush");

    // The component: answers each request after `latency_ms` from its live config.
    let svc = client(addr, "slowpoke-0").await;
    let member = svc
        .register(Registration {
            component: "slowpoke".into(),
            instance_id: "slowpoke-0".into(),
            version: "1.0.0".into(),
            subjects: vec!["slowpoke.>".into()],
            ..Registration::default()
        })
        .await
        .expect("register");
    let (code, v) = ahttp(
        api,
        "PUT",
        "/api/v1/config/components/slowpoke",
        Some(json!({"values": {"latency_ms": "600"}, "create": true})),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let mut sub = svc
        .queue_subscribe("slowpoke.work", "slowpoke")
        .await
        .expect("sub");
    svc.flush().await.expect("flush");
    let svc2 = svc.clone();
    let server = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let ms: u64 = member
                .config()
                .get("latency_ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let c = svc2.clone();
            let load = member.load_reporter();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                load.record_request(true);
                let _ = c.respond(&m, "ok").await;
            });
        }
    });

    // Request load: 8 requesters in a loop until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for i in 0..8 {
        let c = client(addr, &format!("req-{i}")).await;
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(180);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                if c.request("slowpoke.work", "x", Duration::from_secs(5))
                    .await
                    .is_err()
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }

    // Fires.
    let t0 = Instant::now();
    let fired = loop {
        let (code, v) = ahttp(api, "GET", "/api/v1/alerts", None).await;
        assert_eq!(code, 200, "{v}");
        if firing_for(&v, "slowpoke") {
            break v;
        }
        assert!(t0.elapsed() < SLOW, "component_latency never fired: {v}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let a = fired["firing"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["rule"] == "component_latency"))
        .cloned()
        .expect("the alert");
    assert!(a["value"].as_f64().is_some_and(|v| v > 500.0), "{a}");
    assert_eq!(a["notified"], true);
    assert!(fired["rules"].as_array().is_some_and(|r| r
        .iter()
        .any(|x| x["rule"] == "component_latency" && x["firing"] == 1)));
    eprintln!("fired after {:?}", t0.elapsed());

    // On $SYS.alerts.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("a $SYS.alerts event")
            .expect("open");
        let v: Value = serde_json::from_slice(&m.payload).expect("JSON event");
        if &*m.subject == "$SYS.alerts.component_latency.firing" {
            assert_eq!(v["labels"]["component"], "slowpoke");
            assert_eq!(v["state"], "firing");
            break;
        }
    }

    // In /metrics.
    let metrics = tokio::task::spawn_blocking(move || {
        ureq::get(&format!("http://{api}/metrics"))
            .call()
            .expect("metrics")
            .into_string()
            .expect("text")
    })
    .await
    .expect("task");
    assert!(
        metrics.contains("agentwire_alerts_firing{rule=\"component_latency\"} 1"),
        "{metrics}"
    );

    // At the webhook: the first attempt got a 500, a retry delivered it.
    let got = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Ok((status, v)) = hook_rx.recv_timeout(Duration::from_millis(500)) {
                seen.push((status, v.clone()));
                if status == 200 && v["rule"] == "component_latency" && v["state"] == "firing" {
                    break;
                }
            }
        }
        seen
    })
    .await
    .expect("task");
    assert_eq!(got.first().map(|g| g.0), Some(500), "{got:?}");
    assert!(
        got.iter()
            .any(|(s, v)| *s == 200 && v["rule"] == "component_latency" && v["state"] == "firing"),
        "retried and delivered: {got:?}"
    );

    // Back to normal: resolves.
    let (code, v) = ahttp(
        api,
        "PUT",
        "/api/v1/config/components/slowpoke",
        Some(json!({"values": {"latency_ms": "0"}})),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let t1 = Instant::now();
    loop {
        let (_, v) = ahttp(api, "GET", "/api/v1/alerts?state=resolved", None).await;
        let resolved = v["history"].as_array().is_some_and(|h| {
            h.iter().any(|x| {
                x["rule"] == "component_latency"
                    && x["labels"]["component"] == "slowpoke"
                    && x["state"] == "resolved"
                    && x["resolved_ms"].as_u64().is_some()
            })
        });
        let (_, all) = ahttp(api, "GET", "/api/v1/alerts", None).await;
        if resolved && !firing_for(&all, "slowpoke") {
            break;
        }
        assert!(t1.elapsed() < SLOW, "never resolved: {all}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("resolved {:?} after the delay was removed", t1.elapsed());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("the resolved event")
            .expect("open");
        if &*m.subject == "$SYS.alerts.component_latency.resolved" {
            break;
        }
    }

    let (code, v) = ahttp(api, "GET", "/api/v1/alerts?state=bogus", None).await;
    assert_eq!(code, 400, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("firing or resolved")));

    stop.store(true, Ordering::Relaxed);
    for t in load {
        let _ = t.await;
    }
    server.abort();
    h.shutdown();
}
