//! TLS end to end against a real broker on 127.0.0.1:0, with certificates generated at run
//! time (rcgen): pub/sub through the client library over TLS, a client that trusts the wrong
//! CA, mutual TLS (refused without a client certificate, identity "planner" with one), the
//! ERR-then-close of the broker reaching a TLS client, the admin API over HTTPS, and the CLI
//! tools with `--tls-ca`.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentwire_broker::config::TlsConfig;
use agentwire_broker::Config;
use agentwire_client::{ConnectOptions, Error, HandshakeError};
use bytes::Bytes;
use common::{config, start, WAIT};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};

use common::BIN;

/// A directory of PEM files: `ca.pem`, `server.pem`/`server.key` (127.0.0.1, localhost),
/// `client.pem`/`client.key` (CN planner) signed by that CA, and `other-ca.pem`, an unrelated
/// CA.
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn new(tag: &str) -> Certs {
        let dir = std::env::temp_dir().join(format!(
            "agentwire-tls-test-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let write = |name: &str, text: String| {
            std::fs::write(dir.join(name), text).expect("write a PEM file");
        };

        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "agentwire test CA");
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        write("ca.pem", ca_cert.pem());

        let key = KeyPair::generate().expect("server key");
        let mut p = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("server params");
        p.distinguished_name.push(DnType::CommonName, "agentwire");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = p
            .signed_by(&key, &ca_cert, &ca_key)
            .expect("server certificate");
        write("server.pem", cert.pem());
        write("server.key", key.serialize_pem());

        let key = KeyPair::generate().expect("client key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("client params");
        p.distinguished_name.push(DnType::CommonName, "planner");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p
            .signed_by(&key, &ca_cert, &ca_key)
            .expect("client certificate");
        write("client.pem", cert.pem());
        write("client.key", key.serialize_pem());

        let key = KeyPair::generate().expect("stranger key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("stranger params");
        p.distinguished_name.push(DnType::CommonName, "stranger");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p
            .signed_by(&key, &ca_cert, &ca_key)
            .expect("stranger certificate");
        write("stranger.pem", cert.pem());
        write("stranger.key", key.serialize_pem());

        let other_key = KeyPair::generate().expect("other CA key");
        let mut other = CertificateParams::new(Vec::<String>::new()).expect("other CA params");
        other.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        other
            .distinguished_name
            .push(DnType::CommonName, "some other CA");
        write(
            "other-ca.pem",
            other.self_signed(&other_key).expect("other CA").pem(),
        );
        Certs { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn tls(&self, mutual: bool) -> TlsConfig {
        TlsConfig {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            client_ca: mutual.then(|| self.path("ca.pem")),
        }
    }

    fn config(&self, mutual: bool) -> Config {
        let mut c = config(2);
        c.tls = Some(self.tls(mutual));
        c
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn opts(certs: &Certs) -> ConnectOptions {
    ConnectOptions::new()
        .reconnect(false)
        .connect_timeout(Duration::from_secs(5))
        .tls_ca_file(certs.path("ca.pem"))
}

async fn round_trip(addr: SocketAddr, o: ConnectOptions) {
    let a = o
        .clone()
        .connect(&addr.to_string())
        .await
        .expect("TLS client connects");
    let b = o
        .connect(&addr.to_string())
        .await
        .expect("TLS client connects");
    let mut sub = b.subscribe("tls.>").await.expect("subscribe");
    b.flush().await.expect("flush");
    for i in 0..100u32 {
        a.publish("tls.hello", Bytes::from(format!("m{i}")))
            .await
            .expect("publish");
    }
    // A large one: several TLS records.
    a.publish("tls.big", Bytes::from(vec![7u8; 200_000]))
        .await
        .expect("publish big");
    a.flush().await.expect("flush");
    for i in 0..100u32 {
        let m = tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("a message in time")
            .expect("subscription open");
        assert_eq!(&m.payload[..], format!("m{i}").as_bytes());
    }
    let m = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("the big message in time")
        .expect("subscription open");
    assert_eq!(m.payload.len(), 200_000);
    let r = a
        .request("tls.none", Bytes::new(), Duration::from_millis(500))
        .await;
    assert!(r.is_err(), "no responders over TLS either");
}

fn is_tls_error(e: &Error) -> bool {
    matches!(
        e,
        Error::Handshake {
            source: HandshakeError::Tls(_),
            ..
        }
    )
}

#[tokio::test]
async fn pubsub_over_tls() {
    let certs = Certs::new("pubsub");
    let server = start(certs.config(false));
    let addr = server.local_addr();
    round_trip(addr, opts(&certs)).await;
    // The name checked can be given (the certificate also names localhost).
    round_trip(addr, opts(&certs).tls_server_name("localhost")).await;
    // A plain client gets no INFO from a TLS port.
    let plain = ConnectOptions::new()
        .reconnect(false)
        .connect_timeout(Duration::from_secs(3))
        .connect(&addr.to_string())
        .await;
    assert!(plain.is_err(), "a plain client cannot talk to a TLS port");
}

#[tokio::test]
async fn wrong_ca_or_name_is_a_tls_error_and_the_broker_stays_up() {
    let certs = Certs::new("wrongca");
    let server = start(certs.config(false));
    let addr = server.local_addr().to_string();
    let e = ConnectOptions::new()
        .reconnect(false)
        .tls_ca_file(certs.path("other-ca.pem"))
        .connect(&addr)
        .await
        .expect_err("a server certificate from another CA is refused");
    assert!(is_tls_error(&e), "{e:?}");
    assert!(e.to_string().contains("TLS"), "{e}");
    let e = opts(&certs)
        .tls_server_name("not-the-broker.example")
        .connect(&addr)
        .await
        .expect_err("a name the certificate does not carry is refused");
    assert!(is_tls_error(&e), "{e:?}");
    let e = ConnectOptions::new()
        .tls_ca_file(certs.path("missing.pem"))
        .connect(&addr)
        .await
        .expect_err("a CA file that does not exist");
    assert!(matches!(e, Error::TlsConfig { .. }), "{e:?}");

    // The failures were counted, and others are still served.
    let deadline = Instant::now() + WAIT;
    while server.tls_handshake_failures() < 2 {
        assert!(Instant::now() < deadline, "handshake failures not counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    round_trip(server.local_addr(), opts(&certs)).await;
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_and_names_the_client() {
    let certs = Certs::new("mtls");
    let server = start(certs.config(true));
    let addr = server.local_addr().to_string();

    let e = opts(&certs)
        .connect(&addr)
        .await
        .expect_err("no client certificate: refused");
    assert!(is_tls_error(&e), "{e:?}");

    let client = opts(&certs)
        .tls_client_cert(certs.path("client.pem"), certs.path("client.key"))
        .connect(&addr)
        .await
        .expect("a client with a certificate is accepted");
    client.flush().await.expect("flush");
    let ids = server.tls_identities();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(ids[0].1, "planner");
    assert_eq!(ids[0].0, client.server_info().client_id);

    // Pub/sub between clients that both present certificates.
    round_trip(
        server.local_addr(),
        opts(&certs).tls_client_cert(certs.path("client.pem"), certs.path("client.key")),
    )
    .await;
    client.close().await.expect("close");
    drop(client);
    let deadline = Instant::now() + WAIT;
    while !server.tls_identities().is_empty() {
        assert!(Instant::now() < deadline, "identity not dropped at close");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn broker_err_then_close_reaches_a_tls_client() {
    use agentwire_protocol::{self as proto, Frame};
    use tokio::io::AsyncReadExt;

    let certs = Certs::new("errclose");
    let mut cfg = certs.config(false);
    cfg.limits.handshake_timeout_ms = 200;
    let server = start(cfg);
    let roots = {
        let mut r = rustls::RootCertStore::empty();
        let pem = std::fs::read(certs.path("ca.pem")).expect("read CA");
        use rustls::pki_types::pem::PemObject;
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            r.add(c.expect("CA PEM")).expect("add CA");
        }
        r
    };
    let cc = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cc))
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    // No HELLO: the broker sends ERR handshake_timeout, then closes.
    let mut all = Vec::new();
    tokio::time::timeout(WAIT, tls.read_to_end(&mut all))
        .await
        .expect("the broker closes")
        .expect("a clean end of stream (close_notify)");
    let mut ops = Vec::new();
    let mut rest = &all[..];
    while let Ok(Some((f, n))) = proto::decode_frame(rest, 1 << 20) {
        ops.push(matches!(f, Frame::Err(_)));
        rest = &rest[n..];
    }
    assert_eq!(ops, [false, true], "INFO then ERR");
    assert!(server.wait_drained(WAIT));
}

fn https_get(url: &str, ca: &Path) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(c.expect("CA PEM")).expect("add CA");
    }
    let cc = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let agent = ureq::AgentBuilder::new()
        .tls_config(Arc::new(cc))
        .timeout(Duration::from_secs(5))
        .build();
    let resp = agent.get(url).call().map_err(|e| e.to_string())?;
    Ok(resp.into_string().expect("a text body"))
}

#[test]
fn admin_api_over_https() {
    let certs = Certs::new("admin");
    let mut cfg = certs.config(true);
    cfg.admin.listen = Some("127.0.0.1:0".parse().expect("literal"));
    let server = start(cfg);
    let admin = server.admin_addr().expect("admin API on");
    let body = https_get(&format!("https://{admin}/healthz"), &certs.path("ca.pem"))
        .expect("healthz over HTTPS");
    assert_eq!(body, "ok\n");
    let metrics = https_get(&format!("https://{admin}/metrics"), &certs.path("ca.pem"))
        .expect("metrics over HTTPS");
    assert!(
        metrics.contains("agentwire_tls_handshake_failures_total"),
        "{metrics}"
    );
    // Plain HTTP is not served.
    let plain = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(3))
        .build()
        .get(&format!("http://{admin}/healthz"))
        .call();
    assert!(plain.is_err());
    // The wrong CA is refused.
    assert!(https_get(
        &format!("https://{admin}/healthz"),
        &certs.path("other-ca.pem")
    )
    .is_err());
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

#[test]
fn cli_pub_sub_and_admin_over_tls() {
    let certs = Certs::new("cli");
    let addr = free_addr();
    let admin = free_addr();
    let data = certs.path("data");
    let mut broker = Command::new(BIN)
        .args(["serve", "--listen", &addr.to_string()])
        .args(["--admin", &admin.to_string()])
        .arg("--data-dir")
        .arg(&data)
        .arg("--tls-cert")
        .arg(certs.path("server.pem"))
        .arg("--tls-key")
        .arg(certs.path("server.key"))
        .arg("--tls-client-ca")
        .arg(certs.path("ca.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn agentwire serve");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() || TcpStream::connect(admin).is_err() {
        assert!(Instant::now() < deadline, "broker did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let tls_args = |c: &mut Command| {
        c.arg("--server")
            .arg(addr.to_string())
            .arg("--tls-ca")
            .arg(certs.path("ca.pem"))
            .arg("--tls-cert")
            .arg(certs.path("client.pem"))
            .arg("--tls-key")
            .arg(certs.path("client.key"));
    };
    let mut sub = Command::new(BIN);
    sub.args(["sub", "cli.tls", "--count", "2"]);
    tls_args(&mut sub);
    let mut sub = sub
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sub");
    let deadline = Instant::now() + Duration::from_secs(20);
    while sub.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "sub did not get 2 messages");
        let mut p = Command::new(BIN);
        p.args(["pub", "cli.tls", "over tls"]);
        tls_args(&mut p);
        let o = p.output().expect("run pub");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = sub.wait_with_output().expect("sub output");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = BufReader::new(&out.stdout[..])
        .lines()
        .map(|l| l.expect("utf-8"))
        .collect();
    assert_eq!(lines, ["cli.tls over tls"; 2]);

    // Without a client certificate: a TLS error, exit 1.
    let o = Command::new(BIN)
        .args(["pub", "cli.tls", "x", "--server", &addr.to_string()])
        .arg("--tls-ca")
        .arg(certs.path("ca.pem"))
        .output()
        .expect("run pub");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("TLS"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // The admin commands over HTTPS.
    let o = Command::new(BIN)
        .args(["status", "--json", "--admin", &admin.to_string()])
        .arg("--tls-ca")
        .arg(certs.path("ca.pem"))
        .output()
        .expect("run status");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON status");
    assert!(v.is_object(), "{v}");

    let _ = broker.kill();
    let _ = broker.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_keeps_the_tls_settings() {
    let certs = Certs::new("reconnect");
    let mut cfg = certs.config(true);
    cfg.shards = 1;
    cfg.lameduck_window_ms = 5_000;
    let a = start(cfg);
    let b = start(certs.config(true));
    let client = opts(&certs)
        .tls_client_cert(certs.path("client.pem"), certs.path("client.key"))
        .reconnect(true)
        .servers([a.local_addr().to_string(), b.local_addr().to_string()])
        .reconnect_delay(Duration::from_millis(10), Duration::from_millis(100))
        .connect_servers()
        .await
        .expect("connect to A");
    let mut events = client.events();
    let mut sub = client.subscribe("moved.>").await.expect("subscribe");
    client.flush().await.expect("flush");
    a.lame_duck();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    loop {
        let ev = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("reconnected to B")
            .expect("events open");
        if let agentwire_client::ConnectionEvent::Reconnected { addr, .. } = ev {
            assert_eq!(addr, b.local_addr().to_string());
            break;
        }
    }
    // B saw the same client certificate.
    let ids = b.tls_identities();
    assert!(ids.iter().any(|(_, n)| n == "planner"), "{ids:?}");
    let other = opts(&certs)
        .tls_client_cert(certs.path("client.pem"), certs.path("client.key"))
        .connect(&b.local_addr().to_string())
        .await
        .expect("connect to B");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        other.publish("moved.here", "hi").await.expect("publish");
        other.flush().await.expect("flush");
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
            assert_eq!(&*m.subject, "moved.here");
            break;
        }
        assert!(Instant::now() < deadline, "no message on B");
    }
}

#[tokio::test]
async fn failed_or_slow_handshakes_neither_block_accepting_nor_hold_connection_slots() {
    use tokio::io::AsyncWriteExt;

    let certs = Certs::new("slots");
    let mut cfg = certs.config(false);
    cfg.limits.max_connections = 2;
    let server = start(cfg);
    let addr = server.local_addr();
    // Garbage instead of a ClientHello, several times over the limit.
    for _ in 0..5 {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let _ = s.write_all(b"HELLO? this is not TLS\r\n\r\n").await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read_to_end(&mut s, &mut buf))
            .await;
    }
    // A client that connects and says nothing holds one slot until the handshake deadline,
    // and does not hold up the next one.
    let silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let t0 = Instant::now();
    let c = opts(&certs)
        .connect(&addr.to_string())
        .await
        .expect("a TLS client is accepted next to a silent one");
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );
    drop(silent);
    let deadline = Instant::now() + WAIT;
    while server.tls_handshake_failures() < 6 {
        assert!(
            Instant::now() < deadline,
            "{}",
            server.tls_handshake_failures()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Both slots are usable again: the failures gave theirs back.
    let d = opts(&certs)
        .connect(&addr.to_string())
        .await
        .expect("the second slot is free");
    c.close().await.expect("close");
    d.close().await.expect("close");
    assert!(server.wait_drained(WAIT), "every slot given back");
}

#[tokio::test]
async fn a_client_certificate_names_the_user() {
    let certs = Certs::new("users");
    let mut cfg = certs.config(true);
    // "planner" has no credential of its own: only its certificate names it.
    let mut planner = agentwire_broker::config::UserConfig::with_token("planner", "unused");
    planner.token = None;
    planner.publish = Some(vec!["tasks.>".into()]);
    cfg.users = vec![
        planner,
        agentwire_broker::config::UserConfig::with_token("bob", "bob-token"),
    ];
    let server = start(cfg);
    let addr = server.local_addr().to_string();

    let planner = opts(&certs)
        .tls_client_cert(certs.path("client.pem"), certs.path("client.key"))
        .connect(&addr)
        .await
        .expect("the certificate's CN names user planner: admitted without a token");
    let mut sub = planner.subscribe("tasks.>").await.expect("subscribe");
    planner.flush().await.expect("flush");
    planner.publish("tasks.one", "go").await.expect("publish");
    planner.flush().await.expect("flush");
    let m = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a message in time")
        .expect("subscription open");
    assert_eq!(&m.payload[..], b"go");

    // A certificate that names no configured user is refused by the broker (after TLS).
    let e = opts(&certs)
        .tls_client_cert(certs.path("stranger.pem"), certs.path("stranger.key"))
        .connect(&addr)
        .await
        .expect_err("stranger is not a user");
    match e {
        Error::Handshake {
            source: HandshakeError::Rejected(r),
            ..
        } => assert!(r.message.contains("stranger"), "{}", r.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}
