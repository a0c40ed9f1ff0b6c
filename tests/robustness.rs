//! Flags, persistence, shutdown, and hostile or broken clients.

mod common;
use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

fn run_broker(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_broker"));
    command.args(args).envs(env.iter().copied());
    command.output().unwrap()
}

#[test]
fn help_lists_every_flag_with_its_default() {
    let output = run_broker(&["--help"], &[]);
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for flag in [
        "origin",
        "port",
        "jwt_expiry",
        "jwt_secret",
        "secure",
        "auto_cert",
        "key_path",
        "cert_path",
        "certs",
        "db",
        "domain",
        "admin_token",
        "keep_alive",
        "max_body",
        "ntp_servers",
        "ntp_interval",
        "acme_directory",
        "acme_ca",
    ] {
        assert!(
            help.contains(&format!("--{flag} ")),
            "--{flag} missing from:\n{help}"
        );
    }
    assert!(
        help.contains("\"letmein\"") && help.contains("\"8080\"") && help.contains("\"86400\"")
    );
}

#[test]
fn bad_flags_exit_1_with_one_line() {
    for args in [
        &["--nope"][..],
        &["--port=abc"],
        &["--port", "70000"],
        &["--secure=maybe"],
        &["--jwt_expiry=-5"],
        &["--keep_alive"],
        &["positional"],
    ] {
        // Rust's own report of the error main returns: status 1 and
        // `Error: "<reason>"` (status 2 and the `broker:` prefix were
        // retired for the line budget).
        let output = run_broker(args, &[]);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("Error: \""), "{args:?}: {stderr}");
    }
}

#[test]
fn flags_take_every_syntax_and_the_environment_with_flags_winning() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("BROKER_ADMIN_TOKEN", "from-env"),
        ("BROKER_ORIGIN", "https://env.example"),
    ];
    let args = [
        "--admin_token",
        "from-flag",
        "--secure=false",
        "--keep_alive",
        "5",
    ];
    let broker = Broker::start_env(&dir.path().join("db"), &args, &env);
    broker
        .post("/list_users", &json!({"admin_token": "from-env"}))
        .assert_error(401);
    let reply = broker.post("/list_users", &json!({"admin_token": "from-flag"}));
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("access-control-allow-origin").as_deref(),
        Some("https://env.example")
    );
}

#[test]
fn default_secrets_draw_a_warning_and_nothing_logged_holds_a_secret() {
    let broker = Broker::start(&[]);
    assert!(broker.logged("warning: --admin_token") && broker.logged("warning: --jwt_secret"));
    broker.create_user("bob", "hunter2-secret", "t1");
    let jwt = broker.login("bob", "hunter2-secret");
    assert_eq!(broker.verify(&jwt).status, 200);
    // No access log: requests are not logged at all.
    assert!(!broker.logged("/login") && !broker.logged("/verify"));
    let quiet = Broker::start(&["--admin_token=own", "--jwt_secret=own"]);
    assert!(!quiet.logged("warning"));
    let log = broker.log.lock().unwrap().join("\n");
    assert!(
        !log.contains("hunter2") && !log.contains(&jwt) && !log.contains(ADMIN),
        "{log}"
    );
}

#[test]
fn data_survives_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let broker = Broker::start_on(&db, &[]);
    broker.create_user("bob", "pw", "t1");
    let jwt = broker.login("bob", "pw");
    broker.insert(&jwt, "a", &json!(1));
    broker.insert(&jwt, "b", &json!(2));
    assert_eq!(broker.stop(), Some(0));
    let broker = Broker::start_on(&db, &[]);
    let jwt = broker.login("bob", "pw");
    let mut stream = broker.sse(&[("Authorization", &bearer(&jwt))]);
    assert_eq!(
        stream
            .events(2)
            .iter()
            .map(|event| event.id)
            .collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(
        broker.insert(&jwt, "a", &json!(3)),
        3,
        "ids continue after a restart"
    );
}

#[test]
fn every_acknowledged_insert_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let broker = Broker::start_on(&db, &[]);
    broker.create_user("bob", "pw", "t1");
    let jwt = broker.login("bob", "pw");
    let total = 200;
    for n in 1..=total {
        assert_eq!(
            broker.insert(&jwt, &format!("e{}", n % 7), &json!({"n": n})),
            n
        );
    }
    broker.kill9();
    let broker = Broker::start_on(&db, &[]);
    let mut stream = broker.sse(&[
        ("Authorization", &basic("bob", "pw")),
        ("Last-Event-ID", "0"),
    ]);
    let events = stream.events(total as usize);
    assert_eq!(events.len(), total as usize);
    for (index, event) in events.iter().enumerate() {
        assert_eq!(event.data, json!({"n": index + 1}));
    }
    assert_eq!(broker.insert(&jwt, "after", &json!(0)), total + 1);
}

#[test]
fn sigterm_ends_streams_cleanly_and_exits_promptly_and_sigint_ends_the_process() {
    let broker = Broker::start(&[]);
    broker.create_user("bob", "pw", "t1");
    let jwt = broker.login("bob", "pw");
    let mut stream = broker.sse(&[("Authorization", &bearer(&jwt))]);
    let started = Instant::now();
    unsafe { libc::kill(broker.pid(), libc::SIGTERM) };
    stream.wait_end(Duration::from_secs(5));
    let stopped = broker.signal_within(libc::SIGTERM, Duration::from_secs(5));
    let (_, code) = stopped.expect("still running 5 s after SIGTERM");
    assert_eq!(code, Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // SIGINT is not caught (its graceful shutdown was retired for the line
    // budget): the process ends at once, as any program does on Ctrl-C.
    let broker = Broker::start(&[]);
    let stopped = broker.signal_within(libc::SIGINT, Duration::from_secs(5));
    let (_, code) = stopped.expect("still running 5 s after SIGINT");
    assert_eq!(code, None, "ended by the signal");
}

#[test]
fn hostile_requests_change_nothing_and_the_server_keeps_serving() {
    let broker = Broker::start(&["--max_body=4096"]);
    broker.create_user("bob", "pw", "t1");
    let jwt = broker.login("bob", "pw");
    broker.insert(&jwt, "keep", &json!("me"));
    let users = || {
        broker
            .post("/list_users", &json!({"admin_token": ADMIN}))
            .json()
    };
    let before = users();

    // A slow client that never finishes its headers holds only its own connection.
    let mut slow = broker.connect();
    slow.write_all(b"POST /create_user HTTP/1.1\r\nHost: x\r\nContent-Le")
        .unwrap();
    // One that never finishes its body is answered 408 after 10 s.
    let mut late = broker.connect();
    let head = "POST /create_user HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"user";
    late.write_all(head.as_bytes()).unwrap();
    let late = std::thread::spawn(move || {
        let started = Instant::now();
        let reply = read_reply(&mut std::io::BufReader::new(late));
        (reply, started.elapsed())
    });

    let bodies: Vec<&[u8]> = vec![
        b"{",
        b"not json",
        b"[]",
        b"null",
        b"\"string\"",
        b"{\"username\": 5, \"password\": [], \"admin_token\": {}, \"tenant_name\": null}",
        b"{\"username\": \"x\xff\xfe\", \"password\": \"p\", \"admin_token\": \"letmein\", \"tenant_name\": \"t\"}",
        b"\xff\xfe\xfd",
        b"{\"admin_token\": \"letmein\", \"username\": \"eve\", \"password\": \"p\", \"tenant_name\": \"t\", \"tenant_name\": \"bad name\"}",
        &[b'['; 3000],
    ];
    for path in [
        "/create_user",
        "/login",
        "/update_user",
        "/revoke_user",
        "/get_user",
        "/list_users",
        "/insert",
    ] {
        for body in &bodies {
            if path == "/list_users" && body.starts_with(b"{\"admin_token\": \"letmein\"") {
                continue; // a valid admin call
            }
            let reply = broker.request("POST", path, &[("Authorization", &bearer(&jwt))], body);
            assert!(
                (400..500).contains(&reply.status),
                "{path} {:?} → {}",
                String::from_utf8_lossy(body),
                reply.status
            );
            reply.assert_error(reply.status);
        }
    }
    // Protocol-level garbage: each gets a 4xx or a closed connection, never a crash.
    let huge_header = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    // A head over 64 KiB is answered 431.
    let reply = broker.raw(huge_header.as_bytes());
    assert_eq!(reply.status, 431, "{}", reply.head);
    let raw: Vec<Vec<u8>> = vec![
        b"GARBAGE\r\n\r\n".to_vec(),
        b"GET / HTTP/9.9\r\n\r\n".to_vec(),
        b"\x00\x01\x02\x03\r\n\r\n".to_vec(),
        b"POST /insert HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec(),
        b"POST /insert HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_vec(),
        b"POST /insert HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        b"GET /verify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xff\r\nConnection: close\r\n\r\n".to_vec(),
    ];
    for bytes in raw {
        let mut stream = broker.connect();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = stream.write_all(&bytes);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        let text = String::from_utf8_lossy(&response);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 4"),
            "{:?}",
            &text[..text.len().min(200)]
        );
    }
    // A Last-Event-ID that is not even text is no position: the stream opens
    // with the sync, as without one (its 400 was retired for the line budget).
    let mut garbled_id = broker.connect();
    garbled_id
        .write_all(b"GET /sse HTTP/1.1\r\nHost: x\r\nAuthorization: Basic Ym9iOnB3\r\nLast-Event-ID: \xff\r\n\r\n")
        .unwrap();
    let mut seen = Vec::new();
    let mut chunk = [0; 4096];
    while !String::from_utf8_lossy(&seen).contains("event:keep") {
        let read = garbled_id
            .read(&mut chunk)
            .expect("the sync within the read timeout");
        assert!(read > 0, "{:?}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..read]);
    }
    assert!(seen.starts_with(b"HTTP/1.1 200"));
    drop(garbled_id);
    // A body cut short: the client promises 1000 bytes, sends 10 and hangs up.
    let mut truncated = broker.connect();
    let head = "POST /create_user HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"username\"";
    truncated.write_all(head.as_bytes()).unwrap();
    truncated.shutdown(std::net::Shutdown::Write).unwrap();
    let mut response = String::new();
    let _ = truncated.read_to_string(&mut response);
    assert!(
        response.is_empty() || response.starts_with("HTTP/1.1 400"),
        "{response}"
    );
    // Oversized bodies, with and without an honest Content-Length.
    let big = json!({"admin_token": ADMIN, "username": "eve", "password": "p", "tenant_name": "t", "data": "x".repeat(5000)});
    broker.post("/create_user", &big).assert_error(413);
    let (reply, waited) = late.join().unwrap();
    reply.assert_error(408);
    assert!(waited >= Duration::from_secs(9), "{waited:?}");

    // Still serving, with nothing changed.
    assert_eq!(broker.get("/", &[]).status, 200);
    broker.login("bob", "pw");
    assert_eq!(users(), before);
    let mut stream = broker.sse(&[("Authorization", &bearer(&jwt))]);
    assert_eq!(stream.events(1).len(), 1);
    assert!(
        stream.quiet_for(Duration::from_millis(200)),
        "no event was inserted"
    );
    drop(slow);
}

/// The response to a stream request sent before a SIGTERM: its status,
/// whether its body ended with the chunked terminator, and whether it held
/// the sync's one frame. `None` when the server closed the connection
/// before reading the request at all.
fn stream_during_shutdown(broker: Broker) -> Option<(u16, bool, bool)> {
    broker.create_user("bob", "pw", "t1");
    // The sync's one frame, inserted by another user of the tenant, so that
    // Bob's password is in no cache and his stream's check needs Argon2.
    broker.create_user("alice", "pw", "t1");
    let jwt = broker.login("alice", "pw");
    broker.insert(&jwt, "hello", &json!(1));
    // Argon2 kept busy: wrong passwords queue up (within the test's
    // --login_limit of 100), twelve per core (24 on two, at most 60), so
    // many hashes are still ahead of Bob's however many cores run them …
    let port = broker.port;
    let (checked, first_checked) = std::sync::mpsc::channel();
    let cores = std::thread::available_parallelism().unwrap().get();
    let busy: Vec<_> = (0..(12 * cores).min(60))
        .map(|_| {
            let checked = checked.clone();
            std::thread::spawn(move || {
                let client = Client { port, tls: None };
                let wrong = json!({"username": "bob", "password": "wrong"}).to_string();
                let headers = [("Content-Type", "application/json")];
                // A thread that connects only once the listener has closed
                // for shutdown is refused, and that is no failure here.
                let _ = client.try_request("POST", "/login", &headers, wrong.as_bytes());
                let _ = checked.send(());
            })
        })
        .collect();
    first_checked
        .recv_timeout(Duration::from_secs(30))
        .expect("no password check ended in 30 s");
    // … so a Basic stream's check (nothing cached) waits its turn, and is
    // still in flight when shutdown begins.
    let mut socket = broker.connect();
    let auth = basic("bob", "pw");
    let request = request_bytes("GET", "/sse", &[("Authorization", &auth)], b"");
    socket.write_all(&request).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let pid = broker.pid();
    unsafe { libc::kill(pid, libc::SIGTERM) };
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut response = Vec::new();
    let _ = socket.read_to_end(&mut response);
    for thread in busy {
        thread.join().unwrap();
    }
    let stopped = broker.signal_within(libc::SIGTERM, Duration::from_secs(10));
    assert_eq!(
        stopped.expect("still running 10 s after SIGTERM").1,
        Some(0)
    );
    let response = String::from_utf8_lossy(&response).to_string();
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let clean = response.ends_with("0\r\n\r\n");
    Some((status, clean, response.contains("event:hello")))
}

#[test]
fn a_stream_whose_check_is_in_flight_at_shutdown_ends_cleanly_not_cut() {
    // What shows nothing is tried again: a connection closed before its
    // request was read, or a check that ended before the signal (its
    // stream then gets its sync and ends cleanly with the others).
    for _ in 0..10 {
        let broker = Broker::start(&["--login_limit=100"]);
        let Some((status, clean, synced)) = stream_during_shutdown(broker) else {
            continue;
        };
        eprintln!("a stream checked during shutdown: {status}, clean: {clean}, synced: {synced}");
        // Never cut without its end: a stream opened once shutdown began is
        // born ended, 200 with no frame and the chunked terminator.
        assert!(status == 200 && clean, "{status}, clean: {clean}");
        if !synced {
            return;
        }
    }
    panic!("no stream was still being checked when shutdown began, in ten tries");
}
