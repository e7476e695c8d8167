//! Distributed tracing (OpenTelemetry): the context on the wire (`context`), what a proxy is configured to do
//! (`settings`), one request's place in its trace and the spans it makes (`span`), and their export
//! (`export`). A gateway or a sidecar's inbound listener makes a server span per request; a gateway or a
//! sidecar's outbound listener makes a client span per attempt upstream. Filter callbacks and resilience
//! decisions are events on the proxy's span. `spans` turns a finished request into its spans.

pub mod context;
pub mod export;
pub mod otlp;
pub mod settings;
pub mod span;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

pub use context::{Propagators, SpanId, TraceId};
pub use export::Tracer;
pub use settings::{MeshTracing, TraceConfig};
pub use span::Traced;

use super::journal::{Attempt, Journal};
use span::{Attributes, Event, Kind, SpanRecord, Value};

/// What the proxy knows of a finished request, for its spans.
pub struct Finished<'a> {
    pub method: &'static str,
    /// Owned (moved from what was kept on arrival, not copied): the server span takes them.
    pub path: String,
    pub authority: Option<String>,
    pub scheme: &'static str,
    pub version: http::Version,
    pub listener: &'a Arc<str>,
    pub route: Option<&'a Arc<str>>,
    pub destination: Option<&'a Arc<str>>,
    pub source: Option<String>,
    pub downstream: SocketAddr,
    pub request_id: Option<String>,
    /// 0: the client went away before any response.
    pub status: u16,
    pub flags: &'static str,
    pub start: SystemTime,
    pub end: SystemTime,
}

/// The spans of a finished, sampled request: the server span (if this proxy makes one) and a client span per
/// attempt. Events go on the server span; without one (a sidecar's outbound listener), on the last attempt's
/// span, and a request that made no attempt at all (no route, a filter's reply, an open circuit...) still gets
/// one client span saying how it ended.
pub fn spans(journal: &Journal, mut r: Finished<'_>) -> Vec<SpanRecord> {
    let Some(trace) = journal.trace().filter(|t| t.sampled) else {
        return Vec::new();
    };
    let (attempts, events, dropped) = journal.take();
    let mut out = Vec::with_capacity(attempts.len() + 1);
    let client_parent = trace.local_parent();
    let mut events = Some(events);
    if let Some(server) = trace.server {
        out.push(SpanRecord {
            trace_id: trace.trace_id,
            span_id: server,
            parent: trace.parent,
            parent_remote: trace.parent.is_some(),
            tracestate: trace.tracestate.clone(),
            kind: Kind::Server,
            method: r.method,
            route: r.route.cloned(),
            start: r.start,
            end: r.end,
            attributes: server_attributes(&mut r),
            events: events.take().unwrap_or_default(),
            dropped_events: dropped,
            error: (r.status >= 500 || r.status == 0).then_some(error_of(&r)),
        });
    }
    if !journal.client_spans() {
        return out;
    }
    let remote = trace.server.is_none() && trace.parent.is_some();
    let last = attempts.len().saturating_sub(1);
    for (i, a) in attempts.iter().enumerate() {
        let mut span = client_span(trace.trace_id, client_parent, remote, &r, a, i as u32 + 1);
        span.tracestate = trace.tracestate.clone();
        if i == last {
            span.events = events.take().unwrap_or_default();
            span.dropped_events = dropped;
        }
        out.push(span);
    }
    if let Some(events) = events.filter(|_| attempts.is_empty()) {
        // No attempt was made: one client span tells how the request ended here.
        out.push(SpanRecord {
            trace_id: trace.trace_id,
            span_id: span::new_span_id(),
            parent: client_parent,
            parent_remote: remote,
            tracestate: trace.tracestate.clone(),
            kind: Kind::Client,
            method: r.method,
            route: r.route.cloned(),
            start: r.start,
            end: r.end,
            attributes: no_attempt_attributes(&mut r),
            events,
            dropped_events: dropped,
            error: (r.status >= 400 || r.status == 0).then_some(error_of(&r)),
        });
    }
    out
}

fn error_of(r: &Finished<'_>) -> &'static str {
    match (r.status, r.flags) {
        (0, _) => "the client went away before a response",
        (_, "-") => "error status",
        (_, _) => "ended by the proxy (see meshwork.response_flags)",
    }
}

fn server_attributes(r: &mut Finished<'_>) -> Attributes {
    let mut path = std::mem::take(&mut r.path);
    if let Some(q) = path.find('?') {
        path.truncate(q);
    }
    let mut a: Attributes = Vec::with_capacity(16);
    a.extend([
        ("http.request.method", Value::Static(r.method)),
        ("url.path", Value::Owned(path)),
        ("url.scheme", Value::Static(r.scheme)),
        (
            "network.protocol.version",
            Value::Static(protocol(r.version)),
        ),
        ("client.address", Value::Ip(r.downstream.ip())),
        ("http.response.status_code", Value::Int(r.status as i64)),
        ("meshwork.listener", Value::Shared(r.listener.clone())),
        ("meshwork.response_flags", Value::Static(r.flags)),
    ]);
    common(&mut a, r);
    a
}

fn no_attempt_attributes(r: &mut Finished<'_>) -> Attributes {
    let mut a: Attributes = Vec::with_capacity(12);
    a.extend([
        ("http.request.method", Value::Static(r.method)),
        ("http.response.status_code", Value::Int(r.status as i64)),
        ("meshwork.listener", Value::Shared(r.listener.clone())),
        ("meshwork.response_flags", Value::Static(r.flags)),
        ("meshwork.attempt", Value::Int(0)),
    ]);
    common(&mut a, r);
    a
}

/// What the proxy's own span says about the request: the route, the host, the services on each side, the
/// request id (the strings are moved into it).
fn common(a: &mut Attributes, r: &mut Finished<'_>) {
    if let Some(route) = r.route {
        a.push(("http.route", Value::Shared(route.clone())));
    }
    if let Some(mut host) = r.authority.take() {
        let port = split_port(&mut host);
        a.push(("server.address", Value::Owned(host)));
        if let Some(port) = port {
            a.push(("server.port", Value::Int(port as i64)));
        }
    }
    if let Some(d) = r.destination {
        a.push(("meshwork.destination_service", Value::Shared(d.clone())));
    }
    if let Some(s) = r.source.take() {
        a.push(("meshwork.source", Value::Owned(s)));
    }
    if let Some(id) = r.request_id.take() {
        a.push(("meshwork.request_id", Value::Owned(id)));
    }
}

fn client_span(
    trace_id: TraceId,
    parent: Option<SpanId>,
    remote: bool,
    r: &Finished<'_>,
    a: &Attempt,
    number: u32,
) -> SpanRecord {
    let mut attributes: Attributes = Vec::with_capacity(12);
    attributes.extend([
        ("http.request.method", Value::Static(r.method)),
        ("server.address", Value::Ip(a.endpoint.ip())),
        ("server.port", Value::Int(a.endpoint.port() as i64)),
        ("network.peer.address", Value::Ip(a.endpoint.ip())),
        ("meshwork.attempt", Value::Int(number as i64)),
    ]);
    if number > 1 {
        attributes.push(("http.request.resend_count", Value::Int(number as i64 - 1)));
    }
    if a.status != 0 {
        attributes.push(("http.response.status_code", Value::Int(a.status as i64)));
    }
    if let Some(e) = a.error {
        attributes.push(("error.type", Value::Static(e)));
    }
    if let Some(route) = r.route {
        attributes.push(("http.route", Value::Shared(route.clone())));
    }
    if let Some(d) = r.destination {
        attributes.push(("meshwork.destination_service", Value::Shared(d.clone())));
    }
    let error = match (a.error, a.status) {
        (Some(_), _) => Some("no response"),
        (None, s) if s >= 400 => Some("error status"),
        (None, 0) => Some("cancelled"),
        _ => None,
    };
    SpanRecord {
        trace_id,
        span_id: a.span_id,
        parent,
        parent_remote: remote,
        tracestate: None,
        kind: Kind::Client,
        method: r.method,
        route: r.route.cloned(),
        start: a.start,
        end: a.end.unwrap_or(r.end),
        attributes,
        events: Vec::<Event>::new(),
        dropped_events: 0,
        error,
    }
}

fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// Cuts `:port` off an authority, returning the port (an IPv6 literal's brackets stay).
fn split_port(authority: &mut String) -> Option<u16> {
    let colon = authority.rfind(':')?;
    if colon == 0 || authority[colon..].contains(']') {
        return None;
    }
    let port = authority[colon + 1..].parse().ok()?;
    authority.truncate(colon);
    Some(port)
}
