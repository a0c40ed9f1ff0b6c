//! Broker as an unlucky operator and an attacker would try it: clients that
//! never read, login bursts, a full disk, no file descriptors left, SIGTERM
//! at a bad moment, and credential changes racing authentication.

mod common;
use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn streams_that_never_read_hold_bounded_memory_and_are_disconnected() {
    let broker = Broker::start(&[]);
    broker.create_user("bob", "pw", "t1");
    let jwt = broker.login("bob", "pw");
    let request = format!("GET /sse HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {jwt}\r\n\r\n");
    let mut stalled: Vec<_> = (0..3)
        .map(|_| {
            let mut socket = broker.connect_from("127.0.0.1", Some(4096));
            socket.write_all(request.as_bytes()).unwrap();
            socket
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = broker.rss_kib();
    let payload = json!("x".repeat(900 * 1024));
    for _ in 0..150 {
        broker.insert(&jwt, "big", &payload);
    }
    let grown = broker.rss_kib().saturating_sub(before) / 1024;
    eprintln!("RSS grew by {grown} MiB over 150 inserts of 900 KB with 3 stalled streams");
    // 150 × 900 KB would be 130 MiB per stream if queues were unbounded.
    assert!(grown < 100, "RSS grew by {grown} MiB");
    // A socket that accepts nothing for 10 s is closed by the server.
    std::thread::sleep(Duration::from_secs(12));
    for socket in &mut stalled {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut sink = vec![0; 1 << 20];
        // The server's end is closed: what is buffered drains, then EOF or a
        // reset, never a read that just waits.
        let ended = loop {
            match socket.read(&mut sink) {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(error) => {
                    break !matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    );
                }
            }
        };
        assert!(ended, "the stalled stream is still open");
    }
    assert_eq!(broker.get("/", &[]).status, 200);
}

#[test]
fn argon2_memory_is_given_back_after_a_burst_of_logins() {
    let broker = Broker::start(&["--login_limit=100000"]);
    broker.create_user("bob", "pw", "t1");
    std::thread::sleep(Duration::from_millis(500));
    let idle = broker.rss_kib();
    let port = broker.port;
    let logins: Vec<_> = (0..50)
        .map(|_| {
            std::thread::spawn(move || {
                let client = Client { port, tls: None };
                let body = json!({"username": "bob", "password": "wrong"});
                client.post("/login", &body).status
            })
        })
        .collect();
    for login in logins {
        assert_eq!(login.join().unwrap(), 401);
    }
    std::thread::sleep(Duration::from_secs(5));
    let after = broker.rss_kib();
    eprintln!("RSS idle {idle} KiB, 5 s after 50 logins {after} KiB");
    assert!(
        after < idle + 10 * 1024,
        "idle {idle} KiB, after {after} KiB"
    );
}

/// A small tmpfs mounted for one test (tests run as root), unmounted at the end.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs needs root");
        Tmpfs(dir)
    }

    /// Writes a file until the filesystem is full.
    fn fill(&self) {
        let mut filler = std::fs::File::create(self.0.path().join("filler")).unwrap();
        let block = vec![7u8; 64 * 1024];
        while filler.write_all(&block).is_ok() {}
        let _ = filler.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.0.path().join("filler")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// What the broker logged besides requests, for failure messages.
fn events_of(log: &std::sync::Mutex<Vec<String>>) -> String {
    let log = log.lock().unwrap();
    let events = log.iter().filter(|line| !line.contains(" /"));
    events.cloned().collect::<Vec<_>>().join("\n")
}

/// Polls `probe` until it is true, for at most `limit`; returns how long it took.
fn within(limit: Duration, mut probe: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if probe() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// An insert that tolerates a broker that is restarting: status 0 then.
fn insert_status(broker: &Client, jwt: &str, n: u64) -> (u16, Option<String>) {
    let auth = bearer(jwt);
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let body = json!({"event": "e", "data": {"n": n, "pad": noise(20_000, n)}});
    let reply = broker.try_request("POST", "/insert", &headers, body.to_string().as_bytes());
    reply.map_or((0, None), |reply| {
        (reply.status, reply.header("retry-after"))
    })
}

/// `GET /`, tolerating a broker that is restarting: status 0 then.
fn health(broker: &Client) -> u16 {
    broker
        .try_request("GET", "/", &[], b"")
        .map_or(0, |reply| reply.status)
}

#[test]
fn a_full_disk_answers_503_and_heals_by_itself_without_losing_anything() {
    let disk = Tmpfs::mount("48m");
    let db = disk.0.path().join("db");
    let broker = Supervised::start(&db, &[], |_| {});
    broker.create_user("bob", "pw", "t1");
    let jwt = broker.login("bob", "pw");
    let mut acknowledged = Vec::new();
    for n in 0..20 {
        assert_eq!(insert_status(&broker, &jwt, n).0, 200);
        acknowledged.push(n);
    }
    disk.fill();
    // Writes fail with 503 + Retry-After (never 500), and health says so.
    let mut n = 20;
    let refused = within(Duration::from_secs(20), || {
        n += 1;
        let (status, retry) = insert_status(&broker, &jwt, n);
        assert!([200, 503].contains(&status), "insert answered {status}");
        if status == 200 {
            acknowledged.push(n);
        }
        status == 503 && retry.is_some()
    });
    assert!(refused.is_some(), "writes kept succeeding on a full disk");
    let unhealthy = within(Duration::from_secs(3), || health(&broker) == 503);
    assert!(unhealthy.is_some(), "{}", events_of(&broker.log));
    // It stays that way while the disk is full: no restart loop.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(health(&broker), 503);
    assert_eq!(broker.restarts.load(std::sync::atomic::Ordering::SeqCst), 0);
    // Space comes back: within 10 s everything works again, by itself.
    disk.free();
    let healed = within(Duration::from_secs(10), || {
        health(&broker) == 200 && insert_status(&broker, &jwt, 1000).0 == 200
    });
    eprintln!("healed {healed:?} after the disk was freed");
    assert!(healed.is_some(), "{}", events_of(&broker.log));
    acknowledged.push(1000);
    // Every acknowledged insert is there.
    let mut stream = broker.sse(&[("Authorization", &bearer(&jwt)), ("Last-Event-ID", "0")]);
    let events = stream.events(acknowledged.len());
    let stored: Vec<u64> = events
        .iter()
        .map(|event| event.data["n"].as_u64().unwrap())
        .collect();
    for n in &acknowledged {
        assert!(stored.contains(n), "acknowledged insert {n} is missing");
    }
    assert!(
        broker.logged("storage: cannot write"),
        "the failure was logged"
    );
}

#[test]
fn sigterm_ends_the_process_within_10_s_even_with_storage_broken() {
    let disk = Tmpfs::mount("24m");
    let broker = Broker::start_on(&disk.0.path().join("db"), &[]);
    broker.create_user("bob", "pw", "t1");
    let jwt = broker.login("bob", "pw");
    // A stream that never reads, and a disk that cannot take a byte.
    let mut stalled = broker.connect_from("127.0.0.1", Some(4096));
    let request = format!("GET /sse HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {jwt}\r\n\r\n");
    stalled.write_all(request.as_bytes()).unwrap();
    disk.fill();
    let mut n = 0;
    let broken = within(Duration::from_secs(20), || {
        n += 1;
        insert_status(&broker, &jwt, n);
        broker.get("/", &[]).status == 503
    });
    assert!(broken.is_some());
    let took = broker.stop_within(Duration::from_secs(10));
    assert!(took.is_some(), "still running 10 s after SIGTERM");
}

#[test]
fn running_out_of_file_descriptors_heals_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Supervised::start(&dir.path().join("db"), &[], |command| {
        use std::os::unix::process::CommandExt;
        unsafe {
            command.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: 256,
                    rlim_max: 256,
                };
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
                Ok(())
            });
        }
    });
    broker.create_user("bob", "pw", "t1");
    let jwt = broker.login("bob", "pw");
    // A keep-alive connection opened while descriptors are still free.
    let mut kept = broker.connect();
    kept.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut kept_reader = std::io::BufReader::new(kept.try_clone().unwrap());
    // 300 clients that send half a body and stall: every descriptor is taken.
    let stalled: Vec<_> = (0..300)
        .filter_map(|_| {
            let mut socket = std::net::TcpStream::connect(("127.0.0.1", broker.port)).ok()?;
            let head = "POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"us";
            socket.write_all(head.as_bytes()).ok()?;
            Some(socket)
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    // Big inserts on the kept connection force fjall to write new files.
    let mut statuses = Vec::new();
    for n in 0..12 {
        let body = json!({"event": "e", "data": {"n": n, "pad": noise(900_000, n)}}).to_string();
        let request = format!(
            "POST /insert HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {jwt}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if kept.write_all(request.as_bytes()).is_err() {
            break;
        }
        let reply = read_keep_alive_reply(&mut kept_reader);
        statuses.push(reply);
        if reply != 200 {
            break;
        }
    }
    eprintln!("inserts while out of descriptors: {statuses:?}");
    assert!(
        statuses.iter().all(|status| [200, 503].contains(status)),
        "{statuses:?}"
    );
    assert!(statuses.contains(&503), "fjall never failed: {statuses:?}");
    // The stalled bodies time out (10 s) and free their descriptors; within
    // 10 s more, writes succeed again without a human.
    let healed = within(Duration::from_secs(25), || {
        health(&broker) == 200 && insert_status(&broker, &jwt, 99).0 == 200
    });
    assert!(healed.is_some(), "{}", events_of(&broker.log));
    drop(stalled);
}

/// Reads one response on a keep-alive connection; returns its status.
fn read_keep_alive_reply(reader: &mut impl std::io::BufRead) -> u16 {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let length = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    head.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// Keeps Argon2 busy from another client address until dropped.
struct LoginFlood {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl LoginFlood {
    fn start(port: u16) -> LoginFlood {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..16)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let client = Client { port, tls: None };
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let body = json!({"username": "flood", "password": "x"});
                        client.post_from("127.0.0.9", "/login", &body);
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        LoginFlood { stop, threads }
    }
}

impl Drop for LoginFlood {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[test]
fn credential_changes_win_over_authentications_in_flight() {
    let broker = Broker::start(&["--login_limit=1000000"]);
    let port = broker.port;
    broker.create_user("alice", "pw", "t1");
    let alice = broker.login("alice", "pw");
    let changes = [
        json!({"path": "/revoke_user"}),
        json!({"path": "/update_user", "password": "new"}),
        json!({"path": "/update_user", "tenant_name": "t9"}),
    ];
    for (round, change) in changes.iter().enumerate() {
        let name = format!("bob{round}");
        broker.create_user(&name, "pw", "t1");
        let flood = LoginFlood::start(port);
        // Bob opens a Basic stream; it waits behind the flood for Argon2.
        let auth = basic(&name, "pw");
        let opening = std::thread::spawn(move || {
            let client = Client { port, tls: None };
            let (mut stream, tcp) = client.open();
            tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            stream
                .write_all(&request_bytes(
                    "GET",
                    "/sse",
                    &[("Authorization", &auth)],
                    b"",
                ))
                .unwrap();
            let mut body = Vec::new();
            let _ = stream.read_to_end(&mut body);
            String::from_utf8_lossy(&body).to_string()
        });
        std::thread::sleep(Duration::from_millis(50));
        let mut body = change.clone();
        body.as_object_mut().unwrap().remove("path");
        body["admin_token"] = json!(ADMIN);
        body["username"] = json!(name);
        assert_eq!(
            broker.post(change["path"].as_str().unwrap(), &body).status,
            200
        );
        // After the change has answered, the tenant's news must not reach Bob.
        broker.insert(&alice, "secret", &json!({"round": round}));
        drop(flood);
        let seen = opening.join().unwrap();
        // (An earlier round's event may arrive as the sync of a stream that
        // opened, validly, before the change.)
        assert!(
            !seen.contains(&format!("{{\"round\":{round}}}")),
            "{change}: a stream authenticated under the old state got an event:\n{seen}"
        );
        // Revoked, or with the old password: refused, or ended at once.
        if round < 2 {
            let ended = seen.starts_with("HTTP/1.1 401") || seen.ends_with("0\r\n\r\n");
            assert!(ended, "{change}: {seen}");
        }
    }
}
