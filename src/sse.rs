//! The SSE wire, all of it: how an event is framed, the keep-alive comment,
//! the response headers, and the body that feeds one stream.

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::Frame;
use serde_json::Value;
use std::sync::{Arc, atomic::AtomicUsize, atomic::Ordering::Relaxed};
use std::{convert::Infallible, fmt::Write};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::UnboundedReceiverStream};

/// Bytes a stream may have waiting (beyond one frame of any size) before it
/// is ended: a subscriber that cannot keep up resumes with Last-Event-ID
/// rather than holding the server's memory or slowing anyone else.
const QUEUE_LIMIT: usize = 1 << 20;

/// The keep-alive comment.
pub const PING: Bytes = Bytes::from_static(b":\n\n");

pub const HEADERS: &[(&str, &str)] = &[
    ("content-type", "text/event-stream"),
    ("cache-control", "no-cache"),
    // Tells nginx-style proxies not to buffer the stream.
    ("x-accel-buffering", "no"),
];

/// Every response body, a stream's included.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Stored frames a stream starts with, oldest first, read as it is written.
/// One that can no longer be read (`None`) ends the stream, and the client
/// resumes with Last-Event-ID instead of silently missing it.
pub type Frames = Box<dyn Iterator<Item = Option<Bytes>> + Send>;

/// One SSE frame, `id:<id>\nevent:<name>\ndata:<json>\n\n`, pure ASCII:
/// broker-client decodes byte by byte as Latin-1, so every non-ASCII
/// character of the JSON (only strings can hold one) becomes `\uXXXX`.
pub fn frame(id: u64, name: &str, data: &Value) -> Bytes {
    let mut frame = format!("id:{id}\nevent:{name}\ndata:");
    for character in data.to_string().chars() {
        if character.is_ascii() {
            frame.push(character);
        } else {
            for unit in character.encode_utf16(&mut [0; 2]) {
                let _ = write!(frame, "\\u{unit:04x}");
            }
        }
    }
    frame.push_str("\n\n");
    Bytes::from(frame)
}

/// The event name of a frame made by `frame`.
pub fn event_name(frame: &[u8]) -> &[u8] {
    let line = frame.split(|byte| *byte == b'\n').nth(1);
    line.and_then(|line| line.strip_prefix(b"event:"))
        .unwrap_or_default()
}

/// The live end of one stream. Dropping it ends the stream cleanly once
/// what is queued has been written.
pub struct Sender {
    frames: mpsc::UnboundedSender<Bytes>,
    /// Bytes sent but not yet taken by the response body.
    queued: Arc<AtomicUsize>,
}

impl Sender {
    /// Queues a frame; `false` if the stream is gone or over its limit,
    /// and should be dropped.
    pub fn send(&self, frame: Bytes) -> bool {
        let queued = self.queued.fetch_add(frame.len(), Relaxed);
        queued < QUEUE_LIMIT && self.frames.send(frame).is_ok()
    }

    /// Whether the client has gone.
    pub fn is_closed(&self) -> bool {
        self.frames.is_closed()
    }
}

/// A stream: its sender, and the body of its `text/event-stream` response,
/// which writes the backlog, then live frames until the sender is dropped,
/// then the chunked terminator — a clean end that broker-client reports
/// with `onclose`, never a cut connection.
pub fn stream(backlog: Frames) -> (Sender, Body) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let taken = queued.clone();
    let live = UnboundedReceiverStream::new(receiver).map(move |frame: Bytes| {
        taken.fetch_sub(frame.len(), Relaxed);
        Some(frame)
    });
    let frames = tokio_stream::iter(backlog)
        .chain(live)
        .map_while(|frame| frame);
    let body = StreamBody::new(frames.map(|frame| Ok(Frame::data(frame))));
    (
        Sender {
            frames: sender,
            queued,
        },
        body.boxed_unsync(),
    )
}
