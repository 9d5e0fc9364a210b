//! `agentwire backup` and `agentwire restore` end to end with the binary: a backup taken while
//! the broker runs holds every config version; restore is refused while the broker has the
//! database open; after a stop, restore puts the backup in place (keeping the replaced file)
//! and a restarted broker serves the backed-up versions. Loopback ports, bounded waits.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{free_addr, text, BIN};

/// How long the broker gets to start or to stop.
const WAIT: Duration = Duration::from_secs(20);

struct Broker {
    child: Child,
    admin: SocketAddr,
}

impl Broker {
    fn start(data_dir: &Path) -> Broker {
        let addr = free_addr();
        let admin = free_addr();
        let child = Command::new(BIN)
            .args(["serve", "--listen", &addr.to_string()])
            .args(["--admin", &admin.to_string()])
            .arg("--data-dir")
            .arg(data_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn agentwire serve");
        common::wait_listening(&[admin], WAIT, "the admin API did not listen");
        Broker { child, admin }
    }

    /// SIGTERM, then waits for the exit.
    fn stop(mut self) {
        common::signal(&self.child, "TERM");
        let s = common::wait_exit(&mut self.child, WAIT, "the broker did not exit");
        assert!(s.success(), "{s}");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("AGENTWIRE_ADMIN_TOKEN")
        .output()
        .expect("run agentwire")
}

fn temp_dir() -> PathBuf {
    common::temp_dir("ops-backup-test")
}

#[test]
fn backup_while_running_restore_when_stopped() {
    let root = temp_dir();
    let data = root.join("data");
    let data_s = data.to_str().expect("utf-8 temp path").to_owned();
    let out = root.join("backup.db");
    let out_s = out.to_str().expect("utf-8 temp path").to_owned();

    let b = Broker::start(&data);
    let admin = b.admin.to_string();
    for v in ["depth=3", "depth=4"] {
        let mut args = vec!["config", "set", "planner", v, "--admin", &admin];
        if v == "depth=3" {
            args.push("--create");
        }
        let o = run(&args);
        assert!(o.status.success(), "{}", text(&o));
    }

    // Online backup: both versions, integrity checked.
    let o = run(&["backup", "--data-dir", &data_s, &out_s]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("2 config version(s)"), "{}", text(&o));
    // Never over an existing file.
    let o = run(&["backup", "--data-dir", &data_s, &out_s]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    // A later change, then restore is refused while the broker runs.
    let o = run(&["config", "set", "planner", "depth=5", "--admin", &admin]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&["restore", "--data-dir", &data_s, &out_s]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("stop the broker first"), "{}", text(&o));

    // Not a backup: refused as bad usage.
    let junk = root.join("junk.db");
    std::fs::write(&junk, b"not a database").expect("write junk");
    let o = run(&[
        "restore",
        "--data-dir",
        &data_s,
        junk.to_str().expect("utf-8"),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    b.stop();
    let o = run(&["restore", "--data-dir", &data_s, &out_s]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("kept as"), "{}", text(&o));
    let kept = std::fs::read_dir(&data)
        .expect("read data dir")
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("agentwire.db.before-restore-")
        });
    assert!(kept, "the replaced database is kept");

    // The restarted broker has the backed-up versions (2), not the later one (3).
    let b = Broker::start(&data);
    let admin = b.admin.to_string();
    let o = run(&["config", "get", "planner", "--admin", &admin]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("version 2"), "{}", text(&o));
    assert!(text(&o).contains("depth = 4"), "{}", text(&o));
    b.stop();
    let _ = std::fs::remove_dir_all(&root);
}
