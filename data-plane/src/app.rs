//! Composition root: runtimes, listeners, the config source (control plane or manifest directory), admin, drain.
//!
//! The data path runs on its own runtime (one current-thread runtime with `--workers 1`); the control-plane
//! client and the admin listener run on a small runtime of their own, so a slow control plane never competes with
//! requests and a busy data path never delays an ACK.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use meshwork_proto as pb;
use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::config::snapshot::{Cluster, Endpoint, Protocol};
use crate::config::{ConfigStore, Snapshot};
use crate::filter::wasm::{LazyWasm, PluginMeta};
use crate::listener;
use crate::stack::{ListenerCtx, Mode};
use crate::upstream::Upstreams;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Sidecar,
    Gateway,
}

#[derive(Debug, Clone)]
pub enum Source {
    ControlPlane(String),
    Manifests {
        dir: PathBuf,
        gateway: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct Options {
    pub source: Source,
    pub role: Role,
    pub node_id: String,
    pub service: String,
    pub namespace: String,
    pub labels: Vec<(String, String)>,
    pub inbound: Option<SocketAddr>,
    pub outbound: Option<SocketAddr>,
    pub app: Option<SocketAddr>,
    pub app_protocol: Protocol,
    pub admin: SocketAddr,
    pub workers: usize,
    pub connect_timeout: Duration,
    pub drain: Duration,
    /// On shutdown, how long to keep serving after deregistering, while peers learn this proxy is gone.
    pub shutdown_delay: Duration,
    /// Compiled Wasm modules are cached here across restarts (None: no disk cache).
    pub wasm_cache_dir: Option<PathBuf>,
}

struct Active {
    port: u16,
    stop: watch::Sender<bool>,
}

/// Gateway listeners come and go with snapshots; this keeps the running set equal to the applied one.
struct ListenerManager {
    data: Handle,
    active: HashMap<Arc<str>, Active>,
}

/// Applies snapshots: check and build, bind new listeners, publish, then retire listeners no longer wanted.
/// Any failure before publishing is a NACK and leaves everything as it was.
pub struct Applier {
    pub store: Arc<ConfigStore>,
    pub wasm: Arc<LazyWasm>,
    /// Resilience state per upstream service, kept across snapshots.
    pub resilience: Arc<crate::resilience::Registry>,
    node_id: String,
    upstreams: Upstreams,
    manage_listeners: bool,
    drain: Duration,
    manager: Mutex<ListenerManager>,
}

impl Applier {
    /// Compiles new modules, builds the snapshot's Wasm plugins (reusing the running ones whose definition did not
    /// change, so their instances and in-flight streams carry on), then the snapshot itself.
    fn build(
        &self,
        version: u64,
        pb: pb::Snapshot,
        modules: Vec<pb::WasmModule>,
    ) -> Result<Snapshot, String> {
        for m in &modules {
            self.wasm
                .get()?
                .add_module(&m.digest, &m.code)
                .map_err(|e| format!("wasm module {}: {e}", m.digest))?;
        }
        let previous = self.store.load();
        let mut plugins = HashMap::new();
        for p in &pb.wasm_plugins {
            let unchanged = previous.source.wasm_plugins.iter().any(|old| old == p);
            let handle = match previous.plugins.get(&p.name) {
                Some(h) if unchanged => h.clone(),
                _ => {
                    let meta = PluginMeta {
                        name: p.name.clone(),
                        root_id: p.root_id.clone(),
                        config: p.config.clone(),
                        env: p.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                        node_id: self.node_id.clone(),
                        fail_open: p.fail_open,
                        memory_limit: usize::try_from(p.memory_limit_bytes).unwrap_or(usize::MAX),
                        cpu_per_call: Duration::from_millis(p.cpu_per_call_ms.max(1)),
                        body_limit: usize::try_from(p.body_buffer_bytes).unwrap_or(usize::MAX),
                        started: tokio::time::Instant::now(),
                    };
                    self.wasm
                        .get()?
                        .plugin(&p.digest, meta)
                        .map_err(|e| format!("wasm plugin {}: {e}", p.name))?
                }
            };
            plugins.insert(p.name.clone(), handle);
        }
        Snapshot::from_proto_with(version, pb, plugins, &self.resilience).map_err(|e| e.to_string())
    }

    /// After a publish: forget the state of clusters that are gone, and run the health checks the policies ask
    /// for (restarting those whose policy changed).
    fn track_resilience(&self) {
        let snap = self.store.load();
        let mut keep: std::collections::HashSet<Arc<str>> = snap.clusters.keys().cloned().collect();
        keep.insert(Arc::from("inbound"));
        for l in snap.listeners.values() {
            for vh in &l.vhosts.hosts {
                for r in &vh.routes {
                    if let Some(p) = &r.policy {
                        keep.insert(p.name.clone());
                    }
                }
            }
        }
        self.resilience.retain(|n| keep.contains(n));
        self.resilience
            .checks
            .retain(|n| snap.clusters.contains_key(n));
        for c in snap.clusters.values() {
            self.resilience
                .checks
                .ensure(&c.rt, &self.store, &self.upstreams);
        }
    }

    pub fn apply(
        &self,
        version: u64,
        pb: pb::Snapshot,
        modules: Vec<pb::WasmModule>,
    ) -> Result<(), String> {
        if version == self.store.version() && pb == self.store.load().source {
            return Ok(()); // a reconnect re-sent what we already serve
        }
        let snap = self.build(version, pb, modules)?;
        let mut mgr = self.manager.lock().unwrap_or_else(|p| p.into_inner());
        let mut bound = Vec::new();
        if self.manage_listeners {
            for l in snap.listeners.values() {
                let unchanged = mgr.active.get(&l.name).is_some_and(|a| a.port == l.port);
                if !unchanged && l.port != 0 {
                    let addr = SocketAddr::from(([127, 0, 0, 1], l.port));
                    // Rebinding a port we already serve under another name would clash with ourselves: stop it first.
                    let same_port: Vec<Arc<str>> = mgr
                        .active
                        .iter()
                        .filter(|(_, a)| a.port == l.port)
                        .map(|(n, _)| n.clone())
                        .collect();
                    let socket = if same_port.is_empty() {
                        listener::bind(addr)
                    } else {
                        Err(std::io::Error::new(
                            std::io::ErrorKind::AddrInUse,
                            "port moves between listeners; not supported live",
                        ))
                    };
                    match socket {
                        Ok(s) => bound.push((l.name.clone(), l.port, s)),
                        Err(e) => {
                            return Err(format!("listener {:?}: cannot bind {addr}: {e}", l.name))
                        }
                    }
                }
            }
        }
        let wanted: HashMap<Arc<str>, u16> = snap
            .listeners
            .values()
            .map(|l| (l.name.clone(), l.port))
            .collect();
        self.store.publish(snap);
        self.track_resilience();
        if self.manage_listeners {
            let retired: Vec<Arc<str>> = mgr
                .active
                .iter()
                .filter(|(n, a)| wanted.get(*n) != Some(&a.port))
                .map(|(n, _)| n.clone())
                .collect();
            for name in retired {
                if let Some(a) = mgr.active.remove(&name) {
                    let _ = a.stop.send(true);
                }
            }
            for (name, port, socket) in bound {
                let (stop, stop_rx) = watch::channel(false);
                let ctx = Arc::new(ListenerCtx {
                    mode: Mode::Routed(name.clone()),
                    store: self.store.clone(),
                    upstreams: self.upstreams.clone(),
                    source: None,
                });
                let drain = self.drain;
                let _guard = mgr.data.enter();
                match tokio::net::TcpListener::from_std(socket) {
                    Ok(l) => {
                        mgr.data.spawn(listener::serve(l, ctx, stop_rx, drain));
                        tracing::info!(listener = %name, port, "listening");
                        mgr.active.insert(name, Active { port, stop });
                    }
                    Err(e) => {
                        tracing::error!(listener = %name, error = %e, "cannot register listener")
                    }
                }
            }
        }
        Ok(())
    }

    fn stop_all(&self) {
        let mgr = self.manager.lock().unwrap_or_else(|p| p.into_inner());
        for a in mgr.active.values() {
            let _ = a.stop.send(true);
        }
    }
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    let mut builder = if opts.workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(opts.workers);
        b
    };
    let rt = builder
        .enable_all()
        .thread_name("meshwork-worker")
        .build()?;
    rt.block_on(main_async(opts))
}

fn control_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

async fn main_async(opts: Options) -> anyhow::Result<()> {
    let store = Arc::new(ConfigStore::default());
    let upstreams = Upstreams::new(opts.connect_timeout);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut static_listeners = Vec::new();

    if opts.role == Role::Sidecar {
        let (Some(inbound), Some(outbound), Some(app)) = (opts.inbound, opts.outbound, opts.app)
        else {
            anyhow::bail!("a sidecar needs --inbound, --outbound and --app");
        };
        let authority = app.to_string().parse().context("--app")?;
        let app_cluster = Arc::new(Cluster::new(
            Arc::from(format!("local-app/{}", opts.service)),
            opts.app_protocol,
            vec![Endpoint {
                addr: app,
                authority,
            }],
        ));
        for (addr, mode) in [
            (inbound, Mode::Inbound(app_cluster)),
            (
                outbound,
                Mode::Routed(Arc::from(meshwork_manifest::translate::OUTBOUND_LISTENER)),
            ),
        ] {
            let l = tokio::net::TcpListener::from_std(
                listener::bind(addr).with_context(|| format!("bind {addr}"))?,
            )?;
            let source = matches!(mode, Mode::Routed(_))
                .then(|| {
                    http::HeaderValue::from_str(&format!("{}.{}", opts.service, opts.namespace))
                        .ok()
                })
                .flatten();
            let ctx = Arc::new(ListenerCtx {
                mode,
                store: store.clone(),
                upstreams: upstreams.clone(),
                source,
            });
            static_listeners.push(tokio::spawn(listener::serve(
                l,
                ctx,
                stop_rx.clone(),
                opts.drain,
            )));
        }
    }

    let wasm = Arc::new(LazyWasm::new(opts.workers, opts.wasm_cache_dir.clone()));
    let callouts = crate::filter::callout::MeshCallouts {
        store: store.clone(),
        upstreams: upstreams.clone(),
    };
    let _ = wasm.shared.callouts.set(Arc::new(callouts));
    let applier = Arc::new(Applier {
        store: store.clone(),
        wasm,
        resilience: Arc::default(),
        node_id: opts.node_id.clone(),
        upstreams: upstreams.clone(),
        manage_listeners: opts.role == Role::Gateway,
        drain: opts.drain,
        manager: Mutex::new(ListenerManager {
            data: Handle::current(),
            active: HashMap::new(),
        }),
    });

    let admin_socket = listener::bind(opts.admin)
        .with_context(|| format!("bind the admin listener on {}", opts.admin))?;
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
    let (leaving_tx, leaving_rx) = watch::channel(false);
    let control_opts = opts.clone();
    let control_applier = applier.clone();
    let control_store = store.clone();
    std::thread::Builder::new()
        .name("meshwork-control".into())
        .spawn(move || {
            let rt = match control_runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = started_tx.send(Err(e.into()));
                    return;
                }
            };
            rt.block_on(async move {
                let admin = match tokio::net::TcpListener::from_std(admin_socket) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = started_tx.send(Err(e.into()));
                        return;
                    }
                };
                let role = if control_opts.role == Role::Gateway {
                    "gateway"
                } else {
                    "sidecar"
                };
                let state = Arc::new(crate::admin::AdminState {
                    wasm: control_applier.wasm.clone(),
                    resilience: control_applier.resilience.clone(),
                    store: control_store,
                    node_id: control_opts.node_id.clone(),
                    role,
                });
                tokio::spawn(crate::admin::serve(admin, state));
                match control_opts.source.clone() {
                    Source::Manifests { dir, gateway } => {
                        let r = crate::config::standalone::start(
                            dir,
                            gateway,
                            control_opts.namespace.clone(),
                            control_applier,
                        )
                        .await;
                        let failed = r.is_err();
                        let _ = started_tx.send(r);
                        if !failed {
                            std::future::pending::<()>().await;
                        }
                    }
                    Source::ControlPlane(url) => {
                        let _ = started_tx.send(Ok(()));
                        let hello = pb::Hello {
                            node_id: control_opts.node_id.clone(),
                            service: control_opts.service.clone(),
                            namespace: control_opts.namespace.clone(),
                            role: if control_opts.role == Role::Gateway {
                                pb::Role::Gateway
                            } else {
                                pb::Role::Sidecar
                            } as i32,
                            labels: control_opts.labels.iter().cloned().collect(),
                            inbound_addr: control_opts
                                .inbound
                                .map(|a| a.to_string())
                                .unwrap_or_default(),
                            applied_version: 0,
                            cached_modules: Vec::new(),
                        };
                        crate::config::client::run(url, hello, control_applier, leaving_rx).await;
                        std::future::pending::<()>().await;
                    }
                }
            });
        })?;
    started_rx.await.context("control thread stopped")??;
    tracing::info!(node = %opts.node_id, admin = %opts.admin, "meshwork-proxy started");

    meshwork_manifest::process::shutdown_signal().await;
    let _ = leaving_tx.send(true);
    if matches!(opts.source, Source::ControlPlane(_)) && !opts.shutdown_delay.is_zero() {
        tracing::info!(delay = ?opts.shutdown_delay, "shutting down: deregistered, serving while peers update");
        tokio::time::sleep(opts.shutdown_delay).await;
    }
    tracing::info!("shutting down: draining connections");
    let _ = stop_tx.send(true);
    applier.stop_all();
    for l in static_listeners {
        let _ = l.await;
    }
    // Gateway listeners drain on their own tasks; give them the same period.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(())
}
