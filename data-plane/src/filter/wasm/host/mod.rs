//! The host side of the proxy-wasm ABI v0.2.1 (and 0.2.0, which differs only by `proxy_get_log_level`): every
//! `env` function is linked. Calls this host does not implement yet return UNIMPLEMENTED (listed in
//! docs/filters.md), never a trap; statuses are exactly the spec's, because the Rust SDK panics on any other.
//!
//! This module owns the state host calls work on (`HostState` per instance, `CrossPluginState` across plugins)
//! and the helpers every area uses; each ABI area registers its own functions in its own file.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use wasmtime::{Caller, Linker};

use super::abi::status;
use super::callout::{CallResponse, Callout, Callouts};
use super::stream::StreamData;
use super::PluginMeta;

/// The value of a guest-memory read, or return its status to the guest. Defined before the area modules so that
/// they see it.
macro_rules! ok_or_status {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(status) => return Ok(status),
        }
    };
}

mod buffers;
mod callouts;
mod control;
mod foreign;
mod headers;
mod logging;
pub mod metrics;
mod properties;
mod queues;
mod shared_data;
mod time;

#[cfg(test)]
mod props;

/// Links every `env` function of ABI 0.2.1 (plus the 0.1.0 names, harmless for newer modules).
pub fn link(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    logging::link(l)?;
    time::link(l)?;
    buffers::link(l)?;
    headers::link(l)?;
    control::link(l)?;
    properties::link(l)?;
    shared_data::link(l)?;
    queues::link(l)?;
    metrics::link(l)?;
    callouts::link(l)?;
    foreign::link(l)?;
    Ok(())
}

/// State every plugin of this proxy shares, across all their instances: shared data (with CAS), shared queues,
/// metrics, and the ways out of the sandbox the proxy installs (callouts, queue-ready notifications). There is one
/// per `WasmRuntime` (the proxy has one), because all plugins share one VM id (`plugin_vm_id` is empty) and the
/// spec scopes shared data and queues by VM id.
#[derive(Default)]
pub struct CrossPluginState {
    data: Mutex<HashMap<String, (Vec<u8>, u32)>>,
    queues: Mutex<Vec<queues::Queue>>,
    /// The metrics filters defined, indexed by metric id - 1.
    metrics: Mutex<Vec<metrics::Defined>>,
    /// Where `proxy_http_call` requests go (installed by the proxy; absent in unit tests = every upstream unknown).
    pub callouts: OnceLock<Arc<dyn Callouts>>,
    /// Told (owner, queue id) on every enqueue, so the owner's `proxy_on_queue_ready` runs.
    pub queue_ready: OnceLock<tokio::sync::mpsc::UnboundedSender<(usize, u32)>>,
}

impl CrossPluginState {
    pub fn callouts(&self) -> Option<Arc<dyn Callouts>> {
        self.callouts.get().cloned()
    }

    /// The metrics filters defined, for the admin endpoint (and tests), read under their lock.
    pub fn with_metrics<T>(&self, f: impl FnOnce(&[metrics::Defined]) -> T) -> T {
        f(&self.metrics.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// (name, type, value) of the counters and gauges filters defined (a histogram's value is its sum).
    pub fn metric_values(&self) -> Vec<(String, i32, i64)> {
        self.with_metrics(|all| {
            all.iter()
                .map(|d| {
                    let v = match &d.value {
                        metrics::Value::Counter(v) | metrics::Value::Gauge(v) => *v,
                        metrics::Value::Histogram(_) => 0,
                    };
                    (d.name.clone(), d.value.type_id(), v)
                })
                .collect()
        })
    }
}

/// Caps an instance's linear memory, and remembers when it said no, so a failure after a refused grow is reported
/// as out-of-memory rather than as whatever trap the guest's allocator turns it into.
#[derive(Debug, Default)]
pub struct MemoryCap {
    pub limit: usize,
    pub refused: bool,
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allow = desired <= self.limit;
        self.refused |= !allow;
        Ok(allow)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

pub struct HostState {
    pub limits: MemoryCap,
    /// The guest's memory and allocator, looked up once per instance (a lookup by name costs more than a call).
    pub memory: Option<wasmtime::Memory>,
    pub alloc: Option<wasmtime::TypedFunc<i32, i32>>,
    pub meta: Arc<PluginMeta>,
    pub shared: Arc<CrossPluginState>,
    /// The stream whose callback is running (None during root-context calls).
    pub stream: Option<Box<StreamData>>,
    pub root_id: u32,
    /// Set by a callback that resets the stream (`proxy_close_stream`).
    pub closed: bool,
    /// Requested with `proxy_set_tick_period_milliseconds` (0 = off).
    pub tick_ms: u32,
    /// `proxy_http_call`s made during the running callback, for its caller to send.
    pub calls: Vec<Callout>,
    pub next_token: u32,
    /// During `proxy_on_http_call_response`: the answer the filter reads.
    pub call_response: Option<CallResponse>,
    /// Edits to a callout's response are allowed and go nowhere.
    pub call_dirty: bool,
}

/// What every host function takes and returns: the caller (guest memory and `HostState`), and a proxy-wasm
/// status; an `Err` is a trap (only a trap inside the guest's allocator causes one).
type C<'a> = Caller<'a, HostState>;
type R = wasmtime::Result<i32>;

fn st(r: Result<(), i32>) -> i32 {
    match r {
        Ok(()) => status::OK,
        Err(s) => s,
    }
}

/// The index behind a 1-based id the host handed out (queues, metrics); None for 0, which is never handed out.
fn index_of(id: i32) -> Option<usize> {
    (id as u32 as usize).checked_sub(1)
}
