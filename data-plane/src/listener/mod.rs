//! Stages 1-2: bind, accept under a connection cap (the excess is refused with a 503; an accept that fails for
//! lack of file descriptors backs off), one task per connection (first TLS where the listener has it: on a
//! sidecar's inbound listener mTLS or plaintext by sniffing, on a gateway HTTPS listener TLS with the operator's
//! certificates: `tls`; then `conn`: HTTP/1.1 or HTTP/2 by detection, under the deadlines of `Limits`), graceful
//! drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::stack::{handle, ListenerCtx};
use crate::tls::serving::ServingCerts;
use crate::tls::{Inbound, TlsMetrics, VerifiedPeer};
use crate::upstream::client_body::{BodyLimits, ClientBody};

mod conn;
#[cfg(test)]
mod tests;
mod tls;

/// Who is on the other end of a downstream connection, as each of its requests is handed it.
#[derive(Clone, Debug)]
pub struct Downstream {
    pub addr: SocketAddr,
    /// The caller an mTLS handshake proved (sidecar inbound listeners); `None` on plaintext connections.
    pub peer: Option<Arc<VerifiedPeer>>,
    /// The client spoke TLS to a gateway HTTPS listener (`x-forwarded-proto: https`, `:scheme` https).
    pub https: bool,
}

/// What a listener does with a connection before HTTP.
#[derive(Clone)]
pub enum Termination {
    /// A sidecar's inbound listener: mesh mTLS or, as the mode allows, plaintext (by sniffing).
    Mesh(Arc<Inbound>),
    /// A gateway listener: TLS with the operator's certificates while the snapshot makes it HTTPS, else plaintext.
    Https {
        certs: Arc<ServingCerts>,
        listener: Arc<str>,
        metrics: Arc<TlsMetrics>,
    },
}

/// What a client may hold on a listener, and for how long (issue 11). The defaults follow Envoy's edge
/// recommendations and Kestrel's body rate; every one is a flag of `meshwork-proxy` (docs/security.md).
#[derive(Debug, Clone)]
pub struct Limits {
    /// From accept to the first request's headers (protocol detection and the HTTP/2 preface included), and on
    /// HTTP/1.1 from the first byte of each later request to the end of its headers.
    pub header_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/1.1) or sent GOAWAY (HTTP/2).
    pub idle_timeout: Duration,
    /// HTTP/2: a PING this often; a peer that does not answer within `header_timeout` is dropped.
    pub h2_keepalive: Option<Duration>,
    /// Open connections on this listener beyond which new ones are refused with a 503.
    pub max_connections: usize,
    /// Bounds on each request body.
    pub body: BodyLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            h2_keepalive: Some(Duration::from_secs(30)),
            max_connections: 10_000,
            body: BodyLimits::default(),
        }
    }
}

/// The downstream connections the whole process may hold, whatever the listener: half of what the
/// file-descriptor limit leaves after a reserve (each may need an upstream connection; the admin listener, the
/// control-plane stream and the Wasm cache need theirs), so a flood of connections never leaves the proxy unable
/// to answer `/ready` or to reach an upstream.
#[derive(Clone)]
pub struct FdBudget(Arc<Semaphore>);

impl FdBudget {
    const RESERVED: u64 = 64;

    /// Raises the soft file-descriptor limit to the hard one (as Go's runtime does), then sizes the budget.
    pub fn from_process_limit() -> Self {
        let open_files = raise_fd_limit().unwrap_or(1024);
        let n = open_files.saturating_sub(Self::RESERVED) / 2;
        Self::new(usize::try_from(n).unwrap_or(usize::MAX).max(1))
    }

    pub fn new(connections: usize) -> Self {
        FdBudget(Arc::new(Semaphore::new(
            connections.min(Semaphore::MAX_PERMITS),
        )))
    }
}

fn raise_fd_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

/// Connections the kernel queues for a listener before the proxy accepts them. The standard library's 128 is too
/// few for a burst: once the queue is full, Linux drops the handshake's last ACK while the client already counts
/// itself connected, and those connections trickle in seconds later as the SYN-ACK is retransmitted (1 s, 3 s,
/// 7 s...), each then holding a slot until its own deadline; with a deeper queue the proxy sees a burst at once
/// and refuses what is over its caps at once. (Envoy's default is 1024 too; the kernel caps it at somaxconn.)
const LISTEN_BACKLOG: i32 = 1024;

/// Binds a listening socket now (so a port clash is reported before any config is published); serving starts later.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As the standard library does on Unix: a restarted proxy can bind while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Serves the request path until `stop` turns true, then stops accepting and gives open connections `drain` to
/// finish.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<ListenerCtx>,
    stop: watch::Receiver<bool>,
    drain: Duration,
    limits: Arc<Limits>,
    budget: FdBudget,
) {
    let tls = ctx.termination.clone();
    let connections = Some(ctx.metrics.connections());
    let handler = move |req: Request<ClientBody>, downstream: Downstream| {
        let ctx = ctx.clone();
        async move { handle(&ctx, req, downstream).await }
    };
    let each = PerConnection { tls, connections };
    serve_with(listener, handler, stop, drain, limits, budget, each).await
}

/// What each accepted connection goes through besides the handler: TLS (see `tls.rs`), and the listener's
/// connection counts.
#[derive(Default)]
pub struct PerConnection {
    pub tls: Option<Termination>,
    pub connections: Option<crate::telemetry::Connections>,
}

/// Accepts and serves connections with `handler`, under `limits`, until `stop`; then drains for up to `drain`.
/// With `tls`, each connection first goes through it (see `tls.rs`).
pub async fn serve_with<H, F, B>(
    listener: TcpListener,
    handler: H,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
    limits: Arc<Limits>,
    budget: FdBudget,
    each: PerConnection,
) where
    H: Fn(Request<ClientBody>, Downstream) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let PerConnection { tls, connections } = each;
    let own = Arc::new(Semaphore::new(
        limits.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let refusals = Arc::new(Semaphore::new(conn::MAX_REFUSALS));
    let builder = Arc::new(conn::builder(&limits));
    let mut at_cap = false;
    let mut backoff = Backoff::default();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => {
                backoff.reset();
                x
            }
            Err(e) => {
                backoff.wait(&e).await;
                continue;
            }
        };
        let Some(permits) = admit(&own, &budget) else {
            if !at_cap {
                tracing::warn!(
                    max = limits.max_connections,
                    "connection cap reached: refusing new connections with 503"
                );
                at_cap = true;
            }
            conn::refuse(stream, &refusals);
            continue;
        };
        at_cap = false;
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let (limits, stop, builder) = (limits.clone(), stop.clone(), builder.clone());
        let tls = tls.clone();
        // Counted open from accept to close (TLS handshakes included).
        let open = connections
            .as_ref()
            .map(crate::telemetry::Connections::open);
        tokio::spawn(async move {
            let _open = open;
            let accepted = tokio::time::Instant::now();
            let conn = conn::Conn {
                accepted,
                builder: &builder,
                limits: &limits,
                stop,
                drain,
            };
            let plain = Downstream {
                addr: peer,
                peer: None,
                https: false,
            };
            let Some(tls) = tls else {
                conn.serve(stream, plain, handler).await;
                drop(permits);
                return;
            };
            let deadline = accepted + limits.header_timeout;
            match tls::accept(&tls, stream, deadline).await {
                Some(tls::Accepted::Plaintext(stream)) => conn.serve(stream, plain, handler).await,
                Some(tls::Accepted::Mesh(stream, verified)) => {
                    let downstream = Downstream {
                        peer: Some(verified),
                        ..plain
                    };
                    conn.serve(stream, downstream, handler).await
                }
                Some(tls::Accepted::Https(stream)) => {
                    let downstream = Downstream {
                        https: true,
                        ..plain
                    };
                    conn.serve(stream, downstream, handler).await
                }
                None => {}
            }
            drop(permits);
        });
    }
    drop(listener);
    // Each connection closes itself once `drain` has passed; this waits for the last of them.
    let all = u32::try_from(limits.max_connections.min(Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
    if tokio::time::timeout(drain + Duration::from_secs(1), own.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("drain period over; connections still open");
    }
}

/// A connection slot on this listener and in the process's budget, or `None` when either is full.
fn admit(
    own: &Arc<Semaphore>,
    budget: &FdBudget,
) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
    let mine = own.clone().try_acquire_owned().ok()?;
    let process = budget.0.clone().try_acquire_owned().ok()?;
    Some((mine, process))
}

/// Exponential back-off for failed accepts (out of file descriptors, out of memory): 5 ms doubling to 1 s, so a
/// process at its limit neither spins nor stops accepting for long once descriptors are free again.
#[derive(Default)]
struct Backoff {
    next: Option<Duration>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    async fn wait(&mut self, e: &std::io::Error) {
        let d = self.next.unwrap_or(Self::FIRST);
        if d == Self::FIRST {
            tracing::warn!(error = %e, "accept failed; backing off");
        }
        self.next = Some((d * 2).min(Self::MAX));
        tokio::time::sleep(d).await;
    }

    fn reset(&mut self) {
        self.next = None;
    }
}
