//! Traces (issue 13), end to end: `meshwork up` runs a gateway, a frontend and a backend (each app behind its
//! sidecar), and the proxies send their spans to a real OTLP receiver run by the test (OTLP/gRPC: the
//! collector's TraceService from opentelemetry-proto; OTLP/HTTP: protobuf POSTs to /v1/traces). Checked: one
//! trace across every hop with the right parent links, the context formats, sampling, one client span per
//! attempt, filter timings, a collector that is down or slow, and a live change.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;

/// A span as received, with its proxy's `service.name`.
#[derive(Clone, Debug)]
struct Got {
    service: String,
    span: opentelemetry_proto::tonic::trace::v1::Span,
}

impl Got {
    fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
    fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }
    fn parent(&self) -> String {
        hex(&self.span.parent_span_id)
    }
    fn kind(&self) -> SpanKind {
        SpanKind::try_from(self.span.kind).unwrap_or(SpanKind::Unspecified)
    }
    fn attr(&self, key: &str) -> Option<String> {
        value(&self.span.attributes, key)
    }
}

fn value(attrs: &[KeyValue], key: &str) -> Option<String> {
    let v = attrs
        .iter()
        .find(|a| a.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(match v {
        AnyValue::StringValue(s) => s.clone(),
        AnyValue::IntValue(i) => i.to_string(),
        AnyValue::BoolValue(b) => b.to_string(),
        AnyValue::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The test's collector: keeps every span it is sent; `delay` makes it slow to answer.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Got>>>,
    delay: Duration,
}

impl Collector {
    fn keep(&self, req: ExportTraceServiceRequest) {
        let mut spans = self.spans.lock().unwrap();
        for rs in req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| value(&r.attributes, "service.name"))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push(Got {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
    }

    fn of_trace(&self, trace_id: &str) -> Vec<Got> {
        let spans = self.spans.lock().unwrap();
        spans
            .iter()
            .filter(|s| s.trace_id() == trace_id)
            .cloned()
            .collect()
    }

    /// The spans of `trace_id` once there are at least `n` (at most 15 s).
    async fn wait(&self, trace_id: &str, n: usize) -> Vec<Got> {
        eventually(
            Duration::from_secs(15),
            "spans at the collector",
            || async {
                let got = self.of_trace(trace_id);
                (got.len() >= n).then_some(got)
            },
        )
        .await
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        tokio::time::sleep(self.delay).await;
        self.keep(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC receiver on a free port.
async fn grpc_collector(delay: Duration) -> (Collector, SocketAddr) {
    let collector = Collector {
        delay,
        ..Collector::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = TraceServiceServer::new(collector.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (collector, addr)
}

/// An OTLP/HTTP receiver (protobuf bodies POSTed to /v1/traces) on a free port.
async fn http_collector() -> (Collector, SocketAddr) {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let c = collector.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let c = c.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let c = c.clone();
                        async move {
                            let path_ok = req.uri().path() == "/v1/traces";
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let status = match ExportTraceServiceRequest::decode(body) {
                                Ok(r) if path_ok => {
                                    c.keep(r);
                                    200
                                }
                                _ => 400,
                            };
                            let answer = ExportTraceServiceResponse::default().encode_to_vec();
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/x-protobuf")
                                    .body(http_body_util::Full::new(Bytes::from(answer)))
                                    .unwrap(),
                            )
                        }
                    });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    (collector, addr)
}

/// Spans leave each proxy 100 ms after the first of a batch (not OpenTelemetry's default 5 s).
const FAST_EXPORT: [(&str, &str); 1] = [("OTEL_BSP_SCHEDULE_DELAY", "100")];

/// Gateway `edge` (a header filter on it) -> frontend (calls backend through its sidecar) -> backend, with the
/// Mesh's `spec.tracing` set to `tracing`. Extra documents follow.
fn manifests(gw: u16, tracing: &str, extra: &str) -> String {
    let plugins = plugins_dir();
    format!(
        r#"
apiVersion: meshwork.dev/v1alpha1
kind: Mesh
metadata: {{name: mesh}}
spec: {{tracing: {tracing}}}
---
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
  hostnames: [shop]
  rules: [{{backendRefs: [{{name: frontend}}]}}]
---
apiVersion: meshwork.dev/v1alpha1
kind: WasmPlugin
metadata: {{name: stamp}}
spec:
  url: file://{p}/meshwork_filter_header_policy.wasm
  targetRefs: [{{kind: Gateway, name: edge}}]
  pluginConfig: {{request: {{set: {{x-stamped: "yes"}}}}}}
{extra}"#,
        p = plugins.display()
    )
}

/// The `traceparent` the backend app received, as its echo shows it through the frontend.
fn app_traceparent(r: &Resp) -> String {
    r.json()["response"]["headers"]["traceparent"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

async fn send(c: &HttpClient, gw: u16, host: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut all = vec![("host", host)];
    all.extend_from_slice(headers);
    get(c, &format!("http://127.0.0.1:{gw}{path}"), &all).await
}

/// The five spans of one request through gateway -> frontend -> backend, each checked against its parent.
fn check_tree(spans: &[Got], caller_span: &str) {
    let one = |service: &str, kind: SpanKind| -> &Got {
        let found: Vec<&Got> = spans
            .iter()
            .filter(|s| s.service == service && s.kind() == kind)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one {kind:?} span from {service}: {spans:#?}"
        );
        found[0]
    };
    let gw_server = one("edge", SpanKind::Server);
    let gw_client = one("edge", SpanKind::Client);
    let fe_server = one("frontend", SpanKind::Server);
    let fe_client = one("frontend", SpanKind::Client);
    let be_server = one("backend", SpanKind::Server);
    assert_eq!(spans.len(), 5, "{spans:#?}");
    assert_eq!(
        gw_server.parent(),
        caller_span,
        "the gateway continues the caller's span"
    );
    assert_eq!(gw_client.parent(), gw_server.span_id());
    assert_eq!(
        fe_server.parent(),
        gw_client.span_id(),
        "the frontend's sidecar continues the gateway's attempt"
    );
    assert_eq!(
        fe_client.parent(),
        fe_server.span_id(),
        "the app passed its sidecar's context on"
    );
    assert_eq!(be_server.parent(), fe_client.span_id());
    // OpenTelemetry's HTTP attributes, and the mesh's own.
    assert_eq!(
        gw_server.attr("http.request.method").as_deref(),
        Some("GET")
    );
    assert_eq!(
        gw_server.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(gw_server.attr("url.path").as_deref(), Some("/checkout"));
    assert_eq!(gw_server.attr("server.address").as_deref(), Some("shop"));
    assert_eq!(gw_server.attr("meshwork.listener").as_deref(), Some("http"));
    assert!(
        gw_server
            .attr("http.route")
            .is_some_and(|r| r.contains("shop")),
        "{gw_server:?}"
    );
    assert_eq!(gw_client.attr("meshwork.attempt").as_deref(), Some("1"));
    assert_eq!(
        gw_client.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert!(gw_client
        .attr("meshwork.destination_service")
        .is_some_and(|d| d.contains("frontend")));
    assert!(fe_client
        .attr("meshwork.destination_service")
        .is_some_and(|d| d.contains("backend")));
    assert_eq!(
        be_server.attr("meshwork.listener").as_deref(),
        Some("inbound")
    );
    // The gateway's filter ran on the request headers: its name and time are on the gateway's span.
    let filter = gw_server
        .span
        .events
        .iter()
        .find(|e| e.name == "filter")
        .unwrap_or_else(|| panic!("no filter event on the gateway span: {gw_server:#?}"));
    assert!(
        value(&filter.attributes, "meshwork.filter.name").is_some_and(|n| n.contains("stamp")),
        "{filter:?}"
    );
    assert_eq!(
        value(&filter.attributes, "meshwork.filter.callback").as_deref(),
        Some("on_request_headers")
    );
    assert!(value(&filter.attributes, "meshwork.filter.duration_ns")
        .is_some_and(|d| d.parse::<u64>().unwrap() > 0));
    // Each proxy's span lies within its parent's time.
    assert!(gw_server.span.start_time_unix_nano <= gw_client.span.start_time_unix_nano);
    assert!(gw_client.span.end_time_unix_nano <= gw_server.span.end_time_unix_nano);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_one_trace_across_gateway_frontend_and_backend_over_otlp_grpc() {
    let (collector, addr) = grpc_collector(Duration::ZERO).await;
    let tracing = format!("{{endpoint: \"http://{addr}\", protocol: grpc}}");
    let mesh = Mesh::start_with_env(&[], &FAST_EXPORT, |gw| manifests(gw, &tracing, "")).await;
    let c = client();
    let traceparent = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let r = send(
        &c,
        mesh.gw,
        "shop",
        "/checkout",
        &[("traceparent", &traceparent)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The backend app got the trace, as the child of its sidecar's span.
    let seen = &r.json()["response"]["headers"];
    let got = seen["traceparent"].as_str().unwrap_or_default().to_string();
    assert!(
        got.starts_with(&format!("00-{TRACE}-")) && got.ends_with("-01"),
        "{seen}"
    );
    let spans = collector.wait(TRACE, 5).await;
    check_tree(&spans, CALLER_SPAN);
    let be_server = spans.iter().find(|s| s.service == "backend").unwrap();
    assert_eq!(
        got,
        format!("00-{TRACE}-{}-01", be_server.span_id()),
        "the app's parent is its sidecar's span"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_context_gives_the_same_tree_over_otlp_http() {
    let (collector, addr) = http_collector().await;
    let tracing = format!("{{endpoint: \"http://{addr}/v1/traces\", protocol: http/protobuf, propagators: [tracecontext, b3multi]}}");
    let mesh = Mesh::start_with_env(&[], &FAST_EXPORT, |gw| manifests(gw, &tracing, "")).await;
    let c = client();
    let b3 = format!("{TRACE}-{CALLER_SPAN}-1");
    let r = send(&c, mesh.gw, "shop", "/checkout", &[("b3", &b3)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = &r.json()["response"]["headers"];
    assert_eq!(
        seen["x-b3-traceid"], TRACE,
        "b3multi is written as configured: {seen}"
    );
    assert_eq!(seen["x-b3-sampled"], "1");
    assert!(
        seen.get("b3").is_none(),
        "the single-header form, not configured, is not passed on: {seen}"
    );
    check_tree(&collector.wait(TRACE, 5).await, CALLER_SPAN);
    // A 64-bit B3 multi-header id works too.
    let r = send(
        &c,
        mesh.gw,
        "shop",
        "/checkout",
        &[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", CALLER_SPAN),
            ("x-b3-sampled", "1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    check_tree(
        &collector.wait("0000000000000000a3ce929d0e0e4736", 5).await,
        CALLER_SPAN,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsampled_request_exports_nothing_but_still_carries_its_context() {
    let (collector, addr) = grpc_collector(Duration::ZERO).await;
    // New traces are never sampled here; a caller's decision is followed both ways.
    let tracing = format!("{{endpoint: \"http://{addr}\", protocol: grpc, sampling: 0}}");
    let mesh = Mesh::start_with_env(&[], &FAST_EXPORT, |gw| manifests(gw, &tracing, "")).await;
    let c = client();
    let unsampled = "11111111111111111111111111111111";
    let r = send(
        &c,
        mesh.gw,
        "shop",
        "/checkout",
        &[("traceparent", &format!("00-{unsampled}-{CALLER_SPAN}-00"))],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = app_traceparent(&r);
    assert!(
        seen.starts_with(&format!("00-{unsampled}-")) && seen.ends_with("-00"),
        "{seen}"
    );
    let fresh = send(&c, mesh.gw, "shop", "/checkout", &[]).await;
    assert_eq!(fresh.status, 200);
    let new_trace = app_traceparent(&fresh);
    assert!(
        new_trace.starts_with("00-") && new_trace.ends_with("-00"),
        "a new trace, not sampled: {new_trace}"
    );
    // A sampled request afterwards arrives: had the others been exported, they would be there by then.
    let r = send(
        &c,
        mesh.gw,
        "shop",
        "/checkout",
        &[("traceparent", &format!("00-{TRACE}-{CALLER_SPAN}-01"))],
    )
    .await;
    assert_eq!(r.status, 200);
    collector.wait(TRACE, 5).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = collector.spans.lock().unwrap().clone();
    assert!(
        all.iter().all(|s| s.trace_id() == TRACE),
        "only the sampled trace was exported: {all:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_retry_attempt_is_its_own_client_span_with_a_retry_event() {
    let (collector, addr) = grpc_collector(Duration::ZERO).await;
    let tracing = format!("{{endpoint: \"http://{addr}\", protocol: grpc}}");
    // The backend answers 503 to /status/503; the gateway's route to it retries twice.
    let extra = r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: flaky}
spec:
  parentRefs: [{name: edge}]
  hostnames: [flaky]
  rules: [{backendRefs: [{name: backend}]}]
---
apiVersion: meshwork.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: retry}
spec:
  targetRef: {kind: Service, name: backend}
  retry: {attempts: 2, on: [5xx], backoff: {base: 1ms, max: 2ms}}
"#;
    let mesh = Mesh::start_with_env(&[], &FAST_EXPORT, |gw| manifests(gw, &tracing, extra)).await;
    let c = client();
    let r = send(
        &c,
        mesh.gw,
        "flaky",
        "/status/503",
        &[("traceparent", &format!("00-{TRACE}-{CALLER_SPAN}-01"))],
    )
    .await;
    assert_eq!(r.status, 503);
    // Gateway: a server span and three attempts; backend: three server spans.
    let spans = collector.wait(TRACE, 7).await;
    let mut attempts: Vec<&Got> = spans
        .iter()
        .filter(|s| s.service == "edge" && s.kind() == SpanKind::Client)
        .collect();
    attempts.sort_by_key(|s| s.attr("meshwork.attempt"));
    let numbers: Vec<String> = attempts
        .iter()
        .filter_map(|s| s.attr("meshwork.attempt"))
        .collect();
    assert_eq!(numbers, ["1", "2", "3"], "{spans:#?}");
    assert_eq!(
        attempts[1].attr("http.request.resend_count").as_deref(),
        Some("1")
    );
    assert!(attempts
        .iter()
        .all(|a| a.attr("http.response.status_code").as_deref() == Some("503")));
    let server = spans
        .iter()
        .find(|s| s.service == "edge" && s.kind() == SpanKind::Server)
        .unwrap();
    let retries = server
        .span
        .events
        .iter()
        .filter(|e| e.name == "retry")
        .count();
    assert_eq!(retries, 2, "{server:#?}");
    // Each attempt is the parent of the backend span it caused.
    let parents: HashMap<String, usize> =
        spans
            .iter()
            .filter(|s| s.service == "backend")
            .fold(HashMap::new(), |mut m, s| {
                *m.entry(s.parent()).or_default() += 1;
                m
            });
    for a in &attempts {
        assert_eq!(parents.get(&a.span_id()), Some(&1), "{spans:#?}");
    }
}

/// `meshwork_trace_spans_total{result}` on the gateway's admin `/metrics`.
async fn span_counter(c: &HttpClient, mesh: &Mesh, result: &str) -> u64 {
    let text = metrics(c, &mesh.admin("gateway-edge")).await;
    let key = format!("meshwork_trace_spans_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_changes_no_request_and_the_spans_are_counted_as_failed() {
    let dead = free_port();
    let tracing = format!("{{endpoint: \"http://127.0.0.1:{dead}\", protocol: grpc}}");
    let mesh = Mesh::start_with_env(&[], &FAST_EXPORT, |gw| manifests(gw, &tracing, "")).await;
    let c = client();
    for _ in 0..20 {
        let r = send(&c, mesh.gw, "shop", "/checkout", &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    eventually(Duration::from_secs(20), "failed spans counted", || async {
        (span_counter(&c, &mesh, "failed").await >= 20).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_collector_fills_the_queue_and_spans_are_dropped_not_requests() {
    let (collector, addr) = grpc_collector(Duration::from_secs(3)).await;
    let tracing = format!("{{endpoint: \"http://{addr}\", protocol: grpc}}");
    // A queue of 4 requests' spans and one span per batch: the exporter waits on the collector, the queue fills.
    let env = [
        ("OTEL_BSP_SCHEDULE_DELAY", "10"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "4"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1"),
    ];
    let mesh = Mesh::start_with_env(&[], &env, |gw| manifests(gw, &tracing, "")).await;
    let c = client();
    for _ in 0..30 {
        let r = send(&c, mesh.gw, "shop", "/checkout", &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert!(
        span_counter(&c, &mesh, "dropped").await > 0,
        "the gateway dropped spans"
    );
    // The collector still gets what was sent (slowly).
    eventually(
        Duration::from_secs(20),
        "spans at the slow collector",
        || async { (!collector.spans.lock().unwrap().is_empty()).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracing_follows_the_mesh_live_and_the_environment_alone_can_turn_it_on() {
    let (collector, addr) = grpc_collector(Duration::ZERO).await;
    let endpoint = format!("http://{addr}");
    // The environment names the collector; the Mesh first turns tracing off.
    let env = [
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
    ];
    let mesh = Mesh::start_with_env(&[], &env, |gw| manifests(gw, "{enabled: false}", "")).await;
    let c = client();
    let first = "22222222222222222222222222222222";
    let r = send(
        &c,
        mesh.gw,
        "shop",
        "/checkout",
        &[("traceparent", &format!("00-{first}-{CALLER_SPAN}-01"))],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = app_traceparent(&r);
    assert!(
        seen.contains(CALLER_SPAN),
        "tracing off: the context passes untouched ({seen})"
    );
    // The Mesh's block goes: the environment alone decides, and it names a collector.
    write(&mesh.dir, "mesh.yaml", &manifests(mesh.gw, "null", ""));
    // Each proxy applies the change on its own: a request whose five spans all arrive proves all three follow it
    // (each try its own trace, so spans of a request that crossed a proxy not yet changed do not add up).
    let mut n = 0u32;
    eventually(
        Duration::from_secs(30),
        "a whole trace after the change",
        || {
            n += 1;
            let trace = format!("{n:032x}");
            let (c, collector, gw) = (c.clone(), collector.clone(), mesh.gw);
            async move {
                let tp = format!("00-{trace}-{CALLER_SPAN}-01");
                let r = send(&c, gw, "shop", "/checkout", &[("traceparent", &tp)]).await;
                assert_eq!(r.status, 200);
                tokio::time::sleep(Duration::from_millis(400)).await;
                (collector.of_trace(&trace).len() == 5).then_some(())
            }
        },
    )
    .await;
    assert!(
        collector.of_trace(first).is_empty(),
        "nothing was exported while off"
    );
}
