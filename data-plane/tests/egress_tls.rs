//! TLS origination to systems outside the mesh (issue 12): a Workload with `endpoints` and `spec.tls` is reached
//! over TLS, its server verified for `sni` against `caCertificates`. End to end with a real standalone gateway, a
//! real HTTPS origin (rustls + hyper) with a certificate from a test CA, and the hostile cases next to the happy one:
//! a server whose certificate names another host, and one from a CA the Workload does not trust.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use common::*;

/// A CA (PEM written to `dir/<name>.pem`) and a server certificate it signed for `host`.
fn ca_and_server(dir: &Path, name: &str, host: &str) -> rustls::ServerConfig {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("test CA {name}"));
    let ca = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), ca.pem()).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![host.to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// An HTTPS-only origin on 127.0.0.1 answering every request `200 legacy over TLS (SNI <name>)`.
async fn https_origin(config: rustls::ServerConfig) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(Ok(tls)) =
                    tokio::time::timeout(Duration::from_secs(5), acceptor.accept(tcp)).await
                else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().unwrap_or("").to_string();
                let svc = service_fn(move |_req| {
                    let body = format!("legacy over TLS (SNI {sni})");
                    async move { Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body)))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    port
}

fn manifests(gw: u16, origin: u16) -> String {
    let workload = |name: &str, sni: &str, ca: &str| {
        format!(
            "apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {{name: {name}}}
spec:
  service: {name}
  endpoints: ['127.0.0.1:{origin}']
  tls: {{mode: SIMPLE, sni: {sni}, caCertificates: {ca}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - matches: [{{path: {{value: /{name}}}}}]
      backendRefs: [{{name: {name}}}]
---
"
        )
    };
    format!(
        "{}{}{}apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec: {{listeners: [{{name: http, port: {gw}}}]}}
",
        workload("legacy", "legacy.test", "ca.pem"),
        workload("wrong-name", "other.test", "ca.pem"),
        workload("untrusted", "legacy.test", "other-ca.pem"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_originates_tls_and_verifies_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = ca_and_server(dir.path(), "ca", "legacy.test");
    // A second CA, which signed nothing the origin presents.
    let _ = ca_and_server(dir.path(), "other-ca", "legacy.test");
    let origin = https_origin(server).await;
    let (gw, admin) = (free_port(), free_port());
    write(dir.path(), "m.yaml", &manifests(gw, origin));
    let _proxy = Proc::spawn(
        "proxy",
        proxy_command(Some(&dir.path().join("proxy.log")))
            .arg("--manifests")
            .arg(dir.path())
            .args(["--workers", "1", "--admin", &format!("127.0.0.1:{admin}")]),
    );
    let c = client();
    let base = format!("http://127.0.0.1:{gw}");
    let ok = wait_serving(
        &c,
        &format!("{base}/legacy"),
        Duration::from_secs(20),
        "the gateway to reach the HTTPS origin",
    )
    .await;
    assert_eq!(ok.text(), "legacy over TLS (SNI legacy.test)");

    // A certificate for another name, or from a CA the Workload does not trust: no request reaches the origin.
    for (path, reason) in [
        ("/wrong-name", "name_mismatch"),
        ("/untrusted", "unknown_issuer"),
    ] {
        let r = get(&c, &format!("{base}{path}"), &[]).await;
        assert!(r.status >= 500, "{path}: {} {}", r.status, r.text());
        let m = metrics(&c, &format!("127.0.0.1:{admin}")).await;
        let line = format!(
            "meshwork_tls_handshakes_total{{side=\"egress\",result=\"error\",reason=\"{reason}\"}}"
        );
        assert!(
            m.lines().any(|l| l.starts_with(&line)),
            "{path}: no {line} in\n{m}"
        );
    }
    let m = metrics(&c, &format!("127.0.0.1:{admin}")).await;
    assert!(
        m.lines().any(|l| l.starts_with(
            "meshwork_tls_handshakes_total{side=\"egress\",result=\"ok\",reason=\"\"}"
        ) && !l.ends_with(" 0")),
        "{m}"
    );
}
