//! Broker's benchmark: starts a release build of the broker (and, with
//! `--with-nchan`, nginx + nchan) on loopback and measures, side by side:
//!
//! - `fanout`: N subscribers in one tenant/channel; E=200 events at 50/s, each
//!   stamped with its send time; delivery ratio and latency percentiles.
//! - `rate`: 4 000 inserts/s for 5 s over 8 connections with 100 subscribers;
//!   delivery ratio and latency percentiles.
//! - `idle`: 10 000 idle streams; RSS per stream and server CPU over 10 s.
//! - `insert`: closed-loop inserts (publishes) over 64 keep-alive connections
//!   for 10 s, with JWT and with Basic, and with 100 live subscribers.
//! - `startup`: time from spawn to serving with 1 000 000 stored events in
//!   100 tenants, and idle RSS of a fresh server.
//!
//! RSS and CPU come from /proc/<pid> of the server's processes. Prints one JSON
//! line per measurement and a Markdown table at the end.
//!
//! Usage: broker-bench [--broker PATH] [--with-nchan] [--only fanout,idle,...]
//!                     [--events-for-startup N]

use base64::Engine;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const EVENTS: u64 = 200;
const RATE: u64 = 50;
const IDLE_STREAMS: usize = 10_000;
const CONNECTIONS: usize = 64;
const WINDOW: Duration = Duration::from_secs(10);

/// Monotonic time shared by publisher and subscribers: events carry it.
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Broker,
    Nchan,
}

/// A server under test: its processes, port and how to talk to it.
struct Server {
    kind: Kind,
    name: String,
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Server {
    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.child.id()];
        // nginx: the master and its workers.
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let fields: Vec<&str> = stat.rsplit(") ").next().unwrap_or("").split(' ').collect();
                if fields.get(1).and_then(|ppid| ppid.parse::<u32>().ok()) == Some(self.child.id()) {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    /// Resident memory of all the server's processes, in KiB.
    fn rss_kib(&self) -> u64 {
        self.pids().iter().map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            status.lines().find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|value| value.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
        }).sum()
    }

    /// User + system CPU seconds of all the server's processes.
    fn cpu_seconds(&self) -> f64 {
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        self.pids().iter().map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let fields: Vec<&str> = stat.rsplit(") ").next().unwrap_or("").split(' ').collect();
            // After "(comm) ": state is field 0, utime 11, stime 12.
            let field = |index: usize| fields.get(index).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            (field(11) + field(12)) / ticks
        }).sum()
    }

    fn stop(mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_port(port: u16, limit: Duration) -> Duration {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < limit, "server on port {port} did not start");
        std::thread::sleep(Duration::from_micros(500));
    }
    started.elapsed()
}

fn start_broker(binary: &str, db: Option<&std::path::Path>) -> (Server, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let db = db.map(|db| db.to_path_buf()).unwrap_or(dir.path().join("db"));
    let port = free_port();
    let started = Instant::now();
    let child = Command::new(binary)
        .args(["--ntp_servers=", "--admin_token=bench", "--jwt_secret=bench-secret"])
        // The benchmark's users open thousands of streams each.
        .args(["--max_streams=1000000", "--login_limit=1000000"])
        .arg(format!("--port={port}"))
        .arg(format!("--db={}", db.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("broker binary");
    let server = Server { kind: Kind::Broker, name: "broker".into(), port, child, _dir: dir };
    // Serving means answering a request, not just accepting connections.
    wait_port(port, Duration::from_secs(30));
    while !healthy(port) {
        std::thread::sleep(Duration::from_micros(500));
    }
    (server, started.elapsed())
}

/// A blocking `GET /` that answered 200.
fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.1 200")
}

fn start_nchan() -> Server {
    for (binary, package) in [("/usr/sbin/nginx", "nginx-light"), ("/usr/lib/nginx/modules/ngx_nchan_module.so", "libnginx-mod-nchan")] {
        assert!(std::path::Path::new(binary).exists(), "{binary} missing: apt-get install {package}");
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let template = include_str!("../nchan.conf");
    let config = template.replace("PORT", &port.to_string()).replace("PREFIX", &dir.path().display().to_string());
    let config_file = dir.path().join("nginx.conf");
    std::fs::write(&config_file, config).unwrap();
    let child = Command::new("/usr/sbin/nginx")
        .args(["-p", &dir.path().display().to_string(), "-c", &config_file.display().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port, Duration::from_secs(10));
    Server { kind: Kind::Nchan, name: "nginx+nchan".into(), port, child, _dir: dir }
}

/// A keep-alive HTTP/1.1 client connection.
struct Connection {
    reader: BufReader<TcpStream>,
}

impl Connection {
    async fn open(port: u16) -> std::io::Result<Connection> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        Ok(Connection { reader: BufReader::with_capacity(4096, stream) })
    }

    async fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> std::io::Result<(u16, String)> {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {}\r\n", body.len());
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        self.reader.get_mut().write_all(request.as_bytes()).await?;
        let (status, length) = self.head().await?;
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).await?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// Reads a response head: the status and Content-Length.
    async fn head(&mut self) -> std::io::Result<(u16, usize)> {
        let mut line = String::new();
        let mut status = 0;
        let mut length = 0;
        loop {
            line.clear();
            if self.reader.read_line(&mut line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if line == "\r\n" {
                return Ok((status, length));
            }
            if status == 0 {
                status = line.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
            } else if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
    }
}

/// How to publish to and subscribe to one tenant (broker) or channel (nchan).
#[derive(Clone)]
struct Channel {
    kind: Kind,
    port: u16,
    name: String,
    /// Broker: the Authorization header value to use.
    auth: String,
}

impl Channel {
    async fn new(server: &Server, name: &str, basic: bool) -> Channel {
        let mut auth = String::new();
        if server.kind == Kind::Broker {
            let mut connection = Connection::open(server.port).await.unwrap();
            let body = json!({"username": name, "password": "pw", "admin_token": "bench", "tenant_name": name});
            let (status, _) = connection.request("POST", "/create_user", &[], &body.to_string()).await.unwrap();
            assert!(status == 200 || status == 400, "create_user: {status}");
            auth = if basic {
                let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{name}:pw"));
                format!("Basic {encoded}")
            } else {
                let body = json!({"username": name, "password": "pw"}).to_string();
                let (_, reply) = connection.request("POST", "/login", &[], &body).await.unwrap();
                let jwt: Value = serde_json::from_str(&reply).unwrap();
                format!("Bearer {}", jwt["jwt"].as_str().unwrap())
            };
        }
        Channel { kind: server.kind, port: server.port, name: name.to_string(), auth }
    }

    async fn publish(&self, connection: &mut Connection, data: &str) -> bool {
        let result = match self.kind {
            Kind::Broker => {
                let body = format!(r#"{{"event":"bench","data":{data}}}"#);
                connection.request("POST", "/insert", &[("Authorization", &self.auth), ("Content-Type", "application/json")], &body).await
            }
            Kind::Nchan => {
                let path = format!("/pub?id={}", self.name);
                connection.request("POST", &path, &[("Content-Type", "application/json")], data).await
            }
        };
        matches!(result, Ok((status, _)) if (200..300).contains(&status))
    }

    /// Opens a stream and returns it once the response head has arrived.
    async fn subscribe(&self) -> std::io::Result<BufReader<TcpStream>> {
        self.subscribe_after(None).await
    }

    /// As `subscribe`, resuming after an event id (broker's Last-Event-ID).
    async fn subscribe_after(&self, last: Option<u64>) -> std::io::Result<BufReader<TcpStream>> {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).await?;
        let mut reader = BufReader::with_capacity(1024, stream);
        let resume = last.map(|id| format!("Last-Event-ID: {id}\r\n")).unwrap_or_default();
        let request = match self.kind {
            Kind::Broker => format!("GET /sse HTTP/1.1\r\nHost: bench\r\nAuthorization: {}\r\n{resume}\r\n", self.auth),
            Kind::Nchan => format!("GET /sub?id={} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n", self.name),
        };
        reader.get_mut().write_all(request.as_bytes()).await?;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if line == "\r\n" {
                return Ok(reader);
            }
        }
    }
}

/// Reads a stream until it ends, calling `on_stamp` with the `"t":<ns>` value
/// of every event data line.
async fn read_events(mut reader: BufReader<TcpStream>, mut on_stamp: impl FnMut(u64)) {
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if let Some(at) = line.windows(4).position(|window| window == b"\"t\":") {
            let digits: Vec<u8> = line[at + 4..].iter().copied().take_while(u8::is_ascii_digit).collect();
            if let Ok(stamp) = std::str::from_utf8(&digits).unwrap_or("").parse() {
                on_stamp(stamp);
            }
        }
    }
}

/// A subscriber as a real client behaves: when the server ends its stream
/// (it fell too far behind), it reconnects with Last-Event-ID and goes on.
/// Counts every event delivered, and the reconnections.
async fn follow(channel: Channel, deliveries: Arc<AtomicU64>, reconnects: Arc<AtomicU64>) {
    let mut last = None;
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let Ok(reader) = channel.subscribe_after(last).await else { return };
        // Whatever the head read buffered is re-scanned with the socket data.
        let pending = reader.buffer().to_vec();
        let mut stream = reader.into_inner();
        // Scanned in big reads, keeping a short tail so a field split between
        // two reads is still seen once: the load generator must stay cheap.
        let mut tail = pending;
        loop {
            let read = match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            let mut window = std::mem::take(&mut tail);
            let fresh_from = window.len();
            window.extend_from_slice(&buffer[..read]);
            let mut at = 0;
            while let Some(offset) = window[at..].iter().position(|byte| *byte == b'\n') {
                let start = at;
                at += offset + 1;
                let line = &window[start..at];
                if at <= fresh_from {
                    continue;
                }
                if let Some(id) = line.strip_prefix(b"id:") {
                    last = std::str::from_utf8(id).ok().and_then(|id| id.trim().parse().ok()).or(last);
                } else if line.starts_with(b"data:") {
                    deliveries.fetch_add(1, Relaxed);
                }
            }
            tail = window[at..].to_vec();
        }
        reconnects.fetch_add(1, Relaxed);
    }
}

fn percentile(sorted: &[u64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index] as f64 / 1e6
}

/// Collected results: scenario → server → value, for the final table.
#[derive(Default)]
struct Results {
    rows: BTreeMap<String, BTreeMap<String, String>>,
}

impl Results {
    fn record(&mut self, server: &str, line: Value) {
        println!("{line}");
        let scenario = line["scenario"].as_str().unwrap_or("?");
        let add = |rows: &mut BTreeMap<String, BTreeMap<String, String>>, name: String, value: String| {
            rows.entry(name).or_default().insert(server.to_string(), value);
        };
        match scenario {
            "fanout" => {
                let n = line["subscribers"].as_u64().unwrap_or(0);
                add(&mut self.rows, format!("1 fan-out N={n:>4}: delivered"), format!("{:.1} %", line["delivered_pct"].as_f64().unwrap_or(0.0)));
                add(&mut self.rows, format!("2 fan-out N={n:>4}: p50 / p99"), format!("{:.2} / {:.2} ms", line["p50_ms"].as_f64().unwrap_or(f64::NAN), line["p99_ms"].as_f64().unwrap_or(f64::NAN)));
            }
            "rate" => {
                let rate = line["rate"].as_u64().unwrap_or(0);
                let n = line["subscribers"].as_u64().unwrap_or(0);
                add(&mut self.rows, format!("2 rate {rate}/s, N={n}: delivered"), format!("{:.1} %", line["delivered_pct"].as_f64().unwrap_or(0.0)));
                add(&mut self.rows, format!("2 rate {rate}/s, N={n}: p50 / p99"), format!("{:.2} / {:.2} ms", line["p50_ms"].as_f64().unwrap_or(f64::NAN), line["p99_ms"].as_f64().unwrap_or(f64::NAN)));
            }
            "idle" => {
                add(&mut self.rows, "3 idle: RSS per stream (10 000)".into(), format!("{:.1} KiB", line["rss_per_stream_kib"].as_f64().unwrap_or(0.0)));
                add(&mut self.rows, "4 idle: server CPU over 10 s".into(), format!("{:.3} s", line["cpu_seconds"].as_f64().unwrap_or(0.0)));
                add(&mut self.rows, "5 idle RSS of a fresh server".into(), format!("{:.1} MiB", line["fresh_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0));
            }
            "insert" => {
                let label = line["label"].as_str().unwrap_or("?");
                let mut value = format!("{:.0} req/s", line["requests_per_second"].as_f64().unwrap_or(0.0));
                if let Some(deliveries) = line["deliveries_per_second"].as_f64() {
                    value.push_str(&format!("; {deliveries:.0} deliveries/s"));
                }
                add(&mut self.rows, format!("6 insert: {label}"), value);
            }
            "startup" => {
                add(&mut self.rows, format!("7 start-up with {} events", line["events"]), format!("{:.0} ms", line["startup_ms"].as_f64().unwrap_or(0.0)));
                add(&mut self.rows, "8 bulk insert rate (startup setup)".into(), format!("{:.0} req/s", line["insert_rate"].as_f64().unwrap_or(0.0)));
            }
            _ => {}
        }
    }

    fn table(&self, servers: &[String]) {
        println!("\n| figure | {} |", servers.join(" | "));
        println!("|---|{}|", servers.iter().map(|_| "---").collect::<Vec<_>>().join("|"));
        for (name, values) in &self.rows {
            let cells: Vec<String> = servers.iter().map(|server| values.get(server).cloned().unwrap_or("—".into())).collect();
            println!("| {} | {} |", &name[2..], cells.join(" | "));
        }
    }
}

async fn fanout(server: &Server, subscribers: usize) -> Value {
    let mut line = deliver(server, &format!("fanout{subscribers}"), subscribers, EVENTS, RATE, 1).await;
    line["scenario"] = json!("fanout");
    line
}

/// A fixed insert rate with live subscribers: every event should reach every
/// subscriber, and the latency from publishing to receipt stays low.
async fn rate(server: &Server, per_second: u64, subscribers: usize) -> Value {
    let events = per_second * 5;
    let mut line = deliver(server, &format!("rate{per_second}"), subscribers, events, per_second, 8).await;
    line["scenario"] = json!("rate");
    line["rate"] = json!(per_second);
    line
}

/// `subscribers` streams of one tenant/channel; `events` events published at
/// `per_second` in total over `publishers` connections, each stamped with its
/// send time; delivery ratio and latency percentiles.
async fn deliver(server: &Server, name: &str, subscribers: usize, events: u64, per_second: u64, publishers: u64) -> Value {
    let channel = Channel::new(server, name, false).await;
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(subscribers * events as usize)));
    let delivered = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..subscribers {
        let reader = channel.subscribe().await.expect("subscribe");
        let (latencies, delivered) = (latencies.clone(), delivered.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::with_capacity(events as usize);
            read_events(reader, |stamp| {
                mine.push(now_ns().saturating_sub(stamp));
                if mine.len() as u64 == events {
                    latencies.lock().unwrap().extend(mine.drain(..));
                }
                delivered.fetch_add(1, Relaxed);
            })
            .await;
            latencies.lock().unwrap().extend(mine);
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let mut senders = Vec::new();
    for publisher in 0..publishers {
        let channel = channel.clone();
        senders.push(tokio::spawn(async move {
            let mut connection = Connection::open(channel.port).await.unwrap();
            for sequence in (publisher..events).step_by(publishers as usize) {
                let due = started + Duration::from_nanos(sequence * 1_000_000_000 / per_second);
                tokio::time::sleep_until(due.into()).await;
                let data = format!(r#"{{"t":{},"seq":{sequence}}}"#, now_ns());
                // A server may close a keep-alive connection (nginx does after
                // 1 000 requests): open another and publish again.
                if !channel.publish(&mut connection, &data).await {
                    connection = Connection::open(channel.port).await.unwrap();
                    assert!(channel.publish(&mut connection, &data).await, "publish failed");
                }
            }
        }));
    }
    for sender in senders {
        sender.await.unwrap();
    }
    let published_in = started.elapsed().as_secs_f64();
    let expected = subscribers as u64 * events;
    let deadline = Instant::now() + Duration::from_secs(3);
    while delivered.load(Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        let _ = task.await;
    }
    let mut all = std::mem::take(&mut *latencies.lock().unwrap());
    all.sort_unstable();
    let count = delivered.load(Relaxed);
    json!({
        "server": server.name, "subscribers": subscribers, "events": events,
        "published_per_second": events as f64 / published_in,
        "delivered_pct": 100.0 * count as f64 / expected as f64,
        "p50_ms": percentile(&all, 0.50), "p99_ms": percentile(&all, 0.99), "max_ms": percentile(&all, 1.0),
    })
}

async fn idle(server: &Server, streams: usize) -> Value {
    let fresh = server.rss_kib();
    let channel = Channel::new(server, "idle", false).await;
    let before = server.rss_kib();
    let open = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(streams);
    let gate = Arc::new(tokio::sync::Semaphore::new(256));
    for _ in 0..streams {
        let (channel, open, gate) = (channel.clone(), open.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.unwrap();
            let Ok(mut reader) = channel.subscribe().await else { return };
            drop(permit);
            open.fetch_add(1, Relaxed);
            let mut sink = [0u8; 64];
            while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while open.load(Relaxed) < streams && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server.rss_kib();
    let cpu_before = server.cpu_seconds();
    tokio::time::sleep(WINDOW).await;
    let cpu = server.cpu_seconds() - cpu_before;
    let opened = open.load(Relaxed);
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        let _ = task.await;
    }
    json!({
        "scenario": "idle", "server": server.name, "streams": opened,
        "fresh_rss_kib": fresh, "rss_before_kib": before, "rss_after_kib": after,
        "rss_per_stream_kib": (after.saturating_sub(before)) as f64 / opened.max(1) as f64,
        "cpu_seconds": cpu,
    })
}

async fn insert(server: &Server, label: &str, basic: bool, subscribers: usize) -> Value {
    let channel = Channel::new(server, &format!("insert{}{subscribers}", if basic { "basic" } else { "jwt" }), basic).await;
    let deliveries = Arc::new(AtomicU64::new(0));
    let reconnects = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..subscribers {
        readers.push(tokio::spawn(follow(channel.clone(), deliveries.clone(), reconnects.clone())));
    }
    // Warm the credential cache and the tenant, outside the window.
    let mut warm = Connection::open(server.port).await.unwrap();
    assert!(channel.publish(&mut warm, r#"{"t":0}"#).await, "publish failed");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let delivered_before = deliveries.load(Relaxed);
    let started = Instant::now();
    let end = started + WINDOW;
    let mut workers = Vec::new();
    for _ in 0..CONNECTIONS {
        let (channel, done, failed) = (channel.clone(), done.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            let mut connection = Connection::open(channel.port).await.unwrap();
            let data = r#"{"t":1,"payload":"0123456789abcdef"}"#;
            while Instant::now() < end {
                if channel.publish(&mut connection, data).await {
                    done.fetch_add(1, Relaxed);
                } else {
                    failed.fetch_add(1, Relaxed);
                    connection = Connection::open(channel.port).await.unwrap();
                }
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered = deliveries.load(Relaxed) - delivered_before;
    for reader in readers {
        reader.abort();
    }
    let mut line = json!({
        "scenario": "insert", "server": server.name, "label": label, "connections": CONNECTIONS,
        "subscribers": subscribers, "requests": done.load(Relaxed), "failed": failed.load(Relaxed),
        "requests_per_second": done.load(Relaxed) as f64 / elapsed,
    });
    if subscribers > 0 {
        line["deliveries_per_second"] = json!(delivered as f64 / elapsed);
        line["reconnects"] = json!(reconnects.load(Relaxed));
    }
    line
}

/// Fills a database with `total` events across 100 tenants, restarts the
/// broker on it and times spawn → first answered request.
async fn startup(binary: &str, total: u64) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let (server, _) = tokio::task::block_in_place(|| start_broker(binary, Some(&db)));
    let tenants = 100;
    let mut channels = Vec::new();
    for tenant in 0..tenants {
        channels.push(Channel::new(&server, &format!("startup{tenant}"), false).await);
    }
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..CONNECTIONS {
        let (channels, next) = (channels.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut connection = Connection::open(channels[0].port).await.unwrap();
            loop {
                let index = next.fetch_add(1, Relaxed);
                if index >= total {
                    break;
                }
                let channel = &channels[(index % tenants as u64) as usize];
                while !channel.publish(&mut connection, &format!(r#"{{"n":{index},"name":"event {index}"}}"#)).await {
                    connection = Connection::open(channel.port).await.unwrap();
                }
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
    let insert_rate = total as f64 / started.elapsed().as_secs_f64();
    let stopping = Instant::now();
    server.stop();
    let shutdown_ms = stopping.elapsed().as_secs_f64() * 1000.0;
    if std::env::var("BENCH_KEEP_DB").is_ok() {
        let _ = std::process::Command::new("cp").args(["-r", &db.display().to_string(), "/tmp/bench-db"]).status();
    }
    let (server, took) = tokio::task::block_in_place(|| start_broker(binary, Some(&db)));
    let rss = server.rss_kib();
    // The ids were recovered: the next insert in a tenant continues its count.
    let mut connection = Connection::open(server.port).await.unwrap();
    let channel = Channel::new(&server, "startup0", false).await;
    let body = r#"{"event":"after","data":1}"#;
    let (_, reply) = connection.request("POST", "/insert", &[("Authorization", &channel.auth)], body).await.unwrap();
    server.stop();
    json!({
        "scenario": "startup", "server": "broker", "events": total, "tenants": tenants,
        "startup_ms": took.as_secs_f64() * 1000.0, "rss_after_start_kib": rss, "shutdown_ms": shutdown_ms,
        "insert_rate": insert_rate, "next_id_in_tenant_0": serde_json::from_str::<Value>(&reply).ok().map(|v| v["id"].clone()),
    })
}

fn raise_fd_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().position(|arg| arg == name).and_then(|at| args.get(at + 1)).cloned();
    let binary = flag("--broker").unwrap_or("target/release/broker".into());
    let only = flag("--only").unwrap_or("fanout,rate,idle,insert,startup".into());
    let startup_events: u64 = flag("--events-for-startup").and_then(|n| n.parse().ok()).unwrap_or(1_000_000);
    let with_nchan = args.iter().any(|arg| arg == "--with-nchan");
    raise_fd_limit();
    now_ns();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut results = Results::default();
    let mut names = vec!["broker".to_string()];
    if with_nchan {
        names.push("nginx+nchan".to_string());
    }
    for name in &names {
        let server = if name == "broker" { start_broker(&binary, None).0 } else { start_nchan() };
        runtime.block_on(async {
            if only.contains("idle") {
                results.record(name, idle(&server, IDLE_STREAMS).await);
            }
            if only.contains("fanout") {
                for subscribers in [1, 100, 1000] {
                    results.record(name, fanout(&server, subscribers).await);
                }
            }
            if only.contains("rate") {
                results.record(name, rate(&server, 4000, 100).await);
            }
            if only.contains("insert") {
                let label = if server.kind == Kind::Broker { "JWT, 64 connections" } else { "publish, 64 connections" };
                results.record(name, insert(&server, label, false, 0).await);
                let label = if server.kind == Kind::Broker { "JWT, 100 subscribers" } else { "publish, 100 subscribers" };
                results.record(name, insert(&server, label, false, 100).await);
                if server.kind == Kind::Broker {
                    results.record(name, insert(&server, "HTTP Basic, 64 connections", true, 0).await);
                }
            }
        });
        server.stop();
    }
    if only.contains("startup") {
        let line = runtime.block_on(startup(&binary, startup_events));
        results.record("broker", line);
    }
    results.table(&names);
}
