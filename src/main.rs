//! Broker: a real-time backend in one binary. Start-up, listeners and
//! graceful shutdown live here; everything else is one module per concern.

mod auth;
mod clock;
mod config;
mod http;
mod hub;
mod store;
mod tls;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

/// How long a client may take to send its request headers, or its TLS handshake.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for in-flight requests before giving up on them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

fn main() {
    let config = match config::Config::parse(std::env::args().skip(1)) {
        Ok(config) => config,
        Err(reason) => {
            eprintln!("broker: {reason}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    let code = match runtime.map(|runtime| runtime.block_on(run(config))) {
        Ok(Ok(())) => 0,
        Ok(Err(reason)) => {
            eprintln!("broker: {reason}");
            1
        }
        Err(error) => {
            eprintln!("broker: cannot start the runtime: {error}");
            1
        }
    };
    std::process::exit(code);
}

async fn run(config: config::Config) -> Result<(), String> {
    for name in config.default_secrets() {
        eprintln!("warning: --{name} is the published default; set your own before going live");
    }
    clock::start(&config.ntp_servers, config.ntp_interval).await;
    let store = store::Store::open(&config.db)
        .map_err(|error| format!("cannot open --db {}: {error}", config.db.display()))?;
    let tls = match (config.secure, config.auto_cert) {
        (false, _) => None,
        (true, false) => Some(tls::from_files(&config.key_path, &config.cert_path)?),
        (true, true) => {
            return Err("--auto_cert is not available yet; use --auto_cert=false".into());
        }
    };
    let listener = TcpListener::bind(("0.0.0.0", config.port))
        .await
        .map_err(|error| format!("cannot listen on port {}: {error}", config.port))?;
    let hub = hub::Hub::new();
    tokio::spawn(hub.clone().maintain(config.keep_alive));
    let persisted = store.clone();
    std::thread::spawn(move || {
        loop {
            // kill -9 cannot lose an acknowledged insert (it is in the OS already);
            // this bounds what a power cut can lose to about a second.
            std::thread::sleep(Duration::from_secs(1));
            let _ = persisted.persist();
        }
    });
    let auth = auth::Auth::new(&config.jwt_secret, config.jwt_expiry, &config.admin_token);
    let scheme = if config.secure { "https" } else { "http" };
    eprintln!(
        "broker: serving {scheme} on port {} with --db {}",
        config.port,
        config.db.display()
    );
    let state = Arc::new(http::State {
        config,
        store: store.clone(),
        hub: hub.clone(),
        auth,
    });
    let graceful = GracefulShutdown::new();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Typically out of file descriptors: wait rather than spin.
                    eprintln!("accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let (state, watcher) = (state.clone(), graceful.watcher());
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve(TokioIo::new(stream), state, watcher).await,
                Some(tls) => match tokio::time::timeout(HEADER_TIMEOUT, tls.accept(stream)).await {
                    Ok(Ok(stream)) => serve(TokioIo::new(stream), state, watcher).await,
                    _ => {} // a failed handshake concerns that client alone
                },
            }
        });
    }
    eprintln!("broker: shutting down");
    drop(listener);
    hub.close_all();
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        eprintln!("broker: gave up waiting for open connections");
    }
    store
        .persist()
        .map_err(|error| format!("cannot persist the database: {error}"))
}

/// Serves HTTP/1.1 on one connection until it closes or shutdown drains it.
async fn serve<I>(
    io: TokioIo<I>,
    state: Arc<http::State>,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| http::serve(state.clone(), request));
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(io, service);
    let _ = watcher.watch(connection).await;
}

async fn shutdown_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => return std::future::pending().await,
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
