//! Gateway API references across namespaces (issue 11, item 14) through a real standalone gateway: a rule whose
//! backend is another namespace's Service without a ReferenceGrant answers 500 while the rest of the route works;
//! adding the grant to the directory opens it.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::*;

fn manifests(gw: u16, web: u16, billing: u16) -> String {
    format!(
        "apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {{name: web}}
spec: {{service: web, endpoints: ['127.0.0.1:{web}']}}
---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {{name: billing, namespace: finance}}
spec: {{service: billing, endpoints: ['127.0.0.1:{billing}']}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec: {{listeners: [{{name: http, port: {gw}}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - matches: [{{path: {{value: /pay}}}}]
      backendRefs: [{{name: billing, namespace: finance}}]
    - backendRefs: [{{name: web}}]
"
    )
}

const GRANT: &str = "apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: edge-routes, namespace: finance}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: default}]
  to: [{group: '', kind: Service}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_in_another_namespace_needs_a_reference_grant() {
    let dir = tempfile::tempdir().unwrap();
    let (gw, web, billing, admin) = (free_port(), free_port(), free_port(), free_port());
    let (_web, _billing) = (demo_echo(web), demo_echo(billing));
    write(dir.path(), "m.yaml", &manifests(gw, web, billing));
    let _proxy = Proc::spawn(
        "proxy",
        proxy_command(Some(&dir.path().join("proxy.log")))
            .arg("--manifests")
            .arg(dir.path())
            .args(["--workers", "1", "--admin", &format!("127.0.0.1:{admin}")]),
    );
    let c = client();
    let base = format!("http://127.0.0.1:{gw}");
    wait_serving(
        &c,
        &format!("{base}/"),
        Duration::from_secs(15),
        "the gateway",
    )
    .await;
    let pay = get(&c, &format!("{base}/pay"), &[]).await;
    assert_eq!(pay.status, 500, "no grant: {}", pay.text());
    write(dir.path(), "grant.yaml", GRANT);
    wait_serving(
        &c,
        &format!("{base}/pay"),
        Duration::from_secs(15),
        "/pay with the grant",
    )
    .await;
}
