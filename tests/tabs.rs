//! Ten tabs of one Chromium profile, each streaming from one broker over
//! HTTPS, all receive a live event. Over HTTP/1.1 a browser keeps at most
//! six connections per site, so the seventh tab's stream would wait
//! silently; HTTP/2, offered by ALPN on the TLS listener, carries all ten on
//! one connection. The tabs live in `tests/tabs/tabs.mjs` (Debian's Chromium
//! driven by playwright-core); `scripts/setup-tests.sh` installs both.

mod common;
use common::*;
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
    // A test CA and its certificate for localhost.
    let dir = tempfile::tempdir().unwrap();
    let Pki {
        key,
        chain,
        ca_file,
        ..
    } = pki(dir.path(), &["localhost"]);

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
