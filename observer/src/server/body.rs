//! Response bodies: a fixed one, or a scrape streamed from the thread that renders it.
//!
//! A scrape is rendered (text or protobuf, then gzip when asked) on a blocking thread in
//! chunks of [`CHUNK`] bytes handed over through a bounded channel of [`IN_FLIGHT`]
//! chunks, so a scrape's memory does not grow with the number of cgroups and a slow reader
//! holds a few chunks, never the whole exposition. The body carries the request's guard
//! (see `limits`): the connection counts as busy until the body is dropped, after its last
//! byte or when the connection goes.

use std::convert::Infallible;
use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use hyper::body::{Frame, SizeHint};
use tokio::sync::mpsc;

use super::limits::Request;
use super::negotiate::Format;
use crate::exposition::{Scrape, protobuf, text};
use crate::histograms::Histograms;

/// Bytes rendered before they are handed to the connection.
pub const CHUNK: usize = 64 * 1024;
/// Chunks rendered ahead of the socket.
pub const IN_FLIGHT: usize = 4;

enum Kind {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

/// A response body.
pub struct Body {
    kind: Kind,
    /// Held for its `Drop`: the request ends with the body.
    request: Option<Request>,
}

impl Body {
    /// A fixed body.
    #[must_use]
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self {
            kind: Kind::Full(Some(bytes.into())),
            request: None,
        }
    }

    /// No body.
    #[must_use]
    pub fn empty() -> Self {
        Self {
            kind: Kind::Full(None),
            request: None,
        }
    }

    /// Keeps `request` until the body is dropped.
    #[must_use]
    pub fn holding(mut self, request: Request) -> Self {
        self.request = Some(request);
        self
    }

    /// The scrape rendered in `format` (gzip'd if `gzip`), streamed.
    #[must_use]
    pub fn scrape(scrape: Scrape, format: Format, hist: Histograms, gzip: bool) -> Self {
        let (tx, rx) = mpsc::channel::<Bytes>(IN_FLIGHT);
        tokio::task::spawn_blocking(move || render(&scrape, format, hist, gzip, &tx));
        Self {
            kind: Kind::Stream(rx),
            request: None,
        }
    }
}

/// Where the rendered pieces go: straight to the channel, or through gzip.
struct Sink<'a> {
    tx: &'a mpsc::Sender<Bytes>,
    gzip: Option<GzEncoder<Vec<u8>>>,
    /// The receiver is gone (the client went away): render the rest into nothing.
    gone: bool,
}

impl Sink<'_> {
    fn send(&mut self, b: Bytes) {
        if !self.gone && self.tx.blocking_send(b).is_err() {
            self.gone = true;
        }
    }

    fn put(&mut self, piece: &[u8]) {
        if self.gone {
            return;
        }
        match &mut self.gzip {
            None => self.send(Bytes::copy_from_slice(piece)),
            Some(gz) => {
                // Writing into a Vec cannot fail.
                let _ = gz.write_all(piece);
                if gz.get_ref().len() >= CHUNK {
                    let out = std::mem::take(gz.get_mut());
                    self.send(Bytes::from(out));
                }
            }
        }
    }

    fn finish(mut self) {
        if let Some(gz) = self.gzip.take()
            && let Ok(rest) = gz.finish()
        {
            self.send(Bytes::from(rest));
        }
    }
}

fn render(scrape: &Scrape, format: Format, hist: Histograms, gzip: bool, tx: &mpsc::Sender<Bytes>) {
    let mut sink = Sink {
        tx,
        // Level 1: most of the size gain of gzip for a fraction of the CPU of its default
        // (the exposition repeats its label sets; README "Measured" has the bytes).
        gzip: gzip.then(|| GzEncoder::new(Vec::with_capacity(CHUNK + 4096), Compression::fast())),
        gone: false,
    };
    match format {
        Format::Text => text::stream(scrape, hist, CHUNK, |p| sink.put(p.as_bytes())),
        Format::Protobuf => protobuf::stream(scrape, hist, CHUNK, |p| sink.put(p)),
    }
    sink.finish();
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.get_mut().kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream(rx) => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.kind, Kind::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Stream(_) => SizeHint::default(),
        }
    }
}
