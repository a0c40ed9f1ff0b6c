//! The real client the seed names: broker-client@0.0.8 from npm, bundled for
//! Node 20 by `scripts/setup-tests.sh`, receives exactly what was inserted.

mod common;
use common::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn broker_client_receives_inserted_events_and_sees_a_clean_close() {
    let bundle = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/client/dist/client.mjs");
    assert!(
        bundle.exists(),
        "{} is missing: run scripts/setup-tests.sh first",
        bundle.display()
    );
    let broker = Broker::start(&[]);
    broker.create_user("bob", "pw", "t1");
    let jwt = broker.login("bob", "pw");
    let chat =
        json!({"text": "héllo wörld 😀 — ünïcode", "n": [1, 2.5, null], "nested": {"ok": true}});
    let profile = json!({"name": "Zoë", "quote": "a \"quoted\" \\ backslash"});
    broker.insert(&jwt, "ignored", &json!("no listener for this name"));
    broker.insert(&jwt, "chat", &chat);

    let mut node = Command::new("node")
        .arg(&bundle)
        .arg(format!("http://127.0.0.1:{}/sse", broker.port))
        .args([&jwt, "chat", "profile"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("node is installed");
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let mut next = || -> String { lines.next().expect("client output").unwrap() };
    let synced: Value = serde_json::from_str(&next()).unwrap();
    assert_eq!(synced, json!({"event": "chat", "id": "2", "data": chat}));

    broker.insert(&jwt, "profile", &profile);
    let live: Value = serde_json::from_str(&next()).unwrap();
    assert_eq!(
        live,
        json!({"event": "profile", "id": "3", "data": profile})
    );

    // Revocation ends the stream with a proper chunked end: the client's onclose fires.
    assert_eq!(broker.admin("/revoke_user", "bob").status, 200);
    assert_eq!(next(), "closed");
    assert!(node.wait().unwrap().success());
}
