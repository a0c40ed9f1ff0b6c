//! The chat example (`examples/chat`) in Debian's Chromium, driven by
//! playwright-core: served from another origin than the broker, two users of
//! one tenant and one of another, a broker restart, expiring tokens, and a
//! broker that refuses the page's origin. The scenario lives in
//! `examples/chat/test/browser.mjs`; `scripts/setup-tests.sh` installs
//! Chromium, the npm packages, and builds the page.

use std::path::Path;
use std::process::Command;

#[test]
fn the_chat_example_works_in_a_real_browser() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/chat");
    assert!(
        example.join("dist/app.js").exists() && example.join("node_modules").exists(),
        "run scripts/setup-tests.sh first"
    );
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser");
    let output = Command::new("node")
        .arg(example.join("test/browser.mjs"))
        .arg(env!("CARGO_BIN_EXE_broker"))
        .arg(&artifacts)
        .current_dir(&example)
        .output()
        .expect("node is installed");
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    for page in ["alice", "bob", "carol", "blocked"] {
        assert!(artifacts.join(format!("{page}.png")).exists());
    }
}
