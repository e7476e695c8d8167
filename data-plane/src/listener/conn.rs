//! One downstream connection: HTTP/1.1 or HTTP/2 (h2c) by detection (hyper-util `auto`), under its deadlines:
//! - before its first request: `header_timeout` from accept (protocol detection and the HTTP/2 preface
//!   included), then it is dropped;
//! - with no request in flight: `idle_timeout`, then a graceful close (HTTP/1.1: closed; HTTP/2: GOAWAY, then
//!   dropped if the peer lingers); on HTTP/1.1, once the first byte of the next request arrives, `header_timeout`
//!   to finish its headers;
//! - on `stop` (drain): a graceful close, and dropped once `drain` has passed.
//!
//! Each request body runs under the body limits (`ClientBody`); a request is in flight from its headers until
//! its response body has been sent (or dropped). Also here: the refusal of a connection over the cap.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::{Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use super::{Downstream, Limits};
use crate::error::TOO_MANY_CONNECTIONS;
use crate::upstream::client_body::ClientBody;

/// Refusals being written at once; beyond that a refused connection is just closed.
pub(super) const MAX_REFUSALS: usize = 32;
/// How long a refused connection may take to send its request head and get its 503.
const REFUSAL_TIME: Duration = Duration::from_millis(500);
/// After a graceful close for idleness, how long the peer gets to go before the connection is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The HTTP server settings of a listener; connection deadlines are kept by `serve`, not by hyper.
pub(super) fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(None);
    b.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.h2_keepalive)
        .keep_alive_timeout(limits.header_timeout);
    b
}

/// One accepted connection's settings: when it was accepted (its first deadline counts from then, TLS
/// handshake included), the listener's HTTP settings and limits, and the drain signal.
pub(super) struct Conn<'a> {
    pub accepted: Instant,
    pub builder: &'a auto::Builder<TokioExecutor>,
    pub limits: &'a Limits,
    pub stop: watch::Receiver<bool>,
    pub drain: Duration,
}

impl Conn<'_> {
    /// Serves the connection (a TCP stream, or the TLS stream over it) until it ends, a deadline passes or the
    /// drain is over.
    pub(super) async fn serve<IO, H, F, B>(self, stream: IO, downstream: Downstream, handler: H)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        H: Fn(Request<ClientBody>, Downstream) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<B>> + Send + 'static,
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        serve(self, stream, downstream, handler).await
    }
}

async fn serve<IO, H, F, B>(conn_settings: Conn<'_>, stream: IO, downstream: Downstream, handler: H)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<ClientBody>, Downstream) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Conn {
        accepted,
        builder,
        limits,
        mut stop,
        drain,
    } = conn_settings;
    let peer = downstream.addr;
    let activity = Arc::new(Activity::new(accepted));
    let io = TokioIo::new(Watched {
        io: stream,
        activity: activity.clone(),
    });
    let svc = {
        let (activity, body_limits) = (activity.clone(), limits.body);
        service_fn(move |req: Request<Incoming>| {
            let guard = activity.begin(req.version() == Version::HTTP_2);
            let handler = handler.clone();
            let downstream = downstream.clone();
            // The request path's future is made inside, on first poll: made out here, the (large) future would
            // be copied into this one and again wherever hyper moves it.
            async move {
                let req = req.map(|b| ClientBody::new(b, body_limits));
                let resp = handler(req, downstream).await;
                Ok::<_, Infallible>(resp.map(|body| Tracked {
                    body,
                    guard: Some(guard),
                }))
            }
        })
    };
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let stopped = stop.wait_for(|s| *s);
    tokio::pin!(stopped);
    let timer = tokio::time::sleep_until(accepted + limits.header_timeout);
    tokio::pin!(timer);
    let side = Arc::new(SideWake::default());
    let side_waker = Waker::from(side.clone());
    let mut closing_until: Option<Instant> = None;
    let mut draining = false;
    loop {
        let now = Instant::now();
        let next = match closing_until {
            Some(t) => Next::Drop(t),
            None => activity.next(limits),
        };
        if let Some(at) = next.at().filter(|at| *at <= now) {
            if let Next::Close(_) = next {
                conn.as_mut().graceful_shutdown();
                closing_until = Some(at + CLOSE_GRACE);
                continue;
            }
            tracing::debug!(%peer, "connection deadline passed; closing it");
            return;
        }
        timer.as_mut().reset(next.check_at(now, limits));
        // The reset timer must be polled (registered) before the task sleeps.
        side.woken.store(true, Ordering::Release);
        let woke = std::future::poll_fn(|cx| {
            // The connection first, on every wake-up; the driver's own timer and drain signal only when one of
            // them woke the task (polling them on each of a request's wake-ups cost ~0.4% of a proxy core).
            if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                return Poll::Ready(Woke::Ended(r));
            }
            side.task.register(cx.waker());
            if side.woken.swap(false, Ordering::AcqRel) {
                let mut own = Context::from_waker(&side_waker);
                if timer.as_mut().poll(&mut own).is_ready() {
                    return Poll::Ready(Woke::Timer);
                }
                if !draining && stopped.as_mut().poll(&mut own).is_ready() {
                    return Poll::Ready(Woke::Stop);
                }
            }
            Poll::Pending
        })
        .await;
        match woke {
            Woke::Ended(r) => {
                if let Err(e) = r {
                    tracing::trace!(error = %e, "connection ended with an error");
                }
                return;
            }
            Woke::Timer => {}
            Woke::Stop => {
                draining = true;
                if closing_until.is_none() {
                    conn.as_mut().graceful_shutdown();
                }
                let until = Instant::now() + drain;
                closing_until = Some(closing_until.map_or(until, |t| t.min(until)));
            }
        }
    }
}

/// What woke a connection's driver.
enum Woke<E> {
    /// The connection ended (or failed).
    Ended(Result<(), E>),
    /// Time to look at the deadlines.
    Timer,
    /// The listener drains.
    Stop,
}

/// The waker the driver's own futures (its timer, the drain signal) are polled with: it notes that one of them
/// woke, then wakes the connection's task.
#[derive(Default)]
struct SideWake {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for SideWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// What happens next to a connection, and when.
#[derive(Debug, Clone, Copy)]
enum Next {
    /// Dropped: nothing in flight to save.
    Drop(Instant),
    /// Closed gracefully (idle).
    Close(Instant),
    /// A request is in flight: no connection deadline (the request's own timeouts apply).
    Busy,
}

impl Next {
    fn at(self) -> Option<Instant> {
        match self {
            Next::Drop(t) | Next::Close(t) => Some(t),
            Next::Busy => None,
        }
    }

    /// When the driver looks again. Requests and bytes never wake it (that would cost a wake-up per request):
    /// it looks at each deadline, and in between at least once per header timeout, so that a request head
    /// begun while idle (which brings its deadline forward) or a request that ended (which sets one) is seen in
    /// time to act at the exact deadline.
    fn check_at(self, now: Instant, limits: &Limits) -> Instant {
        let soon = now + limits.header_timeout;
        self.at().map_or(soon, |t| t.min(soon))
    }
}

/// What a connection's driver needs to know of its requests and bytes: atomics only, touched a few times per
/// request, read by the driver when it looks (times are nanoseconds since `origin`, the accept).
struct Activity {
    origin: Instant,
    in_flight: AtomicUsize,
    served: AtomicU64,
    idle_since: AtomicU64,
    /// 1 + when the first byte of the next HTTP/1.1 request came while idle; 0: none yet.
    head_started: AtomicU64,
    /// True while no request is in flight and no byte of the next one has come (one load per read otherwise).
    awaiting_head: AtomicBool,
    h2: AtomicBool,
}

impl Activity {
    fn new(origin: Instant) -> Self {
        Activity {
            origin,
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            awaiting_head: AtomicBool::new(false),
            h2: AtomicBool::new(false),
        }
    }

    fn since_origin(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn at(&self, nanos: u64) -> Instant {
        self.origin + Duration::from_nanos(nanos)
    }

    fn begin(self: &Arc<Self>, h2: bool) -> InFlight {
        self.awaiting_head.store(false, Ordering::Relaxed);
        if h2 {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.head_started.store(0, Ordering::Relaxed);
        self.served.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    fn end(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle_since
                .store(self.since_origin(), Ordering::Relaxed);
            self.head_started.store(0, Ordering::Relaxed);
            let h1 = !self.h2.load(Ordering::Relaxed);
            self.awaiting_head.store(h1, Ordering::Release);
        }
    }

    /// Bytes were read: if they begin the next HTTP/1.1 request, its header deadline starts now.
    fn on_read(&self) {
        if self.awaiting_head.load(Ordering::Relaxed)
            && self.awaiting_head.swap(false, Ordering::AcqRel)
            && self.in_flight.load(Ordering::Acquire) == 0
        {
            self.head_started
                .store(self.since_origin().saturating_add(1), Ordering::Relaxed);
        }
    }

    fn next(&self, limits: &Limits) -> Next {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Next::Busy;
        }
        if self.served.load(Ordering::Relaxed) == 0 {
            return Next::Drop(self.origin + limits.header_timeout);
        }
        match self.head_started.load(Ordering::Relaxed) {
            0 => {
                Next::Close(self.at(self.idle_since.load(Ordering::Relaxed)) + limits.idle_timeout)
            }
            t => Next::Drop(self.at(t - 1) + limits.header_timeout),
        }
    }
}

/// A request in flight, until its response body ends or is dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A response body that keeps its request in flight until it has been sent.
struct Tracked<B> {
    body: B,
    guard: Option<InFlight>,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let r = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.guard = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The connection's stream, telling `Activity` when bytes arrive.
struct Watched<IO> {
    io: IO,
    activity: Arc<Activity>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.on_read();
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Answers a connection over the cap with a 503 once its request head has come (an HTTP/1.1 client reads an
/// answer sent before its request as a broken connection), and closes it; a client silent for `REFUSAL_TIME`,
/// or one arriving while `MAX_REFUSALS` are being answered, is just closed.
pub(super) fn refuse(mut stream: TcpStream, refusals: &Arc<Semaphore>) {
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let _ = tokio::time::timeout(REFUSAL_TIME, async {
            let mut head = Vec::with_capacity(1024);
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                head.extend_from_slice(&buf[..n]);
            }
            stream.write_all(TOO_MANY_CONNECTIONS).await?;
            stream.shutdown().await
        })
        .await;
    });
}
