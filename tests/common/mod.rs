//! Test harness: starts the real `broker` binary on a free port with a
//! temporary `--db`, and speaks HTTP/1.1 to it over plain TCP sockets, so
//! tests see exactly the bytes a client would.
#![allow(dead_code)]

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const ADMIN: &str = "letmein";

/// A byte stream, plain TCP or TLS over it.
pub trait Io: Read + Write + Send {}
impl<T: Read + Write + Send> Io for T {}

/// Speaks HTTP or HTTPS to a port.
pub struct Client {
    pub port: u16,
    /// Set for HTTPS: the client configuration and the server name.
    pub tls: Option<(Arc<ClientConfig>, String)>,
}

/// A running broker process; derefs to a `Client` for its port.
pub struct Broker {
    pub client: Client,
    pub db: PathBuf,
    /// Every line the broker wrote to stderr so far.
    pub log: Arc<Mutex<Vec<String>>>,
    child: Child,
    _dir: Option<tempfile::TempDir>,
}

/// A complete HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    }

    /// Asserts the status and that the body is `{"error": "<non-empty>"}`.
    pub fn assert_error(&self, status: u16) {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        let error = self.json()["error"].as_str().map(str::to_string);
        assert!(
            error.is_some_and(|e| !e.is_empty()),
            "no error message: {:?}",
            self.json()
        );
    }
}

/// Reads a broker's stderr into a shared log on a thread of its own (so the
/// pipe never fills), reporting the port of its "serving … on port N" line.
pub fn collect_log(stderr: impl Read + Send + 'static) -> (Arc<Mutex<Vec<String>>>, Receiver<u16>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let port = collect_log_into(stderr, log.clone());
    (log, port)
}

/// Whether a collected log holds a line containing `text`.
pub fn log_contains(log: &Mutex<Vec<String>>, text: &str) -> bool {
    log.lock().unwrap().iter().any(|line| line.contains(text))
}

/// Text that does not compress (the journal compresses what it can).
pub fn noise(length: usize, seed: u64) -> String {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(b'!' + (state % 90) as u8)
        })
        .collect()
}

/// As `collect_log`, appending to an existing log.
pub fn collect_log_into(
    stderr: impl Read + Send + 'static,
    log: Arc<Mutex<Vec<String>>>,
) -> Receiver<u16> {
    let (sender, port) = std::sync::mpsc::channel();
    let lines = log;
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let port = line.contains("serving").then(|| line.rsplit(' ').next());
            let port = port.flatten().map(|port| port.parse().unwrap());
            lines.lock().unwrap().push(line);
            if let Some(port) = port {
                let _ = sender.send(port);
            }
        }
    });
    port
}

/// A broker kept running the way `broker.service` has systemd run it
/// (`Restart=on-failure`, `RestartSec=2`): whenever it exits with a failure
/// it is started again, on the same port and database.
pub struct Supervised {
    pub client: Client,
    pub log: Arc<Mutex<Vec<String>>>,
    /// How many times it was restarted.
    pub restarts: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    pid: Arc<std::sync::atomic::AtomicI32>,
}

impl Supervised {
    pub fn start(
        db: &Path,
        args: &[&str],
        configure: impl Fn(&mut Command) + Send + 'static,
    ) -> Supervised {
        use std::sync::atomic::Ordering::SeqCst;
        let port = free_port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let restarts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pid = Arc::new(std::sync::atomic::AtomicI32::new(0));
        let (db, args): (PathBuf, Vec<String>) = (
            db.to_path_buf(),
            args.iter().map(|a| a.to_string()).collect(),
        );
        let (thread_log, thread_restarts, thread_stop, thread_pid) =
            (log.clone(), restarts.clone(), stop.clone(), pid.clone());
        std::thread::spawn(move || {
            loop {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let mut command = Broker::command(&db, port, &args);
                configure(&mut command);
                command.stderr(Stdio::piped());
                let mut child = command.spawn().unwrap();
                collect_log_into(child.stderr.take().unwrap(), thread_log.clone());
                thread_pid.store(child.id() as i32, SeqCst);
                let status = loop {
                    if thread_stop.load(SeqCst) {
                        let _ = child.kill();
                        let _ = child.wait();
                        return;
                    }
                    if let Some(status) = child.try_wait().unwrap() {
                        break status;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                };
                if status.success() {
                    return;
                }
                thread_restarts.fetch_add(1, SeqCst);
                std::thread::sleep(Duration::from_secs(2));
            }
        });
        let client = Client { port, tls: None };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "broker did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Supervised {
            client,
            log,
            restarts,
            stop,
            pid,
        }
    }

    pub fn logged(&self, text: &str) -> bool {
        log_contains(&self.log, text)
    }

    pub fn pid(&self) -> i32 {
        self.pid.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl std::ops::Deref for Supervised {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Broker {
    /// A broker on a fresh temporary database.
    pub fn start(args: &[&str]) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let mut broker = Broker::start_on(&dir.path().join("db"), args);
        broker._dir = Some(dir);
        broker
    }

    /// A broker on the given database directory (for restart tests). It
    /// listens on a port the OS picks (`--port=0`) and announces it on stderr,
    /// so parallel tests can never race for a port.
    pub fn start_on(db: &Path, args: &[&str]) -> Broker {
        Broker::start_env(db, args, &[])
    }

    /// As `start_on`, with extra environment variables.
    pub fn start_env(db: &Path, args: &[&str], env: &[(&str, &str)]) -> Broker {
        Broker::start_with(db, args, |command| {
            command.envs(env.iter().copied());
        })
    }

    /// As `start_on`, on a port of the caller's choosing.
    pub fn start_at(db: &Path, port: u16, args: &[&str]) -> Broker {
        Broker::start_port(db, port, args, |_| {})
    }

    /// As `start_on`, with the command adjusted by `configure` before it runs.
    pub fn start_with(db: &Path, args: &[&str], configure: impl FnOnce(&mut Command)) -> Broker {
        Broker::start_port(db, 0, args, configure)
    }

    fn start_port(
        db: &Path,
        port: u16,
        args: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Broker {
        let mut command = Broker::command(db, port, args);
        configure(&mut command);
        command.stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let (log, port) = collect_log(child.stderr.take().unwrap());
        let port = port
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!("broker did not start: {:?}", log.lock().unwrap())
            });
        Broker {
            client: Client { port, tls: None },
            db: db.to_path_buf(),
            log,
            child,
            _dir: None,
        }
    }

    /// The command line the harness uses, without spawning it.
    pub fn command(db: &Path, port: u16, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_broker"));
        command
            .arg(format!("--db={}", db.display()))
            .arg(format!("--port={port}"))
            .arg("--ntp_servers=")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    }

    /// Whether the broker logged a line containing `text`.
    pub fn logged(&self, text: &str) -> bool {
        log_contains(&self.log, text)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The broker's resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status
            .lines()
            .find(|line| line.starts_with("VmRSS:"))
            .unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Whether the process is still running (not exited).
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM, then the time it took to exit and its exit code, if it
    /// exited within `limit`.
    pub fn stop_within(self, limit: Duration) -> Option<(Duration, Option<i32>)> {
        self.signal_within(libc::SIGTERM, limit)
    }

    /// As `stop_within`, with another signal.
    pub fn signal_within(
        mut self,
        signal: i32,
        limit: Duration,
    ) -> Option<(Duration, Option<i32>)> {
        let started = std::time::Instant::now();
        unsafe { libc::kill(self.pid(), signal) };
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some((started.elapsed(), status.code()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The number of threads of the process, from /proc.
    pub fn threads(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status
            .lines()
            .find(|line| line.starts_with("Threads:"))
            .unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// SIGTERM, then wait for the exit; returns the exit status code.
    pub fn stop(mut self) -> Option<i32> {
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        status.code()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Client {
    /// A plain TCP connection to the broker's port.
    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        stream
    }

    /// A TCP connection from the local address `from` (127.0.0.2 …, or an
    /// IPv6 address, which connects to [::1]), so tests can act as different
    /// clients; with `receive_buffer`, a small kernel receive buffer, to play
    /// a client that stops reading.
    pub fn connect_from(&self, from: &str, receive_buffer: Option<usize>) -> TcpStream {
        use socket2::{Domain, Socket, Type};
        let local: std::net::IpAddr = from.parse().unwrap();
        let (domain, server) = match local {
            std::net::IpAddr::V4(_) => (Domain::IPV4, "127.0.0.1".parse().unwrap()),
            std::net::IpAddr::V6(_) => (Domain::IPV6, "::1".parse().unwrap()),
        };
        let socket = Socket::new(domain, Type::STREAM, None).unwrap();
        if let Some(size) = receive_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let local = std::net::SocketAddr::new(local, 0);
        socket.bind(&local.into()).unwrap();
        let server = std::net::SocketAddr::new(server, self.port);
        socket.connect(&server.into()).unwrap();
        let stream: TcpStream = socket.into();
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        stream
    }

    /// Opens `/sse` with `jwt` from a socket with a 4 KiB receive buffer, and
    /// reads nothing: a client that has stopped reading. With
    /// `last_event_id`, the stream starts with that replay.
    pub fn stalled_stream(&self, jwt: &str, last_event_id: Option<&str>) -> TcpStream {
        let mut socket = self.connect_from("127.0.0.1", Some(4096));
        let resume = last_event_id.map(|id| format!("Last-Event-ID: {id}\r\n"));
        let resume = resume.unwrap_or_default();
        let request =
            format!("GET /sse HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {jwt}\r\n{resume}\r\n");
        socket.write_all(request.as_bytes()).unwrap();
        socket
    }

    /// A request that tolerates a broker that is not there (restarting):
    /// `None` if it cannot connect.
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Option<Reply> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .ok()?;
        stream
            .write_all(&request_bytes(method, path, headers, body))
            .ok()?;
        let mut reader = BufReader::new(stream);
        // A connection reset (a restarting or overloaded server) is no answer.
        let (status, head) = try_read_head(&mut reader).ok()?;
        let mut body = Vec::new();
        let _ = reader.read_to_end(&mut body);
        Some(Reply { status, head, body })
    }

    /// A request from the local address `from`, read whole.
    pub fn request_from(
        &self,
        from: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let mut stream = self.connect_from(from, None);
        stream
            .write_all(&request_bytes(method, path, headers, body))
            .unwrap();
        read_reply(&mut BufReader::new(stream))
    }

    /// A JSON POST from the local address `from`.
    pub fn post_from(&self, from: &str, path: &str, body: &Value) -> Reply {
        let headers = [("Content-Type", "application/json")];
        self.request_from(from, "POST", path, &headers, body.to_string().as_bytes())
    }

    /// A connection speaking HTTPS when the broker does, with the TCP socket
    /// kept alongside for read timeouts.
    pub fn open(&self) -> (Box<dyn Io>, TcpStream) {
        let tcp = self.connect();
        let handle = tcp.try_clone().unwrap();
        let Some((config, name)) = &self.tls else {
            return (Box::new(tcp), handle);
        };
        let name = ServerName::try_from(name.clone()).unwrap();
        let connection = ClientConnection::new(config.clone(), name).unwrap();
        (Box::new(StreamOwned::new(connection, tcp)), handle)
    }

    /// Sends raw bytes on a new connection and reads the whole response.
    pub fn raw(&self, bytes: &[u8]) -> Reply {
        let (mut stream, _) = self.open();
        stream.write_all(bytes).unwrap();
        read_reply(&mut BufReader::new(stream))
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        self.raw(&request_bytes(method, path, headers, body))
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.request("GET", path, headers, b"")
    }

    pub fn post(&self, path: &str, body: &Value) -> Reply {
        self.post_as(path, &[], body)
    }

    pub fn post_as(&self, path: &str, headers: &[(&str, &str)], body: &Value) -> Reply {
        let mut all = vec![("Content-Type", "application/json")];
        all.extend_from_slice(headers);
        self.request("POST", path, &all, body.to_string().as_bytes())
    }

    /// `GET /verify` with a JWT: 200 while the token is good.
    pub fn verify(&self, jwt: &str) -> Reply {
        self.get("/verify", &[("Authorization", &bearer(jwt))])
    }

    /// An admin call naming one user (revoke_user, unrevoke_user, get_user …).
    pub fn admin(&self, path: &str, username: &str) -> Reply {
        self.post(path, &json!({"admin_token": ADMIN, "username": username}))
    }

    pub fn create_user(&self, username: &str, password: &str, tenant: &str) -> Value {
        let body = json!({"username": username, "password": password, "admin_token": ADMIN, "tenant_name": tenant});
        let reply = self.post("/create_user", &body);
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        reply.json()
    }

    pub fn login(&self, username: &str, password: &str) -> String {
        let reply = self.post(
            "/login",
            &json!({"username": username, "password": password}),
        );
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        reply.json()["jwt"].as_str().unwrap().to_string()
    }

    pub fn insert(&self, jwt: &str, event: &str, data: &Value) -> u64 {
        let reply = self.post_as(
            "/insert",
            &[("Authorization", &bearer(jwt))],
            &json!({"event": event, "data": data}),
        );
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        reply.json()["id"].as_u64().unwrap()
    }

    /// The status of a `GET /sse`, read from the head alone, with the
    /// stream (if it opened) left to close when the socket drops.
    pub fn sse_status(&self, headers: &[(&str, &str)]) -> u16 {
        let (mut stream, _tcp) = self.open();
        stream
            .write_all(&request_bytes("GET", "/sse", headers, b""))
            .unwrap();
        read_head(&mut BufReader::new(stream)).0
    }

    /// Opens `/sse`; the status and headers are read, the body is left to `Sse`.
    pub fn sse(&self, headers: &[(&str, &str)]) -> Sse {
        let (stream, tcp) = self.open();
        Client::sse_over(stream, tcp, headers)
    }

    /// As `sse`, over plain TCP with a kernel receive buffer of
    /// `receive_buffer` bytes (which stops its growth): a client that reads
    /// slowly holds no more than that.
    pub fn sse_small(&self, receive_buffer: usize, headers: &[(&str, &str)]) -> Sse {
        let tcp = self.connect_from("127.0.0.1", Some(receive_buffer));
        let handle = tcp.try_clone().unwrap();
        Client::sse_over(Box::new(tcp), handle, headers)
    }

    fn sse_over(mut stream: Box<dyn Io>, tcp: TcpStream, headers: &[(&str, &str)]) -> Sse {
        let mut request = "GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\n".to_string();
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        let mut reader = BufReader::new(stream);
        let (status, head) = read_head(&mut reader);
        assert_eq!(status, 200, "sse refused: {head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{head}"
        );
        Sse {
            reader,
            tcp,
            head,
            body: Vec::new(),
            parsed: Vec::new(),
            parsed_bytes: 0,
            ended: false,
        }
    }
}

impl std::ops::Deref for Broker {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl std::ops::DerefMut for Broker {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A whole HTTP/1.1 request that closes its connection.
pub fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

pub fn bearer(jwt: &str) -> String {
    format!("Bearer {jwt}")
}

pub fn basic(username: &str, password: &str) -> String {
    use base64::Engine;
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    format!("Basic {encoded}")
}

fn read_head(reader: &mut impl BufRead) -> (u16, String) {
    try_read_head(reader)
        .unwrap_or_else(|error| panic!("waited for a response head: {}", why(&error)))
}

/// A failed read in words: a read timeout says so (the socket's `WouldBlock`
/// would not), anything else as it is.
pub fn why(error: &std::io::Error) -> String {
    use std::io::ErrorKind::{TimedOut, WouldBlock};
    match error.kind() {
        WouldBlock | TimedOut => "nothing came within the read timeout".to_string(),
        _ => error.to_string(),
    }
}

/// The status and head of a response; an error if the connection broke.
fn try_read_head(reader: &mut impl BufRead) -> std::io::Result<(u16, String)> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    Ok((status, head))
}

pub fn read_reply(reader: &mut impl BufRead) -> Reply {
    let (status, head) = read_head(reader);
    let lower = head.to_ascii_lowercase();
    let mut body = Vec::new();
    let failed = |came: usize, error: std::io::Error| -> ! {
        let why = why(&error);
        panic!("waited for the body of a {status} answer, {came} bytes came: {why}")
    };
    if lower.contains("transfer-encoding: chunked") {
        loop {
            match read_chunk(reader) {
                Ok(Some(chunk)) => body.extend(chunk),
                Ok(None) => break,
                Err(error) => failed(body.len(), error),
            }
        }
    } else if let Err(error) = reader.read_to_end(&mut body) {
        failed(body.len(), error);
    }
    Reply { status, head, body }
}

/// One chunk of a chunked body; `None` at the terminating zero-size chunk.
/// An error if a read fails or times out, or the connection ends without
/// the terminator.
fn read_chunk(reader: &mut impl BufRead) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::{Error, ErrorKind};
    let mut size = String::new();
    if reader.read_line(&mut size)? == 0 {
        let cut = "the connection closed without the chunked terminator";
        return Err(Error::new(ErrorKind::UnexpectedEof, cut));
    }
    let size = usize::from_str_radix(size.trim(), 16).map_err(|_| {
        let message = format!("not a chunk size: {size:?}");
        Error::new(ErrorKind::InvalidData, message)
    })?;
    let mut chunk = vec![0; size + 2];
    reader.read_exact(&mut chunk)?;
    chunk.truncate(size);
    Ok((size > 0).then_some(chunk))
}

/// An open SSE stream.
pub struct Sse {
    reader: BufReader<Box<dyn Io>>,
    tcp: TcpStream,
    pub head: String,
    /// Every body byte received so far.
    pub body: Vec<u8>,
    /// Frames parsed so far, and how many body bytes they covered.
    parsed: Vec<Event>,
    parsed_bytes: usize,
    pub ended: bool,
}

/// One parsed SSE frame.
#[derive(Debug, PartialEq)]
pub struct Event {
    pub id: u64,
    pub event: String,
    pub data: Value,
}

impl Sse {
    /// Reads chunks until `count` frames (keep-alive comments excluded) have arrived.
    pub fn events(&mut self, count: usize) -> &[Event] {
        loop {
            let complete = self
                .body
                .windows(2)
                .rposition(|pair| pair == b"\n\n")
                .map_or(0, |at| at + 2);
            if complete > self.parsed_bytes {
                self.parsed
                    .extend(parse_frames(&self.body[self.parsed_bytes..complete]));
                self.parsed_bytes = complete;
            }
            if self.parsed.len() >= count {
                return &self.parsed;
            }
            assert!(
                !self.ended,
                "the stream ended after {} of {count} frames",
                self.parsed.len()
            );
            if let Err(error) = self.try_read_chunk() {
                panic!(
                    "waited for {count} frames, {} came: {}",
                    self.parsed.len(),
                    why(&error)
                );
            }
        }
    }

    /// Reads one chunk into `body`; records the terminator. Panics, saying
    /// what came so far, if nothing comes within the read timeout or the
    /// connection is cut.
    pub fn read_chunk(&mut self) {
        if let Err(error) = self.try_read_chunk() {
            let came = self.body.len();
            panic!(
                "waited for a chunk of the stream, {came} bytes came: {}",
                why(&error)
            );
        }
    }

    /// As `read_chunk`, returning the error instead.
    pub fn try_read_chunk(&mut self) -> std::io::Result<()> {
        match read_chunk(&mut self.reader)? {
            Some(chunk) => self.body.extend(chunk),
            None => self.ended = true,
        }
        Ok(())
    }

    /// Reads until the server ends the response with the chunked terminator;
    /// panics after `limit` or on a cut connection.
    pub fn wait_end(&mut self, limit: Duration) {
        self.tcp.set_read_timeout(Some(limit)).unwrap();
        while !self.ended {
            if let Err(error) = self.try_read_chunk() {
                let came = self.body.len();
                panic!(
                    "waited {limit:?} for the stream's end (the chunked terminator), {came} bytes came: {}",
                    why(&error)
                );
            }
        }
    }

    /// Whether nothing more arrives within `wait`.
    pub fn quiet_for(&mut self, wait: Duration) -> bool {
        self.tcp.set_read_timeout(Some(wait)).unwrap();
        let quiet = self
            .reader
            .fill_buf()
            .map(|buffer| buffer.is_empty())
            .is_err();
        self.tcp
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        quiet
    }
}

/// Splits a stream body into frames. Comment lines (`:`, the keep-alive)
/// are dropped line by line, as an SSE parser ignores them: a keep-alive is
/// `:\n` alone, so it shares its block with the next frame's lines.
pub fn parse_frames(body: &[u8]) -> Vec<Event> {
    let text = std::str::from_utf8(body).expect("stream is ASCII");
    let complete = &text[..text.rfind("\n\n").map_or(0, |end| end + 2)];
    let short = |frame: &str| frame.chars().take(200).collect::<String>();
    complete
        .split("\n\n")
        .map(|block| {
            let lines = block.lines().filter(|line| !line.starts_with(':'));
            lines.collect::<Vec<_>>().join("\n")
        })
        .filter(|frame| !frame.is_empty())
        .map(|frame| {
            let field = |name: &str| {
                frame
                    .lines()
                    .find_map(|line| line.strip_prefix(name))
                    .unwrap_or_else(|| panic!("no {name} in {:?}", short(&frame)))
            };
            Event {
                id: field("id:").parse().unwrap(),
                event: field("event:").to_string(),
                data: serde_json::from_str(field("data:")).unwrap(),
            }
        })
        .collect()
}

/// A tmpfs of a given size mounted for one test (tests run as root),
/// unmounted on drop.
pub struct Tmpfs(pub tempfile::TempDir);

impl Tmpfs {
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs needs root");
        Tmpfs(dir)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// Bytes in use on the filesystem, as `df` counts them.
    pub fn used(&self) -> u64 {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.path().as_os_str().as_bytes()).unwrap();
        let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut stats) }, 0);
        (stats.f_blocks - stats.f_bfree) as u64 * stats.f_frsize as u64
    }

    /// Writes a file until the filesystem is full.
    pub fn fill(&self) {
        let mut filler = std::fs::File::create(self.path().join("filler")).unwrap();
        let block = vec![7u8; 64 * 1024];
        while filler.write_all(&block).is_ok() {}
        let _ = filler.sync_all();
    }

    pub fn free(&self) {
        std::fs::remove_file(self.path().join("filler")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

/// A test CA and a leaf certificate for `names`, written as PEM files in a
/// directory: what the HTTPS tests serve and trust.
pub struct Pki {
    pub ca: String,
    pub key: PathBuf,
    pub chain: PathBuf,
    pub ca_file: PathBuf,
}

pub fn pki(dir: &Path, names: &[&str]) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Broker test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
    let leaf = CertificateParams::new(names)
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let pki = Pki {
        ca: ca.pem(),
        key: dir.join("key.pem"),
        chain: dir.join("chain.pem"),
        ca_file: dir.join("ca.pem"),
    };
    std::fs::write(&pki.key, leaf_key.serialize_pem()).unwrap();
    std::fs::write(&pki.chain, leaf.pem()).unwrap();
    std::fs::write(&pki.ca_file, &pki.ca).unwrap();
    pki
}

/// A TLS client that trusts only the given PEM roots and offers `alpn`, in
/// that order (none: the client names no protocol, and gets HTTP/1.1).
pub fn tls_client(roots_pem: &str, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap();
    let mut config = config.with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Arc::new(config)
}
