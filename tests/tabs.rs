//! Ten tabs of one Chromium profile, each streaming from one broker over
//! HTTPS, all receive a live event. Over HTTP/1.1 a browser keeps at most
//! six connections per site, so the seventh tab's stream would wait
//! silently; HTTP/2, offered by ALPN on the TLS listener, carries all ten on
//! one connection. The tabs live in `tests/tabs/tabs.mjs` (Debian's Chromium
//! driven by playwright-core); `scripts/setup-tests.sh` installs both.

mod common;
use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use std::path::Path;
use std::process::Command;

#[test]
fn ten_tabs_of_one_browser_profile_all_receive_a_live_event_over_https() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        root.join("examples/chat/node_modules/playwright-core")
            .exists(),
        "run scripts/setup-tests.sh first"
    );
    // A test CA and its certificate for localhost, as in tests/tls.rs.
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Broker test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let (key, chain, ca_file) = (
        dir.path().join("key.pem"),
        dir.path().join("chain.pem"),
        dir.path().join("ca.pem"),
    );
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    std::fs::write(&chain, leaf.pem()).unwrap();
    std::fs::write(&ca_file, ca.pem()).unwrap();

    let key = format!("--key_path={}", key.display());
    let chain = format!("--cert_path={}", chain.display());
    let broker = Broker::start_on(
        &dir.path().join("db"),
        &["--secure", "--auto_cert=false", &key, &chain],
    );
    let output = Command::new("node")
        .arg(root.join("tests/tabs/tabs.mjs"))
        .arg(broker.port.to_string())
        .arg(&ca_file)
        .arg(ADMIN)
        .output()
        .expect("node is installed");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{stdout}");
}
