//! The dashboard's window of recent traces: spans received over OTLP from the mesh's own proxies, grouped by
//! trace, bounded in traces and in spans (the oldest trace goes first), and searched by trace id, request id or
//! status for the page.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value as AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

/// Most traces kept, and most spans over all of them.
pub const MAX_TRACES: usize = 500;
pub const MAX_SPANS: usize = 20_000;
/// Most spans one trace keeps (a retry storm must not push every other trace out).
pub const MAX_SPANS_PER_TRACE: usize = 256;
/// Most bytes of text all the kept spans may hold (names, attributes, events), approximately; the oldest traces go
/// first when a sender's spans are large.
pub const MAX_BYTES: usize = 64 * 1024 * 1024;

/// One span as the page shows it.
#[derive(Debug, Clone)]
pub struct Span {
    pub span_id: String,
    pub parent: String,
    /// The proxy that made it (`service.name` of its resource) and its role.
    pub service: String,
    pub kind: &'static str,
    pub name: String,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: Vec<(String, String)>,
    pub events: Vec<Event>,
    pub error: bool,
}

#[derive(Debug, Clone)]
pub struct Event {
    pub name: String,
    pub time_ns: u64,
    pub attributes: Vec<(String, String)>,
}

impl Span {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, Default)]
pub struct Trace {
    pub id: String,
    pub spans: Vec<Span>,
}

impl Trace {
    /// The span with no parent among this trace's spans (the first proxy's), else the earliest.
    pub fn root(&self) -> Option<&Span> {
        let ids: Vec<&str> = self.spans.iter().map(|s| s.span_id.as_str()).collect();
        self.spans
            .iter()
            .filter(|s| !ids.contains(&s.parent.as_str()))
            .min_by_key(|s| s.start_ns)
    }

    pub fn start_ns(&self) -> u64 {
        self.spans.iter().map(|s| s.start_ns).min().unwrap_or(0)
    }

    pub fn end_ns(&self) -> u64 {
        self.spans.iter().map(|s| s.end_ns).max().unwrap_or(0)
    }

    /// The request id the proxies gave the request (`meshwork.request_id`), if any span says it.
    pub fn request_id(&self) -> Option<&str> {
        self.spans
            .iter()
            .find_map(|s| s.attr("meshwork.request_id"))
    }

    /// The status the root span answered with.
    pub fn status(&self) -> Option<&str> {
        self.root()?.attr("http.response.status_code")
    }

    pub fn error(&self) -> bool {
        self.spans.iter().any(|s| s.error)
    }
}

/// The recent traces, newest last.
#[derive(Debug, Default)]
pub struct TraceStore(Mutex<Inner>);

#[derive(Debug, Default)]
struct Inner {
    order: VecDeque<String>,
    traces: HashMap<String, Trace>,
    spans: usize,
    bytes: usize,
    received: u64,
}

impl Span {
    /// About how much memory the span's text takes.
    fn weight(&self) -> usize {
        let pairs =
            |a: &[(String, String)]| a.iter().map(|(k, v)| k.len() + v.len() + 48).sum::<usize>();
        let events: usize = self
            .events
            .iter()
            .map(|e| e.name.len() + pairs(&e.attributes) + 48)
            .sum();
        200 + self.service.len() + self.name.len() + pairs(&self.attributes) + events
    }
}

impl TraceStore {
    /// Takes what a proxy exported; returns how many spans were kept.
    pub fn ingest(&self, req: ExportTraceServiceRequest) -> usize {
        let mut inner = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut kept = 0;
        for rs in req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| text(&r.attributes, "service.name"))
                .unwrap_or_else(|| "?".to_string());
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                inner.received += 1;
                if span.trace_id.len() != 16 || span.span_id.len() != 8 {
                    continue;
                }
                let trace_id = hex(&span.trace_id);
                let span = convert(span, &service);
                kept += usize::from(inner.add(trace_id, span));
            }
        }
        kept
    }

    /// The newest traces first, those matching `query` (a trace id, a request id, a status code, or text in a
    /// span name or service), at most `limit`.
    pub fn recent(&self, query: &str, limit: usize) -> Vec<Trace> {
        let inner = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let query = query.trim();
        inner
            .order
            .iter()
            .rev()
            .filter_map(|id| inner.traces.get(id))
            .filter(|t| query.is_empty() || matches(t, query))
            .take(limit)
            .cloned()
            .collect()
    }

    pub fn get(&self, id: &str) -> Option<Trace> {
        let inner = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        inner.traces.get(id).cloned()
    }

    /// Spans received in all, and spans held now.
    pub fn counts(&self) -> (u64, usize) {
        let inner = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        (inner.received, inner.spans)
    }
}

impl Inner {
    fn add(&mut self, trace_id: String, span: Span) -> bool {
        if !self.traces.contains_key(&trace_id) {
            self.order.push_back(trace_id.clone());
        }
        let trace = self
            .traces
            .entry(trace_id.clone())
            .or_insert_with(|| Trace {
                id: trace_id,
                spans: Vec::new(),
            });
        if trace.spans.len() >= MAX_SPANS_PER_TRACE {
            return false;
        }
        self.bytes += span.weight();
        trace.spans.push(span);
        self.spans += 1;
        while self.order.len() > MAX_TRACES || self.spans > MAX_SPANS || self.bytes > MAX_BYTES {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(t) = self.traces.remove(&oldest) {
                self.spans -= t.spans.len();
                self.bytes -= t.spans.iter().map(Span::weight).sum::<usize>();
            }
        }
        true
    }
}

fn matches(t: &Trace, query: &str) -> bool {
    t.id == query
        || t.request_id() == Some(query)
        || t.status() == Some(query)
        || t.spans
            .iter()
            .any(|s| s.name.contains(query) || s.service.contains(query))
}

fn convert(s: opentelemetry_proto::tonic::trace::v1::Span, service: &str) -> Span {
    let kind = match SpanKind::try_from(s.kind) {
        Ok(SpanKind::Server) => "server",
        Ok(SpanKind::Client) => "client",
        Ok(SpanKind::Internal) => "internal",
        Ok(SpanKind::Producer) => "producer",
        Ok(SpanKind::Consumer) => "consumer",
        _ => "unspecified",
    };
    // Status code 2 is ERROR in OTLP.
    let error = s.status.as_ref().is_some_and(|st| st.code == 2);
    Span {
        span_id: hex(&s.span_id),
        parent: hex(&s.parent_span_id),
        service: bounded(service),
        kind,
        name: bounded(&s.name),
        start_ns: s.start_time_unix_nano,
        end_ns: s.end_time_unix_nano.max(s.start_time_unix_nano),
        attributes: attributes(&s.attributes),
        events: s
            .events
            .iter()
            .take(128)
            .map(|e| Event {
                name: bounded(&e.name),
                time_ns: e.time_unix_nano,
                attributes: attributes(&e.attributes).into_iter().take(16).collect(),
            })
            .collect(),
        error,
    }
}

fn attributes(attrs: &[KeyValue]) -> Vec<(String, String)> {
    attrs
        .iter()
        .take(64)
        .filter_map(|kv| Some((bounded(&kv.key), text(std::slice::from_ref(kv), &kv.key)?)))
        .collect()
}

fn text(attrs: &[KeyValue], key: &str) -> Option<String> {
    let v = attrs
        .iter()
        .find(|a| a.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(bounded(&match v {
        AnyValue::StringValue(s) => s.clone(),
        AnyValue::IntValue(i) => i.to_string(),
        AnyValue::BoolValue(b) => b.to_string(),
        AnyValue::DoubleValue(d) => d.to_string(),
        _ => return None,
    }))
}

/// What a peer sends is kept to 512 bytes per string.
fn bounded(s: &str) -> String {
    if s.len() <= 512 {
        return s.to_string();
    }
    let mut end = 512;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::AnyValue as Any;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(Any {
                value: Some(AnyValue::StringValue(v.into())),
            }),
        }
    }

    fn export(service: &str, trace: u8, spans: &[(u8, u8)]) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", service)],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: spans
                        .iter()
                        .map(|(id, parent)| opentelemetry_proto::tonic::trace::v1::Span {
                            trace_id: vec![trace; 16],
                            span_id: vec![*id; 8],
                            parent_span_id: if *parent == 0 {
                                Vec::new()
                            } else {
                                vec![*parent; 8]
                            },
                            name: format!("GET {id}"),
                            start_time_unix_nano: u64::from(*id),
                            end_time_unix_nano: u64::from(*id) + 10,
                            attributes: vec![kv("meshwork.request_id", &format!("req-{trace}"))],
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn spans_are_grouped_by_trace_and_searchable() {
        let store = TraceStore::default();
        assert_eq!(store.ingest(export("edge", 1, &[(1, 0), (2, 1)])), 2);
        store.ingest(export("backend", 1, &[(3, 2)]));
        store.ingest(export("edge", 2, &[(9, 0)]));
        let t = store.get(&"01".repeat(16));
        assert_eq!(t.as_ref().map(|t| t.spans.len()), Some(3));
        assert_eq!(
            t.as_ref().and_then(|t| t.root()).map(|r| r.span_id.clone()),
            Some("01".repeat(8))
        );
        assert_eq!(
            store.recent("", 10).first().map(|t| t.id.clone()),
            Some("02".repeat(16)),
            "newest first"
        );
        assert_eq!(store.recent("req-1", 10).len(), 1);
        assert_eq!(store.recent("backend", 10).len(), 1);
        assert!(store.recent("nothing", 10).is_empty());
    }

    #[test]
    fn the_window_is_bounded_in_traces_and_spans() {
        let store = TraceStore::default();
        for i in 0..(MAX_TRACES + 20) {
            let mut req = export("edge", 1, &[(1, 0)]);
            req.resource_spans[0].scope_spans[0].spans[0].trace_id =
                (i as u128).to_be_bytes().to_vec();
            store.ingest(req);
        }
        assert_eq!(store.recent("", usize::MAX).len(), MAX_TRACES);
        assert!(
            store.get(&hex(&0u128.to_be_bytes())).is_none(),
            "the oldest went first"
        );
        let many: Vec<(u8, u8)> = (1..=255).map(|i| (i, 0)).collect();
        store.ingest(export("edge", 7, &many));
        store.ingest(export("edge", 7, &many));
        assert_eq!(
            store.get(&"07".repeat(16)).map(|t| t.spans.len()),
            Some(MAX_SPANS_PER_TRACE)
        );
    }

    #[test]
    fn malformed_ids_and_huge_strings_from_a_peer_are_contained() {
        let store = TraceStore::default();
        let mut req = export("edge", 3, &[(1, 0), (2, 0)]);
        req.resource_spans[0].scope_spans[0].spans[0].trace_id = vec![1, 2, 3];
        req.resource_spans[0].scope_spans[0].spans[1].name = "x".repeat(100_000);
        assert_eq!(store.ingest(req), 1);
        let t = store.get(&"03".repeat(16));
        assert!(t.is_some_and(|t| t.spans[0].name.len() < 600));
    }
}
