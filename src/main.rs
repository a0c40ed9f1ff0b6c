//! Broker: a real-time backend in one binary. Start-up, the accept loop and
//! graceful shutdown live here; everything else is one module per concern.

mod auth;
mod clock;
mod config;
mod error;
mod http;
mod hub;
mod sse;
mod store;
mod tls;

use http::State;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_io_timeout::TimeoutWriter;
use tokio_rustls::TlsAcceptor;

/// How long a client may take over its TLS handshake or request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for in-flight requests before giving up on them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head accepted; a bigger one is answered 431.
const MAX_HEADERS: usize = 64 * 1024;
/// How long a socket may accept nothing while a response waits to be
/// written: a client that stopped reading is disconnected, and whatever its
/// stream had queued is freed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> ExitCode {
    // glibc keeps freed blocks above its (self-raising) mmap threshold in
    // its arenas: Argon2's 19 MiB would stay resident after every burst of
    // logins. A fixed threshold maps each large block and returns it on free.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20)
    };
    let (code, reason) = match config::Config::parse(std::env::args().skip(1)) {
        Ok(config) => match run(config).await {
            Ok(()) => return ExitCode::SUCCESS,
            Err(reason) => (1, reason),
        },
        Err(reason) => (2, reason),
    };
    eprintln!("broker: {reason}");
    ExitCode::from(code)
}

async fn run(config: config::Config) -> Result<(), String> {
    clock::start(&config.ntp_servers, config.ntp_interval).await;
    let hub = hub::Hub::new(config.max_streams);
    let store = store::Store::open(&config.db, config.history, hub.clone())?;
    let tls = tls::acceptor(&config).await?;
    let listener = TcpListener::bind(("0.0.0.0", config.port)).await;
    let listener = listener.map_err(|error| format!("cannot listen: {error}"))?;
    tokio::spawn(hub.clone().maintain(config.keep_alive));
    let scheme = if tls.is_some() { "https" } else { "http" };
    let address = listener.local_addr().map_err(|error| error.to_string())?;
    eprintln!("broker: serving {scheme} on port {}", address.port());
    let auth = auth::Auth::new(&config)?;
    let state = Arc::new(State {
        config,
        store: store.clone(),
        auth,
    });
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown_signal());
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let watcher = graceful.watcher();
                let state = state.clone();
                tokio::spawn(connection(tcp, tls.clone(), peer.ip(), state, watcher));
            }
            Err(error) => {
                // Typically out of file descriptors: wait rather than spin.
                eprintln!("accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    eprintln!("broker: shutting down");
    drop(listener);
    hub.close_all();
    if timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        eprintln!("broker: gave up waiting for open connections");
    }
    store.close()
}

/// One client connection: the TLS handshake if any, then HTTP/1.1 until the
/// client leaves or shutdown drains it. A failed handshake concerns that
/// client alone.
async fn connection(
    tcp: TcpStream,
    tls: Option<TlsAcceptor>,
    address: IpAddr,
    state: Arc<State>,
    watcher: Watcher,
) {
    let _ = tcp.set_nodelay(true);
    let mut tcp = TimeoutWriter::new(tcp);
    tcp.set_timeout(Some(WRITE_TIMEOUT));
    let tcp = Box::pin(tcp);
    let Some(tls) = tls else {
        return serve(tcp, address, state, watcher).await;
    };
    if let Ok(Ok(stream)) = timeout(HEADER_TIMEOUT, tls.accept(tcp)).await {
        serve(stream, address, state, watcher).await;
    }
}

async fn serve<I>(io: I, address: IpAddr, state: Arc<State>, watcher: Watcher)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| http::serve(state.clone(), address, request));
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new());
    builder.header_read_timeout(HEADER_TIMEOUT);
    builder.max_header_size(MAX_HEADERS);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    let _ = watcher.watch(connection).await;
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut terminate) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
