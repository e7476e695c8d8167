use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use meshwork_proxy::app::{self, Options, Role, Source};
use meshwork_proxy::config::snapshot::Protocol;
use meshwork_proxy::listener;
use meshwork_proxy::upstream::client_body::BodyLimits;

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
    /// The proxy's own log (stderr): `text` or `json` (one object per line). Access logs are configured in the
    /// Mesh kind instead.
    #[arg(long, env = "MESHWORK_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
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
    /// Node id (unique per proxy; default: <service>-<pid>-<random>). The control plane refuses a node id that a
    /// different live proxy holds.
    #[arg(long)]
    node_id: Option<String>,
    /// A file holding this proxy's single-use bootstrap token (`meshwork token create`), read once at start. The
    /// token can also come in the MESHWORK_BOOTSTRAP_TOKEN environment variable; never put it on the command line.
    #[arg(long)]
    bootstrap_token_file: Option<PathBuf>,
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
    /// How long a routed request waits for its upstream's answer when neither a TrafficPolicy
    /// (`timeouts.request`) nor its HTTPRoute (`timeouts.request`) says (0s: unbounded). Mirrors use it too.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    default_request_timeout: std::time::Duration,
    /// Downstream connections: from accept to the first request's headers, and on HTTP/1.1 from the first byte
    /// of each later request to the end of its headers; a client slower than this is disconnected.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    request_headers_timeout: std::time::Duration,
    /// Downstream connections with no request in flight for this long are closed (HTTP/2: GOAWAY).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    idle_timeout: std::time::Duration,
    /// HTTP/2 downstream connections: a PING this often (0s: none); a peer that does not answer within the
    /// request headers timeout is disconnected.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    http2_keepalive: std::time::Duration,
    /// Open connections per listener beyond which new ones get a 503 (the file-descriptor limit may lower it).
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Largest request body accepted (413 beyond), e.g. 32Mi; 0: no limit.
    #[arg(long, default_value = "32Mi", value_parser = parse_size)]
    max_request_body: u64,
    /// Minimum request-body data rate in bytes/s once the grace period has passed (408 below); 0: none.
    #[arg(long, default_value_t = 240)]
    min_request_body_rate: u32,
    /// How long a request body may take before its minimum data rate applies.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    request_body_grace: std::time::Duration,
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

fn parse_size(s: &str) -> Result<u64, String> {
    meshwork_manifest::model::read::parse_bytes(s)
        .ok_or_else(|| format!("expected a size like 32Mi, 512Ki or 1048576, got {s:?}"))
}

/// The connection limits from the flags; a zero turns the matching one off.
fn limits(args: &Args) -> listener::Limits {
    listener::Limits {
        header_timeout: args.request_headers_timeout,
        idle_timeout: args.idle_timeout,
        h2_keepalive: Some(args.http2_keepalive).filter(|d| !d.is_zero()),
        max_connections: args.max_connections.max(1),
        body: BodyLimits {
            max_bytes: Some(args.max_request_body).filter(|b| *b > 0),
            min_rate: Some(args.min_request_body_rate).filter(|r| *r > 0),
            grace: args.request_body_grace,
        },
    }
}

/// `<service>-<pid>-<8 random hex digits>`: unique on a host and across containers where every proxy is PID 1
/// (a registration's node id cannot be taken over, so a collision would lock a proxy out).
fn default_node_id(service: &str) -> String {
    let mut tag = [0u8; 4];
    let _ = getrandom::fill(&mut tag);
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    let service = if service.is_empty() {
        "gateway"
    } else {
        service
    };
    format!("{service}-{}-{hex}", std::process::id())
}

/// The bootstrap token: from `file`, else from MESHWORK_BOOTSTRAP_TOKEN. Without one a proxy cannot join a mesh.
fn bootstrap_token(file: Option<&std::path::Path>) -> anyhow::Result<app::Secret> {
    let token = match file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("--bootstrap-token-file {}", f.display()))?,
        None => std::env::var(BOOTSTRAP_TOKEN_ENV).map_err(|_| {
            anyhow::anyhow!(
                "no bootstrap token: a proxy joins the mesh with a single-use token from `meshwork token create --service <name>` in {BOOTSTRAP_TOKEN_ENV} or --bootstrap-token-file (`meshwork up` gives one to each proxy it starts)"
            )
        })?,
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        anyhow::bail!("the bootstrap token is empty");
    }
    Ok(app::Secret(token))
}

const BOOTSTRAP_TOKEN_ENV: &str = "MESHWORK_BOOTSTRAP_TOKEN";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    meshwork_manifest::process::init_tracing("info", args.log_format == "json");
    let limits = limits(&args);
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
    let bootstrap_token = if matches!(source, Source::ControlPlane(_)) {
        Some(bootstrap_token(args.bootstrap_token_file.as_deref())?)
    } else {
        None
    };
    let node_id = args
        .node_id
        .clone()
        .unwrap_or_else(|| default_node_id(&args.service));
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
        limits,
        default_timeout: Some(args.default_request_timeout).filter(|d| !d.is_zero()),
        bootstrap_token,
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
