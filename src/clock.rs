//! Trusted time: the local clock corrected by an offset measured against NTP
//! servers. Requests read the offset from an atomic and never wait on the
//! network; a background task refreshes it.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::task::JoinSet;

/// Milliseconds to add to the local clock to get NTP time.
static OFFSET_MS: AtomicI64 = AtomicI64::new(0);
/// Whether the last round got an answer.
static SYNCED: AtomicBool = AtomicBool::new(true);

/// Unix time in milliseconds by the corrected clock.
pub fn now_ms() -> u64 {
    let local = SystemTime::now().duration_since(UNIX_EPOCH);
    let local = local.unwrap_or_default().as_millis() as i64;
    (local + OFFSET_MS.load(Relaxed)).max(0) as u64
}

/// Measures the offset once (start-up waits at most two seconds for it),
/// then corrects it every `interval` seconds in the background.
pub async fn start(servers: &str, interval: u64) {
    let servers: Vec<String> = servers.split(',').map(String::from).collect();
    let first = tokio::time::timeout(Duration::from_secs(2), correct(servers.clone()));
    if first.await.is_err() {
        report(false);
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(interval)).await;
            correct(servers.clone()).await;
        }
    });
}

/// Asks every server at once and takes the first answer; with none, the
/// last good offset stays in force.
async fn correct(servers: Vec<String>) {
    let mut queries: JoinSet<_> = servers.into_iter().map(offset).collect();
    while let Some(answer) = queries.join_next().await {
        if let Ok(Some(offset)) = answer {
            OFFSET_MS.store(offset, Relaxed);
            return report(true);
        }
    }
    report(false);
}

/// The offset in milliseconds that one server reports, if it answers within a second.
async fn offset(server: String) -> Option<i64> {
    let (host, port) = server.split_once(':').unwrap_or((&server, "123"));
    // Resolve asynchronously: rsntp would resolve a name with blocking DNS.
    let address = tokio::net::lookup_host((host, port.parse().ok()?)).await;
    let address = address.ok()?.next()?;
    let bind = if address.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let config = rsntp::Config::default().bind_address(bind.parse().ok()?);
    let client = rsntp::AsyncSntpClient::with_config(config.timeout(Duration::from_secs(1)));
    let result = client.synchronize(address).await.ok()?;
    Some((result.clock_offset().as_secs_f64() * 1000.0) as i64)
}

/// Logs every correction, but a failure only after a success (or at start),
/// so a dead server list costs one line of log, not one an hour.
fn report(synced: bool) {
    let offset = OFFSET_MS.load(Relaxed);
    let was_synced = SYNCED.swap(synced, Relaxed);
    if synced {
        eprintln!("ntp: clock corrected, offset {offset} ms");
    } else if was_synced {
        eprintln!("ntp: no server answered; using local clock + {offset} ms");
    }
}
