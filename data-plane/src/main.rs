use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use meshwork_proxy::app::{self, Options, Role, Source};
use meshwork_proxy::config::snapshot::Protocol;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RoleArg {
    Sidecar,
    Gateway,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AppProtocolArg {
    Http,
    Http2,
    Grpc,
}

/// Meshwork data-plane proxy: a sidecar beside an app, or a gateway at the edge.
#[derive(Debug, Parser)]
#[command(name = "meshwork-proxy", version)]
struct Args {
    /// Control plane URL (e.g. http://127.0.0.1:15010).
    #[arg(
        long,
        conflicts_with = "manifests",
        required_unless_present = "manifests"
    )]
    control_plane: Option<String>,
    /// Standalone gateway: translate this manifest directory locally and follow it (no control plane).
    #[arg(long)]
    manifests: Option<PathBuf>,
    /// Standalone: which Gateway to run (default: the only one).
    #[arg(long, requires = "manifests")]
    gateway: Option<String>,
    #[arg(long, value_enum)]
    role: Option<RoleArg>,
    /// Node id (unique per proxy; default: <service>-<pid>).
    #[arg(long)]
    node_id: Option<String>,
    /// Mesh service (sidecar) or Gateway name (gateway).
    #[arg(long, default_value = "")]
    service: String,
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Instance label announced to the registry, KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Sidecar: inbound listener in front of the app (announced as this instance's endpoint).
    #[arg(long)]
    inbound: Option<SocketAddr>,
    /// Sidecar: outbound listener for the app's calls (routes by Host / absolute-form URI; use as HTTP_PROXY).
    #[arg(long)]
    outbound: Option<SocketAddr>,
    /// Sidecar: the local app's address.
    #[arg(long)]
    app: Option<SocketAddr>,
    #[arg(long, value_enum, default_value = "http")]
    app_protocol: AppProtocolArg,
    /// Admin listener (/ready, /live, /config_dump).
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// Data-path worker threads (1 = a single-threaded runtime). Default: the number of CPUs.
    #[arg(long)]
    workers: Option<usize>,
    /// Upstream connect timeout.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    connect_timeout: std::time::Duration,
    /// On shutdown, how long open connections get to finish.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    drain_timeout: std::time::Duration,
    /// On shutdown, how long to keep serving after leaving the registry, while peers stop routing here.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    shutdown_delay: std::time::Duration,
    /// Directory for compiled Wasm modules, reused across restarts ("" disables; default
    /// $XDG_CACHE_HOME/meshwork/wasm or ~/.cache/meshwork/wasm).
    #[arg(long)]
    wasm_cache_dir: Option<PathBuf>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    meshwork_manifest::model::read::parse_duration(s)
        .map_err(|e| format!("expected a duration like 5s or 250ms: {e}"))
}

fn main() -> anyhow::Result<()> {
    meshwork_manifest::process::init_tracing("info");
    let args = Args::parse();
    let (source, default_role) = match (args.control_plane, args.manifests) {
        (Some(url), None) => (Source::ControlPlane(url), None),
        (None, Some(dir)) => (
            Source::Manifests {
                dir,
                gateway: args.gateway,
            },
            Some(RoleArg::Gateway),
        ),
        _ => anyhow::bail!("give exactly one of --control-plane and --manifests"),
    };
    let role = match args
        .role
        .or(default_role)
        .context("--role sidecar|gateway is required with --control-plane")?
    {
        RoleArg::Sidecar => Role::Sidecar,
        RoleArg::Gateway => Role::Gateway,
    };
    if matches!(source, Source::ControlPlane(_)) && args.service.is_empty() {
        anyhow::bail!(
            "--service is required with --control-plane (the mesh service, or the Gateway name)"
        );
    }
    let node_id = args.node_id.unwrap_or_else(|| {
        format!(
            "{}-{}",
            if args.service.is_empty() {
                "gateway"
            } else {
                &args.service
            },
            std::process::id()
        )
    });
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    app::run(Options {
        source,
        role,
        node_id,
        service: args.service,
        namespace: args.namespace,
        labels: args.labels,
        inbound: args.inbound,
        outbound: args.outbound,
        app: args.app,
        app_protocol: match args.app_protocol {
            AppProtocolArg::Http => Protocol::Http1,
            AppProtocolArg::Http2 | AppProtocolArg::Grpc => Protocol::Http2,
        },
        admin: args.admin,
        workers,
        connect_timeout: args.connect_timeout,
        drain: args.drain_timeout,
        shutdown_delay: args.shutdown_delay,
        wasm_cache_dir: match args.wasm_cache_dir {
            Some(d) if d.as_os_str().is_empty() => None,
            Some(d) => Some(d),
            None => std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .map(|d| d.join("meshwork/wasm")),
        },
    })
}
