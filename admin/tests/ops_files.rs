//! The deployment files in `ops/` name only metrics the broker really exports: every
//! `agentwire_*` metric in the Grafana dashboard's queries (`ops/grafana/agentwire.json`) and
//! in the Prometheus alert rules' expressions (`ops/prometheus/alerts.yml`) must appear on
//! `/metrics` of a real broker that has seen traffic, requests to a registered component, a
//! config change, a protocol error and stamped messages.
//!
//! The broker config files in `ops/` (compose, the Kubernetes ConfigMap) load and validate, and
//! the Kubernetes and systemd stop timeouts cover the lame-duck window.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agentwire_broker::Config;
use agentwire_client::{ConnectOptions, Registration};
use common::{Raw, WAIT};
use serde_json::{json, Value};

/// Metrics named by `ops/` that the broker does not export yet because another branch adds
/// them (per-component request and error counters from heartbeats). Remove them when that
/// branch is merged; this test fails while a name listed here is exported.
/// How long the test keeps scraping for every metric to appear (the CPU ratio needs two
/// readings a second apart; the rest is there after the traffic).
const SCRAPE_WAIT: Duration = Duration::from_secs(30);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("broker/ has a parent")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let p = repo_root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// Every `agentwire_*` identifier in a PromQL expression.
fn metric_names(expr: &str, out: &mut BTreeSet<String>) {
    let bytes = expr.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut i = 0;
    while i < bytes.len() {
        if ident(bytes[i]) && (i == 0 || !ident(bytes[i - 1])) {
            let start = i;
            while i < bytes.len() && ident(bytes[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            // A label name is followed by `=`, `!=` or `=~`; a metric name never is.
            let next = expr[i..].trim_start();
            let is_label = next.starts_with('=') || next.starts_with("!=");
            if word.starts_with("agentwire_") && !is_label {
                out.insert(word.to_owned());
            }
        } else {
            i += 1;
        }
    }
}

/// Every `expr` string anywhere in a Grafana dashboard (panels, rows, nested panels).
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_exprs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| dashboard_exprs(x, out)),
        _ => {}
    }
}

/// The `expr:` values of a Prometheus rules file: one line, or a `|`/`>` block (the lines
/// indented deeper than the key).
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let indent = line.len() - line.trim_start().len();
        if let Some(rest) = line.trim_start().strip_prefix("expr:") {
            let rest = rest.trim();
            if rest.starts_with('|') || rest.starts_with('>') {
                let mut block = String::new();
                i += 1;
                while i < lines.len() {
                    let l = lines[i];
                    let ind = l.len() - l.trim_start().len();
                    if !l.trim().is_empty() && ind <= indent {
                        break;
                    }
                    block.push_str(l.trim());
                    block.push('\n');
                    i += 1;
                }
                out.push(block);
                continue;
            }
            out.push(rest.trim_matches(|c| c == '"' || c == '\'').to_owned());
        }
        i += 1;
    }
    out
}

/// Metric names on a `/metrics` page (the part of each sample line before `{` or a space).
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn expression_parsing() {
    let mut s = BTreeSet::new();
    metric_names(
        "sum by (component) (rate(agentwire_a_total{instance=~\"$i\", agentwire_label=\"x\"}[5m])) / agentwire_b > 0.01",
        &mut s,
    );
    assert_eq!(
        s.into_iter().collect::<Vec<_>>(),
        ["agentwire_a_total", "agentwire_b"]
    );
    let y = "  - alert: A\n    expr: agentwire_x > 1\n    for: 5m\n  - alert: B\n    expr: |\n      agentwire_y\n      or\n      agentwire_z\n    for: 1m\n";
    assert_eq!(
        rule_exprs(y),
        ["agentwire_x > 1", "agentwire_y\nor\nagentwire_z\n"]
    );
    assert_eq!(
        exported("# TYPE a counter\na{x=\"1\"} 2\nb 3\n"),
        BTreeSet::from(["a".to_owned(), "b".to_owned()])
    );
}

/// The metric names `ops/` uses, by file.
fn used_metrics() -> Vec<(String, &'static str)> {
    let dash: Value = serde_json::from_str(&read("ops/grafana/agentwire.json"))
        .expect("ops/grafana/agentwire.json is valid JSON");
    let mut exprs = Vec::new();
    dashboard_exprs(&dash, &mut exprs);
    assert!(
        exprs.len() >= 10,
        "the dashboard has queries ({} found)",
        exprs.len()
    );
    let mut from_dash = BTreeSet::new();
    exprs.iter().for_each(|e| metric_names(e, &mut from_dash));

    let rules = rule_exprs(&read("ops/prometheus/alerts.yml"));
    assert!(
        rules.len() >= 5,
        "alerts.yml has the five rules ({} expressions found)",
        rules.len()
    );
    let mut from_rules = BTreeSet::new();
    rules.iter().for_each(|e| metric_names(e, &mut from_rules));
    for (i, e) in rules.iter().enumerate() {
        let mut one = BTreeSet::new();
        metric_names(e, &mut one);
        // `up` (Prometheus's own scrape health) is the only other series a rule may use.
        assert!(
            !one.is_empty() || e.contains("up{"),
            "rule expression {i} names no agentwire metric: {e}"
        );
    }
    from_dash
        .into_iter()
        .map(|m| (m, "ops/grafana/agentwire.json"))
        .chain(
            from_rules
                .into_iter()
                .map(|m| (m, "ops/prometheus/alerts.yml")),
        )
        .collect()
}

fn temp_dir() -> PathBuf {
    common::temp_dir("ops-files-test")
}

fn config(data_dir: PathBuf) -> Config {
    let mut c = common::admin_config(100);
    c.admin.data_dir = Some(data_dir);
    c
}

/// Blocking GET or PUT on the admin API: (status, body).
fn http(method: &str, url: &str, body: Option<Value>) -> (u16, String) {
    let req = ureq::request(method, url).timeout(Duration::from_secs(10));
    let r = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    match r {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap_or_default()),
        Err(e) => panic!("{method} {url}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_named_in_ops_is_exported() {
    let used = used_metrics();
    let dir = temp_dir();
    let h = common::start(config(dir.clone()));
    let admin = h.admin_addr().expect("admin API configured");
    let addr = h.local_addr().to_string();

    // A registered component answering requests (request → reply latency per component).
    let server = ConnectOptions::new()
        .name("opsprobe-0")
        .connect(&addr)
        .await
        .expect("connect");
    let membership = server
        .register(Registration {
            component: "opsprobe".into(),
            instance_id: "opsprobe-0".into(),
            version: "1.0.0".into(),
            subjects: vec!["opsprobe.>".into()],
            ..Registration::default()
        })
        .await
        .expect("register");
    let mut requests = server.subscribe("opsprobe.echo").await.expect("subscribe");
    server.flush().await.expect("flush");
    let responder = {
        let server = server.clone();
        // Each answered request is counted in the heartbeats (component request/error totals).
        let load = membership.load_reporter();
        tokio::spawn(async move {
            while let Some(m) = requests.next().await {
                if server.respond(&m, m.payload.clone()).await.is_err() {
                    break;
                }
                load.record_request(true);
            }
        })
    };

    // Stamped publishes to a subscriber (publish → deliver latency), and requests.
    let caller = ConnectOptions::new()
        .stamp_send_time(true)
        .request_timeout(Duration::from_secs(10))
        .connect(&addr)
        .await
        .expect("connect");
    let mut sink = caller.subscribe("ops.traffic.>").await.expect("subscribe");
    caller.flush().await.expect("flush");
    for i in 0..20 {
        caller
            .publish(&format!("ops.traffic.{i}"), "x")
            .await
            .expect("publish");
    }
    caller.flush().await.expect("flush");
    for _ in 0..20 {
        tokio::time::timeout(WAIT, sink.next())
            .await
            .expect("a message within the wait")
            .expect("subscription open");
    }
    for _ in 0..5 {
        caller
            .request("opsprobe.echo", "ping", Duration::from_secs(10))
            .await
            .expect("the component answers");
    }

    // A protocol error (counted by code) and a config version.
    let mut raw = Raw::connect(h.local_addr()).await;
    raw.publish("bad..subject", b"x").await;
    raw.expect_err().await;
    let url = format!("http://{admin}/api/v1/config/components/opsprobe");
    let (code, body) = tokio::task::spawn_blocking(move || {
        http("PUT", &url, Some(json!({"values": {"depth": "3"}})))
    })
    .await
    .expect("http task");
    assert_eq!(code, 200, "{body}");

    // Scrape until every name is there (bounded), then report what is missing.
    let metrics_url = format!("http://{admin}/metrics");
    let deadline = Instant::now() + SCRAPE_WAIT;
    let (names, text) = loop {
        let u = metrics_url.clone();
        let (code, text) = tokio::task::spawn_blocking(move || http("GET", &u, None))
            .await
            .expect("http task");
        assert_eq!(code, 200, "{text}");
        let names = exported(&text);
        let missing = used.iter().filter(|(m, _)| !names.contains(m)).count();
        if missing == 0 || Instant::now() >= deadline {
            break (names, text);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    responder.abort();
    drop(h);
    let _ = std::fs::remove_dir_all(&dir);

    let missing: Vec<String> = used
        .iter()
        .filter(|(m, _)| !names.contains(m))
        .map(|(m, f)| format!("{m} (in {f})"))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics named in ops/ but not exported on /metrics:\n  {}\n/metrics was:\n{text}",
        missing.join("\n  ")
    );
}

/// The TOML embedded in `ops/k8s/configmap.yaml` under `agentwire.toml: |`.
fn configmap_toml() -> String {
    let yaml = read("ops/k8s/configmap.yaml");
    let mut lines = yaml.lines().skip_while(|l| l.trim() != "agentwire.toml: |");
    let key = lines
        .next()
        .expect("configmap.yaml has an agentwire.toml key");
    let indent = key.len() - key.trim_start().len();
    lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
        .map(|l| l.get(indent + 2..).unwrap_or("").to_owned() + "\n")
        .collect()
}

/// The broker config files shipped in `ops/` load and validate as the broker would, and the
/// Kubernetes grace period covers the lame-duck window plus the shutdown grace.
#[test]
fn deployment_configs_load_and_grace_covers_lame_duck() {
    let compose = Config::from_file(&repo_root().join("ops/compose/agentwire.toml"))
        .expect("ops/compose/agentwire.toml loads");
    compose
        .validate()
        .expect("ops/compose/agentwire.toml validates");

    let dir = temp_dir();
    let file = dir.join("agentwire.toml");
    std::fs::write(&file, configmap_toml()).expect("write the ConfigMap's TOML");
    let k8s = Config::from_file(&file);
    let _ = std::fs::remove_dir_all(&dir);
    let k8s = k8s.expect("the ConfigMap's agentwire.toml loads");
    k8s.validate()
        .expect("the ConfigMap's agentwire.toml validates");
    assert!(k8s.admin.data_dir.is_some(), "the data dir is on the PVC");

    let sts = read("ops/k8s/statefulset.yaml");
    let grace_s: u64 = sts
        .lines()
        .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("statefulset.yaml sets terminationGracePeriodSeconds");
    let needed_ms = k8s.lameduck_window_ms + k8s.shutdown_grace_ms;
    assert!(
        grace_s * 1000 > needed_ms,
        "terminationGracePeriodSeconds ({grace_s} s) must exceed lameduck_window_ms + \
         shutdown_grace_ms ({needed_ms} ms)"
    );
    let unit = read("ops/systemd/agentwire.service");
    let stop_s: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.trim().parse().ok())
        .expect("the unit sets TimeoutStopSec");
    let defaults = Config::default();
    assert!(
        stop_s * 1000 > defaults.lameduck_window_ms + defaults.shutdown_grace_ms,
        "TimeoutStopSec ({stop_s} s) must exceed the default lame-duck window + shutdown grace"
    );
}
