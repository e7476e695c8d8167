//! Wasm filters end to end through `meshwork up`: filters built from source with the official `proxy-wasm` Rust
//! SDK (the ABI Envoy runs), distributed by the control plane, run by gateway and sidecar proxies. Covers local
//! replies, header edits in both directions, the fail strategies with a filter that panics, loops forever or
//! exhausts its memory, NACKs for a bad module and a rejected configuration, and a hot swap under load.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::*;

fn manifests(
    gw: u16,
    plugins: &std::path::Path,
    policy_value: &str,
    api_key_config: &str,
    api_key_url: &str,
) -> String {
    let p = plugins.display();
    format!(
        r#"
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
metadata: {{name: main}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{backendRefs: [{{name: backend}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: panic}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{matches: [{{path: {{value: /panic}}}}], backendRefs: [{{name: backend}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: loop}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{matches: [{{path: {{value: /loop}}}}], backendRefs: [{{name: backend}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: oom}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{matches: [{{path: {{value: /oom}}}}], backendRefs: [{{name: backend}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: redact}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{matches: [{{path: {{value: /redact}}}}], backendRefs: [{{name: backend}}]}}]
---
apiVersion: meshwork.dev/v1alpha1
kind: WasmPlugin
metadata: {{name: redact}}
spec:
  url: file://{p}/meshwork_filter_misbehave.wasm
  targetRefs: [{{kind: HTTPRoute, name: redact}}]
  pluginConfig: redact
  limits: {{bodyBuffer: 4Ki}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: grow}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{matches: [{{path: {{value: /grow}}}}], backendRefs: [{{name: backend}}]}}]
---
apiVersion: meshwork.dev/v1alpha1
kind: WasmPlugin
metadata: {{name: grow}}
spec:
  url: file://{p}/meshwork_filter_misbehave.wasm
  targetRefs: [{{kind: HTTPRoute, name: grow}}]
  pluginConfig: grow
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: deny-body}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{matches: [{{path: {{value: /deny-body}}}}], backendRefs: [{{name: backend}}]}}]
---
apiVersion: meshwork.dev/v1alpha1
kind: WasmPlugin
metadata: {{name: deny-body}}
spec:
  url: file://{p}/meshwork_filter_misbehave.wasm
  targetRefs: [{{kind: HTTPRoute, name: deny-body}}]
  pluginConfig: deny-body
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: guard}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{matches: [{{path: {{value: /guard}}}}], backendRefs: [{{name: backend}}]}}]
---
apiVersion: meshwork.dev/v1alpha1
kind: WasmPlugin
metadata: {{name: body-guard}}
spec:
  url: file://{p}/meshwork_filter_body_guard.wasm
  targetRefs: [{{kind: HTTPRoute, name: guard}}]
  pluginConfig: {{deny: [forbidden], redact: {{secret: "[hidden]"}}}}
  limits: {{bodyBuffer: 4Ki}}
---
apiVersion: meshwork.dev/v1alpha1
kind: WasmPlugin
metadata: {{name: api-key}}
spec:
  url: {api_key_url}
  phase: AUTHN
  targetRefs: [{{kind: Gateway, name: edge}}]
  pluginConfig: {api_key_config}
---
apiVersion: meshwork.dev/v1alpha1
kind: WasmPlugin
metadata: {{name: header-policy}}
spec:
  url: file://{p}/meshwork_filter_header_policy.wasm
  phase: STATS
  targetRefs: [{{kind: HTTPRoute, name: main}}]
  pluginConfig:
    request:
      set: {{x-policy: "{policy_value}"}}
      rename: {{x-old: x-new}}
    response:
      set: {{x-filtered: "yes"}}
---
apiVersion: meshwork.dev/v1alpha1
kind: WasmPlugin
metadata: {{name: inbound-policy}}
spec:
  url: file://{p}/meshwork_filter_header_policy.wasm
  targetRefs: [{{kind: Service, name: backend}}]
  pluginConfig: {{request: {{set: {{x-inbound: "yes"}}}}}}
---
apiVersion: meshwork.dev/v1alpha1
kind: WasmPlugin
metadata: {{name: misbehave-panic}}
spec:
  url: file://{p}/meshwork_filter_misbehave.wasm
  targetRefs: [{{kind: HTTPRoute, name: panic}}]
  pluginConfig: panic
---
apiVersion: meshwork.dev/v1alpha1
kind: WasmPlugin
metadata: {{name: misbehave-loop}}
spec:
  url: file://{p}/meshwork_filter_misbehave.wasm
  targetRefs: [{{kind: HTTPRoute, name: loop}}]
  pluginConfig: loop
  limits: {{cpuPerCall: 50ms}}
---
apiVersion: meshwork.dev/v1alpha1
kind: WasmPlugin
metadata: {{name: misbehave-oom}}
spec:
  url: file://{p}/meshwork_filter_misbehave.wasm
  targetRefs: [{{kind: HTTPRoute, name: oom}}]
  pluginConfig: oom
  failStrategy: FAIL_OPEN
  limits: {{memory: 8Mi}}
"#
    )
}

const KEYS: &str = r#"{header: x-api-key, keys: {k1: alice}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_filters_through_the_mesh() {
    let plugins = plugins_dir();
    let api_key_url = format!("file://{}/meshwork_filter_api_key.wasm", plugins.display());
    let mut mesh = Mesh::start(|gw| manifests(gw, &plugins, "v1", KEYS, &api_key_url)).await;
    let (gw, base, c) = (mesh.gw, mesh.base(), client());
    let key = [("x-api-key", "k1")];

    // AUTHN filter on the gateway: local 401 / 403 replies; a known key passes and is replaced by the client name.
    let r = get(&c, &format!("{base}/x"), &[]).await;
    assert_eq!(
        (
            r.status,
            r.headers
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap())
        ),
        (401, Some("ApiKey")),
        "{}",
        r.text()
    );
    assert_eq!(r.text(), "missing API key\n");
    assert_eq!(
        get(&c, &format!("{base}/x"), &[("x-api-key", "nope")])
            .await
            .status,
        403
    );
    let r = get(
        &c,
        &format!("{base}/x"),
        &[("x-api-key", "k1"), ("x-old", "moved")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["headers"]["x-client"], "alice");
    assert!(j["headers"].get("x-api-key").is_none());
    // Route-level filter after it (phase order): request and response header edits.
    assert_eq!(j["headers"]["x-policy"], "v1");
    assert_eq!(j["headers"]["x-new"], "moved");
    assert!(j["headers"].get("x-old").is_none());
    assert_eq!(r.headers.get("x-filtered").unwrap(), "yes");
    // Filter on the backend sidecar's inbound listener (WasmPlugin targeting the Service).
    assert_eq!(j["headers"]["x-inbound"], "yes");

    // Request bodies: they stream past filters without body callbacks (the SDK's header filters on the main route)
    // and through body callbacks that continue (the proxy-wasm crate filter on /oom), and a filter that pauses gets
    // the whole body to rewrite, up to its bodyBuffer limit.
    for path in ["/x", "/oom/fine"] {
        let big = bytes::Bytes::from(vec![b'b'; 300_000]);
        let r = send(&c, "POST", &format!("{base}{path}"), &key, big)
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.json()["body_bytes"].as_u64()),
            (200, Some(300_000)),
            "{path}: {}",
            r.text()
        );
    }
    // The SDK's body helpers (plugins/body-guard): a denied word in the request body is a local 403; otherwise the
    // request body and the response body (the echo's JSON, which repeats a request header) are redacted, and
    // longer than before (the SDK removed content-length for the filter).
    let r = send(
        &c,
        "POST",
        &format!("{base}/guard"),
        &key,
        bytes::Bytes::from_static(b"this is forbidden"),
    )
    .await
    .unwrap();
    assert_eq!(
        (r.status, r.text()),
        (
            403,
            "request body refused: it contains \"forbidden\"\n".to_string()
        )
    );
    let r = send(
        &c,
        "POST",
        &format!("{base}/guard"),
        &[key[0], ("x-note", "top secret")],
        bytes::Bytes::from_static(b"my secret"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.headers.get("content-length").is_none(), "{:?}", r.headers);
    let echoed = r.json();
    assert_eq!(echoed["body"], "my [hidden]", "request body redacted");
    assert_eq!(
        echoed["headers"]["x-note"], "top [hidden]",
        "response body redacted"
    );
    let big = bytes::Bytes::from(vec![b'b'; 8_000]);
    let r = send(&c, "POST", &format!("{base}/guard"), &key, big)
        .await
        .unwrap();
    assert_eq!(r.status, 413, "over the 4Ki bodyBuffer: {}", r.text());
    let r = send(
        &c,
        "POST",
        &format!("{base}/redact"),
        &key,
        bytes::Bytes::from_static(b"my secret is secret"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["body"], "my [hidden] is [hidden]");
    // Response bodies too: the echo's JSON comes back rewritten and longer (the filter removed content-length in
    // its headers callback, as Envoy filters do before they change a body's length).
    let r = send(
        &c,
        "POST",
        &format!("{base}/redact"),
        &key,
        bytes::Bytes::from_static(b"classified"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["body"], "[redacted: classified]");
    // A filter that changes the length but leaves content-length: the proxy refuses to send a body that disagrees
    // with the header it already sent (the response is cut off, never silently wrong), and the next one is fine.
    let grown = send(
        &c,
        "POST",
        &format!("{base}/grow"),
        &key,
        bytes::Bytes::from_static(b"x"),
    )
    .await;
    assert!(
        grown.is_err(),
        "a body longer than its content-length was sent: {:?}",
        grown.map(|r| r.text())
    );
    let r = send(
        &c,
        "POST",
        &format!("{base}/redact"),
        &key,
        bytes::Bytes::from_static(b"still fine"),
    )
    .await
    .unwrap();
    assert_eq!(r.json()["body"], "still fine");
    // A local reply from a request-body callback answers the request (as in Envoy); a clean body goes through.
    for (body, status) in [("this is forbidden", 403), ("this is fine", 200)] {
        let r = send(
            &c,
            "POST",
            &format!("{base}/deny-body"),
            &key,
            bytes::Bytes::from_static(body.as_bytes()),
        )
        .await
        .unwrap();
        assert_eq!(r.status, status, "{body}: {}", r.text());
        if status == 403 {
            assert_eq!(r.text(), "blocked by body\n");
            assert_eq!(r.headers["x-denied-by"], "misbehave");
        } else {
            assert_eq!(r.json()["body"], body);
        }
    }
    let r = send(
        &c,
        "POST",
        &format!("{base}/redact"),
        &key,
        bytes::Bytes::from(vec![b's'; 10_000]),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(
        r.text().contains("4096 bytes a Wasm filter may buffer"),
        "{}",
        r.text()
    );

    // A panicking filter fails only its request (FAIL_CLOSE: 503 naming the plugin); its instance is replaced.
    let r = get(&c, &format!("{base}/panic/boom"), &key).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.text()
            .contains("wasm plugin default/misbehave-panic failed: trapped"),
        "{}",
        r.text()
    );
    let r = get(&c, &format!("{base}/panic/fine"), &key).await;
    assert_eq!(
        (r.status, r.json()["headers"]["x-misbehave"].as_str()),
        (200, Some("ok"))
    );
    assert_eq!(
        get(&c, &format!("{base}/x"), &key).await.status,
        200,
        "other plugins are unaffected"
    );

    // An infinite loop hits the per-call CPU deadline.
    let started = tokio::time::Instant::now();
    let r = get(&c, &format!("{base}/loop/boom"), &key).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("exceeded its CPU limit"), "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the deadline cut the loop short"
    );
    assert_eq!(
        get(&c, &format!("{base}/loop/fine"), &key).await.status,
        200
    );

    // A memory bomb hits the memory cap; FAIL_OPEN skips the filter and the request goes on.
    let r = get(&c, &format!("{base}/oom/boom"), &key).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.json()["headers"].get("x-misbehave").is_none(),
        "the failed filter was skipped"
    );
    assert_eq!(
        get(&c, &format!("{base}/oom/fine"), &key).await.json()["headers"]["x-misbehave"],
        "ok"
    );

    // Failures are counted per plugin.
    let metrics = metrics(&c, &mesh.admin("gateway-edge")).await;
    for line in [
        r#"meshwork_wasm_failures_total{plugin="default/misbehave-panic",kind="trap"} 1"#,
        r#"meshwork_wasm_failures_total{plugin="default/misbehave-loop",kind="timeout"} 1"#,
        r#"meshwork_wasm_failures_total{plugin="default/misbehave-oom",kind="oom"} 1"#,
        r#"meshwork_wasm_failures_total{plugin="default/api-key",kind="trap"} 0"#,
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }

    // A configuration the filter rejects is NACKed by the gateway; the previous chain keeps serving.
    write(
        &mesh.dir,
        "mesh.yaml",
        &manifests(gw, &plugins, "v1", "{header: x-api-key}", &api_key_url),
    );
    mesh.wait_line("applied: generation 2", Duration::from_secs(30))
        .await;
    let nack = wait_nack(
        &mesh.control_plane,
        "gateway-edge",
        "",
        Duration::from_secs(10),
        "a NACK for the rejected configuration",
    )
    .await;
    assert!(
        nack.last_nack.contains("default/api-key")
            && nack.last_nack.contains("rejected its configuration"),
        "{}",
        nack.last_nack
    );
    assert_eq!(
        get(&c, &format!("{base}/x"), &[]).await.status,
        401,
        "old chain still serving"
    );

    // A module that does not compile is NACKed too.
    let junk = mesh.dir.join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x01\0\0\0garbage").unwrap();
    write(
        &mesh.dir,
        "mesh.yaml",
        &manifests(
            gw,
            &plugins,
            "v1",
            KEYS,
            &format!("file://{}", junk.display()),
        ),
    );
    mesh.wait_line("applied: generation 3", Duration::from_secs(30))
        .await;
    wait_nack(
        &mesh.control_plane,
        "gateway-edge",
        "wasm module",
        Duration::from_secs(10),
        "a NACK for the bad module",
    )
    .await;
    assert_eq!(get(&c, &format!("{base}/x"), &key).await.status, 200);

    // Hot swap under load: new configuration takes new requests, in-flight ones finish; no request fails.
    let load = Load::start_with_headers(
        format!("{base}/x"),
        4,
        vec![("x-api-key".into(), "k1".into())],
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    write(
        &mesh.dir,
        "mesh.yaml",
        &manifests(gw, &plugins, "v2", KEYS, &api_key_url),
    );
    mesh.wait_line("applied: generation 4", Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ok = load.finish_without_failures("during a plugin swap").await;
    assert!(ok > 20);
    assert_eq!(
        get(&c, &format!("{base}/x"), &key).await.json()["headers"]["x-policy"],
        "v2"
    );
}
