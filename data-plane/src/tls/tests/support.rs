//! Fixtures for the mTLS tests: a mesh CA (an rcgen root wrapped in the identity crate's `Authority`, so a test
//! can also sign what the Authority never would, like an expired SVID), proxy identities holding its
//! certificates, an app that records what reaches it, a sidecar inbound listener in front of it, and an upstream
//! client. Everything listens on 127.0.0.1:0.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshwork_identity::{Authority, SpiffeId, TrustBundle, TrustDomain, WorkloadKey};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::config::snapshot::{Cluster, Endpoint, MtlsMode, Protocol, Snapshot};
use crate::config::ConfigStore;
use crate::identity::MeshIdentity;
use crate::listener::Termination;
use crate::listener::{self, FdBudget, Limits};
use crate::resilience::Registry;
use crate::stack::{ListenerCtx, Mode};
use crate::tls::{Inbound, TlsMetrics};
use crate::upstream::body::RequestBody;
use crate::upstream::{self, UpstreamError, Upstreams};

/// No step of a test may take longer: a wait that reaches it is a failure, not a hang.
pub const BOUND: Duration = Duration::from_secs(10);
const HOUR: Duration = Duration::from_secs(3600);
/// The mesh key of the HMAC-proven `x-meshwork-source` (the plaintext path).
pub const MESH_KEY: [u8; 32] = [7; 32];

pub fn id(sa: &str) -> SpiffeId {
    SpiffeId::workload(&TrustDomain::default(), "default", sa).unwrap()
}

/// A mesh CA: an rcgen root, and the identity crate's `Authority` over it.
pub struct TestCa {
    params: CertificateParams,
    key: KeyPair,
    pub authority: Authority,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.subject_alt_names = vec![SanType::URI("spiffe://cluster.local".try_into().unwrap())];
        params.not_before = (SystemTime::now() - 24 * HOUR).into();
        params.not_after = (SystemTime::now() + 24 * HOUR).into();
        let cert = params.self_signed(&key).unwrap();
        let authority =
            Authority::from_pem(&cert.pem(), &key.serialize_pem(), &TrustDomain::default())
                .unwrap();
        TestCa {
            params,
            key,
            authority,
        }
    }

    pub fn bundle(&self) -> TrustBundle {
        self.authority.trust_bundle().clone()
    }

    /// An SVID for `sa` issued the way the control plane issues one (fresh key, CSR, `Authority::issue`), valid
    /// for an hour; with its leaf, to compare with what a peer was shown.
    pub fn issue(&self, sa: &str) -> (Arc<CertifiedKey>, CertificateDer<'static>) {
        self.issue_for(&id(sa))
    }

    /// Like `issue`, for any identity of the mesh (a gateway's, say).
    pub fn issue_for(&self, id: &SpiffeId) -> (Arc<CertifiedKey>, CertificateDer<'static>) {
        let key = WorkloadKey::generate().unwrap();
        let csr = key.csr_der(id).unwrap();
        let issued = self.authority.issue(&csr, id, HOUR).unwrap();
        let leaf = issued.leaf.clone();
        (key.certified_key(issued.chain).unwrap(), leaf)
    }

    /// An otherwise valid SVID for `sa` that expired an hour ago (signed directly: the Authority would not).
    pub fn expired(&self, sa: &str) -> Arc<CertifiedKey> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id(sa).as_str().try_into().unwrap())];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = (SystemTime::now() - 3 * HOUR).into();
        params.not_after = (SystemTime::now() - HOUR).into();
        let issuer = Issuer::from_params(&self.params, &self.key);
        let leaf: CertificateDer<'static> = params.signed_by(&key, &issuer).unwrap().into();
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = meshwork_identity::tls::provider();
        Arc::new(CertifiedKey::from_der(vec![leaf], der, &provider).unwrap())
    }
}

/// A proxy identity store holding `certified` as `sa`, trusting `bundle` (what the control-plane client installs).
pub fn identity(sa: &str, certified: Arc<CertifiedKey>, bundle: TrustBundle) -> Arc<MeshIdentity> {
    identity_of(id(sa), certified, bundle)
}

pub fn identity_of(
    id: SpiffeId,
    certified: Arc<CertifiedKey>,
    bundle: TrustBundle,
) -> Arc<MeshIdentity> {
    let mesh = Arc::new(MeshIdentity::default());
    mesh.install_certified(id, certified, bundle, SystemTime::now() + HOUR);
    mesh
}

/// An app that answers `200 ok` and records the headers of every request; `/hold` waits for `hold` (after
/// notifying `held`).
pub struct App {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<HeaderMap>>>,
    pub hold: Arc<Notify>,
    pub held: Arc<Notify>,
}

impl App {
    pub async fn start() -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
        let (hold, held) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let (s, h, hd) = (seen.clone(), hold.clone(), held.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (seen, hold, held) = (s.clone(), h.clone(), hd.clone());
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (seen, hold, held) = (seen.clone(), hold.clone(), held.clone());
                    async move {
                        seen.lock().unwrap().push(req.headers().clone());
                        if req.uri().path() == "/hold" {
                            held.notify_one();
                            hold.notified().await;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        App {
            addr,
            seen,
            hold,
            held,
        }
    }

    /// The headers of the last request that reached the app.
    pub fn last(&self) -> HeaderMap {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("no request reached the app")
    }

    pub fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// A sidecar's inbound listener (as `app.rs` makes it) in front of `app`, in `mode`.
pub struct Sidecar {
    pub addr: SocketAddr,
    pub identity: Arc<MeshIdentity>,
    pub metrics: Arc<TlsMetrics>,
    _stop: watch::Sender<bool>,
}

impl Sidecar {
    pub async fn start(identity: Arc<MeshIdentity>, mode: MtlsMode, app: SocketAddr) -> Sidecar {
        Self::with_policies(identity, mode, app, Vec::new()).await
    }

    /// A sidecar that also enforces these AuthorizationPolicies on its inbound listener.
    pub async fn with_policies(
        identity: Arc<MeshIdentity>,
        mode: MtlsMode,
        app: SocketAddr,
        policies: Vec<crate::authz::Policy>,
    ) -> Sidecar {
        let store = Arc::new(ConfigStore::default());
        let mut snapshot = Snapshot::empty();
        snapshot.version = 1;
        snapshot.inbound_mtls = mode;
        snapshot.authorization = policies;
        snapshot.mesh_keys = vec![Bytes::from_static(&MESH_KEY)];
        store.publish(snapshot);
        let metrics = Arc::new(TlsMetrics::default());
        let app = Cluster::new(
            "local-app/backend".into(),
            Protocol::Http1,
            vec![Endpoint::plain(app)],
        );
        let ctx = Arc::new(ListenerCtx {
            mode: Mode::Inbound(Arc::new(app)),
            store: store.clone(),
            resilience: Arc::new(Registry::default()),
            upstreams: Upstreams::new(BOUND),
            source: None,
            default_timeout: Some(BOUND),
            proof: Default::default(),
            authorize: Some(Arc::default()),
            metrics: crate::telemetry::HttpMetrics::new().listener("inbound".into()),
            termination: Some(Termination::Mesh(Arc::new(Inbound::new(
                identity.clone(),
                store,
                metrics.clone(),
            )))),
        });
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(listener::serve(
            l,
            ctx,
            stop_rx,
            Duration::from_secs(1),
            Arc::new(Limits::default()),
            FdBudget::new(1000),
        ));
        Sidecar {
            addr,
            identity,
            metrics,
            _stop: stop,
        }
    }
}

/// The upstream side of a proxy holding `identity` (an outbound sidecar or a gateway).
pub struct Client {
    pub upstreams: Upstreams,
    pub metrics: Arc<TlsMetrics>,
    pub identity: Arc<MeshIdentity>,
}

impl Client {
    pub fn new(identity: Arc<MeshIdentity>) -> Client {
        let metrics = Arc::new(TlsMetrics::default());
        let upstreams = Upstreams::with_mtls(BOUND, identity.clone(), metrics.clone());
        Client {
            upstreams,
            metrics,
            identity,
        }
    }

    /// GET `path` from the endpoint at `addr` that proves `peer` (plaintext: `None`), with `headers`; the status
    /// and body.
    pub async fn get(
        &self,
        protocol: Protocol,
        addr: SocketAddr,
        peer: Option<SpiffeId>,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<(u16, String), UpstreamError> {
        // A sidecar of the mesh (registered), so a plaintext hop carries the caller's proof.
        let mut endpoint = Endpoint::plain(addr);
        endpoint.identity = peer;
        endpoint.mesh_peer = true;
        self.get_from(protocol, &endpoint, path, headers).await
    }

    /// GET `path` from `endpoint` with `headers`; the status and body.
    pub async fn get_from(
        &self,
        protocol: Protocol,
        endpoint: &Endpoint,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<(u16, String), UpstreamError> {
        let mut req = Request::get(path).body(()).unwrap();
        *req.headers_mut() = headers.clone();
        req.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_static("backend"),
        );
        let (parts, ()) = req.into_parts();
        let cluster: Arc<str> = Arc::from("backend");
        let sent = upstream::send(
            &self.upstreams,
            &cluster,
            protocol,
            endpoint,
            parts,
            RequestBody::Empty,
        );
        let resp = tokio::time::timeout(BOUND, sent)
            .await
            .expect("request hung")?;
        let status = resp.status().as_u16();
        let body = tokio::time::timeout(BOUND, resp.into_body().collect())
            .await
            .expect("body hung")
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        Ok((status, body))
    }
}

/// Lets spawned tasks run (the pool takes a connection back on a task of its own once its response is read).
pub async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// The number of connections counted by `accepts`.
pub fn count(accepts: &AtomicUsize) -> usize {
    accepts.load(Ordering::SeqCst)
}

/// An mTLS server outside the proxy (the identity crate's server config over `identity`) that records the client
/// certificate of each connection and answers `conn <n>`, n being the connection's index; `/hold` waits for
/// `hold` (after notifying `held`).
pub struct TlsServer {
    pub addr: SocketAddr,
    pub accepts: Arc<AtomicUsize>,
    pub leaves: Arc<Mutex<Vec<CertificateDer<'static>>>>,
    pub hold: Arc<Notify>,
    pub held: Arc<Notify>,
}

impl TlsServer {
    pub async fn start(identity: Arc<MeshIdentity>) -> TlsServer {
        let c = identity.current().unwrap();
        let config = meshwork_identity::server_config(
            c.resolver.clone(),
            &c.bundle,
            &c.trust_domain,
            &[b"http/1.1"],
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = TlsServer {
            addr,
            accepts: Arc::default(),
            leaves: Arc::default(),
            hold: Arc::new(Notify::new()),
            held: Arc::new(Notify::new()),
        };
        let (accepts, leaves) = (server.accepts.clone(), server.leaves.clone());
        let (hold, held) = (server.hold.clone(), server.held.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let Ok(tls) = acceptor.accept(stream).await else {
                    continue;
                };
                let n = accepts.fetch_add(1, Ordering::SeqCst);
                let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
                leaves.lock().unwrap().push(leaf);
                let (hold, held) = (hold.clone(), held.clone());
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (hold, held) = (hold.clone(), held.clone());
                    async move {
                        if req.uri().path() == "/hold" {
                            held.notify_one();
                            hold.notified().await;
                        }
                        let body = Bytes::from(format!("conn {n}"));
                        Ok::<_, Infallible>(Response::new(Full::new(body)))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc),
                );
            }
        });
        server
    }
}
