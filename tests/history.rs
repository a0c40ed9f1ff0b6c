//! Bounded history (`--history`) and many tenants: disk use stays bounded,
//! the sync stays complete, and 10 000 tenants shut down and start fast.

mod common;
use common::*;
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

fn ids(events: &[Event]) -> Vec<(u64, &str)> {
    events
        .iter()
        .map(|event| (event.id, event.event.as_str()))
        .collect()
}

/// The frames a stream starts with (until `count` have arrived).
fn backlog(
    broker: &Broker,
    jwt: &str,
    last_event_id: Option<&str>,
    count: usize,
) -> Vec<(u64, String)> {
    let auth = bearer(jwt);
    let mut headers = vec![("Authorization", auth.as_str())];
    headers.extend(last_event_id.map(|id| ("Last-Event-ID", id)));
    let mut stream = broker.sse(&headers);
    let events = ids(stream.events(count))
        .iter()
        .map(|(id, name)| (*id, name.to_string()))
        .collect();
    assert!(
        stream.quiet_for(Duration::from_millis(200)),
        "more frames than expected"
    );
    events
}

fn owned(pairs: &[(u64, &str)]) -> Vec<(u64, String)> {
    pairs
        .iter()
        .map(|(id, name)| (*id, name.to_string()))
        .collect()
}

#[test]
fn history_keeps_the_newest_events_and_the_latest_of_every_name() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let mut broker = Broker::start_on(&db, &["--history=5"]);
    broker.create_user("bob", "pw", "t1");
    let jwt = broker.login("bob", "pw");
    broker.insert(&jwt, "a", &json!(1));
    broker.insert(&jwt, "b", &json!(2));
    for n in 3..=12 {
        broker.insert(&jwt, "c", &json!(n));
    }
    let sync = owned(&[(1, "a"), (2, "b"), (12, "c")]);
    for round in 0..2 {
        // A fresh connect syncs the latest of every name, however old.
        assert_eq!(backlog(&broker, &jwt, None, 3), sync, "round {round}");
        // Within the newest five, Last-Event-ID replays exactly what followed.
        let replay = owned(&[(8, "c"), (9, "c"), (10, "c"), (11, "c"), (12, "c")]);
        assert_eq!(backlog(&broker, &jwt, Some("7"), 5), replay);
        assert_eq!(
            backlog(&broker, &jwt, Some("10"), 2),
            owned(&[(11, "c"), (12, "c")])
        );
        // Older than what is kept: the sync, so the client is whole again.
        assert_eq!(backlog(&broker, &jwt, Some("6"), 3), sync);
        assert_eq!(backlog(&broker, &jwt, Some("0"), 3), sync);
        // The same after a restart.
        assert_eq!(broker.stop(), Some(0));
        broker = Broker::start_on(&db, &["--history=5"]);
    }
    // A superseded latest that had been kept for its name goes too.
    broker.insert(&jwt, "a", &json!(13));
    assert_eq!(
        backlog(&broker, &jwt, None, 3),
        owned(&[(2, "b"), (12, "c"), (13, "a")])
    );
}

#[test]
fn events_deleted_under_a_smaller_history_are_never_replayed_around() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let broker = Broker::start_on(&db, &["--history=3"]);
    broker.create_user("bob", "pw", "t1");
    let jwt = broker.login("bob", "pw");
    for n in 1..=10 {
        broker.insert(&jwt, ["a", "b"][n % 2], &json!(n));
    }
    assert_eq!(broker.stop(), Some(0));
    // A larger --history keeps more from now on, but events 1-7 are gone:
    // a client that saw event 2 must not get 8, 9, 10 as if nothing was
    // missing in between. It gets the sync, which makes it whole again.
    let broker = Broker::start_on(&db, &["--history=10000"]);
    let sync = owned(&[(9, "b"), (10, "a")]);
    assert_eq!(backlog(&broker, &jwt, Some("2"), 2), sync);
    assert_eq!(backlog(&broker, &jwt, Some("6"), 2), sync);
    // Event 8 is kept: what follows 7 is whole, and is replayed.
    let replay = owned(&[(8, "a"), (9, "b"), (10, "a")]);
    assert_eq!(backlog(&broker, &jwt, Some("7"), 3), replay);
}

#[test]
fn a_restart_with_a_smaller_history_deletes_the_excess() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let broker = Broker::start_on(&db, &["--history=0"]);
    broker.create_user("bob", "pw", "t1");
    let jwt = broker.login("bob", "pw");
    for n in 1..=10 {
        broker.insert(&jwt, ["a", "b"][n % 2], &json!(n));
    }
    assert_eq!(broker.stop(), Some(0));
    // Under --history=3 the next insert leaves 9, 10 and 11 in the log, and
    // deletes everything older that the first run kept.
    let broker = Broker::start_on(&db, &["--history=3"]);
    assert_eq!(broker.insert(&jwt, "a", &json!(11)), 11);
    assert_eq!(broker.stop(), Some(0));
    let broker = Broker::start_on(&db, &["--history=0"]);
    let sync = owned(&[(9, "b"), (11, "a")]);
    assert_eq!(backlog(&broker, &jwt, Some("0"), 2), sync);
    assert_eq!(backlog(&broker, &jwt, Some("7"), 2), sync);
    let replay = owned(&[(9, "b"), (10, "a"), (11, "a")]);
    assert_eq!(backlog(&broker, &jwt, Some("8"), 3), replay);
}

/// Bytes a directory takes on disk (allocated, so the journal's sparse
/// preallocation does not count).
fn size_of(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(path).unwrap().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            size_of(&entry.path())
        } else {
            meta.blocks() * 512
        };
    }
    total
}

/// The size of the database's tables (all but fjall's journal, which never
/// exceeds 64 MiB) after `count` inserts of 10 KB and a clean stop.
fn disk_use(history: &str, count: u64) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let broker = Broker::start_on(&db, &[&format!("--history={history}")]);
    broker.create_user("bob", "pw", "t1");
    let jwt = broker.login("bob", "pw");
    for n in 0..count {
        broker.insert(&jwt, &format!("name{}", n % 10), &json!(noise(10_000, n)));
    }
    assert_eq!(broker.stop(), Some(0));
    eprintln!("--history={history}: {} bytes in all", size_of(&db));
    size_of(&db.join("keyspaces"))
}

#[test]
fn disk_use_is_bounded_by_history_not_by_inserts() {
    let bounded = disk_use("50", 4000);
    let unbounded = disk_use("0", 4000);
    eprintln!(
        "4000 inserts of 10 KB: tables of {bounded} bytes with --history=50, {unbounded} with 0"
    );
    // 50 events and 10 latest of 10 KB is well under 4 MB, whatever was inserted.
    assert!(unbounded > 30_000_000, "{unbounded}");
    assert!(bounded < 4_000_000, "{bounded}");
}

#[test]
fn ten_thousand_tenants_stay_small_and_quick_to_stop_and_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let broker = Broker::start_on(&db, &[]);
    broker.create_user("mover", "pw", "t0");
    let jwt = broker.login("mover", "pw");
    let port = broker.port;
    let started = Instant::now();
    // Four clients, each moving its own user through its share of tenants
    // and inserting one event in each.
    let workers: Vec<_> = (0..4)
        .map(|worker| {
            let client = Client { port, tls: None };
            client.create_user(&format!("mover{worker}"), "pw", "t0");
            let jwt = client.login(&format!("mover{worker}"), "pw");
            std::thread::spawn(move || {
                for tenant in (worker..10_000).step_by(4) {
                    let body = json!({"admin_token": ADMIN, "username": format!("mover{worker}"), "tenant_name": format!("tenant{tenant}")});
                    assert_eq!(client.post("/update_user", &body).status, 200);
                    client.insert(&jwt, "hello", &json!({"tenant": tenant}));
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    eprintln!("10 000 tenants written in {:?}", started.elapsed());
    let stopped = broker.stop_within(Duration::from_secs(10));
    let (stopped, _) = stopped.expect("still running 10 s after SIGTERM");
    let size = size_of(&db);
    eprintln!("clean shutdown took {stopped:?}; database {size} bytes");
    assert!(
        stopped < Duration::from_secs(5),
        "shutdown took {stopped:?}"
    );
    assert!(size < 200_000_000, "database is {size} bytes");
    let started = Instant::now();
    let broker = Broker::start_on(&db, &[]);
    assert_eq!(broker.get("/", &[]).status, 200);
    let serving = started.elapsed();
    eprintln!("restart to serving took {serving:?}");
    assert!(serving < Duration::from_secs(2));
    // And the data is all there: a user of the last tenant syncs its event.
    let body = json!({"admin_token": ADMIN, "username": "mover", "tenant_name": "tenant9999"});
    assert_eq!(broker.post("/update_user", &body).status, 200);
    let mut stream = broker.sse(&[("Authorization", &bearer(&jwt))]);
    assert_eq!(stream.events(1)[0].data, json!({"tenant": 9999}));
}
