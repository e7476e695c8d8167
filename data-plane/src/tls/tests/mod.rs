//! Mutual TLS between proxies with real certificates from a real mesh CA and real handshakes on 127.0.0.1: an
//! upstream client of one proxy (`Upstreams`, as an outbound sidecar or a gateway sends) talks to the inbound
//! listener of another (`listener::serve` with the sidecar's request path) in front of an app that records what
//! reaches it. One test per scenario; every wait is bounded.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Side, XFCC_HEADER};
use crate::caller::{self, ProofCache, PROOF_HEADER};
use crate::config::snapshot::{MtlsMode, Protocol};
use crate::resilience::call::SOURCE_HEADER;
use crate::upstream::{error, UpstreamError};
use support::*;

const BACKEND_XFCC: &str =
    "By=spiffe://cluster.local/ns/default/sa/backend;URI=spiffe://cluster.local/ns/default/sa/frontend";

/// What a caller might send to claim another identity.
fn forged() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        XFCC_HEADER,
        HeaderValue::from_static("By=spiffe://cluster.local/ns/default/sa/backend;URI=spiffe://cluster.local/ns/default/sa/admin"),
    );
    h.insert(SOURCE_HEADER, HeaderValue::from_static("admin.default"));
    h.insert(PROOF_HEADER, HeaderValue::from_static("00"));
    h
}

/// A mesh with one CA: a `frontend` proxy's upstream client, and a `backend` sidecar in `mode` before an app.
struct Mesh {
    ca: TestCa,
    app: App,
    backend: Sidecar,
    frontend: Client,
}

async fn mesh(mode: MtlsMode) -> Mesh {
    let ca = TestCa::new("mesh");
    let app = App::start().await;
    let backend = identity("backend", ca.issue("backend").0, ca.bundle());
    let backend = Sidecar::start(backend, mode, app.addr).await;
    let frontend = Client::new(identity("frontend", ca.issue("frontend").0, ca.bundle()));
    Mesh {
        ca,
        app,
        backend,
        frontend,
    }
}

fn header<'a>(h: &'a HeaderMap, name: &http::HeaderName) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn an_mtls_request_reaches_the_app_with_the_verified_caller_only() {
    let m = mesh(MtlsMode::Permissive).await;
    let (status, _) = m
        .frontend
        .get(
            Protocol::Http1,
            m.backend.addr,
            Some(id("backend")),
            "/",
            &forged(),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let seen = m.app.last();
    assert_eq!(header(&seen, &XFCC_HEADER), Some(BACKEND_XFCC));
    assert_eq!(header(&seen, &SOURCE_HEADER), Some("frontend.default"));
    assert_eq!(header(&seen, &PROOF_HEADER), None);
    assert_eq!(seen.get_all(&XFCC_HEADER).iter().count(), 1, "{seen:?}");
    assert_eq!(m.backend.metrics.handshakes(Side::Inbound, false), 1);
    assert_eq!(m.frontend.metrics.handshakes(Side::Outbound, false), 1);
    // What /metrics shows of it.
    let text = metrics_text(&m.backend.metrics, m.backend.identity.current());
    for line in [
        "meshwork_tls_handshakes_total{side=\"inbound\",result=\"ok\",reason=\"\"} 1",
        "meshwork_tls_handshakes_total{side=\"outbound\",result=\"ok\",reason=\"\"} 0",
        "meshwork_tls_plaintext_refused_total 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
    }
    let expiry = text
        .lines()
        .find_map(|l| l.strip_prefix("meshwork_tls_certificate_expiry_seconds{spiffe_id=\"spiffe://cluster.local/ns/default/sa/backend\"} "))
        .unwrap();
    let left: f64 = expiry.parse().unwrap();
    assert!((3500.0..=3600.0).contains(&left), "{left}");
}

#[tokio::test]
async fn an_http2_cluster_speaks_h2_over_mtls() {
    let m = mesh(MtlsMode::Strict).await;
    for _ in 0..3 {
        let (status, _) = m
            .frontend
            .get(
                Protocol::Http2,
                m.backend.addr,
                Some(id("backend")),
                "/",
                &forged(),
            )
            .await
            .unwrap();
        assert_eq!(status, 200);
    }
    assert_eq!(header(&m.app.last(), &XFCC_HEADER), Some(BACKEND_XFCC));
    // HTTP/2 multiplexes: one connection, one handshake.
    assert_eq!(m.backend.metrics.handshakes(Side::Inbound, false), 1);
}

/// Writes a plaintext HTTP/1.1 request on a raw connection; what came back before the connection closed.
async fn plaintext_exchange(addr: std::net::SocketAddr) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: backend\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(BOUND, s.read_to_end(&mut out))
        .await
        .expect("the connection neither answered nor closed");
    out
}

#[tokio::test]
async fn plaintext_to_a_strict_inbound_is_refused() {
    let m = mesh(MtlsMode::Strict).await;
    assert!(plaintext_exchange(m.backend.addr).await.is_empty());
    let plain = Client::new(Arc::default()); // no certificate: plaintext
    let refused = plain
        .get(
            Protocol::Http1,
            m.backend.addr,
            Some(id("backend")),
            "/",
            &HeaderMap::new(),
        )
        .await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(m.backend.metrics.plaintext_refused_count(), 2);
    assert_eq!(m.app.requests(), 0);
}

#[tokio::test]
async fn plaintext_to_a_permissive_inbound_is_served_without_identity_headers() {
    let m = mesh(MtlsMode::Permissive).await;
    let plain = Client::new(Arc::default());
    let (status, _) = plain
        .get(Protocol::Http1, m.backend.addr, None, "/", &forged())
        .await
        .unwrap();
    assert_eq!(status, 200);
    let seen = m.app.last();
    for name in [&XFCC_HEADER, &SOURCE_HEADER, &PROOF_HEADER] {
        assert_eq!(
            header(&seen, name),
            None,
            "{name} reached the app: {seen:?}"
        );
    }
    // A caller sidecar that cannot do mTLS with this endpoint yet still states its source with the mesh key.
    let mut proven = HeaderMap::new();
    let key = Bytes::from_static(&MESH_KEY);
    let source = HeaderValue::from_static("frontend.default");
    caller::state(&ProofCache::default(), Some(&key), &source, &mut proven);
    plain
        .get(Protocol::Http1, m.backend.addr, None, "/", &proven)
        .await
        .unwrap();
    let seen = m.app.last();
    assert_eq!(header(&seen, &SOURCE_HEADER), Some("frontend.default"));
    assert_eq!(header(&seen, &XFCC_HEADER), None);
    assert_eq!(header(&seen, &PROOF_HEADER), None);
    assert!(m.backend.metrics.plaintext_served_count() >= 1);
    assert_eq!(m.backend.metrics.handshakes(Side::Inbound, false), 0);
}

#[tokio::test]
async fn a_disabled_inbound_serves_plaintext_and_keeps_the_proven_source() {
    let m = mesh(MtlsMode::Disabled).await;
    let mut headers = forged();
    let key = Bytes::from_static(&MESH_KEY);
    let source = HeaderValue::from_static("frontend.default");
    caller::state(&ProofCache::default(), Some(&key), &source, &mut headers);
    let plain = Client::new(Arc::default());
    let (status, _) = plain
        .get(Protocol::Http1, m.backend.addr, None, "/", &headers)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let seen = m.app.last();
    assert_eq!(header(&seen, &SOURCE_HEADER), Some("frontend.default"));
    assert_eq!(header(&seen, &XFCC_HEADER), None);
    // No TLS at all here: a ClientHello is not answered with a handshake.
    let tls = m
        .frontend
        .get(
            Protocol::Http1,
            m.backend.addr,
            Some(id("backend")),
            "/",
            &HeaderMap::new(),
        )
        .await;
    assert!(tls.is_err(), "{tls:?}");
    assert_eq!(m.backend.metrics.handshakes(Side::Inbound, false), 0);
}

#[tokio::test]
async fn a_static_endpoint_outside_the_mesh_is_never_sent_the_proof() {
    let m = mesh(MtlsMode::Disabled).await;
    let mut headers = HeaderMap::new();
    let key = Bytes::from_static(&MESH_KEY);
    let source = HeaderValue::from_static("frontend.default");
    caller::state(&ProofCache::default(), Some(&key), &source, &mut headers);
    assert!(headers.contains_key(PROOF_HEADER));
    // The app's address as a Workload's static `endpoints` would give it: no proxy registered it.
    let outside = crate::config::snapshot::Endpoint::plain(m.app.addr);
    let (status, _) = m
        .frontend
        .get_from(Protocol::Http1, &outside, "/", &headers)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let seen = m.app.last();
    assert_eq!(header(&seen, &PROOF_HEADER), None);
    assert_eq!(header(&seen, &SOURCE_HEADER), Some("frontend.default"));
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let m = mesh(MtlsMode::Strict).await;
    let other = TestCa::new("other mesh");
    // It trusts the mesh's root (so it accepts the backend), but its own certificate is from another CA.
    let intruder = Client::new(identity(
        "frontend",
        other.issue("frontend").0,
        m.ca.bundle(),
    ));
    let refused = intruder
        .get(
            Protocol::Http1,
            m.backend.addr,
            Some(id("backend")),
            "/",
            &HeaderMap::new(),
        )
        .await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(
        m.backend.metrics.failures(Side::Inbound, "unknown_issuer"),
        1
    );
    let text = metrics_text(&m.backend.metrics, None);
    assert!(
        text.contains("meshwork_tls_handshakes_total{side=\"inbound\",result=\"error\",reason=\"unknown_issuer\"} 1"),
        "{text}"
    );
    assert_eq!(m.backend.metrics.handshakes(Side::Inbound, false), 0);
    assert_eq!(m.app.requests(), 0);
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused() {
    let m = mesh(MtlsMode::Strict).await;
    let expired = Client::new(identity(
        "frontend",
        m.ca.expired("frontend"),
        m.ca.bundle(),
    ));
    let refused = expired
        .get(
            Protocol::Http1,
            m.backend.addr,
            Some(id("backend")),
            "/",
            &HeaderMap::new(),
        )
        .await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(m.backend.metrics.failures(Side::Inbound, "cert_expired"), 1);
    assert_eq!(m.app.requests(), 0);
}

#[tokio::test]
async fn a_server_proving_another_identity_is_refused_by_the_client() {
    let m = mesh(MtlsMode::Strict).await;
    // The endpoint is said to be `payments`; the server there proves `backend` (valid, same CA).
    let refused = m
        .frontend
        .get(
            Protocol::Http1,
            m.backend.addr,
            Some(id("payments")),
            "/",
            &HeaderMap::new(),
        )
        .await;
    let Err(err) = refused else {
        panic!("a server proving another identity was accepted")
    };
    assert!(matches!(err, UpstreamError::Connect { .. }), "{err:?}");
    let cause = error::find::<crate::upstream::error::TlsConnectError>(&err).unwrap();
    assert_eq!(cause.reason, "server_not_allowed");
    assert_eq!(
        m.frontend
            .metrics
            .failures(Side::Outbound, "server_not_allowed"),
        1
    );
    assert_eq!(m.app.requests(), 0);
}

#[tokio::test]
async fn many_requests_share_one_pooled_tls_connection_and_a_new_one_resumes() {
    let m = mesh(MtlsMode::Strict).await;
    for _ in 0..20 {
        let (status, _) = m
            .frontend
            .get(
                Protocol::Http1,
                m.backend.addr,
                Some(id("backend")),
                "/",
                &HeaderMap::new(),
            )
            .await
            .unwrap();
        assert_eq!(status, 200);
        settle().await;
    }
    assert_eq!(m.app.requests(), 20);
    assert_eq!(m.backend.metrics.handshakes(Side::Inbound, false), 1);
    assert_eq!(m.backend.metrics.handshakes(Side::Inbound, true), 0);
    // A request held open keeps that connection busy: the next one needs a second connection, which resumes the
    // first one's session and still carries the verified caller.
    let held = {
        let (frontend, addr) = (Arc::new(m.frontend), m.backend.addr);
        let f = frontend.clone();
        let task = tokio::spawn(async move {
            f.get(
                Protocol::Http1,
                addr,
                Some(id("backend")),
                "/hold",
                &HeaderMap::new(),
            )
            .await
        });
        tokio::time::timeout(BOUND, m.app.held.notified())
            .await
            .unwrap();
        let (status, _) = frontend
            .get(
                Protocol::Http1,
                addr,
                Some(id("backend")),
                "/",
                &HeaderMap::new(),
            )
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert_eq!(header(&m.app.last(), &XFCC_HEADER), Some(BACKEND_XFCC));
        assert_eq!(frontend.metrics.handshakes(Side::Outbound, true), 1);
        task
    };
    m.app.hold.notify_one();
    let (status, _) = tokio::time::timeout(BOUND, held)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(m.backend.metrics.handshakes(Side::Inbound, false), 1);
    assert_eq!(m.backend.metrics.handshakes(Side::Inbound, true), 1);
}

#[tokio::test]
async fn after_a_rotation_new_connections_present_the_new_certificate_and_pooled_ones_keep_working()
{
    let ca = TestCa::new("mesh");
    let server = TlsServer::start(identity("backend", ca.issue("backend").0, ca.bundle())).await;
    let (first, first_leaf) = ca.issue("frontend");
    let frontend = Arc::new(Client::new(identity("frontend", first, ca.bundle())));
    let get = |path: &'static str| {
        let f = frontend.clone();
        let addr = server.addr;
        async move {
            f.get(
                Protocol::Http1,
                addr,
                Some(id("backend")),
                path,
                &HeaderMap::new(),
            )
            .await
            .unwrap()
            .1
        }
    };
    assert_eq!(get("/").await, "conn 0");
    settle().await;

    let (second, second_leaf) = ca.issue("frontend");
    frontend.identity.install_certified(
        id("frontend"),
        second,
        ca.bundle(),
        std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
    );
    // The pooled connection carries on (and is busy with this request until released)...
    let held = tokio::spawn(get("/hold"));
    tokio::time::timeout(BOUND, server.held.notified())
        .await
        .unwrap();
    // ... so this one opens a new connection, with the new certificate.
    assert_eq!(get("/").await, "conn 1");
    server.hold.notify_one();
    assert_eq!(
        tokio::time::timeout(BOUND, held).await.unwrap().unwrap(),
        "conn 0"
    );

    assert_eq!(count(&server.accepts), 2);
    let leaves = server.leaves.lock().unwrap().clone();
    assert_eq!(leaves, vec![first_leaf, second_leaf]);
    // A new certificate starts a new session cache: the second connection was a full handshake.
    assert_eq!(frontend.metrics.handshakes(Side::Outbound, false), 2);
}

#[tokio::test]
async fn a_rotated_sidecar_presents_its_new_certificate_to_new_connections() {
    let m = mesh(MtlsMode::Strict).await;
    let none = HeaderMap::new();
    let get = || {
        m.frontend.get(
            Protocol::Http1,
            m.backend.addr,
            Some(id("backend")),
            "/",
            &none,
        )
    };
    assert_eq!(get().await.unwrap().0, 200);
    settle().await;
    let backend = m.backend.identity.clone();
    let (next, next_leaf) = m.ca.issue("backend");
    backend.install_certified(
        id("backend"),
        next,
        m.ca.bundle(),
        std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
    );
    // The pooled connection keeps working: no new handshake.
    assert_eq!(get().await.unwrap().0, 200);
    assert_eq!(m.backend.metrics.handshakes(Side::Inbound, false), 1);
    // A new client sees the new certificate.
    let shown = server_leaf(&m.ca, m.backend.addr).await;
    assert_eq!(shown, next_leaf);
}

/// The leaf a fresh mTLS client (a `probe` of the mesh) is shown by the server at `addr`.
async fn server_leaf(
    ca: &TestCa,
    addr: std::net::SocketAddr,
) -> rustls::pki_types::CertificateDer<'static> {
    let (probe, _) = ca.issue("probe");
    let config = meshwork_identity::client_config(
        meshwork_identity::RotatingIdentity::new(probe),
        &ca.bundle(),
        &meshwork_identity::TrustDomain::default(),
        &[id("backend")],
        &[b"http/1.1"],
    )
    .unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("backend").unwrap();
    let tls = tokio::time::timeout(
        BOUND,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .unwrap()
    .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

#[tokio::test]
async fn authorization_policies_decide_by_the_verified_peer() {
    use crate::authz::{Action, Pattern, Policy, Rule, Source, Values};
    let ca = TestCa::new("mesh");
    let app = App::start().await;
    // Only frontend, or any caller of namespace `edge`, may call backend.
    let from = |principals: &[&str], namespaces: &[&str]| Source {
        principals: Values {
            any_of: principals.iter().map(|p| Pattern::parse(p)).collect(),
            none_of: Vec::new(),
        },
        namespaces: Values {
            any_of: namespaces.iter().map(|n| Pattern::parse(n)).collect(),
            none_of: Vec::new(),
        },
    };
    let policy = Policy {
        name: "default/backend-callers".into(),
        action: Action::Allow,
        rules: vec![Rule {
            from: vec![
                from(&["cluster.local/ns/default/sa/frontend"], &[]),
                from(&[], &["edge"]),
            ],
            ..Rule::default()
        }],
    };
    let backend = identity("backend", ca.issue("backend").0, ca.bundle());
    let backend =
        Sidecar::with_policies(backend, MtlsMode::Permissive, app.addr, vec![policy]).await;
    let addr = backend.addr;
    let call = |client: Client, headers: HeaderMap| async move {
        client
            .get(Protocol::Http1, addr, Some(id("backend")), "/", &headers)
            .await
            .unwrap()
            .0
    };
    let frontend = Client::new(identity("frontend", ca.issue("frontend").0, ca.bundle()));
    assert_eq!(call(frontend, HeaderMap::new()).await, 200);
    // Another service, even claiming to be frontend: its certificate says who it is.
    let mut claim = HeaderMap::new();
    claim.insert(SOURCE_HEADER, HeaderValue::from_static("frontend.default"));
    let reports = Client::new(identity("reports", ca.issue("reports").0, ca.bundle()));
    assert_eq!(call(reports, claim.clone()).await, 403);
    // A gateway of namespace edge: allowed by namespace, known by its own (non-workload) identity.
    let gw =
        meshwork_identity::SpiffeId::parse("spiffe://cluster.local/ns/edge/gateway/web").unwrap();
    let gateway = Client::new(identity_of(gw.clone(), ca.issue_for(&gw).0, ca.bundle()));
    assert_eq!(call(gateway, HeaderMap::new()).await, 200);
    let seen = app.last();
    assert_eq!(
        header(&seen, &XFCC_HEADER),
        Some("By=spiffe://cluster.local/ns/default/sa/backend;URI=spiffe://cluster.local/ns/edge/gateway/web")
    );
    assert_eq!(header(&seen, &SOURCE_HEADER), None);
    // Plaintext with an unproven claim: no principal at all.
    assert_eq!(call(Client::new(Arc::default()), claim).await, 403);
}

/// What `/metrics` shows of these handshake counters (through prometheus-client's text encoder, as the proxy's
/// registry encodes them).
fn metrics_text(
    metrics: &Arc<crate::tls::TlsMetrics>,
    own: Option<Arc<crate::identity::Certified>>,
) -> String {
    struct Tls(
        Arc<crate::tls::TlsMetrics>,
        Option<Arc<crate::identity::Certified>>,
    );
    impl std::fmt::Debug for Tls {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Tls")
        }
    }
    impl prometheus_client::collector::Collector for Tls {
        fn encode(
            &self,
            mut encoder: prometheus_client::encoding::DescriptorEncoder,
        ) -> std::fmt::Result {
            self.0.encode(&mut encoder, self.1.as_deref())
        }
    }
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(Tls(metrics.clone(), own)));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap_or_default();
    text
}
