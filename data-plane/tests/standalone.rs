//! `meshwork-proxy --manifests DIR`: a gateway with no control plane, sharing the control plane's validation and
//! translation, following the directory live and keeping its config on a bad edit.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn manifests_text(gw: u16, origin: u16, prefix: &str) -> String {
    manifests(gw, origin, prefix)
}

fn manifests(gw: u16, origin: u16, prefix: &str) -> String {
    format!(
        "apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {{name: origin}}
spec: {{service: origin, endpoints: ['127.0.0.1:{origin}']}}
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
    - matches: [{{path: {{value: {prefix}}}}}]
      backendRefs: [{{name: origin}}]
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_gateway_follows_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (gw, origin, admin) = (free_port(), free_port(), free_port());
    let _origin = demo_echo(origin);
    write(dir.path(), "m.yaml", &manifests(gw, origin, "/a"));
    let log_path = dir.path().join("proxy.log");
    let _proxy = Proc::spawn(
        "proxy",
        proxy_command(Some(&log_path))
            .arg("--manifests")
            .arg(dir.path())
            .args(["--workers", "1", "--admin", &format!("127.0.0.1:{admin}")]),
    );
    let c = client();
    let base = format!("http://127.0.0.1:{gw}");
    wait_serving(
        &c,
        &format!("{base}/a"),
        Duration::from_secs(15),
        "the standalone gateway",
    )
    .await;
    assert_eq!(get(&c, &format!("{base}/b"), &[]).await.status, 404);
    // At the edge, x-forwarded-proto is the scheme the client spoke, not what it claims.
    let claimed = get(&c, &format!("{base}/a"), &[("x-forwarded-proto", "https")]).await;
    assert_eq!(claimed.json()["headers"]["x-forwarded-proto"], "http");

    write(dir.path(), "m.yaml", &manifests(gw, origin, "/b"));
    eventually(Duration::from_secs(10), "the edit to apply", || {
        let (c, base) = (c.clone(), base.clone());
        async move { (get(&c, &format!("{base}/b"), &[]).await.status == 200).then_some(()) }
    })
    .await;
    assert_eq!(get(&c, &format!("{base}/a"), &[]).await.status, 404);

    std::fs::write(dir.path().join("bad.yaml"), "kind: [\n").unwrap();
    eventually(
        Duration::from_secs(10),
        "the bad edit to be reported",
        || {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            async move {
                (log.contains("keeping the previous configuration")
                    && log.contains("bad.yaml:2: invalid YAML"))
                .then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        get(&c, &format!("{base}/b"), &[]).await.status,
        200,
        "a bad edit keeps the last good config"
    );
}

/// A directory emptied for a moment (a file moved away and back, as a deploy tool may do) is refused like at
/// startup: the listener keeps answering with the last good configuration (issue 11, item 11).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_directory_keeps_the_listener() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("m");
    std::fs::create_dir(&manifests).unwrap();
    let (gw, origin, admin) = (free_port(), free_port(), free_port());
    let _origin = demo_echo(origin);
    write(&manifests, "m.yaml", &manifests_text(gw, origin, "/a"));
    let log_path = dir.path().join("proxy.log");
    let _proxy = Proc::spawn(
        "proxy",
        proxy_command(Some(&log_path))
            .arg("--manifests")
            .arg(&manifests)
            .args(["--workers", "1", "--admin", &format!("127.0.0.1:{admin}")]),
    );
    let c = client();
    let url = format!("http://127.0.0.1:{gw}/a");
    wait_serving(&c, &url, Duration::from_secs(15), "the standalone gateway").await;

    let (moved, away) = (manifests.join("m.yaml"), dir.path().join("m.yaml"));
    std::fs::rename(&moved, &away).unwrap();
    let refused = format!("{}:0: no *.yaml or *.yml files found", manifests.display());
    eventually(
        Duration::from_secs(10),
        "the emptied directory to be refused",
        || {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let seen = log.contains("keeping the previous configuration") && log.contains(&refused);
            async move { seen.then_some(()) }
        },
    )
    .await;
    assert_eq!(get(&c, &url, &[]).await.status, 200, "the listener stays");

    std::fs::rename(&away, &moved).unwrap();
    eventually(
        Duration::from_secs(10),
        "the file coming back to apply",
        || {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            async move { log.contains("manifests changed: applied").then_some(()) }
        },
    )
    .await;
    assert_eq!(get(&c, &url, &[]).await.status, 200);
}

#[test]
fn standalone_reports_invalid_manifests_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "m.yaml", "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {listeners: []}\n");
    let out = Command::new(bin("meshwork-proxy"))
        .arg("--manifests")
        .arg(dir.path())
        .args(["--admin", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("m.yaml:4: spec.listeners: expected at least one listener"),
        "{err}"
    );
}

/// Compiled filters are kept on disk: a restarted proxy loads them from the cache instead of compiling again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_wasm_modules_survive_a_restart() {
    let plugins = plugins_dir();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let (gw, origin) = (free_port(), free_port());
    let _origin = demo_echo(origin);
    let manifests = dir.path().join("m");
    std::fs::create_dir(&manifests).unwrap();
    write(
        &manifests,
        "m.yaml",
        &format!(
            "{}---
apiVersion: meshwork.dev/v1alpha1
kind: WasmPlugin
metadata: {{name: policy}}
spec:
  url: file://{}/meshwork_filter_header_policy.wasm
  targetRefs: [{{kind: Gateway, name: edge}}]
  pluginConfig: {{request: {{set: {{x-cached: 'yes'}}}}}}
",
            manifests_text(gw, origin, "/"),
            plugins.display()
        ),
    );
    let c = client();
    for (run, (hits, misses)) in [(1, (0, 1)), (2, (1, 0))] {
        let admin = free_port();
        let mut proxy = Proc::spawn(
            "proxy",
            proxy_command(None)
                .arg("--manifests")
                .arg(&manifests)
                .arg("--wasm-cache-dir")
                .arg(&cache)
                .args(["--workers", "1", "--admin", &format!("127.0.0.1:{admin}")]),
        );
        let r = wait_serving(
            &c,
            &format!("http://127.0.0.1:{gw}/x"),
            Duration::from_secs(30),
            "the gateway with its filter",
        )
        .await;
        assert_eq!(r.json()["headers"]["x-cached"], "yes");
        let metrics = metrics(&c, &format!("127.0.0.1:{admin}")).await;
        assert!(
            metrics.contains(&format!(
                "meshwork_wasm_compile_cache_total{{result=\"hit\"}} {hits}"
            )),
            "run {run}:\n{metrics}"
        );
        assert!(
            metrics.contains(&format!(
                "meshwork_wasm_compile_cache_total{{result=\"miss\"}} {misses}"
            )),
            "run {run}:\n{metrics}"
        );
        proxy.stop(Duration::from_secs(10));
    }
}

/// `/config_dump` shows what a Wasm plugin is configured with only as digests: a password in `vmConfig.env` or a
/// key in `pluginConfig` is not readable there (issue 11, item 12).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dump_shows_no_plugin_secrets() {
    let plugins = plugins_dir();
    let dir = tempfile::tempdir().unwrap();
    let (gw, origin, admin) = (free_port(), free_port(), free_port());
    let _origin = demo_echo(origin);
    write(
        dir.path(),
        "m.yaml",
        &format!(
            "{}---
apiVersion: meshwork.dev/v1alpha1
kind: WasmPlugin
metadata: {{name: policy}}
spec:
  url: file://{}/meshwork_filter_header_policy.wasm
  targetRefs: [{{kind: Gateway, name: edge}}]
  pluginConfig: {{request: {{set: {{x-api-key: 'key-0f9e8d7c'}}}}}}
  vmConfig: {{env: [{{name: DB_PASSWORD, value: 'hunter2-secret'}}]}}
",
            manifests_text(gw, origin, "/"),
            plugins.display()
        ),
    );
    let mut proxy = Proc::spawn(
        "proxy",
        proxy_command(None)
            .arg("--manifests")
            .arg(dir.path())
            .args(["--workers", "1", "--admin", &format!("127.0.0.1:{admin}")]),
    );
    let c = client();
    let url = format!("http://127.0.0.1:{gw}/x");
    let r = wait_serving(
        &c,
        &url,
        Duration::from_secs(30),
        "the gateway with its filter",
    )
    .await;
    assert_eq!(
        r.json()["headers"]["x-api-key"],
        "key-0f9e8d7c",
        "the filter still gets its configuration"
    );
    let dump = get(&c, &format!("http://127.0.0.1:{admin}/config_dump"), &[])
        .await
        .text();
    assert!(
        !dump.contains("key-0f9e8d7c") && !dump.contains("hunter2-secret"),
        "{dump}"
    );
    assert!(
        dump.contains("DB_PASSWORD") && dump.contains("sha256:"),
        "{dump}"
    );
    proxy.stop(Duration::from_secs(10));
}

/// `--log-format json`: the proxy's own log is one JSON object per line (what log collectors parse), its events
/// with their level and message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_logs_json_lines_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let (gw, origin, admin) = (free_port(), free_port(), free_port());
    write(dir.path(), "m.yaml", &manifests(gw, origin, "/a"));
    let log_path = dir.path().join("proxy.log");
    let _proxy = Proc::spawn(
        "proxy",
        proxy_command(Some(&log_path))
            .env("MESHWORK_LOG", "info")
            .arg("--manifests")
            .arg(dir.path())
            .args(["--log-format", "json", "--workers", "1"])
            .args(["--admin", &format!("127.0.0.1:{admin}")]),
    );
    let lines = eventually(
        Duration::from_secs(15),
        "the proxy's start-up line",
        || async {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            text.contains("meshwork-proxy started").then_some(text)
        },
    )
    .await;
    for line in lines.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
    }
    let started = lines
        .lines()
        .find(|l| l.contains("meshwork-proxy started"))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(started).unwrap();
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["fields"]["message"], "meshwork-proxy started");
}
