//! Wasm filters on the proxy-wasm ABI, hosted by wasmtime.
//!
//! - One `Engine` per proxy, with epoch interruption: a ticker thread (started with the first plugin) advances the
//!   epoch every `TICK`, and every guest call gets a deadline of `cpuPerCall`, so an infinite loop traps.
//! - A `Module` is compiled once per digest and shared by every plugin and worker that uses it.
//! - A `PluginHandle` (module + configuration) keeps a few instances, each serving many streams (one context per
//!   stream, as Envoy does); a request uses one instance, locked per callback only. A trapped, timed-out or
//!   out-of-memory instance is discarded and the next request gets a fresh one.
//! - Memory per instance is capped by `StoreLimits`; host calls check every guest pointer (`memory`).

pub mod abi;
pub mod callout;
pub mod host;
mod instance;
mod memory;
pub mod stream;
#[cfg(test)]
mod tests;
mod wasi;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, ExternType, InstancePre, Linker, Module, Val, ValType};

pub use host::CrossPluginState;
use host::HostState;
use instance::PluginInstance;
pub use stream::StreamData;

/// Epoch granularity of the CPU deadline.
pub const TICK: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, thiserror::Error)]
pub enum WasmError {
    #[error("module cannot be loaded: {0}")]
    Load(String),
    #[error("{0}")]
    Rejected(String),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("exceeded its CPU limit of {0:?} per call")]
    Timeout(Duration),
    #[error("ran out of memory: {0}")]
    OutOfMemory(String),
}

impl WasmError {
    pub fn kind(&self) -> &'static str {
        match self {
            WasmError::Load(_) => "load",
            WasmError::Rejected(_) => "rejected",
            WasmError::Trap(_) => "trap",
            WasmError::Timeout(_) => "timeout",
            WasmError::OutOfMemory(_) => "oom",
        }
    }
}

/// A plugin's identity and configuration, as the filter sees it.
#[derive(Debug)]
pub struct PluginMeta {
    pub name: String,
    pub root_id: String,
    pub config: Vec<u8>,
    pub env: Vec<(String, String)>,
    pub node_id: String,
    pub fail_open: bool,
    pub memory_limit: usize,
    pub cpu_per_call: Duration,
    /// Most request-body bytes held while the filter pauses on the body.
    pub body_limit: usize,
    pub started: tokio::time::Instant,
}

/// The engine, compiled modules by digest, and state shared by all filters of this proxy.
pub struct WasmRuntime {
    engine: Engine,
    linker: Linker<HostState>,
    modules: Mutex<HashMap<String, Module>>,
    pub shared: Arc<CrossPluginState>,
    ticker: OnceLock<()>,
    /// Live plugins, for queue-ready notifications (by the address of their `PluginMeta`).
    handles: Arc<Mutex<Vec<std::sync::Weak<PluginHandle>>>>,
    slots: usize,
    /// On-disk cache of compiled code, keyed by module and engine settings (wasmtime's own cache).
    pub cache: Option<wasmtime::Cache>,
}

impl WasmRuntime {
    /// `cache_dir`: where compiled modules are kept across restarts (None: compile every time).
    pub fn new(slots: usize, cache_dir: Option<std::path::PathBuf>) -> wasmtime::Result<Self> {
        Self::with_shared(slots, cache_dir, Arc::default())
    }

    pub fn with_shared(
        slots: usize,
        cache_dir: Option<std::path::PathBuf>,
        shared: Arc<CrossPluginState>,
    ) -> wasmtime::Result<Self> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let cache = match cache_dir {
            Some(dir) => {
                std::fs::create_dir_all(&dir)?;
                let mut cc = wasmtime::CacheConfig::new();
                cc.with_directory(dir);
                let cache = wasmtime::Cache::new(cc)?;
                config.cache(Some(cache.clone()));
                Some(cache)
            }
            None => None,
        };
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        host::link(&mut linker)?;
        wasi::link(&mut linker)?;
        Ok(WasmRuntime {
            engine,
            linker,
            modules: Mutex::new(HashMap::new()),
            shared,
            ticker: OnceLock::new(),
            handles: Arc::default(),
            slots: slots.clamp(1, 16),
            cache,
        })
    }

    fn start_ticker(&self) {
        self.ticker.get_or_init(|| {
            let engine = self.engine.clone();
            let spawned = std::thread::Builder::new().name("meshwork-wasm-epoch".into()).spawn(move || loop {
                std::thread::sleep(TICK);
                engine.increment_epoch();
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the wasm epoch ticker: CPU limits will not be enforced");
            }
        });
    }

    pub fn has_module(&self, digest: &str) -> bool {
        self.modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(digest)
    }

    pub fn module_digests(&self) -> Vec<String> {
        self.modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Verifies and compiles a module once per digest.
    pub fn add_module(&self, digest: &str, code: &[u8]) -> Result<(), WasmError> {
        if self.has_module(digest) {
            return Ok(());
        }
        let actual = hex(&Sha256::digest(code));
        if actual != digest {
            return Err(WasmError::Load(format!(
                "sha256 mismatch: expected {digest}, got {actual}"
            )));
        }
        let module =
            Module::new(&self.engine, code).map_err(|e| WasmError::Load(format!("{e:#}")))?;
        self.modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest.to_string(), module);
        Ok(())
    }

    /// A linker for this module: the host functions, plus a stub for every import the host does not define (or
    /// defines with another signature), returning UNIMPLEMENTED (env) or ENOSYS (WASI) if ever called, so that
    /// importing a function never fails instantiation.
    fn linker_for(&self, module: &Module) -> wasmtime::Result<Linker<HostState>> {
        let mut linker = self.linker.clone();
        linker.allow_shadowing(true);
        let mut probe = probe_store(&self.engine);
        for import in module.imports() {
            let ExternType::Func(ty) = import.ty() else {
                continue;
            };
            let same_type = match self.linker.get(&mut probe, import.module(), import.name()) {
                Ok(wasmtime::Extern::Func(f)) => wasmtime::FuncType::eq(&f.ty(&probe), &ty),
                _ => false,
            };
            if same_type {
                continue;
            }
            let code = if import.module().starts_with("wasi") {
                abi::wasi::NOSYS
            } else {
                abi::status::UNIMPLEMENTED
            };
            let (module_name, name) = (import.module().to_string(), import.name().to_string());
            let results: Vec<ValType> = ty.results().collect();
            linker.func_new(
                &module_name,
                &name,
                ty.clone(),
                move |_caller, _params, out| {
                    for (slot, ty) in out.iter_mut().zip(&results) {
                        *slot = match ty {
                            ValType::I32 => Val::I32(code),
                            ValType::I64 => Val::I64(i64::from(code)),
                            ValType::F32 => Val::F32(0),
                            ValType::F64 => Val::F64(0),
                            _ => Val::I32(0),
                        };
                    }
                    Ok(())
                },
            )?;
            tracing::debug!(module = %module_name, name = %name, "wasm import stubbed");
        }
        Ok(linker)
    }

    /// Builds a plugin from a compiled module and its configuration, and proves it works: one instance is created
    /// and configured now (a filter that rejects its configuration fails here, so the snapshot is NACKed).
    pub fn plugin(&self, digest: &str, meta: PluginMeta) -> Result<Arc<PluginHandle>, WasmError> {
        let module = self
            .modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .cloned()
            .ok_or_else(|| WasmError::Load(format!("module {digest} was never received")))?;
        let linker = self
            .linker_for(&module)
            .map_err(|e| WasmError::Load(format!("{e:#}")))?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| WasmError::Load(format!("{e:#}")))?;
        self.start_ticker();
        let meta = Arc::new(meta);
        let first = PluginInstance::new(&self.engine, &pre, meta.clone(), self.shared.clone())?;
        let tick = first.tick_period();
        let slots: Vec<Mutex<Option<PluginInstance>>> =
            (0..self.slots).map(|_| Mutex::new(None)).collect();
        if let Some(slot) = slots.first() {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(first);
        }
        let handle = Arc::new(PluginHandle {
            meta,
            digest: digest.to_string(),
            engine: self.engine.clone(),
            pre,
            shared: self.shared.clone(),
            slots,
            next: AtomicUsize::new(0),
            failures: Default::default(),
            calls: prometheus_client::metrics::histogram::Histogram::new(CALL_BUCKETS),
        });
        if let Some(period) = tick {
            spawn_ticker(&handle, period);
        }
        let calls = handle.run(0, None, |i| Ok(i.take_calls()));
        if let Ok(Some((calls, id))) = calls {
            handle.send_root_calls(0, id, calls);
        }
        self.register(&handle);
        Ok(handle)
    }
}

/// Calls `proxy_on_tick` on every live instance of the plugin each `period`, on the runtime that built the plugin.
/// Holds only a weak reference: the ticker ends when a snapshot swap drops the plugin.
impl WasmRuntime {
    /// Remembers a plugin for queue notifications, and starts the task that delivers them (once).
    fn register(&self, handle: &Arc<PluginHandle>) {
        let mut handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        handles.retain(|h| h.strong_count() > 0);
        handles.push(Arc::downgrade(handle));
        drop(handles);
        if self.shared.queue_ready.get().is_some() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, u32)>();
        if self.shared.queue_ready.set(tx).is_err() {
            return;
        }
        let handles = Arc::downgrade(&self.handles);
        rt.spawn(async move {
            while let Some((owner, queue)) = rx.recv().await {
                let Some(handles) = handles.upgrade() else {
                    return;
                };
                let target = handles
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .filter_map(std::sync::Weak::upgrade)
                    .find(|h| Arc::as_ptr(&h.meta) as usize == owner);
                if let Some(plugin) = target {
                    plugin.queue_ready(queue);
                }
            }
        });
    }
}

fn spawn_ticker(handle: &Arc<PluginHandle>, period: Duration) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(plugin = %handle.meta.name, "no runtime to run tick timers on; ticks disabled");
        return;
    };
    let weak = Arc::downgrade(handle);
    rt.spawn(async move {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            interval.tick().await;
            let Some(plugin) = weak.upgrade() else { return };
            for slot in 0..plugin.slots.len() {
                let mut guard = plugin.slots[slot].lock().unwrap_or_else(|p| p.into_inner());
                let mut calls = Vec::new();
                if let Some(instance) = guard.as_mut() {
                    match instance.on_tick() {
                        Ok(()) => calls = instance.take_calls(),
                        Err(e) => {
                            *guard = None;
                            plugin.record(&e);
                        }
                    }
                }
                let id = guard.as_ref().map(|i| i.id);
                drop(guard);
                if let Some(id) = id {
                    plugin.send_root_calls(slot, id, calls);
                }
            }
        }
    });
}

/// A throw-away store, only to ask the linker for the types of its definitions.
fn probe_store(engine: &Engine) -> wasmtime::Store<HostState> {
    let meta = Arc::new(PluginMeta {
        name: String::new(),
        root_id: String::new(),
        config: Vec::new(),
        env: Vec::new(),
        node_id: String::new(),
        fail_open: false,
        memory_limit: 0,
        cpu_per_call: Duration::ZERO,
        body_limit: 0,
        started: tokio::time::Instant::now(),
    });
    let state = HostState {
        memory: None,
        alloc: None,
        limits: Default::default(),
        meta,
        shared: Arc::default(),
        stream: None,
        root_id: 0,
        closed: false,
        tick_ms: 0,
        calls: Vec::new(),
        next_token: 0,
        call_response: None,
        call_dirty: false,
    };
    wasmtime::Store::new(engine, state)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The Wasm runtime, created on the first snapshot that uses a plugin: a proxy without filters never pays for an
/// engine (its memory shows in RSS).
pub struct LazyWasm {
    cell: OnceLock<Arc<WasmRuntime>>,
    slots: usize,
    cache_dir: Option<std::path::PathBuf>,
    pub shared: Arc<CrossPluginState>,
}

impl LazyWasm {
    pub fn new(slots: usize, cache_dir: Option<std::path::PathBuf>) -> Self {
        LazyWasm {
            cell: OnceLock::new(),
            slots,
            cache_dir,
            shared: Arc::default(),
        }
    }

    pub fn get(&self) -> Result<&Arc<WasmRuntime>, String> {
        if self.cell.get().is_none() {
            let rt =
                WasmRuntime::with_shared(self.slots, self.cache_dir.clone(), self.shared.clone())
                    .map_err(|e| format!("wasm engine: {e:#}"))?;
            let _ = self.cell.set(Arc::new(rt));
        }
        self.cell
            .get()
            .ok_or_else(|| "wasm engine unavailable".to_string())
    }

    pub fn existing(&self) -> Option<&Arc<WasmRuntime>> {
        self.cell.get()
    }
}

/// Counts of failures by kind, for the admin /metrics endpoint.
#[derive(Debug, Default)]
pub struct Failures {
    pub trap: AtomicU64,
    pub timeout: AtomicU64,
    pub oom: AtomicU64,
    pub other: AtomicU64,
}

/// Buckets of `meshwork_wasm_call_duration_seconds`: a header callback takes microseconds; 5 ms is a slow one.
const CALL_BUCKETS: [f64; 12] = [
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.025, 0.1,
];

/// A configured plugin: compiled module, configuration, and a few ready instances.
pub struct PluginHandle {
    pub meta: Arc<PluginMeta>,
    pub digest: String,
    engine: Engine,
    pre: InstancePre<HostState>,
    shared: Arc<CrossPluginState>,
    slots: Vec<Mutex<Option<PluginInstance>>>,
    next: AtomicUsize,
    pub failures: Failures,
    /// How long each call into the filter took (`meshwork_wasm_call_duration_seconds`).
    pub calls: prometheus_client::metrics::histogram::Histogram,
}

impl std::fmt::Debug for PluginHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHandle")
            .field("name", &self.meta.name)
            .field("digest", &self.digest)
            .finish()
    }
}

impl PluginHandle {
    /// Picks the instance slot a new stream will use (round robin).
    pub fn pick_slot(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()
    }

    /// Runs `f` on the slot's instance and returns the instance's id with the result. With `expected: None` a
    /// missing instance is created (a new stream); with `Some(id)` the call only happens on that same instance
    /// (`Ok(None)` if it has been replaced meanwhile). A failure discards the instance.
    pub fn run<T>(
        &self,
        slot: usize,
        expected: Option<u64>,
        f: impl FnOnce(&mut PluginInstance) -> Result<T, WasmError>,
    ) -> Result<Option<(T, u64)>, WasmError> {
        let mut guard = self.slots[slot % self.slots.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match (guard.as_ref(), expected) {
            (Some(i), Some(id)) if i.id != id => return Ok(None),
            (None, Some(_)) => return Ok(None),
            (None, None) => {
                *guard = Some(
                    PluginInstance::new(
                        &self.engine,
                        &self.pre,
                        self.meta.clone(),
                        self.shared.clone(),
                    )
                    .inspect_err(|e| self.record(e))?,
                );
            }
            _ => {}
        }
        let Some(instance) = guard.as_mut() else {
            return Ok(None);
        };
        let id = instance.id;
        let started = tokio::time::Instant::now();
        let result = f(instance);
        self.calls.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(v) => Ok(Some((v, id))),
            Err(e) => {
                *guard = None;
                self.record(&e);
                Err(e)
            }
        }
    }

    /// Where this plugin's callouts go (None until the proxy installs it).
    pub fn shared_callouts(&self) -> Option<Arc<dyn callout::Callouts>> {
        self.shared.callouts()
    }

    /// Sends callouts a root context made (from configure, a tick or a queue notification) and delivers each
    /// answer to that root context, on the same instance; callouts made while answering are sent in turn.
    pub fn send_root_calls(
        self: &Arc<Self>,
        slot: usize,
        instance: u64,
        calls: Vec<callout::Callout>,
    ) {
        if calls.is_empty() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(plugin = %self.meta.name, "no runtime to send http callouts on; dropped");
            return;
        };
        for call in calls {
            let plugin = Arc::downgrade(self);
            let callouts = self.shared.callouts();
            rt.spawn(async move {
                let response = callout::answer(callouts, call.clone()).await;
                let Some(plugin) = plugin.upgrade() else {
                    return;
                };
                let more = plugin.run(slot, Some(instance), |i| {
                    i.on_http_call_response(None, &call, response)?;
                    Ok(i.take_calls())
                });
                if let Ok(Some((more, _))) = more {
                    plugin.send_root_calls(slot, instance, more);
                }
            });
        }
    }

    /// `proxy_on_queue_ready` on one live instance (creating one if none is).
    fn queue_ready(self: &Arc<Self>, queue_id: u32) {
        let slot = (0..self.slots.len())
            .find(|s| {
                self.slots[*s]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_some()
            })
            .unwrap_or(0);
        if let Ok(Some((calls, id))) = self.run(slot, None, |i| {
            i.on_queue_ready(queue_id)?;
            Ok(i.take_calls())
        }) {
            self.send_root_calls(slot, id, calls);
        }
    }

    fn record(&self, e: &WasmError) {
        let counter = match e {
            WasmError::Trap(_) => &self.failures.trap,
            WasmError::Timeout(_) => &self.failures.timeout,
            WasmError::OutOfMemory(_) => &self.failures.oom,
            _ => &self.failures.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(plugin = %self.meta.name, kind = e.kind(), error = %e, "wasm filter failed; instance discarded");
    }
}

/// Builds `PluginInstance` for callers outside this module (the filter chain).
pub use instance::PluginInstance as Instance;
