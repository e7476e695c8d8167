//! Filters that wait on the mesh: the ext-authz filter (official `proxy-wasm` SDK) pauses every request while an
//! HTTP callout asks an authorization service (a mesh workload) whether it may pass, then resumes it or answers
//! with the service's denial. Also covers callout timeouts, many paused requests at once, response trailers
//! (gRPC) edited by a trailers callback, and shared-queue notifications (`proxy_on_queue_ready`) turning
//! decisions into filter metrics.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::*;
use meshwork_proto::demo::echo_client::EchoClient;
use meshwork_proto::demo::EchoRequest;

fn manifests(gw: u16, plugins: &std::path::Path) -> String {
    format!(
        r#"
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {{name: web}}
spec: {{service: web, command: meshwork-demo echo}}
---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {{name: authz}}
spec: {{service: authz, command: meshwork-demo echo}}
---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {{name: greeter}}
spec: {{service: greeter, protocol: grpc, command: meshwork-demo grpc}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec: {{listeners: [{{name: http, port: {gw}}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - backendRefs: [{{name: web}}]
---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {{name: dead}}
spec: {{service: dead, endpoints: ["127.0.0.1:1"]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: dead}}
spec:
  parentRefs: [{{name: edge}}]
  hostnames: [dead.test]
  rules:
    - backendRefs: [{{name: dead}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: greeter}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - matches: [{{method: {{service: meshwork.demo.v1.Echo}}}}]
      backendRefs: [{{name: greeter}}]
---
apiVersion: meshwork.dev/v1alpha1
kind: WasmPlugin
metadata: {{name: ext-authz}}
spec:
  url: file://{p}/meshwork_filter_ext_authz.wasm
  targetRefs: [{{kind: Gateway, name: edge}}]
  phase: AUTHZ
  pluginConfig:
    upstream: authz.default
    timeout_ms: 700
    forward_headers: [x-user]
"#,
        p = plugins.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_authz_callouts_pause_and_resume_requests() {
    let plugins = plugins_dir();
    let mesh = Mesh::start(|gw| manifests(gw, &plugins)).await;
    let (base, c) = (mesh.base(), client());
    let authz = mesh.app("authz-0");
    let before = demo_count(&c, &authz).await;

    // Allowed: the authorization service answered 2xx, so the paused request went on, marked by the filter.
    let r = get(&c, &format!("{base}/hello"), &[("x-user", "alice")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["headers"]["x-authz"], "allowed by authz.default");
    assert_eq!(r.headers.get("x-authz-decision").unwrap(), "allowed");
    // The callout really reached the authorization service (one request per decision).
    assert_eq!(demo_count(&c, &authz).await, before + 1);

    // Denied: the service's answer (here a 403 from the echo's /status/403) goes back to the client as is.
    let r = get(&c, &format!("{base}/status/403"), &[]).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.headers.get("x-authz").unwrap(), "denied");

    // The proxy's own error answer (nothing listens behind `dead`) goes through the response filters too.
    let r = get(&c, &format!("{base}/x"), &[("host", "dead.test")]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("connect"), "{}", r.text());
    assert_eq!(r.headers.get("x-authz-decision").unwrap(), "allowed");

    // No answer within the callout's timeout: fail closed with 503.
    let started = tokio::time::Instant::now();
    let r = get(&c, &format!("{base}/delay/3000"), &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("did not answer"), "{}", r.text());
    assert!(started.elapsed() < Duration::from_millis(2500));

    // Many requests paused at once do not hold each other up (the instance is not locked while they wait).
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (c, url) = (c.clone(), format!("{base}/many/{i}"));
        tasks.push(tokio::spawn(async move { get(&c, &url, &[]).await }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["headers"]["x-authz"], "allowed by authz.default");
    }

    // gRPC: authorized the same way; the filter's trailers callback stamps the decision into the trailers.
    let channel = tonic::transport::Endpoint::from_shared(base.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut stream = EchoClient::new(channel)
        .repeat(EchoRequest {
            message: "m".into(),
            count: 3,
        })
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while stream.message().await.unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 3);
    let trailers = stream.trailers().await.unwrap().unwrap();
    assert_eq!(
        trailers
            .get("x-authz-decision")
            .map(|v| v.to_str().unwrap()),
        Some("allowed"),
        "{trailers:?}"
    );

    // Each decision was queued by its stream and counted by the root context on `proxy_on_queue_ready`:
    // allowed = 1 + 1 (dead) + 40 + 1 (gRPC), denied = 1, failed = 1.
    let admin = mesh.admin("gateway-edge");
    let metrics = eventually(Duration::from_secs(5), "decision counters", || {
        let (c, admin) = (c.clone(), admin.clone());
        async move {
            let m = metrics(&c, &admin).await;
            m.contains("meshwork_filter_ext_authz_allowed_total 43")
                .then_some(m)
        }
    })
    .await;
    // Each filter-defined metric is a typed family of its own.
    for line in [
        "# TYPE meshwork_filter_ext_authz_allowed_total counter",
        "meshwork_filter_ext_authz_denied_total 1",
        "meshwork_filter_ext_authz_failed_total 1",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
}
