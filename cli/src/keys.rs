//! `agentwire keygen OUT` (an ed25519 key pair for a `[[users]] public_key` user) and
//! `agentwire hash-token` (an argon2 hash for `[[users]] token_hash`). Secrets go to files or
//! come from stdin, never onto the command line or into logs.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use agentwire_client::Credentials;

use super::{EXIT_FAILURE, EXIT_USAGE};

/// `agentwire keygen OUT`.
#[derive(Debug, clap::Args)]
pub(crate) struct KeygenArgs {
    /// Credentials file to write (mode 0600); the public key also goes to OUT.pub.
    out: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

/// `agentwire hash-token`: reads the token from stdin (one line).
#[derive(Debug, clap::Args)]
pub(crate) struct HashTokenArgs {}

pub(crate) fn keygen(a: KeygenArgs) -> ExitCode {
    let creds = Credentials::generate();
    let (Some(text), Some(public)) = (creds.to_file_text(), creds.public_key()) else {
        eprintln!("agentwire keygen: key generation failed");
        return ExitCode::from(EXIT_FAILURE);
    };
    let mut pub_path = a.out.clone().into_os_string();
    pub_path.push(".pub");
    let pub_path = PathBuf::from(pub_path);
    if !a.force && (a.out.exists() || pub_path.exists()) {
        eprintln!(
            "agentwire keygen: {} or {} exists; pass --force to overwrite",
            a.out.display(),
            pub_path.display()
        );
        return ExitCode::from(EXIT_USAGE);
    }
    if let Err(e) = write_secret(&a.out, &text) {
        eprintln!("agentwire keygen: cannot write {}: {e}", a.out.display());
        return ExitCode::from(EXIT_FAILURE);
    }
    if let Err(e) = std::fs::write(&pub_path, format!("{public}\n")) {
        eprintln!("agentwire keygen: cannot write {}: {e}", pub_path.display());
        return ExitCode::from(EXIT_FAILURE);
    }
    println!(
        "wrote {} (secret, mode 0600) and {}\nadd to the broker's config file:\n\n[[users]]\nname = \"...\"\npublic_key = \"{public}\"",
        a.out.display(),
        pub_path.display()
    );
    ExitCode::SUCCESS
}

/// Writes `text` to a new file only its owner can read.
fn write_secret(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

pub(crate) fn hash_token(_a: HashTokenArgs) -> ExitCode {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
        eprintln!("agentwire hash-token: cannot read stdin: {e}");
        return ExitCode::from(EXIT_FAILURE);
    }
    let token = line.trim_end_matches(['\r', '\n']);
    if token.is_empty() {
        eprintln!("agentwire hash-token: give the token on stdin (e.g. `printf %s \"$TOKEN\" | agentwire hash-token`)");
        return ExitCode::from(EXIT_USAGE);
    }
    match agentwire_broker::auth::hash_token(token) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("agentwire hash-token: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
