//! How a client proves who it is: a token, or an ed25519 key pair whose secret key signs the
//! nonce the server sends in INFO (the server stores the public key only).
//!
//! A credentials file (written by `agentwire keygen OUT`, mode 0600) holds:
//!
//! ```text
//! # agentwire ed25519 credentials: keep this file private
//! public_key = "<base64, 32 bytes>"
//! secret_key = "<base64, 32-byte seed>"
//! ```
//!
//! Secrets never show in `Debug` output or errors.

use std::path::Path;

use agentwire_protocol::AUTH_SIGN_PREFIX;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};

/// What the client sends in its HELLO to authenticate.
#[derive(Clone, Default)]
pub enum Credentials {
    /// Nothing (an open server, or a TLS client certificate that names the user).
    #[default]
    None,
    /// A token (`[[users]] token` or `token_hash` on the server).
    Token(String),
    /// An ed25519 key pair (`[[users]] public_key` on the server).
    Key(SigningKey),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::Token(_) => f.write_str("Token(<redacted>)"),
            Credentials::Key(k) => write!(
                f,
                "Key(public {})",
                encode_key(k.verifying_key().as_bytes())
            ),
        }
    }
}

/// Why a credentials file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The file could not be read.
    #[error("cannot read credentials file {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file has no usable `secret_key`.
    #[error("credentials file {path}: {why}")]
    Invalid {
        /// The path.
        path: String,
        /// What is wrong (never the secret).
        why: String,
    },
}

/// Base64 (standard alphabet, padded) of a key.
pub fn encode_key(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn decode_key(s: &str) -> Option<[u8; 32]> {
    let s = s.trim().trim_end_matches('=');
    let raw = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(s)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s))
        .ok()?;
    raw.as_slice().try_into().ok()
}

impl Credentials {
    /// Reads a credentials file (see the module docs).
    ///
    /// # Errors
    /// The file cannot be read or holds no valid `secret_key`.
    pub fn from_file(path: &Path) -> Result<Credentials, CredentialsError> {
        let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Credentials::parse(&text).map_err(|why| CredentialsError::Invalid {
            path: path.display().to_string(),
            why,
        })
    }

    /// Parses the text of a credentials file.
    ///
    /// # Errors
    /// No `secret_key`, or one that is not a base64 32-byte seed, or a `public_key` that does
    /// not belong to it.
    pub fn parse(text: &str) -> Result<Credentials, String> {
        let mut secret = None;
        let mut public = None;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"');
            match k.trim() {
                "secret_key" => secret = Some(v.to_owned()),
                "public_key" => public = Some(v.to_owned()),
                _ => {}
            }
        }
        let secret = secret.ok_or("no secret_key line")?;
        let seed = decode_key(&secret).ok_or("secret_key is not a base64 32-byte key")?;
        let key = SigningKey::from_bytes(&seed);
        if let Some(p) = public {
            if decode_key(&p) != Some(key.verifying_key().to_bytes()) {
                return Err("public_key does not belong to secret_key".into());
            }
        }
        Ok(Credentials::Key(key))
    }

    /// A fresh random key pair.
    pub fn generate() -> Credentials {
        Credentials::Key(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// The text of a credentials file for this key pair (`None` for other credentials).
    pub fn to_file_text(&self) -> Option<String> {
        let Credentials::Key(k) = self else {
            return None;
        };
        Some(format!(
            "# agentwire ed25519 credentials: keep this file private\npublic_key = \"{}\"\nsecret_key = \"{}\"\n",
            encode_key(k.verifying_key().as_bytes()),
            encode_key(k.as_bytes()),
        ))
    }

    /// The public key, base64 (what goes into `[[users]] public_key`).
    pub fn public_key(&self) -> Option<String> {
        match self {
            Credentials::Key(k) => Some(encode_key(k.verifying_key().as_bytes())),
            _ => None,
        }
    }

    /// The HELLO fields for a server that sent `nonce`: (token, public key, signature).
    pub(crate) fn hello_fields(&self, nonce: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        match self {
            Credentials::None => (Vec::new(), Vec::new(), Vec::new()),
            Credentials::Token(t) => (t.as_bytes().to_vec(), Vec::new(), Vec::new()),
            Credentials::Key(k) => {
                let mut msg = Vec::with_capacity(AUTH_SIGN_PREFIX.len() + nonce.len());
                msg.extend_from_slice(AUTH_SIGN_PREFIX);
                msg.extend_from_slice(nonce);
                let sig = k.sign(&msg);
                (
                    Vec::new(),
                    k.verifying_key().to_bytes().to_vec(),
                    sig.to_bytes().to_vec(),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_round_trip_and_checks() {
        let c = Credentials::generate();
        let text = c.to_file_text().expect("a key");
        let back = Credentials::parse(&text).expect("parses");
        assert_eq!(back.public_key(), c.public_key());
        assert!(Credentials::parse("public_key = \"x\"").is_err());
        assert!(Credentials::parse("secret_key = \"bm90IGEga2V5\"").is_err());
        let other = Credentials::generate().public_key().expect("key");
        let mismatched = text.replace(&c.public_key().expect("key"), &other);
        assert!(Credentials::parse(&mismatched).is_err());
    }

    #[test]
    fn debug_never_shows_secrets() {
        let t = format!("{:?}", Credentials::Token("s3cret".into()));
        assert!(!t.contains("s3cret"), "{t}");
        let c = Credentials::generate();
        let Credentials::Key(k) = &c else {
            unreachable!("generate makes a key")
        };
        let d = format!("{c:?}");
        assert!(!d.contains(&encode_key(k.as_bytes())), "{d}");
    }
}
