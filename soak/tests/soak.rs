//! The soak harness end to end: 60 s of traffic with every fault (kill, lameduck, slow, garbage,
//! storm, partition, scale) against a broker it starts itself, `--json`. It must exit 0, lose
//! nothing outside fault windows, and every fault kind must have recovered with reconnect p99
//! within 2 s. Counts are modest so a debug build passes on 2 shared cores; the 1,000-agent run
//! is the README's release command.
//!
//! Needs the `agentwire` binary beside the soak binary (`target/<profile>/agentwire`):
//! `cargo test --workspace` builds it (the broker's own integration tests need it), and
//! `scripts/test.sh` builds it first in any case.

use std::path::PathBuf;
use std::process::Command;

fn broker_bin() -> PathBuf {
    let soak = PathBuf::from(env!("CARGO_BIN_EXE_agentwire-soak"));
    let bin = soak
        .parent()
        .map(|d| d.join("agentwire"))
        .expect("the soak binary has a parent directory");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p agentwire-cli` (same profile and target dir) \
         first, or the whole `cargo test --workspace` / scripts/test.sh",
        bin.display()
    );
    bin
}

#[ignore = "needs the agentwire binary and 60 s: run by scripts/test.sh (cargo test -p agentwire-soak --test soak -- --ignored)"]
#[test]
fn sixty_seconds_with_every_fault() {
    let out = Command::new(env!("CARGO_BIN_EXE_agentwire-soak"))
        .args([
            "--duration",
            "60s",
            "--faults",
            "kill,lameduck,slow,garbage,storm,partition,scale",
            "--publishers",
            "2",
            "--subscribers",
            "2",
            "--rate",
            "400",
            "--requesters",
            "2",
            "--req-rate",
            "20",
            "--storm-clients",
            "60",
            "--agents-min",
            "10",
            "--agents-max",
            "50",
            "--garbage-conns",
            "100",
            "--json",
        ])
        .arg("--broker-bin")
        .arg(broker_bin())
        .output()
        .expect("agentwire-soak runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not the JSON summary ({e}); stderr:\n{stderr}\nstdout:\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert!(
        out.status.success(),
        "exit {:?}; stderr:\n{stderr}",
        out.status
    );
    assert_eq!(
        summary["lost_outside_faults"].as_u64(),
        Some(0),
        "stderr:\n{stderr}"
    );
    let p99 = summary["reconnect_ms_all"]["p99"]
        .as_f64()
        .expect("reconnects were measured");
    assert!(p99 <= 2000.0, "reconnect p99 {p99} ms; stderr:\n{stderr}");
    let kinds: Vec<&str> = summary["faults"]
        .as_array()
        .expect("fault windows")
        .iter()
        .filter_map(|w| w["kind"].as_str())
        .collect();
    for k in ["kill", "lameduck", "slow", "garbage", "storm", "partition"] {
        assert!(kinds.contains(&k), "{k} was injected: {kinds:?}");
    }
    for k in ["kill", "lameduck", "storm", "partition"] {
        assert!(
            summary["reconnect_ms"][k]["count"].as_u64().unwrap_or(0) > 0,
            "reconnects measured after {k}"
        );
    }
    assert!(summary["messages"]["delivered"].as_u64().unwrap_or(0) > 10_000);
    assert!(summary["clients"]["agents_peak"].as_u64().unwrap_or(0) >= 40);
}
