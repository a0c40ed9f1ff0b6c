//! Broker as an unlucky operator and an attacker would try it: clients that
//! never read, login bursts, a full disk, no file descriptors left, SIGTERM
//! at a bad moment, and credential changes racing authentication.

mod common;
use common::*;
use serde_json::json;
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[test]
fn streams_that_never_read_hold_bounded_memory_and_are_disconnected() {
    let broker = Broker::start(&["--max_body=1048576"]);
    broker.create_user("bob", "pw", "t1");
    let jwt = broker.login("bob", "pw");
    let mut stalled: Vec<_> = (0..3).map(|_| broker.stalled_stream(&jwt, None)).collect();
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
    // A socket that accepts nothing for a minute is closed by the server.
    // (Waited out without reading: a read would be the client taking
    // something, and a client that takes something is not cut. The kernel
    // clamps its last window probe to the timeout, since Linux 5.11.)
    std::thread::sleep(Duration::from_secs(70));
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
    // Reads keep working meanwhile: credentials, streams and their sync.
    assert_eq!(broker.verify(&jwt).status, 200);
    let mut reading = broker.sse(&[("Authorization", &bearer(&jwt))]);
    assert_eq!(reading.events(1).len(), 1);
    let users = broker.post("/list_users", &json!({"admin_token": ADMIN}));
    assert_eq!(users.status, 200);
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
    // And nothing that was refused: a 503 leaves no trace.
    for n in &stored {
        assert!(acknowledged.contains(n), "refused insert {n} was stored");
    }
    assert!(stream.quiet_for(Duration::from_millis(300)));
    assert!(
        broker.logged("storage: cannot write"),
        "the failure was logged"
    );
}

#[test]
fn sigterm_ends_the_process_within_10_s_even_with_storage_broken() {
    let disk = Tmpfs::mount("48m");
    let broker = Broker::start_on(&disk.0.path().join("db"), &["--max_body=1048576"]);
    broker.create_user("bob", "pw", "t1");
    let jwt = broker.login("bob", "pw");
    for n in 0..8 {
        broker.insert(&jwt, "big", &json!(noise(900_000, n)));
    }
    // A stream that never reads, with megabytes of backlog waiting for it,
    // and a disk that cannot take a byte.
    let stalled = broker.stalled_stream(&jwt, Some("0"));
    std::thread::sleep(Duration::from_millis(500));
    disk.fill();
    let mut n = 0;
    let broken = within(Duration::from_secs(20), || {
        n += 1;
        insert_status(&broker, &jwt, n);
        broker.get("/", &[]).status == 503
    });
    assert!(broken.is_some());
    let stopped = broker.stop_within(Duration::from_secs(10));
    let (took, code) = stopped.expect("still running 10 s after SIGTERM");
    eprintln!("stopped in {took:?} with status {code:?}");
    assert_eq!(code, Some(0), "a clean stop");
    drop(stalled);
}

#[test]
fn abandoned_logins_keep_their_argon2_place_until_their_hash_ends() {
    let broker = Broker::start(&["--login_limit=100000"]);
    broker.create_user("bob", "pw", "t1");
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss = broker.rss_kib();
    let idle_threads = broker.threads();
    // Samples RSS and threads from /proc every millisecond or two.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pid = broker.pid();
    let sampling = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = (0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
                let field = |name: &str| -> u64 {
                    let line = status.lines().find(|line| line.starts_with(name)).unwrap();
                    line.split_whitespace().nth(1).unwrap().parse().unwrap()
                };
                peak.0 = peak.0.max(field("VmRSS:"));
                peak.1 = peak.1.max(field("Threads:"));
                std::thread::sleep(Duration::from_millis(1));
            }
            peak
        })
    };
    // Three waves of logins whose clients hang up 8 ms in.
    for wave in [14, 13, 13] {
        let sockets: Vec<_> = (0..wave)
            .map(|_| {
                let mut socket = broker.connect();
                let body = json!({"username": "bob", "password": "wrong"}).to_string();
                let headers = [("Content-Type", "application/json")];
                let request = request_bytes("POST", "/login", &headers, body.as_bytes());
                socket.write_all(&request).unwrap();
                socket
            })
            .collect();
        std::thread::sleep(Duration::from_millis(8));
        drop(sockets);
        std::thread::sleep(Duration::from_millis(1500));
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (peak_rss, peak_threads) = sampling.join().unwrap();
    eprintln!(
        "40 abandoned logins in three waves: peak RSS {} MiB (idle {} MiB), peak threads {peak_threads} (idle {idle_threads})",
        peak_rss / 1024,
        idle_rss / 1024
    );
    // At most one hash per core at a time, 19 MiB each, however many
    // clients hang up: the place is the job's until its hash is done.
    let cores = std::thread::available_parallelism().unwrap().get() as u64;
    assert!(
        peak_threads <= idle_threads + cores + 1,
        "threads {idle_threads} -> {peak_threads}"
    );
    assert!(
        peak_rss <= idle_rss + (cores + 1) * 20 * 1024,
        "RSS {idle_rss} -> {peak_rss} KiB"
    );
    // And each abandoned check counted as a failed one.
    broker.login("bob", "pw");
}

/// An ext4 filesystem on a loop device, mounted for one test (tests run
/// as root), that can be frozen: every write to it then waits, as on a
/// disk that has stopped answering. Thawed and unmounted on drop.
struct FreezableDisk {
    dir: tempfile::TempDir,
    _image: tempfile::TempDir,
}

impl FreezableDisk {
    fn mount() -> FreezableDisk {
        let image = tempfile::tempdir().unwrap();
        let file = image.path().join("disk.img");
        let run = |command: &mut Command| assert!(command.status().unwrap().success());
        run(Command::new("truncate").args(["-s", "512M"]).arg(&file));
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&file));
        let dir = tempfile::tempdir().unwrap();
        run(Command::new("mount")
            .args(["-o", "loop,noatime"])
            .arg(&file)
            .arg(dir.path()));
        FreezableDisk { dir, _image: image }
    }

    fn freeze(&self, frozen: bool) {
        let flag = if frozen { "--freeze" } else { "--unfreeze" };
        let status = Command::new("fsfreeze")
            .arg(flag)
            .arg(self.dir.path())
            .status();
        assert!(status.unwrap().success());
    }
}

impl Drop for FreezableDisk {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze")
            .arg("--unfreeze")
            .arg(self.dir.path())
            .status();
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_write_waiting_on_the_disk_does_not_stop_other_requests() {
    let disk = FreezableDisk::mount();
    let broker = Broker::start_on(&disk.dir.path().join("db"), &[]);
    broker.create_user("bob", "pw", "t1");
    let jwt = broker.login("bob", "pw");
    broker.insert(&jwt, "before", &json!(0));
    disk.freeze(true);
    // More inserts than the server has workers (one per core); each waits
    // on the disk (or on the one that does).
    let port = broker.port;
    let cores = std::thread::available_parallelism().unwrap().get() as u64;
    let inserts: Vec<_> = (0..cores + 4)
        .map(|n| {
            let jwt = jwt.clone();
            std::thread::spawn(move || {
                let client = Client { port, tls: None };
                insert_status(&client, &jwt, n).0
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // Meanwhile, requests that need no write are served as usual.
    let started = Instant::now();
    let verified = std::thread::spawn(move || {
        let client = Client { port, tls: None };
        let reply = client.verify(&jwt);
        (
            reply.status,
            client.request("OPTIONS", "/insert", &[], b"").status,
        )
    });
    std::thread::sleep(Duration::from_secs(2));
    let served = verified.is_finished();
    disk.freeze(false);
    let (verify, options) = verified.join().unwrap();
    eprintln!(
        "served in {:?} while the disk was frozen: {served}",
        started.elapsed()
    );
    assert!(served, "a read waited for the frozen disk");
    assert_eq!((verify, options), (200, 204));
    // Thawed, the waiting inserts complete.
    for insert in inserts {
        assert_eq!(insert.join().unwrap(), 200);
    }
}

#[test]
fn an_insert_whose_body_arrives_after_a_credential_change_is_refused() {
    let broker = Broker::start(&[]);
    broker.create_user("alice", "pw", "t1");
    let alice = broker.login("alice", "pw");
    let mut watching = broker.sse(&[("Authorization", &bearer(&alice))]);
    for (round, change) in [
        json!({"path": "/revoke_user"}),
        json!({"path": "/update_user", "tenant_name": "t2"}),
        json!({"path": "/update_user", "password": "new"}),
    ]
    .iter()
    .enumerate()
    {
        let name = format!("bob{round}");
        broker.create_user(&name, "pw", "t1");
        let jwt = broker.login(&name, "pw");
        // The headers, authenticated at once; the body comes later.
        let body = json!({"event": "late", "data": round}).to_string();
        let head = format!(
            "POST /insert HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {jwt}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let mut socket = broker.connect();
        socket.write_all(head.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let mut change_body = change.clone();
        change_body.as_object_mut().unwrap().remove("path");
        change_body["admin_token"] = json!(ADMIN);
        change_body["username"] = json!(name);
        let path = change["path"].as_str().unwrap();
        assert_eq!(broker.post(path, &change_body).status, 200);
        socket.write_all(body.as_bytes()).unwrap();
        let reply = read_reply(&mut std::io::BufReader::new(socket));
        reply.assert_error(401);
        // Nothing reached the old tenant.
        assert!(
            watching.quiet_for(Duration::from_millis(300)),
            "{change}: the event reached the old tenant"
        );
    }
}

#[test]
fn running_out_of_file_descriptors_heals_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Supervised::start(&dir.path().join("db"), &["--max_body=1048576"], |command| {
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
    /// Eight checks in flight per core (16 on two), so a check queued
    /// behind them waits several hashes however many cores hash at once;
    /// at most 56 (the checks wait their turn, one hash per core).
    fn start(port: u16) -> LoginFlood {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cores = std::thread::available_parallelism().unwrap().get();
        let threads = (0..(8 * cores).min(56))
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
            thread.join().expect("a flood thread panicked");
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
        // When the stream's answer arrived, if it has.
        let answered = Arc::new(Mutex::new(None));
        let answered_at = answered.clone();
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
            let mut body = vec![0; 1];
            if stream.read_exact(&mut body).is_ok() {
                *answered_at.lock().unwrap() = Some(Instant::now());
            }
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
        // No answer to the stream yet: Bob's was still being authenticated
        // when the change answered. (Not so for the password change, whose
        // own Argon2 hash queues behind Bob's check: there the change lands
        // on an open stream.)
        let in_flight = answered.lock().unwrap().is_none();
        eprintln!("{change}: authentication in flight when it answered: {in_flight}");
        if round != 1 {
            assert!(in_flight, "{change}: Bob's stream was answered first");
        }
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

#[test]
fn two_thousand_streams_under_a_soft_limit_of_1024_descriptors() {
    // Linux's and systemd's default: 1024 soft, a higher hard limit.
    let mut hard = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut hard) };
    assert!(
        hard.rlim_max >= 4096,
        "the hard limit here is {}",
        hard.rlim_max
    );
    // This test's own client sockets need the room too.
    let raised = libc::rlimit {
        rlim_cur: hard.rlim_max,
        rlim_max: hard.rlim_max,
    };
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) };
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_with(&dir.path().join("db"), &["--max_streams=5000"], |command| {
        use std::os::unix::process::CommandExt;
        unsafe {
            command.pre_exec(|| {
                let mut limit = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
                limit.rlim_cur = 1024;
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
                Ok(())
            });
        }
    });
    // Raised to the hard limit (no longer logged: retired for the line
    // budget), as /proc says.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", broker.pid())).unwrap();
    let files = limits
        .lines()
        .find(|line| line.starts_with("Max open files"));
    let soft = files.unwrap().split_whitespace().nth(3).unwrap();
    assert_eq!(soft, hard.rlim_max.to_string(), "{limits}");
    broker.create_user("bob", "pw", "t1");
    let jwt = broker.login("bob", "pw");
    let auth = bearer(&jwt);
    let mut streams: Vec<Sse> = (0..2000)
        .map(|_| broker.sse(&[("Authorization", &auth)]))
        .collect();
    broker.insert(&jwt, "all", &json!("of them"));
    for stream in &mut streams {
        assert_eq!(stream.events(1)[0].data, json!("of them"));
    }
}

#[test]
fn health_checks_on_a_frozen_disk_hold_no_thread_and_stop_no_one() {
    let disk = FreezableDisk::mount();
    let broker = Broker::start_on(&disk.dir.path().join("db"), &[]);
    broker.create_user("bob", "pw", "t1");
    let jwt = broker.login("bob", "pw");
    assert_eq!(health(&broker), 200);
    disk.freeze(true);
    // The watcher's heartbeat stops reaching the disk: health says so
    // within seconds, without waiting on the disk itself.
    let unhealthy = within(Duration::from_secs(15), || health(&broker) == 503);
    // More unauthenticated health checks at once than tokio has blocking
    // threads (512): each used to hold one while it flushed the journal.
    let checks: Vec<TcpStream> = (0..600)
        .map(|_| {
            let mut socket = broker.connect();
            socket
                .write_all(&request_bytes("GET", "/", &[], b""))
                .unwrap();
            socket
        })
        .collect();
    let started = Instant::now();
    let answered = checks
        .into_iter()
        .map(|socket| {
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            read_reply(&mut BufReader::new(socket)).status
        })
        .filter(|status| *status == 503)
        .count();
    let elapsed = started.elapsed();
    // Meanwhile requests that need no write are served as usual.
    let port = broker.port;
    let served = std::thread::spawn(move || {
        let client = Client { port, tls: None };
        (
            client.verify(&jwt).status,
            client.request("OPTIONS", "/insert", &[], b"").status,
        )
    });
    let served = within(Duration::from_secs(5), || served.is_finished()).map(|_| served);
    disk.freeze(false);
    eprintln!("600 health checks on a frozen disk: {answered} answered 503 in {elapsed:?}");
    assert!(unhealthy.is_some(), "GET / never said the disk is stalled");
    assert_eq!(answered, 600);
    let served = served.expect("a read waited behind the health checks");
    assert_eq!(served.join().unwrap(), (200, 204));
    // Thawed, the heartbeat reaches the disk again and health follows.
    assert!(within(Duration::from_secs(10), || health(&broker) == 200).is_some());
}

#[test]
fn a_slow_but_steady_reader_is_not_cut_before_the_minute_a_silent_one_gets() {
    let broker = Broker::start(&[]);
    broker.create_user("bob", "pw", "t1");
    let jwt = broker.login("bob", "pw");
    // A reader with a 16 KiB receive buffer that takes 16 KB a second.
    let mut socket = broker.connect_from("127.0.0.1", Some(16 * 1024));
    let request = format!("GET /sse HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {jwt}\r\n\r\n");
    socket.write_all(request.as_bytes()).unwrap();
    // A little faster than it reads: the server always has bytes waiting
    // for it, never a megabyte (the stream's queue).
    let port = broker.port;
    let writer = std::thread::spawn(move || {
        let client = Client { port, tls: None };
        for n in 0..55 {
            client.insert(&jwt, "tick", &json!(noise(20_000, n)));
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    let started = Instant::now();
    let mut taken = 0;
    let mut buffer = [0; 4096];
    // Cut by the kernel after 11.6 s when it was given 10 s to write.
    while started.elapsed() < Duration::from_secs(55) {
        match socket.read(&mut buffer) {
            Ok(0) => panic!("the stream ended after {:?}", started.elapsed()),
            Ok(read) => taken += read,
            Err(error) => panic!("cut after {:?}: {error}", started.elapsed()),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    writer.join().unwrap();
    eprintln!("a reader at 16 KB/s took {taken} bytes in 55 s without being cut");
    assert!(taken > 700_000, "{taken} bytes");
}
