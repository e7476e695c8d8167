//! HTTP/2 (h2c) and gRPC through a gateway and sidecars: unary and server-streaming calls, error statuses carried
//! in trailers, a large streamed request body, h1 and h2 clients on the same listener.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use meshwork_proto::demo::echo_client::EchoClient;
use meshwork_proto::demo::EchoRequest;

fn manifests(gw: u16) -> String {
    format!(
        r#"
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {{name: greeter}}
spec: {{service: greeter, protocol: grpc, labels: {{version: v1}}, replicas: 2, command: meshwork-demo grpc}}
---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {{name: h2echo}}
spec: {{service: h2echo, protocol: http2, command: meshwork-demo echo}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec: {{listeners: [{{name: http, port: {gw}}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: greeter}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - matches: [{{method: {{service: meshwork.demo.v1.Echo}}}}]
      backendRefs: [{{name: greeter}}]
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier: {{set: [{{name: x-via, value: gateway}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: h2}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - matches: [{{path: {{value: /h2}}}}]
      backendRefs: [{{name: h2echo}}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_h2_through_gateway_and_sidecars() {
    let mesh = Mesh::start(manifests).await;
    let gw = mesh.gw;

    // gRPC through the gateway (h2c in, h2c to the greeter's sidecar, h2c to the app).
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{gw}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = EchoClient::new(channel);
    let reply = grpc
        .say(EchoRequest {
            message: "hi".into(),
            count: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (reply.message.as_str(), reply.served_by.as_str()),
        ("hi", "greeter/v1")
    );

    let mut stream = grpc
        .repeat(EchoRequest {
            message: "m".into(),
            count: 2000,
        })
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(item) = stream.message().await.unwrap() {
        assert_eq!(item.message, format!("m {n}"));
        n += 1;
    }
    assert_eq!(
        n, 2000,
        "every streamed message arrives, then the OK status in trailers"
    );

    let err = grpc
        .repeat(EchoRequest {
            message: "m".into(),
            count: 20_000,
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "grpc-status travels back: {err:?}"
    );

    // gRPC from an app through its sidecar's outbound listener, addressed by service name (:authority).
    let outbound = mesh.node("h2echo-0").get("outbound").to_string();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{outbound}"))
        .unwrap()
        .origin("http://greeter".parse().unwrap())
        .connect()
        .await
        .unwrap();
    let reply = EchoClient::new(channel)
        .say(EchoRequest {
            message: "east-west".into(),
            count: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.served_by, "greeter/v1");

    // h2c and HTTP/1.1 clients on the same gateway listener; the upstream is HTTP/2 either way.
    for (name, c) in [("h2", h2_client()), ("h1", client())] {
        let r = get(&c, &format!("http://127.0.0.1:{gw}/h2/x"), &[]).await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        assert_eq!(r.json()["http"], "HTTP/2.0", "{name}");
    }

    // A large request body streams through both hops intact.
    let big = Bytes::from(vec![7u8; 8 * 1024 * 1024]);
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        send(
            &client(),
            "POST",
            &format!("http://127.0.0.1:{gw}/h2/upload"),
            &[],
            big,
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(r.json()["body_bytes"], 8 * 1024 * 1024);
}
