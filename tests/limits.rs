//! Abuse limits, each answering with a clear status and `{"error": …}`:
//! password guessing per client address, streams per user, the Argon2
//! queue; and the input rules that keep hostile names out.

mod common;
use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

#[test]
fn failed_password_checks_are_limited_per_client_address() {
    let broker = Broker::start(&["--login_limit=3"]);
    early_in_a_minute();
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
fn a_flood_of_password_checks_waits_its_turn_one_hash_per_core() {
    // The 503 past 64 waiting checks was retired for the line budget: every
    // check waits its turn, and still no more than one hash per core runs,
    // so Argon2's memory stays bounded however many wait.
    let broker = Broker::start(&["--login_limit=100000"]);
    broker.create_user("bob", "pw", "t1");
    let peak = |broker: &Broker| {
        let status = std::fs::read_to_string(format!("/proc/{}/status", broker.pid())).unwrap();
        let line = status.lines().find(|line| line.starts_with("VmHWM:"));
        let kib: u64 = line
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        kib
    };
    let before = peak(&broker);
    // 150 checks sent at the same moment on connections already open:
    // however fast the machine hashes, they are all waiting at once, not
    // served one by one as they trickle in.
    let body = json!({"username": "bob", "password": "wrong"}).to_string();
    let headers = [("Content-Type", "application/json")];
    let request = request_bytes("POST", "/login", &headers, body.as_bytes());
    let all_connected = std::sync::Arc::new(std::sync::Barrier::new(150));
    let threads: Vec<_> = (0..150)
        .map(|_| {
            let mut socket = broker.connect();
            let (request, all_connected) = (request.clone(), all_connected.clone());
            std::thread::spawn(move || {
                all_connected.wait();
                socket.write_all(&request).unwrap();
                let reply = read_reply(&mut std::io::BufReader::new(socket));
                (reply.status, reply.header("retry-after"))
            })
        })
        .collect();
    let replies: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        replies.iter().all(|(status, _)| *status == 401),
        "every check is answered, none refused: {replies:?}"
    );
    // Argon2 takes 19 MiB a hash: 150 at once would be 2.8 GiB; one per
    // core (and the allocator's slack) stays far below.
    let cores = std::thread::available_parallelism().unwrap().get() as u64;
    let grown = peak(&broker).saturating_sub(before) / 1024;
    eprintln!("peak RSS grew {grown} MiB during 150 checks on {cores} cores");
    assert!(grown <= 25 * (cores + 2), "{grown} MiB");
    // The server is fine afterwards.
    broker.login("bob", "pw");
}

#[test]
fn hostile_usernames_are_refused_and_never_reach_storage() {
    // A body large enough for a username longer than a storage key.
    let broker = Broker::start(&["--max_body=1048576"]);
    for name in [
        "\u{7}bob",
        "bo\u{0}b",
        " bob",
        "bob ",
        "\tbob",
        "bob\u{85}",
        "a:b",
        // Unicode's format characters: invisible, or reordering what
        // follows, so that one name can pass for another in a list.
        "bo\u{200B}b",
        "\u{202E}bob",
        "\u{FEFF}bob",
        "bo\u{AD}b",
        "bob\u{2060}",
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
    // Letters of any script are welcome.
    let body = json!({"username": "Zoë-日本", "password": "pw", "admin_token": ADMIN, "tenant_name": "t1"});
    assert_eq!(broker.post("/create_user", &body).status, 200);
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
    // Status 1 (status 2 for bad flags was retired for the line budget).
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--origin"), "{stderr}");
}

/// A wrong-password login from `from`, closed by the client while the
/// server is still checking it. It hangs up only once the server has read
/// it: a request on another connection, made after it, has been answered.
fn abandoned_login(broker: &Broker, from: &str) {
    let mut socket = broker.connect_from(from, None);
    let body = json!({"username": "bob", "password": "wrong"}).to_string();
    let headers = [("Content-Type", "application/json")];
    socket
        .write_all(&request_bytes("POST", "/login", &headers, body.as_bytes()))
        .unwrap();
    assert_eq!(broker.request("OPTIONS", "/login", &[], b"").status, 204);
}

/// Waits, if need be, for a calendar minute with at least 30 s left: the
/// login limit counts failures per minute of the server's clock.
fn early_in_a_minute() {
    let second = || {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        now.unwrap().as_secs() % 60
    };
    while second() >= 30 {
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn parallel_wrong_passwords_cannot_overshoot_the_login_limit() {
    let broker = Broker::start(&["--login_limit=20"]);
    early_in_a_minute();
    broker.create_user("bob", "right", "t1");
    let port = broker.port;
    let threads: Vec<_> = (0..60)
        .map(|_| {
            std::thread::spawn(move || {
                let client = Client { port, tls: None };
                let body = json!({"username": "bob", "password": "wrong"});
                client.post_from("127.0.0.4", "/login", &body).status
            })
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let checked = statuses.iter().filter(|status| **status == 401).count();
    let refused = statuses.iter().filter(|status| **status == 429).count();
    eprintln!("60 parallel wrong logins, --login_limit=20: {checked} × 401, {refused} × 429");
    let cores = std::thread::available_parallelism().unwrap().get();
    assert!(checked <= 20 + cores, "{checked} checked: {statuses:?}");
    assert_eq!(checked + refused, 60, "{statuses:?}");
}

#[test]
fn a_login_abandoned_mid_check_counts_as_a_failed_one() {
    let broker = Broker::start(&["--login_limit=5"]);
    broker.create_user("bob", "right", "t1");
    early_in_a_minute();
    for _ in 0..5 {
        abandoned_login(&broker, "127.0.0.6");
    }
    let right = json!({"username": "bob", "password": "right"});
    broker
        .post_from("127.0.0.6", "/login", &right)
        .assert_error(429);
    assert_eq!(broker.post_from("127.0.0.7", "/login", &right).status, 200);
}

#[test]
fn basic_failures_count_and_the_lock_lifts_within_a_minute() {
    let broker = Broker::start(&["--login_limit=3"]);
    early_in_a_minute();
    broker.create_user("bob", "right", "t1");
    let wrong = basic("bob", "wrong");
    for _ in 0..3 {
        let headers = [("Authorization", wrong.as_str())];
        let reply = broker.request_from("127.0.0.8", "GET", "/verify", &headers, b"");
        reply.assert_error(401);
    }
    let right = json!({"username": "bob", "password": "right"});
    let locked = broker.post_from("127.0.0.8", "/login", &right);
    locked.assert_error(429);
    // The count starts over with the next minute: the owner is back in at
    // most a minute, having kept trying meanwhile.
    let started = Instant::now();
    while broker.post_from("127.0.0.8", "/login", &right).status == 429 {
        assert!(
            started.elapsed() < Duration::from_secs(61),
            "still locked after a minute"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!("the lock lifted after {:?}", started.elapsed());
}

#[test]
fn an_unknown_username_takes_as_long_as_a_wrong_password() {
    let broker = Broker::start(&["--login_limit=1000"]);
    broker.create_user("bob", "right", "t1");
    let median = |username: &str| {
        let mut times: Vec<Duration> = (0..7)
            .map(|_| {
                let body = json!({"username": username, "password": "wrong"});
                let started = Instant::now();
                broker.post("/login", &body).assert_error(401);
                started.elapsed()
            })
            .collect();
        times.sort();
        times[3]
    };
    let known = median("bob");
    let unknown = median("nobody");
    eprintln!("login with a wrong password: {known:?}; with an unknown username: {unknown:?}");
    // Both pay for one Argon2 check (tens of milliseconds); without the
    // decoy hash, an unknown name would answer in well under one.
    assert!(known > Duration::from_millis(5), "{known:?}");
    assert!(unknown * 2 > known, "unknown {unknown:?}, known {known:?}");
}

/// IPv6 addresses on the loopback device for one test, removed on drop.
struct LoopbackAddresses(Vec<&'static str>);

impl LoopbackAddresses {
    fn add(addresses: &[&'static str]) -> LoopbackAddresses {
        for address in addresses {
            let status = std::process::Command::new("ip")
                .args([
                    "-6",
                    "addr",
                    "add",
                    &format!("{address}/128"),
                    "dev",
                    "lo",
                    "nodad",
                ])
                .status()
                .unwrap();
            assert!(status.success(), "adding {address} to lo needs root");
        }
        LoopbackAddresses(addresses.to_vec())
    }
}

impl Drop for LoopbackAddresses {
    fn drop(&mut self) {
        for address in &self.0 {
            let _ = std::process::Command::new("ip")
                .args(["-6", "addr", "del", &format!("{address}/128"), "dev", "lo"])
                .status();
        }
    }
}

#[test]
fn ipv6_clients_are_served_and_limited_by_their_address() {
    let broker = Broker::start(&["--login_limit=4"]);
    early_in_a_minute();
    broker.create_user("bob", "right", "t1");
    // Served over IPv6 as over IPv4, on the same port.
    let right = json!({"username": "bob", "password": "right"});
    assert_eq!(broker.post_from("::1", "/login", &right).status, 200);
    // Each IPv6 address is counted on its own (counting a client by its
    // /64 was retired for the line budget: LOC_BUDGET.md).
    let _addresses = LoopbackAddresses::add(&["fd00:b0:0:1::2", "fd00:b0:0:1::3"]);
    let wrong = json!({"username": "bob", "password": "wrong"});
    for _ in 0..4 {
        broker
            .post_from("fd00:b0:0:1::2", "/login", &wrong)
            .assert_error(401);
    }
    broker
        .post_from("fd00:b0:0:1::2", "/login", &right)
        .assert_error(429);
    // Another address is not affected.
    assert_eq!(
        broker.post_from("fd00:b0:0:1::3", "/login", &right).status,
        200
    );
}

#[test]
fn a_stream_counts_toward_max_streams_until_its_response_has_ended() {
    let broker = Broker::start(&["--max_streams=1", "--max_body=1048576"]);
    broker.create_user("bob", "pw", "t1");
    let jwt = broker.login("bob", "pw");
    for n in 0..40 {
        broker.insert(&jwt, "big", &json!(noise(900_000, n)));
    }
    // A stream that reads nothing: its backlog fills the socket and waits.
    // It is open once its answer has begun to arrive (peeked, not read).
    let mut stalled = broker.stalled_stream(&jwt, Some("0"));
    stalled.peek(&mut [0; 1]).expect("the stream did not open");
    // A password change ends it, but its response cannot end before the
    // client reads what is in flight: it still counts.
    let change = json!({"admin_token": ADMIN, "username": "bob", "password": "new"});
    assert_eq!(broker.post("/update_user", &change).status, 200);
    let fresh = bearer(&broker.login("bob", "new"));
    broker
        .get("/sse", &[("Authorization", &fresh)])
        .assert_error(429);
    // Read, the old stream ends at once, with only what was in flight…
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut received = Vec::new();
    let mut buffer = vec![0; 1 << 16];
    while !received.ends_with(b"\r\n0\r\n\r\n") {
        let read = stalled.read(&mut buffer).expect("the stream did not end");
        assert!(read > 0, "the connection was cut, not ended");
        received.extend_from_slice(&buffer[..read]);
    }
    eprintln!(
        "the ended stream sent {} bytes after the change",
        received.len()
    );
    assert!(received.len() < 10_000_000, "{} bytes", received.len());
    // …and then its place is free.
    let started = Instant::now();
    while broker.sse_status(&[("Authorization", &fresh)]) != 200 {
        assert!(started.elapsed() < Duration::from_secs(3), "still counted");
        std::thread::sleep(Duration::from_millis(100));
    }
}
