//! Backup and restore: `scripts/backup.sh` on a broker that keeps taking
//! inserts, restored into a fresh `--db`.

mod common;
use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every broker of this test keeps every event (`--history=0`): however
/// many inserts a machine acknowledges in the time the test gives it, event
/// 1 is never trimmed, so a replay from `Last-Event-ID: 0` holds them all.
const KEEP_ALL: &[&str] = &["--history=0"];

/// Plays systemd for the backup script: its stop and start commands touch
/// files in `control`, and this thread stops (SIGTERM, waiting for the exit)
/// and starts the broker on the same database and port.
fn service(db: PathBuf, port: u16, control: PathBuf, done: Arc<AtomicBool>) {
    let mut broker = Some(Broker::start_at(&db, port, KEEP_ALL));
    while !done.load(SeqCst) {
        if std::fs::remove_file(control.join("stop")).is_ok() {
            let code = broker.take().expect("running").stop();
            assert_eq!(code, Some(0), "a clean stop");
            std::fs::write(control.join("stopped"), "").unwrap();
        }
        if std::fs::remove_file(control.join("start")).is_ok() {
            broker = Some(Broker::start_at(&db, port, KEEP_ALL));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if let Some(broker) = broker {
        assert_eq!(broker.stop(), Some(0));
    }
}

/// Every record of the users keyspace, as stored.
fn users_of(db: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let database = fjall::Database::builder(db).open().unwrap();
    let users = database
        .keyspace("users", fjall::KeyspaceCreateOptions::default)
        .unwrap();
    users
        .iter()
        .map(|entry| {
            let (key, value) = entry.into_inner().unwrap();
            (key.to_vec(), value.to_vec())
        })
        .collect()
}

#[test]
fn a_backup_taken_under_load_restores_every_acknowledged_insert_and_every_user() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let control = dir.path().join("control");
    std::fs::create_dir(&control).unwrap();
    let port = free_port();
    let done = Arc::new(AtomicBool::new(false));
    let manager = {
        let (db, control, done) = (db.clone(), control.clone(), done.clone());
        std::thread::spawn(move || service(db, port, control, done))
    };
    let client = Client { port, tls: None };
    let deadline = Instant::now() + Duration::from_secs(20);
    while client
        .try_request("GET", "/", &[], b"")
        .is_none_or(|reply| reply.status != 200)
    {
        assert!(Instant::now() < deadline, "the broker did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Users of every kind: two tenants, one revoked, one with email and data.
    client.create_user("alice", "pw-a", "t1");
    client.create_user("bob", "pw-b", "t2");
    let carol = json!({"username": "carol", "password": "pw-c", "admin_token": ADMIN,
        "tenant_name": "t1", "email": "carol@example.com", "data": {"role": "ops"}});
    assert_eq!(client.post("/create_user", &carol).status, 200);
    assert_eq!(client.admin("/revoke_user", "bob").status, 200);
    let jwt = client.login("alice", "pw-a");
    // Inserts keep coming while the backup runs; each acknowledged one is
    // noted with its id and when it was acknowledged.
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let inserting = {
        let (acknowledged, done, jwt) = (acknowledged.clone(), done.clone(), jwt.clone());
        std::thread::spawn(move || {
            let client = Client { port, tls: None };
            let auth = bearer(&jwt);
            let headers = [("Authorization", auth.as_str())];
            for n in 0u64.. {
                if done.load(SeqCst) {
                    break;
                }
                let body = json!({"event": "count", "data": n}).to_string();
                let reply = client.try_request("POST", "/insert", &headers, body.as_bytes());
                if let Some(reply) = reply.filter(|reply| reply.status == 200) {
                    let id = reply.json()["id"].as_u64().unwrap();
                    acknowledged.lock().unwrap().push((id, n, Instant::now()));
                }
            }
        })
    };
    // Enough acknowledged before the backup to be worth checking, however
    // fast or slow the machine is.
    let acknowledged_count = || acknowledged.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acknowledged_count() < 200 {
        assert!(
            Instant::now() < deadline,
            "{} inserts in 30 s",
            acknowledged_count()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let began = Instant::now();
    let archive = dir.path().join("backup.tar.gz");
    let stop = format!(
        "touch {0}/stop; while [ ! -e {0}/stopped ]; do sleep 0.01; done; rm {0}/stopped",
        control.display()
    );
    let start = format!("touch {}/start", control.display());
    // Whatever the umask of whoever runs it, the archive is private.
    unsafe { libc::umask(0o022) };
    let output = std::process::Command::new("scripts/backup.sh")
        .arg(&archive)
        .env("BROKER_DB", &db)
        .env("BROKER_STOP", &stop)
        .env("BROKER_START", &start)
        .env("BROKER_URL", format!("http://127.0.0.1:{port}/"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stderr).to_string();
    eprint!("{report}");
    assert!(output.status.success(), "{report}");
    assert!(report.contains("Broker was down"), "{report}");
    // It holds password hashes: private to its owner.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&archive).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "archive mode {mode:o}");
    // Inserts are acknowledged again once the broker is back.
    let finished = Instant::now();
    let deadline = finished + Duration::from_secs(30);
    while !acknowledged
        .lock()
        .unwrap()
        .iter()
        .any(|(.., at)| *at > finished)
    {
        assert!(
            Instant::now() < deadline,
            "no insert acknowledged after the backup"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    done.store(true, SeqCst);
    inserting.join().unwrap();
    manager.join().unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    let before: Vec<_> = acknowledged.iter().filter(|(.., at)| *at < began).collect();
    let after = acknowledged.len() - before.len();
    eprintln!(
        "{} inserts acknowledged before the backup began, {after} during and after it",
        before.len()
    );
    assert!(
        before.len() >= 200 && after > 0,
        "{} / {after}",
        before.len()
    );

    // Restored into a fresh --db, alone.
    let restored_db = dir.path().join("restored");
    std::fs::create_dir(&restored_db).unwrap();
    let untar = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(&restored_db)
        .status()
        .unwrap();
    assert!(untar.success());
    // Users, byte for byte: hashes, revocation, tenants, emails, data.
    let original_users = users_of(&db);
    assert_eq!(original_users.len(), 3);
    assert_eq!(users_of(&restored_db), original_users);
    let restored = Broker::start_on(&restored_db, KEEP_ALL);
    restored.login("alice", "pw-a");
    restored
        .post("/login", &json!({"username": "bob", "password": "pw-b"}))
        .assert_error(401);
    // Every insert acknowledged before the backup began, with its id.
    let newest = before.last().unwrap().0;
    let mut stream = restored.sse(&[("Authorization", &bearer(&jwt)), ("Last-Event-ID", "0")]);
    let replayed = stream.events(newest as usize);
    for (id, n, _) in &before {
        let event = &replayed[*id as usize - 1];
        assert_eq!((event.id, &event.data), (*id, &json!(n)));
    }
}
