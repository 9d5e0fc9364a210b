//! Lame duck against a real broker: every client gets the LAMEDUCK notice, then is closed within
//! the window (`ERR server_shutdown`), new connections are refused, and the process-level
//! triggers (`agentwire drain`, SIGUSR2) end in exit 0.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentwire_protocol::control::{decode_control, LameDuck};
use agentwire_protocol::{self as proto, ErrorCode, Frame};
use common::Raw;

use common::BIN;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_is_told_then_closed_within_the_window() {
    let mut cfg = common::config(2);
    cfg.lameduck_window_ms = 300;
    let h = common::start(cfg);
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(Raw::connect(h.local_addr()).await);
    }
    let t0 = Instant::now();
    h.lame_duck();
    assert!(h.is_lame_duck());
    for c in &mut clients {
        let f = c.next().await.expect("LAMEDUCK");
        assert_eq!(f.op(), proto::op::LAMEDUCK);
        let Frame::Unknown { body, .. } = f.parse() else {
            panic!("control frame");
        };
        let notice: LameDuck = decode_control(body).expect("valid body");
        assert_eq!(notice.window_ms, 300);
        let (code, fatal, msg) = c.expect_err().await;
        assert_eq!(code, ErrorCode::ServerShutdown.as_u16(), "{msg}");
        assert!(fatal);
        c.expect_closed().await;
    }
    assert!(
        t0.elapsed() < Duration::from_millis(300 + 2000),
        "closed within the window (plus slack): {:?}",
        t0.elapsed()
    );
    assert!(h.wait_drained(Duration::from_secs(5)));
    // No new connections.
    let refused = tokio::time::timeout(Duration::from_secs(2), async {
        match tokio::net::TcpStream::connect(h.local_addr()).await {
            Err(_) => true,
            Ok(mut s) => {
                use tokio::io::AsyncReadExt;
                let mut b = [0u8; 64];
                matches!(s.read(&mut b).await, Ok(0) | Err(_))
            }
        }
    })
    .await
    .expect("no hang");
    assert!(refused, "a new connection is not served in lame duck");
}

fn free_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn serve(
    data_dir: &std::path::Path,
) -> (
    std::process::Child,
    std::net::SocketAddr,
    std::net::SocketAddr,
) {
    let addr = free_addr();
    let admin = free_addr();
    let child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            &addr.to_string(),
            "--admin",
            &admin.to_string(),
        ])
        .args(["--lameduck-window-ms", "500"])
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    common::wait_listening(&[admin], Duration::from_secs(10), "broker did not start");
    (child, addr, admin)
}

fn wait_exit(child: &mut std::process::Child, max: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + max;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "broker did not exit in lame duck"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn drain_and_sigusr2_end_in_exit_zero() {
    let dir = std::env::temp_dir().join(format!("agentwire-lameduck-{}", std::process::id()));
    // Through the admin API (`agentwire drain`), with a connected subscriber.
    let (mut child, addr, admin) = serve(&dir);
    let mut sub = Command::new(BIN)
        .args(["sub", "x", "--server", &addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sub");
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new(BIN)
        .args(["drain", "--admin", &admin.to_string()])
        .output()
        .expect("run drain");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("lame duck"));
    // The subscriber is closed within the 500 ms window, then the broker exits.
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    let _ = sub.kill();
    let _ = sub.wait();
    // Through SIGUSR2, nobody connected: exits at once.
    let (mut child, _, _) = serve(&dir);
    let ok = Command::new("kill")
        .args(["-USR2", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moves_to_the_next_server_on_lame_duck() {
    let mut cfg = common::config(1);
    cfg.lameduck_window_ms = 5_000;
    let a = common::start(cfg);
    let b = common::start(common::config(1));
    let client = agentwire_client::ConnectOptions::new()
        .servers([a.local_addr().to_string(), b.local_addr().to_string()])
        .reconnect_delay(Duration::from_millis(10), Duration::from_millis(100))
        .connect_servers()
        .await
        .expect("connect to A");
    let mut events = client.events();
    let mut sub = client.subscribe("moved.>").await.expect("subscribe");
    client.flush().await.expect("flush");
    let t0 = Instant::now();
    a.lame_duck();
    // Reconnected to B well before A's 5 s window would have closed it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    loop {
        let ev = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("reconnected before A's window ends")
            .expect("events open");
        if let agentwire_client::ConnectionEvent::Reconnected { addr, .. } = ev {
            assert_eq!(addr, b.local_addr().to_string());
            break;
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(4));
    // The subscription moved with it: a message published on B arrives.
    let other = agentwire_client::connect(&b.local_addr().to_string())
        .await
        .expect("connect to B");
    let deadline = Instant::now() + Duration::from_secs(5);
    let m = loop {
        other.publish("moved.here", "hi").await.expect("publish");
        other.flush().await.expect("flush");
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
            break m;
        }
        assert!(Instant::now() < deadline, "no message on B");
    };
    assert_eq!(&*m.subject, "moved.here");
}
