//! The real client the seed names: broker-client@0.0.8 from npm, bundled for
//! Node 20 by `scripts/setup-tests.sh`, receives exactly what was inserted,
//! and takes no keep-alive for a message.

mod common;
use common::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Lines};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

/// broker-client in Node (`tests/client/client.mjs`), streaming from a
/// broker with a JWT and listening for some event names.
struct BrokerClient {
    node: Child,
    lines: Lines<BufReader<ChildStdout>>,
    /// Every `onmessage` call so far: `{"event", "id", "data"}`, the data
    /// parsed (or as text, if it is no JSON).
    messages: Vec<Value>,
}

impl BrokerClient {
    fn start(broker: &Broker, jwt: &str, names: &[&str]) -> BrokerClient {
        let bundle = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/client/dist/client.mjs");
        assert!(
            bundle.exists(),
            "{} is missing: run scripts/setup-tests.sh first",
            bundle.display()
        );
        let mut node = Command::new("node")
            .arg(&bundle)
            .arg(format!("http://127.0.0.1:{}/sse", broker.port))
            .arg(jwt)
            .args(names)
            .stdout(Stdio::piped())
            .spawn()
            .expect("node is installed");
        let lines = BufReader::new(node.stdout.take().unwrap()).lines();
        BrokerClient {
            node,
            lines,
            messages: Vec::new(),
        }
    }

    /// The next event a listener got, as `{"event", "id", "data"}`, or
    /// `"closed"` once `onclose` fired; `onmessage` calls on the way are
    /// kept in `messages`.
    fn next(&mut self) -> Value {
        loop {
            let line = self.lines.next().expect("broker-client's output ended");
            let line = line.unwrap();
            if line == "closed" {
                return json!("closed");
            }
            let mut call: Value = serde_json::from_str(&line).unwrap();
            let via = call.as_object_mut().unwrap().remove("via").unwrap();
            if via == "listener" {
                return call;
            }
            let text = call["data"].as_str().unwrap_or_default();
            if let Ok(data) = serde_json::from_str::<Value>(text) {
                call["data"] = data;
            }
            self.messages.push(call);
        }
    }
}

#[test]
fn broker_client_receives_inserted_events_and_sees_a_clean_close() {
    let broker = Broker::start(&[]);
    broker.create_user("bob", "pw", "t1");
    let jwt = broker.login("bob", "pw");
    let chat =
        json!({"text": "héllo wörld 😀 — ünïcode", "n": [1, 2.5, null], "nested": {"ok": true}});
    let profile = json!({"name": "Zoë", "quote": "a \"quoted\" \\ backslash"});
    let ignored = json!("no listener for this name");
    broker.insert(&jwt, "ignored", &ignored);
    broker.insert(&jwt, "chat", &chat);

    let mut client = BrokerClient::start(&broker, &jwt, &["chat", "profile"]);
    let synced = json!({"event": "chat", "id": "2", "data": chat});
    assert_eq!(client.next(), synced);

    broker.insert(&jwt, "profile", &profile);
    let live = json!({"event": "profile", "id": "3", "data": profile});
    assert_eq!(client.next(), live);

    // Revocation ends the stream with a proper chunked end: the client's onclose fires.
    assert_eq!(broker.admin("/revoke_user", "bob").status, 200);
    assert_eq!(client.next(), "closed");
    assert!(client.node.wait().unwrap().success());
    // onmessage saw every event, those of no listened name too, and nothing else.
    let first = json!({"event": "ignored", "id": "1", "data": ignored});
    assert_eq!(client.messages, [first, synced, live]);
}

/// How many keep-alive comment lines (`:`) a stream has received.
fn keep_alives(stream: &Sse) -> usize {
    let lines = stream.body.split(|byte| *byte == b'\n');
    lines.filter(|line| *line == b":").count()
}

#[test]
fn keep_alives_are_no_message_to_broker_client_and_the_events_after_them_arrive_whole() {
    let broker = Broker::start(&["--keep_alive=1"]);
    broker.create_user("bob", "pw", "t1");
    let jwt = broker.login("bob", "pw");
    let first = json!({"text": "before any keep-alive"});
    broker.insert(&jwt, "chat", &first);
    let mut client = BrokerClient::start(&broker, &jwt, &["chat"]);
    let mut events = vec![json!({"event": "chat", "id": "1", "data": first})];
    assert_eq!(client.next(), events[0]);
    // broker-client's stream is open (it has its sync). A raw stream opened
    // after it shows when keep-alives went out: each round reaches every
    // open stream at once, so once the raw stream has had one,
    // broker-client's stream was sent it too, ahead of any later event.
    let mut raw = broker.sse(&[("Authorization", &bearer(&jwt))]);
    raw.events(1);
    // Three keep-alives before the first live event, then one before each
    // of the next two.
    let mut sent = 0;
    for (round, more) in [3, 1, 1].into_iter().enumerate() {
        sent += more;
        while keep_alives(&raw) < sent {
            raw.read_chunk();
        }
        let data = json!({"round": round, "text": "after keep-alives: ünïcode 😀"});
        let id = broker.insert(&jwt, "chat", &data);
        let event = json!({"event": "chat", "id": id.to_string(), "data": data});
        // Whole, in order, with its id.
        assert_eq!(client.next(), event);
        events.push(event);
    }
    let raw_events = raw.events(events.len());
    assert_eq!(raw_events.len(), events.len());
    eprintln!("{} keep-alives on the raw stream", keep_alives(&raw));
    assert!(keep_alives(&raw) >= 5);
    assert_eq!(broker.admin("/revoke_user", "bob").status, 200);
    assert_eq!(client.next(), "closed");
    assert!(client.node.wait().unwrap().success());
    // Not one onmessage call for a keep-alive: broker-client's onmessage
    // got exactly the events, none empty.
    let empty = client.messages.iter();
    let empty = empty.filter(|message| message["event"] == "" || message["data"] == "");
    let empty: Vec<&Value> = empty.collect();
    assert!(
        empty.is_empty(),
        "broker-client's onmessage got {} empty messages (keep-alives taken for messages): {:?}",
        empty.len(),
        client.messages
    );
    assert_eq!(client.messages, events);
}
