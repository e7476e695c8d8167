//! `meshwork status`: the proxies connected to a control plane, asked as the operator. The Status RPC answers only
//! the operator's identity, which this command mints for itself (a certificate for a few minutes) from the control
//! plane's state directory: found through the pointer the control plane leaves for its user on its host, or given
//! with `--state-dir`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use meshwork_identity::spiffe::TrustDomain;
use meshwork_proto as pb;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Control-plane gRPC address.
    #[arg(long, default_value = "127.0.0.1:15010")]
    pub control_plane: String,
    /// The control plane's state directory (default: the one it recorded for this user on this host).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Its trust domain, with --state-dir (default cluster.local).
    #[arg(long)]
    pub trust_domain: Option<String>,
}

/// How long the operator certificate `status` mints for itself lives.
const OPERATOR_CERT: Duration = Duration::from_secs(300);

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let (url, addr) = address(&args.control_plane)?;
    let (dir, td) = match (&args.state_dir, super::Pointer::read(addr)) {
        (Some(dir), _) => {
            let td = args.trust_domain.as_deref().unwrap_or(meshwork_identity::DEFAULT_TRUST_DOMAIN);
            (dir.clone(), TrustDomain::new(td).map_err(|e| anyhow::anyhow!("--trust-domain: {e}"))?)
        }
        (None, Some(found)) => found,
        (None, None) => anyhow::bail!(
            "no control plane of this user is recorded at {addr} on this host: pass its --state-dir (status is for the operator)"
        ),
    };
    let config =
        meshwork_identity::operator::client_config(&dir, &td, OPERATOR_CERT).map_err(|e| {
            anyhow::anyhow!(
                "the mesh CA in {}: {e} (status is for the operator)",
                dir.display()
            )
        })?;
    let channel =
        meshwork_identity::channel::connect(&url, Arc::new(config), Duration::from_secs(5)).await?;
    let mut client = pb::discovery_client::DiscoveryClient::new(channel);
    let status = client
        .status(pb::StatusRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    print!("{}", render(&status, now_ms()));
    Ok(())
}

fn address(arg: &str) -> anyhow::Result<(String, SocketAddr)> {
    let hostport = arg
        .split_once("://")
        .map_or(arg, |(_, rest)| rest)
        .trim_end_matches('/');
    let addr: SocketAddr = hostport
        .parse()
        .with_context(|| format!("--control-plane: expected IP:port, got {arg:?}"))?;
    Ok((format!("http://{addr}"), addr))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// "23h59m" until `at_ms`, or "expired".
fn until(at_ms: u64, now_ms: u64) -> String {
    if at_ms == 0 {
        return "-".into();
    }
    let Some(left) = at_ms.checked_sub(now_ms).map(|ms| ms / 1000) else {
        return "expired".into();
    };
    match left {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// "12m ago" since `at_ms`.
fn ago(at_ms: u64, now_ms: u64) -> String {
    if at_ms == 0 {
        return "-".into();
    }
    let s = now_ms.saturating_sub(at_ms) / 1000;
    match s {
        s if s >= 3600 => format!("{}h{:02}m ago", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m ago", s / 60),
        s => format!("{s}s ago"),
    }
}

pub fn render(status: &pb::StatusResponse, now_ms: u64) -> String {
    let mut out = format!("manifest generation {}\n", status.manifest_generation);
    if !status.rejected_errors.is_empty() {
        out.push_str("last change REJECTED (still serving the previous set):\n");
        for e in &status.rejected_errors {
            out.push_str(&format!("  {e}\n"));
        }
    }
    let rows: Vec<[String; 9]> = status
        .proxies
        .iter()
        .map(|p| {
            let role = match pb::Role::try_from(p.role) {
                Ok(pb::Role::Gateway) => "gateway",
                Ok(pb::Role::Sidecar) => "sidecar",
                _ => "?",
            };
            let nack = if p.last_nack.is_empty() {
                "-".to_string()
            } else {
                format!("v{}: {}", p.last_nack_version, p.last_nack)
            };
            [
                p.node_id.clone(),
                p.service.clone(),
                role.to_string(),
                format!("v{}", p.acked_version),
                format!("v{}", p.sent_version),
                nack,
                p.spiffe_id.clone(),
                until(p.cert_not_after_unix_ms, now_ms),
                ago(p.cert_issued_unix_ms, now_ms),
            ]
        })
        .collect();
    let header = [
        "NODE",
        "SERVICE",
        "ROLE",
        "ACKED",
        "SENT",
        "LAST NACK",
        "IDENTITY",
        "CERT EXPIRES IN",
        "ISSUED",
    ]
    .map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    for r in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
