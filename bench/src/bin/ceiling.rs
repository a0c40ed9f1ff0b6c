//! The ceiling for Broker's inserts: bare hyper 1 with Broker's HTTP/1.1
//! connection settings (TCP_NODELAY, a minute's TCP_USER_TIMEOUT, a 10 s
//! header timeout, heads up to 64 KiB, a body of at most 1 MiB read within
//! 10 s, the same multi-threaded Tokio runtime), answering `{"id":N}` once it
//! has read the body, and nothing else: no authentication, no JSON, no
//! storage, no log line. What an insert costs Broker beyond this server is
//! Broker's own. `ceiling --port N`; `GET /` answers 200 like Broker's health.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, body::Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

static NEXT: AtomicU64 = AtomicU64::new(1);

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = Limited::new(request.into_body(), 1 << 20);
    let read = tokio::time::timeout(Duration::from_secs(10), body.collect()).await;
    let status = if matches!(read, Ok(Ok(_))) { 200 } else { 400 };
    let id = NEXT.fetch_add(1, Relaxed);
    let response = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("access-control-allow-origin", "*")
        .body(Full::new(Bytes::from(format!("{{\"id\":{id}}}"))))
        .unwrap();
    Ok(response)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = args.iter().position(|arg| arg == "--port").and_then(|at| args.get(at + 1)).and_then(|port| port.parse().ok()).expect("--port N");
    let listener = tokio::net::TcpListener::bind(("::", port)).await.expect("listen");
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let _ = tcp.set_nodelay(true);
        let _ = socket2::SockRef::from(&tcp).set_tcp_user_timeout(Some(Duration::from_secs(60)));
        tokio::spawn(async move {
            let mut builder = http1::Builder::new();
            builder.timer(TokioTimer::new());
            builder.header_read_timeout(Duration::from_secs(10));
            builder.max_header_size(64 * 1024);
            let _ = builder.serve_connection(TokioIo::new(tcp), service_fn(answer)).await;
        });
    }
}
