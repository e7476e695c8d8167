//! AuthorizationPolicy end to end (issue 12): manifests -> control plane -> proxies -> 403s. "Only frontend and
//! the gateway may call backend" on backend's inbound sidecar (by the caller identity the sidecar verified over
//! mTLS), a DENY on the gateway by path, denials counted per policy on /metrics, and a policy added while the mesh
//! runs applying live.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

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
spec: {{service: frontend, command: meshwork-demo echo}}
---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {{name: web}}
spec: {{service: web, command: meshwork-demo echo}}
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
  rules: [{{backendRefs: [{{name: backend}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: only-frontend}}
spec:
  targetRefs: [{{kind: Service, name: backend}}]
  action: ALLOW
  rules:
    - from: [{{source: {{principals: [cluster.local/ns/default/sa/frontend, cluster.local/ns/default/gateway/edge]}}}}]
"#
    )
}

const NO_ADMIN_AT_THE_EDGE: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin}
spec:
  targetRefs: [{kind: Gateway, name: edge}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
"#;

/// GET `path` on backend through `node`'s outbound listener (as that app would call it).
async fn call_backend(mesh: &Mesh, c: &HttpClient, node: &str, path: &str) -> Resp {
    let outbound = mesh.node(node).get("outbound").to_string();
    get(
        c,
        &format!("http://{outbound}{path}"),
        &[("host", "backend")],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_decide_by_caller_and_path_and_apply_live() {
    let mut mesh = Mesh::start(manifests).await;
    let c = client();

    // Only frontend (and the gateway) may call backend.
    let r = call_backend(&mesh, &c, "frontend-0", "/orders").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call_backend(&mesh, &c, "web-0", "/orders").await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (403, "meshwork: RBAC: access denied\n")
    );
    // Straight at backend's inbound, claiming to be frontend without a proof: no verified identity, denied.
    let inbound = mesh.node("backend-0").get("inbound").to_string();
    let r = get(
        &c,
        &format!("http://{inbound}/orders"),
        &[("x-meshwork-source", "frontend.default")],
    )
    .await;
    assert_eq!(r.status, 403);
    // The gateway proves its own identity to backend's sidecar (mTLS), which the policy lets in.
    let r = get(&c, &format!("{}/orders", mesh.base()), &[]).await;
    assert_eq!(r.status, 200, "through the gateway: {}", r.text());
    let seen = metrics(&c, &mesh.admin("backend-0")).await;
    assert!(
        seen.contains(
            r#"meshwork_authz_decisions_total{policy="(no ALLOW policy matched)",outcome="deny"} 2"#
        ),
        "{seen}"
    );

    // A DENY on the gateway, added while the mesh runs.
    let r = get(&c, &format!("{}/admin/users", mesh.base()), &[]).await;
    assert_eq!(r.status, 200);
    write(&mesh.dir, "no-admin.yaml", NO_ADMIN_AT_THE_EDGE);
    mesh.wait_line("applied: generation 2", Duration::from_secs(30))
        .await;
    let r = get(&c, &format!("{}/admin/users", mesh.base()), &[]).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (403, "meshwork: RBAC: access denied\n")
    );
    let r = get(&c, &format!("{}/orders", mesh.base()), &[]).await;
    assert_eq!(r.status, 200);
    // Other spellings of the denied path are the same path: normalised before the policy (and the app) see it.
    for spelling in [
        "//admin/users",
        "/./admin/users",
        "/x/../admin/users",
        "/%61dmin/users",
    ] {
        let r = get(&c, &format!("{}{spelling}", mesh.base()), &[]).await;
        assert_eq!(r.status, 403, "{spelling}: {}", r.text());
    }
    let r = get(&c, &format!("{}/admin%2Fusers", mesh.base()), &[]).await;
    assert_eq!(r.status, 400, "an encoded slash: {}", r.text());
    let seen = metrics(&c, &mesh.admin("gateway-edge")).await;
    assert!(
        seen.contains(
            r#"meshwork_authz_decisions_total{policy="default/no-admin",outcome="deny"} 5"#
        ),
        "{seen}"
    );
}
