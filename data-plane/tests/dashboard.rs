//! The built-in dashboard of `meshwork up` (issue 13), loaded in a real browser (Debian's headless Chromium) while
//! traffic flows through gateway -> frontend -> backend: the topology names the services and its numbers match
//! the proxies' own metrics, a trace sent with a known `traceparent` shows as a waterfall with the gateway
//! filter's timing, a search by request id finds it, and the proxies' configuration state is there. A screenshot
//! is kept as a test artifact. Its OTLP receiver is also sent what is not OTLP.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;

fn manifests(gw: u16) -> String {
    let plugins = plugins_dir();
    format!(
        r#"
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {{name: frontend}}
spec: {{service: frontend, command: meshwork-demo frontend --upstream backend}}
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
metadata: {{name: shop}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{backendRefs: [{{name: frontend}}]}}]
---
apiVersion: meshwork.dev/v1alpha1
kind: WasmPlugin
metadata: {{name: stamp}}
spec:
  url: file://{p}/meshwork_filter_header_policy.wasm
  targetRefs: [{{kind: Gateway, name: edge}}]
  pluginConfig: {{request: {{set: {{x-stamped: "yes"}}}}}}
"#,
        p = plugins.display()
    )
}

/// The page's DOM after its scripts ran, as headless Chromium renders it.
fn browse(url: &str, screenshot: Option<&PathBuf>) -> String {
    let chromium = prereqs::chromium();
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .arg("--virtual-time-budget=3000")
    .arg("--window-size=1280,1400");
    match screenshot {
        Some(path) => cmd.arg(format!("--screenshot={}", path.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd.arg(url).output().unwrap();
    assert!(
        out.status.success(),
        "chromium failed on {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The page at `url` as the browser renders it (on a blocking thread: Chromium is a child process).
async fn page(url: String) -> String {
    tokio::task::spawn_blocking(move || browse(&url, None))
        .await
        .unwrap()
}

/// Requests the gateway's metrics count for the frontend (all statuses).
fn gateway_count(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("http_server_request_duration_seconds_count{"))
        .filter(|l| l.contains("destination_service=\"service/default/frontend\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The `requests` cell of the edge row `from` -> `to` in the page.
fn edge_total(dom: &str, from: &str, to: &str) -> Option<u64> {
    let row = format!("data-from=\"{from}\" data-to=\"{to}\"");
    let at = dom.find(&row)?;
    let cell = &dom[at..];
    let start = cell.find("class=\"num total\">")? + "class=\"num total\">".len();
    cell[start..].split('<').next()?.trim().parse().ok()
}

/// The `req/s` cell of the edge row `from` -> `to`.
fn edge_rate(dom: &str, from: &str, to: &str) -> Option<f64> {
    let row = format!("data-from=\"{from}\" data-to=\"{to}\"");
    let cell = &dom[dom.find(&row)?..];
    let after_total = &cell[cell.find("class=\"num total\">")?..];
    let start = after_total.find("class=\"num\">")? + "class=\"num\">".len();
    after_total[start..].split('<').next()?.trim().parse().ok()
}

const TRACE: &str = "5bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_topology_traces_and_proxies_in_a_browser() {
    let mesh = Mesh::start(manifests).await;
    let url = mesh.dashboard();
    let c = client();
    // Served before any traffic and before any script: the services are named.
    let first = get(&c, &format!("{url}/"), &[]).await;
    assert_eq!(first.status, 200);
    for service in ["edge", "frontend", "backend"] {
        assert!(
            first.text().contains(&format!(">{service}</text>")),
            "{service} not in the first page"
        );
    }
    // Traffic: 20 answered, 3 failing at the backend (503 through the frontend), one with a known trace.
    for _ in 0..20 {
        assert_eq!(
            get(&c, &format!("{}/ok", mesh.base()), &[]).await.status,
            200
        );
    }
    for _ in 0..3 {
        assert_eq!(
            get(&c, &format!("{}/status/503", mesh.base()), &[])
                .await
                .status,
            503
        );
    }
    let traceparent = format!("00-{TRACE}-00f067aa0ba902b7-01");
    let traced = get(
        &c,
        &format!("{}/checkout", mesh.base()),
        &[
            ("traceparent", &traceparent),
            ("x-request-id", "dash-req-1"),
        ],
    )
    .await;
    assert_eq!(traced.status, 200);
    // While traffic flows, the browser's page shows the edge busy: a rate above zero (read from the proxies'
    // metrics every 2 s).
    let flowing = Load::start(format!("{}/ok", mesh.base()), 2);
    eventually(
        Duration::from_secs(20),
        "a live rate on the edge while traffic flows",
        || async {
            let dom = page(format!("{url}/")).await;
            (edge_rate(&dom, "edge", "frontend").is_some_and(|r| r > 0.0)).then_some(())
        },
    )
    .await;
    let during = flowing
        .finish_without_failures("the dashboard's page loads")
        .await;
    // Once it stops, the page's edge total equals what the gateway's own metrics count.
    let metrics_text = metrics(&c, &mesh.admin("gateway-edge")).await;
    let counted = gateway_count(&metrics_text);
    assert_eq!(counted, 24 + during, "{metrics_text}");
    let dom = eventually(
        Duration::from_secs(20),
        "the topology to show every request",
        || async {
            let dom = page(format!("{url}/")).await;
            (edge_total(&dom, "edge", "frontend") == Some(counted)).then_some(dom)
        },
    )
    .await;
    assert_eq!(
        edge_total(&dom, "frontend", "backend"),
        Some(counted),
        "the frontend called the backend for each"
    );
    let svg = &dom[dom.find("<svg id=\"topology\"").unwrap()..];
    for service in ["edge", "frontend", "backend"] {
        assert!(
            svg.contains(&format!(">{service}</text>")),
            "{service} not in the topology"
        );
    }
    assert!(
        dom.contains("gateway-edge") && dom.contains("backend-0") && dom.contains("frontend-0"),
        "proxies listed"
    );
    // The traced request: listed, found by its request id, and drawn as a waterfall with the filter's timing.
    let found = eventually(
        Duration::from_secs(20),
        "the trace in a search by request id",
        || async {
            let dom = page(format!("{url}/?q=dash-req-1")).await;
            dom.contains(&format!("/trace/{TRACE}")).then_some(dom)
        },
    )
    .await;
    assert!(
        !found.contains("/status/503"),
        "the search shows only the match"
    );
    let waterfall = eventually(
        Duration::from_secs(20),
        "all five spans of the trace",
        || async {
            let dom = page(format!("{url}/trace/{TRACE}")).await;
            (dom.matches("class=\"span\"").count() == 5).then_some(dom)
        },
    )
    .await;
    assert!(
        waterfall.contains("data-event=\"filter\""),
        "the gateway filter's timing is shown"
    );
    assert!(
        waterfall.contains("stamp") && waterfall.contains("on_request_headers"),
        "{waterfall}"
    );
    for service in ["edge", "frontend", "backend"] {
        assert!(
            waterfall.contains(&format!("<td>{service}</td>")),
            "{service} span in the waterfall"
        );
    }
    // Screenshots of the overview and the waterfall, kept beside the test binaries.
    for (page, name) in [
        (String::from("/"), "dashboard.png"),
        (format!("/trace/{TRACE}"), "dashboard-trace.png"),
    ] {
        let shot = bin("meshwork")
            .parent()
            .unwrap()
            .join("test-artifacts")
            .join(name);
        std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(&shot);
        let (url, shot2) = (format!("{url}{page}"), shot.clone());
        tokio::task::spawn_blocking(move || browse(&url, Some(&shot2)))
            .await
            .unwrap();
        let png = std::fs::read(&shot).unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "a real screenshot at {}",
            shot.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_receiver_refuses_what_is_not_otlp_and_keeps_serving() {
    let mesh = Mesh::start(gateway_to_backend).await;
    let url = mesh.dashboard();
    let c = client();
    let post = |body: Vec<u8>| {
        let c = c.clone();
        let url = format!("{url}/v1/traces");
        async move {
            let req = http::Request::post(url)
                .header("content-type", "application/x-protobuf")
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .unwrap();
            c.request(req).await.expect("an answer").status().as_u16()
        }
    };
    assert_eq!(post(b"\xff\xff\xff not protobuf".to_vec()).await, 400);
    // What a web page could post cross-site (no preflight): refused by its content type.
    let form = http::Request::post(format!("{url}/v1/traces"))
        .header("content-type", "text/plain")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"x")))
        .unwrap();
    assert_eq!(c.request(form).await.unwrap().status().as_u16(), 415);
    // A page reached through another host name (DNS rebinding) is refused.
    let rebound = get(&c, &format!("{url}/"), &[("host", "attacker.example")]).await;
    assert_eq!(rebound.status, 403);
    // On a connection of its own: the dashboard closes it without reading the rest of the body, and its answer can
    // race the client's sending (then the client sees the connection closed: 0).
    let oversized = {
        let req = http::Request::post(format!("{url}/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                vec![0u8; 3 * 1024 * 1024],
            )))
            .unwrap();
        match client().request(req).await {
            Ok(r) => {
                let closes = r.headers().get("connection").is_some_and(|v| v == "close");
                assert!(closes, "a 413 says the connection closes");
                r.status().as_u16()
            }
            Err(_) => 0,
        }
    };
    assert!(
        matches!(oversized, 413 | 0),
        "an oversized export is refused, got {oversized}"
    );
    // An empty export is a valid one.
    assert_eq!(post(Vec::new()).await, 200);
    let page = get(&c, &format!("{url}/"), &[]).await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains(">backend</text>"));
    let missing = get(&c, &format!("{url}/trace/%3Cscript%3E"), &[]).await;
    assert_eq!(missing.status, 404);
    assert!(!missing.text().contains("<script>"), "the id is escaped");
}
