//! Body types of the proxy: named enums rather than boxed trait objects, so streaming costs no allocation (a body
//! that Wasm filters read is the one exception: `filter::body` boxes it).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::mpsc;

use super::client_body::ClientBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body passed through something of the proxy's own (Wasm filters' body callbacks) that yields bytes.
pub type Boxed = Pin<Box<dyn Body<Data = Bytes, Error = BoxError> + Send>>;

/// A body the proxy itself stopped (a filter refused it, answered instead, or found it too large): when an
/// upstream call fails with this in its error's sources, the upstream is not to blame.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoppedByProxy(#[source] pub BoxError);

/// The client's own request body failed: the client's problem, never the upstream's, so it feeds no breaker,
/// outlier detection, retry or balancer. `error.rs` answers 400, 408 or 413 by the kind.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyFailed {
    /// Bad chunked framing, the client went away mid-body.
    #[error("the client's request body failed")]
    Read(#[source] hyper::Error),
    /// The body arrived slower than the listener's minimum data rate (after its grace period).
    #[error("the request body arrived slower than {0} bytes/s")]
    TooSlow(u32),
    /// The body is larger than the proxy accepts.
    #[error("the request body exceeds {0} bytes")]
    TooLarge(u64),
}

/// Body sent to an upstream.
pub enum RequestBody {
    /// The client's body, streamed through.
    Incoming(ClientBody),
    /// The client's body, streamed through, with each data frame also copied to mirror requests.
    Tee {
        inner: ClientBody,
        copies: Vec<mpsc::Sender<Bytes>>,
    },
    /// A mirror's copy of a body.
    Mirror(mpsc::Receiver<Bytes>),
    Empty,
    /// A body the proxy made (a Wasm filter's callout).
    Full(Option<Bytes>),
    /// A body passed through Wasm filters' `proxy_on_request_body`.
    Filtered(Boxed),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Incoming(b) => Pin::new(b).poll_frame(cx),
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
                Poll::Ready(frame)
            }
            RequestBody::Mirror(rx) => rx.poll_recv(cx).map(|d| d.map(|b| Ok(Frame::data(b)))),
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            RequestBody::Filtered(f) => f.as_mut().poll_frame(cx),
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
    Filtered(Boxed),
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
            ResponseBody::Filtered(f) => f.as_mut().poll_frame(cx),
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
