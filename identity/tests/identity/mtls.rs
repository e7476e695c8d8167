//! Real mTLS handshakes over 127.0.0.1 with tokio-rustls, bounded by timeouts: who is accepted,
//! who is refused and why, and that a rotated certificate is presented on the next handshake.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshwork_identity::tls::{provider, SvidServerVerifier};
use meshwork_identity::{
    client_config, peer_identity, server_config, Authority, PeerRejected, RotatingIdentity,
    SpiffeId, SvidError, TrustBundle,
};
use rcgen::KeyPair;
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, ClientConfig, ServerConfig};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::support::{certified, id, leaf_params, set_validity, td, workload, TestCa, HOUR};

const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];
const LIMIT: Duration = Duration::from_secs(10);

/// What one side saw of a handshake plus a ping/pong exchange.
#[derive(Debug)]
struct Seen {
    peer: Option<SpiffeId>,
    peer_leaf: Option<CertificateDer<'static>>,
    alpn: Option<Vec<u8>>,
}

type Side = Result<Seen, io::Error>;

fn server(ca: &Authority, identity: Arc<CertifiedKey>) -> ServerConfig {
    server_config(
        RotatingIdentity::new(identity),
        ca.trust_bundle(),
        &td(),
        ALPN,
    )
    .unwrap()
}

fn client(bundle: &TrustBundle, identity: Arc<CertifiedKey>, allowed: &[SpiffeId]) -> ClientConfig {
    client_config(
        RotatingIdentity::new(identity),
        bundle,
        &td(),
        allowed,
        ALPN,
    )
    .unwrap()
}

fn seen(conn: &rustls::CommonState) -> Seen {
    Seen {
        peer: peer_identity(conn, &td()),
        peer_leaf: conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned()),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
    }
}

/// Runs one connection: the server accepts, reads "ping" and answers "pong"; the client
/// connects as `name`, sends "ping" and reads "pong". Returns what each side saw, or its error.
async fn handshake(
    server: ServerConfig,
    client: ClientConfig,
    name: ServerName<'static>,
) -> (Side, Side) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let server_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let saw = seen(tls.get_ref().1);
        let mut ping = [0u8; 4];
        tls.read_exact(&mut ping).await?;
        tls.write_all(b"pong").await?;
        tls.shutdown().await?;
        Ok(saw)
    });
    let client_side = async move {
        let tcp = TcpStream::connect(addr).await?;
        let mut tls = TlsConnector::from(Arc::new(client))
            .connect(name, tcp)
            .await?;
        let saw = seen(tls.get_ref().1);
        tls.write_all(b"ping").await?;
        let mut pong = [0u8; 4];
        tls.read_exact(&mut pong).await?;
        Ok(saw)
    };
    let client_result = timeout(LIMIT, client_side)
        .await
        .expect("client finished in time");
    let server_result = timeout(LIMIT, server_side)
        .await
        .expect("server finished in time");
    (
        server_result.expect("server task did not panic"),
        client_result,
    )
}

fn dns(name: &str) -> ServerName<'static> {
    ServerName::try_from(name.to_owned()).unwrap()
}

/// The rustls error inside a tokio-rustls I/O error.
fn tls_error(side: &Side) -> &rustls::Error {
    let err = side.as_ref().expect_err("this side should have failed");
    err.get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a TLS error: {err}"))
}

#[tokio::test]
async fn mtls_succeeds_and_each_side_reads_the_peer_identity() {
    let ca = TestCa::new("mesh root").authority();
    let backend = id("default", "backend");
    let server = server(&ca, workload(&ca, "default", "backend"));
    let client = client(
        ca.trust_bundle(),
        workload(&ca, "default", "frontend"),
        std::slice::from_ref(&backend),
    );
    // The name dialled matches nothing in the certificate: only the SPIFFE ID counts.
    let (server_side, client_side) = handshake(server, client, dns("backend.default.svc")).await;
    let (server_saw, client_saw) = (server_side.unwrap(), client_side.unwrap());
    assert_eq!(server_saw.peer, Some(id("default", "frontend")));
    assert_eq!(client_saw.peer, Some(backend));
    assert_eq!(server_saw.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(client_saw.alpn.as_deref(), Some(&b"h2"[..]));
}

#[tokio::test]
async fn the_server_presents_its_certificate_without_sni() {
    let ca = TestCa::new("mesh root").authority();
    let server = server(&ca, workload(&ca, "default", "backend"));
    let client = client(
        ca.trust_bundle(),
        workload(&ca, "default", "frontend"),
        &[id("default", "backend")],
    );
    // rustls sends no SNI when dialling an IP address.
    let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
    let (server_side, client_side) = handshake(server, client, name).await;
    assert_eq!(client_side.unwrap().peer, Some(id("default", "backend")));
    assert_eq!(server_side.unwrap().peer, Some(id("default", "frontend")));
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused_by_the_server() {
    let ca = TestCa::new("mesh root").authority();
    let other_ca = TestCa::new("someone else's root").authority();
    let server = server(&ca, workload(&ca, "default", "backend"));
    let client = client(
        ca.trust_bundle(),
        workload(&other_ca, "default", "frontend"),
        &[id("default", "backend")],
    );
    let (server_side, client_side) = handshake(server, client, dns("backend")).await;
    assert!(
        matches!(
            tls_error(&server_side),
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ),
        "{server_side:?}"
    );
    assert!(
        client_side.is_err(),
        "the client sees the server's alert: {client_side:?}"
    );
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused_by_the_server() {
    let test_ca = TestCa::new("mesh root");
    let ca = test_ca.authority();
    let key = KeyPair::generate().unwrap();
    let mut params = leaf_params(&["spiffe://cluster.local/ns/default/sa/frontend"]);
    set_validity(&mut params, SystemTime::now() - 2 * HOUR, HOUR);
    let expired = certified(vec![test_ca.sign(&params, &key)], &key);
    let server = server(&ca, workload(&ca, "default", "backend"));
    let client = client(ca.trust_bundle(), expired, &[id("default", "backend")]);
    let (server_side, client_side) = handshake(server, client, dns("backend")).await;
    let err = tls_error(&server_side);
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )
        ),
        "{err:?}"
    );
    assert!(client_side.is_err());
}

#[tokio::test]
async fn a_client_svid_of_another_trust_domain_is_refused_by_the_server() {
    let test_ca = TestCa::new("mesh root");
    let ca = test_ca.authority();
    let key = KeyPair::generate().unwrap();
    let params = leaf_params(&["spiffe://other.example/ns/default/sa/frontend"]);
    let foreign = certified(vec![test_ca.sign(&params, &key)], &key);
    let server = server(&ca, workload(&ca, "default", "backend"));
    let client = client(ca.trust_bundle(), foreign, &[id("default", "backend")]);
    let (server_side, client_side) = handshake(server, client, dns("backend")).await;
    let rejected = PeerRejected::from_rustls(tls_error(&server_side)).expect("an SVID rejection");
    assert!(
        matches!(
            rejected,
            PeerRejected::Svid(SvidError::WrongTrustDomain { .. })
        ),
        "{rejected}"
    );
    assert!(client_side.is_err());
}

#[tokio::test]
async fn a_server_whose_valid_svid_is_not_allowed_is_refused_by_the_client() {
    let ca = TestCa::new("mesh root").authority();
    let server = server(&ca, workload(&ca, "default", "impostor"));
    let client = client(
        ca.trust_bundle(),
        workload(&ca, "default", "frontend"),
        &[id("default", "backend")],
    );
    let (server_side, client_side) = handshake(server, client, dns("backend")).await;
    let rejected = PeerRejected::from_rustls(tls_error(&client_side)).expect("a rejection");
    assert!(
        matches!(rejected, PeerRejected::NotAllowed { got, .. } if *got == id("default", "impostor")),
        "{rejected}"
    );
    assert_eq!(rejected.reason(), "server_not_allowed");
    assert!(server_side.is_err(), "the server sees the client's alert");
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused_by_the_server() {
    let ca = TestCa::new("mesh root").authority();
    let server = server(&ca, workload(&ca, "default", "backend"));
    let roots = Arc::new(ca.trust_bundle().root_store());
    let verifier = SvidServerVerifier::new(roots, provider(), td(), vec![id("default", "backend")]);
    let client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let (server_side, client_side) = handshake(server, client, dns("backend")).await;
    assert!(
        matches!(
            tls_error(&server_side),
            rustls::Error::NoCertificatesPresented
        ),
        "{server_side:?}"
    );
    assert!(client_side.is_err());
}

#[tokio::test]
async fn a_rotated_server_certificate_is_presented_on_the_next_handshake() {
    let ca = TestCa::new("mesh root").authority();
    let (first, second) = (
        workload(&ca, "default", "backend"),
        workload(&ca, "default", "backend"),
    );
    let identity = RotatingIdentity::new(first.clone());
    let server = server_config(identity.clone(), ca.trust_bundle(), &td(), ALPN).unwrap();
    let frontend = workload(&ca, "default", "frontend");
    let allowed = [id("default", "backend")];

    let (_, client_side) = handshake(
        server.clone(),
        client(ca.trust_bundle(), frontend.clone(), &allowed),
        dns("b"),
    )
    .await;
    assert_eq!(
        client_side.unwrap().peer_leaf.as_ref(),
        Some(&first.cert[0])
    );

    identity.rotate(second.clone());
    // A fresh client config: a resumed session would not show a certificate at all.
    let (_, client_side) = handshake(
        server,
        client(ca.trust_bundle(), frontend, &allowed),
        dns("b"),
    )
    .await;
    assert_eq!(
        client_side.unwrap().peer_leaf.as_ref(),
        Some(&second.cert[0])
    );
    assert_ne!(first.cert[0], second.cert[0]);
}
