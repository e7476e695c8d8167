//! TLS to upstream endpoints, of two kinds ([`Target`]). Mesh mTLS to an endpoint that has an identity: TLS 1.3,
//! this proxy's certificate, and only a server proving exactly that identity is accepted. TLS originated to an
//! endpoint outside the mesh (a Workload's `spec.tls`): the server must present a certificate valid for the
//! configured name from a CA of the given file or of the system's trust store; no client certificate. One client
//! (one pool) per (target, protocol), with `https` URIs, so a TLS connection is only ever reused for what it was
//! verified for and never shares a pool entry with a plaintext one. A mesh connector keeps its rustls config (and
//! with it the session cache, for resumption) until the proxy installs a new certificate; pooled connections
//! outlive that and keep working.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Uri;
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
use super::connector::Stream;
use super::error::{MtlsUnavailable, TlsConnectError};
use crate::config::snapshot::{Protocol, UpstreamTls};
use crate::identity::MeshIdentity;
use crate::tls::{self, metrics, Side, Slot, TlsMetrics};

/// Targets (and protocols) with a client of their own; beyond this, one is dropped to make room (its pooled
/// connections close once idle; requests in flight finish).
const MAX_PEERS: usize = 1024;

/// What an upstream TLS connection must reach.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Target {
    /// A mesh endpoint proving this SPIFFE ID (mutual TLS with this proxy's certificate).
    Mesh(SpiffeId),
    /// An endpoint outside the mesh, verified for a name (no client certificate).
    External(Arc<UpstreamTls>),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Mesh(id) => write!(f, "{id}"),
            Target::External(t) => f.write_str(&t.sni),
        }
    }
}

impl Target {
    fn side(&self) -> Side {
        match self {
            Target::Mesh(_) => Side::Outbound,
            Target::External(_) => Side::Egress,
        }
    }
}

/// The TLS clients of one `Upstreams`, made on first use per target.
pub(super) struct TlsClients {
    /// This proxy's certificate for mesh mTLS (`None`: standalone mode, mesh targets are never used).
    identity: Option<Arc<MeshIdentity>>,
    metrics: Arc<TlsMetrics>,
    connect_timeout: Duration,
    idle: Duration,
    /// Per protocol (HTTP/1.1, HTTP/2), by target: read per request without a lock.
    clients: [ArcSwap<HashMap<Target, Client<TlsUpstream, RequestBody>>>; 2],
    grow: Mutex<()>,
}

fn slot(protocol: Protocol) -> usize {
    match protocol {
        Protocol::Http1 => 0,
        Protocol::Http2 => 1,
    }
}

impl TlsClients {
    pub(super) fn new(
        identity: Option<Arc<MeshIdentity>>,
        metrics: Arc<TlsMetrics>,
        connect_timeout: Duration,
        idle: Duration,
    ) -> Self {
        TlsClients {
            identity,
            metrics,
            connect_timeout,
            idle,
            clients: Default::default(),
            grow: Mutex::new(()),
        }
    }

    /// Whether this proxy can originate mesh mTLS: it holds a certificate.
    pub(super) fn mesh_ready(&self) -> bool {
        self.identity.as_ref().is_some_and(|i| i.is_certified())
    }

    /// Sends `req` (whose URI is already `https`) to an endpoint that must prove `target`.
    pub(super) fn request(
        &self,
        target: Target,
        protocol: Protocol,
        req: http::Request<RequestBody>,
    ) -> ResponseFuture {
        if let Some(client) = self.clients[slot(protocol)].load().get(&target) {
            return client.request(req);
        }
        self.add(target, protocol).request(req)
    }

    fn add(&self, target: Target, protocol: Protocol) -> Client<TlsUpstream, RequestBody> {
        let _grow = self.grow.lock().unwrap_or_else(|p| p.into_inner());
        let clients = &self.clients[slot(protocol)];
        let current = clients.load();
        if let Some(client) = current.get(&target) {
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
        let connector = TlsUpstream(Arc::new(ConnectorState {
            http,
            target: target.clone(),
            protocol,
            identity: self.identity.clone(),
            metrics: self.metrics.clone(),
            config: Slot::default(),
            external: OnceLock::new(),
            handshake_timeout: self.connect_timeout,
        }));
        let client = super::client(connector, protocol, self.idle);
        next.insert(target, client.clone());
        clients.store(Arc::new(next));
        client
    }
}

/// Connects to endpoints of one target.
#[derive(Clone)]
pub(super) struct TlsUpstream(Arc<ConnectorState>);

struct ConnectorState {
    http: HttpConnector,
    target: Target,
    protocol: Protocol,
    identity: Option<Arc<MeshIdentity>>,
    metrics: Arc<TlsMetrics>,
    /// Mesh targets: the config for the current certificate.
    config: Slot<ClientConfig>,
    /// External targets: built on the first connection (a CA file that cannot be read is retried next time).
    external: OnceLock<Arc<ClientConfig>>,
    handshake_timeout: Duration,
}

impl ConnectorState {
    /// The config for this target; a failure is counted like a failed handshake. An external target's is built
    /// on a blocking thread (it reads a CA file or the system's trust store), once; a failure is retried on the
    /// next connection.
    async fn config(&self) -> Result<Arc<ClientConfig>, BoxError> {
        let t = match &self.target {
            Target::Mesh(peer) => return self.mesh_config(peer),
            Target::External(t) => t,
        };
        if let Some(c) = self.external.get() {
            return Ok(c.clone());
        }
        let (tls, protocol) = (t.clone(), self.protocol);
        let built = tokio::task::spawn_blocking(move || external_config(&tls, protocol))
            .await
            .map_err(BoxError::from)
            .and_then(|r| r);
        match built {
            Ok(c) => Ok(self.external.get_or_init(|| Arc::new(c)).clone()),
            Err(e) => {
                self.metrics.handshake_failed(Side::Egress, "config");
                tracing::warn!(server = %t.sni, error = %e, "cannot build the TLS config for an endpoint outside the mesh");
                Err(e)
            }
        }
    }

    fn mesh_config(&self, peer: &SpiffeId) -> Result<Arc<ClientConfig>, BoxError> {
        let Some(current) = self.identity.as_ref().and_then(|i| i.current()) else {
            self.metrics
                .handshake_failed(Side::Outbound, "no_certificate");
            return Err(MtlsUnavailable.into());
        };
        let built = self
            .config
            .get(&current, |c| tls::client_config(c, peer, self.protocol));
        built.map_err(|e| {
            self.metrics.handshake_failed(Side::Outbound, "config");
            tracing::warn!(%peer, error = %e, "cannot build the outbound mTLS config");
            e.into()
        })
    }

    /// The name the handshake is made under: the server's for external targets; for mesh ones a per-endpoint
    /// session name (see `session_name`).
    fn server_name(&self, dst: &Uri) -> Option<ServerName<'static>> {
        match &self.target {
            Target::Mesh(_) => session_name(dst),
            Target::External(t) => ServerName::try_from(t.sni.to_string()).ok(),
        }
    }

    async fn connect(&self, dst: Uri) -> Result<TlsUpstreamStream, BoxError> {
        use tower_service::Service;
        let config = self.config().await?;
        let name = self.server_name(&dst).ok_or(super::UpstreamError::BadUri)?;
        let tcp = self.http.clone().call(dst.clone()).await?.into_inner();
        let handshake = TlsConnector::from(config).connect(name, tcp);
        let side = self.target.side();
        let failed = |reason: &'static str, source: io::Error| {
            self.metrics.handshake_failed(side, reason);
            tracing::debug!(peer = %self.target, %dst, reason, "upstream TLS handshake failed");
            TlsConnectError {
                peer: self.target.to_string(),
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
        self.metrics.handshake_ok(side, resumed);
        Ok(Stream(TokioIo::new(Box::new(stream))))
    }
}

/// The client config for an endpoint outside the mesh: TLS 1.2 or 1.3 (what such systems speak), its roots, no
/// client certificate, ALPN for the cluster's protocol, rustls' session cache.
fn external_config(t: &UpstreamTls, protocol: Protocol) -> Result<ClientConfig, BoxError> {
    let mut roots = rustls::RootCertStore::empty();
    match &t.ca_file {
        Some(file) => {
            for c in meshwork_identity::serving::load_roots(file)? {
                roots.add(c)?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "no usable CA certificate in the system's trust store ({} errors)",
                    found.errors.len()
                )
                .into());
            }
        }
    }
    let mut config = ClientConfig::builder_with_provider(meshwork_identity::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = match protocol {
        Protocol::Http2 => vec![b"h2".to_vec()],
        Protocol::Http1 => vec![b"http/1.1".to_vec()],
    };
    Ok(config)
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

type Connecting = Pin<Box<dyn Future<Output = Result<TlsUpstreamStream, BoxError>> + Send>>;

impl tower_service::Service<Uri> for TlsUpstream {
    type Response = TlsUpstreamStream;
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

/// An established TLS connection to an upstream endpoint (I/O as for plaintext: `connector::Stream`).
pub(super) type TlsUpstreamStream = Stream<Box<TlsStream<TcpStream>>>;

impl Connection for TlsUpstreamStream {
    /// HTTP/2 when ALPN chose it.
    fn connected(&self) -> Connected {
        let (_, conn) = self.0.inner().get_ref();
        if conn.alpn_protocol() == Some(b"h2") {
            Connected::new().negotiated_h2()
        } else {
            Connected::new()
        }
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
