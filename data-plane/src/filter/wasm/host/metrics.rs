//! Metrics: `proxy_define_metric`, `proxy_increment_metric`, `proxy_record_metric` and `proxy_get_metric`, with
//! Envoy's semantics: counters (type 0) only go up (`record` adds), gauges (1) are set or moved, histograms (2)
//! observe every recorded value. Proxy-wide: defining a (name, type) again returns the same id, so every instance
//! (and every plugin) that defines it adds to one metric; an id is the index + 1. Each is exported on the admin
//! `/metrics` as a typed family of its own (`filter_metrics.rs`). At most `MAX_METRICS` are defined.

use std::sync::PoisonError;

use prometheus_client::metrics::histogram::Histogram;
use wasmtime::Linker;

use super::{index_of, st, HostState, C, R};
use crate::filter::wasm::abi::status;
use crate::filter::wasm::memory::{read_string, write_u32, write_u64};

/// Metrics filters may define in all (a filter defining names from request data must not grow the table
/// without end); further definitions fail with INTERNAL_FAILURE.
pub const MAX_METRICS: usize = 1024;

/// Longest metric name a filter may define (it is exported on every scrape).
pub const MAX_NAME: usize = 256;

/// Buckets of filter-defined histograms, in the filter's own unit (commonly milliseconds or bytes).
pub const HISTOGRAM_BUCKETS: [f64; 16] = [
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 25000.0,
    50000.0, 100000.0,
];

/// One metric a filter defined.
#[derive(Debug)]
pub struct Defined {
    pub name: String,
    pub value: Value,
}

#[derive(Debug)]
pub enum Value {
    Counter(i64),
    Gauge(i64),
    Histogram(Histogram),
}

impl Value {
    fn of_type(ty: i32) -> Option<Value> {
        match ty {
            0 => Some(Value::Counter(0)),
            1 => Some(Value::Gauge(0)),
            2 => Some(Value::Histogram(Histogram::new(HISTOGRAM_BUCKETS))),
            _ => None,
        }
    }

    pub fn type_id(&self) -> i32 {
        match self {
            Value::Counter(_) => 0,
            Value::Gauge(_) => 1,
            Value::Histogram(_) => 2,
        }
    }
}

pub(super) fn link(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.func_wrap("env", "proxy_define_metric", define)?;
    l.func_wrap("env", "proxy_increment_metric", increment)?;
    l.func_wrap("env", "proxy_record_metric", record)?;
    l.func_wrap("env", "proxy_get_metric", get)?;
    Ok(())
}

fn define(mut c: C<'_>, ty: i32, np: i32, nn: i32, out: i32) -> R {
    let Some(value) = Value::of_type(ty) else {
        return Ok(status::BAD_ARGUMENT);
    };
    let name = ok_or_status!(read_string(&mut c, np, nn));
    if name.is_empty() || name.len() > MAX_NAME {
        return Ok(status::BAD_ARGUMENT);
    }
    let id = {
        let shared = c.data().shared.clone();
        let mut m = shared
            .metrics
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match m
            .iter()
            .position(|d| d.name == name && d.value.type_id() == ty)
        {
            Some(i) => i,
            None if m.len() >= MAX_METRICS => return Ok(status::INTERNAL_FAILURE),
            None => {
                m.push(Defined { name, value });
                m.len() - 1
            }
        }
    };
    Ok(st(write_u32(&mut c, out, id as u32 + 1)))
}

/// A counter only goes up: a negative delta is BAD_ARGUMENT (the spec's own example of that status); a histogram
/// is recorded, not incremented.
fn increment(c: C<'_>, id: i32, delta: i64) -> R {
    let shared = c.data().shared.clone();
    let mut m = shared
        .metrics
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let Some(d) = index_of(id).and_then(|i| m.get_mut(i)) else {
        return Ok(status::NOT_FOUND);
    };
    match &mut d.value {
        Value::Counter(_) if delta < 0 => Ok(status::BAD_ARGUMENT),
        Value::Counter(v) | Value::Gauge(v) => {
            *v = v.saturating_add(delta);
            Ok(status::OK)
        }
        Value::Histogram(_) => Ok(status::BAD_ARGUMENT),
    }
}

/// A gauge is set, a histogram observes the value, a counter adds it (neither takes a negative one).
fn record(c: C<'_>, id: i32, value: i64) -> R {
    let shared = c.data().shared.clone();
    let mut m = shared
        .metrics
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let Some(d) = index_of(id).and_then(|i| m.get_mut(i)) else {
        return Ok(status::NOT_FOUND);
    };
    match &mut d.value {
        Value::Counter(_) | Value::Histogram(_) if value < 0 => return Ok(status::BAD_ARGUMENT),
        Value::Counter(v) => *v = v.saturating_add(value),
        Value::Gauge(v) => *v = value,
        Value::Histogram(h) => h.observe(value as f64),
    }
    Ok(status::OK)
}

/// A counter's or a gauge's value; a histogram has no single value (BAD_ARGUMENT, as in Envoy).
fn get(mut c: C<'_>, id: i32, out: i32) -> R {
    let value = {
        let m = c
            .data()
            .shared
            .metrics
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match index_of(id).and_then(|i| m.get(i)).map(|d| &d.value) {
            Some(Value::Counter(v) | Value::Gauge(v)) => *v,
            Some(Value::Histogram(_)) => return Ok(status::BAD_ARGUMENT),
            None => return Ok(status::NOT_FOUND),
        }
    };
    Ok(st(write_u64(&mut c, out, value as u64)))
}
