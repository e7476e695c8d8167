//! One traced request at one proxy: where it sits in its trace (`Traced`, decided on arrival: the trace id, the
//! caller's span, this proxy's span ids, the sampling decision) and the spans it produced (`SpanRecord`, plain
//! data handed to the exporter when the request ends; converted to OpenTelemetry's types off the request path).

use std::cell::RefCell;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, HeaderValue};

use super::context::{self, Incoming, Outgoing, SpanId, TraceId};
use super::settings::{Sampler, TraceConfig};

/// Most events one span keeps (filter timings, resilience decisions); more are counted as dropped.
pub const MAX_EVENTS: usize = 128;

thread_local! {
    /// Span and trace ids: wyrand per thread, seeded from the OS (ids must not collide across proxies; they are
    /// not secrets, so a CSPRNG per id would only cost time).
    static IDS: RefCell<fastrand::Rng> = RefCell::new(fastrand::Rng::with_seed(os_seed()));
}

fn os_seed() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        // No OS randomness: fall back to the std hasher's per-process random keys.
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(std::process::id() as u64);
        return h.finish();
    }
    u64::from_ne_bytes(b)
}

pub fn new_span_id() -> SpanId {
    IDS.with(|r| {
        let mut r = r.borrow_mut();
        loop {
            let id = r.u64(..);
            if id != 0 {
                return SpanId(id.to_be_bytes());
            }
        }
    })
}

fn new_trace_id() -> TraceId {
    IDS.with(|r| {
        let mut r = r.borrow_mut();
        loop {
            let id = r.u128(..);
            if id != 0 {
                return TraceId(id.to_be_bytes());
            }
        }
    })
}

/// Where one request sits in its trace at this proxy.
#[derive(Debug)]
pub struct Traced {
    pub config: Arc<TraceConfig>,
    pub trace_id: TraceId,
    /// The caller's span (remote), if the request came with a context.
    pub parent: Option<SpanId>,
    /// This proxy's server span (gateways, a sidecar's inbound listener); None on a sidecar's outbound listener,
    /// which makes client spans only.
    pub server: Option<SpanId>,
    pub sampled: bool,
    pub tracestate: Option<HeaderValue>,
    /// Which context headers the request arrived with (`context::Carried::mask`).
    carried: u8,
}

impl Traced {
    /// Reads the request's context and decides: a new trace when it has none, the parent's sampling decision
    /// when it has one (parent-based samplers), else the ratio, on the trace id (so every proxy of a trace that
    /// has to decide decides alike).
    pub fn begin(config: &Arc<TraceConfig>, headers: &HeaderMap, server_span: bool) -> Traced {
        let carried = context::Carried::of(headers);
        let mask = carried.mask();
        let (incoming, decided) = match context::from_carried(&carried) {
            Ok(c) => {
                let d = c.sampled;
                (Some(c), d)
            }
            Err(decided) => (None, decided),
        };
        let trace_id = incoming.as_ref().map_or_else(new_trace_id, |c| c.trace_id);
        let sampled = decide(&config.sampler, decided, &trace_id);
        let Incoming {
            span_id,
            tracestate,
            ..
        } = match incoming {
            Some(c) => c,
            None => Incoming {
                trace_id,
                span_id: SpanId([0; 8]),
                sampled: None,
                tracestate: None,
            },
        };
        Traced {
            config: config.clone(),
            trace_id,
            parent: (span_id.0 != [0; 8]).then_some(span_id),
            server: server_span.then(new_span_id),
            sampled,
            tracestate,
            carried: mask,
        }
    }

    /// Writes the context the next hop sees, `span` being its parent.
    pub fn inject(&self, headers: &mut HeaderMap, span: SpanId) {
        let out = Outgoing {
            trace_id: self.trace_id,
            span_id: span,
            sampled: self.sampled,
            tracestate: self.tracestate.as_ref(),
        };
        context::inject(headers, self.config.propagators, &out, self.carried);
    }

    /// Writes another span over the context `inject` wrote (the headers it carried are gone already).
    pub fn reinject(&self, headers: &mut HeaderMap, span: SpanId) {
        let out = Outgoing {
            trace_id: self.trace_id,
            span_id: span,
            sampled: self.sampled,
            tracestate: self.tracestate.as_ref(),
        };
        context::inject(headers, self.config.propagators, &out, 0);
    }

    /// The span a client span (or the next hop, when this proxy makes none) hangs under.
    pub fn local_parent(&self) -> Option<SpanId> {
        self.server.or(self.parent)
    }
}

fn decide(sampler: &Sampler, parent: Option<bool>, trace_id: &TraceId) -> bool {
    match parent {
        Some(decided) if sampler.parent_based => decided,
        _ => ratio_sampled(sampler.ratio_ppm, trace_id),
    }
}

/// OpenTelemetry's TraceIdRatioBased: the trace id's low 8 bytes below ratio × 2^64.
fn ratio_sampled(ratio_ppm: u32, trace_id: &TraceId) -> bool {
    if ratio_ppm >= 1_000_000 {
        return true;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id.0[8..]);
    let x = u64::from_be_bytes(low) >> 1;
    let bound = ((ratio_ppm as u128) << 63) / 1_000_000;
    (x as u128) < bound
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Server,
    Client,
}

/// An attribute value, as cheap to make on the request path as its source allows.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Static(&'static str),
    Shared(Arc<str>),
    Owned(String),
    Int(i64),
    /// Formatted when the span is encoded, off the request path.
    Ip(std::net::IpAddr),
}

pub type Attributes = Vec<(&'static str, Value)>;

/// Something that happened during a span (a filter callback and its duration, a resilience decision).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: &'static str,
    pub time: SystemTime,
    pub attributes: Attributes,
}

/// A finished span, as the exporter receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    /// The parent is another process's span.
    pub parent_remote: bool,
    /// W3C `tracestate`, as the request carried it.
    pub tracestate: Option<HeaderValue>,
    pub kind: Kind,
    /// The span's name is OpenTelemetry's `{method} {http.route}` (or the method alone), put together when it
    /// is encoded.
    pub method: &'static str,
    pub route: Option<Arc<str>>,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Attributes,
    pub events: Vec<Event>,
    pub dropped_events: u32,
    /// An error status, with its description (a 5xx at the server, a failed or 5xx attempt at the client).
    pub error: Option<&'static str>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::trace::context::{Propagators, TRACEPARENT};
    use std::time::Duration;

    fn config(ratio_ppm: u32, parent_based: bool) -> Arc<TraceConfig> {
        Arc::new(TraceConfig {
            endpoint: String::new(),
            protocol: super::super::settings::Protocol::Grpc,
            sampler: Sampler {
                ratio_ppm,
                parent_based,
            },
            propagators: Propagators::TRACECONTEXT,
            resource: Vec::new(),
            schedule_delay: Duration::from_secs(1),
            max_queue: 8,
            max_batch: 8,
            timeout: Duration::from_secs(1),
        })
    }

    fn with_parent(flags: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}");
        h.insert(
            TRACEPARENT,
            HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("")),
        );
        h
    }

    #[test]
    fn a_sampled_or_unsampled_parent_is_followed_whatever_the_ratio() {
        let never = config(0, true);
        let t = Traced::begin(&never, &with_parent("01"), true);
        assert!(t.sampled);
        assert_eq!(t.trace_id.hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            t.parent.map(|p| p.hex()).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert!(t.server.is_some());
        let always = config(1_000_000, true);
        assert!(!Traced::begin(&always, &with_parent("00"), true).sampled);
    }

    #[test]
    fn a_new_trace_is_sampled_by_ratio() {
        let tenth = config(100_000, true);
        let sampled = (0..20_000)
            .filter(|_| Traced::begin(&tenth, &HeaderMap::new(), false).sampled)
            .count();
        assert!(
            (1_600..2_400).contains(&sampled),
            "{sampled} of 20000 at 10%"
        );
        let t = Traced::begin(&tenth, &HeaderMap::new(), false);
        assert_eq!((t.parent, t.server), (None, None));
    }

    #[test]
    fn a_non_parent_based_sampler_decides_alone() {
        assert!(!Traced::begin(&config(0, false), &with_parent("01"), true).sampled);
    }

    #[test]
    fn the_next_hop_gets_this_proxys_span_as_parent() {
        let t = Traced::begin(&config(1_000_000, true), &with_parent("01"), true);
        let mut h = HeaderMap::new();
        let Some(server) = t.server else {
            panic!("no server span")
        };
        t.inject(&mut h, server);
        let want = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", server.hex());
        assert_eq!(
            h.get(TRACEPARENT).and_then(|v| v.to_str().ok()),
            Some(want.as_str())
        );
    }
}
