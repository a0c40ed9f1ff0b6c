//! Abuse limits, each answering with a clear status and `{"error": …}`:
//! password guessing per client address, streams per user, the Argon2
//! queue; and the input rules that keep hostile names out.

mod common;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[test]
fn failed_password_checks_are_limited_per_client_address() {
    let broker = Broker::start(&["--login_limit=3"]);
    broker.create_user("bob", "right", "t1");
    let login = |from: &str, password: &str| {
        let body = json!({"username": "bob", "password": password});
        broker.post_from(from, "/login", &body)
    };
    for _ in 0..3 {
        login("127.0.0.2", "wrong").assert_error(401);
    }
    // The attacker's address is locked out, even with the right password…
    let locked = login("127.0.0.2", "right");
    locked.assert_error(429);
    let retry: u64 = locked.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let basic = [("Authorization", basic("bob", "right"))];
    let basic: Vec<(&str, &str)> = basic.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let reply = broker.request_from("127.0.0.2", "GET", "/verify", &basic, b"");
    reply.assert_error(429);
    // …while the owner at another address is not slowed at all.
    let started = Instant::now();
    assert_eq!(login("127.0.0.3", "right").status, 200);
    assert_eq!(
        broker
            .request_from("127.0.0.3", "GET", "/verify", &basic, b"")
            .status,
        200
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn a_user_may_hold_only_max_streams_open_streams() {
    let broker = Broker::start(&["--max_streams=2"]);
    broker.create_user("bob", "pw", "t1");
    broker.create_user("carol", "pw", "t1");
    let bob = broker.login("bob", "pw");
    let auth = bearer(&bob);
    let first = broker.sse(&[("Authorization", &auth)]);
    let _second = broker.sse(&[("Authorization", &auth)]);
    let third = broker.get("/sse", &[("Authorization", &auth)]);
    third.assert_error(429);
    assert!(third.header("retry-after").is_some());
    // Another user of the tenant is not affected.
    let carol = broker.login("carol", "pw");
    let _carol = broker.sse(&[("Authorization", &bearer(&carol))]);
    // A closed stream frees its slot.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let status = broker.sse_status(&[("Authorization", &auth)]);
        if status == 200 {
            break;
        }
        assert_eq!(status, 429);
        assert!(Instant::now() < deadline, "the slot was never freed");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn too_many_requests_waiting_for_argon2_are_refused_with_503() {
    let broker = Broker::start(&["--login_limit=100000"]);
    broker.create_user("bob", "pw", "t1");
    let port = broker.port;
    let threads: Vec<_> = (0..150)
        .map(|_| {
            std::thread::spawn(move || {
                let client = Client { port, tls: None };
                let reply = client.post("/login", &json!({"username": "bob", "password": "wrong"}));
                (reply.status, reply.header("retry-after"))
            })
        })
        .collect();
    let replies: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let refused: Vec<_> = replies
        .iter()
        .filter(|(status, _)| *status == 503)
        .collect();
    assert!(!refused.is_empty(), "no request was refused: {replies:?}");
    assert!(refused.iter().all(|(_, retry)| retry.is_some()));
    assert!(
        replies
            .iter()
            .all(|(status, _)| [401, 503].contains(status))
    );
    // The server is fine afterwards.
    broker.login("bob", "pw");
}

#[test]
fn hostile_usernames_are_refused_and_never_reach_storage() {
    let broker = Broker::start(&[]);
    for name in [
        "\u{7}bob",
        "bo\u{0}b",
        " bob",
        "bob ",
        "\tbob",
        "bob\u{85}",
        "a:b",
    ] {
        let body =
            json!({"username": name, "password": "pw", "admin_token": ADMIN, "tenant_name": "t1"});
        broker.post("/create_user", &body).assert_error(400);
    }
    assert_eq!(
        broker
            .post("/list_users", &json!({"admin_token": ADMIN}))
            .json(),
        json!([])
    );
    // A name far longer than a storage key may be is a plain 401/400.
    let long = "x".repeat(70_000);
    let body = json!({"username": long, "password": "pw"});
    broker.post("/login", &body).assert_error(401);
    // (A header over 64 KiB is refused as such: 431.)
    let reply = broker.get(
        "/verify",
        &[("Authorization", &basic(&long[..40_000], "pw"))],
    );
    reply.assert_error(401);
    broker.admin("/get_user", &long).assert_error(400);
    broker.admin("/revoke_user", &long).assert_error(400);
    assert_eq!(broker.get("/", &[]).status, 200, "still serving");
}

#[test]
fn a_password_change_invalidates_earlier_jwts() {
    let broker = Broker::start(&[]);
    broker.create_user("bob", "old", "t1");
    let old = broker.login("bob", "old");
    let update = json!({"admin_token": ADMIN, "username": "bob", "password": "new"});
    assert_eq!(broker.post("/update_user", &update).status, 200);
    broker.verify(&old).assert_error(401);
    let fresh = broker.login("bob", "new");
    assert_eq!(broker.verify(&fresh).status, 200);
    // A data change alone leaves tokens valid.
    let update = json!({"admin_token": ADMIN, "username": "bob", "data": {"x": 1}});
    assert_eq!(broker.post("/update_user", &update).status, 200);
    assert_eq!(broker.verify(&fresh).status, 200);
}

#[test]
fn an_origin_that_is_not_a_header_value_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let output = Broker::command(&dir.path().join("db"), 0, &["--origin=bad\nvalue"])
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--origin"), "{stderr}");
}
