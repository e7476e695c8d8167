//! Metrics: `proxy_define_metric`, `proxy_increment_metric`, `proxy_record_metric` and `proxy_get_metric`.
//! Counters (type 0), gauges (1) and histograms (2, which keep only the last value), proxy-wide, exported on the
//! admin /metrics endpoint. Defining a (name, type) again returns the same id, so every instance (and every
//! plugin) that defines it adds to one metric; an id is the index + 1.

use std::sync::PoisonError;

use wasmtime::Linker;

use super::{index_of, st, HostState, C, R};
use crate::filter::wasm::abi::status;
use crate::filter::wasm::memory::{read_string, write_u32, write_u64};

pub(super) fn link(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.func_wrap("env", "proxy_define_metric", define)?;
    l.func_wrap("env", "proxy_increment_metric", increment)?;
    l.func_wrap("env", "proxy_record_metric", record)?;
    l.func_wrap("env", "proxy_get_metric", get)?;
    Ok(())
}

fn define(mut c: C<'_>, ty: i32, np: i32, nn: i32, out: i32) -> R {
    if !(0..=2).contains(&ty) {
        return Ok(status::BAD_ARGUMENT);
    }
    let name = ok_or_status!(read_string(&mut c, np, nn));
    let id = {
        let shared = c.data().shared.clone();
        let mut m = shared
            .metrics
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match m.iter().position(|(n, t, _)| *n == name && *t == ty) {
            Some(i) => i,
            None => {
                m.push((name, ty, 0));
                m.len() - 1
            }
        }
    };
    Ok(st(write_u32(&mut c, out, id as u32 + 1)))
}

/// A counter only goes up: a negative delta is BAD_ARGUMENT (the spec's own example of that status).
fn increment(c: C<'_>, id: i32, delta: i64) -> R {
    let shared = c.data().shared.clone();
    let mut m = shared
        .metrics
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    match index_of(id).and_then(|i| m.get_mut(i)) {
        Some((_, 0, _)) if delta < 0 => Ok(status::BAD_ARGUMENT),
        Some((_, _, v)) => {
            *v = v.saturating_add(delta);
            Ok(status::OK)
        }
        None => Ok(status::NOT_FOUND),
    }
}

fn record(c: C<'_>, id: i32, value: i64) -> R {
    let shared = c.data().shared.clone();
    let mut m = shared
        .metrics
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    match index_of(id).and_then(|i| m.get_mut(i)) {
        Some((_, _, v)) => {
            *v = value;
            Ok(status::OK)
        }
        None => Ok(status::NOT_FOUND),
    }
}

fn get(mut c: C<'_>, id: i32, out: i32) -> R {
    let value = {
        let m = c
            .data()
            .shared
            .metrics
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match index_of(id).and_then(|i| m.get(i)) {
            Some((_, _, v)) => *v,
            None => return Ok(status::NOT_FOUND),
        }
    };
    Ok(st(write_u64(&mut c, out, value as u64)))
}
