//! What bounds a tenant's disk use, and what health says when the disk is
//! full anyway: a failed write turns `GET /` to 503 at once; `--max_names`
//! caps a tenant's event names (and holds across restarts); `--max_body`
//! caps every stored frame, as escaped for the wire. So one tenant inserting
//! big events under ever new names cannot fill the disk for the others.

mod common;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

/// `POST /insert` of a body as written; `None` if the broker could not be
/// reached.
fn post_insert(client: &Client, jwt: &str, body: &str) -> Option<Reply> {
    let auth = bearer(jwt);
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    client.try_request("POST", "/insert", &headers, body.as_bytes())
}

/// `POST /insert` of `{"event": name, "data": data}`, whatever it answers;
/// `None` if the broker could not be reached.
fn try_insert(client: &Client, jwt: &str, name: &str, data: &serde_json::Value) -> Option<Reply> {
    let body = json!({"event": name, "data": data}).to_string();
    post_insert(client, jwt, &body)
}

/// As `try_insert`, for a broker that is there.
fn insert_reply(client: &Client, jwt: &str, name: &str, data: &serde_json::Value) -> Reply {
    try_insert(client, jwt, name, data).expect("the broker is not there")
}

/// `GET /`'s status; 0 if the broker could not be reached.
fn health(client: &Client) -> u16 {
    client
        .try_request("GET", "/", &[], b"")
        .map_or(0, |reply| reply.status)
}

/// The `(id, event name)` of the frames a fresh stream syncs, read until
/// `count` have arrived and nothing more follows.
fn sync(broker: &Broker, jwt: &str, count: usize) -> Vec<(u64, String)> {
    let mut stream = broker.sse(&[("Authorization", &bearer(jwt))]);
    let frames = stream.events(count);
    let frames = frames.iter().map(|frame| (frame.id, frame.event.clone()));
    let frames = frames.collect();
    assert!(
        stream.quiet_for(Duration::from_millis(500)),
        "more than {count} frames in the sync"
    );
    frames
}

#[test]
fn health_says_503_the_moment_a_write_fails_on_a_full_disk() {
    let disk = Tmpfs::mount("32m");
    let db = disk.path().join("db");
    let broker = Broker::start_on(&db, &["--max_body=1048576", "--history=0"]);
    broker.create_user("bob", "pw", "t1");
    let jwt = broker.login("bob", "pw");
    assert_eq!(health(&broker), 200);
    // Incompressible megabytes under a few names, all kept (--history=0),
    // until the disk is full.
    for n in 0..200 {
        let name = format!("name{}", n % 4);
        let reply = insert_reply(&broker, &jwt, &name, &json!(noise(1_000_000, n)));
        if reply.status == 200 {
            continue;
        }
        reply.assert_error(503);
        // Asked at once: no pause between the refusal and the question.
        let health = health(&broker);
        eprintln!("insert {n} answered 503; GET / then answered {health}");
        assert_eq!(
            health, 503,
            "health said {health} right after a write failed"
        );
        return;
    }
    panic!("200 inserts of 1 MB fit on a 32 MiB disk");
}

#[test]
fn one_tenant_inserting_megabytes_under_new_names_for_40_s_cannot_fill_the_disk() {
    const DISK: u64 = 300 << 20;
    let disk = Tmpfs::mount("300m");
    let db = disk.path().join("db");
    let limits = ["--max_names=30", "--history=30", "--max_body=1048576"];
    let broker = Broker::start_on(&db, &limits);
    broker.create_user("alice", "pw", "tenant_a");
    broker.create_user("bob", "pw", "tenant_b");
    let alice = broker.login("alice", "pw");
    let bob = broker.login("bob", "pw");
    // Incompressible data a bit under a megabyte, so its frame fits
    // --max_body; made once, as JSON text (making it takes longer than
    // sending it). An accepted frame takes about twice its size on disk
    // (the log and the latest set, each journalled first): unbounded, a
    // disk's worth offered would fill it nearly twice over.
    let data: Vec<String> = (0..8)
        .map(|n| json!(noise(1_000_000, n)).to_string())
        .collect();
    // Alice's statuses in order, Bob's and health's that were not 200, the
    // disk's fullest moment, and what Alice sent.
    let mut alice_statuses: Vec<u16> = Vec::new();
    let mut others_refused: Vec<String> = Vec::new();
    let mut peak = disk.used();
    let mut offered = 0;
    let started = Instant::now();
    let mut n = 0;
    // For 40 s, and on (up to 100 s) until she has offered a disk's worth.
    let limit = |elapsed: Duration, offered: u64| {
        elapsed < Duration::from_secs(40) || offered < DISK && elapsed < Duration::from_secs(100)
    };
    while limit(started.elapsed(), offered) {
        let body = format!(r#"{{"event":"name{n}","data":{}}}"#, data[n % data.len()]);
        offered += body.len() as u64;
        let reply = post_insert(&broker, &alice, &body);
        let status = reply.as_ref().map_or(0, |reply| reply.status);
        if status == 400 {
            reply.unwrap().assert_error(400);
        }
        alice_statuses.push(status);
        peak = peak.max(disk.used());
        let bob_status = try_insert(&broker, &bob, "tick", &json!(n)).map_or(0, |r| r.status);
        if bob_status != 200 {
            others_refused.push(format!("Bob's insert {n}: {bob_status}"));
        }
        let health = health(&broker);
        if health != 200 {
            others_refused.push(format!("GET / after insert {n}: {health}"));
        }
        n += 1;
    }
    let count = |status: u16| alice_statuses.iter().filter(|s| **s == status).count();
    eprintln!(
        "in {:?} Alice offered {} MB in {n} inserts: {} accepted, {} refused with 400, {} with 503; the disk peaked at {} of {} MiB; Bob's inserts and GET / failed {} times",
        started.elapsed(),
        offered / 1_000_000,
        count(200),
        count(400),
        count(503),
        peak >> 20,
        DISK >> 20,
        others_refused.len()
    );
    // The outcome: the disk never filled, so nobody was ever told 503…
    assert_eq!(count(503), 0, "Alice's inserts filled the disk");
    assert!(others_refused.is_empty(), "{others_refused:?}");
    // …with more offered than it holds, and a quarter of it always free.
    assert!(offered > DISK, "only {offered} bytes were offered");
    assert!(peak < DISK / 4 * 3, "the disk reached {} MiB", peak >> 20);
    // Alice's first 30 names went in, every later one was refused.
    let expected: Vec<u16> = (0..n).map(|n| if n < 30 { 200 } else { 400 }).collect();
    assert_eq!(alice_statuses, expected);
    // Bob and health are fine at the end, and Alice's stream syncs the
    // latest of her 30 names.
    assert_eq!(health(&broker), 200);
    assert_eq!(
        insert_reply(&broker, &bob, "tick", &json!("end")).status,
        200
    );
    let names: Vec<(u64, String)> = (1..=30).map(|id| (id, format!("name{}", id - 1))).collect();
    assert_eq!(sync(&broker, &alice, 30), names);
}

#[test]
fn max_names_refuses_a_new_name_keeps_old_ones_and_holds_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let broker = Broker::start_on(&db, &["--max_names=3"]);
    broker.create_user("bob", "pw", "t1");
    let jwt = broker.login("bob", "pw");
    assert_eq!(broker.insert(&jwt, "a", &json!(1)), 1);
    assert_eq!(broker.insert(&jwt, "b", &json!(2)), 2);
    assert_eq!(broker.insert(&jwt, "c", &json!(3)), 3);
    insert_reply(&broker, &jwt, "d", &json!(4)).assert_error(400);
    // An existing name goes on, and the refusal took no id.
    assert_eq!(broker.insert(&jwt, "c", &json!(5)), 4);
    // After a restart the names already there still count.
    assert_eq!(broker.stop(), Some(0));
    let broker = Broker::start_on(&db, &["--max_names=3"]);
    let jwt = broker.login("bob", "pw");
    insert_reply(&broker, &jwt, "d", &json!(6)).assert_error(400);
    assert_eq!(broker.insert(&jwt, "a", &json!(7)), 5);
    // A larger limit lets the new name in.
    assert_eq!(broker.stop(), Some(0));
    let broker = Broker::start_on(&db, &["--max_names=4"]);
    let jwt = broker.login("bob", "pw");
    assert_eq!(broker.insert(&jwt, "d", &json!(8)), 6);
    let names = [(2, "b"), (4, "c"), (5, "a"), (6, "d")];
    let names: Vec<(u64, String)> = names.map(|(id, name)| (id, name.to_string())).into();
    assert_eq!(sync(&broker, &jwt, 4), names);
}

#[test]
fn a_frame_over_max_body_once_escaped_is_refused_and_not_stored() {
    let broker = Broker::start(&["--max_body=4096"]);
    broker.create_user("bob", "pw", "t1");
    let jwt = broker.login("bob", "pw");
    assert_eq!(broker.insert(&jwt, "before", &json!("small")), 1);
    // 3 KB of UTF-8, 6 KB once every '€' is "\u20ac".
    let euros = json!("€".repeat(1000));
    let body = json!({"event": "euros", "data": euros}).to_string();
    assert!(body.len() < 4096, "the body itself fits: {}", body.len());
    insert_reply(&broker, &jwt, "euros", &euros).assert_error(400);
    // At the edge: a frame of exactly --max_body bytes is stored, one byte
    // more is not (one '€' in the data, so the body is the shorter).
    let data = |length: usize| format!("€{}", "x".repeat(length));
    let frame = |length: usize| {
        format!(
            "id:2\nevent:edge\ndata:\"\\u20ac{}\"\n\n",
            "x".repeat(length)
        )
    };
    let edge = (0..4096)
        .find(|length| frame(*length).len() == 4096)
        .unwrap();
    insert_reply(&broker, &jwt, "edge", &json!(data(edge + 1))).assert_error(400);
    // Nothing refused took an id or reached the stream.
    assert_eq!(broker.insert(&jwt, "edge", &json!(data(edge))), 2);
    let names = [(1, "before"), (2, "edge")];
    let names: Vec<(u64, String)> = names.map(|(id, name)| (id, name.to_string())).into();
    assert_eq!(sync(&broker, &jwt, 2), names);
}
