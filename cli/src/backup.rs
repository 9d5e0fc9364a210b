//! `agentwire backup` and `agentwire restore`: a consistent copy of the data dir's SQLite
//! database (config center and metrics samples) while the broker runs, and putting such a copy
//! back while it is stopped. They open the database file directly (no admin API), so they run
//! on the broker's host or inside its container (`kubectl exec`), where no `sqlite3` is needed.
//!
//! Backup is SQLite's `VACUUM INTO`: one read transaction, so the copy is a snapshot that
//! includes what is still in the WAL, taken without stopping writers for long. Restore refuses
//! while any process has the database open (it must get an exclusive lock), keeps the
//! replaced database beside it, and writes the new one under a temporary name then renames it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use rusqlite::{Connection, OpenFlags};

use super::{EXIT_FAILURE, EXIT_USAGE};
use agentwire_admin::store::DB_FILE_NAME;

/// The tables a config store has: a file without them is not an agentwire backup.
const TABLES: [&str; 4] = [
    "components",
    "config_versions",
    "system_config",
    "performance_metrics",
];

/// How long backup waits for a busy database.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// `agentwire backup`.
#[derive(Debug, Args)]
pub(crate) struct BackupArgs {
    /// The broker's data dir (holds agentwire.db).
    #[arg(long, env = "AGENTWIRE_DATA_DIR", default_value = "./agentwire-data")]
    data_dir: PathBuf,
    /// The backup file to write (must not exist).
    out: PathBuf,
}

/// `agentwire restore`.
#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    /// The broker's data dir (holds agentwire.db); the broker must be stopped.
    #[arg(long, env = "AGENTWIRE_DATA_DIR", default_value = "./agentwire-data")]
    data_dir: PathBuf,
    /// A file written by `agentwire backup`.
    backup: PathBuf,
}

/// A failure: its message and exit code.
struct Failure(String, u8);

fn failure(code: u8) -> impl Fn(String) -> Failure {
    move |m| Failure(m, code)
}

fn finish(r: Result<(), Failure>, what: &str) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(m, code)) => {
            eprintln!("agentwire {what}: {m}");
            ExitCode::from(code)
        }
    }
}

/// Opens `path` (which must exist) with a busy timeout.
fn open(path: &Path, flags: OpenFlags) -> Result<Connection, String> {
    if !path.is_file() {
        return Err(format!("{}: no such database file", path.display()));
    }
    let c = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|e| format!("{}: cannot open: {e}", path.display()))?;
    c.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(c)
}

/// Checks `path` is an intact agentwire database; returns its config version count.
fn verify(path: &Path) -> Result<u64, String> {
    let c = open(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let check: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| format!("{}: not a readable SQLite database: {e}", path.display()))?;
    if check != "ok" {
        return Err(format!(
            "{}: integrity check failed: {check}",
            path.display()
        ));
    }
    for t in TABLES {
        let n: u64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [t],
                |r| r.get(0),
            )
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            return Err(format!(
                "{}: not an agentwire database (no table {t})",
                path.display()
            ));
        }
    }
    c.query_row("SELECT count(*) FROM config_versions", [], |r| r.get(0))
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// `agentwire backup --data-dir DIR OUT`.
pub(crate) fn backup(a: BackupArgs) -> ExitCode {
    finish(run_backup(&a), "backup")
}

fn run_backup(a: &BackupArgs) -> Result<(), Failure> {
    if a.out.exists() {
        return Err(Failure(
            format!("{} exists: choose a new file", a.out.display()),
            EXIT_USAGE,
        ));
    }
    let db = a.data_dir.join(DB_FILE_NAME);
    let c = open(&db, OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(failure(EXIT_FAILURE))?;
    let out = a
        .out
        .to_str()
        .ok_or_else(|| Failure("the backup path is not UTF-8".into(), EXIT_USAGE))?;
    c.execute("VACUUM INTO ?1", [out]).map_err(|e| {
        Failure(
            format!("cannot write {}: {e}", a.out.display()),
            EXIT_FAILURE,
        )
    })?;
    drop(c);
    let versions = verify(&a.out).map_err(failure(EXIT_FAILURE))?;
    println!(
        "backup: {} ({} bytes, {versions} config version(s)), integrity ok",
        a.out.display(),
        size(&a.out)
    );
    Ok(())
}

/// `agentwire restore --data-dir DIR BACKUP`.
pub(crate) fn restore(a: RestoreArgs) -> ExitCode {
    finish(run_restore(&a), "restore")
}

fn run_restore(a: &RestoreArgs) -> Result<(), Failure> {
    let versions = verify(&a.backup).map_err(failure(EXIT_USAGE))?;
    std::fs::create_dir_all(&a.data_dir).map_err(|e| {
        Failure(
            format!("cannot create {}: {e}", a.data_dir.display()),
            EXIT_FAILURE,
        )
    })?;
    let db = a.data_dir.join(DB_FILE_NAME);
    let mut kept = None;
    if db.exists() {
        // Not in use: an exclusive lock is refused while any connection (a running broker)
        // has the database open. Closing this, the last connection, checkpoints the WAL into
        // the file, so the file kept below is complete.
        {
            let c = open(&db, OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(failure(EXIT_FAILURE))?;
            c.busy_timeout(Duration::ZERO)
                .map_err(|e| Failure(e.to_string(), EXIT_FAILURE))?;
            let locked = c
                .execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; COMMIT;")
                .is_ok();
            if !locked {
                return Err(Failure(
                    format!(
                        "{} is in use: stop the broker first (restore never replaces a live database)",
                        db.display()
                    ),
                    EXIT_FAILURE,
                ));
            }
        }
        let stamp = agentwire_admin::now_ms();
        let aside = a
            .data_dir
            .join(format!("{DB_FILE_NAME}.before-restore-{stamp}"));
        std::fs::rename(&db, &aside).map_err(|e| {
            Failure(
                format!("cannot move {} aside: {e}", db.display()),
                EXIT_FAILURE,
            )
        })?;
        kept = Some(aside);
    }
    for suffix in ["-wal", "-shm"] {
        let f = a.data_dir.join(format!("{DB_FILE_NAME}{suffix}"));
        if f.exists() {
            std::fs::remove_file(&f).map_err(|e| {
                Failure(format!("cannot remove {}: {e}", f.display()), EXIT_FAILURE)
            })?;
        }
    }
    let tmp = a.data_dir.join(format!("{DB_FILE_NAME}.restoring"));
    std::fs::copy(&a.backup, &tmp)
        .and_then(|_| std::fs::rename(&tmp, &db))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Failure(
                format!("cannot put {} in place: {e}", a.backup.display()),
                EXIT_FAILURE,
            )
        })?;
    println!(
        "restored {} into {} ({versions} config version(s))",
        a.backup.display(),
        db.display()
    );
    if let Some(k) = kept {
        println!("the replaced database is kept as {}", k.display());
    }
    Ok(())
}
