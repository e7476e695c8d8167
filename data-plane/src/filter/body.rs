//! A message body streamed through Wasm filters' body (and trailers) callbacks.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::chain::{BodyFilter, BodyReplied, BodyStep, Chain, Resume};
use crate::upstream::body::{BoxError, StoppedByProxy};

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
    /// A filter paused at the end of the body: the wait for it, after which the rest of the filters run.
    waiting: Option<Resume>,
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
            waiting: None,
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

    /// Offers the held bytes to the filters from the `from`th on: a frame to send, nothing yet (held, or waiting on
    /// a filter that paused at the end), or why the body stops.
    fn offer(
        &mut self,
        end_of_stream: bool,
        from: usize,
    ) -> Result<Option<Frame<Bytes>>, BoxError> {
        match self.filter.run_from(&mut self.held, end_of_stream, from)? {
            BodyStep::Hold => Ok(None),
            BodyStep::Wait(wait) => {
                self.waiting = Some(self.filter.wait(wait));
                Ok(None)
            }
            BodyStep::Replied(plugin) => Err(Box::new(BodyReplied { plugin })),
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

    /// Polls the wait on a filter that paused at the end of the body; once it resumes, the filters after it run.
    fn poll_waiting(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Frame<Bytes>>, BoxError>> {
        let Some(waiting) = self.waiting.as_mut() else {
            return Poll::Ready(Ok(None));
        };
        let from = std::task::ready!(waiting.as_mut().poll(cx));
        self.waiting = None;
        Poll::Ready(from.and_then(|from| self.offer(true, from)))
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // Errors of the proxy's own making are marked so (the inner body's own errors pass as they are).
        let stopped = |e: BoxError| -> BoxError { Box::new(StoppedByProxy(e)) };
        loop {
            if self.waiting.is_some() {
                match std::task::ready!(self.poll_waiting(cx)) {
                    Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                    Ok(None) => continue,
                    Err(e) => return Poll::Ready(Some(Err(stopped(e)))),
                }
            }
            if self.done {
                return Poll::Ready(self.trailers.take().map(Ok));
            }
            let end_of_stream = match std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        self.hold(data);
                        if self.held.len() > self.filter.limit {
                            return Poll::Ready(Some(Err(stopped(Box::new(
                                self.filter.too_large(),
                            )))));
                        }
                        // The last chunk of a body of known length carries end_of_stream, as in Envoy, rather
                        // than costing every filter one more callback with nothing in it.
                        self.inner.is_end_stream()
                    }
                    Err(frame) => {
                        if let Ok(mut trailers) = frame.into_trailers() {
                            if let Err(e) = self.filter.on_trailers(&mut trailers) {
                                return Poll::Ready(Some(Err(stopped(Box::new(e)))));
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
            match self.offer(end_of_stream, 0) {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) => continue,
                Err(e) => return Poll::Ready(Some(Err(stopped(e)))),
            }
        }
    }
}

impl<B: Body<Data = Bytes, Error = BoxError> + Unpin> Body for FilteredBody<B> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.get_mut().poll(cx)
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
