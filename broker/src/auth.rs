//! Client authentication and publish/subscribe permissions (`[[users]]` in the config file).
//!
//! [`Auth::compile`] turns the user list into lookup tables and compiled permission rules;
//! the server holds the current [`Auth`] behind an `ArcSwap` so `SIGHUP` can replace it.
//! A connection proves who it is in its HELLO (a token, or an ed25519 signature of the INFO
//! nonce, or a verified TLS client certificate naming the user) and then carries a
//! [`ConnAuth`]: its user's rules plus a small per-connection cache, so the check on a PUB
//! is usually one comparison with the last allowed subject.
//!
//! Secrets never leave this module: errors name users and key prefixes, never tokens.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use agentwire_protocol::{self as proto, HelloFrame};
use base64::Engine as _;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use parking_lot::Mutex;
use rustc_hash::{FxHashMap, FxHashSet};

use crate::config::{Config, ConfigError, UserConfig};

/// Publish decisions a connection remembers (cleared when full).
const PUB_CACHE: usize = 4096;
/// Reply subjects a connection may still answer (`allow_responses`), oldest forgotten first.
const MAX_RESPONSES: usize = 65_536;
/// Verified argon2 tokens remembered (by digest), so only the first login pays the hash.
const MAX_VERIFIED: usize = 1024;

/// One allow/deny rule over subjects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `None`: everything is allowed (before `deny`).
    allow: Option<Vec<Box<[u8]>>>,
    deny: Vec<Box<[u8]>>,
}

impl Rule {
    fn new(allow: &Option<Vec<String>>, deny: &[&String], what: &str) -> Result<Rule, String> {
        let check = |p: &String| -> Result<Box<[u8]>, String> {
            proto::validate_pattern(p.as_bytes())
                .map_err(|e| format!("{what} pattern {p:?}: {e}"))?;
            Ok(p.as_bytes().into())
        };
        Ok(Rule {
            allow: allow
                .as_ref()
                .map(|l| l.iter().map(check).collect::<Result<_, _>>())
                .transpose()?,
            deny: deny.iter().map(|p| check(p)).collect::<Result<_, _>>()?,
        })
    }

    /// Everything allowed: no check needed.
    pub fn is_open(&self) -> bool {
        self.allow.is_none() && self.deny.is_empty()
    }

    /// May a message be published to the literal `subject`?
    pub fn allows_subject(&self, subject: &[u8]) -> bool {
        let allowed = match &self.allow {
            None => true,
            Some(l) => l.iter().any(|p| proto::subject::matches(p, subject)),
        };
        allowed
            && !self
                .deny
                .iter()
                .any(|p| proto::subject::matches(p, subject))
    }

    /// May a subscription to `pattern` be made? It must be covered by an allow entry and meet
    /// no deny entry (a pattern that could receive a denied subject is refused as a whole).
    pub fn allows_pattern(&self, pattern: &[u8]) -> bool {
        let allowed = match &self.allow {
            None => true,
            Some(l) => l.iter().any(|p| proto::subject::covers(p, pattern)),
        };
        allowed
            && !self
                .deny
                .iter()
                .any(|p| proto::subject::intersects(p, pattern))
    }
}

/// What a user may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Perms {
    /// Publish rule.
    pub publish: Rule,
    /// Subscribe rule.
    pub subscribe: Rule,
    /// May answer requests delivered to it whatever `publish` says.
    pub allow_responses: bool,
    /// Component names it may register; `None`: any.
    pub components: Option<Vec<String>>,
}

/// How a user proves who it is.
#[derive(Clone)]
enum Credential {
    Token(Box<[u8]>),
    Hash(String),
    PublicKey(VerifyingKey),
    /// Only through a verified TLS client certificate.
    CertOnly,
}

/// A configured user, compiled.
pub struct User {
    /// Its name.
    pub name: String,
    /// Its rules.
    pub perms: Perms,
    cred: Credential,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("perms", &self.perms)
            .finish_non_exhaustive()
    }
}

/// The compiled user list. Empty: the broker runs open.
#[derive(Default)]
pub struct Auth {
    users: FxHashMap<String, Arc<User>>,
    by_key: HashMap<[u8; 32], Arc<User>>,
    /// Digest of a token already verified against a `token_hash` → user name.
    verified: Mutex<FxHashMap<[u8; 32], String>>,
    /// Users with a plaintext token (warned about once at load).
    plaintext: Vec<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.users.keys().collect();
        names.sort();
        f.debug_struct("Auth").field("users", &names).finish()
    }
}

/// Decodes a base64 ed25519 public key (standard or URL-safe alphabet, padding optional).
pub fn decode_public_key(s: &str) -> Result<VerifyingKey, String> {
    let s = s.trim();
    let raw = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(s.trim_end_matches('='))
        .or_else(|_| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim_end_matches('='))
        })
        .map_err(|e| format!("public key is not base64: {e}"))?;
    let bytes: [u8; 32] = raw
        .as_slice()
        .try_into()
        .map_err(|_| format!("public key must be 32 bytes, got {}", raw.len()))?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|e| format!("public key is not a valid ed25519 key: {e}"))
}

/// The first characters of a key, to name it in logs and errors.
fn key_id(k: &[u8]) -> String {
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k);
    format!("{}…", &b[..b.len().min(10)])
}

fn digest(token: &[u8]) -> [u8; 32] {
    use blake2::Digest as _;
    let mut h = blake2::Blake2s256::new();
    h.update(b"agentwire-token:");
    h.update(token);
    h.finalize().into()
}

/// Equal-time comparison of two secrets (no early exit on the first differing byte).
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    /// Compiles and checks `users`.
    ///
    /// # Errors
    /// A duplicate name, a user with more than one credential, a bad key or hash, an invalid
    /// pattern: named in the message (never the secret itself).
    pub fn compile(users: &[UserConfig]) -> Result<Auth, String> {
        let mut auth = Auth::default();
        for u in users {
            let who = format!("user {:?}", u.name);
            if u.name.is_empty() {
                return Err("a [[users]] entry has an empty name".into());
            }
            if auth.users.contains_key(&u.name) {
                return Err(format!("{who} is configured twice"));
            }
            let creds = u.token.is_some() as u8
                + u.token_hash.is_some() as u8
                + u.public_key.is_some() as u8;
            if creds > 1 {
                return Err(format!(
                    "{who} has more than one of token, token_hash, public_key"
                ));
            }
            let cred = if let Some(t) = &u.token {
                if t.is_empty() {
                    return Err(format!("{who} has an empty token"));
                }
                auth.plaintext.push(u.name.clone());
                Credential::Token(t.as_bytes().into())
            } else if let Some(h) = &u.token_hash {
                argon2::PasswordHash::new(h)
                    .map_err(|e| format!("{who}: token_hash is not a PHC hash string: {e}"))?;
                Credential::Hash(h.clone())
            } else if let Some(k) = &u.public_key {
                Credential::PublicKey(decode_public_key(k).map_err(|e| format!("{who}: {e}"))?)
            } else {
                Credential::CertOnly
            };
            let deny_pub: Vec<&String> = u.deny.iter().chain(&u.deny_publish).collect();
            let deny_sub: Vec<&String> = u.deny.iter().chain(&u.deny_subscribe).collect();
            let perms = Perms {
                publish: Rule::new(&u.publish, &deny_pub, &format!("{who} publish"))?,
                subscribe: Rule::new(&u.subscribe, &deny_sub, &format!("{who} subscribe"))?,
                allow_responses: u.allow_responses,
                components: u.components.clone(),
            };
            let user = Arc::new(User {
                name: u.name.clone(),
                perms,
                cred: cred.clone(),
            });
            if let Credential::PublicKey(k) = &cred {
                if auth.by_key.insert(k.to_bytes(), user.clone()).is_some() {
                    return Err(format!("{who}: public key also belongs to another user"));
                }
            }
            auth.users.insert(u.name.clone(), user);
        }
        Ok(auth)
    }

    /// Whether any user is configured (otherwise every client is admitted with no rules).
    pub fn enabled(&self) -> bool {
        !self.users.is_empty()
    }

    /// Users configured with a plaintext token (the server warns about them).
    pub fn plaintext_users(&self) -> &[String] {
        &self.plaintext
    }

    /// The user named `name`.
    pub fn user(&self, name: &str) -> Option<&Arc<User>> {
        self.users.get(name)
    }

    /// Whether any user has an ed25519 key (then INFO carries a nonce).
    pub fn wants_nonce(&self) -> bool {
        !self.by_key.is_empty()
    }

    /// Finds the user a HELLO proves. `nonce` is the one sent in INFO; `identity` the subject
    /// of a verified TLS client certificate.
    ///
    /// # Errors
    /// A message for the client saying what failed (never echoing a secret).
    pub fn authenticate(
        &self,
        hello: &HelloFrame<'_>,
        nonce: &[u8],
        identity: Option<&str>,
    ) -> Result<Arc<User>, String> {
        if !hello.public_key.is_empty() {
            let key: [u8; 32] = hello.public_key.try_into().map_err(|_| {
                format!(
                    "authentication failed: public key must be 32 bytes, got {}",
                    hello.public_key.len()
                )
            })?;
            let Some(user) = self.by_key.get(&key) else {
                return Err(format!(
                    "authentication failed: public key {} is not a configured user",
                    key_id(&key)
                ));
            };
            let Credential::PublicKey(vk) = &user.cred else {
                return Err("authentication failed: key lookup mismatch".into());
            };
            let sig = Signature::from_slice(hello.signature).map_err(|_| {
                format!(
                    "authentication failed: signature must be 64 bytes, got {}",
                    hello.signature.len()
                )
            })?;
            let mut msg = Vec::with_capacity(proto::AUTH_SIGN_PREFIX.len() + nonce.len());
            msg.extend_from_slice(proto::AUTH_SIGN_PREFIX);
            msg.extend_from_slice(nonce);
            return match vk.verify(&msg, &sig) {
                Ok(()) => Ok(user.clone()),
                Err(_) => Err(format!(
                    "authentication failed: the signature of the nonce does not verify for public key {} (user {:?}); wrong secret key?",
                    key_id(&key),
                    user.name
                )),
            };
        }
        if !hello.token.is_empty() {
            return self.by_token(hello.token);
        }
        if let Some(id) = identity {
            return match self.users.get(id) {
                Some(u) => Ok(u.clone()),
                None => Err(format!(
                    "authentication failed: the client certificate names {id:?}, which is not a configured user"
                )),
            };
        }
        Err("authentication required: this server has users; send a token (--token or AGENTWIRE_TOKEN) or credentials (--creds)".into())
    }

    fn by_token(&self, token: &[u8]) -> Result<Arc<User>, String> {
        let mut found = None;
        for u in self.users.values() {
            if let Credential::Token(t) = &u.cred {
                // Look at every user: the time does not tell which one matched.
                if same_secret(t, token) && found.is_none() {
                    found = Some(u.clone());
                }
            }
        }
        if let Some(u) = found {
            return Ok(u);
        }
        let d = digest(token);
        if let Some(name) = self.verified.lock().get(&d) {
            if let Some(u) = self.users.get(name) {
                return Ok(u.clone());
            }
        }
        // Argon2 costs milliseconds by design: one verification per token_hash user, only for
        // tokens not verified before.
        for u in self.users.values() {
            if let Credential::Hash(h) = &u.cred {
                let Ok(parsed) = argon2::PasswordHash::new(h) else {
                    continue;
                };
                use argon2::PasswordVerifier as _;
                if argon2::Argon2::default()
                    .verify_password(token, &parsed)
                    .is_ok()
                {
                    let mut v = self.verified.lock();
                    if v.len() >= MAX_VERIFIED {
                        v.clear();
                    }
                    v.insert(d, u.name.clone());
                    return Ok(u.clone());
                }
            }
        }
        Err("authentication failed: unknown token".into())
    }
}

/// Hashes a token for `token_hash` (argon2id, random salt, the crate's default cost).
///
/// # Errors
/// The hasher failed (it does not for valid input).
pub fn hash_token(token: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher as _, SaltString};
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    argon2::Argon2::default()
        .hash_password(token.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the token: {e}"))
}

/// A connection's user and what it remembers of its decisions.
#[derive(Debug)]
pub(crate) struct ConnAuth {
    pub user: Arc<User>,
    /// The publish rule allows everything (no check at all).
    pub_open: bool,
    /// The last subject a PUB was allowed to (most publishers repeat a few subjects).
    last_ok: Vec<u8>,
    pub_cache: FxHashMap<Box<[u8]>, bool>,
    /// Reply subjects of requests delivered to this connection, not yet answered.
    responses: FxHashSet<Box<[u8]>>,
    order: VecDeque<Box<[u8]>>,
}

impl ConnAuth {
    pub fn new(user: Arc<User>) -> ConnAuth {
        ConnAuth {
            pub_open: user.perms.publish.is_open(),
            user,
            last_ok: Vec::new(),
            pub_cache: FxHashMap::default(),
            responses: FxHashSet::default(),
            order: VecDeque::new(),
        }
    }

    /// Whether requests delivered to it must be remembered (restricted publish and
    /// `allow_responses`).
    pub fn tracks_responses(&self) -> bool {
        self.user.perms.allow_responses && !self.user.perms.publish.is_open()
    }

    /// A request with reply subject `reply` was delivered to this connection.
    pub fn note_request(&mut self, reply: &[u8]) {
        if self.responses.contains(reply) {
            return;
        }
        if self.order.len() >= MAX_RESPONSES {
            if let Some(old) = self.order.pop_front() {
                self.responses.remove(&old);
            }
        }
        let r: Box<[u8]> = reply.into();
        self.order.push_back(r.clone());
        self.responses.insert(r);
    }

    /// May this connection publish to `subject`? (A reply to a request it received counts once.)
    #[inline]
    pub fn may_publish(&mut self, subject: &[u8]) -> bool {
        if self.pub_open || self.last_ok.as_slice() == subject {
            return true;
        }
        self.check_publish(subject)
    }

    /// [`ConnAuth::may_publish`] past the fast path.
    #[inline(never)]
    fn check_publish(&mut self, subject: &[u8]) -> bool {
        let rule = &self.user.perms.publish;
        let ok = match self.pub_cache.get(subject) {
            Some(&ok) => ok,
            None => {
                let ok = rule.allows_subject(subject);
                if self.pub_cache.len() >= PUB_CACHE {
                    self.pub_cache.clear();
                }
                self.pub_cache.insert(subject.into(), ok);
                ok
            }
        };
        if ok {
            self.last_ok.clear();
            self.last_ok.extend_from_slice(subject);
            return true;
        }
        if self.responses.remove(subject) {
            // Rare: only when a reply is published; the order queue keeps a stale entry that
            // ages out.
            return true;
        }
        false
    }

    /// May this connection subscribe to `pattern`? (Replies to its own requests arrive on
    /// inbox subscriptions, which need to be allowed like any other.)
    pub fn may_subscribe(&self, pattern: &[u8]) -> bool {
        self.user.perms.subscribe.allows_pattern(pattern)
    }

    /// May this connection register as `component`?
    pub fn may_register(&self, component: &str) -> bool {
        match &self.user.perms.components {
            None => true,
            Some(l) => l.iter().any(|c| c == component),
        }
    }
}

/// Says in the log whether clients must authenticate (never printing a secret).
pub(crate) fn log_auth(auth: &Auth) {
    if auth.enabled() {
        tracing::info!(?auth, "client authentication on");
        for u in auth.plaintext_users() {
            tracing::warn!(
                user = %u,
                "user has a plaintext token in the config file; prefer token_hash (agentwire hash-token) or public_key"
            );
        }
    } else {
        tracing::info!("no [[users]] configured: clients are not authenticated (open broker)");
    }
}

/// Checks a whole configuration: its values ([`Config::validate`]) and its `[[users]]` rules
/// (compiled as at start).
///
/// # Errors
/// The first bad value or user rule, named.
pub fn check_config(config: &Config) -> Result<(), ConfigError> {
    config.validate()?;
    Auth::compile(&config.users).map_err(ConfigError::Invalid)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserConfig {
        UserConfig::with_token(name, "tok")
    }

    #[test]
    fn rules_allow_and_deny() {
        let mut u = user("a");
        u.publish = Some(vec!["tasks.>".into(), "status".into()]);
        u.deny_publish = vec!["tasks.admin.>".into()];
        u.subscribe = Some(vec!["results.>".into()]);
        u.deny = vec!["results.secret".into()];
        let auth = Auth::compile(&[u]).expect("valid");
        let p = &auth.user("a").expect("user").perms;
        assert!(p.publish.allows_subject(b"tasks.x"));
        assert!(p.publish.allows_subject(b"status"));
        assert!(!p.publish.allows_subject(b"tasks"));
        assert!(!p.publish.allows_subject(b"tasks.admin.reboot"));
        assert!(!p.publish.allows_subject(b"other"));
        assert!(p.subscribe.allows_pattern(b"results.a"));
        assert!(
            !p.subscribe.allows_pattern(b"results.*"),
            "could receive results.secret"
        );
        assert!(
            !p.subscribe.allows_pattern(b"results.>"),
            "meets results.secret"
        );
        assert!(!p.subscribe.allows_pattern(b"results.secret"));
        assert!(!p.subscribe.allows_pattern(b">"));
        assert!(!p.subscribe.allows_pattern(b"tasks.x"));
    }

    #[test]
    fn compile_rejects_bad_users() {
        let mut two = user("a");
        two.public_key = Some("AAAA".into());
        assert!(Auth::compile(&[two]).is_err());
        assert!(Auth::compile(&[user("a"), user("a")]).is_err());
        let mut bad = user("a");
        bad.publish = Some(vec!["a..b".into()]);
        let e = Auth::compile(&[bad]).expect_err("bad pattern");
        assert!(e.contains("a..b"), "{e}");
        let mut hash = user("a");
        hash.token = None;
        hash.token_hash = Some("not-a-hash".into());
        let e = Auth::compile(&[hash]).expect_err("bad hash");
        assert!(!e.contains("not-a-hash"), "no secret in errors: {e}");
        let mut key = user("a");
        key.token = None;
        key.public_key = Some("!!!".into());
        assert!(Auth::compile(&[key]).is_err());
    }

    fn hello<'a>(token: &'a [u8], pk: &'a [u8], sig: &'a [u8]) -> HelloFrame<'a> {
        HelloFrame {
            version: 1,
            features: 0,
            name: b"",
            token,
            public_key: pk,
            signature: sig,
        }
    }

    #[test]
    fn tokens_hashes_keys_and_certificates() {
        use ed25519_dalek::Signer as _;
        let sk = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let pk = sk.verifying_key().to_bytes();
        let mut k = user("keyed");
        k.token = None;
        k.public_key = Some(base64::engine::general_purpose::STANDARD.encode(pk));
        let mut h = user("hashed");
        h.token = None;
        h.token_hash = Some(hash_token("hunter2").expect("hash"));
        let mut c = user("planner");
        c.token = None;
        let auth = Auth::compile(&[user("plain"), k, h, c]).expect("valid");
        assert!(auth.wants_nonce());
        let name = |r: Result<Arc<User>, String>| r.map(|u| u.name.clone());
        assert_eq!(
            name(auth.authenticate(&hello(b"tok", b"", b""), b"", None)),
            Ok("plain".into())
        );
        let e =
            name(auth.authenticate(&hello(b"nope", b"", b""), b"", None)).expect_err("bad token");
        assert!(e.contains("unknown token") && !e.contains("nope"), "{e}");
        assert_eq!(
            name(auth.authenticate(&hello(b"hunter2", b"", b""), b"", None)),
            Ok("hashed".into())
        );
        assert_eq!(
            name(auth.authenticate(&hello(b"hunter2", b"", b""), b"", None)),
            Ok("hashed".into()),
            "cached"
        );
        let nonce = b"0123456789abcdef";
        let mut msg = proto::AUTH_SIGN_PREFIX.to_vec();
        msg.extend_from_slice(nonce);
        let sig = sk.sign(&msg).to_bytes();
        assert_eq!(
            name(auth.authenticate(&hello(b"", &pk, &sig), nonce, None)),
            Ok("keyed".into())
        );
        let e = name(auth.authenticate(&hello(b"", &pk, &sig), b"other nonce", None))
            .expect_err("replay");
        assert!(e.contains("does not verify"), "{e}");
        let stranger = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let spk = stranger.verifying_key().to_bytes();
        let ssig = stranger.sign(&msg).to_bytes();
        let e = name(auth.authenticate(&hello(b"", &spk, &ssig), nonce, None))
            .expect_err("unknown key");
        assert!(e.contains("not a configured user"), "{e}");
        assert_eq!(
            name(auth.authenticate(&hello(b"", b"", b""), b"", Some("planner"))),
            Ok("planner".into())
        );
        let e = name(auth.authenticate(&hello(b"", b"", b""), b"", None)).expect_err("nothing");
        assert!(e.contains("authentication required"), "{e}");
    }

    #[test]
    fn conn_auth_caches_and_allows_responses() {
        let mut u = user("w");
        u.publish = Some(vec!["results.>".into()]);
        let auth = Auth::compile(&[u]).expect("valid");
        let mut c = ConnAuth::new(auth.user("w").expect("user").clone());
        assert!(c.tracks_responses());
        assert!(c.may_publish(b"results.1"));
        assert!(c.may_publish(b"results.1"));
        assert!(!c.may_publish(b"_INBOX.abc.1"));
        c.note_request(b"_INBOX.abc.1");
        assert!(c.may_publish(b"_INBOX.abc.1"), "one reply allowed");
        assert!(!c.may_publish(b"_INBOX.abc.1"), "only once");
        assert!(!c.may_publish(b"tasks.x"));
    }
}
