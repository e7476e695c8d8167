//! The outbound side of mesh mTLS: requests to an endpoint that has an identity go over TLS 1.3, presenting this
//! proxy's certificate and accepting only a server that proves exactly that identity. One client (one pool) per
//! (identity, protocol), with `https` URIs, so an mTLS connection is only ever reused for the identity it was
//! verified for and never shares a pool entry with a plaintext one. Each client's connector keeps its rustls
//! config (and with it the session cache, for resumption) until the proxy installs a new certificate; pooled
//! connections outlive that and keep working.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::TokioIo;
use meshwork_identity::SpiffeId;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::body::{BoxError, RequestBody};
use super::error::{MtlsConnectError, MtlsUnavailable};
use crate::config::snapshot::Protocol;
use crate::identity::MeshIdentity;
use crate::tls::{self, metrics, Side, Slot, TlsMetrics};

/// Peers (identity and protocol) with a client of their own; beyond this, one is dropped to make room (its pooled
/// connections close once idle; requests in flight finish).
const MAX_PEERS: usize = 1024;

/// The mTLS clients of one `Upstreams`, made on first use per peer.
pub(super) struct MtlsClients {
    identity: Arc<MeshIdentity>,
    metrics: Arc<TlsMetrics>,
    connect_timeout: Duration,
    idle: Duration,
    /// Per protocol (HTTP/1.1, HTTP/2), by identity: read per request without a lock or a key to build.
    clients: [ArcSwap<HashMap<SpiffeId, Client<MtlsConnector, RequestBody>>>; 2],
    grow: Mutex<()>,
}

fn slot(protocol: Protocol) -> usize {
    match protocol {
        Protocol::Http1 => 0,
        Protocol::Http2 => 1,
    }
}

impl MtlsClients {
    pub(super) fn new(
        identity: Arc<MeshIdentity>,
        metrics: Arc<TlsMetrics>,
        connect_timeout: Duration,
        idle: Duration,
    ) -> Self {
        MtlsClients {
            identity,
            metrics,
            connect_timeout,
            idle,
            clients: Default::default(),
            grow: Mutex::new(()),
        }
    }

    /// Whether this proxy can originate mTLS: it holds a certificate.
    pub(super) fn ready(&self) -> bool {
        self.identity.is_certified()
    }

    /// Sends `req` (whose URI is already `https`) to an endpoint that must prove `peer`.
    pub(super) fn request(
        &self,
        peer: &SpiffeId,
        protocol: Protocol,
        req: http::Request<RequestBody>,
    ) -> ResponseFuture {
        if let Some(client) = self.clients[slot(protocol)].load().get(peer) {
            return client.request(req);
        }
        self.add(peer, protocol).request(req)
    }

    fn add(&self, peer: &SpiffeId, protocol: Protocol) -> Client<MtlsConnector, RequestBody> {
        let _grow = self.grow.lock().unwrap_or_else(|p| p.into_inner());
        let clients = &self.clients[slot(protocol)];
        let current = clients.load();
        if let Some(client) = current.get(peer) {
            return client.clone();
        }
        let mut next = HashMap::clone(&current);
        if next.len() >= MAX_PEERS {
            if let Some(evict) = next.keys().next().cloned() {
                next.remove(&evict);
            }
        }
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(self.connect_timeout));
        // The URIs are `https` (the pool key); TLS is this connector's business, not HttpConnector's.
        http.enforce_http(false);
        let connector = MtlsConnector(Arc::new(ConnectorState {
            http,
            peer: peer.clone(),
            protocol,
            identity: self.identity.clone(),
            metrics: self.metrics.clone(),
            config: Slot::default(),
            handshake_timeout: self.connect_timeout,
        }));
        let client = super::client(connector, protocol, self.idle);
        next.insert(peer.clone(), client.clone());
        clients.store(Arc::new(next));
        client
    }
}

/// Connects to endpoints proving one identity.
#[derive(Clone)]
pub(super) struct MtlsConnector(Arc<ConnectorState>);

struct ConnectorState {
    http: HttpConnector,
    peer: SpiffeId,
    protocol: Protocol,
    identity: Arc<MeshIdentity>,
    metrics: Arc<TlsMetrics>,
    config: Slot<ClientConfig>,
    handshake_timeout: Duration,
}

impl ConnectorState {
    /// The config for the current certificate; a failure is counted like a failed handshake.
    fn config(&self) -> Result<Arc<ClientConfig>, BoxError> {
        let Some(current) = self.identity.current() else {
            self.metrics
                .handshake_failed(Side::Outbound, "no_certificate");
            return Err(MtlsUnavailable.into());
        };
        let built = self.config.get(&current, |c| {
            tls::client_config(c, &self.peer, self.protocol)
        });
        built.map_err(|e| {
            self.metrics.handshake_failed(Side::Outbound, "config");
            tracing::warn!(peer = %self.peer, error = %e, "cannot build the outbound mTLS config");
            e.into()
        })
    }

    async fn connect(&self, dst: Uri) -> Result<MtlsStream, BoxError> {
        use tower_service::Service;
        let config = self.config()?;
        let name = session_name(&dst).ok_or(super::UpstreamError::BadUri)?;
        let tcp = self.http.clone().call(dst.clone()).await?.into_inner();
        let handshake = TlsConnector::from(config).connect(name, tcp);
        let failed = |reason: &'static str, source: io::Error| {
            self.metrics.handshake_failed(Side::Outbound, reason);
            tracing::debug!(peer = %self.peer, %dst, reason, "outbound mTLS handshake failed");
            MtlsConnectError {
                peer: self.peer.clone(),
                reason,
                source,
            }
        };
        let stream = match tokio::time::timeout(self.handshake_timeout, handshake).await {
            Err(_) => return Err(failed("timeout", io::ErrorKind::TimedOut.into()).into()),
            Ok(Err(e)) => return Err(failed(metrics::io_reason(&e), e).into()),
            Ok(Ok(s)) => s,
        };
        let resumed = stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        self.metrics.handshake_ok(Side::Outbound, resumed);
        Ok(MtlsStream(TokioIo::new(Box::new(stream))))
    }
}

/// The name a connection to `dst` is made under. The server is verified by its SPIFFE ID, never a name; the name
/// keys rustls' session cache, so it names the endpoint, port included (peers on one host, as in a local mesh,
/// must not be offered each other's tickets: each would cost a failed resumption). It goes out as SNI, which
/// mesh servers ignore.
fn session_name(dst: &Uri) -> Option<ServerName<'static>> {
    let host = dst.host()?.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = host.parse().ok()?;
    let label = match ip {
        IpAddr::V4(v4) => v4.octets().map(|o| o.to_string()).join("-"),
        IpAddr::V6(v6) => v6.segments().map(|s| format!("{s:x}")).join("-"),
    };
    let port = dst.port_u16().unwrap_or(443);
    ServerName::try_from(format!("p{port}.{label}.meshwork.invalid")).ok()
}

type Connecting = Pin<Box<dyn Future<Output = Result<MtlsStream, BoxError>> + Send>>;

impl tower_service::Service<Uri> for MtlsConnector {
    type Response = MtlsStream;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Connecting {
        let state = self.0.clone();
        Box::pin(async move { state.connect(dst).await })
    }
}

/// An established mTLS connection to an upstream endpoint.
pub(super) struct MtlsStream(TokioIo<Box<TlsStream<TcpStream>>>);

impl Connection for MtlsStream {
    fn connected(&self) -> Connected {
        let (_, conn) = self.0.inner().get_ref();
        if conn.alpn_protocol() == Some(b"h2") {
            Connected::new().negotiated_h2()
        } else {
            Connected::new()
        }
    }
}

impl Read for MtlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl Write for MtlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::session_name;

    #[test]
    fn each_endpoint_has_its_own_session_name() {
        let name = |uri: &str| session_name(&uri.parse().unwrap()).map(|n| n.to_str().into_owned());
        assert_eq!(
            name("https://127.0.0.1:8080/x").as_deref(),
            Some("p8080.127-0-0-1.meshwork.invalid")
        );
        assert_ne!(
            name("https://127.0.0.1:8081/"),
            name("https://127.0.0.1:8080/")
        );
        assert_eq!(
            name("https://[::1]:9/").as_deref(),
            Some("p9.0-0-0-0-0-0-0-1.meshwork.invalid")
        );
        assert_eq!(name("https://backend:80/"), None);
    }
}
