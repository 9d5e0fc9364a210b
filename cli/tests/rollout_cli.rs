//! The rollout "must show" with the `agentwire` binary alone: `agentwire serve`, `agentwire
//! agent --component planner --instances 4`, then `agentwire config set planner error_rate=1.0
//! --canary 1 --bake 10 --wait` is rolled back by itself within 30 s and only one instance ever
//! applied it, and `latency_ms=1` with the same flags reaches all four.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_addr, BIN};

/// A child process killed (and its data dir removed) on drop.
struct Proc {
    child: Child,
    dir: Option<std::path::PathBuf>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn lines_of(agent: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
    agent.lock().expect("lines").clone()
}

/// Instances whose output has `applied config v{version}` with `what`.
fn applied(lines: &[String], version: u64, what: &str) -> Vec<String> {
    let mut v: Vec<String> = lines
        .iter()
        .filter(|l| l.contains(&format!(" applied config v{version} ")) && l.contains(what))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    v.sort();
    v.dedup();
    v
}

fn config_set(admin: SocketAddr, args: &[&str]) -> (bool, String, Duration) {
    let t0 = Instant::now();
    let o = Command::new(BIN)
        .args(["config", "set", "planner"])
        .args(args)
        .args([
            "--canary",
            "1",
            "--bake",
            "10",
            "--wait",
            "--admin",
            &admin.to_string(),
        ])
        .output()
        .expect("run agentwire config set");
    (o.status.success(), common::text(&o), t0.elapsed())
}

#[test]
fn canary_rollback_and_promotion_with_the_cli_alone() {
    let addr = free_addr();
    let admin = free_addr();
    let dir = std::env::temp_dir().join(format!(
        "agentwire-rollout-cli-{}-{}",
        std::process::id(),
        addr.port()
    ));
    let _broker = Proc {
        child: Command::new(BIN)
            .args([
                "serve",
                "--listen",
                &addr.to_string(),
                "--admin",
                &admin.to_string(),
            ])
            .arg("--data-dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn agentwire serve"),
        dir: Some(dir),
    };
    common::wait_listening(
        &[addr, admin],
        Duration::from_secs(20),
        "broker did not start",
    );
    let mut agent = Proc {
        child: Command::new(BIN)
            .args(["agent", "--component", "planner", "--instances", "4"])
            .args(["--server", &addr.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn agentwire agent"),
        dir: None,
    };
    let out = Arc::new(Mutex::new(Vec::new()));
    let stdout = agent.child.stdout.take().expect("piped stdout");
    let sink = out.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().expect("lines").push(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lines_of(&out).iter().any(|l| l.contains("registered")) {
        assert!(
            Instant::now() < deadline,
            "agent did not start: {:?}",
            lines_of(&out)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let the generated load reach the instances' heartbeats.
    std::thread::sleep(Duration::from_secs(2));

    let (ok, text, took) = config_set(admin, &["error_rate=1.0"]);
    assert!(!ok, "a rolled-back rollout exits 1: {text}");
    assert!(text.contains("rolled_back"), "{text}");
    assert!(took < Duration::from_secs(30), "rolled back in {took:?}");
    eprintln!("error_rate=1.0 rolled back in {took:.1?}: {text}");

    let (ok, text, took) = config_set(admin, &["latency_ms=1"]);
    assert!(ok, "a promoted rollout exits 0: {text}");
    assert!(text.contains("promoted"), "{text}");
    eprintln!("latency_ms=1 promoted in {took:.1?}: {text}");
    // v1 error_rate=1.0 (canary only), v2 its rollback, v3 latency_ms=1 (everyone).
    let deadline = Instant::now() + Duration::from_secs(30);
    while applied(&lines_of(&out), 3, "latency_ms=1").len() < 4 {
        assert!(
            Instant::now() < deadline,
            "not all four applied latency_ms=1: {:?}",
            lines_of(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let lines = lines_of(&out);
    let bad = applied(&lines, 1, "error_rate=1.0");
    assert_eq!(
        bad.len(),
        1,
        "only the canary applied error_rate=1.0: {lines:?}"
    );
    assert!(
        lines
            .iter()
            .all(|l| !l.contains("error_rate=1.0") || l.starts_with(&bad[0])),
        "{lines:?}"
    );

    // Ctrl-C: the agent deregisters and exits 0.
    common::signal(&agent.child, "INT");
    let status = common::wait_exit(
        &mut agent.child,
        Duration::from_secs(20),
        "agent did not exit on SIGINT",
    );
    assert!(status.success(), "{status:?}");
    let _ = reader.join();
    assert!(lines_of(&out)
        .iter()
        .any(|l| l.starts_with("stopping (interrupted)")));
}
