//! Trusted time: the local clock corrected by an offset measured against NTP
//! servers. Requests read the offset from an atomic and never wait on the
//! network; a thread of its own measures it.

use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds to add to the local clock to get NTP time.
static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Unix time in milliseconds by the corrected clock.
pub fn now_ms() -> u64 {
    let local = SystemTime::now().duration_since(UNIX_EPOCH);
    let local = local.unwrap_or_default().as_millis() as i64;
    (local + OFFSET_MS.load(Relaxed)).max(0) as u64
}

/// Measures the offset against `servers` (`host[:port]`, comma-separated),
/// now and then every `interval` seconds: the offset of the first server
/// that answers within a second, in the order given. (NTP is unauthenticated,
/// so a server on the path can lie either way; docs/operations.md's threat model says
/// what to do instead.) Start-up does not wait for it: tokens issued in the
/// first moments carry local time. Every measurement is logged, a failed one
/// too (one line an `--ntp_interval`).
pub fn start(servers: String, interval: u64) {
    std::thread::spawn(move || {
        let config = rsntp::Config::default().timeout(Duration::from_secs(1));
        let client = rsntp::SntpClient::with_config(config);
        loop {
            let ask = |server| client.synchronize(server).ok();
            let answer = servers.split(',').find_map(ask);
            let offset = answer.map(|answer| answer.clock_offset().as_secs_f64() * 1e3);
            if let Some(offset) = offset {
                OFFSET_MS.store(offset as i64, Relaxed);
                eprintln!("ntp: clock corrected, offset {} ms", offset as i64);
            } else {
                let offset = OFFSET_MS.load(Relaxed);
                eprintln!("ntp: no server answered; using local clock + {offset} ms");
            }
            std::thread::sleep(Duration::from_secs(interval));
        }
    });
}
