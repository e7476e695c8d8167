//! What the layers did with one request, noted as they do it for whoever reports on the request: how many
//! attempts it took and where the last one went (the access log), and for a traced request the context each
//! attempt carried, each attempt's outcome, and the events on the way (filter callbacks and their time,
//! resilience decisions). The request path writes here through a shared reference; nothing here calls it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use http::HeaderMap;

use super::trace::span::{self, Attributes, Event, Traced, Value, MAX_EVENTS};
use super::trace::SpanId;

/// One request's journal (made only when its request is logged or traced).
#[derive(Debug)]
pub struct Journal {
    attempts: AtomicU32,
    state: Mutex<State>,
    trace: Option<Traced>,
    /// Whether this proxy makes a client span per attempt (gateways, a sidecar's outbound listener) or only
    /// tells the next hop its server span (a sidecar's inbound listener, whose next hop is the app).
    client_spans: bool,
}

#[derive(Debug, Default)]
struct State {
    last: Option<SocketAddr>,
    attempts: Vec<Attempt>,
    events: Vec<Event>,
    dropped_events: u32,
}

/// One attempt upstream, as its client span reports it.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub span_id: SpanId,
    pub endpoint: SocketAddr,
    pub start: SystemTime,
    pub end: Option<SystemTime>,
    /// 0: no response.
    pub status: u16,
    /// Why no response came (`connect`, `failed`, `timeout`...).
    pub error: Option<&'static str>,
}

impl Journal {
    pub fn new(trace: Option<Traced>, client_spans: bool) -> Journal {
        Journal {
            attempts: AtomicU32::new(0),
            state: Mutex::new(State::default()),
            trace,
            client_spans,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn trace(&self) -> Option<&Traced> {
        self.trace.as_ref()
    }

    /// Whether what happens is worth noting for the trace (it is traced and sampled).
    pub fn recording(&self) -> bool {
        self.trace.as_ref().is_some_and(|t| t.sampled)
    }

    /// The request is about to be sent on: its headers get the trace context the next hop continues from, once
    /// (before any per-attempt copy is made, so that no attempt's copy has to grow to take it). An unsampled
    /// request keeps this context for all its attempts; a sampled one making client spans gets each attempt's
    /// span written over it by `attempt`.
    pub fn prepare(&self, headers: &mut HeaderMap) {
        let Some(trace) = &self.trace else {
            return;
        };
        let parent = match (self.client_spans, trace.server) {
            (false, Some(server)) => server,
            _ => span::new_span_id(),
        };
        trace.inject(headers, parent);
    }

    /// An attempt is being made at `endpoint` with these request headers (`prepare`d). Returns the attempt's
    /// index, for its outcome.
    pub fn attempt(&self, endpoint: SocketAddr, headers: &mut HeaderMap) -> usize {
        let n = self.attempts.fetch_add(1, Relaxed) as usize;
        let mut state = self.state();
        state.last = Some(endpoint);
        let Some(trace) = self
            .trace
            .as_ref()
            .filter(|t| t.sampled && self.client_spans)
        else {
            return n;
        };
        let span_id = span::new_span_id();
        trace.reinject(headers, span_id);
        state.attempts.push(Attempt {
            span_id,
            endpoint,
            start: SystemTime::now(),
            end: None,
            status: 0,
            error: None,
        });
        n
    }

    /// Attempt `i` got a response with `status` (or none: `error`).
    pub fn outcome(&self, i: usize, status: u16, error: Option<&'static str>) {
        if !self.recording() {
            return;
        }
        if let Some(a) = self.state().attempts.get_mut(i) {
            a.end = Some(SystemTime::now());
            a.status = status;
            a.error = error;
        }
    }

    /// Notes an event (only for a sampled trace: `attributes` is not even called otherwise).
    pub fn event(&self, name: &'static str, attributes: impl FnOnce() -> Attributes) {
        if !self.recording() {
            return;
        }
        let mut state = self.state();
        if state.events.len() >= MAX_EVENTS {
            state.dropped_events += 1;
            return;
        }
        state.events.push(Event {
            name,
            time: SystemTime::now(),
            attributes: attributes(),
        });
    }

    /// A Wasm filter callback ran for `spent`, ending now.
    pub fn filter_ran(&self, filter: &str, callback: &'static str, spent: Duration) {
        if !self.recording() {
            return;
        }
        let mut state = self.state();
        if state.events.len() >= MAX_EVENTS {
            state.dropped_events += 1;
            return;
        }
        state.events.push(Event {
            name: "filter",
            time: SystemTime::now() - spent,
            attributes: vec![
                ("meshwork.filter.name", Value::Owned(filter.to_string())),
                ("meshwork.filter.callback", Value::Static(callback)),
                (
                    "meshwork.filter.duration_ns",
                    Value::Int(spent.as_nanos().min(i64::MAX as u128) as i64),
                ),
            ],
        });
    }

    pub fn attempts(&self) -> u32 {
        self.attempts.load(Relaxed)
    }

    pub fn last(&self) -> Option<SocketAddr> {
        self.state().last
    }

    /// The attempts and events noted, taken out (for the spans made when the request ends).
    pub fn take(&self) -> (Vec<Attempt>, Vec<Event>, u32) {
        let mut state = self.state();
        (
            std::mem::take(&mut state.attempts),
            std::mem::take(&mut state.events),
            state.dropped_events,
        )
    }

    pub fn client_spans(&self) -> bool {
        self.client_spans
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::trace::context::{Propagators, B3, TRACEPARENT};
    use crate::telemetry::trace::settings::{Protocol, Sampler, TraceConfig};
    use http::HeaderValue;
    use std::sync::Arc;

    fn traced(ratio_ppm: u32, propagators: Propagators, incoming: &HeaderMap) -> Traced {
        let config = Arc::new(TraceConfig {
            endpoint: String::new(),
            protocol: Protocol::Grpc,
            sampler: Sampler {
                ratio_ppm,
                parent_based: true,
            },
            propagators,
            resource: Vec::new(),
            schedule_delay: Duration::from_secs(1),
            max_queue: 8,
            max_batch: 8,
            timeout: Duration::from_secs(1),
        });
        Traced::begin(&config, incoming, true)
    }

    fn traceparents(h: &HeaderMap) -> Vec<String> {
        h.get_all(TRACEPARENT)
            .iter()
            .map(|v| v.to_str().unwrap_or_default().to_string())
            .collect()
    }

    const ADDR: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1);

    #[test]
    fn an_unsampled_request_keeps_one_context_for_every_attempt() {
        let journal = Journal::new(
            Some(traced(0, Propagators::TRACECONTEXT, &HeaderMap::new())),
            true,
        );
        let mut template = HeaderMap::new();
        journal.prepare(&mut template);
        let prepared = traceparents(&template);
        assert_eq!(prepared.len(), 1);
        assert!(prepared[0].ends_with("-00"), "{prepared:?}");
        for i in 0..2 {
            let mut copy = template.clone();
            assert_eq!(journal.attempt(ADDR, &mut copy), i);
            assert_eq!(traceparents(&copy), prepared);
        }
        assert_eq!(journal.attempts(), 2);
        assert!(journal.take().0.is_empty(), "no client spans are kept");
    }

    #[test]
    fn a_sampled_request_gives_each_attempt_its_own_span_over_the_carried_context() {
        let mut incoming = HeaderMap::new();
        incoming.insert(
            B3,
            HeaderValue::from_static("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        );
        let journal = Journal::new(Some(traced(0, Propagators::TRACECONTEXT, &incoming)), true);
        let mut template = incoming.clone();
        journal.prepare(&mut template);
        assert!(
            template.get(B3).is_none(),
            "a carried format that is not configured is removed"
        );
        let mut sent = Vec::new();
        for _ in 0..2 {
            let mut copy = template.clone();
            journal.attempt(ADDR, &mut copy);
            let tp = traceparents(&copy);
            assert_eq!(tp.len(), 1, "written over, not added: {tp:?}");
            assert!(
                tp[0].starts_with("00-80f198ee56343ba864fe8b2a57d3eff7-") && tp[0].ends_with("-01")
            );
            sent.push(tp[0][36..52].to_string());
        }
        let (attempts, _, _) = journal.take();
        let spans: Vec<String> = attempts.iter().map(|a| a.span_id.hex()).collect();
        assert_eq!(
            spans, sent,
            "each attempt's client span is the parent its copy carried"
        );
        assert_ne!(sent[0], sent[1]);
    }

    #[test]
    fn an_inbound_sidecar_hands_the_app_its_server_span() {
        let journal = Journal::new(
            Some(traced(
                1_000_000,
                Propagators::TRACECONTEXT,
                &HeaderMap::new(),
            )),
            false,
        );
        let mut headers = HeaderMap::new();
        journal.prepare(&mut headers);
        journal.attempt(ADDR, &mut headers);
        let server = journal.trace().and_then(|t| t.server).map(|s| s.hex());
        let tp = traceparents(&headers);
        assert_eq!(tp.len(), 1);
        assert_eq!(Some(&tp[0][36..52]), server.as_deref());
    }
}
