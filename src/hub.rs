//! Live fan-out: the open streams of every tenant, who holds them, and until
//! when. Publishing hands one shared frame to each stream.

use crate::error::{Error, lock};
use crate::sse::{PING, Sender};
use bytes::Bytes;
use std::{collections::HashMap, sync::Arc, sync::Mutex, time::Duration};

/// Cheap handle to the subscriber lists, cloned wherever streams are opened
/// or events published.
#[derive(Clone)]
pub struct Hub {
    /// tenant → its open streams. A std mutex: publishing never waits, so no
    /// critical section awaits.
    tenants: Arc<Mutex<HashMap<String, Vec<Subscriber>>>>,
    /// Most open streams one user may hold (`--max_streams`).
    max_streams: usize,
}

/// One open stream. It leaves the hub only by being dropped from its list,
/// which drops its sender and so ends the stream cleanly.
struct Subscriber {
    username: String,
    /// Unix time at which the stream's JWT expires; Basic streams never do.
    expires: Option<u64>,
    sender: Sender,
}

impl Hub {
    pub fn new(max_streams: usize) -> Hub {
        let tenants = Arc::default();
        Hub {
            tenants,
            max_streams,
        }
    }

    /// Registers a stream of `username` in `tenant`, unless the user
    /// already holds `--max_streams` open ones.
    pub fn subscribe(
        &self,
        tenant: &str,
        username: &str,
        expires: Option<u64>,
        sender: Sender,
    ) -> Result<(), Error> {
        let mut tenants = lock(&self.tenants);
        let subscribers = tenants.entry(tenant.to_string()).or_default();
        let open = subscribers
            .iter()
            .filter(|other| other.username == username);
        if open.filter(|other| !other.sender.is_closed()).count() >= self.max_streams {
            let reason = format!("at most {} open streams per user", self.max_streams);
            return Err(Error::TooMany(reason, 10));
        }
        let username = username.to_string();
        subscribers.push(Subscriber {
            username,
            expires,
            sender,
        });
        Ok(())
    }

    /// Hands one frame to every stream of the tenant; the `Bytes` is shared,
    /// never copied. A stream that is gone or too far behind is dropped.
    pub fn publish(&self, tenant: &str, frame: Bytes) {
        if let Some(subscribers) = lock(&self.tenants).get_mut(tenant) {
            subscribers.retain(|subscriber| subscriber.sender.send(frame.clone()));
        }
    }

    /// Ends every stream of a user.
    pub fn disconnect(&self, username: &str) {
        self.retain(|subscriber| subscriber.username != username);
    }

    /// Ends every stream, for shutdown.
    pub fn close_all(&self) {
        lock(&self.tenants).clear();
    }

    /// Once a second: forget closed streams and end those whose JWT expired;
    /// every `keep_alive` seconds, send a comment so proxies keep idle
    /// streams open. One timer for all streams, none per connection.
    pub async fn maintain(self, keep_alive: u64) {
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        for tick in 1u64.. {
            ticks.tick().await;
            let now = crate::clock::now_ms() / 1000;
            let ping = keep_alive > 0 && tick.is_multiple_of(keep_alive);
            self.retain(|subscriber| {
                let sender = &subscriber.sender;
                let open = !sender.is_closed() && (!ping || sender.send(PING));
                open && subscriber.expires.is_none_or(|expires| expires > now)
            });
        }
    }

    fn retain(&self, mut keep: impl FnMut(&Subscriber) -> bool) {
        lock(&self.tenants).retain(|_, subscribers| {
            subscribers.retain(&mut keep);
            !subscribers.is_empty()
        });
    }
}
