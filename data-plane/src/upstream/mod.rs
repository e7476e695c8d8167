//! Stage 7: upstream connections. One HTTP/1.1 and one HTTP/2 (h2c, prior knowledge) client per proxy, each with a
//! keep-alive connection pool keyed by endpoint address, shared by every snapshot so a config change never drops
//! pooled connections; and TLS clients (`tls`): per identity for endpoints that prove one (mesh mTLS), per server
//! name for endpoints outside the mesh that speak TLS.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub mod body;
pub mod client_body;
mod connector;
pub mod error;
mod tls;

use crate::config::snapshot::{Endpoint, Protocol};
use crate::identity::MeshIdentity;
use crate::telemetry::CallMetrics;
use crate::tls::TlsMetrics;
use body::RequestBody;
use connector::Connector;
pub use error::UpstreamError;

#[derive(Clone)]
pub struct Upstreams {
    h1: Client<Connector, RequestBody>,
    h2: Client<Connector, RequestBody>,
    /// Endpoints with an identity (once the proxy has a certificate) and endpoints outside the mesh with TLS.
    tls: Arc<tls::TlsClients>,
    /// Clients for clusters whose TrafficPolicy sets its own connect or idle timeout, by (connect, idle).
    tuned: Arc<Mutex<HashMap<(Duration, Duration), Upstreams>>>,
    connect_timeout: Duration,
    mesh: Option<Mesh>,
    /// Where each request sent is timed (none in unit tests that do not look).
    calls: Option<Arc<CallMetrics>>,
}

/// What mTLS clients are made with.
#[derive(Clone)]
struct Mesh {
    identity: Arc<MeshIdentity>,
    metrics: Arc<TlsMetrics>,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams")
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

const IDLE: Duration = Duration::from_secs(90);

impl Upstreams {
    /// Plaintext clients only (endpoint identities are ignored).
    pub fn new(connect_timeout: Duration) -> Self {
        Self::with_timeouts(connect_timeout, IDLE, None)
    }

    /// Clients that reach endpoints with an identity over mTLS with the proxy's certificate (plaintext until it
    /// has one), counting handshakes in `metrics`.
    pub fn with_mtls(
        connect_timeout: Duration,
        identity: Arc<MeshIdentity>,
        metrics: Arc<TlsMetrics>,
    ) -> Self {
        Self::with_timeouts(connect_timeout, IDLE, Some(Mesh { identity, metrics }))
    }

    /// These clients, timing every request they send in `calls`.
    pub fn timed(mut self, calls: Arc<CallMetrics>) -> Self {
        self.calls = Some(calls);
        self
    }

    /// The clients for a cluster's `timeouts.connect` / `timeouts.idle` (the defaults when unset). Each distinct
    /// pair gets its own pools, made once.
    pub fn tuned(&self, connect: Option<Duration>, idle: Option<Duration>) -> Upstreams {
        if connect.is_none() && idle.is_none() {
            return self.clone();
        }
        let key = (
            connect.unwrap_or(self.connect_timeout),
            idle.unwrap_or(IDLE),
        );
        let mut map = self
            .tuned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(key)
            .or_insert_with(|| {
                let mut tuned = Self::with_timeouts(key.0, key.1, self.mesh.clone());
                tuned.calls = self.calls.clone();
                tuned
            })
            .clone()
    }

    fn with_timeouts(connect_timeout: Duration, idle: Duration, mesh: Option<Mesh>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.enforce_http(true);
        let h1 = client(Connector(connector.clone()), Protocol::Http1, idle);
        let h2 = client(Connector(connector), Protocol::Http2, idle);
        let tls = Arc::new(tls::TlsClients::new(
            mesh.as_ref().map(|m| m.identity.clone()),
            mesh.as_ref().map(|m| m.metrics.clone()).unwrap_or_default(),
            connect_timeout,
            idle,
        ));
        Upstreams {
            h1,
            h2,
            tls,
            tuned: Arc::default(),
            connect_timeout,
            mesh,
            calls: None,
        }
    }

    /// Sends `req` (an `http://` URI, see [`uri`]) to `endpoint`: over TLS to an endpoint outside the mesh that
    /// speaks it; over mTLS when the endpoint has an `identity` and this proxy has a certificate (the server must
    /// prove that identity); plaintext otherwise. Over TLS the URI becomes `https://`. `x-meshwork-source-proof`
    /// goes only to a mesh peer on a plaintext hop: over mTLS the handshake says who calls, and a system outside
    /// the mesh has no use for it (and could replay it).
    pub fn request(
        &self,
        protocol: Protocol,
        endpoint: &Endpoint,
        mut req: Request<RequestBody>,
    ) -> ResponseFuture {
        let target = match (&endpoint.tls, &endpoint.identity) {
            (Some(t), _) => Some(tls::Target::External(t.clone())),
            (None, Some(peer)) if self.tls.mesh_ready() => Some(tls::Target::Mesh(peer.clone())),
            _ => None,
        };
        // A scan of the few names first: `remove` hashes its argument even when (as nearly always) it is absent.
        let has_proof = || {
            req.headers()
                .keys()
                .any(|k| k == crate::caller::PROOF_HEADER)
        };
        if (target.is_some() || !endpoint.mesh_peer) && has_proof() {
            req.headers_mut().remove(crate::caller::PROOF_HEADER);
        }
        if let Some(target) = target {
            let mut parts = std::mem::take(req.uri_mut()).into_parts();
            parts.scheme = Some(Scheme::HTTPS);
            *req.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
            return self.tls.request(target, protocol, req);
        }
        match protocol {
            Protocol::Http1 => self.h1.request(req),
            Protocol::Http2 => self.h2.request(req),
        }
    }
}

/// A pooled client over `connector` for one protocol.
fn client<C>(connector: C, protocol: Protocol, idle: Duration) -> Client<C, RequestBody>
where
    C: hyper_util::client::legacy::connect::Connect + Clone,
{
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_timer(TokioTimer::new()).pool_idle_timeout(idle);
    match protocol {
        Protocol::Http1 => b.pool_max_idle_per_host(usize::MAX),
        Protocol::Http2 => b
            .timer(TokioTimer::new())
            .http2_only(true)
            .http2_keep_alive_interval(Duration::from_secs(30)),
    };
    b.build(connector)
}

/// Sends a request to one endpoint of `cluster` (a URI with the endpoint's authority, the request's path and query,
/// and the cluster's HTTP version; over mTLS if the endpoint has an identity, see [`Upstreams::request`]).
pub async fn send(
    clients: &Upstreams,
    cluster: &Arc<str>,
    protocol: Protocol,
    endpoint: &Endpoint,
    parts: http::request::Parts,
    body: RequestBody,
) -> Result<Response<Incoming>, UpstreamError> {
    let authority = &endpoint.authority;
    let uri = uri(authority.clone(), parts.uri.path_and_query()).ok_or(UpstreamError::BadUri)?;
    let timer = clients
        .calls
        .as_ref()
        .map(|m| m.start(cluster, &parts.method));
    let mut req = Request::from_parts(parts, body);
    *req.uri_mut() = uri;
    *req.version_mut() = version(protocol);
    let sent = clients.request(protocol, endpoint, req).await;
    if let Some(timer) = timer {
        match &sent {
            Ok(resp) => timer.answered(resp.status().as_u16()),
            Err(e) if e.is_connect() => timer.failed("connect"),
            Err(_) => timer.failed("failed"),
        }
    }
    sent.map_err(|source| {
        let (cluster, addr) = (cluster.clone(), authority.clone());
        if source.is_connect() {
            UpstreamError::Connect {
                cluster,
                addr,
                source,
            }
        } else {
            UpstreamError::Failed {
                cluster,
                addr,
                source,
            }
        }
    })
}

/// The HTTP version requests to a cluster of this protocol are sent with.
pub fn version(p: Protocol) -> Version {
    match p {
        Protocol::Http1 => Version::HTTP_11,
        Protocol::Http2 => Version::HTTP_2,
    }
}

/// `http://authority/path?query` (path `/` when the request has none).
pub fn uri(authority: Authority, pq: Option<&PathAndQuery>) -> Option<Uri> {
    let mut p = http::uri::Parts::default();
    p.scheme = Some(Scheme::HTTP);
    p.authority = Some(authority);
    p.path_and_query = Some(
        pq.cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    Uri::from_parts(p).ok()
}

/// For callers that only need the status (mirrors): reads and drops the body so the connection returns to the pool.
pub async fn drain(resp: Response<Incoming>) {
    use http_body_util::BodyExt;
    let mut body = resp.into_body();
    while let Some(Ok(_)) = body.frame().await {}
}
