//! A client's own errors stay that client's problem (issue 11, item 2): a request body with broken chunked
//! framing is answered 400 and counts against no upstream, so it cannot open a circuit breaker for everyone else.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One POST whose chunked body breaks after its headers, on a connection of its own; returns the status line.
async fn broken_chunked_post(port: u16) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nhost: backend\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nZZZ\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_request_body_is_a_400_and_opens_no_breaker() {
    let mesh = Mesh::start(|gw| {
        let mesh = gateway_to_backend(gw);
        format!(
            r#"{mesh}---
apiVersion: meshwork.dev/v1alpha1
kind: TrafficPolicy
metadata: {{name: backend}}
spec:
  targetRef: {{kind: Service, name: backend}}
  retry: {{attempts: 0}}
  circuitBreaker: {{consecutiveFailures: 3, openFor: 30s}}
"#
        )
    })
    .await;
    for _ in 0..5 {
        let status = broken_chunked_post(mesh.gw).await;
        assert!(
            status.starts_with("HTTP/1.1 400"),
            "the client's error, answered as such: {status:?}"
        );
    }
    let c = client();
    let r = get(&c, &format!("{}/after", mesh.base()), &[]).await;
    assert_eq!(r.status, 200, "the breaker stayed closed: {}", r.text());
    let m = metrics(&c, &mesh.admin("gateway-edge")).await;
    let cluster = "service/default/backend";
    assert_eq!(
        metric_value(&m, "meshwork_circuit_breaker_state", cluster),
        0,
        "closed"
    );
    assert_eq!(
        metric_value(&m, "meshwork_circuit_breaker_opened_total", cluster),
        0
    );
}
