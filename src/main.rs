//! Broker: a real-time backend in one binary. Start-up, the accept loop and
//! graceful shutdown live here; everything else is one module per concern.

mod auth;
mod clock;
mod config;
mod error;
mod http;
mod hub;
mod store;
mod tls;

use http::State;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::{sync::Arc, time::Duration};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::timeout;
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_util::{either::Either, sync::CancellationToken};

/// How long a client may take over its TLS handshake, and an HTTP/2 client
/// over its first request.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// jemalloc, in the glibc and the static musl build alike, chosen by
/// measurement (docs/performance.md, "The allocator"): musl's own malloc made the static
/// binary a third slower, and both it and glibc's leave more memory per idle
/// stream. Its default decay is kept: Argon2's 19 MiB blocks are over its
/// `oversize_threshold`, so they live in an arena of their own that hands
/// pages back at once (measured: at most 0.9 MiB more resident after 50
/// logins than with immediate decay everywhere).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A bad flag or a failed start-up ends the process with status 1 and
/// Rust's `Error: "<reason>"` on stderr (status 2 for bad flags was retired
/// for the line budget: LOC_BUDGET.md).
#[tokio::main]
async fn main() -> Result<(), String> {
    let flags = config::Config::parse(std::env::args().skip(1))?;
    // Linux, systemd included, starts a process with a soft limit of 1024
    // descriptors: raised to the hard limit, as Go does, so that streams do
    // not hit a wall at about a thousand.
    // Where it cannot be raised, Broker runs with what it has.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    clock::start(flags.ntp_servers.clone(), flags.ntp_interval.get());
    let hub = hub::Hub::new(flags.max_streams);
    let store = store::Store::open(&flags, hub.clone())?;
    let tls = flags.secure.then(|| tls::acceptor(&flags)).transpose()?;
    // Dual-stack on [::], so IPv4 clients arrive as mapped addresses; on
    // 0.0.0.0 alone where the host has no IPv6.
    let dual_stack = SocketAddr::from((Ipv6Addr::UNSPECIFIED, flags.port));
    let ipv4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, flags.port));
    let listener = TcpListener::bind(&[dual_stack, ipv4][..]).await;
    let listener = listener.map_err(|error| format!("cannot listen: {error}"))?;
    tokio::spawn(hub.clone().maintain(flags.keep_alive));
    let address = listener.local_addr().map_err(|error| error.to_string())?;
    eprintln!("broker: serving on port {}", address.port());
    let auth = auth::Auth::new(flags.clone(), store.clone());
    let state = Arc::new(State { flags, store, auth });
    let graceful = GracefulShutdown::new();
    // SIGTERM (systemd's stop) starts a graceful shutdown; SIGINT (Ctrl-C)
    // ends the process at once, as it does any program that does not catch
    // it (retired for the line budget: LOC_BUDGET.md).
    let terminate = signal(SignalKind::terminate());
    let mut terminate = terminate.map_err(|error| format!("cannot catch SIGTERM: {error}"))?;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = terminate.recv() => break,
        };
        let Ok((tcp, _)) = accepted.inspect_err(|error| eprintln!("accept failed: {error}")) else {
            // Typically out of file descriptors: wait rather than spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let drain = graceful.watcher();
        tokio::spawn(connection(tcp, tls.clone(), state.clone(), drain));
    }
    drop(listener);
    hub.close_all();
    // Open connections get five seconds to finish; the database needs
    // nothing more: every write is in the journal, synced every second.
    let _ = timeout(Duration::from_secs(5), graceful.shutdown()).await;
    Ok(())
}

/// One client connection: the TLS handshake if any, then HTTP/1.1, or HTTP/2
/// where the TLS client chose it (ALPN), until the client leaves or shutdown
/// drains it. A failed handshake concerns that client alone.
async fn connection(tcp: TcpStream, tls: Option<TlsAcceptor>, state: Arc<State>, drain: Watcher) {
    let Ok(peer) = tcp.peer_addr() else { return };
    // An IPv4 client by its IPv4 address, in the limits.
    let client = peer.ip().to_canonical();
    let _ = tcp.set_nodelay(true);
    // A socket that accepts nothing for a minute while a response waits to
    // be written is closed by the kernel: a client that stopped reading is
    // disconnected, and whatever its stream had queued is freed.
    let write_timeout = Some(Duration::from_secs(60));
    let _ = socket2::SockRef::from(&tcp).set_tcp_user_timeout(write_timeout);
    // The TLS stream is boxed: inline, its size would be reserved in every
    // plain connection too (about 1.5 KiB more per idle stream, measured).
    let io = match tls {
        None => Either::Left(tcp),
        Some(tls) => match timeout(HEADER_TIMEOUT, tls.accept(tcp)).await {
            Ok(Ok(stream)) if stream.get_ref().1.alpn_protocol() == Some(b"h2") => {
                // A task of its own: awaited here, the handshake's result
                // would keep its room in every connection's future.
                return drop(tokio::spawn(http2(stream, state, client, drain)));
            }
            Ok(Ok(stream)) => Either::Right(Box::new(stream)),
            _ => return,
        },
    };
    let service = service_fn(move |request| http::serve(state.clone(), client, request));
    let mut builder = http1::Builder::new();
    // With a timer, hyper closes a connection whose request head has not
    // arrived within its default 30 s.
    builder.timer(TokioTimer::new());
    // A request head over 64 KiB is answered 431.
    builder.max_header_size(64 * 1024);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    let _ = drain.watch(connection).await;
}

/// An HTTP/2 connection: each of its streams is one request, served like a
/// request over HTTP/1.1. hyper bounds what one connection may ask for: a
/// header list over 16 KiB is answered 431, a stream past the ones allowed
/// at once is refused, and streams reset before they are served (rapid
/// reset) end the connection with GOAWAY. It is closed when its client
/// sends no request within `HEADER_TIMEOUT` (no preface, or a preface and
/// nothing), and when the hub cancels `closing`: a stream that takes
/// nothing, see `hub::CONNECTION`. The service borrows both tokens: the
/// connection is served inside this function.
async fn http2(stream: TlsStream<TcpStream>, state: Arc<State>, client: IpAddr, drain: Watcher) {
    let closing = CancellationToken::new();
    let started = CancellationToken::new();
    let service = service_fn(|request| {
        started.cancel();
        let serving = http::serve(state.clone(), client, request);
        hub::CONNECTION.scope(closing.clone(), serving)
    });
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    // At most 32 requests at once (hyper's default is 200): one HTTP/2
    // connection then holds at most 32 bodies being read, not 200.
    builder.max_concurrent_streams(32);
    // TCP keepalive probes find a peer that is gone (the minute of
    // `connection` applies to them); the peer's kernel answers them however
    // slowly its app reads, where hyper's pings would wait behind unread
    // data and cut a slow reader.
    let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(30));
    let _ = socket2::SockRef::from(stream.get_ref().0).set_tcp_keepalive(&keepalive);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = drain.watch(connection) => {}
        _ = closing.cancelled() => {}
        Err(_) = timeout(HEADER_TIMEOUT, started.cancelled()) => {}
    }
}
