//! Hop-by-hop headers (RFC 9110 7.6.1) are the client's business with this hop only (issue 11, item 6): every
//! `Connection` line is honoured, and stripping happens before the Wasm filters, so a client's `Connection` can
//! neither smuggle a header to the upstream nor delete one a filter set.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_line_is_honoured_before_the_filters_run() {
    let plugins = plugins_dir();
    let mesh = Mesh::start(|gw| {
        let mesh = gateway_to_backend(gw);
        format!(
            r#"{mesh}---
apiVersion: meshwork.dev/v1alpha1
kind: WasmPlugin
metadata: {{name: stamp}}
spec:
  url: file://{p}/meshwork_filter_header_policy.wasm
  targetRefs: [{{kind: Gateway, name: edge}}]
  pluginConfig: {{request: {{set: {{x-set-by-filter: "yes"}}}}}}
"#,
            p = plugins.display()
        )
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", mesh.gw))
        .await
        .unwrap();
    let request = "GET /hop HTTP/1.1\r\nhost: backend\r\nconnection: x-set-by-filter\r\nconnection: x-secret\r\n\
                   connection: close\r\nx-secret: smuggled\r\nx-set-by-filter: from-client\r\n\r\n";
    s.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let json = &text[text.find('{').unwrap()..=text.rfind('}').unwrap()];
    let j: serde_json::Value = serde_json::from_str(json).unwrap();
    let seen = &j["headers"];
    assert!(
        seen.get("x-secret").is_none(),
        "a later Connection line named it: {seen}"
    );
    assert_eq!(
        seen["x-set-by-filter"], "yes",
        "the filter's header survives the client's Connection: {seen}"
    );
    assert!(seen.get("connection").is_none(), "{seen}");
}

/// What states the caller to the next hop (`x-meshwork-source`, its proof, `x-forwarded-client-cert`) is the
/// proxy's alone: a Wasm filter at a gateway that sets them does not get them past the gateway (they are removed
/// after the filters, not only on arrival). The backend is an app outside the mesh, with no sidecar that would
/// drop them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_filter_cannot_state_the_caller() {
    let plugins = plugins_dir();
    let app_port = free_port();
    let _app = demo_echo(app_port);
    let mesh = Mesh::start(|gw| {
        format!(
            r#"
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {{name: legacy}}
spec: {{service: legacy, endpoints: ["127.0.0.1:{app_port}"]}}
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
  rules: [{{backendRefs: [{{name: legacy}}]}}]
---
apiVersion: meshwork.dev/v1alpha1
kind: WasmPlugin
metadata: {{name: claim}}
spec:
  url: file://{p}/meshwork_filter_header_policy.wasm
  targetRefs: [{{kind: Gateway, name: edge}}]
  pluginConfig:
    request:
      set:
        x-meshwork-source: admin.default
        x-meshwork-source-proof: "{proof}"
        x-forwarded-client-cert: "URI=spiffe://cluster.local/ns/default/sa/admin"
        x-set-by-filter: "yes"
"#,
            p = plugins.display(),
            proof = "ab".repeat(32),
        )
    })
    .await;
    let url = format!("http://127.0.0.1:{}/claim", mesh.gw);
    let answer = get(&client(), &url, &[("host", "legacy")]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let j: serde_json::Value = serde_json::from_str(&answer.text()).unwrap();
    let seen = &j["headers"];
    assert_eq!(seen["x-set-by-filter"], "yes", "the filter ran: {seen}");
    for claim in [
        "x-meshwork-source",
        "x-meshwork-source-proof",
        "x-forwarded-client-cert",
    ] {
        assert!(
            seen.get(claim).is_none(),
            "{claim} passed the gateway: {seen}"
        );
    }
}
