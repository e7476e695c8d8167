//! `meshwork up DIR`: a whole mesh on one machine. The control plane runs in-process; every Workload replica runs
//! as a child process behind its own sidecar (a real `meshwork-proxy` process), every Gateway as a gateway proxy.
//! Follows DIR: manifest edits are pushed live, and Workloads added, removed or changed are started or stopped.
//!
//! Output contract (stdout, one line each; tests and scripts read it):
//! `started <node> role=<sidecar|gateway> admin=<addr> [app=<addr> inbound=<addr> outbound=<addr>] pid=<pid>`,
//! `ready: gateway http://127.0.0.1:PORT ...` once every proxy has ACKed,
//! `applied: generation N` after a valid edit is ACKed everywhere, `rejected: <error>` for an invalid one.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use meshwork_manifest::model::{AppProtocol, ManifestSet, Run, Workload};
use meshwork_manifest::process::shutdown_signal;
use meshwork_manifest::source::{load_dir, watch_dir};
use meshwork_manifest::translate::{ProxyRole, WORKLOAD_LABEL};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::dashboard::Dashboard;
use crate::identity::Identities;
use crate::serve::ControlPlane;

/// Where a proxy finds its bootstrap token (the environment: argv is readable by every local user).
pub const BOOTSTRAP_TOKEN_ENV: &str = "MESHWORK_BOOTSTRAP_TOKEN";
/// A started proxy redeems its token within seconds; a restarted one gets a new token.
const PROXY_TOKEN_TTL: Duration = Duration::from_secs(300);

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Directory of *.yaml manifests (read recursively, followed for changes).
    pub dir: PathBuf,
    /// Address for the in-process control plane's gRPC API.
    #[arg(long, default_value = "127.0.0.1:15010")]
    pub control_plane: SocketAddr,
    /// The meshwork-proxy binary (default: next to this executable, else on PATH).
    #[arg(long)]
    pub proxy_bin: Option<PathBuf>,
    /// Log filter for the proxies (their MESHWORK_LOG).
    #[arg(long, default_value = "warn")]
    pub proxy_log: String,
    /// How long to wait for every proxy to ACK its first snapshot.
    #[arg(long, default_value = "60")]
    pub ready_timeout_secs: u64,
    /// Where the built-in dashboard (and its OTLP trace receiver) listens; port 0: a free port, printed as
    /// `dashboard: http://...`.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub dashboard: SocketAddr,
    /// No dashboard (and no trace receiver: spans go only where the Mesh or OTEL_* say).
    #[arg(long)]
    pub no_dashboard: bool,
    #[command(flatten)]
    pub identity: super::IdentityArgs,
}

/// Something `up` runs: a Workload replica (app + sidecar) or a Gateway proxy. Equal specs need no restart.
#[derive(Debug, Clone)]
enum ProcSpec {
    Replica { workload: Workload, index: u32 },
    Gateway { name: String, namespace: String },
}

impl PartialEq for ProcSpec {
    /// Only what a running instance depends on: not `replicas`, not where in a file the manifest sits.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                ProcSpec::Replica {
                    workload: a,
                    index: i,
                },
                ProcSpec::Replica {
                    workload: b,
                    index: j,
                },
            ) => {
                i == j
                    && a.meta.name == b.meta.name
                    && a.meta.namespace == b.meta.namespace
                    && a.service == b.service
                    && a.labels == b.labels
                    && a.protocol == b.protocol
                    && a.run == b.run
            }
            (
                ProcSpec::Gateway {
                    name: a,
                    namespace: x,
                },
                ProcSpec::Gateway {
                    name: b,
                    namespace: y,
                },
            ) => a == b && x == y,
            _ => false,
        }
    }
}

impl ProcSpec {
    fn node_id(&self) -> String {
        match self {
            ProcSpec::Replica { workload, index } => {
                let ns = &workload.meta.namespace;
                let prefix = if ns == "default" {
                    String::new()
                } else {
                    format!("{ns}.")
                };
                format!("{prefix}{}-{index}", workload.meta.name)
            }
            ProcSpec::Gateway { name, namespace } => {
                let prefix = if namespace == "default" {
                    String::new()
                } else {
                    format!("{namespace}.")
                };
                format!("{prefix}gateway-{name}")
            }
        }
    }
}

fn desired(set: &ManifestSet) -> BTreeMap<String, ProcSpec> {
    let mut out = BTreeMap::new();
    for w in &set.workloads {
        if let Run::Command { .. } = w.run {
            for index in 0..w.replicas {
                let spec = ProcSpec::Replica {
                    workload: w.clone(),
                    index,
                };
                out.insert(spec.node_id(), spec);
            }
        }
    }
    for g in &set.gateways {
        let spec = ProcSpec::Gateway {
            name: g.meta.name.clone(),
            namespace: g.meta.namespace.clone(),
        };
        out.insert(spec.node_id(), spec);
    }
    out
}

struct Running {
    spec: ProcSpec,
    /// Its proxy's admin address (what the dashboard reads metrics from).
    admin: SocketAddr,
    /// Sidecar/gateway proxy first, then the app (if any): stopped in reverse order.
    children: Vec<Child>,
}

struct Supervisor {
    cp_url: String,
    /// Mints each proxy's bootstrap token.
    identities: Arc<Identities>,
    dir: PathBuf,
    proxy_bin: PathBuf,
    proxy_log: String,
    path_env: std::ffi::OsString,
    running: BTreeMap<String, Running>,
    /// The built-in dashboard (unless `--no-dashboard`): it is told which proxies run, and receives their spans
    /// unless the environment names a collector.
    dashboard: Option<(Dashboard, SocketAddr)>,
}

fn free_port() -> std::io::Result<u16> {
    // Bind-then-release: another process could take the port in between. The port is drawn below the kernel's
    // ephemeral range (ip_local_port_range), so the source port of some outgoing connection (thousands of them in
    // a busy local mesh, and they come from that range) cannot take it before the app or proxy binds it; that
    // clash made sidecars fail to start. Within one `up`, a port is never handed out twice.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (lo, hi) = below_ephemeral_range();
    for _ in 0..200 {
        let port = if lo < hi {
            let mut b = [0u8; 2];
            getrandom::fill(&mut b).map_err(|e| std::io::Error::other(e.to_string()))?;
            lo + u16::from_le_bytes(b) % (hi - lo)
        } else {
            std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port()
        };
        if given.contains(&port) || std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        given.push(port);
        return Ok(port);
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no fresh local port after 200 tries",
    ))
}

/// Ports for `up` to hand out: from 20000 up to the start of the kernel's ephemeral range (32768 by default on
/// Linux); an empty range (an unusual setting) falls back to the kernel's choice.
fn below_ephemeral_range() -> (u16, u16) {
    let start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    (20000, start)
}

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Copies a child's output to our stderr, each line prefixed with its name.
fn forward_output(child: &mut Child, name: &str) {
    let streams: [Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>; 2] = [
        child.stdout.take().map(|s| Box::new(s) as _),
        child.stderr.take().map(|s| Box::new(s) as _),
    ];
    for s in streams.into_iter().flatten() {
        let name = name.to_string();
        tokio::spawn(async move {
            let mut lines = BufReader::new(s).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[{name}] {line}");
            }
        });
    }
}

async fn wait_for_port(addr: SocketAddr, child: &mut Child, limit: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("exited with {status} before listening on {addr}");
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("did not listen on {addr} within {limit:?} (does it read the PORT environment variable?)");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Supervisor {
    /// The proxy for `node` of `namespace/service`, with a bootstrap token for it in its environment (never in
    /// its argv, which every local user can read).
    fn proxy_command(
        &self,
        node: &str,
        admin: u16,
        role: ProxyRole,
        namespace: &str,
        service: &str,
    ) -> anyhow::Result<Command> {
        let token = self
            .identities
            .mint(role, namespace, service, Some(node), PROXY_TOKEN_TTL)
            .with_context(|| format!("bootstrap token for {node}"))?;
        let mut cmd = Command::new(&self.proxy_bin);
        cmd.env(BOOTSTRAP_TOKEN_ENV, token);
        cmd.arg("--control-plane")
            .arg(&self.cp_url)
            .arg("--node-id")
            .arg(node)
            .arg("--admin")
            .arg(format!("127.0.0.1:{admin}"));
        if let Some((_, addr)) = &self.dashboard {
            for (k, v) in dashboard_tracing_env(*addr) {
                cmd.env(k, v);
            }
        }
        cmd.env("MESHWORK_LOG", &self.proxy_log)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        Ok(cmd)
    }

    async fn start(&self, node: &str, spec: &ProcSpec) -> anyhow::Result<Running> {
        let admin = free_port()?;
        match spec {
            ProcSpec::Gateway { name, namespace } => {
                let mut cmd =
                    self.proxy_command(node, admin, ProxyRole::Gateway, namespace, name)?;
                cmd.args([
                    "--role",
                    "gateway",
                    "--service",
                    name,
                    "--namespace",
                    namespace,
                ]);
                let mut child = cmd
                    .spawn()
                    .with_context(|| format!("start {}", self.proxy_bin.display()))?;
                forward_output(&mut child, node);
                say(format!(
                    "started {node} role=gateway admin=127.0.0.1:{admin} pid={}",
                    child.id().unwrap_or(0)
                ));
                Ok(Running {
                    spec: spec.clone(),
                    admin: SocketAddr::from(([127, 0, 0, 1], admin)),
                    children: vec![child],
                })
            }
            ProcSpec::Replica { workload, .. } => {
                let (app_port, inbound, outbound) = (free_port()?, free_port()?, free_port()?);
                let Run::Command { argv, shell, env } = &workload.run else {
                    anyhow::bail!("not a command workload")
                };
                let fill = |s: &str| s.replace("{port}", &app_port.to_string());
                let mut app = if *shell {
                    let mut c = Command::new("sh");
                    c.arg("-c").arg(fill(&argv[0]));
                    c
                } else {
                    let mut c = Command::new(fill(&argv[0]));
                    c.args(argv[1..].iter().map(|a| fill(a)));
                    c
                };
                let proxy_url = format!("http://127.0.0.1:{outbound}");
                let labels: Vec<String> = workload
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                app.current_dir(&self.dir)
                    .env("PATH", &self.path_env)
                    .env("PORT", app_port.to_string())
                    .env("HTTP_PROXY", &proxy_url)
                    .env("http_proxy", &proxy_url)
                    .env("MESHWORK_SERVICE", &workload.service)
                    .env("MESHWORK_WORKLOAD", &workload.meta.name)
                    .env("MESHWORK_NODE_ID", node)
                    .env("MESHWORK_LABELS", labels.join(","))
                    .envs(env)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    // Its own process group: `stop` signals the whole group, so an app started through `sh -c`
                    // (or one that forks) stops with the shell; and a terminal's Ctrl-C reaches only `up`, which
                    // stops everything in order (sidecar first, then app).
                    .process_group(0)
                    .kill_on_drop(true);
                let mut app_child = app
                    .spawn()
                    .with_context(|| format!("start {node}: {}", argv.join(" ")))?;
                forward_output(&mut app_child, node);
                let app_addr: SocketAddr = ([127, 0, 0, 1], app_port).into();
                wait_for_port(app_addr, &mut app_child, Duration::from_secs(30))
                    .await
                    .with_context(|| format!("app {node}"))?;

                let mut cmd = self.proxy_command(
                    node,
                    admin,
                    ProxyRole::Sidecar,
                    &workload.meta.namespace,
                    &workload.service,
                )?;
                let protocol = match workload.protocol {
                    AppProtocol::Http => "http",
                    AppProtocol::Http2 => "http2",
                    AppProtocol::Grpc => "grpc",
                };
                cmd.args([
                    "--role",
                    "sidecar",
                    "--service",
                    &workload.service,
                    "--namespace",
                    &workload.meta.namespace,
                ])
                .arg("--inbound")
                .arg(format!("127.0.0.1:{inbound}"))
                .arg("--outbound")
                .arg(format!("127.0.0.1:{outbound}"))
                .arg("--app")
                .arg(app_addr.to_string())
                .args(["--app-protocol", protocol])
                .arg("--label")
                .arg(format!("{WORKLOAD_LABEL}={}", workload.meta.name));
                for l in &labels {
                    cmd.arg("--label").arg(l);
                }
                let mut proxy = cmd
                    .spawn()
                    .with_context(|| format!("start {}", self.proxy_bin.display()))?;
                forward_output(&mut proxy, &format!("{node} sidecar"));
                say(format!(
                    "started {node} role=sidecar admin=127.0.0.1:{admin} app={app_addr} inbound=127.0.0.1:{inbound} outbound=127.0.0.1:{outbound} pid={} app_pid={}",
                    proxy.id().unwrap_or(0),
                    app_child.id().unwrap_or(0)
                ));
                Ok(Running {
                    spec: spec.clone(),
                    admin: SocketAddr::from(([127, 0, 0, 1], admin)),
                    children: vec![proxy, app_child],
                })
            }
        }
    }

    /// Starts what is desired and not running, stops what runs and is no longer desired. A changed instance is
    /// replaced rolling: the new one starts (and takes over the node id in the registry) before the old one stops.
    /// Tells the dashboard which proxies run now.
    fn publish_nodes(&self) {
        let Some((dashboard, _)) = &self.dashboard else {
            return;
        };
        let nodes = self
            .running
            .iter()
            .map(|(node, r)| {
                let (service, gateway) = match &r.spec {
                    ProcSpec::Replica { workload, .. } => (workload.service.clone(), false),
                    ProcSpec::Gateway { name, .. } => (name.clone(), true),
                };
                crate::dashboard::topology::Node {
                    node: node.clone(),
                    service,
                    gateway,
                    admin: r.admin,
                }
            })
            .collect();
        dashboard.topology.set_nodes(nodes);
    }

    async fn reconcile(&mut self, set: &ManifestSet) -> Vec<String> {
        let want = desired(set);
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(node, r)| want.get(*node) != Some(&r.spec))
            .map(|(node, _)| node.clone())
            .collect();
        let retiring: Vec<(String, Running)> = stale
            .into_iter()
            .filter_map(|n| self.running.remove(&n).map(|r| (n, r)))
            .collect();
        let failed = self.start_missing(want).await;
        self.publish_nodes();
        futures_util::future::join_all(retiring.into_iter().map(|(node, r)| stop_owned(node, r)))
            .await;
        failed
    }

    async fn start_missing(&mut self, want: BTreeMap<String, ProcSpec>) -> Vec<String> {
        let mut failed = Vec::new();
        let starts: Vec<(String, ProcSpec)> = want
            .into_iter()
            .filter(|(n, _)| !self.running.contains_key(n))
            .collect();
        let results = futures_util::future::join_all(
            starts.iter().map(|(node, spec)| self.start(node, spec)),
        )
        .await;
        for ((node, _), result) in starts.into_iter().zip(results) {
            match result {
                Ok(r) => {
                    self.running.insert(node, r);
                }
                Err(e) => {
                    say(format!("failed: {node}: {e:#}"));
                    failed.push(node);
                }
            }
        }
        failed
    }

    async fn stop_all(&mut self) {
        let all = std::mem::take(&mut self.running);
        futures_util::future::join_all(all.into_iter().map(|(node, r)| stop_owned(node, r))).await;
    }
}

async fn stop_owned(node: String, r: Running) {
    stop(&node, r).await;
}

/// The proxy first (it deregisters, keeps serving while peers learn, then drains), then the app; each gets SIGTERM
/// and, after a grace period, SIGKILL.
async fn stop(node: &str, mut r: Running) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    for child in &mut r.children {
        // Each child leads its own process group (see `start`): signal the group, so nothing it started survives.
        let Some(group) = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .map(Pid::from_raw)
        else {
            continue;
        };
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let _ = tokio::time::timeout_at(deadline, child.wait()).await;
        // The leader may exit before the rest of its group (a shell before its app): wait for the group to empty.
        while killpg(group, None).is_ok() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if killpg(group, None).is_ok() {
            let _ = killpg(group, Signal::SIGKILL);
        }
        let _ = child.kill().await;
    }
    tracing::debug!(%node, "stopped");
}

fn default_proxy_bin() -> PathBuf {
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("meshwork-proxy")));
    sibling
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("meshwork-proxy"))
}

/// PATH for apps: this executable's directory first, so the demo app and tools built beside it are found.
fn app_path() -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .into_iter()
        .collect();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

/// Waits until every node we run is connected and has ACKed (or NACKed) the snapshot of `generation`.
async fn wait_synced(
    cp: &ControlPlane,
    nodes: &[String],
    generation: u64,
    limit: Duration,
) -> Result<(), Vec<String>> {
    let mut changes = cp.registry.subscribe_any();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let regs = cp.registry.list();
        let pending: Vec<String> = nodes
            .iter()
            .filter(|n| {
                !regs.iter().any(|r| {
                    &r.node_id == *n
                        && r.synced_generation >= generation
                        && r.sent_version > 0
                        && (r.acked_version == r.sent_version
                            || r.last_nack.as_ref().is_some_and(|x| x.0 == r.sent_version))
                })
            })
            .cloned()
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        if tokio::time::timeout_at(deadline, changes.changed())
            .await
            .is_err()
        {
            return Err(pending);
        }
    }
}

fn gateway_urls(set: &ManifestSet) -> Vec<String> {
    set.gateways
        .iter()
        .flat_map(|g| {
            g.listeners
                .iter()
                .map(|l| format!("http://127.0.0.1:{}", l.port))
        })
        .collect()
}

/// Binds and starts the dashboard, and says where it is.
async fn start_dashboard(
    cp: &ControlPlane,
    addr: SocketAddr,
) -> anyhow::Result<(Dashboard, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind the dashboard on {addr} (use --dashboard to pick another address, or --no-dashboard)"))?;
    let bound = listener.local_addr()?;
    let dashboard = Dashboard::new(cp.clone());
    dashboard.start(listener);
    say(format!("dashboard: http://{bound}"));
    Ok((dashboard, bound))
}

/// The proxies' spans go to the dashboard's receiver, unless `up`'s own environment names a collector (which
/// its proxies inherit), and are sent every second (OpenTelemetry's default 5 s is slow for a live page) unless
/// the environment says otherwise. A Mesh's `spec.tracing` still overrides all of it.
fn dashboard_tracing_env(addr: SocketAddr) -> Vec<(&'static str, String)> {
    let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    let mut env = Vec::new();
    if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        env.push((
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("http://{addr}/v1/traces"),
        ));
        env.push((
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "http/protobuf".to_string(),
        ));
    }
    if !set("OTEL_BSP_SCHEDULE_DELAY") {
        env.push(("OTEL_BSP_SCHEDULE_DELAY", "1000".to_string()));
    }
    env
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("manifest directory {}", args.dir.display()))?;
    // Filters the manifests build from source come first: loading reads their modules.
    super::plugin::build_declared(&dir)?;
    let loaded = load_dir(&dir).map_err(|d| anyhow::anyhow!("invalid manifests:\n{d}"))?;
    let identities = Arc::new(args.identity.open(&dir, &loaded.set)?);
    let cp = ControlPlane::new(loaded.set.clone(), identities.clone());
    let listener = tokio::net::TcpListener::bind(args.control_plane)
        .await
        .with_context(|| {
            format!(
                "bind the control plane on {} (use --control-plane to pick another address)",
                args.control_plane
            )
        })?;
    let cp_addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let tls = cp.tls().context("the control plane's own certificate")?;
    let served = cp.clone().serve(listener, tls, async {
        let _ = stop_rx.await;
    });
    let server = tokio::spawn(async move {
        if let Err(e) = served.await {
            eprintln!("meshwork: the control plane stopped: {e:#}");
        }
    });
    let _pointer = super::Pointer::write(
        cp_addr,
        &args.identity.state_dir(&dir),
        identities.trust_domain(),
    )?;
    say(format!("control plane: {cp_addr}"));
    let dashboard = match args.no_dashboard {
        true => None,
        false => Some(start_dashboard(&cp, args.dashboard).await?),
    };

    let mut sup = Supervisor {
        cp_url: format!("http://{cp_addr}"),
        identities,
        dir: dir.clone(),
        proxy_bin: args.proxy_bin.clone().unwrap_or_else(default_proxy_bin),
        proxy_log: args.proxy_log.clone(),
        path_env: app_path(),
        running: BTreeMap::new(),
        dashboard,
    };
    let limit = Duration::from_secs(args.ready_timeout_secs);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);

    let outcome: anyhow::Result<()> = async {
        let failed = tokio::select! {
            f = sup.reconcile(&loaded.set) => f,
            _ = &mut shutdown => return Ok(()),
        };
        if !failed.is_empty() {
            anyhow::bail!("could not start: {}", failed.join(", "));
        }
        let nodes: Vec<String> = sup.running.keys().cloned().collect();
        tokio::select! {
            r = wait_synced(&cp, &nodes, 1, limit) => if let Err(pending) = r {
                anyhow::bail!("proxies did not ACK their configuration within {limit:?}: {}", pending.join(", "));
            },
            _ = &mut shutdown => return Ok(()),
        }
        let urls = gateway_urls(&loaded.set);
        if urls.is_empty() {
            say(format!("ready: no gateway ({} proxies)", nodes.len()));
        } else {
            say(format!("ready: gateway {}", urls.join(" ")));
        }

        let mut changes = watch_dir(dir.clone(), Duration::from_millis(300), Some(loaded.digest));
        loop {
            let change = tokio::select! {
                c = changes.recv() => c,
                _ = &mut shutdown => return Ok(()),
            };
            let Some(change) = change else { return Ok(()) };
            let change = change.and_then(|next| match cp.admissible(&next.set) {
                Ok(()) => Ok(next),
                Err(e) => Err(super::refusal(&dir, e)),
            });
            match change {
                Ok(next) => {
                    cp.apply(next.set.clone());
                    let generation = cp.desired.borrow().generation;
                    let failed = sup.reconcile(&next.set).await;
                    let nodes: Vec<String> = sup.running.keys().cloned().collect();
                    match wait_synced(&cp, &nodes, generation, limit).await {
                        Ok(()) if failed.is_empty() => say(format!("applied: generation {generation}")),
                        Ok(()) => say(format!("applied: generation {generation} (could not start: {})", failed.join(", "))),
                        Err(pending) => say(format!("applied: generation {generation} (not yet ACKed by: {})", pending.join(", "))),
                    }
                }
                Err(diags) => {
                    for d in &diags.0 {
                        say(format!("rejected: {d}"));
                    }
                    cp.reject(diags.0.iter().map(ToString::to_string).collect());
                }
            }
        }
    }
    .await;

    eprintln!(
        "meshwork: stopping {} processes",
        sup.running
            .values()
            .map(|r| r.children.len())
            .sum::<usize>()
    );
    sup.stop_all().await;
    let _ = stop_tx.send(());
    let _ = server.await;
    outcome
}
