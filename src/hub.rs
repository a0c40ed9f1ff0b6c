//! Live fan-out: every open SSE stream of a tenant, and the response body
//! that feeds one stream from its channel.

use crate::store::{Backlog, lock};
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;

/// Frames a subscriber may fall behind before it is cut off. A stream that
/// cannot keep up resumes with Last-Event-ID instead of slowing anyone else.
const QUEUE: usize = 256;
/// Largest write assembled from the backlog at once.
const BATCH: usize = 64 * 1024;

/// Cheap handle to the subscriber lists, cloned into every request.
#[derive(Clone)]
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
    pub fn new() -> Hub {
        Hub {
            tenants: Arc::default(),
        }
    }

    /// Registers a stream; its frames arrive on the returned receiver.
    pub fn subscribe(
        &self,
        tenant: &str,
        username: &str,
        expires: Option<u64>,
    ) -> mpsc::Receiver<Bytes> {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let subscriber = Subscriber {
            username: username.to_string(),
            expires,
            sender,
        };
        lock(&self.tenants)
            .entry(tenant.to_string())
            .or_default()
            .push(subscriber);
        receiver
    }

    /// Hands one encoded frame to every stream of the tenant; the `Bytes` is
    /// shared, never copied. Full or closed streams are dropped on the spot.
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

    /// Once a second: forget closed streams, end those whose JWT expired, and
    /// every `keep_alive` seconds send a comment so proxies keep idle ones open.
    pub async fn maintain(self, keep_alive: u64) {
        let mut ticks = 0u64;
        let mut interval = tokio::time::interval(Duration::from_secs(1));
        loop {
            interval.tick().await;
            ticks += 1;
            let now = crate::clock::now();
            let ping = keep_alive > 0 && ticks.is_multiple_of(keep_alive);
            self.retain(|subscriber| {
                let alive = subscriber.expires.is_none_or(|expires| expires > now);
                match ping {
                    true => {
                        alive
                            && subscriber
                                .sender
                                .try_send(Bytes::from_static(b":\n\n"))
                                .is_ok()
                    }
                    false => alive && !subscriber.sender.is_closed(),
                }
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

/// The body of a `text/event-stream` response: the stored backlog first,
/// then live frames until the hub drops the sender, which ends the response
/// with the chunked terminator rather than a cut connection.
pub struct Stream {
    backlog: Option<Backlog>,
    receiver: mpsc::Receiver<Bytes>,
}

impl Stream {
    pub fn new(backlog: Backlog, receiver: mpsc::Receiver<Bytes>) -> Stream {
        Stream {
            backlog: Some(backlog),
            receiver,
        }
    }
}

impl Body for Stream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(backlog) = self.backlog.as_mut() {
            let mut batch = BytesMut::new();
            for frame in backlog.by_ref() {
                batch.extend_from_slice(&frame);
                if batch.len() >= BATCH {
                    return Poll::Ready(Some(Ok(Frame::data(batch.freeze()))));
                }
            }
            self.backlog = None;
            if !batch.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(batch.freeze()))));
            }
        }
        self.receiver
            .poll_recv(context)
            .map(|frame| frame.map(|frame| Ok(Frame::data(frame))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
