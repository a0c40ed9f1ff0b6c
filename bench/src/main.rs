//! Broker's benchmark: starts a release build of the broker (and, with
//! `--with-nchan`, nginx + nchan) on loopback and measures, side by side:
//!
//! - `fanout`: N subscribers in one tenant/channel; E=200 events at 50/s, each
//!   stamped with its send time; delivery ratio and latency percentiles.
//! - `rate`: 4 000 inserts/s for 5 s over 8 connections with 100 subscribers;
//!   delivery ratio and latency percentiles.
//! - `idle`: 10 000 idle streams; RSS per stream and server CPU over 10 s.
//! - `idle-tls`, `idle-h2`: the same over HTTPS, on a broker of their own
//!   serving TLS (`--secure`) with a self-signed localhost certificate made
//!   here: each stream on a TLS connection of its own offering only
//!   `http/1.1` (`idle-tls`); streams on HTTP/2 connections (`idle-h2`), one
//!   per connection (10 000 connections, as one browser tab per user) and
//!   32 per connection (313 connections; Broker allows 32 at once). Not in
//!   the default run: each shape starts a broker of its own and 10 000 TLS
//!   handshakes, which would add about a minute per binary to it; ask for
//!   them with `--only idle-tls,idle-h2`.
//! - `insert`: closed-loop inserts (publishes) over 64 keep-alive connections
//!   for 10 s, with JWT and with Basic, and with 100 live subscribers; first
//!   against "bare hyper" (src/bin/ceiling.rs: Broker's HTTP stack and
//!   connection settings answering `{"id":N}` after reading the body, and
//!   nothing else), so that every insert figure of the run is also a share
//!   of that ceiling (`share_of_ceiling`).
//! - `startup`: time from spawn to serving with 1 000 000 stored events in
//!   100 tenants, and idle RSS of a fresh server.
//! - `logins`: RSS before and 5 s after a burst of 50 parallel logins
//!   (Argon2 takes 19 MiB each: is it given back?).
//! - `many`: `--streams N` streams (default 100 000) in one tenant, and the
//!   same N spread over `--tenants T` (default 10 000): RSS per stream,
//!   events delivered, fan-out latency from insert to the last subscriber,
//!   and server CPU over 10 s with every stream idle and a keep-alive round
//!   in the window. Client sockets come from 127.R.0.1, 127.R.1.1 … (20 000
//!   each, R a new number for each run), so N may pass the 64k ports of one
//!   address; the file limits must allow N descriptors in the server and in
//!   this process (N is lowered to fit, and the output says so).
//!
//! With `--static PATH`, every broker scenario also runs against that
//! binary (the static musl build users deploy), reported as "broker static".
//!
//! RSS and CPU come from /proc/<pid> of the server's processes. Prints one JSON
//! line per measurement and a Markdown table at the end.
//!
//! Usage: broker-bench [--broker PATH] [--static PATH] [--ceiling PATH] [--with-nchan]
//!                     [--only fanout,rate,idle,insert,startup,logins,many,idle-tls,idle-h2]
//!                     [--events-for-startup N] [--streams N] [--tenants T]
//!                     [--idle-streams N]
//!
//! `--only` takes the scenarios' exact names (default: all but `idle-tls` and
//! `idle-h2`); `--idle-streams` (default 10 000) sets the streams of the
//! three idle scenarios, smaller for a quick check that they work.

use base64::Engine;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::rustls::client::Resumption;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::{TlsConnector, client::TlsStream};

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
    /// bare hyper with Broker's connection settings (src/bin/ceiling.rs):
    /// what an insert could cost at best on this stack.
    Ceiling,
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

/// A port free on every address: the many-streams scenario leaves thousands
/// of client ports of 127.0.1.x closing, and a server binds `[::]`.
fn free_port() -> u16 {
    std::net::TcpListener::bind("[::]:0").unwrap().local_addr().unwrap().port()
}

fn wait_port(port: u16, limit: Duration) -> Duration {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < limit, "server on port {port} did not start");
        std::thread::sleep(Duration::from_micros(500));
    }
    started.elapsed()
}

fn start_broker(binary: &str, name: &str, db: Option<&std::path::Path>, extra: &[&str]) -> (Server, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let db = db.map(|db| db.to_path_buf()).unwrap_or(dir.path().join("db"));
    let port = free_port();
    let started = Instant::now();
    let child = Command::new(binary)
        .args(["--ntp_servers=", "--admin_token=bench", "--jwt_secret=bench-secret"])
        // The benchmark's users open thousands of streams each.
        .args(["--max_streams=1000000", "--login_limit=1000000"])
        .args(extra)
        .arg(format!("--port={port}"))
        .arg(format!("--db={}", db.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("broker binary");
    let server = Server { kind: Kind::Broker, name: name.into(), port, child, _dir: dir };
    // Serving means answering a request, not just accepting connections
    // (over TLS, the first request waits for it instead).
    wait_port(port, Duration::from_secs(30));
    while !extra.contains(&"--secure") && !healthy(port) {
        std::thread::sleep(Duration::from_micros(500));
    }
    (server, started.elapsed())
}

/// The ceiling server, on a port of its own.
fn start_ceiling(binary: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new(binary).arg("--port").arg(port.to_string()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("ceiling binary");
    let server = Server { kind: Kind::Ceiling, name: "bare hyper".into(), port, child, _dir: dir };
    wait_port(port, Duration::from_secs(30));
    server
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

fn start_nchan(ping_seconds: u64, connections: usize) -> Server {
    for (binary, package) in [("/usr/sbin/nginx", "nginx-light"), ("/usr/lib/nginx/modules/ngx_nchan_module.so", "libnginx-mod-nchan")] {
        assert!(std::path::Path::new(binary).exists(), "{binary} missing: apt-get install {package}");
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let template = include_str!("../nchan.conf");
    let config = template.replace("PORT", &port.to_string()).replace("PREFIX", &dir.path().display().to_string());
    let config = config.replace("PING", &ping_seconds.to_string()).replace("CONNECTIONS", &connections.to_string());
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

/// The HTTPS scenarios' certificate: self-signed for localhost, written
/// where the broker's `--key_path` and `--cert_path` read it, and the one
/// root the benchmark's TLS clients trust.
struct Tls {
    dir: tempfile::TempDir,
    roots: Arc<RootCertStore>,
}

impl Tls {
    fn new() -> Tls {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key.pem"), certified.key_pair.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), certified.cert.pem()).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(certified.cert.der().clone()).unwrap();
        Tls { dir, roots: Arc::new(roots) }
    }

    /// The broker's flags to serve HTTPS, and only HTTPS, with it.
    fn flags(&self) -> Vec<String> {
        let path = |file: &str| self.dir.path().join(file).display().to_string();
        let (key, cert) = (path("key.pem"), path("cert.pem"));
        vec!["--secure".into(), "--auto_cert=false".into(), format!("--key_path={key}"), format!("--cert_path={cert}")]
    }

    /// A client offering only `protocol` by ALPN; each of its connections a
    /// full handshake (no session resumption), as a new visitor's.
    fn connector(&self, protocol: &[u8]) -> TlsConnector {
        let config = ClientConfig::builder().with_root_certificates(self.roots.clone());
        let mut config = config.with_no_client_auth();
        config.alpn_protocols = vec![protocol.to_vec()];
        config.resumption = Resumption::disabled();
        TlsConnector::from(Arc::new(config))
    }
}

/// A TLS connection to localhost's `port`, its handshake done.
async fn connect_tls(connector: &TlsConnector, port: u16) -> std::io::Result<TlsStream<TcpStream>> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    connector.connect(ServerName::try_from("localhost").unwrap(), stream).await
}

/// A POST on an HTTPS/1.1 connection of its own (`Connection: close`): the
/// status and the body.
async fn request_tls(connector: &TlsConnector, port: u16, path: &str, body: &str) -> (u16, String) {
    let mut stream = connect_tls(connector, port).await.unwrap();
    let request = format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    // The reply is all there is until the server closes (with or without
    // TLS's close_notify).
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply).await;
    let reply = String::from_utf8_lossy(&reply);
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    (status, body.to_string())
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

    /// As `new` with a JWT, over HTTPS/1.1: for a broker serving TLS only.
    async fn new_tls(server: &Server, connector: &TlsConnector, name: &str) -> Channel {
        let body = json!({"username": name, "password": "pw", "admin_token": "bench", "tenant_name": name});
        let (status, _) = request_tls(connector, server.port, "/create_user", &body.to_string()).await;
        assert!(status == 200 || status == 400, "create_user: {status}");
        let body = json!({"username": name, "password": "pw"}).to_string();
        let (_, reply) = request_tls(connector, server.port, "/login", &body).await;
        let jwt: Value = serde_json::from_str(&reply).unwrap();
        let auth = format!("Bearer {}", jwt["jwt"].as_str().unwrap());
        Channel { kind: server.kind, port: server.port, name: name.to_string(), auth }
    }

    async fn publish(&self, connection: &mut Connection, data: &str) -> bool {
        let result = match self.kind {
            Kind::Broker | Kind::Ceiling => {
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
            Kind::Ceiling => unreachable!("the ceiling serves no streams"),
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
    /// The ceiling's requests per second in this run, measured first, so
    /// every later insert figure is also a share of it.
    ceiling: Option<f64>,
}

impl Results {
    fn record(&mut self, server: &str, mut line: Value) {
        if line["scenario"] == "insert" && line["subscribers"] == 0 {
            let rate = line["requests_per_second"].as_f64().unwrap_or(0.0);
            match self.ceiling {
                None if server == "bare hyper" => self.ceiling = Some(rate),
                Some(ceiling) => line["share_of_ceiling"] = json!(rate / ceiling),
                None => {}
            }
        }
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
                add(&mut self.rows, format!("3 idle: RSS per stream ({})", line["streams"]), format!("{:.1} KiB", line["rss_per_stream_kib"].as_f64().unwrap_or(0.0)));
                add(&mut self.rows, "4 idle: server CPU over 10 s".into(), format!("{:.3} s", line["cpu_seconds"].as_f64().unwrap_or(0.0)));
                add(&mut self.rows, "5 idle RSS of a fresh server".into(), format!("{:.1} MiB", line["fresh_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0));
                add(&mut self.rows, "5 RSS after one login, before streams".into(), format!("{:.1} MiB", line["rss_before_kib"].as_f64().unwrap_or(0.0) / 1024.0));
            }
            "idle-tls" | "idle-h2" => {
                let label = line["label"].as_str().unwrap_or("?");
                add(&mut self.rows, format!("3 idle {label}: RSS per stream ({})", line["streams"]), format!("{:.1} KiB", line["rss_per_stream_kib"].as_f64().unwrap_or(0.0)));
                add(&mut self.rows, format!("4 idle {label}: server CPU over 10 s"), format!("{:.3} s", line["cpu_seconds"].as_f64().unwrap_or(0.0)));
            }
            "insert" => {
                let label = line["label"].as_str().unwrap_or("?");
                let mut value = format!("{:.0} req/s", line["requests_per_second"].as_f64().unwrap_or(0.0));
                if let Some(deliveries) = line["deliveries_per_second"].as_f64() {
                    value.push_str(&format!("; {deliveries:.0} deliveries/s"));
                }
                if let Some(share) = line["share_of_ceiling"].as_f64() {
                    value.push_str(&format!(" ({share:.2} × bare hyper)"));
                }
                add(&mut self.rows, format!("6 insert: {label}"), value);
            }
            "logins" => {
                let mib = |field: &str| line[field].as_f64().unwrap_or(0.0) / 1024.0;
                add(&mut self.rows, "9 RSS idle / peak / 5 s after 50 logins".into(), format!("{:.1} / {:.1} / {:.1} MiB", mib("rss_idle_kib"), mib("rss_peak_kib"), mib("rss_5s_after_kib")));
            }
            "many" => {
                let (n, t) = (line["streams"].as_u64().unwrap_or(0), line["tenants"].as_u64().unwrap_or(0));
                let shape = format!("{n} streams, {t} tenant{}", if t == 1 { "" } else { "s" });
                add(&mut self.rows, format!("A {shape}: open"), format!("{}", line["opened"]));
                add(&mut self.rows, format!("B {shape}: RSS per stream (growth / whole RSS)"), format!("{:.2} / {:.2} KiB", line["rss_per_stream_kib"].as_f64().unwrap_or(0.0), line["rss_total_per_stream_kib"].as_f64().unwrap_or(0.0)));
                add(&mut self.rows, format!("C {shape}: delivered"), format!("{:.2} %", line["delivered_pct"].as_f64().unwrap_or(0.0)));
                add(&mut self.rows, format!("D {shape}: to the last, p50 / p99"), format!("{:.1} / {:.1} ms", line["p50_ms"].as_f64().unwrap_or(f64::NAN), line["p99_ms"].as_f64().unwrap_or(f64::NAN)));
                add(&mut self.rows, format!("E {shape}: idle CPU over 10 s"), format!("{:.2} s", line["idle_cpu_seconds"].as_f64().unwrap_or(0.0)));
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

/// How the idle scenarios' streams reach the broker.
#[derive(Clone, Copy, PartialEq)]
enum Transport {
    /// Plain HTTP/1.1, a connection per stream (`idle`).
    Http,
    /// HTTPS/1.1, a TLS connection per stream offering only http/1.1
    /// (`idle-tls`).
    Https,
    /// HTTP/2 over TLS, this many streams per connection (`idle-h2`).
    H2(usize),
}

impl Transport {
    fn scenario(self) -> &'static str {
        match self {
            Transport::Http => "idle",
            Transport::Https => "idle-tls",
            Transport::H2(_) => "idle-h2",
        }
    }

    fn label(self) -> String {
        match self {
            Transport::Http => "HTTP/1.1".into(),
            Transport::Https => "HTTPS/1.1".into(),
            Transport::H2(1) => "HTTP/2, 1 stream per connection".into(),
            Transport::H2(n) => format!("HTTP/2, {n} streams per connection"),
        }
    }

    fn per_connection(self) -> usize {
        if let Transport::H2(n) = self { n } else { 1 }
    }
}

/// `streams` idle streams: RSS per stream and server CPU over 10 s. Over TLS
/// (`tls` given: the broker serves HTTPS only), the user is created and logs
/// in over HTTPS/1.1 too.
async fn idle(server: &Server, streams: usize, transport: Transport, tls: Option<&Tls>) -> Value {
    let fresh = server.rss_kib();
    let channel = match tls {
        None => Channel::new(server, "idle", false).await,
        Some(tls) => Channel::new_tls(server, &tls.connector(b"http/1.1"), "idle").await,
    };
    let before = server.rss_kib();
    let protocol: &[u8] = if transport == Transport::Https { b"http/1.1" } else { b"h2" };
    let connector = tls.map(|tls| tls.connector(protocol));
    let open = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(streams);
    // At most 256 connections opening at once, each until its last stream
    // has its response head.
    let gate = Arc::new(tokio::sync::Semaphore::new(256));
    let per_connection = transport.per_connection();
    for first in (0..streams).step_by(per_connection) {
        let count = per_connection.min(streams - first);
        let (channel, connector, open, failed, gate) = (channel.clone(), connector.clone(), open.clone(), failed.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let mut permit = Some(gate.acquire_owned().await.unwrap());
            let mut mine = 0;
            let held = hold_idle(&channel, transport, connector.as_ref(), count, || {
                mine += 1;
                open.fetch_add(1, Relaxed);
                if mine == count {
                    drop(permit.take());
                }
            })
            .await;
            if mine < count {
                if failed.fetch_add(count - mine, Relaxed) < 5 {
                    eprintln!("{}: streams failed to open: {held:?}", transport.scenario());
                }
            }
        }));
    }
    // 10 000 TLS handshakes on a busy machine may take a while.
    let opening = Instant::now();
    let deadline = opening + Duration::from_secs(300);
    while open.load(Relaxed) + failed.load(Relaxed) < streams && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("{} ({}): {} of {streams} streams open in {:?}", transport.scenario(), transport.label(), open.load(Relaxed), opening.elapsed());
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
    let mut line = json!({
        "scenario": "idle", "server": server.name, "streams": opened,
        "fresh_rss_kib": fresh, "rss_before_kib": before, "rss_after_kib": after,
        "rss_per_stream_kib": (after.saturating_sub(before)) as f64 / opened.max(1) as f64,
        "cpu_seconds": cpu,
    });
    if transport != Transport::Http {
        line["scenario"] = json!(transport.scenario());
        line["label"] = json!(transport.label());
        line["connections"] = json!(streams.div_ceil(per_connection));
        line["streams_per_connection"] = json!(per_connection);
        line["failed"] = json!(failed.load(Relaxed));
    }
    line
}

/// Opens `count` streams on one connection (one stream unless HTTP/2),
/// calling `opened` as each one's response head arrives, then reads them
/// until the server ends them.
async fn hold_idle(channel: &Channel, transport: Transport, connector: Option<&TlsConnector>, count: usize, mut opened: impl FnMut()) -> std::io::Result<()> {
    let mut sink = [0u8; 64];
    match transport {
        Transport::Http => {
            let mut reader = channel.subscribe().await?;
            opened();
            while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
        }
        Transport::Https => {
            let mut stream = connect_tls(connector.unwrap(), channel.port).await?;
            let request = format!("GET /sse HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\n\r\n", channel.auth);
            stream.write_all(request.as_bytes()).await?;
            stream.flush().await?;
            let mut reader = BufReader::with_capacity(1024, stream);
            let mut line = String::new();
            reader.read_line(&mut line).await?;
            if !line.starts_with("HTTP/1.1 200") {
                return Err(std::io::Error::other(format!("answered {line:?}")));
            }
            while line != "\r\n" {
                line.clear();
                if reader.read_line(&mut line).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            opened();
            while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
        }
        Transport::H2(_) => {
            let stream = connect_tls(connector.unwrap(), channel.port).await?;
            if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(std::io::Error::other("the broker did not choose h2"));
            }
            let (mut send, connection) = h2::client::handshake(stream).await.map_err(std::io::Error::other)?;
            // The connection and each stream's body are read by tasks of
            // this set; dropping it (the task aborted) aborts them.
            let mut readers = tokio::task::JoinSet::new();
            readers.spawn(async move {
                let _ = connection.await;
            });
            let uri = format!("https://localhost:{}/sse", channel.port);
            for _ in 0..count {
                let request = http::Request::get(&uri).header("authorization", &channel.auth).body(()).unwrap();
                send = send.ready().await.map_err(std::io::Error::other)?;
                let (response, _) = send.send_request(request, true).map_err(std::io::Error::other)?;
                let response = response.await.map_err(std::io::Error::other)?;
                if response.status() != 200 {
                    return Err(std::io::Error::other(format!("answered {}", response.status())));
                }
                opened();
                let mut body = response.into_body();
                readers.spawn(async move {
                    while let Some(Ok(data)) = body.data().await {
                        let _ = body.flow_control().release_capacity(data.len());
                    }
                });
            }
            while readers.join_next().await.is_some() {}
        }
    }
    Ok(())
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
async fn startup(binary: &str, name: &str, total: u64) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let (server, _) = tokio::task::block_in_place(|| start_broker(binary, name, Some(&db), &[]));
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
    let (server, took) = tokio::task::block_in_place(|| start_broker(binary, name, Some(&db), &[]));
    let rss = server.rss_kib();
    // The ids were recovered: the next insert in a tenant continues its count.
    let mut connection = Connection::open(server.port).await.unwrap();
    let channel = Channel::new(&server, "startup0", false).await;
    let body = r#"{"event":"after","data":1}"#;
    let (_, reply) = connection.request("POST", "/insert", &[("Authorization", &channel.auth)], body).await.unwrap();
    server.stop();
    json!({
        "scenario": "startup", "server": name, "events": total, "tenants": tenants,
        "startup_ms": took.as_secs_f64() * 1000.0, "rss_after_start_kib": rss, "shutdown_ms": shutdown_ms,
        "insert_rate": insert_rate, "next_id_in_tenant_0": serde_json::from_str::<Value>(&reply).ok().map(|v| v["id"].clone()),
    })
}

/// RSS before and 5 s after 50 parallel logins: Argon2 takes 19 MiB per
/// hash, and a server that keeps it grows with every burst.
async fn logins(server: &Server) -> Value {
    let channel = Channel::new(server, "logins", false).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = server.rss_kib();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let port = channel.port;
        tasks.push(tokio::spawn(async move {
            let mut connection = Connection::open(port).await.unwrap();
            let body = r#"{"username":"logins","password":"wrong"}"#;
            connection.request("POST", "/login", &[], body).await.map(|(status, _)| status).unwrap_or(0)
        }));
    }
    let mut peak = idle;
    while !tasks.iter().all(|task| task.is_finished()) {
        peak = peak.max(server.rss_kib());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 401);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    json!({
        "scenario": "logins", "server": server.name, "logins": 50,
        "rss_idle_kib": idle, "rss_peak_kib": peak, "rss_5s_after_kib": server.rss_kib(),
    })
}

/// A JWT for `user`, signed with the benchmark's secret like Broker's own
/// (Broker accepts tokens without its `cred` claim): no Argon2 login needed
/// for thousands of tenants.
fn mint_jwt(user: &str) -> String {
    use hmac::Mac;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = json!({"sub": user, "iat": now, "exp": now + 86400, "iss": "Broker"});
    let signed = format!("{}.{}", engine.encode(br#"{"alg":"HS256","typ":"JWT"}"#), engine.encode(claims.to_string()));
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"bench-secret").unwrap();
    mac.update(signed.as_bytes());
    format!("Bearer {signed}.{}", engine.encode(mac.finalize().into_bytes()))
}

/// The local address the `index`th client socket of the `run`th `many`
/// comes from: 20 000 per address, so that no address runs out of ports, and
/// new addresses for each run, whose ports the last run's closing sockets
/// still hold for a minute (TIME_WAIT).
fn source_address(run: usize, index: usize) -> std::net::SocketAddr {
    let address = std::net::Ipv4Addr::new(127, 1 + run as u8, (index / 20_000) as u8, 1);
    std::net::SocketAddr::new(address.into(), 0)
}

/// `streams` streams spread over `tenants` tenants (channels), then events
/// published one tenant at a time: RSS per stream, idle CPU with keep-alives,
/// share delivered, and latency from publishing to the last subscriber.
async fn many(server: &Server, streams: usize, tenants: usize) -> Value {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let sources = RUNS.fetch_add(1, Relaxed);
    let run = now_ns();
    let names: Vec<String> = (0..tenants).map(|tenant| format!("many{run}t{tenant}")).collect();
    // Users (one per tenant) are created 32 at a time; Argon2 bounds the rate.
    let created = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let names = Arc::new(names);
    let mut workers = Vec::new();
    for _ in 0..if server.kind == Kind::Broker { 32 } else { 0 } {
        let (names, next, port) = (names.clone(), next.clone(), server.port);
        workers.push(tokio::spawn(async move {
            let mut connection = Connection::open(port).await.unwrap();
            loop {
                let index = next.fetch_add(1, Relaxed);
                let Some(name) = names.get(index) else { break };
                let body = json!({"username": name, "password": "pw", "admin_token": "bench", "tenant_name": name});
                let (status, _) = connection.request("POST", "/create_user", &[], &body.to_string()).await.unwrap();
                assert_eq!(status, 200, "create_user");
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    eprintln!("many: {tenants} tenants ready in {:?}", created.elapsed());
    let channels: Arc<Vec<Channel>> = Arc::new(names.iter().map(|name| Channel {
        kind: server.kind, port: server.port, name: name.clone(), auth: mint_jwt(name),
    }).collect());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = server.rss_kib();
    // Every event's receipts: how many, and when the last one arrived.
    let events = if tenants == 1 { 20 } else { 2000 };
    let received: Arc<Vec<AtomicU64>> = Arc::new((0..events).map(|_| AtomicU64::new(0)).collect());
    let last: Arc<Vec<AtomicU64>> = Arc::new((0..events).map(|_| AtomicU64::new(0)).collect());
    let open = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(512));
    let opening = Instant::now();
    let mut tasks = Vec::with_capacity(streams);
    for index in 0..streams {
        let channel = channels[index % tenants].clone();
        let (received, last, open, gate) = (received.clone(), last.clone(), open.clone(), gate.clone());
        let failed = failed.clone();
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.unwrap();
            let mut stream = match subscribe_from(&channel, source_address(sources, index)).await {
                Ok(stream) => stream,
                Err(error) => {
                    if failed.fetch_add(1, Relaxed) < 5 {
                        eprintln!("many: stream {index} failed to open: {error}");
                    }
                    return;
                }
            };
            drop(permit);
            open.fetch_add(1, Relaxed);
            // Lines are scanned as they come; a line cut by a read is kept
            // until its end arrives.
            let mut buffer = [0u8; 2048];
            let mut kept = 0;
            loop {
                let read = match stream.read(&mut buffer[kept..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(read) => read,
                };
                let end = kept + read;
                let mut start = 0;
                while let Some(offset) = buffer[start..end].iter().position(|byte| *byte == b'\n') {
                    let line = &buffer[start..start + offset];
                    start += offset + 1;
                    if !line.starts_with(b"data:") {
                        continue;
                    }
                    let number = |field: &[u8]| -> Option<u64> {
                        let at = line.windows(field.len()).position(|window| window == field)? + field.len();
                        let digits = line[at..].iter().take_while(|byte| byte.is_ascii_digit()).count();
                        std::str::from_utf8(&line[at..at + digits]).ok()?.parse().ok()
                    };
                    if let Some(sequence) = number(b"\"s\":") {
                        let sequence = sequence as usize;
                        received[sequence].fetch_add(1, Relaxed);
                        last[sequence].fetch_max(now_ns(), Relaxed);
                    }
                }
                buffer.copy_within(start..end, 0);
                kept = end - start;
                if kept == buffer.len() {
                    kept = 0;
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while open.load(Relaxed) + failed.load(Relaxed) < streams && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let opened = open.load(Relaxed);
    eprintln!("many: {opened} of {streams} streams open in {:?}", opening.elapsed());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = server.rss_kib();
    // Idle, with the keep-alive round the server sends every 10 s.
    let cpu_before = server.cpu_seconds();
    tokio::time::sleep(WINDOW).await;
    let idle_cpu = server.cpu_seconds() - cpu_before;
    // Events, one tenant at a time: in one tenant, one every 2 s, so each
    // fan-out to every stream is over before the next; across tenants,
    // 200 a second.
    let per_second = if tenants == 1 { 0.5 } else { 200.0 };
    let mut connection = Connection::open(server.port).await.unwrap();
    let started = Instant::now();
    let mut sent = Vec::with_capacity(events);
    for sequence in 0..events {
        let due = started + Duration::from_secs_f64(sequence as f64 / per_second);
        tokio::time::sleep_until(due.into()).await;
        let channel = &channels[sequence % tenants];
        let stamp = now_ns();
        let data = format!(r#"{{"s":{sequence},"t":{stamp}}}"#);
        if !channel.publish(&mut connection, &data).await {
            connection = Connection::open(server.port).await.unwrap();
            assert!(channel.publish(&mut connection, &data).await, "publish failed");
        }
        sent.push(stamp);
    }
    let per_event: Vec<u64> = (0..events).map(|sequence| {
        let subscribed = (0..opened).filter(|index| index % tenants == sequence % tenants).count();
        subscribed as u64
    }).collect();
    let expected: u64 = per_event.iter().sum();
    let deadline = Instant::now() + Duration::from_secs(60);
    let total = || received.iter().map(|count| count.load(Relaxed)).sum::<u64>();
    while total() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered = total();
    let mut latencies: Vec<u64> = (0..events)
        .filter(|sequence| received[*sequence].load(Relaxed) == per_event[*sequence])
        .map(|sequence| last[sequence].load(Relaxed).saturating_sub(sent[sequence]))
        .collect();
    latencies.sort_unstable();
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        let _ = task.await;
    }
    json!({
        "scenario": "many", "server": server.name, "streams": streams, "tenants": tenants, "opened": opened,
        "rss_before_kib": before, "rss_after_kib": after,
        "rss_per_stream_kib": after.saturating_sub(before) as f64 / opened.max(1) as f64,
        // nginx allocates its worker_connections at start: the whole RSS per
        // stream counts that too.
        "rss_total_per_stream_kib": after as f64 / opened.max(1) as f64,
        "idle_cpu_seconds": idle_cpu, "events": events,
        "delivered_pct": 100.0 * delivered as f64 / expected.max(1) as f64,
        "complete_events": latencies.len(),
        "p50_ms": percentile(&latencies, 0.50), "p99_ms": percentile(&latencies, 0.99), "max_ms": percentile(&latencies, 1.0),
    })
}

/// Opens a stream from the local address `from`; returns the socket once the
/// response head has been read whole.
async fn subscribe_from(channel: &Channel, from: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    // The port is chosen at connect, by the whole address pair: a port bound
    // here would otherwise be barred from every connect on any address while
    // its socket lingers in TIME_WAIT, and a run right after another (or
    // the load generator's own connections to 127.0.0.1) would run out.
    let yes: libc::c_int = 1;
    let size = std::mem::size_of_val(&yes) as libc::socklen_t;
    let pointer = &yes as *const libc::c_int as *const libc::c_void;
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket and a c_int option of the size given.
    let set = unsafe { libc::setsockopt(socket.as_raw_fd(), libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, pointer, size) };
    if set != 0 {
        return Err(std::io::Error::last_os_error());
    }
    socket.bind(from)?;
    let mut stream = socket.connect(([127, 0, 0, 1], channel.port).into()).await?;
    let request = match channel.kind {
        Kind::Broker => format!("GET /sse HTTP/1.1\r\nHost: bench\r\nAuthorization: {}\r\n\r\n", channel.auth),
        Kind::Nchan => format!("GET /sub?id={} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n", channel.name),
        Kind::Ceiling => unreachable!("the ceiling serves no streams"),
    };
    stream.write_all(request.as_bytes()).await?;
    // The head, byte by byte: nothing after it may be consumed here.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other(String::from_utf8_lossy(&head).into_owned()));
    }
    Ok(stream)
}

/// Raises this process's soft file limit to the hard one; returns it.
fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    limit.rlim_cur
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().position(|arg| arg == name).and_then(|at| args.get(at + 1)).cloned();
    let binary = flag("--broker").unwrap_or("target/release/broker".into());
    let only = flag("--only").unwrap_or("fanout,rate,idle,insert,startup,logins,many".into());
    let only: Vec<&str> = only.split(',').collect();
    let wants = |scenario: &str| only.contains(&scenario);
    let idle_streams: usize = flag("--idle-streams").and_then(|n| n.parse().ok()).unwrap_or(IDLE_STREAMS);
    let startup_events: u64 = flag("--events-for-startup").and_then(|n| n.parse().ok()).unwrap_or(1_000_000);
    let static_binary = flag("--static");
    let ceiling = flag("--ceiling").unwrap_or("bench/target/release/ceiling".into());
    let mut streams: usize = flag("--streams").and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let mut tenant_counts: Vec<usize> = flag("--tenants").unwrap_or("1,10000".into()).split(',').filter_map(|n| n.parse().ok()).collect();
    let with_nchan = args.iter().any(|arg| arg == "--with-nchan");
    // Each stream is a descriptor in the server and one here: a machine
    // whose hard limit is lower runs the largest N it allows, and says so.
    let files = raise_fd_limit() as usize;
    if wants("many") && streams + 1_000 > files {
        let allowed = files.saturating_sub(1_000) / 1_000 * 1_000;
        eprintln!("many: {streams} streams do not fit the file limit here ({files}); running {allowed}");
        // The same shapes, smaller: as many streams per tenant.
        for tenants in &mut tenant_counts {
            *tenants = (*tenants * allowed / streams).max(1);
        }
        streams = allowed;
    }
    now_ns();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut results = Results::default();
    // The ceiling first: every other insert figure is a share of it.
    let mut names = vec!["bare hyper".to_string(), "broker".to_string()];
    if static_binary.is_some() {
        names.push("broker static".to_string());
    }
    if with_nchan {
        names.push("nginx+nchan".to_string());
    }
    // The 100 000-stream scenario, on servers of its own, keep-alive every
    // 10 s so that one round falls in its 10 s idle window.
    if wants("many") {
        for name in names.iter().filter(|name| *name != "bare hyper") {
            for &tenants in &tenant_counts {
                let server = match name.as_str() {
                    "broker" => start_broker(&binary, name, None, &["--keep_alive=10"]).0,
                    "broker static" => start_broker(static_binary.as_deref().unwrap(), name, None, &["--keep_alive=10"]).0,
                    _ => start_nchan(10, streams + 1024),
                };
                results.record(name, runtime.block_on(many(&server, streams, tenants)));
                server.stop();
            }
        }
    }
    for name in &names {
        let server = match name.as_str() {
            "bare hyper" if !wants("insert") => continue,
            "bare hyper" => start_ceiling(&ceiling),
            "broker" => start_broker(&binary, name, None, &[]).0,
            "broker static" => start_broker(static_binary.as_deref().unwrap(), name, None, &[]).0,
            _ => start_nchan(30, 32768),
        };
        runtime.block_on(async {
            if server.kind == Kind::Ceiling {
                results.record(name, insert(&server, "bare POST, 64 connections", false, 0).await);
                return;
            }
            if wants("logins") && server.kind == Kind::Broker {
                results.record(name, logins(&server).await);
            }
            if wants("idle") {
                results.record(name, idle(&server, idle_streams, Transport::Http, None).await);
            }
            if wants("fanout") {
                for subscribers in [1, 100, 1000] {
                    results.record(name, fanout(&server, subscribers).await);
                }
            }
            if wants("rate") {
                results.record(name, rate(&server, 4000, 100).await);
            }
            if wants("insert") {
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
    // The HTTPS idle scenarios, each shape on a broker of its own serving
    // TLS only, so that none starts with memory the last one left.
    let mut transports = Vec::new();
    if wants("idle-tls") {
        transports.push(Transport::Https);
    }
    if wants("idle-h2") {
        transports.extend([Transport::H2(1), Transport::H2(32)]);
    }
    if !transports.is_empty() {
        let tls = Tls::new();
        let flags = tls.flags();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        for name in names.iter().filter(|name| name.starts_with("broker")) {
            let binary = if name == "broker" { &binary } else { static_binary.as_ref().unwrap() };
            for &transport in &transports {
                let server = start_broker(binary, name, None, &flags).0;
                results.record(name, runtime.block_on(idle(&server, idle_streams, transport, Some(&tls))));
                server.stop();
            }
        }
    }
    if wants("startup") {
        let line = runtime.block_on(startup(&binary, "broker", startup_events));
        results.record("broker", line);
        if let Some(binary) = &static_binary {
            results.record("broker static", runtime.block_on(startup(binary, "broker static", startup_events)));
        }
    }
    results.table(&names);
}
