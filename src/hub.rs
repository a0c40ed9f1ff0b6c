//! Live streams: the SSE wire, all of it (how an event is framed, the
//! keep-alive comment, the response headers and body), and the fan-out that
//! hands each inserted event to every open stream of its tenant.

use crate::error::{Error, ensure, lock};
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::Frame;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::{collections::HashMap, convert::Infallible, fmt::Write, time::Duration};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio_stream::{StreamExt, wrappers::UnboundedReceiverStream};
use tokio_util::sync::CancellationToken;

/// Bytes a stream may have waiting (beyond one frame of any size) before it
/// is ended: a subscriber that cannot keep up resumes with Last-Event-ID
/// rather than holding the server's memory or slowing anyone else.
const QUEUE_LIMIT: usize = 1 << 20;

pub const HEADERS: &[(&str, &str)] = &[("content-type", "text/event-stream")];

// Set by `main` around each request of an HTTP/2 connection: the token that
// closes the connection. hyper polls an HTTP/2 body only while the client
// grants its stream window, so the stream of a client that grants none
// takes nothing more and cannot even end: no kernel timeout sees it, since
// the connection itself stays healthy. The hub closes such a connection
// (`Hub::maintain`), which drops the body and frees everything it held.
tokio::task_local!(pub static CONNECTION: CancellationToken);

/// Every response body, a stream's included.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// One SSE frame, `id:<id>\nevent:<name>\ndata:<json>\n\n`, pure ASCII:
/// broker-client decodes byte by byte as Latin-1, so every non-ASCII
/// character of the JSON (only strings can hold one) becomes `\uXXXX`. The
/// JSON is the text as sent, numbers and key order kept; its line breaks go,
/// since JSON allows them only between tokens (a string escapes its own).
pub fn frame(id: u64, name: &str, data: &str) -> Bytes {
    let mut frame = format!("id:{id}\nevent:{name}\ndata:");
    // UTF-16 units, as the `\u` escapes of JSON want them (two for an emoji).
    for unit in data.replace(['\r', '\n'], "").encode_utf16() {
        if unit < 0x80 {
            frame.push(char::from(unit as u8));
        } else {
            let _ = write!(frame, "\\u{unit:04x}");
        }
    }
    Bytes::from(frame + "\n\n")
}

/// Cheap handle to the subscriber lists, cloned wherever streams are opened
/// or events published.
#[derive(Clone, Default)]
pub struct Hub {
    /// tenant → its open streams. A std mutex: publishing never waits, so no
    /// critical section awaits.
    tenants: Arc<Mutex<HashMap<String, Vec<Subscriber>>>>,
    /// Most open streams one user may hold (`--max_streams`).
    limit: usize,
    /// Cancelled once shutdown begins. Every stream's own token is a child
    /// of it: cancelling it ends them all, and a stream whose check was
    /// still in flight is born ended, so it answers 200 and ends at once,
    /// cleanly, rather than being cut without its end when the process
    /// exits.
    closing: CancellationToken,
}

/// One open stream. It stays in the hub until its response body is gone,
/// so it counts toward `--max_streams` until the client has really seen its
/// end. Ending it (cancelling `ended`) stops the body before its next frame,
/// backlog or live alike, even one waiting for live frames, and the response
/// ends cleanly: the chunked terminator, which
/// broker-client reports with `onclose`, never a cut connection.
struct Subscriber {
    username: String,
    /// Unix time at which the stream's JWT expires; Basic streams never do.
    expires: Option<u64>,
    frames: UnboundedSender<Bytes>,
    /// Bytes sent but not yet taken by the response body.
    queued: Arc<AtomicUsize>,
    ended: CancellationToken,
    /// What closes the stream's connection: the HTTP/2 connection's token, or
    /// over HTTP/1.1 the stream's own (there the kernel's write timeout cuts
    /// a client that stopped reading, `main::connection`).
    connection: CancellationToken,
    /// Seconds, counted by the sweep while frames wait or the stream is
    /// ended, since the body last took a frame (it sets this to 0).
    idle: Arc<AtomicU64>,
}

impl Subscriber {
    /// Queues a frame; a stream over its limit is ended instead, and an
    /// ended one queues nothing more.
    fn send(&self, frame: Bytes) {
        let queued = self.queued.fetch_add(frame.len(), Relaxed);
        if queued >= QUEUE_LIMIT || self.ended.is_cancelled() || self.frames.send(frame).is_err() {
            self.ended.cancel();
        }
    }
}

impl Hub {
    pub fn new(limit: usize) -> Hub {
        // No tenant, no stream, not closing.
        let hub = Hub::default();
        Hub { limit, ..hub }
    }

    /// Opens a stream of `username` in `tenant`: the body of its response,
    /// the backlog and then live frames. Refused if the user already holds
    /// `--max_streams` streams whose responses have not ended.
    pub fn subscribe(
        &self,
        tenant: &str,
        username: &str,
        expires: Option<u64>,
        // Stored frames the stream starts with, oldest first, read as it is
        // written. One that cannot be read (`None`) ends the stream, and the
        // client resumes with Last-Event-ID instead of silently missing it.
        backlog: impl Iterator<Item = Option<Bytes>> + Send + 'static,
    ) -> Result<Body, Error> {
        let mut tenants = lock(&self.tenants);
        let subscribers = tenants.entry(tenant.to_string()).or_default();
        let mine = |other: &&Subscriber| other.username == username && !other.frames.is_closed();
        let refused = Error::TooMany("too many open streams for this user".into(), 10);
        let open = subscribers.iter().filter(mine).count();
        ensure(open < self.limit, refused)?;
        let (frames, receiver) = unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let taken = queued.clone();
        let live = UnboundedReceiverStream::new(receiver).map(move |frame: Bytes| {
            taken.fetch_sub(frame.len(), Relaxed);
            Some(frame)
        });
        let all = tokio_stream::iter(backlog).chain(live);
        // Checked before every frame, so an ended stream sends nothing more.
        let ended = self.closing.child_token();
        let connection = CONNECTION.try_with(CancellationToken::clone);
        let all = all.map_while(|frame| frame);
        let all = futures_util::StreamExt::take_until(all, ended.clone().cancelled_owned());
        let idle = Arc::new(AtomicU64::new(0));
        let taking = idle.clone();
        let body = StreamBody::new(all.map(move |frame| {
            taking.store(0, Relaxed);
            Ok(Frame::data(frame))
        }));
        subscribers.push(Subscriber {
            username: username.to_string(),
            expires,
            frames,
            queued,
            connection: connection.unwrap_or_else(|_| ended.clone()),
            idle,
            ended,
        });
        Ok(body.boxed_unsync())
    }

    /// Hands one frame to every stream of the tenant; the `Bytes` is shared,
    /// never copied. A stream too far behind is ended.
    pub fn publish(&self, tenant: &str, frame: Bytes) {
        for subscriber in lock(&self.tenants).get(tenant).into_iter().flatten() {
            subscriber.send(frame.clone());
        }
    }

    /// Ends every stream of a user.
    pub fn disconnect(&self, username: &str) {
        self.sweep(|subscriber| subscriber.username == username);
    }

    /// Ends every stream, and every one opened after, for shutdown.
    pub fn close_all(&self) {
        self.closing.cancel();
    }

    /// Once a second: end the streams whose JWT expired and forget those
    /// whose response is over; every `keep_alive` seconds, send a comment so
    /// proxies keep idle streams open. One timer for all streams, none per
    /// connection.
    pub async fn maintain(self, keep_alive: u64) {
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        for tick in 1u64.. {
            ticks.tick().await;
            let now = crate::clock::now_ms() / 1000;
            let ping = keep_alive > 0 && tick.is_multiple_of(keep_alive);
            self.sweep(|stream| {
                if ping {
                    // The keep-alive: a comment line alone, with no blank
                    // line after it, so no SSE parser dispatches a message
                    // (WHATWG: only a blank line does), while proxies and
                    // idle timers still see bytes.
                    stream.send(Bytes::from_static(b":\n"));
                }
                // A stream that took nothing for a minute while frames
                // waited (keep-alives count) or since it was ended is an
                // HTTP/2 stream whose client grants no window (see
                // `CONNECTION`): its connection is closed.
                let waiting = stream.ended.is_cancelled() || stream.queued.load(Relaxed) > 0;
                if waiting && stream.idle.fetch_add(1, Relaxed) >= 60 {
                    stream.connection.cancel();
                }
                stream.expires.is_some_and(|expires| expires <= now)
            });
        }
    }

    /// Ends every stream for which `ending` is true, and forgets the streams
    /// whose response is over. A tenant's list stays, empty, once its last
    /// stream is gone: tenants are few beside streams.
    fn sweep(&self, ending: impl Fn(&Subscriber) -> bool) {
        for subscribers in lock(&self.tenants).values_mut() {
            subscribers.retain(|subscriber| {
                if ending(subscriber) {
                    subscriber.ended.cancel();
                }
                !subscriber.frames.is_closed()
            });
        }
    }
}
