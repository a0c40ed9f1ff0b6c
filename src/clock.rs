//! Trusted time: the local clock corrected by an offset measured against NTP
//! servers. Requests read the offset from an atomic and never wait on the
//! network; a background task refreshes it.

use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::task::JoinSet;

/// Milliseconds to add to the local clock to get NTP time.
static OFFSET_MS: AtomicI64 = AtomicI64::new(0);
/// 0 before the first round, 1 after a correction, 2 after a round nobody
/// answered: only a change of state is logged, so a dead server list is one line.
static STATE: AtomicU8 = AtomicU8::new(0);

/// Unix time in milliseconds by the corrected clock.
pub fn now_ms() -> u64 {
    let local = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (local.as_millis() as i64 + OFFSET_MS.load(Ordering::Relaxed)).max(0) as u64
}

/// Unix time in seconds by the corrected clock.
pub fn now() -> u64 {
    now_ms() / 1000
}

/// Measures the offset once (start-up waits at most two seconds for it), then
/// keeps correcting it every `interval` seconds in the background.
pub async fn start(servers: &str, interval: u64) {
    let servers: Vec<String> = servers
        .split(',')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if tokio::time::timeout(Duration::from_secs(2), correct(&servers))
        .await
        .is_err()
    {
        report(false);
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(interval)).await;
            correct(&servers).await;
        }
    });
}

/// Asks every server at once and takes the first answer; with none, the last
/// good offset stays in force.
async fn correct(servers: &[String]) {
    let mut queries = JoinSet::new();
    for server in servers {
        queries.spawn(offset(server.clone()));
    }
    while let Some(answer) = queries.join_next().await {
        if let Ok(Some(offset)) = answer {
            OFFSET_MS.store((offset * 1000.0) as i64, Ordering::Relaxed);
            return report(true);
        }
    }
    report(false);
}

async fn offset(server: String) -> Option<f64> {
    let server = if server.contains(':') {
        server
    } else {
        format!("{server}:123")
    };
    // Resolve asynchronously: rsntp would resolve a name with blocking DNS.
    let address = tokio::net::lookup_host(server).await.ok()?.next()?;
    let unspecified = if address.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let config = rsntp::Config::default()
        .bind_address(unspecified.parse().ok()?)
        .timeout(Duration::from_secs(1));
    let client = rsntp::AsyncSntpClient::with_config(config);
    let result = client.synchronize(address).await.ok()?;
    Some(result.clock_offset().as_secs_f64())
}

fn report(synced: bool) {
    let state = if synced { 1 } else { 2 };
    if STATE.swap(state, Ordering::Relaxed) != state {
        let offset = OFFSET_MS.load(Ordering::Relaxed);
        match synced {
            true => eprintln!("ntp: clock offset {offset} ms"),
            false => eprintln!("ntp: no server answered; using local clock + {offset} ms"),
        }
    }
}
