//! Golden metrics (issue 13): a known mix of requests through gateway -> backend sidecar -> app, one of them
//! retried, gives exact request counts per label set at both proxies (requests served, and attempts made upstream
//! one per retry), with histograms whose buckets agree with their counts.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;

use common::*;

/// `name{labels} value` lines of one family, by their label text.
fn series(text: &str, name: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|rest| {
            let (labels, value) = rest.rsplit_once("} ")?;
            Some((labels.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The requests counted by `http_server_request_duration_seconds_count` at `listener` with this method and
/// status (0 if none).
fn count(text: &str, listener: &str, method: &str, status: u16) -> f64 {
    series(text, "http_server_request_duration_seconds_count")
        .into_iter()
        .filter(|(l, _)| {
            l.contains(&format!("listener=\"{listener}\""))
                && l.contains(&format!("http_request_method=\"{method}\""))
                && l.contains(&format!("http_response_status_code=\"{status}\""))
        })
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_mix_of_requests_is_counted_exactly_at_every_hop() {
    let mesh = Mesh::start(|gw| {
        format!(
            "{}---
apiVersion: meshwork.dev/v1alpha1
kind: TrafficPolicy
metadata: {{name: backend}}
spec:
  targetRef: {{kind: Service, name: backend}}
  retry: {{attempts: 2, on: [5xx], backoff: {{base: 5ms, max: 10ms}}}}
",
            gateway_to_backend(gw)
        )
    })
    .await;
    let c = client();
    let (gw_admin, backend_admin) = (mesh.admin("gateway-edge"), mesh.admin("backend-0"));
    let gw_before = metrics(&c, &gw_admin).await;
    let be_before = metrics(&c, &backend_admin).await;
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", mesh.gw);
    for _ in 0..3 {
        assert_eq!(
            get(&c, &url("/ok"), &[("host", "backend")]).await.status,
            200
        );
    }
    for _ in 0..2 {
        assert_eq!(
            get(&c, &url("/status/404"), &[("host", "backend")])
                .await
                .status,
            404
        );
    }
    // Retried twice (a GET answered 503): one request served, three attempts.
    let retried = get(&c, &url("/status/503"), &[("host", "backend")]).await;
    assert_eq!(retried.status, 503);
    let posted = send(
        &c,
        "POST",
        &url("/status/503"),
        &[("host", "backend")],
        "x".repeat(100).into(),
    )
    .await
    .unwrap();
    assert_eq!(posted.status, 503);
    let gw = metrics(&c, &gw_admin).await;
    let be = metrics(&c, &backend_admin).await;

    for (what, before, after, listener) in [
        ("gateway", &gw_before, &gw, "http"),
        ("backend sidecar", &be_before, &be, "inbound"),
    ] {
        let retried = if listener == "http" { 1.0 } else { 3.0 };
        for (method, status, n) in [
            ("GET", 200, 3.0),
            ("GET", 404, 2.0),
            ("POST", 503, 1.0),
            ("GET", 503, retried),
        ] {
            let seen =
                count(after, listener, method, status) - count(before, listener, method, status);
            assert_eq!(
                seen, n,
                "{what}: {method} {status} counted {seen} times, not {n}:\n{after}"
            );
        }
    }
    // The gateway's attempts upstream: one each, three for the retried request.
    for (method, status, n) in [
        ("GET", 200, 3.0),
        ("GET", 404, 2.0),
        ("POST", 503, 1.0),
        ("GET", 503, 3.0),
    ] {
        let attempts = |text: &str| -> f64 {
            let labels = format!("destination_service=\"service/default/backend\",http_request_method=\"{method}\",http_response_status_code=\"{status}\",error_type=\"\"");
            series(text, "http_client_request_duration_seconds_count")
                .get(&labels)
                .copied()
                .unwrap_or(0.0)
        };
        let seen = attempts(&gw) - attempts(&gw_before);
        assert_eq!(
            seen, n,
            "gateway attempts {method} {status}: {seen}, not {n}:\n{gw}"
        );
    }
    // The gateway knows the route and the service it sent them to.
    let gw_series = series(&gw, "http_server_request_duration_seconds_count");
    assert!(
        gw_series.keys().any(
            |l| l.contains("destination_service=\"service/default/backend\"")
                && l.contains("http_response_status_code=\"200\"")
        ),
        "{gw_series:?}"
    );
    // Each histogram's +Inf bucket is its count; the response sizes were counted for the same requests.
    for text in [&gw, &be] {
        let counts = series(text, "http_server_request_duration_seconds_count");
        let inf: BTreeMap<String, f64> =
            series(text, "http_server_request_duration_seconds_bucket")
                .into_iter()
                .filter_map(|(l, v)| Some((l.strip_prefix("le=\"+Inf\",")?.to_string(), v)))
                .collect();
        assert_eq!(counts, inf, "{text}");
        let sizes = series(text, "http_server_response_body_size_bytes_count");
        assert_eq!(counts, sizes, "{text}");
        assert!(
            text.contains("# TYPE http_server_request_duration_seconds histogram"),
            "{text}"
        );
        assert!(text.contains("http_server_active_requests{"), "{text}");
        // Request bodies: every request here declared its size (none, or a Content-Length), so the request size
        // histogram counts what the duration histogram counts, and the POST's 100 bytes are in its sum.
        let request_sizes = series(text, "http_server_request_body_size_bytes_count");
        assert_eq!(counts, request_sizes, "{text}");
        let posted_sum: f64 = series(text, "http_server_request_body_size_bytes_sum")
            .into_iter()
            .filter(|(l, _)| l.contains("http_request_method=\"POST\""))
            .map(|(_, v)| v)
            .sum();
        assert_eq!(posted_sum, 100.0, "{text}");
    }
    // Connections: the gateway's listener accepted some and counts those still open (the client's pool).
    let accepted: f64 = series(&gw, "meshwork_listener_connections_accepted_total")
        .into_iter()
        .filter(|(l, _)| l.contains("listener=\"http\""))
        .map(|(_, v)| v)
        .sum();
    assert!(accepted >= 1.0, "{gw}");
    assert!(
        gw.contains("# TYPE meshwork_listener_connections gauge"),
        "{gw}"
    );
    assert!(
        gw.contains("# TYPE meshwork_listener_connections_accepted_total counter"),
        "{gw}"
    );
    // The resilience counters are families of the same registry: the two retries of the GET, and the seven
    // requests to the service before retries.
    let cluster = "cluster=\"service/default/backend\"";
    for (family, n) in [
        ("meshwork_retries_total", 2.0),
        ("meshwork_upstream_requests_total", 7.0),
    ] {
        let value = |text: &str| series(text, family).get(cluster).copied().unwrap_or(0.0);
        assert_eq!(value(&gw) - value(&gw_before), n, "{family}:\n{gw}");
        assert!(gw.contains(&format!("# TYPE {family} counter\n")), "{gw}");
    }
    for text in [&gw, &be] {
        every_sample_has_one_declared_family(text);
    }
}

/// The exposition is well formed: each family is declared (`# TYPE`) once, and every sample belongs to a family
/// declared before it (its name, or its name less a histogram's suffix).
fn every_sample_has_one_declared_family(text: &str) {
    let mut declared: Vec<&str> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap_or_default();
            assert!(!declared.contains(&name), "{name} declared twice:\n{text}");
            declared.push(name);
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|f| declared.contains(f)))
            .unwrap_or(name);
        assert!(
            declared.contains(&family),
            "{name} is not in a declared family:\n{text}"
        );
    }
}
