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

    /// An attempt is being made at `endpoint` with these request headers: they get the trace context the next
    /// hop continues from. Returns the attempt's index, for its outcome.
    pub fn attempt(&self, endpoint: SocketAddr, headers: &mut HeaderMap) -> usize {
        let n = self.attempts.fetch_add(1, Relaxed) as usize;
        let mut state = self.state();
        state.last = Some(endpoint);
        let Some(trace) = &self.trace else {
            return n;
        };
        let parent = match (self.client_spans, trace.server) {
            (false, Some(server)) => server,
            _ => span::new_span_id(),
        };
        trace.inject(headers, parent);
        if self.client_spans && trace.sampled {
            state.attempts.push(Attempt {
                span_id: parent,
                endpoint,
                start: SystemTime::now(),
                end: None,
                status: 0,
                error: None,
            });
        }
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
