//! Gateway API HTTPS listeners (`protocol: HTTPS`, `tls.mode: Terminate`, `certificateRefs` to TLSCertificates),
//! end to end with a real `meshwork-proxy --manifests DIR` gateway, real certificates made by a test CA, and a
//! rustls client that records which certificate it was shown: SNI selection, the listener `hostname`, reload of
//! replaced files, a broken replacement, and plaintext sent to an HTTPS port.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use common::*;

/// A test CA that signs leaf certificates for host names.
struct TestCa {
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "gateway test CA");
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            issuer: rcgen::Issuer::new(params, key),
            cert,
        }
    }

    /// A leaf for `names`, written to `dir/<file>.crt` and `.key`; returns its DER.
    fn leaf(&self, dir: &Path, file: &str, names: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        replace(&dir.join(format!("{file}.crt")), &cert.pem());
        replace(&dir.join(format!("{file}.key")), &key.serialize_pem());
        cert.der().to_vec()
    }

    fn client(&self) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsConnector::from(Arc::new(config))
    }
}

/// Writes `text` to `path` as deploy tools do: a new file renamed over the old one.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn manifests(origin: u16, any: u16, only_a: u16) -> String {
    format!(
        "apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {{name: origin}}
spec: {{service: origin, endpoints: ['127.0.0.1:{origin}']}}
---
apiVersion: meshwork.dev/v1alpha1
kind: TLSCertificate
metadata: {{name: site-a}}
spec: {{certFile: certs/a.crt, keyFile: certs/a.key}}
---
apiVersion: meshwork.dev/v1alpha1
kind: TLSCertificate
metadata: {{name: site-b}}
spec: {{certFile: certs/b.crt, keyFile: certs/b.key}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  listeners:
    - name: https
      port: {any}
      protocol: HTTPS
      tls:
        mode: Terminate
        certificateRefs:
          - {{kind: TLSCertificate, group: meshwork.dev, name: site-a}}
          - {{kind: TLSCertificate, group: meshwork.dev, name: site-b}}
    - name: only-a
      port: {only_a}
      protocol: HTTPS
      hostname: a.example.test
      tls:
        certificateRefs: [{{kind: TLSCertificate, group: meshwork.dev, name: site-a}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - backendRefs: [{{name: origin}}]
"
    )
}

/// A standalone gateway with two HTTPS listeners: `any` (certificates for a.example.test and b.example.test) and
/// `only_a` (hostname a.example.test).
struct Edge {
    dir: tempfile::TempDir,
    ca: TestCa,
    leaf_a: Vec<u8>,
    leaf_b: Vec<u8>,
    any: u16,
    only_a: u16,
    admin: String,
    _origin: Proc,
    _proxy: Proc,
}

impl Edge {
    async fn start() -> Edge {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).unwrap();
        let ca = TestCa::new();
        let leaf_a = ca.leaf(&certs, "a", &["a.example.test"]);
        let leaf_b = ca.leaf(&certs, "b", &["b.example.test", "*.b.example.test"]);
        let (origin, any, only_a, admin) = (free_port(), free_port(), free_port(), free_port());
        let _origin = demo_echo(origin);
        write(dir.path(), "edge.yaml", &manifests(origin, any, only_a));
        let _proxy = Proc::spawn(
            "proxy",
            proxy_command(Some(&dir.path().join("proxy.log")))
                .arg("--manifests")
                .arg(dir.path())
                .args(["--workers", "1", "--admin", &format!("127.0.0.1:{admin}")]),
        );
        let edge = Edge {
            dir,
            ca,
            leaf_a,
            leaf_b,
            any,
            only_a,
            admin: format!("127.0.0.1:{admin}"),
            _origin,
            _proxy,
        };
        eventually(Duration::from_secs(20), "the HTTPS listener", || async {
            edge.get(edge.any, Some("a.example.test"), "a.example.test")
                .await
                .ok()
                .filter(|(_, status, _)| *status == 200)
        })
        .await;
        edge
    }

    fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// GET / over TLS to `port` with `sni` (None: connect by IP address, no SNI) and `Host: host`; returns the
    /// leaf certificate the gateway presented, the status and the body.
    async fn get(
        &self,
        port: u16,
        sni: Option<&str>,
        host: &str,
    ) -> Result<(Vec<u8>, u16, String), String> {
        let (mut send, leaf) = self.connect(port, sni).await?;
        let (status, body) = request(&mut send, host).await?;
        Ok((leaf, status, body))
    }

    /// An HTTP/1.1 connection over TLS, and the leaf certificate the gateway presented on it.
    async fn connect(
        &self,
        port: u16,
        sni: Option<&str>,
    ) -> Result<
        (
            hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
            Vec<u8>,
        ),
        String,
    > {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = match sni {
            Some(s) => ServerName::try_from(s.to_string()).unwrap(),
            None => ServerName::IpAddress(addr.ip().into()),
        };
        let tls = tokio::time::timeout(Duration::from_secs(5), self.ca.client().connect(name, tcp))
            .await
            .map_err(|_| "handshake timed out".to_string())?
            .map_err(|e| format!("handshake: {e}"))?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c: &CertificateDer<'_>| c.to_vec())
            .unwrap_or_default();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok((send, leaf))
    }

    async fn metrics(&self) -> String {
        metrics(&client(), &self.admin).await
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }
}

async fn request(
    send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: &str,
) -> Result<(u16, String), String> {
    let req = http::Request::get("/")
        .header("host", host)
        .header("x-forwarded-proto", "http")
        .body(Empty::new())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .map_err(|_| "request timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        status,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    ))
}

/// Records the certificate a server shows, accepting any (for what an unverifying client would be shown).
#[derive(Debug)]
struct Recorder(
    std::sync::Mutex<Vec<u8>>,
    Arc<rustls::crypto::CryptoProvider>,
);

impl rustls::client::danger::ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        *self.0.lock().unwrap() = end_entity.to_vec();
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.1.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.1.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.1.signature_verification_algorithms.supported_schemes()
    }
}

/// The leaf certificate the gateway shows for `sni` to a client that verifies nothing.
async fn shown(port: u16, sni: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let recorder = Arc::new(Recorder(Default::default(), provider.clone()));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let _tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let leaf = recorder.0.lock().unwrap().clone();
    leaf
}

/// The value of a `meshwork_tls_*` sample with exactly these labels (0 when absent).
fn sample(metrics: &str, name_and_labels: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_selects_the_certificate_for_each_name() {
    let edge = Edge::start().await;
    let (leaf, status, body) = edge
        .get(edge.any, Some("a.example.test"), "a.example.test")
        .await
        .unwrap();
    assert_eq!((leaf == edge.leaf_a, status), (true, 200), "{body}");
    // The app learns the client spoke HTTPS, whatever the client claimed.
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https", "{body}");

    let (leaf, status, _) = edge
        .get(edge.any, Some("b.example.test"), "b.example.test")
        .await
        .unwrap();
    assert_eq!((leaf == edge.leaf_b, status), (true, 200));
    // A wildcard name of the second certificate.
    let (leaf, _, _) = edge
        .get(edge.any, Some("x.b.example.test"), "x.b.example.test")
        .await
        .unwrap();
    assert!(leaf == edge.leaf_b, "*.b.example.test picks site-b");
    // A name no certificate covers gets the first one (a verifying client then refuses it: not its name).
    let err = edge
        .get(edge.any, Some("c.example.test"), "c.example.test")
        .await
        .unwrap_err();
    assert!(err.contains("handshake"), "{err}");
    assert!(shown(edge.any, "c.example.test").await == edge.leaf_a);
    let m = edge.metrics().await;
    assert!(
        sample(
            &m,
            "meshwork_tls_handshakes_total{side=\"https\",result=\"ok\",reason=\"\"}"
        ) >= 3,
        "{m}"
    );
    assert!(
        m.contains(
            "meshwork_tls_serving_certificate_expiry_seconds{certificate=\"default/site-a\"}"
        ),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_hostname_refuses_other_names() {
    let edge = Edge::start().await;
    let (leaf, status, _) = edge
        .get(edge.only_a, Some("a.example.test"), "a.example.test")
        .await
        .unwrap();
    assert_eq!((leaf == edge.leaf_a, status), (true, 200));
    // Another name, or none (by IP address): no handshake.
    let err = edge
        .get(edge.only_a, Some("b.example.test"), "b.example.test")
        .await
        .unwrap_err();
    assert!(err.contains("handshake"), "{err}");
    let err = edge
        .get(edge.only_a, None, "a.example.test")
        .await
        .unwrap_err();
    assert!(err.contains("handshake"), "{err}");
    // The right SNI but a Host outside the listener's hostname: no virtual host serves it.
    let (_, status, _) = edge
        .get(edge.only_a, Some("a.example.test"), "b.example.test")
        .await
        .unwrap();
    assert_eq!(status, 404);
    let m = edge.metrics().await;
    assert_eq!(
        sample(
            &m,
            "meshwork_tls_handshakes_total{side=\"https\",result=\"error\",reason=\"sni_mismatch\"}"
        ),
        2,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_certificate_files_are_served_without_a_restart() {
    let edge = Edge::start().await;
    let (mut open, leaf) = edge
        .connect(edge.any, Some("a.example.test"))
        .await
        .unwrap();
    assert!(leaf == edge.leaf_a);
    let renewed = edge.ca.leaf(&edge.certs(), "a", &["a.example.test"]);
    assert!(renewed != edge.leaf_a);
    eventually(
        Duration::from_secs(10),
        "the renewed certificate",
        || async {
            let (leaf, _, _) = edge
                .get(edge.any, Some("a.example.test"), "a.example.test")
                .await
                .ok()?;
            (leaf == renewed).then_some(())
        },
    )
    .await;
    // A connection opened before the swap carries on.
    assert_eq!(request(&mut open, "a.example.test").await.unwrap().0, 200);
    // Two renames (certificate, then key): one poll or two may see them, and a pair seen half-replaced is
    // refused (the key does not match) and taken at the next poll.
    let m = edge.metrics().await;
    assert!(
        sample(
            &m,
            "meshwork_tls_serving_certificate_reloads_total{certificate=\"default/site-a\",result=\"ok\"}"
        ) >= 1,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_replacement_keeps_the_last_good_certificate() {
    let edge = Edge::start().await;
    replace(
        &edge.certs().join("b.crt"),
        "-----BEGIN CERTIFICATE-----\nbroken\n",
    );
    eventually(Duration::from_secs(10), "the failed reload to be counted", || async {
        let m = edge.metrics().await;
        (sample(
            &m,
            "meshwork_tls_serving_certificate_reloads_total{certificate=\"default/site-b\",result=\"error\"}",
        ) == 1)
            .then_some(())
    })
    .await;
    let (leaf, status, _) = edge
        .get(edge.any, Some("b.example.test"), "b.example.test")
        .await
        .unwrap();
    assert_eq!((leaf == edge.leaf_b, status), (true, 200));
    assert!(
        edge.log()
            .contains("still serving the previous certificate"),
        "{}",
        edge.log()
    );
    // Fixed files are taken again.
    let fixed = edge.ca.leaf(&edge.certs(), "b", &["b.example.test"]);
    eventually(Duration::from_secs(10), "the fixed certificate", || async {
        let (leaf, _, _) = edge
            .get(edge.any, Some("b.example.test"), "b.example.test")
            .await
            .ok()?;
        (leaf == fixed).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_sent_to_an_https_listener_gets_no_answer() {
    let edge = Edge::start().await;
    let mut s = TcpStream::connect(("127.0.0.1", edge.any)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: a.example.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(read.is_ok(), "the gateway closes the connection");
    assert!(!text.contains("HTTP/1.1 200"), "{text}");
    // The listener still serves TLS clients.
    let (_, status, _) = edge
        .get(edge.any, Some("a.example.test"), "a.example.test")
        .await
        .unwrap();
    assert_eq!(status, 200);
}
