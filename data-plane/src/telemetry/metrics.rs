//! Golden metrics of the requests a proxy serves, per listener, route and destination service: duration (its
//! count is the request rate, its status label the error rate), response body size and requests in flight. Named
//! after the OpenTelemetry HTTP semantic conventions (`http.server.request.duration` is exported as
//! `http_server_request_duration_seconds_bucket/_sum/_count`), kept in a prometheus-client registry.
//!
//! A request is an [`Exchange`] from its arrival; it is recorded once, when its response body has been sent, or
//! when it is dropped (the client went away: status 0 if no response was made). Every label comes from the
//! configuration (listener, route and service names) or is bounded (the method is one of the standard ones or
//! `_OTHER`, the status a number), so the families stay bounded by the configuration.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use bytes::Buf;
use std::net::SocketAddr;
use std::time::SystemTime;

use http::{HeaderValue, Method, Response, Version};
use http_body::{Body, Frame, SizeHint};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use rustc_hash::FxBuildHasher;
use tokio::time::Instant;

use super::access_log::{bounded, AccessLog, AccessLogConfig, Entry};
use super::journal::Journal;
use super::trace::{self, Finished, TraceConfig, Traced, Tracer};
use super::upstream::CallMetrics;

/// The label set of a served request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// A gateway listener's name, or `inbound` / `outbound` on a sidecar.
    pub listener: Arc<str>,
    /// The HTTPRoute (or GRPCRoute) rule the request matched; empty when none did or none applies (inbound).
    pub route: Option<Arc<str>>,
    /// The service the request was sent to; empty when it was answered before that (no route, denied...).
    pub destination_service: Option<Arc<str>>,
    pub http_request_method: &'static str,
    /// 0: the client went away before any response was made.
    pub http_response_status_code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: Arc<str>,
}

/// Histogram buckets in seconds: OpenTelemetry's defaults for `http.server.request.duration` below 10 s, with
/// finer ones under 5 ms, where a mesh hop's latency lives.
pub(super) const DURATION_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 10.0,
];

/// Body size buckets in bytes: powers of 4 from 64 B to 16 MiB.
const SIZE_BUCKETS: [f64; 10] = [
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
];

/// The histograms of one label set.
#[derive(Debug)]
struct Series {
    duration: Histogram,
    response_size: Histogram,
    /// Request bodies whose size was declared (Content-Length, or none at all), as OpenTelemetry's
    /// `http.server.request.body.size` is usually taken.
    request_size: Histogram,
}

/// The served requests' histograms by label set, exported as two families. Not a prometheus-client `Family`
/// per histogram: that is one lookup per family per request, each hashing every label with SipHash (about 2,800
/// instructions each, counted by `bench/instructions.sh`). Here one lookup with FxHash serves both. FxHash is
/// not flood-resistant, and need not be: every label value comes from the configuration or a bounded set.
#[derive(Debug, Default)]
struct Served(RwLock<HashMap<RequestLabels, Series, FxBuildHasher>>);

impl Served {
    fn record(
        &self,
        labels: &RequestLabels,
        seconds: f64,
        response_bytes: u64,
        request_bytes: Option<u64>,
    ) {
        let observe = |s: &Series| {
            s.duration.observe(seconds);
            s.response_size.observe(response_bytes as f64);
            if let Some(n) = request_bytes {
                s.request_size.observe(n as f64);
            }
        };
        if let Some(s) = self
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(labels)
        {
            return observe(s);
        }
        let mut all = self.0.write().unwrap_or_else(PoisonError::into_inner);
        observe(all.entry(labels.clone()).or_insert_with(|| Series {
            duration: Histogram::new(DURATION_BUCKETS),
            response_size: Histogram::new(SIZE_BUCKETS),
            request_size: Histogram::new(SIZE_BUCKETS),
        }));
    }
}

/// One exported family of `Served`: name, help, unit and which histogram of a series.
type Exported = (&'static str, &'static str, Unit, fn(&Series) -> &Histogram);

impl Collector for Served {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let all = self.0.read().unwrap_or_else(PoisonError::into_inner);
        let families: [Exported; 3] = [
            (
                "http_server_request_duration",
                "Duration of requests served, from arrival to the end of the response body",
                Unit::Seconds,
                |s| &s.duration,
            ),
            (
                "http_server_response_body_size",
                "Size of the response bodies sent",
                Unit::Bytes,
                |s| &s.response_size,
            ),
            (
                "http_server_request_body_size",
                "Size of the request bodies received, when declared (Content-Length, or no body)",
                Unit::Bytes,
                |s| &s.request_size,
            ),
        ];
        for (name, help, unit, histogram) in families {
            let mut family =
                encoder.encode_descriptor(name, help, Some(&unit), MetricType::Histogram)?;
            for (labels, series) in all.iter() {
                histogram(series).encode(family.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}

/// The proxy's request metrics, shared by its listeners and read by `/metrics`.
pub struct HttpMetrics {
    connections: Family<ListenerLabels, Gauge>,
    accepted: Family<ListenerLabels, prometheus_client::metrics::counter::Counter>,
    /// Behind a lock so that collectors can be added after start (the Wasm runtime's); scrapes are rare.
    registry: std::sync::Mutex<Registry>,
    served: Arc<Served>,
    active: Family<ListenerLabels, Gauge>,
    /// Where exchanges that were sampled for the access log go when they end.
    pub access_log: Arc<AccessLog>,
    /// Where the spans of traced requests go when they end.
    pub tracer: Arc<Tracer>,
    /// Attempts upstream (recorded by the upstream clients).
    pub calls: Arc<CallMetrics>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpMetrics {
    pub fn new() -> Self {
        let served = Arc::new(Served::default());
        let active = Family::<ListenerLabels, Gauge>::default();
        let access_log = Arc::new(AccessLog::default());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(served.clone()));
        registry.register_collector(Box::new(access_log.clone()));
        let tracer = Arc::new(Tracer::default());
        registry.register_collector(Box::new(tracer.clone()));
        let calls = Arc::new(CallMetrics::default());
        registry.register_collector(Box::new(calls.clone()));
        registry.register(
            "http_server_active_requests",
            "Requests in flight",
            active.clone(),
        );
        let connections = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "meshwork_listener_connections",
            "Client connections open on a listener (accepted and not yet closed)",
            connections.clone(),
        );
        let accepted =
            Family::<ListenerLabels, prometheus_client::metrics::counter::Counter>::default();
        registry.register(
            "meshwork_listener_connections_accepted",
            "Client connections a listener accepted (refusals at its cap not counted)",
            accepted.clone(),
        );
        Self {
            connections,
            accepted,
            registry: std::sync::Mutex::new(registry),
            served,
            active,
            access_log,
            tracer,
            calls,
        }
    }

    /// Adds families read at scrape time (the Wasm filters', made once the runtime exists).
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        self.registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .register_collector(collector);
    }

    /// The metrics of one listener, its in-flight gauge resolved once.
    pub fn listener(&self, name: Arc<str>) -> ListenerMetrics {
        let active = self.active.get_or_create_owned(&ListenerLabels {
            listener: name.clone(),
        });
        let labels = ListenerLabels {
            listener: name.clone(),
        };
        let connections = Connections {
            open: self.connections.get_or_create_owned(&labels),
            accepted: self.accepted.get_or_create_owned(&labels),
        };
        ListenerMetrics(Arc::new(Listener {
            connections,
            served: self.served.clone(),
            access_log: self.access_log.clone(),
            tracer: self.tracer.clone(),
            name,
            active,
        }))
    }

    /// Appends the families in the Prometheus text format (OpenMetrics without its `# EOF`, so that more
    /// families may follow).
    pub fn encode(&self, out: &mut String) {
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
            return;
        }
        // OpenMetrics names a counter family without `_total` in its HELP and TYPE lines; the text format this
        // endpoint is served as (0.0.4) names it as its samples are named, or Prometheus takes them as untyped.
        let mut counters = Vec::new();
        for line in text.lines() {
            if line == "# EOF" {
                continue;
            }
            if let Some(name) = line
                .strip_prefix("# TYPE ")
                .and_then(|l| l.strip_suffix(" counter"))
            {
                counters.push(name.to_string());
            }
        }
        for line in text.lines().filter(|l| *l != "# EOF") {
            let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
                let rest = line.strip_prefix(p)?;
                let name = counters.iter().find(|c| {
                    rest.strip_prefix(c.as_str())
                        .is_some_and(|r| r.starts_with(' '))
                })?;
                Some(format!("{p}{name}_total{}", &rest[name.len()..]))
            });
            out.push_str(renamed.as_deref().unwrap_or(line));
            out.push('\n');
        }
    }
}

struct Listener {
    connections: Connections,
    served: Arc<Served>,
    access_log: Arc<AccessLog>,
    tracer: Arc<Tracer>,
    name: Arc<str>,
    active: Gauge,
}

/// What one listener records into.
pub struct ListenerMetrics(Arc<Listener>);

/// A listener's connection counts, resolved once.
#[derive(Clone, Debug)]
pub struct Connections {
    open: Gauge,
    accepted: prometheus_client::metrics::counter::Counter,
}

/// One open connection, counted until dropped.
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Connections {
    pub fn open(&self) -> OpenConnection {
        self.accepted.inc();
        self.open.inc();
        OpenConnection(self.open.clone())
    }
}

impl ListenerMetrics {
    pub fn connections(&self) -> Connections {
        self.0.connections.clone()
    }

    /// A request has arrived.
    pub fn begin(&self, method: &Method) -> Exchange {
        self.begin_with(method, None)
    }

    /// A request whose body size is declared (`request_bytes`: its Content-Length, or 0 without a body).
    pub fn begin_with(&self, method: &Method, request_bytes: Option<u64>) -> Exchange {
        self.0.active.inc();
        Exchange {
            labels: RequestLabels {
                listener: self.0.name.clone(),
                route: None,
                destination_service: None,
                http_request_method: method_label(method),
                http_response_status_code: 0,
            },
            listener: self.0.clone(),
            start: Instant::now(),
            response_bytes: 0,
            request_bytes,
            flags: NO_FLAGS,
            detail: None,
        }
    }
}

/// The standard methods by name, anything else as `_OTHER` (as the OpenTelemetry conventions say), so that a
/// client inventing methods cannot grow the families.
pub(super) fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

/// A request being served: recorded once, when dropped (by [`Observed`] after the response body, or by the
/// request path if the client went away first).
pub struct Exchange {
    listener: Arc<Listener>,
    labels: RequestLabels,
    start: Instant,
    response_bytes: u64,
    request_bytes: Option<u64>,
    /// Why it ended the way it did (for the access log): `-` unless something went wrong.
    flags: &'static str,
    /// What the access log needs beyond the labels; only for a request sampled for it.
    detail: Option<Box<Detail>>,
}

/// The `response_flags` of an exchange that went as asked.
pub const NO_FLAGS: &str = "-";
/// The client went away before its response had been sent.
pub const CLIENT_GONE: &str = "DC";

/// The access log's view of a request's arrival.
/// What is kept of a request that is logged or traced (most requests are neither: no allocation for them).
struct Detail {
    /// Set when the request is sampled for the access log.
    log: Option<Arc<AccessLogConfig>>,
    start: SystemTime,
    method: Method,
    version: Version,
    authority: Option<String>,
    path: String,
    request_id: Option<String>,
    source: Option<String>,
    downstream: SocketAddr,
    https: bool,
    journal: Arc<Journal>,
}

/// Where a request came from, for its access log line and its spans.
pub struct Arrival<'a> {
    pub parts: &'a http::request::Parts,
    pub downstream: SocketAddr,
    /// The caller, as far as the proxy knows it (see `stack::caller`); made only if needed.
    pub source: &'a dyn Fn() -> Option<String>,
    /// The connection is TLS.
    pub https: bool,
    /// This proxy makes a server span for the request (a gateway, a sidecar's inbound listener).
    pub server_span: bool,
    /// ... and a client span per attempt upstream (a gateway, a sidecar's outbound listener).
    pub client_spans: bool,
}

impl Exchange {
    /// Decides whether the request is logged (the access log's sampling) and traced (the trace context it came
    /// with, else the sampler); keeps what those need.
    pub fn observe(
        &mut self,
        log: Option<&Arc<AccessLogConfig>>,
        tracing: Option<&Arc<TraceConfig>>,
        arrival: &Arrival<'_>,
    ) {
        let log = log.filter(|c| c.sampled()).cloned();
        let trace = tracing.map(|c| Traced::begin(c, &arrival.parts.headers, arrival.server_span));
        if log.is_none() && trace.is_none() {
            return;
        }
        let parts = arrival.parts;
        // An unsampled trace only passes its context on: what the line and the spans say is not kept for it.
        if log.is_none() && trace.as_ref().is_some_and(|t| !t.sampled) {
            self.detail = Some(Box::new(Detail {
                log,
                start: SystemTime::UNIX_EPOCH,
                method: Method::GET,
                version: parts.version,
                authority: None,
                path: String::new(),
                request_id: None,
                source: None,
                downstream: arrival.downstream,
                https: false,
                journal: Arc::new(Journal::new(trace, arrival.client_spans)),
            }));
            return;
        }
        self.detail = Some(Box::new(Detail {
            log,
            start: SystemTime::now() - self.start.elapsed(),
            method: parts.method.clone(),
            version: parts.version,
            authority: parts
                .uri
                .authority()
                .map(|a| a.as_str().as_bytes())
                .or_else(|| {
                    parts
                        .headers
                        .get(http::header::HOST)
                        .map(HeaderValue::as_bytes)
                })
                .map(bounded),
            path: bounded(
                parts
                    .uri
                    .path_and_query()
                    .map_or(b"/", |p| p.as_str().as_bytes()),
            ),
            // The client's, until the proxy forwards the request with one of its own (`request_id`).
            request_id: parts
                .headers
                .get(&crate::filter::headers::X_REQUEST_ID)
                .map(|v| bounded(v.as_bytes())),
            source: (arrival.source)(),
            downstream: arrival.downstream,
            https: arrival.https,
            journal: Arc::new(Journal::new(trace, arrival.client_spans)),
        }));
    }

    /// The request's journal, when it is logged or traced.
    pub fn journal(&self) -> Option<&Arc<Journal>> {
        self.detail.as_ref().map(|d| &d.journal)
    }

    /// The journal, if the request is traced and sampled (what filters time their callbacks into).
    pub fn recording(&self) -> Option<&Arc<Journal>> {
        self.journal().filter(|j| j.recording())
    }

    pub fn request_id(&mut self, headers: &http::HeaderMap) {
        let kept = self
            .detail
            .as_mut()
            .filter(|d| d.log.is_some() || d.journal.recording());
        if let Some(log) = kept {
            log.request_id = headers
                .get(&crate::filter::headers::X_REQUEST_ID)
                .map(|v| bounded(v.as_bytes()));
        }
    }

    /// Why the request ends the way it does, replacing an earlier reason (a filter's answer replaces the reply it
    /// stopped).
    pub fn reflag(&mut self, flags: &'static str) {
        self.flags = flags;
    }

    /// Why the request ends the way it does (the first reason given counts).
    pub fn flag(&mut self, flags: &'static str) {
        if self.flags == NO_FLAGS {
            self.flags = flags;
        }
    }

    /// Where the request was sent: its route (if one matched) and destination service.
    pub fn target(&mut self, route: Option<&Arc<str>>, service: Option<&Arc<str>>) {
        self.labels.route = route.cloned();
        self.labels.destination_service = service.cloned();
    }

    /// The response is made: the exchange ends with its body.
    pub fn respond<B: Body>(mut self, resp: Response<B>) -> Response<Observed<B>> {
        self.labels.http_response_status_code = resp.status().as_u16();
        // Its length, when it is known: hyper drops a body once it has written that much, without polling it to
        // its end. A HEAD answer's body is never sent at all.
        let declared = resp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.trim().parse().ok());
        let expected = match self.labels.http_request_method {
            "HEAD" => Some(0),
            _ => declared.or(resp.body().size_hint().exact()),
        };
        resp.map(|body| Observed {
            empty: body.is_end_stream(),
            expected,
            body,
            exchange: Some(self),
        })
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.listener.active.dec();
        if self.labels.http_response_status_code == 0 {
            self.flag(CLIENT_GONE);
        }
        let elapsed = self.start.elapsed();
        self.listener.served.record(
            &self.labels,
            elapsed.as_secs_f64(),
            self.response_bytes,
            self.request_bytes,
        );
        if let Some(detail) = self.detail.take() {
            self.report(*detail, elapsed);
        }
    }
}

impl Exchange {
    /// A logged or traced request has ended: its line is written (from the borrowed fields), then its spans
    /// take the strings.
    fn report(&self, mut d: Detail, elapsed: std::time::Duration) {
        let listener = &self.listener;
        if let Some(config) = &d.log {
            listener.access_log.submit(&Entry {
                config,
                start: d.start,
                duration: elapsed,
                trace_id: d.journal.trace().map(|t| t.trace_id),
                request_id: d.request_id.as_deref(),
                method: &d.method,
                version: d.version,
                authority: d.authority.as_deref(),
                path: &d.path,
                listener: &self.labels.listener,
                route: self.labels.route.as_deref(),
                destination_service: self.labels.destination_service.as_deref(),
                source: d.source.as_deref(),
                downstream: d.downstream,
                upstream: d.journal.last(),
                attempts: d.journal.attempts(),
                status: self.labels.http_response_status_code,
                bytes_sent: self.response_bytes,
                flags: self.flags,
            });
        }
        let Some(config) = d
            .journal
            .trace()
            .filter(|t| t.sampled)
            .map(|t| t.config.clone())
        else {
            return;
        };
        let finished = Finished {
            method: self.labels.http_request_method,
            path: std::mem::take(&mut d.path),
            authority: d.authority.take(),
            scheme: if d.https { "https" } else { "http" },
            version: d.version,
            listener: &self.labels.listener,
            route: self.labels.route.as_ref(),
            destination: self.labels.destination_service.as_ref(),
            source: d.source.take(),
            downstream: d.downstream,
            request_id: d.request_id.take(),
            status: self.labels.http_response_status_code,
            flags: self.flags,
            start: d.start,
            end: d.start + elapsed,
        };
        listener
            .tracer
            .submit(&config, trace::spans(&d.journal, finished));
    }
}

pub struct Observed<B> {
    body: B,
    exchange: Option<Exchange>,
    /// The body had nothing to send from the start.
    empty: bool,
    /// The bytes it has to send, if known (Content-Length, or the body's exact size).
    expected: Option<u64>,
}

impl<B> Observed<B> {
    /// Whatever it had to send has been sent (the client cannot have left mid-response).
    fn complete(&self) -> bool {
        let sent = self.exchange.as_ref().map_or(0, |e| e.response_bytes);
        self.empty || self.expected.is_some_and(|n| sent >= n)
    }
}

impl<B: Body + Unpin> Body for Observed<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let r = Pin::new(&mut self.body).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                let n = frame.data_ref().map_or(0, |d| d.remaining() as u64);
                if let Some(e) = self.exchange.as_mut() {
                    e.response_bytes += n;
                }
                if self.body.is_end_stream() || self.complete() {
                    self.exchange = None;
                }
            }
            Poll::Ready(_) => self.exchange = None,
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B> Drop for Observed<B> {
    fn drop(&mut self) {
        // Dropped before its end: the client went away (or the connection broke) mid-response. A body that was
        // empty from the start (204, HEAD, a redirect) is never polled: it ended, nobody left.
        let complete = self.complete();
        if let (Some(e), false) = (self.exchange.as_mut(), complete) {
            e.flag(CLIENT_GONE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    fn text(m: &HttpMetrics) -> String {
        let mut out = String::new();
        m.encode(&mut out);
        out
    }

    #[test]
    fn declared_request_body_sizes_and_connections_are_counted() {
        let m = HttpMetrics::new();
        let l = m.listener(Arc::from("edge"));
        drop(l.begin_with(&Method::POST, Some(300)));
        drop(l.begin(&Method::POST));
        let open = l.connections().open();
        let t = text(&m);
        assert!(
            t.contains("meshwork_listener_connections{listener=\"edge\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("meshwork_listener_connections_accepted_total{listener=\"edge\"} 1"),
            "{t}"
        );
        let labels = "listener=\"edge\",route=\"\",destination_service=\"\",http_request_method=\"POST\",http_response_status_code=\"0\"";
        assert!(
            t.contains(&format!(
                "http_server_request_body_size_bytes_sum{{{labels}}} 300.0"
            )),
            "{t}"
        );
        assert!(
            t.contains(&format!(
                "http_server_request_body_size_bytes_count{{{labels}}} 1"
            )),
            "an undeclared size is not observed: {t}"
        );
        drop(open);
        assert!(text(&m).contains("meshwork_listener_connections{listener=\"edge\"} 0"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_is_recorded_once_with_its_labels_duration_and_body_size() {
        let m = HttpMetrics::new();
        let l = m.listener(Arc::from("edge"));
        let mut e = l.begin(&Method::GET);
        assert!(text(&m).contains("http_server_active_requests{listener=\"edge\"} 1"));
        e.target(Some(&Arc::from("shop")), Some(&Arc::from("backend")));
        tokio::time::advance(std::time::Duration::from_millis(30)).await;
        let resp = e.respond(
            Response::builder()
                .status(503)
                .body(Full::new(bytes::Bytes::from("x".repeat(300))))
                .unwrap_or_default(),
        );
        let body = resp.into_body().collect().await;
        assert_eq!(body.map(|b| b.to_bytes().len()).unwrap_or(0), 300);
        let t = text(&m);
        let labels = "listener=\"edge\",route=\"shop\",destination_service=\"backend\",http_request_method=\"GET\",http_response_status_code=\"503\"";
        assert!(
            t.contains(&format!(
                "http_server_request_duration_seconds_count{{{labels}}} 1"
            )),
            "{t}"
        );
        assert!(
            t.contains(&format!(
                "http_server_response_body_size_bytes_bucket{{le=\"256.0\",{labels}}} 0"
            )),
            "{t}"
        );
        assert!(
            t.contains(&format!(
                "http_server_response_body_size_bytes_bucket{{le=\"1024.0\",{labels}}} 1"
            )),
            "{t}"
        );
        assert!(
            t.contains(&format!(
                "http_server_response_body_size_bytes_sum{{{labels}}} 300.0"
            )),
            "{t}"
        );
        assert!(
            t.contains("http_server_active_requests{listener=\"edge\"} 0"),
            "{t}"
        );
        assert!(!t.contains("# EOF"), "more families follow: {t}");
        // Counters named as the 0.0.4 text format names them (as their samples are).
        assert!(
            t.contains("# TYPE meshwork_access_log_lines_total counter\n"),
            "{t}"
        );
        assert!(t.contains("# HELP meshwork_access_log_lines_total "), "{t}");
        assert!(
            t.contains("# TYPE http_server_request_duration_seconds histogram\n"),
            "{t}"
        );
    }

    /// The access log lines `responses` leave when their bodies are dropped unpolled (as hyper drops a body already
    /// at its end, or one whose client left), read back from a real log file.
    fn flags_when_dropped_unpolled(responses: Vec<Response<Full<bytes::Bytes>>>) -> Vec<String> {
        flags_when_dropped(responses, 0)
    }

    /// The same, after polling each body `polls` times (a frame each time, if it has one ready).
    fn flags_when_dropped<B: Body + Unpin>(
        responses: Vec<Response<B>>,
        polls: usize,
    ) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("access.log");
        let config = Arc::new(AccessLogConfig {
            json: true,
            path: Arc::from(path.to_string_lossy().as_ref()),
            sampling_ppm: 1_000_000,
        });
        let m = HttpMetrics::new();
        let l = m.listener(Arc::from("edge"));
        let n = responses.len();
        for resp in responses {
            let mut e = l.begin(&Method::GET);
            let parts = http::Request::get("/")
                .body(())
                .unwrap_or_default()
                .into_parts()
                .0;
            e.observe(
                Some(&config),
                None,
                &Arrival {
                    parts: &parts,
                    downstream: SocketAddr::from(([127, 0, 0, 1], 1)),
                    source: &|| None,
                    https: false,
                    server_span: true,
                    client_spans: false,
                },
            );
            let mut body = e.respond(resp).into_body();
            let waker = std::task::Waker::noop();
            for _ in 0..polls {
                let _ = Pin::new(&mut body).poll_frame(&mut Context::from_waker(waker));
            }
            drop(body);
        }
        // The writer wakes every 100 ms; a bounded wait for its lines.
        for _ in 0..100 {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == n {
                return text
                    .lines()
                    .map(|l| {
                        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
                        v["response_flags"].as_str().unwrap_or("?").to_string()
                    })
                    .collect();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("the access log lines did not come");
    }

    #[test]
    fn an_empty_response_is_not_a_client_that_left_but_an_unsent_body_is() {
        let empty = Response::builder()
            .status(204)
            .body(Full::new(bytes::Bytes::new()));
        let unsent = Response::new(Full::new(bytes::Bytes::from_static(b"not sent")));
        let flags = flags_when_dropped_unpolled(vec![empty.unwrap_or_default(), unsent]);
        assert_eq!(flags, ["-", "DC"]);
    }

    /// A body that yields one chunk and then never says it has ended (as a streaming upstream body can).
    struct OneChunk(Option<bytes::Bytes>);

    impl Body for OneChunk {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<bytes::Bytes>, Self::Error>>> {
            match self.0.take() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => Poll::Pending,
            }
        }
    }

    #[test]
    fn a_body_sent_to_its_declared_length_is_complete_though_never_polled_to_its_end() {
        let sent = |declared: &str| {
            Response::builder()
                .header("content-length", declared)
                .body(OneChunk(Some(bytes::Bytes::from_static(b"12345678"))))
                .unwrap_or_else(|_| Response::new(OneChunk(None)))
        };
        // All 8 declared bytes went out: complete. 9 declared, 8 sent: the client left mid-body.
        let flags = flags_when_dropped(vec![sent("8"), sent("9")], 1);
        assert_eq!(flags, ["-", "DC"]);
    }

    #[test]
    fn a_request_dropped_before_its_response_counts_as_status_0() {
        let m = HttpMetrics::new();
        let l = m.listener(Arc::from("outbound"));
        drop(l.begin(&Method::from_bytes(b"BREW").unwrap_or_default()));
        let t = text(&m);
        assert!(t.contains("http_server_request_duration_seconds_count{listener=\"outbound\",route=\"\",destination_service=\"\",http_request_method=\"_OTHER\",http_response_status_code=\"0\"} 1"), "{t}");
    }
}
