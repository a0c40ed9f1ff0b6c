//! The event stream: sync on connect, live fan-out, replay, wire format,
//! tenant isolation, and every way the server ends a stream.

mod common;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

fn user(broker: &Broker, name: &str, tenant: &str) -> String {
    broker.create_user(name, "pw", tenant);
    broker.login(name, "pw")
}

#[test]
fn connect_syncs_the_latest_event_of_each_name_then_goes_live() {
    let broker = Broker::start(&[]);
    let jwt = user(&broker, "bob", "t1");
    broker.insert(&jwt, "profile", &json!({"v": 1}));
    broker.insert(&jwt, "chat", &json!({"v": 2}));
    broker.insert(&jwt, "profile", &json!({"v": 3}));
    let mut stream = broker.sse(&[("Authorization", &bearer(&jwt))]);
    let synced = stream.events(2);
    assert_eq!(
        synced,
        [
            Event {
                id: 2,
                event: "chat".into(),
                data: json!({"v": 2})
            },
            Event {
                id: 3,
                event: "profile".into(),
                data: json!({"v": 3})
            },
        ]
    );
    broker.insert(&jwt, "chat", &json!("live"));
    assert_eq!(
        stream.events(3)[2],
        Event {
            id: 4,
            event: "chat".into(),
            data: json!("live")
        }
    );
}

#[test]
fn the_wire_format_is_exact_ascii_with_escaped_unicode() {
    let broker = Broker::start(&[]);
    let jwt = user(&broker, "bob", "t1");
    let mut stream = broker.sse(&[("Authorization", &bearer(&jwt))]);
    assert!(
        stream.quiet_for(Duration::from_millis(200)),
        "no frames for an empty tenant"
    );
    let data = json!({"name": "Zoë", "emoji": "😀", "n": [1, 2.5, null, true], "q": "a\"b\\c"});
    broker.insert(&jwt, "user.update", &data);
    stream.events(1);
    let expected = "id:1\nevent:user.update\ndata:{\"emoji\":\"\\ud83d\\ude00\",\"n\":[1,2.5,null,true],\"name\":\"Zo\\u00eb\",\"q\":\"a\\\"b\\\\c\"}\n\n";
    assert_eq!(String::from_utf8(stream.body.clone()).unwrap(), expected);
    assert!(stream.body.is_ascii());
}

#[test]
fn events_reach_every_stream_of_the_tenant_and_no_other() {
    let broker = Broker::start(&[]);
    let alice = user(&broker, "alice", "t1");
    let bob = user(&broker, "bob", "t1");
    let mallory = user(&broker, "mallory", "t2");
    let mut alice_stream = broker.sse(&[("Authorization", &bearer(&alice))]);
    let mut bob_stream = broker.sse(&[("Authorization", &basic("bob", "pw"))]);
    let mut mallory_stream = broker.sse(&[("Authorization", &bearer(&mallory))]);
    broker.insert(&bob, "secret", &json!("for t1"));
    broker.insert(&mallory, "other", &json!("for t2"));
    assert_eq!(alice_stream.events(1)[0].data, json!("for t1"));
    assert_eq!(bob_stream.events(1)[0].data, json!("for t1"));
    assert_eq!(
        mallory_stream.events(1),
        [Event {
            id: 1,
            event: "other".into(),
            data: json!("for t2")
        }]
    );
    assert!(mallory_stream.quiet_for(Duration::from_millis(300)));
    assert!(alice_stream.quiet_for(Duration::from_millis(100)));
    // Each tenant counts its own ids.
    assert_eq!(broker.insert(&alice, "x", &json!(0)), 2);
}

#[test]
fn last_event_id_replays_everything_after_it_then_goes_live() {
    let broker = Broker::start(&[]);
    let jwt = user(&broker, "bob", "t1");
    for n in 1..=5 {
        broker.insert(&jwt, "same", &json!(n));
    }
    let mut stream = broker.sse(&[("Authorization", &bearer(&jwt)), ("Last-Event-ID", "2")]);
    let replayed: Vec<u64> = stream.events(3).iter().map(|event| event.id).collect();
    assert_eq!(replayed, vec![3, 4, 5]);
    broker.insert(&jwt, "same", &json!(6));
    assert_eq!(stream.events(4)[3].id, 6);
    let mut from_zero = broker.sse(&[("Authorization", &bearer(&jwt)), ("Last-Event-ID", "0")]);
    assert_eq!(from_zero.events(6).len(), 6);
    // A client ahead of the server (say, after a restore from a backup) gets
    // the sync: the latest event of each name, here the one named "same".
    let mut ahead = broker.sse(&[("Authorization", &bearer(&jwt)), ("Last-Event-ID", "99")]);
    assert_eq!(ahead.events(1)[0].id, 6);
    assert!(ahead.quiet_for(Duration::from_millis(200)));
    // The newest id: nothing to replay, then live.
    let mut newest = broker.sse(&[("Authorization", &bearer(&jwt)), ("Last-Event-ID", "6")]);
    assert!(newest.quiet_for(Duration::from_millis(200)));
    // The largest id a client can send is no overflow, only the sync.
    let mut largest = broker.sse(&[
        ("Authorization", &bearer(&jwt)),
        ("Last-Event-ID", "18446744073709551615"),
    ]);
    assert_eq!(largest.events(1)[0].id, 6);
    // A header that is not a number is no position: the sync, as without one
    // (its 400 was retired for the line budget).
    let mut garbled = broker.sse(&[("Authorization", &bearer(&jwt)), ("Last-Event-ID", "abc")]);
    assert_eq!(garbled.events(1)[0].id, 6);
    assert!(garbled.quiet_for(Duration::from_millis(200)));
}

#[test]
fn revocation_and_credential_changes_end_open_streams_cleanly() {
    let broker = Broker::start(&[]);
    let jwt = user(&broker, "bob", "t1");
    let other = user(&broker, "carol", "t1");
    for change in [
        json!({"path": "/revoke_user"}),
        json!({"path": "/update_user", "password": "new"}),
        json!({"path": "/update_user", "tenant_name": "t9"}),
    ] {
        let jwt = if change["path"] == "/revoke_user" {
            jwt.clone()
        } else {
            broker.login("bob", "pw")
        };
        let mut stream = broker.sse(&[("Authorization", &bearer(&jwt))]);
        let mut bystander = broker.sse(&[("Authorization", &bearer(&other))]);
        let mut body = change.clone();
        body.as_object_mut().unwrap().remove("path");
        body["admin_token"] = json!(ADMIN);
        body["username"] = json!("bob");
        let started = Instant::now();
        assert_eq!(
            broker.post(change["path"].as_str().unwrap(), &body).status,
            200
        );
        stream.wait_end(Duration::from_secs(2));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{change}: took {:?}",
            started.elapsed()
        );
        assert!(
            bystander.quiet_for(Duration::from_millis(100)),
            "other users keep streaming"
        );
        // Put bob back as he was for the next round.
        let restore =
            json!({"admin_token": ADMIN, "username": "bob", "password": "pw", "tenant_name": "t1"});
        broker.admin("/unrevoke_user", "bob");
        assert_eq!(broker.post("/update_user", &restore).status, 200);
    }
}

#[test]
fn a_stream_ends_when_its_jwt_expires() {
    let broker = Broker::start(&["--jwt_expiry=2"]);
    let jwt = user(&broker, "bob", "t1");
    let started = Instant::now();
    let mut jwt_stream = broker.sse(&[("Authorization", &bearer(&jwt))]);
    let mut basic_stream = broker.sse(&[("Authorization", &basic("bob", "pw"))]);
    jwt_stream.wait_end(Duration::from_secs(5));
    let lasted = started.elapsed();
    assert!(
        lasted >= Duration::from_millis(900) && lasted < Duration::from_secs(4),
        "{lasted:?}"
    );
    assert!(
        basic_stream.quiet_for(Duration::from_millis(500)),
        "Basic streams have no expiry"
    );
}

/// When each keep-alive comment arrived, over `span` of an idle stream.
fn comments_within(stream: &mut Sse, span: Duration) -> Vec<Duration> {
    let started = Instant::now();
    let mut times = Vec::new();
    while let Some(left) = span.checked_sub(started.elapsed()) {
        if stream.quiet_for(left) {
            break;
        }
        stream.read_chunk();
        times.push(started.elapsed());
    }
    times
}

#[test]
fn keep_alive_comments_arrive_at_the_interval() {
    // The default (30 s), 2 s, and 0 (none), side by side for 32 s.
    let runs: Vec<_> = [None, Some("--keep_alive=2"), Some("--keep_alive=0")]
        .into_iter()
        .map(|flag| {
            std::thread::spawn(move || {
                let broker = Broker::start(&flag.into_iter().collect::<Vec<_>>());
                let jwt = user(&broker, "bob", "t1");
                let mut stream = broker.sse(&[("Authorization", &bearer(&jwt))]);
                let times = comments_within(&mut stream, Duration::from_secs(32));
                // A comment line alone, with no blank line after it: no
                // SSE parser dispatches it as a message.
                assert!(stream.body.chunks(2).all(|comment| comment == b":\n"));
                times
            })
        })
        .collect();
    let runs: Vec<_> = runs.into_iter().map(|run| run.join().unwrap()).collect();
    let [default, two, none] = &runs[..] else {
        unreachable!()
    };
    eprintln!("keep-alive comments: default {default:?}; 2 s {two:?}; 0 {none:?}");
    // The first comment comes on the server's 30th tick, 30 s after it
    // started: the stream opened a moment later, after a login.
    assert_eq!(default.len(), 1, "{default:?}");
    assert!(default[0] > Duration::from_secs(25), "{default:?}");
    assert!((14..=17).contains(&two.len()), "{two:?}");
    for pair in two.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap > Duration::from_millis(1500) && gap < Duration::from_millis(2500));
    }
    assert!(none.is_empty(), "{none:?}");
}

#[test]
fn ending_a_stream_ends_its_backlog_too() {
    let broker = Broker::start(&["--max_body=1048576"]);
    let jwt = user(&broker, "bob", "t1");
    for _ in 0..40 {
        broker.insert(&jwt, "big", &json!("x".repeat(900_000)));
    }
    // A slow reader replaying 36 MB from the start.
    let auth = bearer(&jwt);
    let mut stream = broker.sse_small(1 << 16, &[("Authorization", &auth), ("Last-Event-ID", "0")]);
    std::thread::sleep(Duration::from_secs(1));
    stream.read_chunk();
    let before = stream.body.len();
    assert_eq!(broker.admin("/revoke_user", "bob").status, 200);
    let revoked = Instant::now();
    // Read as fast as the client can: only what was already in flight
    // arrives, then the end.
    stream.wait_end(Duration::from_secs(5));
    let after = stream.body.len() - before;
    eprintln!(
        "{before} bytes before the revocation, {after} after it, ended in {:?}",
        revoked.elapsed()
    );
    assert!(after < 8_000_000, "{after} bytes after the revocation");
    assert!(revoked.elapsed() < Duration::from_secs(2));
}

#[test]
fn tenants_whose_names_are_prefixes_of_each_other_stay_apart() {
    let broker = Broker::start(&[]);
    let short = user(&broker, "bob", "t1");
    let long = user(&broker, "carol", "t10");
    broker.insert(&short, "a", &json!("t1"));
    broker.insert(&long, "a", &json!("t10"));
    broker.insert(&long, "b", &json!("t10"));
    let events = |jwt: &str, last_event_id: Option<&str>, count: usize| {
        let auth = bearer(jwt);
        let mut headers = vec![("Authorization", auth.as_str())];
        headers.extend(last_event_id.map(|id| ("Last-Event-ID", id)));
        let mut stream = broker.sse(&headers);
        let events: Vec<(u64, String, serde_json::Value)> = stream
            .events(count)
            .iter()
            .map(|event| (event.id, event.event.clone(), event.data.clone()))
            .collect();
        assert!(
            stream.quiet_for(Duration::from_millis(200)),
            "more than {count}"
        );
        events
    };
    let t1 = vec![(1, "a".to_string(), json!("t1"))];
    let t10 = vec![
        (1, "a".to_string(), json!("t10")),
        (2, "b".to_string(), json!("t10")),
    ];
    // The sync, and a replay from the start, of each.
    assert_eq!(events(&short, None, 1), t1);
    assert_eq!(events(&short, Some("0"), 1), t1);
    assert_eq!(events(&long, None, 2), t10);
    assert_eq!(events(&long, Some("0"), 2), t10);
    // Live: t10's events never reach t1.
    let mut stream = broker.sse(&[("Authorization", &bearer(&short))]);
    stream.events(1);
    broker.insert(&long, "a", &json!("t10 live"));
    assert!(stream.quiet_for(Duration::from_millis(300)));
}

#[test]
fn a_subscriber_that_stops_reading_is_cut_off_without_slowing_others() {
    let broker = Broker::start(&["--max_body=1048576"]);
    let jwt = user(&broker, "bob", "t1");
    let mut stalled = broker.sse(&[("Authorization", &bearer(&jwt))]);
    let mut reader = broker.sse(&[("Authorization", &bearer(&jwt))]);
    let payload = json!("x".repeat(64 * 1024));
    let total = 600;
    let (sender, received) = std::sync::mpsc::channel();
    let reading = std::thread::spawn(move || {
        let count = reader.events(total).len();
        sender.send(count).unwrap();
    });
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for _ in 0..total {
        let insert = Instant::now();
        broker.insert(&jwt, "bulk", &payload);
        slowest = slowest.max(insert.elapsed());
    }
    let inserting = started.elapsed();
    // No insert waits for the stalled stream: publishing never blocks.
    assert!(
        slowest < Duration::from_secs(1),
        "an insert took {slowest:?}"
    );
    assert_eq!(
        received.recv_timeout(Duration::from_secs(60)).unwrap(),
        total
    );
    reading.join().unwrap();
    // The stalled stream got a prefix, then a clean end: it resumes with Last-Event-ID.
    stalled.wait_end(Duration::from_secs(30));
    let got = parse_frames(&stalled.body);
    assert!(
        got.len() < total,
        "the stalled stream was cut off ({} of {total})",
        got.len()
    );
    assert!(
        got.iter()
            .enumerate()
            .all(|(index, event)| event.id == index as u64 + 1)
    );
    eprintln!(
        "{total} inserts of 64 KiB with a stalled subscriber took {inserting:?}, the slowest {slowest:?}"
    );
}

#[test]
fn closed_streams_do_not_disturb_later_inserts() {
    // More streams than the default --max_streams (16) are opened and
    // dropped, one after the other: room for all of them, so the test does
    // not depend on how fast the server notices each close.
    let broker = Broker::start(&["--max_streams=100"]);
    let jwt = user(&broker, "bob", "t1");
    for _ in 0..50 {
        drop(broker.sse(&[("Authorization", &bearer(&jwt))]));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let mut stream = broker.sse(&[("Authorization", &bearer(&jwt))]);
    broker.insert(&jwt, "after", &json!(1));
    assert_eq!(stream.events(1)[0].id, 1);
}
