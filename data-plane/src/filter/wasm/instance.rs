//! One instance of a plugin: a wasmtime store with its limits, the root context, and the HTTP stream callbacks.
//! Many streams share an instance (each has its own context id), as in Envoy; the instance is locked for the
//! duration of each callback only.

use std::sync::Arc;

use wasmtime::{Engine, InstancePre, Store, TypedFunc};

use super::callout::{CallResponse, Callout};
use super::host::{CrossPluginState, HostState, MemoryCap};
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
    /// Stands in for the stream while its box is lent to the store during a callback (see `with_stream`).
    spare: Option<Box<StreamData>>,
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
        shared: Arc<CrossPluginState>,
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
            spare: None,
        };
        let root = ROOT_CONTEXT as i32;
        me.call(|e| e.context_create.as_ref(), (root, 0))?;
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
        guarded(&mut self.store, self.cpu_ticks, f)
    }

    /// Runs a stream callback with `stream` installed as the current stream. The stream's box is lent to the store
    /// (a pointer swap with a spare box: no copy of the stream's data per callback).
    fn with_stream<T>(
        &mut self,
        stream: &mut Box<StreamData>,
        f: impl FnOnce(&mut Self) -> Result<T, WasmError>,
    ) -> Result<T, WasmError> {
        let spare = self.spare.take().unwrap_or_default();
        let lent = std::mem::replace(stream, spare);
        let state = self.store.data_mut();
        state.stream = Some(lent);
        state.closed = false;
        let r = f(self);
        if let Some(lent) = self.store.data_mut().stream.take() {
            self.spare = Some(std::mem::replace(stream, lent));
        }
        r
    }

    /// Calls export `f` under the CPU deadline (the exports are borrowed, not cloned: a `TypedFunc` clone
    /// registers its type anew, which showed in profiles).
    fn call<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
        &mut self,
        f: fn(&Exports) -> Option<&TypedFunc<P, R>>,
        args: P,
    ) -> Result<Option<R>, WasmError> {
        let Self {
            store,
            exports,
            cpu_ticks,
            ..
        } = self;
        match f(exports) {
            Some(func) => guarded(store, *cpu_ticks, |s| func.call(s, args)).map(Some),
            None => Ok(None),
        }
    }

    pub fn new_context(&mut self, stream: &mut Box<StreamData>) -> Result<(), WasmError> {
        stream.context_id = self.next_context;
        self.next_context = self.next_context.wrapping_add(1).max(ROOT_CONTEXT + 1);
        if self.exports.context_create.is_none() {
            return Ok(());
        }
        let id = stream.context_id as i32;
        self.with_stream(stream, |me| {
            me.call(|e| e.context_create.as_ref(), (id, ROOT_CONTEXT as i32))
                .map(drop)
        })
    }

    /// `proxy_on_request_headers` / `proxy_on_response_headers`; returns the action (0 = continue).
    pub fn on_headers(
        &mut self,
        stream: &mut Box<StreamData>,
        response: bool,
        end_of_stream: bool,
    ) -> Result<i32, WasmError> {
        let f: fn(&Exports) -> Option<&F3R> = if response {
            |e| e.response_headers.as_ref()
        } else {
            |e| e.request_headers.as_ref()
        };
        if f(&self.exports).is_none() {
            return Ok(0);
        }
        let id = stream.context_id as i32;
        let n = if response {
            stream.response_headers.count()
        } else {
            stream.request_headers.count()
        } as i32;
        self.with_stream(stream, |me| {
            me.call(f, (id, n, i32::from(end_of_stream)))
                .map(Option::unwrap_or_default)
        })
    }

    pub fn has_headers_callback(&self, response: bool) -> bool {
        if response {
            self.exports.response_headers.is_some()
        } else {
            self.exports.request_headers.is_some()
        }
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
        stream: &mut Box<StreamData>,
        response: bool,
        end_of_stream: bool,
    ) -> Result<i32, WasmError> {
        let f: fn(&Exports) -> Option<&F3R> = if response {
            |e| e.response_body.as_ref()
        } else {
            |e| e.request_body.as_ref()
        };
        if f(&self.exports).is_none() {
            return Ok(0);
        }
        let id = stream.context_id as i32;
        let body = if response {
            &stream.response_body
        } else {
            &stream.request_body
        };
        let size = body.as_ref().map_or(0, |b| b.len()) as i32;
        self.with_stream(stream, |me| {
            me.call(f, (id, size, i32::from(end_of_stream)))
                .map(Option::unwrap_or_default)
        })
    }

    /// `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`.
    pub fn finish(&mut self, stream: &mut Box<StreamData>) -> Result<(), WasmError> {
        let id = stream.context_id as i32;
        self.with_stream(stream, |me| {
            me.call(|e| e.done.as_ref(), id)?;
            me.call(|e| e.log.as_ref(), id)?;
            me.call(|e| e.delete.as_ref(), id)?;
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
        self.call(|e| e.tick.as_ref(), ROOT_CONTEXT as i32)
            .map(drop)
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
        stream: &mut Box<StreamData>,
        response: bool,
    ) -> Result<i32, WasmError> {
        let (f, n): (fn(&Exports) -> Option<&F2R>, usize) = if response {
            (
                |e| e.response_trailers.as_ref(),
                stream.response_trailers.as_ref().map_or(0, Vec::len),
            )
        } else {
            (
                |e| e.request_trailers.as_ref(),
                stream.request_trailers.as_ref().map_or(0, Vec::len),
            )
        };
        if f(&self.exports).is_none() {
            return Ok(0);
        }
        let id = stream.context_id as i32;
        self.with_stream(stream, |me| {
            me.call(f, (id, n as i32)).map(Option::unwrap_or_default)
        })
    }

    /// `proxy_on_http_call_response` for `call`, on its stream context (`stream`) or the root context (None).
    pub fn on_http_call_response(
        &mut self,
        stream: Option<&mut Box<StreamData>>,
        call: &Callout,
        response: CallResponse,
    ) -> Result<(), WasmError> {
        if self.exports.http_call_response.is_none() {
            return Ok(());
        }
        let args = (
            call.context_id as i32,
            call.token as i32,
            response.headers.len() as i32,
            response.body.len() as i32,
            response.trailers.len() as i32,
        );
        self.store.data_mut().call_response = Some(response);
        let f: fn(&Exports) -> Option<&F5> = |e| e.http_call_response.as_ref();
        let r = match stream {
            Some(stream) => self.with_stream(stream, |me| me.call(f, args)),
            None => self.call(f, args),
        };
        self.store.data_mut().call_response = None;
        r.map(drop)
    }

    /// `proxy_on_queue_ready` on the root context.
    pub fn on_queue_ready(&mut self, queue_id: u32) -> Result<(), WasmError> {
        self.call(
            |e| e.queue_ready.as_ref(),
            (ROOT_CONTEXT as i32, queue_id as i32),
        )
        .map(drop)
    }
}

/// Runs one guest call under the per-call CPU deadline; a failure is classified (trap, timeout, out of memory).
fn guarded<T>(
    store: &mut Store<HostState>,
    cpu_ticks: u64,
    f: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<T>,
) -> Result<T, WasmError> {
    store.set_epoch_deadline(cpu_ticks);
    f(store).map_err(|e| {
        let d = store.data();
        classify(e, &d.meta, d.limits.refused)
    })
}
