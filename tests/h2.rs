//! HTTP/2 over HTTPS, spoken by a real client library (the `h2` crate, the
//! one hyper's own client is built on) to the real broker binary: ALPN, the
//! whole journey with many streams on one connection, and each rule of an
//! HTTP/1.1 connection holding per HTTP/2 connection or stream (the silent
//! client, the stream that grants no window, ended or not, revocation,
//! SIGTERM, the header bound, rapid reset), and the rules of HTTP/2 alone
//! (no PING cutting a slow reader, 32 streams at once a connection). Every
//! connection is watched by a tap that logs each frame the server sends, so
//! END_STREAM, RST_STREAM and GOAWAY are seen as they came off the wire, in
//! order.

mod common;
use common::{ADMIN, Broker, Pki, basic, pki, tls_client};

use bytes::Bytes;
use h2::client::{Builder, ResponseFuture, SendRequest};
use h2::{Reason, RecvStream};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How long any single step may take on a busy machine before the test
/// gives up and says what it waited for.
const WAIT: Duration = Duration::from_secs(30);

/// Frame types and flags of RFC 9113 that the tests look for.
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
/// The flag of a SETTINGS (or PING) frame that acknowledges the peer's.
const ACK: u8 = 0x1;
/// SETTINGS_MAX_CONCURRENT_STREAMS.
const MAX_CONCURRENT_STREAMS: u16 = 0x3;

// ---------------------------------------------------------------------------
// Certificates and TLS

/// A broker serving HTTPS with the test certificate, on a fresh database,
/// and the PKI its clients trust. The directory must outlive the broker.
fn https_broker(dir: &Path, extra: &[&str]) -> (Broker, Pki) {
    let pki = pki(dir, &["localhost"]);
    let key = format!("--key_path={}", pki.key.display());
    let chain = format!("--cert_path={}", pki.chain.display());
    let mut args = vec!["--secure", "--auto_cert=false", &key, &chain];
    args.extend_from_slice(extra);
    let mut broker = Broker::start_on(&dir.join("db"), &args);
    // For the harness's own HTTP/1.1 helpers, should a test want them.
    broker.tls = Some((tls_client(&pki.ca, &[b"http/1.1"]), "localhost".into()));
    (broker, pki)
}

/// A TLS connection to the broker, the handshake done.
async fn tls(port: u16, config: Arc<ClientConfig>) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let handshake = TlsConnector::from(config).connect(name, tcp);
    within(WAIT, "the TLS handshake", handshake)
        .await
        .expect("TLS handshake")
}

/// The protocol the server chose by ALPN, if any.
fn alpn<T>(stream: &TlsStream<T>) -> Option<String> {
    let protocol = stream.get_ref().1.alpn_protocol()?;
    Some(String::from_utf8_lossy(protocol).into_owned())
}

// ---------------------------------------------------------------------------
// Waiting

/// `future`, or a panic naming what was awaited once `limit` has passed.
async fn within<F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    match tokio::time::timeout(limit, future).await {
        Ok(output) => output,
        Err(_) => panic!("waited {limit:?} for {what}"),
    }
}

/// A spawned task's output, its panic passed on as it was.
async fn joined<T>(task: JoinHandle<T>) -> T {
    match task.await {
        Ok(output) => output,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

/// Waits until what the server sent on a connection satisfies `done`, or
/// panics naming `what` with the frames seen once `WAIT` has passed.
async fn until(wire: &Mutex<Wire>, what: &str, done: impl Fn(&Wire) -> bool) {
    let started = Instant::now();
    loop {
        let seen = wire.lock().unwrap().clone();
        if done(&seen) {
            return;
        }
        assert!(
            started.elapsed() < WAIT,
            "waited {WAIT:?} for {what}: {}",
            seen.summary()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// The tap: every frame the server sends, parsed off the decrypted bytes

/// One frame from the server.
#[derive(Clone, Debug)]
struct Seen {
    kind: u8,
    flags: u8,
    stream: u32,
    length: usize,
    /// The error code of a RST_STREAM or GOAWAY.
    code: Option<u32>,
    /// A GOAWAY's last stream identifier: streams above it were not
    /// processed, those at or below it may still complete.
    last_stream: Option<u32>,
    /// A GOAWAY's debug data.
    debug: String,
    /// The payload of a SETTINGS frame (its settings) or a HEADERS frame
    /// (its header block); empty for the others.
    payload: Vec<u8>,
}

impl Seen {
    /// A SETTINGS frame's settings, (identifier, value) in order.
    fn settings(&self) -> Vec<(u16, u32)> {
        let entries = self.payload.chunks_exact(6);
        let entry = |entry: &[u8]| (u16::from_be_bytes([entry[0], entry[1]]), be32(&entry[2..]));
        entries.map(entry).collect()
    }
}

/// What the server sent on one connection.
#[derive(Default, Debug, Clone)]
struct Wire {
    frames: Vec<Seen>,
    /// The server closed the connection (end of file, or an error, read).
    closed: bool,
}

impl Wire {
    /// The position of the frame that ended `stream` with END_STREAM.
    fn end_of(&self, stream: u32) -> Option<usize> {
        self.frames.iter().position(|frame| {
            frame.stream == stream
                && (frame.kind == DATA || frame.kind == HEADERS)
                && frame.flags & END_STREAM != 0
        })
    }

    /// The position of the first RST_STREAM on `stream`.
    fn reset_of(&self, stream: u32) -> Option<usize> {
        let reset = |frame: &Seen| frame.stream == stream && frame.kind == RST_STREAM;
        self.frames.iter().position(reset)
    }

    /// The position of the first HEADERS frame on `stream`.
    fn head_of(&self, stream: u32) -> Option<usize> {
        let head = |frame: &Seen| frame.stream == stream && frame.kind == HEADERS;
        self.frames.iter().position(head)
    }

    /// The settings of the server's first SETTINGS frame (not an ACK).
    fn server_settings(&self) -> Option<Vec<(u16, u32)>> {
        let ours = |frame: &&Seen| frame.kind == SETTINGS && frame.flags & ACK == 0;
        self.frames.iter().find(ours).map(Seen::settings)
    }

    /// The position of the first GOAWAY.
    fn goaway(&self) -> Option<usize> {
        self.frames.iter().position(|frame| frame.kind == GOAWAY)
    }

    /// Bytes of DATA the server sent on `stream`.
    fn data_on(&self, stream: u32) -> usize {
        let on = |frame: &&Seen| frame.stream == stream && frame.kind == DATA;
        self.frames
            .iter()
            .filter(on)
            .map(|frame| frame.length)
            .sum()
    }

    /// The frames in short, for messages: a run of frames alike (type,
    /// flags, code) shown once with its count and streams.
    fn summary(&self) -> String {
        let name = |kind| match kind {
            DATA => "DATA",
            HEADERS => "HEADERS",
            RST_STREAM => "RST_STREAM",
            SETTINGS => "SETTINGS",
            PING => "PING",
            GOAWAY => "GOAWAY",
            8 => "WINDOW_UPDATE",
            9 => "CONTINUATION",
            _ => "OTHER",
        };
        let mut runs: Vec<(&Seen, &Seen, usize)> = Vec::new();
        for frame in &self.frames {
            match runs.last_mut() {
                Some((first, last, count))
                    if (first.kind, first.flags, &first.code)
                        == (frame.kind, frame.flags, &frame.code) =>
                {
                    *last = frame;
                    *count += 1;
                }
                _ => runs.push((frame, frame, 1)),
            }
        }
        let mut out: Vec<String> = runs
            .into_iter()
            .map(|(first, last, count)| {
                let streams = match count {
                    1 => format!("stream={}", first.stream),
                    _ => format!("{count} frames, streams={}..={}", first.stream, last.stream),
                };
                let code = first.code.map(|code| format!(" code={code}"));
                let debug = (!first.debug.is_empty()).then(|| format!(" {:?}", first.debug));
                format!(
                    "{}({streams} flags={:#x}{}{})",
                    name(first.kind),
                    first.flags,
                    code.unwrap_or_default(),
                    debug.unwrap_or_default()
                )
            })
            .collect();
        if self.closed {
            out.push("closed".into());
        }
        format!("[{}]", out.join(", "))
    }
}

/// A byte stream whose incoming side is parsed into frames as the client
/// reads it; writes pass through untouched.
struct Tap<T> {
    inner: T,
    unparsed: Vec<u8>,
    wire: Arc<Mutex<Wire>>,
    /// Writes that fail are taken as sent, so the client goes on reading
    /// what the server sent before it closed (a GOAWAY, say) instead of
    /// giving up at its first broken pipe.
    keep_reading: bool,
}

fn be32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes(bytes[..4].try_into().unwrap())
}

impl<T: AsyncRead + Unpin> AsyncRead for Tap<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let (before, room) = (buf.filled().len(), buf.remaining());
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(outcome) = &result {
            let mut wire = this.wire.lock().unwrap();
            let new = &buf.filled()[before..];
            if outcome.is_err() || (new.is_empty() && room > 0) {
                wire.closed = true;
            }
            this.unparsed.extend_from_slice(new);
            // The server sends no preface of its own beyond SETTINGS, so
            // its bytes are frames from the first one.
            while this.unparsed.len() >= 9 {
                let head = &this.unparsed;
                let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                if this.unparsed.len() < 9 + length {
                    break;
                }
                let frame: Vec<u8> = this.unparsed.drain(..9 + length).collect();
                let payload = &frame[9..];
                let code = match frame[3] {
                    RST_STREAM if length >= 4 => Some(be32(payload)),
                    GOAWAY if length >= 8 => Some(be32(&payload[4..])),
                    _ => None,
                };
                let last_stream =
                    (frame[3] == GOAWAY && length >= 8).then(|| be32(payload) & 0x7fff_ffff);
                let debug = if frame[3] == GOAWAY && length > 8 {
                    String::from_utf8_lossy(&payload[8..]).into_owned()
                } else {
                    String::new()
                };
                let kept = match frame[3] {
                    SETTINGS | HEADERS => payload,
                    _ => &[][..],
                };
                wire.frames.push(Seen {
                    kind: frame[3],
                    flags: frame[4],
                    stream: be32(&frame[5..]) & 0x7fff_ffff,
                    length,
                    code,
                    last_stream,
                    debug,
                    payload: kept.to_vec(),
                });
            }
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tap<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Err(_)) if this.keep_reading => Poll::Ready(Ok(buf.len())),
            other => other,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(Err(_)) if this.keep_reading => Poll::Ready(Ok(())),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_shutdown(cx) {
            Poll::Ready(Err(_)) if this.keep_reading => Poll::Ready(Ok(())),
            other => other,
        }
    }
}

/// A byte stream read no faster than `rate` bytes a second on average
/// (16 KiB at most at once, for the TLS handshake): a client behind a slow
/// link. Writes pass through untouched.
struct Throttle<T> {
    inner: T,
    rate: f64,
    /// Bytes that may be read now, refilled at `rate` up to `BURST`.
    budget: f64,
    refilled: Instant,
    /// The timer of a read waiting for its budget.
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> Throttle<T> {
    const BURST: f64 = 16.0 * 1024.0;

    fn new(inner: T, rate: f64) -> Throttle<T> {
        let (budget, refilled, wait) = (Self::BURST, Instant::now(), None);
        Throttle {
            inner,
            rate,
            budget,
            refilled,
            wait,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Throttle<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            let now = Instant::now();
            let earned = now.duration_since(this.refilled).as_secs_f64() * this.rate;
            this.budget = (this.budget + earned).min(Self::BURST);
            this.refilled = now;
            if this.budget >= 1.0 {
                break;
            }
            // Wait until a kilobyte may be read.
            let wait = Duration::from_secs_f64((1024.0 - this.budget) / this.rate);
            let sleep = this.wait.insert(Box::pin(tokio::time::sleep(wait)));
            std::task::ready!(sleep.as_mut().poll(cx));
        }
        this.wait = None;
        let mut chunk = vec![0; buf.remaining().min(this.budget as usize)];
        let mut into = ReadBuf::new(&mut chunk);
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut into))?;
        this.budget -= into.filled().len() as f64;
        buf.put_slice(into.filled());
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Throttle<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------
// An HTTP/2 client connection

/// One HTTP/2 connection to the broker, its frames tapped.
struct H2 {
    send: SendRequest<Bytes>,
    wire: Arc<Mutex<Wire>>,
    /// The task driving the connection; its outcome once the connection is over.
    task: JoinHandle<Result<(), h2::Error>>,
    port: u16,
}

/// A whole response.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn bearer(jwt: &str) -> String {
    format!("Bearer {jwt}")
}

impl H2 {
    /// An HTTP/2 connection with the h2 crate's default settings.
    async fn connect(port: u16, pki: &Pki) -> H2 {
        H2::connect_with(port, pki, Builder::new(), false).await
    }

    /// An HTTP/2 connection whose client settings `builder` chooses, going
    /// on reading after its writes fail if `keep_reading` (see `Tap`).
    /// Panics unless the server chose `h2` by ALPN.
    async fn connect_with(port: u16, pki: &Pki, builder: Builder, keep_reading: bool) -> H2 {
        let stream = tls(port, tls_client(&pki.ca, &[b"h2", b"http/1.1"])).await;
        let chosen = alpn(&stream);
        assert_eq!(
            chosen.as_deref(),
            Some("h2"),
            "the broker did not negotiate HTTP/2 by ALPN (offered h2, http/1.1)"
        );
        H2::over(stream, port, builder, keep_reading).await
    }

    /// An HTTP/2 connection over a slow link: its socket is read no faster
    /// than `rate` bytes a second (see `Throttle`), and its receive buffer
    /// and windows are large, so what the client has not read yet waits in
    /// the kernel's buffers, as over a slow network, not in the server.
    async fn slow(port: u16, pki: &Pki, rate: f64) -> H2 {
        let socket = TcpSocket::new_v4().unwrap();
        // The kernel caps it at net.core.rmem_max (and doubles it).
        socket.set_recv_buffer_size(4 << 20).unwrap();
        let address = ("127.0.0.1".parse::<std::net::IpAddr>().unwrap(), port).into();
        let tcp = within(WAIT, "the TCP connection", socket.connect(address)).await;
        let tcp = tcp.expect("connect");
        tcp.set_nodelay(true).unwrap();
        let throttled = Throttle::new(tcp, rate);
        let name = ServerName::try_from("localhost").unwrap();
        let config = tls_client(&pki.ca, &[b"h2"]);
        let handshake = TlsConnector::from(config).connect(name, throttled);
        let stream = within(WAIT, "the TLS handshake", handshake).await;
        let stream = stream.expect("TLS handshake");
        assert_eq!(alpn(&stream).as_deref(), Some("h2"));
        let mut builder = Builder::new();
        builder
            .initial_window_size(8 << 20)
            .initial_connection_window_size(8 << 20);
        H2::over(stream, port, builder, false).await
    }

    /// The HTTP/2 handshake over `stream`, its frames tapped.
    async fn over<T>(stream: T, port: u16, builder: Builder, keep_reading: bool) -> H2
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let wire = Arc::new(Mutex::new(Wire::default()));
        let tap = Tap {
            inner: stream,
            unparsed: Vec::new(),
            wire: wire.clone(),
            keep_reading,
        };
        let handshake = builder.handshake::<_, Bytes>(tap);
        let (send, connection) = within(WAIT, "the HTTP/2 handshake", handshake)
            .await
            .expect("HTTP/2 handshake");
        let task = tokio::spawn(connection);
        H2 {
            send,
            wire,
            task,
            port,
        }
    }

    /// Sends a request; the response is left to the caller.
    async fn start(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> ResponseFuture {
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("https://localhost:{}{path}", self.port));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(()).unwrap();
        let ready = self.send.clone().ready();
        let mut send = within(WAIT, "room for a new stream", ready)
            .await
            .expect("the connection takes no new stream");
        let (response, mut stream) = send.send_request(request, body.is_empty()).unwrap();
        if !body.is_empty() {
            stream
                .send_data(Bytes::copy_from_slice(body), true)
                .unwrap();
        }
        response
    }

    /// A whole request and response.
    async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let response = self.start(method, path, headers, body).await;
        let what = format!("the response to {method} {path}");
        let response = within(WAIT, &what, response).await.expect(&what);
        let (head, mut stream) = response.into_parts();
        let mut body = Vec::new();
        while let Some(chunk) = within(WAIT, &what, stream.data()).await {
            let chunk = chunk.expect(&what);
            let _ = stream.flow_control().release_capacity(chunk.len());
            body.extend_from_slice(&chunk);
        }
        Reply {
            status: head.status.as_u16(),
            headers: head.headers,
            body,
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.request("GET", path, &[], b"").await
    }

    async fn post(&self, path: &str, headers: &[(&str, &str)], body: &Value) -> Reply {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        let body = body.to_string();
        self.request("POST", path, &all, body.as_bytes()).await
    }

    async fn create_user(&self, username: &str, password: &str, tenant: &str) {
        let body = json!({"username": username, "password": password,
            "admin_token": ADMIN, "tenant_name": tenant});
        let reply = self.post("/create_user", &[], &body).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }

    async fn login(&self, username: &str, password: &str) -> String {
        let body = json!({"username": username, "password": password});
        let reply = self.post("/login", &[], &body).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.json()["jwt"].as_str().unwrap().to_string()
    }

    async fn insert(&self, jwt: &str, event: &str, data: &Value) -> u64 {
        let body = json!({"event": event, "data": data});
        let reply = self
            .post("/insert", &[("authorization", &bearer(jwt))], &body)
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.json()["id"].as_u64().unwrap()
    }

    /// An admin call naming one user (revoke_user, unrevoke_user …).
    async fn admin(&self, path: &str, username: &str) {
        let body = json!({"admin_token": ADMIN, "username": username});
        let reply = self.post(path, &[], &body).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
    }

    /// The status of a `GET /sse`, and the stream's body when it opened.
    async fn sse_status(&self, jwt: &str) -> (u16, Option<RecvStream>) {
        self.sse_as(&bearer(jwt)).await
    }

    /// The status of a `GET /sse` with this Authorization header, and the
    /// stream's body when it opened.
    async fn sse_as(&self, authorization: &str) -> (u16, Option<RecvStream>) {
        let response = self
            .start("GET", "/sse", &[("authorization", authorization)], b"")
            .await;
        let response = within(WAIT, "the head of /sse", response)
            .await
            .expect("the head of /sse");
        let (head, mut body) = response.into_parts();
        if head.status == 200 {
            return (200, Some(body));
        }
        while let Some(chunk) = within(WAIT, "a refusal's body", body.data()).await {
            let _ = chunk.map(|chunk| body.flow_control().release_capacity(chunk.len()));
        }
        (head.status.as_u16(), None)
    }

    /// A copy of what the server sent so far.
    fn wire(&self) -> Wire {
        self.wire.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------------------
// SSE over an HTTP/2 stream

#[derive(Debug, Clone)]
struct Event {
    id: u64,
    event: String,
    data: Value,
}

/// An open `/sse` stream, parsed as any SSE client parses: fields by line,
/// an event dispatched by a blank line, comment lines (`:…`) ignored.
struct Sse {
    body: RecvStream,
    id: u32,
    unparsed: Vec<u8>,
    fields: Vec<(String, String)>,
    events: VecDeque<Event>,
    /// Keep-alive comment lines seen.
    comments: usize,
}

impl Sse {
    async fn open(h2: &H2, jwt: &str) -> Sse {
        Sse::open_with(h2, &[("authorization", &bearer(jwt))]).await
    }

    /// A stream opened with these request headers.
    async fn open_with(h2: &H2, headers: &[(&str, &str)]) -> Sse {
        let response = h2.start("GET", "/sse", headers, b"").await;
        let response = within(WAIT, "the head of /sse", response)
            .await
            .expect("the head of /sse");
        let (head, body) = response.into_parts();
        assert_eq!(head.status, 200, "/sse refused");
        let kind = head.headers.get("content-type").unwrap();
        assert_eq!(kind, "text/event-stream");
        Sse {
            id: body.stream_id().as_u32(),
            body,
            unparsed: Vec::new(),
            fields: Vec::new(),
            events: VecDeque::new(),
            comments: 0,
        }
    }

    fn parse(&mut self, chunk: &[u8]) {
        self.unparsed.extend_from_slice(chunk);
        while let Some(end) = self.unparsed.iter().position(|&byte| byte == b'\n') {
            let line: Vec<u8> = self.unparsed.drain(..=end).collect();
            let line = String::from_utf8(line).expect("SSE is UTF-8");
            let line = line.trim_end_matches('\n').trim_end_matches('\r');
            if line.is_empty() {
                if self.fields.is_empty() {
                    continue;
                }
                let fields = std::mem::take(&mut self.fields);
                let field = |name: &str| {
                    let found = fields.iter().find(|(key, _)| key == name);
                    found.map(|(_, value)| value.clone()).unwrap_or_default()
                };
                self.events.push_back(Event {
                    id: field("id").parse().expect("a numeric id"),
                    event: field("event"),
                    data: serde_json::from_str(&field("data")).expect("data is JSON"),
                });
            } else if line.starts_with(':') {
                self.comments += 1;
            } else {
                let (name, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                self.fields.push((name.to_string(), value.to_string()));
            }
        }
    }

    /// The next event, waiting for it.
    async fn next(&mut self, what: &str) -> Event {
        loop {
            if let Some(event) = self.events.pop_front() {
                return event;
            }
            let chunk = within(WAIT, what, self.body.data()).await;
            let chunk = chunk.unwrap_or_else(|| panic!("the stream ended before {what}"));
            let chunk = chunk.unwrap_or_else(|error| panic!("{error} before {what}"));
            let _ = self.body.flow_control().release_capacity(chunk.len());
            self.parse(&chunk);
        }
    }

    /// Reads until the stream is over: `Ok` if it ended with END_STREAM,
    /// the error (a reset, a broken connection) otherwise. Events that
    /// arrive meanwhile are kept.
    async fn end(&mut self, limit: Duration) -> Result<(), h2::Error> {
        let ending = async {
            while let Some(chunk) = self.body.data().await {
                let chunk = chunk?;
                let _ = self.body.flow_control().release_capacity(chunk.len());
                self.parse(&chunk);
            }
            // After the last DATA, trailers or nothing; a reset shows here.
            self.body.trailers().await.map(|_| ())
        };
        within(limit, "the stream to end", ending).await
    }
}

// ---------------------------------------------------------------------------
// The tests

/// Over HTTPS the broker offers h2 by ALPN and serves HTTP/2; a client that
/// offers only http/1.1 still gets HTTP/1.1; and curl, asked for HTTP/2,
/// gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_negotiates_h2_by_alpn_and_http1_for_clients_offering_only_that() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, pki) = https_broker(dir.path(), &[]);
    let port = broker.port;

    let both = tls(port, tls_client(&pki.ca, &[b"h2", b"http/1.1"])).await;
    assert_eq!(alpn(&both).as_deref(), Some("h2"), "offered h2, http/1.1");
    drop(both);
    let h2 = H2::connect(port, &pki).await;
    let reply = h2.get("/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), json!({"status": "ok"}));
    // The headers every answer carries come over HTTP/2 too.
    assert_eq!(reply.headers["cache-control"], "no-store");
    assert!(reply.headers.contains_key("access-control-allow-origin"));

    // A client that offers only HTTP/1.1 speaks it.
    let mut one = tls(port, tls_client(&pki.ca, &[b"http/1.1"])).await;
    assert_eq!(alpn(&one).as_deref(), Some("http/1.1"));
    let request = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    one.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    within(WAIT, "an HTTP/1.1 answer", one.read_to_end(&mut answer))
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // curl (Debian's, with nghttp2) negotiates HTTP/2 when asked to.
    let ca_file = pki.ca_file.clone();
    let curl = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["--http2", "-s", "-o", "/dev/null", "--max-time", "30"])
            .args(["-w", "%{http_version} %{http_code}", "--cacert"])
            .arg(&ca_file)
            .arg(format!("https://localhost:{port}/"))
            .output()
            .expect("curl is installed")
    });
    let output = joined(curl).await;
    let written = String::from_utf8_lossy(&output.stdout);
    assert_eq!(written, "2 200", "curl: {output:?}");
}

/// Create a user, log in, insert, and open ten streams, all on ONE HTTP/2
/// connection: each stream gets the sync, then a live event, whole and in
/// order, with keep-alive comments (one a second here) ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_journey_runs_on_one_h2_connection_with_ten_live_streams() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, pki) = https_broker(dir.path(), &["--keep_alive=1"]);
    let h2 = H2::connect(broker.port, &pki).await;
    assert_eq!(h2.get("/").await.status, 200);
    h2.create_user("bob", "password1", "t1").await;
    let jwt = h2.login("bob", "password1").await;
    let synced = h2.insert(&jwt, "synced", &json!({"n": 1})).await;
    // The verify endpoint reads the Authorization header over HTTP/2 too.
    let verified = h2
        .request("GET", "/verify", &[("authorization", &bearer(&jwt))], b"")
        .await;
    assert_eq!(verified.status, 200, "{}", verified.text());
    assert_eq!(verified.json()["username"], "bob");

    let mut streams = Vec::new();
    for _ in 0..10 {
        streams.push(Sse::open(&h2, &jwt).await);
    }
    for (n, stream) in streams.iter_mut().enumerate() {
        let event = stream.next(&format!("the sync on stream {n}")).await;
        assert_eq!((event.id, event.event.as_str()), (synced, "synced"));
        assert_eq!(event.data, json!({"n": 1}));
    }
    // Several keep-alives pass on the streams before the live event.
    let start = Instant::now();
    while streams[0].comments < 2 {
        assert!(start.elapsed() < WAIT, "no keep-alive comment in {WAIT:?}");
        let chunk = within(WAIT, "a keep-alive", streams[0].body.data()).await;
        let chunk = chunk.expect("the stream ended").expect("the stream broke");
        let _ = streams[0].body.flow_control().release_capacity(chunk.len());
        streams[0].parse(&chunk);
    }
    assert!(streams[0].events.is_empty(), "keep-alives made no event");
    let live = h2.insert(&jwt, "live", &json!("ünïcode")).await;
    for (n, stream) in streams.iter_mut().enumerate() {
        let event = stream.next(&format!("the live event on stream {n}")).await;
        assert_eq!((event.id, event.event.as_str()), (live, "live"));
        assert_eq!(event.data, json!("ünïcode"));
    }
    // Ten streams open at once, and every request of this test, on one
    // connection that is still open.
    assert!(streams.iter().all(|stream| !stream.body.is_end_stream()));
    assert!(!h2.wire().closed);
    assert!(h2.wire().goaway().is_none(), "{}", h2.wire().summary());
}

/// A client that negotiated h2 and sends nothing (no preface), and one that
/// sent the preface and SETTINGS but no request, are each closed by the
/// server within about the header timeout (10 s), as a silent HTTP/1.1
/// client is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_h2_clients_are_closed_within_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, pki) = https_broker(dir.path(), &[]);
    let port = broker.port;
    let started = Instant::now();

    // No preface at all.
    let mut mute = tls(port, tls_client(&pki.ca, &[b"h2"])).await;
    assert_eq!(alpn(&mute).as_deref(), Some("h2"));
    let mute_closed = async move {
        let mut sink = vec![0; 4096];
        // The server's own SETTINGS may come first; then the end.
        while let Ok(1..) = mute.read(&mut sink).await {}
        started.elapsed()
    };

    // The preface and SETTINGS (the h2 handshake), then nothing.
    let idle = H2::connect(port, &pki).await;
    let settings = || {
        idle.wire()
            .frames
            .iter()
            .any(|frame| frame.kind == SETTINGS)
    };
    while !settings() {
        assert!(started.elapsed() < WAIT, "no SETTINGS from the server");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let H2 {
        send: _held,
        wire,
        task,
        ..
    } = idle;
    let idle_closed = async move {
        let outcome = joined(task).await;
        (started.elapsed(), outcome)
    };

    let limit = Duration::from_secs(20);
    let both = futures_util::future::join(mute_closed, idle_closed);
    let (mute_after, (idle_after, outcome)) =
        within(limit, "the server to close both silent clients", both).await;
    let wire = wire.lock().unwrap().clone();
    assert!(
        wire.closed || wire.goaway().is_some(),
        "the client, not the server, ended it: {outcome:?} {}",
        wire.summary()
    );
    // Closed for their silence, not at once.
    for after in [mute_after, idle_after] {
        assert!(after >= Duration::from_secs(5), "closed after {after:?}");
    }
    // Everyone else is still served.
    let other = H2::connect(port, &pki).await;
    assert_eq!(other.get("/").await.status, 200);
}

/// Tries of `until_served` in short: each run of one status, with its count
/// and the times of its first and last tries.
fn tries(statuses: &[(Duration, u16)]) -> String {
    let mut runs: Vec<(u16, usize, Duration, Duration)> = Vec::new();
    for &(asked, status) in statuses {
        match runs.last_mut() {
            Some((same, count, _, last)) if *same == status => {
                *count += 1;
                *last = asked;
            }
            _ => runs.push((status, 1, asked, asked)),
        }
    }
    let run = |(status, count, first, last): &(u16, usize, Duration, Duration)| {
        format!("{status} x{count} ({first:.1?}..={last:.1?})")
    };
    let runs: Vec<String> = runs.iter().map(run).collect();
    format!("[{}]", runs.join(", "))
}

/// Asks for `/sse` on `other` with `authorization` every half second until
/// it is served: each try's time since `since` and its status, and the
/// stream served. Panics once `limit` has passed since `since`, showing
/// what the server sent on `stuck`, the connection expected to be closed.
async fn until_served(
    other: &H2,
    authorization: &str,
    since: Instant,
    limit: Duration,
    stuck: &H2,
) -> (Vec<(Duration, u16)>, RecvStream) {
    let mut statuses = Vec::new();
    loop {
        assert!(
            since.elapsed() < limit,
            "the place was not freed in {limit:?}: {}; no-window connection: {}",
            tries(&statuses),
            stuck.wire().summary()
        );
        let asked = since.elapsed();
        let (status, body) = other.sse_as(authorization).await;
        statuses.push((asked, status));
        match (status, body) {
            (429, _) => tokio::time::sleep(Duration::from_millis(500)).await,
            (200, Some(body)) => return (statuses, body),
            _ => panic!("/sse answered {status}: {}", tries(&statuses)),
        }
    }
}

/// The place was still held (429) at the first try, and at every try in
/// the first 30 s: well within the minute the server waits, so the place
/// went by the server's doing, not because the stream never held it.
fn held_at_first(statuses: &[(Duration, u16)]) {
    let early = Duration::from_secs(30);
    let first = statuses[0].0;
    assert!(
        first < early,
        "the first try came late: {}",
        tries(statuses)
    );
    let freed_early = statuses
        .iter()
        .any(|&(asked, status)| asked < early && status != 429);
    assert!(!freed_early, "freed before 30 s: {}", tries(statuses));
}

/// The server closed `stuck` (end of file or an error, read), having sent
/// no DATA on its no-window stream `held`; what it sent, for the log.
async fn closed_by_server(stuck: H2, held: RecvStream) -> Wire {
    let held_id = held.stream_id().as_u32();
    let over = tokio::time::timeout(WAIT, stuck.task).await;
    let wire = stuck.wire.lock().unwrap().clone();
    assert!(
        over.is_ok() && wire.closed,
        "the no-window connection was not closed by the server: {over:?} {}",
        wire.summary()
    );
    assert_eq!(wire.data_on(held_id), 0, "DATA past a zero window");
    drop(held);
    wire
}

/// A stream whose client grants no flow-control window (so the server can
/// never send it DATA, nor its END_STREAM) is still ended, and its place
/// under `--max_streams` freed about a minute later: once it has taken
/// nothing for a minute since it was ended, the server closes its
/// connection, the one way to drop a stream that cannot end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_granting_no_window_is_ended_and_its_place_freed() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, pki) = https_broker(dir.path(), &["--max_streams=1"]);
    let port = broker.port;
    let api = H2::connect(port, &pki).await;
    api.create_user("bob", "password1", "t1").await;
    let jwt = api.login("bob", "password1").await;
    // The sync frame waits for a window that never comes.
    api.insert(&jwt, "synced", &json!({"n": 1})).await;

    let mut no_window = Builder::new();
    no_window.initial_window_size(0);
    let stingy = H2::connect_with(port, &pki, no_window, false).await;
    // HEADERS are not flow-controlled: the 200 comes even with window 0.
    let (status, held) = stingy.sse_status(&jwt).await;
    assert_eq!(status, 200);
    let held = held.unwrap();

    // It holds the user's one place: a stream from another connection is refused.
    let other = H2::connect(port, &pki).await;
    assert_eq!(other.sse_status(&jwt).await.0, 429);

    // Ended by the revocation; the user is let back in at once, and the JWT
    // stays good.
    api.admin("/revoke_user", "bob").await;
    let ended = Instant::now();
    api.admin("/unrevoke_user", "bob").await;

    // Freed some 61 s after the end (the hub's sweep counts a minute of
    // not taking, once a second); 120 s allows for a busy machine.
    let limit = Duration::from_secs(120);
    let authorization = bearer(&jwt);
    let (statuses, _opened) = until_served(&other, &authorization, ended, limit, &stingy).await;
    let freed = ended.elapsed();
    held_at_first(&statuses);
    let wire = closed_by_server(stingy, held).await;
    eprintln!(
        "place freed {freed:?} after the revocation, tries {}; no-window connection: {}",
        tries(&statuses),
        wire.summary()
    );
}

/// A stream whose client grants no window and that nothing ends (Basic
/// credentials never expire, nobody revokes it, and a keep-alive a second
/// stays far from the queue limit) still has its connection closed once it
/// has taken nothing for a minute while frames waited for it, the
/// keep-alives included, and its place is freed. Before, only an ended
/// stream was caught, and this one held its place for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_granting_no_window_and_never_ended_is_closed_and_its_place_freed() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--max_streams=1", "--keep_alive=1"];
    let (broker, pki) = https_broker(dir.path(), &args);
    let port = broker.port;
    let api = H2::connect(port, &pki).await;
    api.create_user("bob", "password1", "t1").await;
    let jwt = api.login("bob", "password1").await;
    // The sync frame waits for a window that never comes.
    api.insert(&jwt, "synced", &json!({"n": 1})).await;
    let credentials = basic("bob", "password1");

    let mut no_window = Builder::new();
    no_window.initial_window_size(0);
    let stingy = H2::connect_with(port, &pki, no_window, false).await;
    let (status, held) = stingy.sse_as(&credentials).await;
    assert_eq!(status, 200);
    let opened = Instant::now();

    // It holds the user's one place: a stream from another connection is
    // refused (the first try, `held_at_first`), until the server closes
    // the no-window connection some 61 s in (the first keep-alive waits
    // from the first second).
    let other = H2::connect(port, &pki).await;
    let limit = Duration::from_secs(120);
    let (statuses, _served) = until_served(&other, &credentials, opened, limit, &stingy).await;
    let freed = opened.elapsed();
    held_at_first(&statuses);
    let wire = closed_by_server(stingy, held.unwrap()).await;
    eprintln!(
        "place freed {freed:?} after the stream opened, tries {}; no-window connection: {}",
        tries(&statuses),
        wire.summary()
    );
}

/// Revocation ends an HTTP/2 stream cleanly, with END_STREAM and no reset;
/// the connection and its other streams go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_ends_an_h2_stream_with_end_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, pki) = https_broker(dir.path(), &[]);
    let h2 = H2::connect(broker.port, &pki).await;
    h2.create_user("bob", "password1", "t1").await;
    h2.create_user("carol", "password1", "t1").await;
    let bob = h2.login("bob", "password1").await;
    let carol = h2.login("carol", "password1").await;
    h2.insert(&bob, "synced", &json!({"n": 1})).await;
    let mut revoked = Sse::open(&h2, &bob).await;
    let mut other = Sse::open(&h2, &carol).await;
    assert_eq!(revoked.next("bob's sync").await.event, "synced");
    assert_eq!(other.next("carol's sync").await.event, "synced");
    let live = h2.insert(&bob, "live", &json!({"n": 2})).await;
    assert_eq!(revoked.next("bob's live event").await.id, live);
    assert_eq!(other.next("carol's live event").await.id, live);

    h2.admin("/revoke_user", "bob").await;
    let outcome = revoked.end(WAIT).await;
    let wire = h2.wire();
    assert!(
        outcome.is_ok(),
        "the stream did not end cleanly: {outcome:?} {}",
        wire.summary()
    );
    assert!(revoked.body.is_end_stream());
    let end = wire.end_of(revoked.id);
    assert!(end.is_some(), "no END_STREAM: {}", wire.summary());
    let reset = wire.reset_of(revoked.id);
    assert!(
        reset.is_none_or(|reset| reset > end.unwrap()),
        "reset before its end: {}",
        wire.summary()
    );
    // Nothing after the end, and the rest of the connection lives on.
    let after = h2.insert(&carol, "after", &json!({"n": 3})).await;
    assert_eq!(other.next("carol's event after").await.id, after);
    assert!(revoked.events.is_empty(), "{:?}", revoked.events);
    assert_eq!(h2.get("/").await.status, 200);
    assert!(h2.wire().goaway().is_none(), "{}", h2.wire().summary());
}

/// SIGTERM ends every open HTTP/2 stream with END_STREAM (never a reset or
/// a cut), the connection is told to go away (GOAWAY, NO_ERROR, none of its
/// streams refused), and the process exits 0 within 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_h2_streams_with_end_stream_and_goaway() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, pki) = https_broker(dir.path(), &[]);
    let h2 = H2::connect(broker.port, &pki).await;
    h2.create_user("bob", "password1", "t1").await;
    let jwt = h2.login("bob", "password1").await;
    h2.insert(&jwt, "synced", &json!({"n": 1})).await;
    let mut readers = Vec::new();
    let mut ids = Vec::new();
    for n in 0..3 {
        let mut stream = Sse::open(&h2, &jwt).await;
        assert_eq!(
            stream.next(&format!("the sync on stream {n}")).await.event,
            "synced"
        );
        ids.push(stream.id);
        readers.push(tokio::spawn(async move {
            let outcome = stream.end(Duration::from_secs(20)).await;
            (outcome, stream.body.is_end_stream())
        }));
    }

    let limit = Duration::from_secs(10);
    let stop = tokio::task::spawn_blocking(move || broker.stop_within(limit));
    let stopped = joined(stop).await;
    let (took, code) = stopped.expect("the broker did not exit within 10 s of SIGTERM");
    assert_eq!(code, Some(0), "exit status after {took:?}");

    let mut outcomes = Vec::new();
    for reader in readers {
        outcomes.push(joined(reader).await);
    }
    let over = within(WAIT, "the connection to be over", h2.task).await;
    let wire = h2.wire.lock().unwrap().clone();
    for (id, (outcome, ended)) in ids.iter().zip(&outcomes) {
        assert!(
            outcome.is_ok() && *ended,
            "stream {id} did not end cleanly: {outcome:?} {}",
            wire.summary()
        );
        let end = wire.end_of(*id);
        assert!(end.is_some(), "no END_STREAM on {id}: {}", wire.summary());
        let reset = wire.reset_of(*id);
        let after = reset.is_none_or(|reset| reset > end.unwrap());
        assert!(after, "stream {id} reset: {}", wire.summary());
    }
    let goaways: Vec<&Seen> = wire.frames.iter().filter(|f| f.kind == GOAWAY).collect();
    assert!(
        !goaways.is_empty(),
        "no GOAWAY: {over:?} {}",
        wire.summary()
    );
    for goaway in &goaways {
        assert_eq!(
            goaway.code,
            Some(0),
            "GOAWAY is NO_ERROR: {}",
            wire.summary()
        );
        let last = goaway.last_stream.unwrap();
        assert!(
            ids.iter().all(|id| *id <= last),
            "the GOAWAY refused an open stream: {}",
            wire.summary()
        );
    }
    // In which order the ends and the first GOAWAY left, for the log: a
    // graceful GOAWAY (last stream 2^31-1) lets open streams finish, so
    // either order ends every stream cleanly.
    let last_end = ids.iter().filter_map(|id| wire.end_of(*id)).max();
    let order = if last_end < wire.goaway() {
        "before"
    } else {
        "after"
    };
    eprintln!(
        "exit 0 after {took:?}; the last END_STREAM came {order} the first GOAWAY: {}",
        wire.summary()
    );
}

/// A header list over 16 KiB (hyper's HTTP/2 bound) is answered 431, both as
/// one big header (split by the client over HEADERS and CONTINUATION) and as
/// many small ones; one under the bound is served; the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_header_list_is_answered_431_and_the_connection_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, pki) = https_broker(dir.path(), &[]);
    let h2 = H2::connect(broker.port, &pki).await;

    let under = "a".repeat(12 * 1024);
    let reply = h2.request("GET", "/", &[("x-padding", &under)], b"").await;
    assert_eq!(reply.status, 200, "12 KiB of headers");

    let big = "a".repeat(20 * 1024);
    let reply = h2.request("GET", "/", &[("x-padding", &big)], b"").await;
    assert_eq!(
        reply.status,
        431,
        "one 20 KiB header: {}",
        h2.wire().summary()
    );

    // 100 headers of 200 bytes: each small, 23 KiB in all (RFC 9113 counts
    // 32 bytes more per field).
    let names: Vec<String> = (0..100).map(|n| format!("x-field-{n}")).collect();
    let value = "b".repeat(200);
    let many: Vec<(&str, &str)> = names
        .iter()
        .map(|name| (name.as_str(), value.as_str()))
        .collect();
    let reply = h2.request("GET", "/", &many, b"").await;
    assert_eq!(reply.status, 431, "many headers: {}", h2.wire().summary());

    // The refusals concerned those streams alone.
    assert_eq!(h2.get("/").await.status, 200);
    assert!(h2.wire().goaway().is_none(), "{}", h2.wire().summary());
}

/// Rapid reset (CVE-2023-44487): one connection opens streams and resets
/// each at once. The server answers with GOAWAY (ENHANCE_YOUR_CALM) and
/// ends that connection, while a client on another connection is served
/// throughout and after.
#[tokio::test(flavor = "current_thread")]
async fn rapid_reset_is_answered_with_goaway_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, pki) = https_broker(dir.path(), &[]);
    let port = broker.port;
    let bystander = H2::connect(port, &pki).await;
    assert_eq!(bystander.get("/").await.status, 200);
    // It reads on after its writes fail: the server may close while the
    // attack is still being written, and its GOAWAY must still be read.
    let attacker = H2::connect_with(port, &pki, Builder::new(), true).await;

    // The bystander asks again and again while the attack goes on.
    let done = Arc::new(AtomicBool::new(false));
    let watching = done.clone();
    let served = tokio::spawn(async move {
        let mut served = 0;
        while !watching.load(SeqCst) {
            assert_eq!(bystander.get("/").await.status, 200, "during the attack");
            served += 1;
        }
        (bystander, served)
    });

    // HEADERS then RST_STREAM(CANCEL) at once, stream after stream; this
    // runtime has one thread, so each batch leaves as one write.
    let mut send = attacker.send.clone();
    let mut reset = 0;
    for n in 0..10_000 {
        if n % 100 == 0 {
            tokio::task::yield_now().await;
        }
        let ready = tokio::time::timeout(WAIT, send.clone().ready()).await;
        let Ok(Ok(ready)) = ready else { break };
        send = ready;
        let request = http::Request::get(format!("https://localhost:{port}/"))
            .body(())
            .unwrap();
        let Ok((response, mut stream)) = send.send_request(request, true) else {
            break;
        };
        stream.send_reset(Reason::CANCEL);
        drop(response);
        reset += 1;
    }
    drop(send);
    let over = tokio::time::timeout(WAIT, attacker.task).await;
    let wire = attacker.wire.lock().unwrap().clone();
    let Ok(over) = over else {
        panic!(
            "the attacker's connection still open after {reset} resets: {}",
            wire.summary()
        )
    };
    let goaway = wire.goaway().map(|at| wire.frames[at].clone());
    let goaway = goaway.unwrap_or_else(|| {
        panic!(
            "no GOAWAY after {reset} resets: {over:?} {}",
            wire.summary()
        )
    });
    assert_eq!(
        goaway.code,
        Some(u32::from(Reason::ENHANCE_YOUR_CALM)),
        "{}",
        wire.summary()
    );
    let error = over.unwrap().expect_err("the connection ended in error");
    assert!(error.is_go_away() && error.is_remote(), "{error:?}");

    done.store(true, SeqCst);
    let (bystander, during) = joined(served).await;
    assert_eq!(bystander.get("/").await.status, 200, "after the attack");
    let newcomer = H2::connect(port, &pki).await;
    assert_eq!(newcomer.get("/").await.status, 200);
    eprintln!(
        "GOAWAY {goaway:?} after {reset} resets; the bystander was served {during} times meanwhile"
    );
}

/// A slow but steady HTTP/2 reader is not cut: a backlog of 2.2 MB, read
/// at 35 kB/s by a client reading its socket at that pace, so that what it
/// has not read yet waits in the kernels' buffers as over a slow network
/// (here nearly all of it at first), arrives whole and in order in about a
/// minute; the stream then goes on live, its connection neither closed nor
/// told to go away, and the server never sent a PING. Before, hyper pinged
/// 30 s after the request; the PING waited behind those unread bytes, went
/// unanswered for 20 s, and at about 50 s the server sent GOAWAY and closed
/// the connection, ending every stream on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_steady_h2_reader_is_not_cut_and_gets_no_ping() {
    const EVENTS: usize = 36;
    const RATE: f64 = 35_000.0;
    let dir = tempfile::tempdir().unwrap();
    let (broker, pki) = https_broker(dir.path(), &[]);
    let port = broker.port;
    let api = H2::connect(port, &pki).await;
    api.create_user("bob", "password1", "t1").await;
    let jwt = api.login("bob", "password1").await;
    // Events of 60 kB (a stored frame may take 64 KiB), all kept: the
    // default --history is 2000 a tenant.
    let pad = "x".repeat(60_000);
    let mut ids = Vec::new();
    for n in 0..EVENTS {
        ids.push(api.insert(&jwt, "bulk", &json!({"n": n, "pad": pad})).await);
    }

    let slow = H2::slow(port, &pki, RATE).await;
    let started = Instant::now();
    let authorization = bearer(&jwt);
    let headers = [
        ("authorization", authorization.as_str()),
        ("last-event-id", "0"),
    ];
    let mut stream = Sse::open_with(&slow, &headers).await;
    let reading = async {
        for (n, id) in ids.iter().enumerate() {
            let what = format!("event {n} of the backlog ({:?} in)", started.elapsed());
            let event = stream.next(&what).await;
            assert_eq!((event.id, event.event.as_str()), (*id, "bulk"), "{what}");
            assert_eq!(event.data["n"], json!(n), "{what}");
        }
    };
    within(Duration::from_secs(150), "the whole backlog", reading).await;
    let took = started.elapsed();
    // The reading spanned the old server's 30 s and 20 s, or the test would
    // mean nothing (the throttle makes this so).
    assert!(took > Duration::from_secs(50), "read in {took:?}");
    // The stream goes on, live, on a connection neither cut nor told to go
    // away; and the server sent no PING.
    let live = api.insert(&jwt, "live", &json!({"n": EVENTS})).await;
    assert_eq!(stream.next("a live event after the backlog").await.id, live);
    let wire = slow.wire();
    let cut = wire.closed || wire.goaway().is_some();
    assert!(!cut, "{}", wire.summary());
    let pings = wire.frames.iter().filter(|frame| frame.kind == PING);
    assert_eq!(
        pings.count(),
        0,
        "PINGs from the server: {}",
        wire.summary()
    );
    eprintln!(
        "{} bytes of DATA read in {took:?}: {}",
        wire.data_on(stream.id),
        slow.wire().summary()
    );
}

/// An HPACK integer (RFC 7541, 5.1): `value` on a `prefix`-bit prefix, the
/// first byte's other bits `first`.
fn hpack_int(out: &mut Vec<u8>, first: u8, prefix: u32, value: usize) {
    let max = (1 << prefix) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        out.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// The header block of `GET https://localhost/sse` with this Authorization
/// header, by hand: static-table entries and literals, no Huffman coding,
/// nothing added to the dynamic table, so it can be sent any number of
/// times.
fn sse_block(authorization: &str) -> Vec<u8> {
    // :method GET and :scheme https, entries 2 and 7 of the static table.
    let mut block = vec![0x82, 0x87];
    // Literals without indexing, named by static entries: :path,
    // :authority, authorization.
    for (name, value) in [(4, "/sse"), (1, "localhost"), (23, authorization)] {
        hpack_int(&mut block, 0x00, 4, name);
        hpack_int(&mut block, 0x00, 7, value.len());
        block.extend_from_slice(value.as_bytes());
    }
    block
}

/// One HTTP/2 frame, by hand.
fn raw_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    frame.extend([kind, flags]);
    frame.extend(stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// One HTTP/2 connection holds at most 32 requests at once (hyper's default
/// was 200): the server's SETTINGS say so, and the h2 client takes it; 32
/// `/sse` streams on one connection are all served and stay open, a 33rd
/// sent regardless (by hand, since the h2 crate would hold it back) is
/// refused alone with RST_STREAM(REFUSED_STREAM), and once the client
/// resets one stream the next is served. The connection goes on throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_connection_holds_at_most_32_streams_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // 33 streams are within the user's own limit: only the connection's counts.
    let (broker, pki) = https_broker(dir.path(), &["--max_streams=64"]);
    let port = broker.port;
    let api = H2::connect(port, &pki).await;
    api.create_user("bob", "password1", "t1").await;
    let jwt = api.login("bob", "password1").await;
    let settings = api.wire().server_settings();
    let advertised = settings.as_ref().is_some_and(|settings| {
        let limits = settings
            .iter()
            .filter(|(id, _)| *id == MAX_CONCURRENT_STREAMS);
        limits.map(|(_, value)| *value).collect::<Vec<_>>() == [32]
    });
    assert!(advertised, "the server's SETTINGS: {settings:?}");
    assert_eq!(api.send.current_max_send_streams(), 32);

    // By hand from here, so that nothing holds the 33rd stream back.
    let stream = tls(port, tls_client(&pki.ca, &[b"h2"])).await;
    assert_eq!(alpn(&stream).as_deref(), Some("h2"));
    let wire = Arc::new(Mutex::new(Wire::default()));
    let tap = Tap {
        inner: stream,
        unparsed: Vec::new(),
        wire: wire.clone(),
        keep_reading: false,
    };
    let (mut reading, mut writing) = tokio::io::split(tap);
    let reader = tokio::spawn(async move {
        let mut sink = vec![0; 16 * 1024];
        while let Ok(1..) = reading.read(&mut sink).await {}
    });
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend(raw_frame(SETTINGS, 0, 0, &[]));
    writing.write_all(&preface).await.unwrap();
    let settled = |wire: &Wire| wire.server_settings().is_some();
    until(&wire, "the server's SETTINGS", settled).await;

    // Its SETTINGS acknowledged, then 33 requests in one write.
    let block = sse_block(&bearer(&jwt));
    let ids: Vec<u32> = (0..33).map(|n| 1 + 2 * n).collect();
    let (open, refused) = (&ids[..32], ids[32]);
    let mut batch = raw_frame(SETTINGS, ACK, 0, &[]);
    for id in &ids {
        let flags = END_STREAM | END_HEADERS;
        batch.extend(raw_frame(HEADERS, flags, *id, &block));
    }
    writing.write_all(&batch).await.unwrap();
    let answered = |wire: &Wire| {
        let heads = open.iter().all(|id| wire.head_of(*id).is_some());
        heads && wire.reset_of(refused).is_some()
    };
    until(&wire, "32 answers and a refusal", answered).await;
    let seen = wire.lock().unwrap().clone();
    // `:status: 200` is entry 8 of the static table: 0x88 leads the block.
    let served = |seen: &Wire, id: u32| {
        let head = seen.head_of(id).map(|at| &seen.frames[at]);
        head.and_then(|head| head.payload.first()) == Some(&0x88)
    };
    for id in open {
        assert!(served(&seen, *id), "stream {id}: {}", seen.summary());
        let over = seen.end_of(*id).or(seen.reset_of(*id));
        assert!(over.is_none(), "stream {id} is over: {}", seen.summary());
    }
    let reset = &seen.frames[seen.reset_of(refused).unwrap()];
    let code = u32::from(Reason::REFUSED_STREAM);
    assert_eq!(reset.code, Some(code), "{}", seen.summary());
    assert!(seen.head_of(refused).is_none(), "{}", seen.summary());

    // The client resets its first stream: its place goes to the next.
    let cancel = u32::from(Reason::CANCEL).to_be_bytes();
    let mut batch = raw_frame(RST_STREAM, 0, ids[0], &cancel);
    let next = refused + 2;
    batch.extend(raw_frame(HEADERS, END_STREAM | END_HEADERS, next, &block));
    writing.write_all(&batch).await.unwrap();
    let either = |wire: &Wire| wire.head_of(next).or(wire.reset_of(next)).is_some();
    until(&wire, "an answer to the next stream", either).await;
    let seen = wire.lock().unwrap().clone();
    assert!(served(&seen, next), "stream {next}: {}", seen.summary());
    assert!(seen.reset_of(next).is_none(), "{}", seen.summary());
    assert!(
        seen.goaway().is_none() && !seen.closed,
        "{}",
        seen.summary()
    );
    reader.abort();
}
