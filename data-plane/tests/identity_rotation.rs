//! Certificate rotation under load (issue 12): with 20-second certificates, every proxy of a mesh renews its own
//! (new key, CSR on its control-plane stream, new certificate for new handshakes) while requests flow gateway ->
//! frontend's sidecars -> backend's sidecars, and no request fails.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

fn manifests(gw: u16) -> String {
    format!(
        r#"
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {{name: backend}}
spec: {{service: backend, command: meshwork-demo echo}}
---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {{name: frontend}}
spec: {{service: frontend, command: meshwork-demo frontend --upstream backend}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec: {{listeners: [{{name: http, port: {gw}}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: all}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{backendRefs: [{{name: frontend}}]}}]
"#
    )
}

/// Each proxy's last certificate issue time, by node.
async fn issued(cp: &str) -> HashMap<String, u64> {
    cp_status(cp)
        .await
        .unwrap()
        .proxies
        .into_iter()
        .map(|p| (p.node_id, p.cert_issued_unix_ms))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_proxy_rotates_its_certificate_under_load_without_a_failed_request() {
    let mesh = Mesh::start_with(&["--cert-lifetime", "20s"], manifests).await;
    let cp = mesh.control_plane.clone();
    let url = format!("{}/rotate", mesh.base());
    wait_serving(&client(), &url, Duration::from_secs(20), "the mesh").await;
    let first = issued(&cp).await;
    assert_eq!(first.len(), 3, "gateway, frontend and backend: {first:?}");
    assert!(first.values().all(|t| *t > 0), "{first:?}");

    let load = Load::start(url, 4);
    // Renewal comes at 50-70% of the lifetime: within 14 s of the first certificate, plus slack.
    let rotated = eventually(
        Duration::from_secs(40),
        "every proxy to renew its certificate",
        || {
            let (cp, first) = (cp.clone(), first.clone());
            async move {
                let now = issued(&cp).await;
                let all = first
                    .iter()
                    .all(|(node, t)| now.get(node).is_some_and(|n| n > t));
                all.then_some(now)
            }
        },
    )
    .await;
    // Keep the traffic going a little past the last renewal.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let served = load.finish_without_failures("certificate rotation").await;
    assert!(served > 100, "only {served} requests went through");
    let status = cp_status(&cp).await.unwrap();
    for p in &status.proxies {
        assert!(
            p.spiffe_id
                .starts_with("spiffe://cluster.local/ns/default/"),
            "{p:?}"
        );
        // The certificate in use is a renewed one: issued no earlier than the renewal seen above, valid 20 s.
        assert!(p.cert_issued_unix_ms >= rotated[&p.node_id], "{p:?}");
        assert!(
            p.cert_not_after_unix_ms >= p.cert_issued_unix_ms + 19_000,
            "{p:?}"
        );
    }
}
