//! The client's request body as the proxy reads it: hyper's `Incoming` with the two bounds a client may not
//! exceed (issue 11): a maximum size, and a minimum data rate after a grace period, counted only while the proxy
//! is waiting for the client (time spent waiting for a slow upstream to take the bytes is not the client's).
//! A client that breaks either bound gets `ClientBodyFailed::{TooLarge, TooSlow}` (413, 408), never an upstream
//! failure.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::body::{BoxError, ClientBodyFailed};

/// The bounds on a client's request body; `None` turns one off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// Largest body accepted, in bytes.
    pub max_bytes: Option<u64>,
    /// Minimum average rate, in bytes/s, once `grace` of waiting has passed.
    pub min_rate: Option<u32>,
    pub grace: Duration,
}

impl Default for BodyLimits {
    /// Kestrel's minimum data rate (240 bytes/s after 5 s) and a 32 MiB maximum body (Kestrel's is ~28.6 MiB).
    fn default() -> Self {
        BodyLimits {
            max_bytes: Some(32 * 1024 * 1024),
            min_rate: Some(240),
            grace: Duration::from_secs(5),
        }
    }
}

/// A client's request body under `BodyLimits`. Kept small (it travels by value through the request path): the
/// rate watch is boxed, and made only when the body first has to wait for the client.
pub struct ClientBody {
    inner: Incoming,
    limits: BodyLimits,
    received: u64,
    watch: Option<Box<RateWatch>>,
    failed: bool,
}

/// The waiting a body has done, against its minimum rate.
struct RateWatch {
    /// Time spent waiting for the client, not counting the current wait.
    waited: Duration,
    /// When the current wait (a poll that found no data) began.
    waiting_since: Option<Instant>,
    /// Wakes the body when the current wait reaches the rate's deadline.
    timer: Pin<Box<Sleep>>,
}

impl ClientBody {
    pub fn new(inner: Incoming, limits: BodyLimits) -> Self {
        ClientBody {
            inner,
            limits,
            received: 0,
            watch: None,
            failed: false,
        }
    }

    /// The declared length already exceeds the maximum: refuse before anything is forwarded.
    pub fn declared_too_large(&self) -> Option<ClientBodyFailed> {
        let max = self.limits.max_bytes?;
        let declared = self.inner.size_hint().exact()?;
        (declared > max).then_some(ClientBodyFailed::TooLarge(max))
    }

    fn fail(&mut self, e: ClientBodyFailed) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.failed = true;
        Poll::Ready(Some(Err(Box::new(e))))
    }

    /// Ends the current wait, if any, adding it to the time waited.
    fn stop_waiting(&mut self) {
        if let Some(w) = self.watch.as_deref_mut() {
            if let Some(since) = w.waiting_since.take() {
                w.waited += since.elapsed();
            }
        }
    }

    /// The client is behind: the total time waited has passed what its bytes so far allow. Otherwise arms the
    /// timer for the moment it would be, so a client that sends nothing more is still caught.
    fn too_slow(&mut self, cx: &mut Context<'_>) -> Option<u32> {
        let rate = self.limits.min_rate.filter(|r| *r > 0)?;
        let now = Instant::now();
        let w = self.watch.get_or_insert_with(|| {
            Box::new(RateWatch {
                waited: Duration::ZERO,
                waiting_since: None,
                timer: Box::pin(tokio::time::sleep_until(now)),
            })
        });
        let since = *w.waiting_since.get_or_insert(now);
        let earned = Duration::from_secs_f64(self.received as f64 / f64::from(rate));
        let allowed = earned.max(self.limits.grace);
        let deadline = since + allowed.saturating_sub(w.waited);
        if now >= deadline {
            return Some(rate);
        }
        if w.timer.deadline() != deadline {
            w.timer.as_mut().reset(deadline);
        }
        w.timer.as_mut().poll(cx).is_ready().then_some(rate)
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.stop_waiting();
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    if let Some(max) = this.limits.max_bytes.filter(|m| this.received > *m) {
                        return this.fail(ClientBodyFailed::TooLarge(max));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => this.fail(ClientBodyFailed::Read(e)),
            Poll::Ready(None) => {
                this.stop_waiting();
                Poll::Ready(None)
            }
            Poll::Pending => match this.too_slow(cx) {
                Some(rate) => this.fail(ClientBodyFailed::TooSlow(rate)),
                None => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
