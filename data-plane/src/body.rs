//! Body types of the proxy: named enums rather than boxed trait objects, so streaming costs no allocation.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::mpsc;

use crate::filter::chain::{BodyFilter, BodyStep, Chain};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body sent to an upstream.
pub enum RequestBody {
    /// The client's body, streamed through.
    Incoming(Incoming),
    /// The client's body, streamed through, with each data frame also copied to mirror requests.
    Tee {
        inner: Incoming,
        copies: Vec<mpsc::Sender<Bytes>>,
    },
    /// A mirror's copy of a body.
    Mirror(mpsc::Receiver<Bytes>),
    Empty,
    /// A body the proxy made (a Wasm filter's callout).
    Full(Option<Bytes>),
    /// A body passed through Wasm filters' `proxy_on_request_body`.
    Filtered(Box<FilteredBody<RequestBody>>),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RequestBody::Tee { inner, copies } => {
                let frame = std::task::ready!(Pin::new(inner).poll_frame(cx));
                match &frame {
                    // A mirror that cannot keep up loses its copy (its request fails); the real one never waits.
                    Some(Ok(f)) => {
                        if let Some(data) = f.data_ref() {
                            copies.retain(|tx| tx.try_send(data.clone()).is_ok());
                        }
                    }
                    _ => copies.clear(),
                }
                Poll::Ready(frame.map(|r| r.map_err(Into::into)))
            }
            RequestBody::Mirror(rx) => rx.poll_recv(cx).map(|d| d.map(|b| Ok(Frame::data(b)))),
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            RequestBody::Filtered(f) => f.poll(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Incoming(b) | RequestBody::Tee { inner: b, .. } => b.is_end_stream(),
            RequestBody::Mirror(_) | RequestBody::Filtered(_) => false,
            RequestBody::Empty => true,
            RequestBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Incoming(b) | RequestBody::Tee { inner: b, .. } => b.size_hint(),
            RequestBody::Mirror(_) | RequestBody::Filtered(_) => SizeHint::default(),
            RequestBody::Empty | RequestBody::Full(None) => SizeHint::with_exact(0),
            RequestBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
        }
    }
}

/// Body sent to a client.
pub enum ResponseBody {
    Upstream(Incoming),
    Full(Option<Bytes>),
    /// An upstream body passed through Wasm filters' `proxy_on_response_body`.
    Filtered(Box<FilteredBody<ResponseBody>>),
    /// An upstream body that holds its upstream's bulkhead slot until it ends (or is dropped).
    Held(Incoming, tokio::sync::OwnedSemaphorePermit),
}

impl ResponseBody {
    pub fn text(s: impl Into<Bytes>) -> Self {
        ResponseBody::Full(Some(s.into()))
    }

    pub fn empty() -> Self {
        ResponseBody::Full(None)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Upstream(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ResponseBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            ResponseBody::Filtered(f) => f.poll(cx),
            ResponseBody::Held(b, _) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream(b) => b.is_end_stream(),
            ResponseBody::Full(b) => b.is_none(),
            ResponseBody::Filtered(_) => false,
            ResponseBody::Held(b, _) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream(b) => b.size_hint(),
            ResponseBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ResponseBody::Full(None) => SizeHint::with_exact(0),
            ResponseBody::Filtered(_) => SizeHint::default(),
            ResponseBody::Held(b, _) => b.size_hint(),
        }
    }
}

/// Streams a body through Wasm filters' body (and trailers) callbacks. Chunks flow on as soon as every body filter
/// continues (shared with the filters, not copied, unless one rewrites them); while one pauses, bytes are held (up
/// to the filters' `bodyBuffer` limit, beyond which the body fails with `BodyTooLarge`) and offered again with the
/// next chunk, or at the end of the stream. It may own the filter chain, so the filters' stream contexts end (done,
/// log, delete) when the body does.
///
/// The message keeps its Content-Length unless a filter removed it in its headers callback (the contract Envoy's
/// filters follow before they change a body's length). If a filter changes the length anyway, the body fails with
/// `LengthChanged` rather than send bytes that disagree with the header.
pub struct FilteredBody<B> {
    inner: B,
    filter: BodyFilter,
    held: Bytes,
    trailers: Option<Frame<Bytes>>,
    done: bool,
    /// The Content-Length the message is sent with, if any, and the bytes sent so far.
    declared: Option<u64>,
    sent: u64,
    _chain: Option<Chain>,
}

/// A filter changed the length of a body whose Content-Length had already been sent.
#[derive(Debug, thiserror::Error)]
#[error("a Wasm filter changed the {side} body's length (content-length {declared}, the filtered body has {actual}{more} bytes) without removing content-length in its headers callback")]
pub struct LengthChanged {
    pub side: &'static str,
    pub declared: u64,
    pub actual: u64,
    pub more: &'static str,
}

impl<B: Body<Data = Bytes, Error = BoxError> + Unpin> FilteredBody<B> {
    /// `declared`: the Content-Length the message carries after the headers callbacks (None: chunked or
    /// HTTP/2 framing, so the filters may change the length freely).
    pub fn new(inner: B, filter: BodyFilter, chain: Option<Chain>, declared: Option<u64>) -> Self {
        FilteredBody {
            inner,
            filter,
            held: Bytes::new(),
            trailers: None,
            done: false,
            declared,
            sent: 0,
            _chain: chain,
        }
    }

    fn hold(&mut self, data: Bytes) {
        if self.held.is_empty() {
            self.held = data;
            return;
        }
        // Appending while a filter pauses: reuse the held buffer when nothing else shares it.
        let mut buf = match std::mem::take(&mut self.held).try_into_mut() {
            Ok(buf) => buf,
            Err(shared) => bytes::BytesMut::from(&shared[..]),
        };
        buf.extend_from_slice(&data);
        self.held = buf.freeze();
    }

    fn offer(&mut self, end_of_stream: bool) -> Result<Option<Frame<Bytes>>, BoxError> {
        match self.filter.run(&mut self.held, end_of_stream)? {
            BodyStep::Hold => Ok(None),
            BodyStep::Replied(plugin) => {
                Err(Box::new(crate::filter::chain::BodyReplied { plugin }))
            }
            BodyStep::Release => {
                let out = std::mem::take(&mut self.held);
                self.sent += out.len() as u64;
                if let Some(declared) = self.declared {
                    if self.sent > declared || (end_of_stream && self.sent != declared) {
                        return Err(Box::new(LengthChanged {
                            side: self.filter.side(),
                            declared,
                            actual: self.sent,
                            more: if end_of_stream { "" } else { " or more" },
                        }));
                    }
                }
                Ok((!out.is_empty()).then(|| Frame::data(out)))
            }
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.done {
                return Poll::Ready(self.trailers.take().map(Ok));
            }
            let end_of_stream = match std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        self.hold(data);
                        if self.held.len() > self.filter.limit {
                            return Poll::Ready(Some(Err(Box::new(self.filter.too_large()))));
                        }
                        // The last chunk of a body of known length carries end_of_stream, as in Envoy, rather
                        // than costing every filter one more callback with nothing in it.
                        self.inner.is_end_stream()
                    }
                    Err(frame) => {
                        if let Ok(mut trailers) = frame.into_trailers() {
                            if let Err(e) = self.filter.on_trailers(&mut trailers) {
                                return Poll::Ready(Some(Err(Box::new(e))));
                            }
                            self.trailers = Some(Frame::trailers(trailers));
                        }
                        true
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => true,
            };
            self.done = end_of_stream;
            match self.offer(end_of_stream) {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) => continue,
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
        }
    }
}
