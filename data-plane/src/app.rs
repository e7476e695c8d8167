//! Composition root: runtimes, listeners, the config source (control plane or manifest directory), admin, drain.
//!
//! The data path runs on its own runtime (one current-thread runtime with `--workers 1`); the control-plane
//! client and the admin listener run on a small runtime of their own, so a slow control plane never competes with
//! requests and a busy data path never delays an ACK.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::config::client::Introduction;
use crate::config::snapshot::{Cluster, Endpoint, Protocol};
use crate::config::{Apply, ConfigStore, Received};
use crate::filter::wasm::LazyWasm;
use crate::identity::MeshIdentity;
use crate::listener;
use crate::resilience::Registry;
use crate::stack::{ListenerCtx, Mode};
use crate::telemetry::trace;
use crate::telemetry::HttpMetrics;
use crate::tls::serving::{ServingCerts, RELOAD_POLL};
use crate::tls::TlsMetrics;
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
    /// Deadlines and bounds for downstream connections (every data listener; the admin listener too, with a
    /// small cap of its own).
    pub limits: listener::Limits,
    /// Routed requests without a policy or route timeout wait this long for an answer (None: unbounded).
    pub default_timeout: Option<Duration>,
    /// The single-use token this proxy bootstraps its identity with (control-plane mode).
    pub bootstrap_token: Option<Secret>,
}

/// A secret that never shows in logs or dumps (`Debug` prints `[redacted]`).
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// How many connections the admin listener takes at once.
const ADMIN_CONNECTIONS: usize = 64;

/// A gateway listener being served: its port, and how to stop it.
struct RunningListener {
    port: u16,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Gateway listeners come and go with snapshots; this keeps the running set equal to the applied one.
struct ListenerManager {
    data: Handle,
    running: HashMap<Arc<str>, RunningListener>,
}

/// Applies snapshots: check and build, bind new listeners, publish, then retire listeners no longer wanted.
/// Any failure before publishing is a NACK and leaves everything as it was.
pub struct Applier {
    pub store: Arc<ConfigStore>,
    pub wasm: Arc<LazyWasm>,
    /// Resilience state per upstream service, beside the snapshot and kept across snapshots.
    pub resilience: Arc<Registry>,
    node_id: String,
    upstreams: Upstreams,
    manage_listeners: bool,
    drain: Duration,
    limits: Arc<listener::Limits>,
    budget: listener::FdBudget,
    default_timeout: Option<Duration>,
    /// AuthorizationPolicy decisions, counted for /metrics.
    pub authz: Arc<crate::authz::Stats>,
    /// Gateway HTTPS listeners' certificates, beside the snapshot.
    serving: Arc<ServingCerts>,
    tls: Arc<TlsMetrics>,
    /// Request metrics of every listener.
    pub http: Arc<HttpMetrics>,
    /// The proxy's OpenTelemetry environment, under the Mesh's tracing settings.
    trace_env: trace::settings::Env,
    manager: Mutex<ListenerManager>,
}

impl Applier {
    /// Builds the snapshot (an error is a NACK), binds the listeners it adds, binds its runtime state, publishes
    /// it, then retires the listeners it no longer has.
    pub fn apply(&self, received: Received) -> Result<(), String> {
        let previous = self.store.load();
        if received.same_as(&previous) {
            return Ok(()); // a reconnect re-sent what we already serve
        }
        let mut snap = received.build(&self.wasm, &previous, &self.node_id)?;
        snap.tracing = trace::settings::resolve(snap.mesh_tracing.as_ref(), &self.trace_env);
        let certificates = self.serving.prepare(&snap)?;
        let mut mgr = self.manager.lock().unwrap_or_else(|p| p.into_inner());
        let mut bound = Vec::new();
        if self.manage_listeners {
            for l in snap.listeners.values() {
                let unchanged = mgr.running.get(&l.name).is_some_and(|a| a.port == l.port);
                if !unchanged && l.port != 0 {
                    let addr = SocketAddr::from(([127, 0, 0, 1], l.port));
                    // Rebinding a port we already serve under another name would clash with ourselves: stop it first.
                    let same_port: Vec<Arc<str>> = mgr
                        .running
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
        // The snapshot is accepted: bind its runtime state, then serve it.
        self.resilience.sync(&snap, &self.upstreams);
        self.serving.commit(certificates);
        self.store.publish(snap);
        if self.manage_listeners {
            let retired: Vec<Arc<str>> = mgr
                .running
                .iter()
                .filter(|(n, a)| wanted.get(*n) != Some(&a.port))
                .map(|(n, _)| n.clone())
                .collect();
            for name in retired {
                if let Some(a) = mgr.running.remove(&name) {
                    let _ = a.stop.send(true);
                }
            }
            for (name, port, socket) in bound {
                let (stop, stop_rx) = watch::channel(false);
                let ctx = Arc::new(ListenerCtx {
                    mode: Mode::Routed(name.clone()),
                    store: self.store.clone(),
                    resilience: self.resilience.clone(),
                    upstreams: self.upstreams.clone(),
                    source: None,
                    default_timeout: self.default_timeout,
                    proof: Default::default(),
                    termination: Some(listener::Termination::Https {
                        certs: self.serving.clone(),
                        listener: name.clone(),
                        metrics: self.tls.clone(),
                    }),
                    // A gateway enforces the policies that target its Gateway on every listener.
                    authorize: Some(self.authz.clone()),
                    metrics: self.http.listener(name.clone()),
                });
                let (drain, limits, budget) =
                    (self.drain, self.limits.clone(), self.budget.clone());
                let _guard = mgr.data.enter();
                match tokio::net::TcpListener::from_std(socket) {
                    Ok(l) => {
                        let task = mgr
                            .data
                            .spawn(listener::serve(l, ctx, stop_rx, drain, limits, budget));
                        tracing::info!(listener = %name, port, "listening");
                        mgr.running
                            .insert(name, RunningListener { port, stop, task });
                    }
                    Err(e) => {
                        tracing::error!(listener = %name, error = %e, "cannot register listener")
                    }
                }
            }
        }
        Ok(())
    }

    /// Stops every gateway listener; each drains its connections on its own task, returned here to wait on.
    fn stop_all(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let mut mgr = self.manager.lock().unwrap_or_else(|p| p.into_inner());
        mgr.running
            .drain()
            .map(|(_, a)| {
                let _ = a.stop.send(true);
                a.task
            })
            .collect()
    }
}

impl Apply for Applier {
    fn apply(&self, received: Received) -> Result<(), String> {
        Applier::apply(self, received)
    }

    fn applied_version(&self) -> u64 {
        self.store.version()
    }

    fn cached_modules(&self) -> Vec<String> {
        self.wasm
            .existing()
            .map(|w| w.module_digests())
            .unwrap_or_default()
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
    let resilience = Arc::new(Registry::default());
    let identity = Arc::new(MeshIdentity::default());
    let tls = Arc::new(TlsMetrics::default());
    let http = Arc::new(HttpMetrics::new());
    let upstreams = Upstreams::with_mtls(opts.connect_timeout, identity.clone(), tls.clone())
        .timed(http.calls.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Shared {
        store,
        resilience,
        upstreams,
        limits: Arc::new(opts.limits.clone()),
        budget: listener::FdBudget::from_process_limit(),
        draining: Arc::new(AtomicBool::new(false)),
        identity,
        tls,
        authz: Arc::default(),
        serving: Arc::default(),
        http,
    };
    let static_listeners = match opts.role {
        Role::Sidecar => sidecar_listeners(&opts, &shared, &stop_rx)?,
        Role::Gateway => Vec::new(),
    };
    let applier = applier(&opts, &shared);
    let leaving = start_control_thread(&opts, applier.clone(), &shared).await?;
    tracing::info!(node = %opts.node_id, admin = %opts.admin, "meshwork-proxy started");

    meshwork_manifest::process::shutdown_signal().await;
    shared.draining.store(true, Ordering::Relaxed);
    shut_down(&opts, leaving, stop_tx, &applier, static_listeners).await;
    Ok(())
}

/// What the listeners, the applier and the admin endpoint share.
struct Shared {
    store: Arc<ConfigStore>,
    resilience: Arc<Registry>,
    upstreams: Upstreams,
    limits: Arc<listener::Limits>,
    budget: listener::FdBudget,
    /// Set on shutdown: `/ready` answers 503 from then on.
    draining: Arc<AtomicBool>,
    /// This proxy's key, certificate and trust bundle (control-plane mode).
    identity: Arc<MeshIdentity>,
    /// mTLS handshake counters, both sides.
    tls: Arc<TlsMetrics>,
    /// AuthorizationPolicy decisions, counted for /metrics.
    authz: Arc<crate::authz::Stats>,
    /// Gateway HTTPS listeners' certificates (followed for changes on the control thread).
    serving: Arc<ServingCerts>,
    /// Request metrics of every listener.
    http: Arc<HttpMetrics>,
}

/// A sidecar's two fixed listeners: inbound (to the local app) and outbound (routed by the snapshot).
fn sidecar_listeners(
    opts: &Options,
    shared: &Shared,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let (Some(inbound), Some(outbound), Some(app)) = (opts.inbound, opts.outbound, opts.app) else {
        anyhow::bail!("a sidecar needs --inbound, --outbound and --app");
    };
    let app_cluster = Arc::new(Cluster::new(
        Arc::from(format!("local-app/{}", opts.service)),
        opts.app_protocol,
        vec![Endpoint::plain(app)],
    ));
    let outbound_name: Arc<str> = Arc::from(meshwork_manifest::translate::OUTBOUND_LISTENER);
    // The outbound listener states the calling service (what server-side limits keyed by it read).
    let source = http::HeaderValue::from_str(&format!("{}.{}", opts.service, opts.namespace)).ok();
    let inbound_tls = Arc::new(crate::tls::Inbound::new(
        shared.identity.clone(),
        shared.store.clone(),
        shared.tls.clone(),
    ));
    let mut served = Vec::new();
    // Only the inbound listener enforces the AuthorizationPolicies that target this service, and only it takes mTLS.
    for (addr, mode, source, authorize, termination, name) in [
        (
            inbound,
            Mode::Inbound(app_cluster),
            None,
            Some(shared.authz.clone()),
            Some(listener::Termination::Mesh(inbound_tls)),
            Arc::from("inbound"),
        ),
        (
            outbound,
            Mode::Routed(outbound_name.clone()),
            source,
            None,
            None,
            outbound_name,
        ),
    ] {
        let socket = listener::bind(addr).with_context(|| format!("bind {addr}"))?;
        let l = tokio::net::TcpListener::from_std(socket)?;
        let ctx = Arc::new(ListenerCtx {
            mode,
            store: shared.store.clone(),
            resilience: shared.resilience.clone(),
            upstreams: shared.upstreams.clone(),
            source,
            default_timeout: opts.default_timeout,
            proof: Default::default(),
            authorize,
            termination,
            metrics: shared.http.listener(name),
        });
        served.push(tokio::spawn(listener::serve(
            l,
            ctx,
            stop.clone(),
            opts.drain,
            shared.limits.clone(),
            shared.budget.clone(),
        )));
    }
    Ok(served)
}

/// The applier, with the Wasm runtime (created on first use) and the way its filters' callouts reach the mesh.
fn applier(opts: &Options, shared: &Shared) -> Arc<Applier> {
    let wasm = Arc::new(LazyWasm::new(opts.workers, opts.wasm_cache_dir.clone()));
    let callouts = crate::filter::dispatch::MeshCallouts {
        store: shared.store.clone(),
        upstreams: shared.upstreams.clone(),
    };
    let _ = wasm.shared.callouts.set(Arc::new(callouts));
    shared
        .http
        .register_collector(Box::new(crate::telemetry::wasm::WasmMetrics {
            store: shared.store.clone(),
            shared: wasm.shared.clone(),
        }));
    Arc::new(Applier {
        store: shared.store.clone(),
        wasm,
        resilience: shared.resilience.clone(),
        node_id: opts.node_id.clone(),
        upstreams: shared.upstreams.clone(),
        manage_listeners: opts.role == Role::Gateway,
        drain: opts.drain,
        limits: shared.limits.clone(),
        budget: shared.budget.clone(),
        default_timeout: opts.default_timeout,
        authz: shared.authz.clone(),
        serving: shared.serving.clone(),
        tls: shared.tls.clone(),
        http: shared.http.clone(),
        trace_env: trace_env(opts, &shared.http),
        manager: Mutex::new(ListenerManager {
            data: Handle::current(),
            running: HashMap::new(),
        }),
    })
}

/// Reads the proxy's `OTEL_*` variables (saying which it cannot read, and ignoring those) and names the proxy in
/// its spans.
fn trace_env(opts: &Options, http: &HttpMetrics) -> trace::settings::Env {
    let (env, problems) = trace::settings::Env::read(|name| std::env::var(name).ok());
    for problem in problems {
        tracing::warn!("ignoring an OpenTelemetry variable: {problem}");
    }
    http.tracer.identify(trace::export::Identity {
        service: opts.service.clone(),
        namespace: opts.namespace.clone(),
        node_id: opts.node_id.clone(),
        role: match opts.role {
            Role::Gateway => "gateway",
            Role::Sidecar => "sidecar",
        },
    });
    env
}

/// The admin listener and the config source, on a runtime of their own (see the module docs). Returns once the
/// source has started (for a manifest directory: applied once); the sender tells it the proxy is leaving.
async fn start_control_thread(
    opts: &Options,
    applier: Arc<Applier>,
    shared: &Shared,
) -> anyhow::Result<watch::Sender<bool>> {
    let admin_socket = listener::bind(opts.admin)
        .with_context(|| format!("bind the admin listener on {}", opts.admin))?;
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
    let (leaving_tx, leaving_rx) = watch::channel(false);
    let opts = opts.clone();
    let admin_state = admin_state(&opts, &applier, shared);
    let identity = shared.identity.clone();
    let serving = shared.serving.clone();
    let admin_limits = Arc::new(listener::Limits {
        max_connections: ADMIN_CONNECTIONS,
        ..opts.limits.clone()
    });
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
                match tokio::net::TcpListener::from_std(admin_socket) {
                    Ok(admin) => {
                        tokio::spawn(crate::admin::serve(admin, admin_state, admin_limits))
                    }
                    Err(e) => {
                        let _ = started_tx.send(Err(e.into()));
                        return;
                    }
                };
                tokio::spawn(follow_certificate_files(serving));
                run_source(opts, applier, identity, started_tx, leaving_rx).await;
            });
        })?;
    started_rx.await.context("control thread stopped")??;
    Ok(leaving_tx)
}

/// Reloads gateway certificates whose files changed, for the life of the process (file I/O off the runtime).
async fn follow_certificate_files(serving: Arc<ServingCerts>) {
    let mut tick = tokio::time::interval(RELOAD_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let serving = serving.clone();
        let _ = tokio::task::spawn_blocking(move || serving.poll()).await;
    }
}

fn admin_state(
    opts: &Options,
    applier: &Applier,
    shared: &Shared,
) -> Arc<crate::admin::AdminState> {
    shared
        .http
        .register_collector(Box::new(crate::admin::families::Families {
            store: applier.store.clone(),
            wasm: applier.wasm.clone(),
            resilience: applier.resilience.clone(),
            identity: shared.identity.clone(),
            tls: shared.tls.clone(),
            serving: shared.serving.clone(),
            authz: shared.authz.clone(),
        }));
    Arc::new(crate::admin::AdminState {
        draining: shared.draining.clone(),
        store: applier.store.clone(),
        node_id: opts.node_id.clone(),
        identity: shared.identity.clone(),
        http: shared.http.clone(),
        role: match opts.role {
            Role::Gateway => "gateway",
            Role::Sidecar => "sidecar",
        },
    })
}

/// Follows the config source for the life of the process.
async fn run_source(
    opts: Options,
    applier: Arc<Applier>,
    identity: Arc<MeshIdentity>,
    started: tokio::sync::oneshot::Sender<anyhow::Result<()>>,
    leaving: watch::Receiver<bool>,
) {
    match opts.source.clone() {
        Source::Manifests { dir, gateway } => {
            let r = crate::config::standalone::start(dir, gateway, opts.namespace.clone(), applier)
                .await;
            let failed = r.is_err();
            let _ = started.send(r);
            if !failed {
                std::future::pending::<()>().await;
            }
        }
        Source::ControlPlane(url) => {
            let _ = started.send(Ok(()));
            let token = opts.bootstrap_token.as_ref().map(|t| t.0.clone());
            crate::config::client::run(url, introduction(&opts), token, identity, applier, leaving)
                .await;
            std::future::pending::<()>().await;
        }
    }
}

/// How this proxy introduces itself to the control plane.
fn introduction(opts: &Options) -> Introduction {
    Introduction {
        node_id: opts.node_id.clone(),
        service: opts.service.clone(),
        namespace: opts.namespace.clone(),
        gateway: opts.role == Role::Gateway,
        labels: opts.labels.clone(),
        inbound: opts.inbound,
    }
}

/// Leaves the mesh (peers stop sending here), keeps serving for `shutdown_delay`, then drains every listener.
async fn shut_down(
    opts: &Options,
    leaving: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    applier: &Applier,
    static_listeners: Vec<tokio::task::JoinHandle<()>>,
) {
    let _ = leaving.send(true);
    if matches!(opts.source, Source::ControlPlane(_)) && !opts.shutdown_delay.is_zero() {
        tracing::info!(delay = ?opts.shutdown_delay, "shutting down: deregistered, serving while peers update");
        tokio::time::sleep(opts.shutdown_delay).await;
    }
    tracing::info!("shutting down: draining connections");
    let _ = stop.send(true);
    // Each listener stops accepting, closes idle connections, lets requests in flight finish for up to the
    // drain period, then ends.
    for l in static_listeners.into_iter().chain(applier.stop_all()) {
        let _ = l.await;
    }
    // The last requests' access log lines (the writer otherwise writes every 100 ms).
    let access_log = applier.http.access_log.clone();
    let _ = tokio::task::spawn_blocking(move || access_log.close(Duration::from_secs(2))).await;
    // And the last spans (within the exporter's timeout, at most 5 s).
    let tracer = applier.http.tracer.clone();
    let _ = tokio::task::spawn_blocking(move || tracer.close(Duration::from_secs(5))).await;
}
