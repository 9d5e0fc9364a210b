//! The `agentwire` binary end to end: `serve` on a loopback port, the client tools against it,
//! their exit codes and messages, and a clean exit 0 on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{free_addr, text, BIN};

struct Broker {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    data_dir: std::path::PathBuf,
}

impl Broker {
    fn start(extra: &[&str]) -> Broker {
        let addr = free_addr();
        let admin = free_addr();
        let data_dir = std::env::temp_dir().join(format!(
            "agentwire-cli-test-{}-{}",
            std::process::id(),
            addr.port()
        ));
        let child = Command::new(BIN)
            .args(["serve", "--listen", &addr.to_string()])
            .args(["--admin", &admin.to_string()])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agentwire serve");
        // The client port listens first; the admin API binds after the data dir is open.
        let what = format!("broker did not start listening on {addr}");
        common::wait_listening(&[addr, admin], Duration::from_secs(10), &what);
        Broker {
            child,
            addr,
            admin,
            data_dir,
        }
    }

    fn signal(&self, sig: &str) {
        common::signal(&self.child, sig);
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        common::wait_exit(
            &mut self.child,
            Duration::from_secs(15),
            "broker did not exit",
        )
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn tool(args: &[&str], server: SocketAddr) -> Output {
    Command::new(BIN)
        .args(args)
        .args(["--server", &server.to_string()])
        .output()
        .expect("run agentwire tool")
}

#[test]
fn pub_sub_req_reply_through_the_cli() {
    let broker = Broker::start(&["--shards", "2"]);
    let addr = broker.addr.to_string();

    // sub --count 3 prints `SUBJECT DATA` lines and exits.
    let sub = Command::new(BIN)
        .args(["sub", "greet.*", "--count", "3", "--server", &addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sub");
    let mut sub = sub;
    let deadline = Instant::now() + Duration::from_secs(20);
    while sub.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "sub did not get 3 messages");
        let o = tool(&["pub", "greet.world", "hello there"], broker.addr);
        assert!(
            o.status.success(),
            "pub failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = sub.wait_with_output().expect("sub output");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(lines, ["greet.world hello there"; 3]);

    // --json output.
    let sub = Command::new(BIN)
        .args(["sub", "j", "--count", "1", "--json", "--server", &addr])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sub");
    let mut sub = sub;
    while sub.try_wait().expect("try_wait").is_none() {
        assert!(
            Instant::now() < deadline + Duration::from_secs(10),
            "json sub did not finish"
        );
        tool(&["pub", "j", "x"], broker.addr);
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = sub.wait_with_output().expect("output");
    let v: serde_json::Value =
        serde_json::from_slice(out.stdout.split(|&b| b == b'\n').next().expect("a line"))
            .expect("valid JSON line");
    assert_eq!(v["subject"], "j");
    assert_eq!(v["data"], "x");

    // reply + req.
    let mut reply = Command::new(BIN)
        .args(["reply", "echo", "--server", &addr])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn reply");
    let mut answered = None;
    for _ in 0..100 {
        let o = tool(&["req", "echo", "ping 1", "--timeout", "2000"], broker.addr);
        if o.status.success() {
            answered = Some(o);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = answered.expect("req got an answer from reply");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "ping 1\n");
    let _ = reply.kill();
    let _ = reply.wait();

    // No responders: exit 1 with a clear message.
    let o = tool(&["req", "nobody", "x", "--timeout", "500"], broker.addr);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr).to_lowercase();
    assert!(err.contains("no responders"), "{err}");

    // Invalid subject: usage error, exit 2.
    let o = tool(&["pub", "a..b", "x"], broker.addr);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("a..b"));
}

#[test]
fn cannot_connect_says_what_to_do() {
    let addr = free_addr();
    let o = tool(&["pub", "a", "x"], addr);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&addr.to_string()), "{err}");
    assert!(err.contains("agentwire serve"), "{err}");
}

#[test]
fn bad_config_is_a_usage_error() {
    let dir = std::env::temp_dir().join(format!("agentwire-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("bad.toml");
    std::fs::write(&file, "shardz = 2\n").expect("write config");
    let o = Command::new(BIN)
        .args(["serve", "--config", &file.display().to_string()])
        .output()
        .expect("run serve");
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("shardz"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_flushes_and_exits_zero() {
    let mut broker = Broker::start(&["--shards", "2"]);
    // A subscriber that reconnects by itself is not ended by a broker shutdown (a restart or an
    // upgrade): it gets ERR server_shutdown and keeps trying.
    let mut sub = Command::new(BIN)
        .args(["sub", "never", "--server", &broker.addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sub");
    std::thread::sleep(Duration::from_millis(300));
    broker.signal("TERM");
    let status = broker.wait_exit();
    assert!(status.success(), "exit status {status:?}");
    let stderr = broker.child.stderr.take().expect("stderr piped");
    let log: Vec<String> = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .collect();
    assert!(log.iter().any(|l| l.contains("SIGTERM")), "{log:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        sub.try_wait().expect("try_wait").is_none(),
        "sub keeps running (reconnecting) after the broker's shutdown"
    );
    let _ = sub.kill();
    let _ = sub.wait();
}

fn admin_tool(args: &[&str], admin: SocketAddr) -> Output {
    Command::new(BIN)
        .args(args)
        .args(["--admin", &admin.to_string()])
        .output()
        .expect("run agentwire admin command")
}

#[test]
fn admin_commands_through_the_cli() {
    let broker = Broker::start(&["--shards", "2"]);
    let a = broker.admin;
    let o = admin_tool(&["status"], a);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("no registered components"),
        "{}",
        text(&o)
    );

    // Unknown component without --create: exit 1 and the API's message.
    let o = admin_tool(&["config", "set", "planner", "mode=fast"], a);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("unknown_component"), "{}", text(&o));
    let o = admin_tool(
        &[
            "config",
            "set",
            "planner",
            "mode=fast",
            "depth=3",
            "--create",
        ],
        a,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("version 1"), "{}", text(&o));
    let o = admin_tool(
        &[
            "config",
            "set",
            "planner",
            "depth=4",
            "--unset",
            "mode",
            "--expected-version",
            "1",
        ],
        a,
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = admin_tool(
        &[
            "config",
            "set",
            "planner",
            "depth=5",
            "--expected-version",
            "1",
        ],
        a,
    );
    assert_eq!(o.status.code(), Some(1), "stale version: {}", text(&o));
    assert!(text(&o).contains("409"), "{}", text(&o));
    let o = admin_tool(&["config", "set", "planner", "novalue"], a);
    assert_eq!(o.status.code(), Some(2), "usage error: {}", text(&o));
    let o = admin_tool(&["config", "rollback", "planner", "1"], a);
    assert!(o.status.success(), "{}", text(&o));
    let o = admin_tool(&["config", "get", "planner", "--json"], a);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["version"], 3);
    assert_eq!(v["values"]["mode"], "fast");
    assert_eq!(v["values"]["depth"], "3");
    let o = admin_tool(&["config", "history", "planner"], a);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("rollback to 1") && t.contains("v2") && t.contains("v1"),
        "{t}"
    );

    // A registered component shows up in `components` and `status`.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = rt.block_on(async {
        let c = agentwire_client::connect(&broker.addr.to_string())
            .await
            .expect("connect");
        let m = c
            .register(agentwire_client::Registration {
                component: "planner".into(),
                instance_id: "planner-7".into(),
                version: "2.1.0".into(),
                ..Default::default()
            })
            .await
            .expect("register");
        assert_eq!(m.config().version(), 3);
        (c, m)
    });
    let o = admin_tool(&["components"], a);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("planner-7"), "{}", text(&o));
    let o = admin_tool(&["components", "planner", "--json"], a);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["instances"][0]["version"], "2.1.0");
    let o = admin_tool(&["status"], a);
    assert!(
        text(&o).contains("planner") && text(&o).contains("2.1.0"),
        "{}",
        text(&o)
    );
    let o = admin_tool(&["top", "--iterations", "2", "--interval-ms", "100"], a);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("msg/s"), "{}", text(&o));
    for cmd in ["optimize", "deployment"] {
        let o = admin_tool(&[cmd], a);
        assert!(o.status.success(), "{cmd}: {}", text(&o));
        let _: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    }
    drop(client);

    // Nothing listening: exit 1 with what to do.
    let o = admin_tool(&["status"], free_addr());
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("agentwire serve"), "{}", text(&o));
}

/// A config PUT over the admin API; the version the broker acknowledged, if it answered 200.
fn put_version(admin: SocketAddr, value: u64) -> Option<u64> {
    let r = ureq::put(&format!("http://{admin}/api/v1/config/components/durable"))
        .timeout(Duration::from_secs(2))
        .send_json(serde_json::json!({"values": {"n": value.to_string()}, "create": true}))
        .ok()?;
    let v: serde_json::Value = r.into_json().ok()?;
    v["version"].as_u64()
}

#[test]
fn acknowledged_config_versions_survive_kill_9() {
    let data_dir = std::env::temp_dir().join(format!(
        "agentwire-kill9-{}-{}",
        std::process::id(),
        free_addr().port()
    ));
    let start = |data_dir: &std::path::Path| {
        let admin = free_addr();
        (serve_on(free_addr(), Some(admin), data_dir), admin)
    };
    let (mut child, admin) = start(&data_dir);
    // PUTs from a thread, acknowledged versions recorded; the broker is killed mid-loop.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(0u64));
    let writer = {
        let acked = acked.clone();
        std::thread::spawn(move || {
            for i in 1..=2000u64 {
                match put_version(admin, i) {
                    Some(v) => *acked.lock().expect("lock") = v,
                    None => return,
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while *acked.lock().expect("lock") < 20 {
        assert!(Instant::now() < deadline, "no PUT acknowledged");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("kill -9");
    let _ = child.wait();
    writer.join().expect("writer thread");
    let last = *acked.lock().expect("lock");
    let (mut child, admin) = start(&data_dir);
    let v: serde_json::Value =
        ureq::get(&format!("http://{admin}/api/v1/config/components/durable"))
            .call()
            .expect("GET after restart")
            .into_json()
            .expect("json");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&data_dir);
    let got = v["version"].as_u64().expect("version");
    assert!(got >= last, "acknowledged version {last} lost: found {got}");
    assert!(
        got <= last + 1,
        "at most the one in flight at the kill: {got} vs {last}"
    );
    assert_eq!(v["values"]["n"], got.to_string());
}

/// Starts `agentwire serve` on `addr` (admin API on `admin`, or off) and waits until both
/// answer.
fn serve_on(addr: SocketAddr, admin: Option<SocketAddr>, data_dir: &std::path::Path) -> Child {
    let admin_arg = admin.map_or_else(|| "off".to_owned(), |a| a.to_string());
    let child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            &addr.to_string(),
            "--admin",
            &admin_arg,
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn agentwire serve");
    let addrs: Vec<SocketAddr> = std::iter::once(addr).chain(admin).collect();
    let what = format!("broker did not start on {addr}");
    common::wait_listening(&addrs, Duration::from_secs(10), &what);
    child
}

#[test]
fn clients_ride_through_kill_9_and_restart() {
    let addr = free_addr();
    let dir = std::env::temp_dir().join(format!("agentwire-kill9-reconnect-{}", addr.port()));
    let mut broker = serve_on(addr, None, &dir);
    // The CLI subscriber and a library subscriber + publisher.
    let mut cli_sub = Command::new(BIN)
        .args(["sub", "ride.>", "--server", &addr.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sub");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (client, mut sub) = rt.block_on(async {
        let c = agentwire_client::ConnectOptions::new()
            .reconnect_delay(Duration::from_millis(20), Duration::from_millis(200))
            .connect(&addr.to_string())
            .await
            .expect("connect");
        let s = c.subscribe("ride.>").await.expect("subscribe");
        c.flush().await.expect("flush");
        (c, s)
    });
    let stdout = cli_sub.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Publish until the CLI subscriber (started concurrently) prints one.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        assert!(Instant::now() < deadline, "the CLI sub never printed");
        rt.block_on(async {
            client.publish("ride.ready", "0").await.expect("publish");
            client.flush().await.expect("flush");
        });
        if rx.recv_timeout(Duration::from_millis(200)).is_ok() {
            break;
        }
    }
    while rx.recv_timeout(Duration::from_millis(100)).is_ok() {}
    rt.block_on(async {
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await {
        }
        client.publish("ride.before", "1").await.expect("publish");
        client.flush().await.expect("flush");
        let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("message before")
            .expect("open");
        assert_eq!(&*m.subject, "ride.before");
    });
    // Delivery is at most once across a crash: kill only after the CLI printed it.
    let line = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the CLI sub prints the message before the kill");
    assert_eq!(line, "ride.before 1");
    broker.kill().expect("kill -9");
    let _ = broker.wait();
    // Published once the client knows it is disconnected: buffered, sent after the reconnect
    // (a publish written into the dying socket before that would be lost, like any TCP loss).
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.is_connected() {
        assert!(Instant::now() < deadline, "the client never saw the drop");
        std::thread::sleep(Duration::from_millis(5));
    }
    rt.block_on(async {
        client
            .publish("ride.during", "2")
            .await
            .expect("buffered publish");
    });
    let mut broker = serve_on(addr, None, &dir);
    rt.block_on(async {
        let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("the buffered message after the restart")
            .expect("subscription resumed");
        assert_eq!(&*m.subject, "ride.during");
        client.publish("ride.after", "3").await.expect("publish");
        client.flush().await.expect("flush");
        let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("message after")
            .expect("open");
        assert_eq!(&*m.subject, "ride.after");
    });
    // The CLI subscriber reconnects on its own backoff: it prints again once it has
    // resubscribed (publish until it does, bounded).
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !lines.iter().any(|l: &String| l.starts_with("ride.after")) {
        assert!(
            Instant::now() < deadline,
            "the CLI sub printed nothing after the restart: {lines:?}"
        );
        rt.block_on(async {
            client.publish("ride.after", "3").await.expect("publish");
            client.flush().await.expect("flush");
        });
        while let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            lines.push(l);
        }
    }
    let _ = cli_sub.kill();
    let _ = cli_sub.wait();
    let _ = broker.kill();
    let _ = broker.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A tool run with extra environment.
fn tool_env(args: &[&str], server: SocketAddr, env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .args(["--server", &server.to_string()])
        .envs(env.iter().copied())
        .output()
        .expect("run agentwire tool")
}

#[test]
fn users_tokens_keys_reload_and_no_secret_in_the_logs() {
    let addr = free_addr();
    let admin = free_addr();
    let dir = std::env::temp_dir().join(format!("agentwire-cli-auth-{}", addr.port()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");

    // keygen: a credentials file only its owner reads, and the public key beside it.
    let creds = dir.join("worker.creds");
    let o = Command::new(BIN)
        .arg("keygen")
        .arg(&creds)
        .output()
        .expect("run keygen");
    assert!(o.status.success(), "{}", text(&o));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&creds)
        .expect("creds")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "secret file mode");
    let public = std::fs::read_to_string(dir.join("worker.creds.pub")).expect("pub file");
    let public = public.trim();
    let secret_line = std::fs::read_to_string(&creds).expect("creds text");
    let secret = secret_line
        .lines()
        .find_map(|l| l.strip_prefix("secret_key = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("secret_key line")
        .to_owned();
    let again = Command::new(BIN)
        .arg("keygen")
        .arg(&creds)
        .output()
        .expect("run keygen");
    assert_eq!(again.status.code(), Some(2), "no silent overwrite");

    let admin_token = "admin-token-0123456789";
    let users = |with_planner: bool| {
        let planner = if with_planner {
            "[[users]]\nname = \"planner\"\ntoken = \"s3cret\"\npublish = [\"tasks.>\"]\nsubscribe = [\"results.>\"]\n"
        } else {
            ""
        };
        format!(
            "{planner}[[users]]\nname = \"worker\"\npublic_key = \"{public}\"\nsubscribe = [\"tasks.>\"]\n\
             [[admin.tokens]]\nname = \"ops\"\ntoken = \"{admin_token}\"\nrole = \"operator\"\n"
        )
    };
    let config = dir.join("agentwire.toml");
    std::fs::write(&config, users(true)).expect("config");
    let log_path = dir.join("broker.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            &addr.to_string(),
            "--admin",
            &admin.to_string(),
        ])
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn agentwire serve");
    common::wait_listening(
        &[addr, admin],
        Duration::from_secs(10),
        "broker did not start",
    );

    // No token: refused, exit 1, and the message says why.
    let o = tool(&["pub", "tasks.a", "x"], addr);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("authentication required"), "{}", text(&o));
    let o = tool(&["pub", "tasks.a", "x", "--token", "wrong-s3cret"], addr);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("unknown token"), "{}", text(&o));
    assert!(
        !text(&o).contains("wrong-s3cret"),
        "the tool does not echo the token"
    );

    // The worker (ed25519 credentials) receives what the planner (--token s3cret) publishes.
    let mut sub = Command::new(BIN)
        .args([
            "sub",
            "tasks.>",
            "--count",
            "1",
            "--server",
            &addr.to_string(),
        ])
        .arg("--creds")
        .arg(&creds)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sub");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let o = tool(&["pub", "tasks.a", "hello", "--token", "s3cret"], addr);
        assert!(o.status.success(), "{}", text(&o));
        if sub.try_wait().expect("try_wait").is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "the worker never got a task");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = sub.wait_with_output().expect("sub output");
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("tasks.a hello"));
    // AGENTWIRE_TOKEN works like --token; a denied publish is an error with the subject.
    let o = tool_env(
        &["pub", "results.x", "y"],
        addr,
        &[("AGENTWIRE_TOKEN", "s3cret")],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("permission denied") && text(&o).contains("results.x"),
        "{}",
        text(&o)
    );

    // Admin output carries no secret.
    let o = Command::new(BIN)
        .args(["status", "--json", "--admin", &admin.to_string()])
        .env("AGENTWIRE_ADMIN_TOKEN", admin_token)
        .output()
        .expect("status");
    assert!(o.status.success(), "{}", text(&o));

    // SIGHUP without the planner: its token is refused from then on.
    std::fs::write(&config, users(false)).expect("config");
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = tool(&["pub", "tasks.a", "x", "--token", "s3cret"], addr);
        if o.status.code() == Some(1) && text(&o).contains("unknown token") {
            assert!(!text(&o).contains("s3cret"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not remove the user: {}",
            text(&o)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let logs = std::fs::read_to_string(&log_path).expect("broker log");
    assert!(logs.contains("client authentication on"), "{logs}");
    assert!(
        logs.contains("plaintext token"),
        "the plaintext token is warned about"
    );
    assert!(
        logs.contains("authentication failed"),
        "failures are logged"
    );
    for secret in ["s3cret", secret.as_str(), admin_token] {
        assert!(!logs.contains(secret), "a secret is in the broker's log");
        assert!(
            !text(&o).contains(secret),
            "a secret is in the admin output"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
