//! One instance of a plugin: a wasmtime store with its limits, the root context, and the HTTP stream callbacks.
//! Many streams share an instance (each has its own context id), as in Envoy; the instance is locked for the
//! duration of each callback only.

use std::sync::Arc;

use wasmtime::{Engine, InstancePre, Store, TypedFunc};

use super::callout::{CallResponse, Callout};
use super::host::{HostState, MemoryCap, Shared};
use super::stream::{HeaderAccess, StreamData};
use super::{PluginMeta, WasmError, TICK};

pub const ROOT_CONTEXT: u32 = 1;

type F1 = TypedFunc<i32, ()>;
type F1R = TypedFunc<i32, i32>;
type F2 = TypedFunc<(i32, i32), ()>;
type F2R = TypedFunc<(i32, i32), i32>;
type F3R = TypedFunc<(i32, i32, i32), i32>;
type F5 = TypedFunc<(i32, i32, i32, i32, i32), ()>;

struct Exports {
    context_create: Option<F2>,
    request_headers: Option<F3R>,
    response_headers: Option<F3R>,
    request_body: Option<F3R>,
    response_body: Option<F3R>,
    request_trailers: Option<F2R>,
    response_trailers: Option<F2R>,
    http_call_response: Option<F5>,
    queue_ready: Option<F2>,
    done: Option<F1R>,
    tick: Option<F1>,
    log: Option<F1>,
    delete: Option<F1>,
}

static INSTANCE_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub struct PluginInstance {
    /// Unique per instance: a stream that started on another (since discarded) instance must not call this one.
    pub id: u64,
    store: Store<HostState>,
    exports: Exports,
    next_context: u32,
    cpu_ticks: u64,
}

fn classify(err: wasmtime::Error, meta: &PluginMeta, memory_refused: bool) -> WasmError {
    let text = format!("{err:#}");
    if matches!(
        err.downcast_ref::<wasmtime::Trap>(),
        Some(wasmtime::Trap::Interrupt)
    ) {
        WasmError::Timeout(meta.cpu_per_call)
    } else if memory_refused {
        WasmError::OutOfMemory(format!(
            "memory limit of {} bytes reached ({text})",
            meta.memory_limit
        ))
    } else {
        WasmError::Trap(text)
    }
}

impl PluginInstance {
    /// Instantiates, runs the module's initialisation, creates the root context and configures it. A `false` from
    /// `proxy_on_vm_start` or `proxy_on_configure` is `WasmError::Rejected`.
    pub fn new(
        engine: &Engine,
        pre: &InstancePre<HostState>,
        meta: Arc<PluginMeta>,
        shared: Arc<Shared>,
    ) -> Result<Self, WasmError> {
        let limits = MemoryCap {
            limit: meta.memory_limit,
            refused: false,
        };
        let state = HostState {
            limits,
            memory: None,
            alloc: None,
            meta: meta.clone(),
            shared,
            stream: None,
            root_id: ROOT_CONTEXT,
            closed: false,
            tick_ms: 0,
            calls: Vec::new(),
            next_token: 0,
            call_response: None,
            call_dirty: false,
        };
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        let cpu_ticks = (meta.cpu_per_call.as_millis() as u64 / TICK.as_millis() as u64).max(1) + 1;
        store.set_epoch_deadline(cpu_ticks);
        let instance = pre
            .instantiate(&mut store)
            .map_err(|e| classify(e, &meta, false))?;
        let memory = instance.get_memory(&mut store, "memory");
        let alloc = ["proxy_on_memory_allocate", "malloc"]
            .iter()
            .find_map(|n| instance.get_typed_func::<i32, i32>(&mut store, n).ok());
        store.data_mut().memory = memory;
        store.data_mut().alloc = alloc;
        let abi_ok = ["proxy_abi_version_0_2_1", "proxy_abi_version_0_2_0"]
            .iter()
            .any(|n| instance.get_export(&mut store, n).is_some());
        if !abi_ok {
            return Err(WasmError::Load("missing or unknown proxy-wasm ABI version (expected a proxy_abi_version_0_2_1 or _0_2_0 export)".into()));
        }
        for init in ["_initialize", "_start"] {
            if let Ok(f) = instance.get_typed_func::<(), ()>(&mut store, init) {
                f.call(&mut store, ())
                    .map_err(|e| classify(e, &meta, store.data().limits.refused))?;
                break;
            }
        }
        let f2 = |store: &mut Store<HostState>, n: &str| {
            instance
                .get_typed_func::<(i32, i32), ()>(&mut *store, n)
                .ok()
        };
        let f2r = |store: &mut Store<HostState>, n: &str| {
            instance
                .get_typed_func::<(i32, i32), i32>(&mut *store, n)
                .ok()
        };
        let f3r = |store: &mut Store<HostState>, n: &str| {
            instance
                .get_typed_func::<(i32, i32, i32), i32>(&mut *store, n)
                .ok()
        };
        let exports = Exports {
            context_create: f2(&mut store, "proxy_on_context_create"),
            request_headers: f3r(&mut store, "proxy_on_request_headers"),
            response_headers: f3r(&mut store, "proxy_on_response_headers"),
            request_body: f3r(&mut store, "proxy_on_request_body"),
            response_body: f3r(&mut store, "proxy_on_response_body"),
            request_trailers: f2r(&mut store, "proxy_on_request_trailers"),
            response_trailers: f2r(&mut store, "proxy_on_response_trailers"),
            http_call_response: instance
                .get_typed_func::<(i32, i32, i32, i32, i32), ()>(
                    &mut store,
                    "proxy_on_http_call_response",
                )
                .ok(),
            queue_ready: f2(&mut store, "proxy_on_queue_ready"),
            done: instance
                .get_typed_func::<i32, i32>(&mut store, "proxy_on_done")
                .ok(),
            tick: instance
                .get_typed_func::<i32, ()>(&mut store, "proxy_on_tick")
                .ok(),
            log: instance
                .get_typed_func::<i32, ()>(&mut store, "proxy_on_log")
                .ok(),
            delete: instance
                .get_typed_func::<i32, ()>(&mut store, "proxy_on_delete")
                .ok(),
        };
        let vm_start = f2r(&mut store, "proxy_on_vm_start");
        let configure = f2r(&mut store, "proxy_on_configure");
        let id = INSTANCE_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut me = PluginInstance {
            id,
            store,
            exports,
            next_context: ROOT_CONTEXT + 1,
            cpu_ticks,
        };
        let root = ROOT_CONTEXT as i32;
        if let Some(f) = me.exports.context_create.clone() {
            me.guarded(|s| f.call(s, (root, 0)))?;
        }
        if let Some(f) = vm_start {
            if me.guarded(|s| f.call(s, (root, 0)))? == 0 {
                return Err(WasmError::Rejected(
                    "proxy_on_vm_start returned false".into(),
                ));
            }
        }
        if let Some(f) = configure {
            let size = meta.config.len() as i32;
            if me.guarded(|s| f.call(s, (root, size)))? == 0 {
                return Err(WasmError::Rejected(
                    "the filter rejected its configuration (proxy_on_configure returned false)"
                        .into(),
                ));
            }
        }
        Ok(me)
    }

    /// Runs one guest call under the per-call CPU deadline.
    fn guarded<T>(
        &mut self,
        f: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<T>,
    ) -> Result<T, WasmError> {
        self.store.set_epoch_deadline(self.cpu_ticks);
        let meta = self.store.data().meta.clone();
        f(&mut self.store).map_err(|e| classify(e, &meta, self.store.data().limits.refused))
    }

    /// Runs a stream callback with `stream` installed as the current stream.
    fn with_stream<T>(
        &mut self,
        stream: &mut StreamData,
        f: impl FnOnce(&mut Self) -> Result<T, WasmError>,
    ) -> Result<T, WasmError> {
        self.store.data_mut().stream = Some(std::mem::take(stream));
        self.store.data_mut().closed = false;
        let r = f(self);
        if let Some(s) = self.store.data_mut().stream.take() {
            *stream = s;
        }
        r
    }

    pub fn new_context(&mut self, stream: &mut StreamData) -> Result<(), WasmError> {
        stream.context_id = self.next_context;
        self.next_context = self.next_context.wrapping_add(1).max(ROOT_CONTEXT + 1);
        let id = stream.context_id as i32;
        match self.exports.context_create.clone() {
            Some(f) => self.with_stream(stream, |me| {
                me.guarded(|s| f.call(s, (id, ROOT_CONTEXT as i32)))
            }),
            None => Ok(()),
        }
    }

    /// `proxy_on_request_headers` / `proxy_on_response_headers`; returns the action (0 = continue).
    pub fn on_headers(
        &mut self,
        stream: &mut StreamData,
        response: bool,
        end_of_stream: bool,
    ) -> Result<i32, WasmError> {
        let f = if response {
            self.exports.response_headers.clone()
        } else {
            self.exports.request_headers.clone()
        };
        let Some(f) = f else { return Ok(0) };
        let id = stream.context_id as i32;
        let n = if response {
            stream.response_headers.count()
        } else {
            stream.request_headers.count()
        } as i32;
        self.with_stream(stream, |me| {
            me.guarded(|s| f.call(s, (id, n, i32::from(end_of_stream))))
        })
    }

    pub fn has_body_callback(&self, response: bool) -> bool {
        if response {
            self.exports.response_body.is_some()
        } else {
            self.exports.request_body.is_some()
        }
    }

    /// `proxy_on_request_body` / `proxy_on_response_body` with the stream's body buffer for that side; returns the
    /// action (0 = continue).
    pub fn on_body(
        &mut self,
        stream: &mut StreamData,
        response: bool,
        end_of_stream: bool,
    ) -> Result<i32, WasmError> {
        let f = if response {
            self.exports.response_body.clone()
        } else {
            self.exports.request_body.clone()
        };
        let Some(f) = f else { return Ok(0) };
        let id = stream.context_id as i32;
        let body = if response {
            &stream.response_body
        } else {
            &stream.request_body
        };
        let size = body.as_ref().map_or(0, Vec::len) as i32;
        self.with_stream(stream, |me| {
            me.guarded(|s| f.call(s, (id, size, i32::from(end_of_stream))))
        })
    }

    /// `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`.
    pub fn finish(&mut self, stream: &mut StreamData) -> Result<(), WasmError> {
        let id = stream.context_id as i32;
        let (done, log, delete) = (
            self.exports.done.clone(),
            self.exports.log.clone(),
            self.exports.delete.clone(),
        );
        self.with_stream(stream, |me| {
            if let Some(f) = done {
                me.guarded(|s| f.call(s, id))?;
            }
            if let Some(f) = log {
                me.guarded(|s| f.call(s, id))?;
            }
            if let Some(f) = delete {
                me.guarded(|s| f.call(s, id))?;
            }
            Ok(())
        })
    }

    /// The tick period the root context asked for (None: no ticks).
    pub fn tick_period(&self) -> Option<std::time::Duration> {
        let ms = self.store.data().tick_ms;
        (ms > 0 && self.exports.tick.is_some())
            .then(|| std::time::Duration::from_millis(u64::from(ms)))
    }

    /// `proxy_on_tick` on the root context.
    pub fn on_tick(&mut self) -> Result<(), WasmError> {
        match self.exports.tick.clone() {
            Some(f) => self.guarded(|s| f.call(s, ROOT_CONTEXT as i32)),
            None => Ok(()),
        }
    }

    pub fn closed(&self) -> bool {
        self.store.data().closed
    }

    /// The `proxy_http_call`s the last callback made (the caller sends them).
    pub fn take_calls(&mut self) -> Vec<Callout> {
        std::mem::take(&mut self.store.data_mut().calls)
    }

    pub fn has_trailers_callback(&self, response: bool) -> bool {
        if response {
            self.exports.response_trailers.is_some()
        } else {
            self.exports.request_trailers.is_some()
        }
    }

    /// `proxy_on_request_trailers` / `proxy_on_response_trailers` (the trailers are in `stream`); the action.
    pub fn on_trailers(
        &mut self,
        stream: &mut StreamData,
        response: bool,
    ) -> Result<i32, WasmError> {
        let (f, n) = if response {
            (
                self.exports.response_trailers.clone(),
                stream.response_trailers.as_ref().map_or(0, Vec::len),
            )
        } else {
            (
                self.exports.request_trailers.clone(),
                stream.request_trailers.as_ref().map_or(0, Vec::len),
            )
        };
        let Some(f) = f else { return Ok(0) };
        let id = stream.context_id as i32;
        self.with_stream(stream, |me| me.guarded(|s| f.call(s, (id, n as i32))))
    }

    /// `proxy_on_http_call_response` for `call`, on its stream context (`stream`) or the root context (None).
    pub fn on_http_call_response(
        &mut self,
        stream: Option<&mut StreamData>,
        call: &Callout,
        response: CallResponse,
    ) -> Result<(), WasmError> {
        let Some(f) = self.exports.http_call_response.clone() else {
            return Ok(());
        };
        let args = (
            call.context_id as i32,
            call.token as i32,
            response.headers.len() as i32,
            response.body.len() as i32,
            response.trailers.len() as i32,
        );
        self.store.data_mut().call_response = Some(response);
        let r = match stream {
            Some(stream) => self.with_stream(stream, |me| me.guarded(|s| f.call(s, args))),
            None => self.guarded(|s| f.call(s, args)),
        };
        self.store.data_mut().call_response = None;
        r
    }

    /// `proxy_on_queue_ready` on the root context.
    pub fn on_queue_ready(&mut self, queue_id: u32) -> Result<(), WasmError> {
        match self.exports.queue_ready.clone() {
            Some(f) => self.guarded(|s| f.call(s, (ROOT_CONTEXT as i32, queue_id as i32))),
            None => Ok(()),
        }
    }
}
