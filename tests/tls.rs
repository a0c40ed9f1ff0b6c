//! HTTPS with your own certificate, and automatic certificates from a real
//! ACME server: Debian's pebble, Let's Encrypt's own test server.

mod common;
use common::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::ClientConfig;
use serde_json::json;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A client that trusts only the given PEM roots.
fn client(roots_pem: &str) -> Arc<ClientConfig> {
    tls_client(roots_pem, &[])
}

fn https_broker(dir: &Path, pki: &Pki, extra: &[&str]) -> Broker {
    let key = format!("--key_path={}", pki.key.display());
    let chain = format!("--cert_path={}", pki.chain.display());
    let mut args = vec![
        "--secure",
        "--auto_cert=false",
        key.as_str(),
        chain.as_str(),
    ];
    args.extend_from_slice(extra);
    let mut broker = Broker::start_on(&dir.join("db"), &args);
    broker.tls = Some((client(&pki.ca), "localhost".to_string()));
    broker
}

/// The whole user journey over whatever transport the broker speaks.
fn journey(broker: &Broker) {
    assert_eq!(broker.get("/", &[]).status, 200);
    broker.create_user("bob", "pw", "t1");
    let jwt = broker.login("bob", "pw");
    broker.insert(&jwt, "synced", &json!({"n": 1}));
    let mut stream = broker.sse(&[("Authorization", &bearer(&jwt))]);
    assert_eq!(stream.events(1)[0].event, "synced");
    broker.insert(&jwt, "live", &json!("ünïcode"));
    assert_eq!(stream.events(2)[1].data, json!("ünïcode"));
}

#[test]
fn https_with_your_own_certificate_serves_the_whole_api() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), &["localhost"]);
    let broker = https_broker(dir.path(), &pki, &[]);
    assert!(broker.logged("serving on port"));
    journey(&broker);
}

#[test]
fn plain_http_and_broken_handshakes_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let ours = pki(dir.path(), &["localhost"]);
    let broker = https_broker(dir.path(), &ours, &[]);
    // A client that connects and says nothing holds only its own connection.
    let _silent = broker.connect();
    // Plain HTTP gets no HTTP answer, just a closed connection (or a TLS alert).
    let mut plain = broker.connect();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    // A client that does not trust the certificate fails its handshake...
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let stranger = client(&pki(&other, &["localhost"]).ca);
    let untrusting = Client {
        port: broker.port,
        tls: Some((stranger, "localhost".into())),
    };
    let mut stream = untrusting.open().0;
    let request = stream
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .and_then(|_| stream.flush());
    assert!(
        request.is_err(),
        "the handshake must fail for an unknown CA"
    );
    // ...and the server goes on serving everyone else.
    assert_eq!(broker.get("/", &[]).status, 200);
}

#[test]
fn a_missing_or_bad_key_or_chain_stops_start_up_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), &["localhost"]);
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "no certificates here\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let named = |path: &std::path::Path| path.display().to_string();
    // A chain file with no certificate is refused by rustls, as an invalid
    // certificate (the check of our own that named the file was retired for
    // the line budget: LOC_BUDGET.md).
    let cases = [
        (missing.clone(), pki.chain.clone(), named(&missing)),
        (pki.key.clone(), missing.clone(), named(&missing)),
        (
            pki.key.clone(),
            empty.clone(),
            "invalid key or certificate".into(),
        ),
        (empty.clone(), pki.chain.clone(), named(&empty)),
    ];
    for (key, chain, named) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_broker"))
            .args([
                "--secure",
                "--auto_cert=false",
                "--port=0",
                "--ntp_servers=",
            ])
            .arg(format!("--db={}", dir.path().join("db").display()))
            .arg(format!("--key_path={}", key.display()))
            .arg(format!("--cert_path={}", chain.display()))
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{key:?} {chain:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&named), "{stderr}");
    }
}

#[test]
fn secure_defaults_to_port_443_and_honours_an_explicit_port() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), &["localhost"]);
    let explicit = https_broker(dir.path(), &pki, &[]);
    assert!(!explicit.logged("port 443"));
    let key = format!("--key_path={}", pki.key.display());
    let chain = format!("--cert_path={}", pki.chain.display());
    let mut command = Command::new(env!("CARGO_BIN_EXE_broker"));
    command.args([
        "--secure",
        "--auto_cert=false",
        "--ntp_servers=",
        &key,
        &chain,
    ]);
    command.arg(format!("--db={}", dir.path().join("db443").display()));
    // Port 443 must be free here (the tests run as root, so it can be bound).
    assert!(
        std::net::TcpListener::bind("127.0.0.1:443").is_ok(),
        "port 443 is taken on this machine"
    );
    let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
    let (log, _) = collect_log(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log
        .lock()
        .unwrap()
        .iter()
        .any(|line| line.contains("serving"))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let lines = log.lock().unwrap().join("\n");
    // Listening on 443 and speaking HTTPS there, verified against the CA.
    let on_443 = Client {
        port: 443,
        tls: Some((client(&pki.ca), "localhost".to_string())),
    };
    let reply = on_443.get("/", &[]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(lines.contains("serving on port 443"), "{lines}");
    assert_eq!(reply.status, 200);
}

/// pebble and its DNS helper, on ports of their own, torn down on drop.
struct Pebble {
    children: Vec<Child>,
    directory: String,
    management: u16,
    log: PathBuf,
    ca_file: PathBuf,
    https_ca: String,
}

impl Pebble {
    /// Starts pebble with TLS-ALPN-01 validation aimed at `tls_port`, and a
    /// DNS server that answers every name with 127.0.0.1.
    fn start(dir: &Path, tls_port: u16, ports: (u16, u16, u16)) -> Pebble {
        let (listen, management, dns) = ports;
        for tool in ["pebble", "pebble-challtestsrv"] {
            let found = Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .output()
                .unwrap();
            assert!(
                found.status.success(),
                "{tool} is missing: run scripts/setup-tests.sh"
            );
        }
        let dir = dir.join("pebble");
        std::fs::create_dir_all(&dir).unwrap();
        let https = pki(&dir, &["localhost", "127.0.0.1"]);
        let config = json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": https.chain, "privateKey": https.key,
            "httpPort": 5002, "tlsPort": tls_port, "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        let config_file = dir.join("pebble.json");
        std::fs::write(&config_file, config.to_string()).unwrap();
        let log = dir.join("pebble.log");
        let challtestsrv = Command::new("pebble-challtestsrv")
            .args([
                "-dns01",
                &format!("127.0.0.1:{dns}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
            ])
            .args([
                "-management",
                &format!("127.0.0.1:{}", free_port()),
                "-defaultIPv6",
                "",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Validation is real (no PEBBLE_VA_ALWAYS_VALID); NOSLEEP only skips
        // pebble's random delays, and nonces are still rejected at random.
        let pebble = Command::new("pebble")
            .args([
                "-config",
                config_file.to_str().unwrap(),
                "-dnsserver",
                &format!("127.0.0.1:{dns}"),
            ])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", listen)).is_err() {
            assert!(Instant::now() < deadline, "pebble did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Pebble {
            children: vec![challtestsrv, pebble],
            directory: format!("https://127.0.0.1:{listen}/dir"),
            management,
            log,
            ca_file: https.ca_file,
            https_ca: https.ca,
        }
    }

    fn issued(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches("Issued certificate")
            .count()
    }

    /// pebble's root CA, from its management interface.
    fn root(&self) -> String {
        let tls = Some((client(&self.https_ca), "localhost".to_string()));
        let reply = Client {
            port: self.management,
            tls,
        }
        .get("/roots/0", &[]);
        assert_eq!(reply.status, 200);
        String::from_utf8(reply.body).unwrap()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_for(broker: &Broker, text: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !broker.logged(text) {
        assert!(
            Instant::now() < deadline,
            "no {text:?} in {:?}",
            broker.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn auto_cert_obtains_a_certificate_from_pebble_and_reuses_it_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let domain = "broker.test";
    let ports = (free_port(), free_port(), free_port());
    let certs = dir.path().join("certs");
    let directory = format!("https://127.0.0.1:{}/dir", ports.0);
    let ca_file = dir.path().join("ca.pem");
    let args = |port: u16| {
        vec![
            "--secure".to_string(),
            format!("--port={port}"),
            format!("--domain={domain}"),
            format!("--certs={}", certs.display()),
            format!("--acme_directory={directory}"),
            format!("--acme_ca={}", ca_file.display()),
        ]
    };
    // The broker starts first (its ACME client retries until pebble is up), so
    // pebble can be told the port where the TLS-ALPN-01 challenge is answered.
    let port = free_port();
    let owned = args(port);
    let borrowed: Vec<&str> = owned.iter().map(String::as_str).collect();
    let db = dir.path().join("db");
    let pebble = Pebble::start(dir.path(), port, ports);
    std::fs::copy(&pebble.ca_file, &ca_file).unwrap();
    assert_eq!(pebble.directory, directory);
    let mut broker = Broker::start_on(&db, &borrowed);
    // Random badNonce rejections make the client retry with backoff.
    wait_for(&broker, "DeployedNewCert", Duration::from_secs(120));
    // Usually one; two when a rejected nonce hit the download after issuance
    // and the client ordered again.
    let issued = pebble.issued();
    assert!(issued >= 1);
    assert!(
        std::fs::read_dir(&certs).unwrap().count() >= 2,
        "account key and certificate cached"
    );

    // The certificate is for the domain and chains to pebble's root: a client
    // trusting nothing else completes the handshake for that name.
    broker.tls = Some((client(&pebble.root()), domain.to_string()));
    journey(&broker);

    // A restart with the same --certs serves the cached certificate: no new order.
    assert_eq!(broker.stop(), Some(0));
    let mut again = Broker::start_on(&db, &borrowed);
    wait_for(&again, "DeployedCachedCert", Duration::from_secs(30));
    again.tls = Some((client(&pebble.root()), domain.to_string()));
    assert_eq!(again.get("/", &[]).status, 200);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(pebble.issued(), issued, "no new order after a restart");
}

#[test]
fn auto_cert_renews_a_certificate_near_expiry_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let domain = "renew.test";
    let ports = (free_port(), free_port(), free_port());
    let directory = format!("https://127.0.0.1:{}/dir", ports.0);
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    // A cached certificate from an earlier run that is due for renewal: a
    // third of its validity is left only after it expires (rustls-acme
    // renews at two thirds), signed by a CA no client trusts here.
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![domain.to_string()]).unwrap();
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(10);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    let old = params.signed_by(&key, &ca, &ca_key).unwrap();
    // rustls-acme's cache file name: SHA-256 of the domains and directory URL.
    use base64::Engine;
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    hash.update(format!("{domain}\0{directory}"));
    let name = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hash.finalize());
    let cached = certs.join(format!("cached_cert_{name}"));
    std::fs::write(&cached, format!("{}{}", key.serialize_pem(), old.pem())).unwrap();

    let port = free_port();
    let pebble = Pebble::start(dir.path(), port, ports);
    let ca_file = format!("--acme_ca={}", pebble.ca_file.display());
    let args = [
        "--secure".to_string(),
        format!("--port={port}"),
        format!("--domain={domain}"),
        format!("--certs={}", certs.display()),
        format!("--acme_directory={directory}"),
        ca_file,
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut broker = Broker::start_on(&dir.path().join("db"), &args);
    wait_for(&broker, "DeployedCachedCert", Duration::from_secs(30));
    wait_for(&broker, "DeployedNewCert", Duration::from_secs(120));
    // Same process, new certificate: it now chains to pebble's root.
    broker.tls = Some((client(&pebble.root()), domain.to_string()));
    assert_eq!(broker.get("/", &[]).status, 200);
    assert!(pebble.issued() >= 1);
    assert_ne!(
        std::fs::read(&cached).unwrap(),
        format!("{}{}", key.serialize_pem(), old.pem()).into_bytes()
    );
}

/// rustls picks its crypto provider by itself only while one is compiled in
/// (ring: src/tls.rs installs none). A second one, aws-lc-rs say, arriving
/// with some dependency's default features, would make every HTTPS start-up
/// panic; this names the cause before that happens.
#[test]
fn ring_is_the_only_rustls_crypto_provider_in_the_build() {
    let lock = include_str!("../Cargo.lock");
    for second in ["aws-lc-rs", "aws-lc-sys"] {
        assert!(
            !lock.contains(&format!("name = \"{second}\"")),
            "{second} is in Cargo.lock: rustls now has two providers; install ring \
             with CryptoProvider::install_default in src/tls.rs, or keep {second} out"
        );
    }
}

#[test]
fn auto_cert_without_a_domain_starts_and_the_acme_error_says_why() {
    // Start-up no longer refuses --secure with --auto_cert and no --domain
    // (that check was retired for the line budget): the broker starts, and
    // the ACME server's refusal of the order, in the log, says what is wrong.
    let dir = tempfile::tempdir().unwrap();
    let ports = (free_port(), free_port(), free_port());
    let port = free_port();
    let pebble = Pebble::start(dir.path(), port, ports);
    let args = [
        "--secure".to_string(),
        format!("--port={port}"),
        format!("--certs={}", dir.path().join("certs").display()),
        format!("--acme_directory={}", pebble.directory),
        format!("--acme_ca={}", pebble.ca_file.display()),
    ];
    let borrowed: Vec<&str> = args.iter().map(String::as_str).collect();
    let broker = Broker::start_on(&dir.path().join("db"), &borrowed);
    // pebble: "Order included DNS identifier with empty value". pebble
    // also rejects nonces at random (badNonce), and rustls-acme retries
    // the order with backoff, so wait for the refusal that names the cause.
    wait_for(&broker, "identifier", Duration::from_secs(120));
    let log = broker.log.lock().unwrap().join("\n");
    eprintln!("{log}");
    assert!(log.contains("serving on port"), "{log}");
}
