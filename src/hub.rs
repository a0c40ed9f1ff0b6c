//! Live fan-out: the open SSE streams of every tenant, and the response body
//! that feeds one stream from its channel.

use crate::http::Body;
use crate::store::{Frames, lock};
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};

/// Frames a subscriber may fall behind before it is cut off: a stream that
/// cannot keep up resumes with Last-Event-ID instead of slowing anyone else.
const QUEUE: usize = 256;
/// The keep-alive comment.
const PING: Bytes = Bytes::from_static(b":\n\n");

/// Cheap handle to the subscriber lists, cloned into every request.
#[derive(Clone, Default)]
pub struct Hub {
    /// tenant → its open streams. A std mutex: publishing only calls
    /// `try_send`, so no critical section ever awaits.
    tenants: Arc<Mutex<HashMap<String, Vec<Subscriber>>>>,
}

struct Subscriber {
    username: String,
    /// Unix time at which the stream's JWT expires; Basic streams never do.
    expires: Option<u64>,
    sender: mpsc::Sender<Bytes>,
}

impl Hub {
    /// Registers a stream; its frames arrive on the returned receiver.
    pub fn subscribe(&self, tenant: &str, username: &str, expires: Option<u64>) -> Receiver {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let username = username.to_string();
        let mut tenants = lock(&self.tenants);
        let subscribers = tenants.entry(tenant.to_string()).or_default();
        subscribers.push(Subscriber {
            username,
            expires,
            sender,
        });
        receiver
    }

    /// Hands one encoded frame to every stream of the tenant; the `Bytes` is
    /// shared, never copied. A full or closed stream is dropped on the spot.
    pub fn publish(&self, tenant: &str, frame: Bytes) {
        if let Some(subscribers) = lock(&self.tenants).get_mut(tenant) {
            subscribers.retain(|subscriber| subscriber.sender.try_send(frame.clone()).is_ok());
        }
    }

    /// Ends every stream of a user (revoked, new password, new tenant).
    /// Dropping the sender lets the body finish cleanly after what is queued.
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
                let open = !sender.is_closed() && (!ping || sender.try_send(PING).is_ok());
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

pub type Receiver = mpsc::Receiver<Bytes>;

/// The body of a `text/event-stream` response: the stored backlog, then live
/// frames until the hub drops the sender, which ends the response with the
/// chunked terminator rather than a cut connection.
pub fn stream(backlog: Frames, receiver: Receiver) -> Body {
    let frames = tokio_stream::iter(backlog).chain(ReceiverStream::new(receiver));
    StreamBody::new(frames.map(|frame| Ok(Frame::data(frame)))).boxed_unsync()
}
