//! One run of a case on a peer (nats-server or Zenoh): a fresh server process, the peer's
//! client under the time limit with its output captured, the client's flags for the case, and
//! its JSON line read into a [`RunReport`].

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::setup::Peers;
use super::System;
use crate::broker_proc::{free_port, BrokerProcess, Window};
use crate::latency::LatencySummary;
use crate::report::{fmt_int, RunReport};
use crate::scenarios::{RunOptions, Spec};

/// One run of `spec` on a peer: a fresh server, the peer's client under the time limit, the
/// server's CPU over the client run and its peak RSS, the server stopped by PID.
pub(super) async fn run_peer(
    sys: System,
    peers: &Peers,
    spec: &Spec,
    opts: &RunOptions,
) -> RunReport {
    let mut report = RunReport::new(spec.scenario(), spec);
    if let Err(e) = run_peer_inner(sys, peers, spec, opts, &mut report).await {
        report.error(format!("{e:#}"));
    }
    report.finish();
    report
}

async fn run_peer_inner(
    sys: System,
    peers: &Peers,
    spec: &Spec,
    opts: &RunOptions,
    report: &mut RunReport,
) -> Result<()> {
    let (server_cmd, client_bin, client_args, addr) = match sys {
        System::Nats => {
            let (server, client) = peers
                .nats
                .clone()
                .ok_or_else(|| anyhow!("nats-server not set up"))?;
            let addr = free_port()?;
            let mut cmd = Command::new(server);
            cmd.args(["-a", "127.0.0.1", "-p"])
                .arg(addr.port().to_string());
            let url = format!("nats://{addr}");
            let timeout = format!("{}s", opts.run_timeout.as_secs().max(1));
            let mut args = vec!["-s".to_owned(), url, "-mon".to_owned(), String::new()];
            args.extend(["-timeout".to_owned(), timeout]);
            args.extend(nats_args(spec)?);
            (cmd, client, args, addr)
        }
        System::Zenoh => {
            let bin = peers
                .zenoh
                .clone()
                .ok_or_else(|| anyhow!("zenoh not set up"))?;
            let addr = free_port()?;
            let ep = format!("tcp/{addr}");
            let mut cmd = Command::new(&bin);
            cmd.args(["router", "--listen", &ep]);
            let mut args = zenoh_args(spec)?;
            args.extend(["--connect".to_owned(), ep]);
            (cmd, bin, args, addr)
        }
        System::Agentwire => bail!("agentwire runs through the scenarios"),
    };
    let server = tokio::task::spawn_blocking(move || {
        BrokerProcess::spawn(server_cmd, addr, System::name(sys), false)
    })
    .await
    .context("server start task failed")??;
    let outcome = async {
        // Let the server settle as zenohbench's run.sh does.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let window = Window::begin(Some(&server));
        let limit = opts.run_timeout + Duration::from_secs(5);
        let (bin, args) = (client_bin.clone(), client_args.clone());
        let output = tokio::task::spawn_blocking(move || run_client(&bin, &args, limit, sys))
            .await
            .context("client task failed")??;
        let usage = window.end(Some(&server));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))
            .ok_or_else(|| {
                let err = String::from_utf8_lossy(&output.stderr);
                let tail: Vec<&str> = err.lines().rev().take(5).collect();
                anyhow!(
                    "{} client printed no JSON ({}); stderr tail: {}",
                    sys.name(),
                    output.status,
                    tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
                )
            })?;
        let v: Value = serde_json::from_str(line).context("client JSON")?;
        match sys {
            System::Nats => fill_from_nats(report, spec, &v),
            _ => fill_from_zenoh(report, spec, &v),
        }
        report.set_usage(&usage);
        if !output.status.success() {
            report.error(format!(
                "{} client exited with {}",
                sys.name(),
                output.status
            ));
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    match server.sample() {
        Ok(s) => report.broker_peak_rss_kib = Some(s.hwm_kib),
        Err(e) => report.error(format!("cannot sample {}: {e:#}", sys.name())),
    }
    match tokio::task::spawn_blocking(move || server.stop()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => report.error(format!("stopping {}: {e:#}", sys.name())),
        Err(e) => report.error(format!("server stop task failed: {e}")),
    }
    outcome
}

/// What a client run printed.
struct ClientOutput {
    status: std::process::ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Runs a peer's client to completion within `limit` (SIGKILL after it), its output captured
/// in temp files (read once it has exited).
fn run_client(bin: &Path, args: &[String], limit: Duration, sys: System) -> Result<ClientOutput> {
    let stem = std::env::temp_dir().join(format!(
        "agentwire-compare-{}-{}",
        sys.name(),
        std::process::id()
    ));
    let (out_path, err_path) = (stem.with_extension("out"), stem.with_extension("err"));
    let out = std::fs::File::create(&out_path)
        .with_context(|| format!("cannot create {}", out_path.display()))?;
    let err = std::fs::File::create(&err_path)
        .with_context(|| format!("cannot create {}", err_path.display()))?;
    let mut child = Command::new(bin)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{} client did not finish within {:.0} s (--run-timeout); killed",
                sys.name(),
                limit.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = std::fs::read(&out_path).unwrap_or_default();
    let stderr = std::fs::read(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    Ok(ClientOutput {
        status,
        stdout,
        stderr,
    })
}

/// natsbench flags for `spec` (`-n` is the total over all publishers, as ours).
fn nats_args(spec: &Spec) -> Result<Vec<String>> {
    Ok(match spec {
        Spec::PubSub(p) => {
            let mut a = vec![
                "-np".to_owned(),
                p.pubs.to_string(),
                "-ns".to_owned(),
                p.subs.to_string(),
                "-ms".to_owned(),
                p.size.to_string(),
                "-n".to_owned(),
                p.msgs.to_string(),
            ];
            if p.queue {
                a.extend(["-queue".to_owned(), "q".to_owned()]);
            }
            a
        }
        Spec::ReqRep(p) => vec![
            "-mode".to_owned(),
            "reqrep".to_owned(),
            "-c".to_owned(),
            p.clients.to_string(),
            "-ms".to_owned(),
            p.size.to_string(),
            "-n".to_owned(),
            p.requests.to_string(),
            "-warmup".to_owned(),
            p.warmup.to_string(),
        ],
        Spec::Rate(_) | Spec::Conns(_) | Spec::Registry(_) | Spec::ApiStatus(_) => {
            bail!("natsbench has no {} scenario", spec.scenario())
        }
    })
}

/// zenohbench arguments for `spec` (its `--msgs` is per publisher).
fn zenoh_args(spec: &Spec) -> Result<Vec<String>> {
    Ok(match spec {
        Spec::PubSub(p) => vec![
            "pubsub".to_owned(),
            "--pubs".to_owned(),
            p.pubs.to_string(),
            "--subs".to_owned(),
            p.subs.to_string(),
            "--size".to_owned(),
            p.size.to_string(),
            "--msgs".to_owned(),
            (p.msgs / p.pubs.max(1) as u64).to_string(),
        ],
        Spec::ReqRep(p) => vec![
            "reqrep".to_owned(),
            "--clients".to_owned(),
            p.clients.to_string(),
            "--size".to_owned(),
            p.size.to_string(),
            "--requests".to_owned(),
            p.requests.to_string(),
            "--warmup".to_owned(),
            p.warmup.to_string(),
        ],
        Spec::Rate(_) | Spec::Conns(_) | Spec::Registry(_) | Spec::ApiStatus(_) => {
            bail!("zenohbench has no {} scenario", spec.scenario())
        }
    })
}

fn f64_of(v: &Value, k: &str) -> Option<f64> {
    v.get(k).and_then(Value::as_f64)
}

fn u64_of(v: &Value, k: &str) -> Option<u64> {
    v.get(k)
        .and_then(|x| x.as_u64().or_else(|| x.as_f64().map(|f| f.max(0.0) as u64)))
}

/// A latency summary from `lat_*_us` fields.
fn latency_of(v: &Value, count: u64) -> Option<LatencySummary> {
    Some(LatencySummary {
        p50: f64_of(v, "lat_p50_us")?,
        p90: f64_of(v, "lat_p90_us").unwrap_or(0.0),
        p95: f64_of(v, "lat_p95_us").unwrap_or(0.0),
        p99: f64_of(v, "lat_p99_us")?,
        p999: f64_of(v, "lat_p999_us").unwrap_or(0.0),
        max: f64_of(v, "lat_max_us").unwrap_or(0.0),
        mean: f64_of(v, "lat_mean_us").unwrap_or(0.0),
        count,
    })
}

/// Fills `r` from one natsbench JSON line.
fn fill_from_nats(r: &mut RunReport, spec: &Spec, v: &Value) {
    r.elapsed_s = f64_of(v, "e2e_secs")
        .or_else(|| f64_of(v, "pub_secs"))
        .or_else(|| f64_of(v, "req_secs"))
        .unwrap_or(0.0);
    match spec {
        Spec::PubSub(p) => {
            r.published = u64_of(v, "n").unwrap_or(0);
            r.published_per_sec = f64_of(v, "pub_rate");
            r.msgs_in = r.published;
            if p.subs > 0 {
                r.expected = u64_of(v, "sub_expected").unwrap_or(0);
                r.delivered = u64_of(v, "sub_received").unwrap_or(0);
                r.lost = r.expected.saturating_sub(r.delivered);
                r.delivered_per_sec = f64_of(v, "deliver_rate");
                r.msgs_out = r.delivered;
            }
        }
        Spec::ReqRep(_) => {
            let n = u64_of(v, "reqs").unwrap_or(0);
            r.requests_per_sec = f64_of(v, "req_rate");
            r.latency_us = latency_of(v, n);
            r.msgs_in = 2 * n;
            r.msgs_out = 2 * n;
        }
        Spec::Rate(_) | Spec::Conns(_) | Spec::Registry(_) | Spec::ApiStatus(_) => {}
    }
    if let Some(e) = v
        .get("error")
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty())
    {
        r.error(format!("natsbench: {e}"));
    }
    if v.get("complete").and_then(Value::as_bool) != Some(true) && r.lost == 0 {
        r.error("natsbench: run not complete");
    }
}

/// Fills `r` from one zenohbench JSON line.
fn fill_from_zenoh(r: &mut RunReport, spec: &Spec, v: &Value) {
    r.elapsed_s = f64_of(v, "elapsed_s").unwrap_or(0.0);
    match spec {
        Spec::PubSub(_) => {
            r.published = u64_of(v, "published").unwrap_or(0);
            r.published_per_sec = f64_of(v, "published_per_sec");
            r.expected = u64_of(v, "expected").unwrap_or(0);
            r.delivered = u64_of(v, "delivered").unwrap_or(0);
            r.lost = u64_of(v, "lost").unwrap_or(0);
            r.delivered_per_sec = f64_of(v, "delivered_per_sec");
            r.msgs_in = r.published;
            r.msgs_out = r.delivered;
            if v.get("complete").and_then(Value::as_bool) != Some(true) && r.lost == 0 {
                r.error("zenohbench: run not complete");
            }
        }
        Spec::ReqRep(p) => {
            let n = u64_of(v, "completed").unwrap_or(0);
            r.requests_per_sec = f64_of(v, "req_per_sec");
            r.latency_us = latency_of(v, n);
            r.msgs_in = 2 * n;
            r.msgs_out = 2 * n;
            let errors = u64_of(v, "errors").unwrap_or(0);
            if errors > 0 {
                r.error(format!("zenohbench: {errors} request errors"));
            }
            if n < p.requests {
                r.error(format!(
                    "zenohbench: {} of {} requests completed",
                    fmt_int(n),
                    fmt_int(p.requests)
                ));
            }
        }
        Spec::Rate(_) | Spec::Conns(_) | Spec::Registry(_) | Spec::ApiStatus(_) => {}
    }
    if let Some(e) = v
        .get("error")
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty())
    {
        r.error(format!("zenohbench: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::pubsub::PubSubParams;

    #[test]
    fn peer_arguments() {
        let spec = Spec::PubSub(PubSubParams {
            pubs: 4,
            subs: 4,
            queue: true,
            size: 128,
            msgs: 4000,
        });
        let n = nats_args(&spec).expect("pubsub maps");
        assert!(n.windows(2).any(|w| w == ["-queue", "q"]));
        assert!(n.windows(2).any(|w| w == ["-n", "4000"]));
        let z = zenoh_args(&spec).expect("pubsub maps");
        assert!(z.windows(2).any(|w| w == ["--msgs", "1000"]));
    }

    #[test]
    fn nats_json_maps_to_a_report() {
        let spec = Spec::PubSub(PubSubParams {
            pubs: 1,
            subs: 1,
            queue: false,
            size: 128,
            msgs: 1000,
        });
        let v: Value = serde_json::from_str(
            r#"{"mode":"pubsub","n":1000,"complete":false,"pub_rate":5000.0,
                "sub_expected":1000,"sub_received":990,"deliver_rate":4000.0,"e2e_secs":0.25}"#,
        )
        .expect("valid JSON");
        let mut r = RunReport::new("pubsub", &spec);
        fill_from_nats(&mut r, &spec, &v);
        r.finish();
        assert_eq!(r.lost, 10);
        assert!(!r.ok);
        assert_eq!(r.delivered_per_sec, Some(4000.0));
    }

    #[test]
    fn zenoh_reqrep_json_maps_to_a_report() {
        let spec = Spec::ReqRep(crate::scenarios::reqrep::ReqRepParams {
            clients: 1,
            size: 128,
            requests: 100,
            repliers: 1,
            warmup: 10,
            slow_replier_ms: 0,
        });
        let v: Value = serde_json::from_str(
            r#"{"req_per_sec":4000.0,"lat_p50_us":240.0,"lat_p90_us":300.0,"lat_p99_us":1310.0,
                "lat_p999_us":2000.0,"lat_max_us":3000.0,"completed":100,"errors":0,"error":null}"#,
        )
        .expect("valid JSON");
        let mut r = RunReport::new("reqrep", &spec);
        fill_from_zenoh(&mut r, &spec, &v);
        r.finish();
        assert!(r.ok, "{:?}", r.errors);
        assert_eq!(r.latency_us.map(|l| l.p99), Some(1310.0));
    }
}
