//! Answers as browsers and proxies expect them, and event data as sent:
//! every answer forbids type sniffing and caching and lets a page read
//! `Retry-After`; an event's data reaches streams as the very text that was
//! inserted (keys in order, numbers digit for digit), minus line breaks,
//! with non-ASCII characters escaped.

mod common;
use common::*;
use serde_json::json;
use std::time::Duration;

/// Asserts that an answer carries the headers every answer must.
fn assert_every_header(what: &str, head: &str) {
    let reply = Reply {
        status: 0,
        head: head.to_string(),
        body: Vec::new(),
    };
    let header = |name: &str| reply.header(name).unwrap_or_default();
    assert_eq!(
        header("x-content-type-options"),
        "nosniff",
        "{what}: {head}"
    );
    assert_eq!(header("cache-control"), "no-store", "{what}: {head}");
    let exposed = header("access-control-expose-headers").to_ascii_lowercase();
    let exposed: Vec<&str> = exposed.split(',').map(str::trim).collect();
    assert!(exposed.contains(&"retry-after"), "{what}: {head}");
}

/// Asserts a status, then the headers every answer must carry.
fn assert_answer(what: &str, reply: &Reply, status: u16) {
    let body = String::from_utf8_lossy(&reply.body);
    assert_eq!(reply.status, status, "{what}: {body}");
    assert_every_header(what, &reply.head);
}

/// `POST /insert` of a body exactly as written (no serde_json on the way).
fn insert_raw(broker: &Broker, jwt: &str, body: &str) -> Reply {
    let auth = bearer(jwt);
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    broker.request("POST", "/insert", &headers, body.as_bytes())
}

/// The `data:` lines of the first `count` frames of a stream, as the raw
/// text that arrived (keep-alive comment lines skipped: a keep-alive, `:\n`,
/// shares its block with the next frame).
fn data_lines(stream: &mut Sse, count: usize) -> Vec<String> {
    loop {
        let text = String::from_utf8(stream.body.clone()).expect("streams are ASCII");
        let complete = &text[..text.rfind("\n\n").map_or(0, |end| end + 2)];
        let frames = complete.split("\n\n").map(|block| {
            let lines = block.lines().filter(|line| !line.starts_with(':'));
            lines.collect::<Vec<_>>()
        });
        let frames = frames.filter(|lines| !lines.is_empty());
        let data = frames.map(|lines| {
            let line = lines.iter().find_map(|line| line.strip_prefix("data:"));
            line.unwrap_or_else(|| panic!("no data in {lines:?}"))
                .to_string()
        });
        let data: Vec<String> = data.collect();
        if data.len() >= count {
            return data;
        }
        assert!(
            !stream.ended,
            "the stream ended after {} frames",
            data.len()
        );
        if let Err(error) = stream.try_read_chunk() {
            let came = data.len();
            panic!("waited for {count} frames, {came} came: {}", why(&error));
        }
    }
}

#[test]
fn every_answer_forbids_sniffing_and_caching_and_exposes_retry_after() {
    let broker = Broker::start(&[]);
    assert_answer("health", &broker.get("/", &[]), 200);
    assert_answer("unknown path", &broker.get("/nowhere", &[]), 404);
    assert_answer("no credentials", &broker.get("/verify", &[]), 401);
    let preflight = [
        ("Origin", "https://example.com"),
        ("Access-Control-Request-Method", "POST"),
    ];
    let options = broker.request("OPTIONS", "/insert", &preflight, b"");
    assert_answer("preflight", &options, 204);
    let created =
        json!({"username": "bob", "password": "pw", "admin_token": ADMIN, "tenant_name": "t1"});
    assert_answer("create_user", &broker.post("/create_user", &created), 200);
    let listed = broker.post("/list_users", &json!({"admin_token": ADMIN}));
    assert_answer("list_users", &listed, 200);
    let login = broker.post("/login", &json!({"username": "bob", "password": "pw"}));
    assert_answer("login", &login, 200);
    let jwt = login.json()["jwt"].as_str().unwrap().to_string();
    assert_answer("verify", &broker.verify(&jwt), 200);
    let stream = broker.sse(&[("Authorization", &bearer(&jwt))]);
    assert_every_header("stream", &stream.head);
    let inserted = insert_raw(&broker, &jwt, r#"{"event":"e","data":1}"#);
    assert_answer("insert", &inserted, 200);
    assert_answer("bad JSON", &insert_raw(&broker, &jwt, "{"), 400);
}

#[test]
fn a_login_refused_with_429_carries_retry_after_readable_by_a_page() {
    let broker = Broker::start(&["--login_limit=1"]);
    broker.create_user("bob", "pw", "t1");
    let wrong = json!({"username": "bob", "password": "wrong"});
    // Two wrong passwords in one minute; a third if the minute turned.
    let refused = (0..3)
        .map(|_| broker.post("/login", &wrong))
        .find(|reply| reply.status != 401)
        .expect("no login was refused for the limit");
    refused.assert_error(429);
    assert!(refused.header("retry-after").is_some(), "{}", refused.head);
    assert_every_header("429", &refused.head);
}

#[test]
fn event_data_reaches_streams_as_sent_minus_line_breaks_with_non_ascii_escaped() {
    let broker = Broker::start(&[]);
    broker.create_user("bob", "pw", "t1");
    let jwt = broker.login("bob", "pw");
    let auth = bearer(&jwt);
    let mut live = broker.sse(&[("Authorization", &auth)]);
    // Keys out of order, a number no float holds, digits as written, a
    // line break between tokens, an accent and an emoji.
    let sent = "{\"event\":\"e\",\"data\":{\"z\":123456789012345678901234567890,\"a\":1.50,\"m\":[1E2, 2],\n \"s\":\"é😀\"}}";
    let expected =
        r#"{"z":123456789012345678901234567890,"a":1.50,"m":[1E2, 2], "s":"\u00e9\ud83d\ude00"}"#;
    assert_eq!(insert_raw(&broker, &jwt, sent).json(), json!({"id": 1}));
    // CRLF between tokens, whitespace around the value, and escapes inside
    // a string, which stay as they were written.
    let sent = "{\"event\":\"f\", \"data\" :\r\n [true,\r\n  null, \"a\\nb\\\"\\u00E9\"] \r\n}";
    let expected_too = r#"[true,  null, "a\nb\"\u00E9"]"#;
    assert_eq!(insert_raw(&broker, &jwt, sent).json(), json!({"id": 2}));
    assert_eq!(data_lines(&mut live, 2), [expected, expected_too]);
    // The same from storage: a fresh stream's sync.
    let mut synced = broker.sse(&[("Authorization", &auth)]);
    assert_eq!(data_lines(&mut synced, 2), [expected, expected_too]);
    assert!(synced.quiet_for(Duration::from_millis(300)));
    // Data that is not JSON, or none: refused, and nothing stored.
    insert_raw(&broker, &jwt, r#"{"event":"g","data":{"a":}}"#).assert_error(400);
    insert_raw(&broker, &jwt, r#"{"event":"g"}"#).assert_error(400);
    // Data nested 127 levels or more (with the body's own object, the 128
    // where serde_json stops), or holding a lone surrogate, which many
    // parsers refuse: 400 too, so no stored frame can break a subscriber's
    // sync.
    let nested = |depth: usize| "[".repeat(depth) + &"]".repeat(depth);
    let body = |data: &str| format!(r#"{{"event":"g","data":{data}}}"#);
    for depth in [127, 200] {
        insert_raw(&broker, &jwt, &body(&nested(depth))).assert_error(400);
    }
    insert_raw(&broker, &jwt, r#"{"event":"g","data":"\ud800"}"#).assert_error(400);
    // The next event takes the next id, and is the next frame the live
    // stream gets: none of the refused ones reached it.
    assert_eq!(broker.insert(&jwt, "g", &json!(3)), 3);
    assert_eq!(data_lines(&mut live, 3)[2], "3");
    // 126 levels are kept.
    let kept = insert_raw(&broker, &jwt, &body(&nested(126)));
    assert_eq!(kept.json(), json!({"id": 4}));
    assert_eq!(data_lines(&mut live, 4)[3], nested(126));
}
