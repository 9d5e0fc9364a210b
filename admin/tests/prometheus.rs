//! A real Prometheus server scraping a real broker: the broker's `/metrics` exposition must be
//! something Prometheus accepts, and its figures must come back through Prometheus's own HTTP
//! query API (`/api/v1/query`) with the values the broker counted.
//!
//! Needs the `prometheus` binary on `PATH` (Debian's `prometheus` package, 2.42): run the tests
//! with `scripts/test.sh`, which installs it when missing. Without it this test fails (it does
//! not skip). Everything is on loopback with ephemeral ports, and every wait is bounded.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How many messages the test publishes (and expects `sum(agentwire_messages_in_total)` to be).
const MESSAGES: u64 = 25;
/// How long Prometheus gets to start, scrape the broker and answer with the right figures.
const PROMETHEUS_WAIT: Duration = Duration::from_secs(30);
/// Pause between two queries while waiting.
const POLL: Duration = Duration::from_millis(200);

/// A Prometheus server in its own temp dir: killed, and the dir removed, on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Prometheus {
    /// Writes a config scraping `target` every second and starts `prometheus` on a free
    /// loopback port.
    fn start(target: SocketAddr) -> Prometheus {
        let dir = std::env::temp_dir().join(format!(
            "agentwire-prometheus-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir).expect("create the Prometheus temp dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: agentwire\n    metrics_path: /metrics\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        // A free port: bound then released (Prometheus fails fast, with its log shown, in the
        // unlikely case someone takes it in between).
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("create the log");
        let spawned = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn();
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                if e.kind() == std::io::ErrorKind::NotFound {
                    panic!(
                        "the `prometheus` binary is not on PATH: run the tests with \
                         `scripts/test.sh`, which installs Debian's `prometheus` package"
                    );
                }
                panic!("cannot start prometheus: {e}");
            }
        };
        Prometheus { child, dir, port }
    }

    /// Panics with Prometheus's log if it has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("prometheus exited early ({status}):\n{}", self.log());
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// Runs an instant query; `None` until Prometheus answers with a successful result.
    fn query(&self, agent: &ureq::Agent, promql: &str) -> Option<Value> {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let body: Value = agent
            .get(&url)
            .query("query", promql)
            .call()
            .ok()?
            .into_json()
            .ok()?;
        (body["status"] == "success").then(|| body["data"]["result"].clone())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The value of a one-sample instant-vector result (`[{"metric": {..}, "value": [t, "v"]}]`).
fn single_value(result: &Value) -> Option<f64> {
    match result.as_array()?.as_slice() {
        [sample] => sample["value"][1].as_str()?.parse().ok(),
        _ => None,
    }
}

#[ignore = "needs the prometheus binary: run by scripts/test.sh, which installs it (cargo test -p agentwire-admin --test prometheus -- --ignored)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_broker_and_answers_with_its_figures() {
    let mut cfg = common::config(2);
    cfg.admin.listen = Some("127.0.0.1:0".parse().expect("literal"));
    let h = common::start(cfg);
    let admin = h.admin_addr().expect("admin API configured");

    let client = agentwire_client::connect(&h.local_addr().to_string())
        .await
        .expect("connect to the test broker");
    for i in 0..MESSAGES {
        client
            .publish("metrics.test", format!("message {i}"))
            .await
            .expect("publish");
    }
    client.flush().await.expect("flush");
    common::eventually(
        || h.stats().msgs_in == MESSAGES,
        "the broker to count every publish",
    )
    .await;

    let (up, sum, elapsed) = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut prom = Prometheus::start(admin);
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(1))
            .timeout(Duration::from_secs(5))
            .build();
        let deadline = started + PROMETHEUS_WAIT;
        let (mut up, mut sum) = (None, None);
        loop {
            prom.assert_running();
            up = prom
                .query(&agent, "up{job=\"agentwire\"}")
                .as_ref()
                .and_then(single_value)
                .or(up);
            sum = prom
                .query(&agent, "sum(agentwire_messages_in_total)")
                .as_ref()
                .and_then(single_value)
                .or(sum);
            if up == Some(1.0) && sum == Some(MESSAGES as f64) {
                break;
            }
            if Instant::now() >= deadline {
                panic!(
                    "after {PROMETHEUS_WAIT:?}: up{{job=\"agentwire\"}} = {up:?}, \
                     sum(agentwire_messages_in_total) = {sum:?}, expected 1 and {MESSAGES}; \
                     prometheus log:\n{}",
                    prom.log()
                );
            }
            std::thread::sleep(POLL);
        }
        (up, sum, started.elapsed())
    })
    .await
    .expect("the Prometheus task");

    assert_eq!(up, Some(1.0), "Prometheus scrapes the broker's /metrics");
    assert_eq!(
        sum,
        Some(MESSAGES as f64),
        "sum(agentwire_messages_in_total) through Prometheus"
    );
    eprintln!("prometheus answered with the broker's figures after {elapsed:?}");
    drop(client);
    h.shutdown();
    h.join();
}
