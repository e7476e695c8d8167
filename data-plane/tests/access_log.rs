//! Access logs (issue 13): with the Mesh's `spec.accessLog` on, every proxy writes one JSON line per request,
//! checked here field by field for a request that went through (gateway and backend sidecar, one request id) and
//! for ones the proxy or the upstream ended (response flags).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The log's lines once at least `n` are there (at most 10 s).
async fn lines(path: &Path, n: usize) -> Vec<Value> {
    eventually(Duration::from_secs(10), "access log lines", || async {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        (lines.len() >= n).then_some(lines)
    })
    .await
}

fn find<'a>(lines: &'a [Value], listener: &str, request_id: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["listener"] == listener && l["request_id"] == request_id)
        .unwrap_or_else(|| panic!("no {listener} line for {request_id}: {lines:#?}"))
}

/// GET `path` through the gateway at `gw`, for `host`, with this `x-request-id`.
async fn send_as(c: &HttpClient, gw: u16, host: &str, path: &str, request_id: &str) -> Resp {
    let url = format!("http://127.0.0.1:{gw}{path}");
    get(c, &url, &[("host", host), ("x-request-id", request_id)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_logged_field_by_field_with_its_response_flags() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    // Nothing listens there: attempts to it fail to connect.
    let dead = free_port();
    let access_log = format!("{{path: \"{}\"}}", log.display());
    let mesh = Mesh::start(|gw| {
        format!(
            r#"{base}---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {{name: dead}}
spec: {{service: dead, endpoints: ["127.0.0.1:{dead}"]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: dead}}
spec:
  parentRefs: [{{name: edge}}]
  hostnames: [dead]
  rules: [{{backendRefs: [{{name: dead}}]}}]
"#,
            base = manifests(gw, &access_log)
        )
    })
    .await;
    let c = client();
    let before = std::time::SystemTime::now();
    let ok = send_as(&c, mesh.gw, "backend", "/ok?q=1", "req-ok").await;
    assert_eq!(ok.status, 200);
    let failed = send_as(&c, mesh.gw, "backend", "/status/503", "req-503").await;
    assert_eq!(failed.status, 503);
    let lost = send_as(&c, mesh.gw, "nowhere", "/x", "req-nr").await;
    assert_eq!(lost.status, 404);
    let refused = send_as(&c, mesh.gw, "dead", "/x", "req-uf").await;
    assert_eq!(refused.status, 503);
    // Gateway: four lines; backend sidecar: two (the other two never reached it).
    let all = lines(&log, 6).await;

    let gw = find(&all, "http", "req-ok");
    let start = time::OffsetDateTime::parse(
        gw["start_time"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let start = std::time::SystemTime::from(start);
    assert!(start + Duration::from_millis(5) >= before, "{gw}");
    assert_eq!(gw["method"], "GET");
    assert_eq!(gw["authority"], "backend");
    assert_eq!(gw["path"], "/ok?q=1");
    assert_eq!(gw["protocol"], "HTTP/1.1");
    assert_eq!(gw["status"], 200);
    assert_eq!(gw["response_flags"], "-");
    assert!(gw["duration_ms"].as_f64().unwrap() > 0.0, "{gw}");
    assert_eq!(gw["bytes_sent"], ok.body.len() as u64, "{gw}");
    assert_eq!(gw["route"], "HTTPRoute/default/all/rule/0/match/0");
    assert_eq!(gw["destination_service"], "service/default/backend");
    assert_eq!(
        gw["source"],
        Value::Null,
        "a client outside the mesh has no identity"
    );
    assert!(
        gw["downstream_address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{gw}"
    );
    // One attempt, to the backend's sidecar (its inbound address, as registered).
    assert_eq!(gw["attempts"], 1, "{gw}");
    let backend_inbound = mesh.node("backend-0").get("inbound").to_string();
    assert_eq!(gw["upstream_address"], backend_inbound.as_str(), "{gw}");

    // The same request at the backend's sidecar: same id, the gateway as the verified caller.
    let inbound = find(&all, "inbound", "req-ok");
    assert_eq!(inbound["status"], 200);
    assert_eq!(inbound["path"], "/ok?q=1");
    assert_eq!(inbound["destination_service"], "local-app/backend");
    assert_eq!(
        inbound["source"],
        "spiffe://cluster.local/ns/default/gateway/edge"
    );

    // The upstream's own 503 is no proxy decision: no flag.
    let upstream_503 = find(&all, "http", "req-503");
    assert_eq!(
        (
            upstream_503["status"].as_u64(),
            upstream_503["response_flags"].as_str()
        ),
        (Some(503), Some("-"))
    );
    // No route: the gateway answered itself.
    let nr = find(&all, "http", "req-nr");
    assert_eq!(nr["status"], 404);
    assert_eq!(nr["response_flags"], "NR");
    assert_eq!(nr["route"], Value::Null);
    assert_eq!(nr["destination_service"], Value::Null);
    assert!(!all
        .iter()
        .any(|l| l["listener"] == "inbound" && l["request_id"] == "req-nr"));
    // Nothing listening upstream: the gateway's 503 says so, with the endpoint it tried.
    let uf = find(&all, "http", "req-uf");
    assert_eq!(
        (uf["status"].as_u64(), uf["response_flags"].as_str()),
        (Some(503), Some("UF")),
        "{uf}"
    );
    assert_eq!(
        uf["upstream_address"],
        format!("127.0.0.1:{dead}").as_str(),
        "{uf}"
    );
    assert!(uf["attempts"].as_u64().unwrap() >= 1, "{uf}");
    assert_eq!(nr["attempts"], 0);
    assert_eq!(nr["upstream_address"], Value::Null);
    let m = metrics(&c, &mesh.admin("gateway-edge")).await;
    assert!(
        m.contains("meshwork_access_log_lines_total{result=\"written\"} 4"),
        "{m}"
    );
    assert!(
        m.contains("meshwork_access_log_lines_total{result=\"dropped\"} 0"),
        "{m}"
    );
}

/// The configuration versions the mesh's two proxies (gateway and backend sidecar) have applied.
async fn versions(c: &HttpClient, mesh: &Mesh) -> Vec<u64> {
    let mut all = Vec::new();
    for node in ["gateway-edge", "backend-0"] {
        let m = metrics(c, &mesh.admin(node)).await;
        let v = m
            .lines()
            .find_map(|l| {
                l.strip_prefix("meshwork_config_version ")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0);
        all.push(v);
    }
    all
}

/// Writes the mesh's manifests with `access_log` and waits until both proxies have applied a newer snapshot.
async fn change(c: &HttpClient, mesh: &Mesh, access_log: &str) {
    let before = versions(c, mesh).await;
    write(&mesh.dir, "mesh.yaml", &manifests(mesh.gw, access_log));
    eventually(
        Duration::from_secs(15),
        "both proxies to apply the change",
        || async {
            let now = versions(c, mesh).await;
            now.iter().zip(&before).all(|(n, b)| n > b).then_some(())
        },
    )
    .await;
}

fn manifests(gw: u16, access_log: &str) -> String {
    format!(
        r#"
apiVersion: meshwork.dev/v1alpha1
kind: Mesh
metadata: {{name: mesh}}
spec: {{accessLog: {access_log}}}
---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {{name: backend}}
spec: {{service: backend, command: meshwork-demo echo}}
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
  hostnames: [backend]
  rules: [{{backendRefs: [{{name: backend}}]}}]
"#
    )
}

/// `spec.accessLog` edited while the mesh runs: the next requests follow it (another file and format, then off),
/// with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_to_the_access_log_applies_live() {
    let dir = tempfile::tempdir().unwrap();
    let (json, text) = (dir.path().join("json.log"), dir.path().join("text.log"));
    let first = format!("{{path: \"{}\"}}", json.display());
    let mesh = Mesh::start(|gw| manifests(gw, &first)).await;
    let c = client();
    let gw = mesh.gw;
    let send = |id: &'static str| {
        let c = c.clone();
        async move { assert_eq!(send_as(&c, gw, "backend", "/live", id).await.status, 200) }
    };
    send("in-json").await;
    lines(&json, 2).await;

    let second = format!("{{format: text, path: \"{}\"}}", text.display());
    change(&c, &mesh, &second).await;
    send("in-text").await;
    let text_lines = eventually(Duration::from_secs(10), "a text line", || async {
        let t = std::fs::read_to_string(&text).unwrap_or_default();
        t.contains("\"in-text\"").then_some(t)
    })
    .await;
    let line = text_lines
        .lines()
        .find(|l| l.contains("\"in-text\"") && l.contains(" http "))
        .unwrap();
    assert!(
        line.starts_with('[') && line.contains("\"GET /live HTTP/1.1\" 200 - "),
        "{line}"
    );
    let json_now = std::fs::read_to_string(&json).unwrap();
    assert!(
        !json_now.contains("in-text"),
        "the old file got a line after the change: {json_now}"
    );

    change(&c, &mesh, "{enabled: false}").await;
    send("after-off").await;
    // Proven by order rather than by waiting: turned on again into a third file, a later request's line there means
    // every earlier line was written (one writer, in order, flushed on each change of file).
    let third = dir.path().join("third.log");
    change(&c, &mesh, &format!("{{path: \"{}\"}}", third.display())).await;
    send("marker").await;
    let third_lines = lines(&third, 1).await;
    assert!(third_lines.iter().any(|l| l["request_id"] == "marker"));
    for (name, path) in [("json", &json), ("text", &text), ("third", &third)] {
        let t = std::fs::read_to_string(path).unwrap();
        assert!(
            !t.contains("after-off"),
            "{name}: a line was written while the access log was off: {t}"
        );
    }
}
