//! `meshwork control`: the control-plane server, following a manifest directory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use meshwork_manifest::model::read::parse_duration;
use meshwork_manifest::process::shutdown_signal;
use meshwork_manifest::source::{load_dir, watch_dir};

use crate::serve::ControlPlane;

#[derive(Debug, Args)]
pub struct ControlArgs {
    /// Directory of *.yaml manifests (read recursively, followed for changes).
    #[arg(long)]
    pub manifests: PathBuf,
    /// Address of the gRPC API the proxies connect to.
    #[arg(long, default_value = "127.0.0.1:15010")]
    pub listen: SocketAddr,
    /// After a (re)start, how long proxies that already have a configuration wait for their peers to re-register
    /// before they are pushed anything (longer than the proxies' 5 s maximum reconnect backoff).
    #[arg(long, default_value = "6s", value_parser = |s: &str| parse_duration(s).map_err(str::to_string))]
    pub warmup: Duration,
    /// Where the control plane's own Prometheus metrics are served (`GET /metrics`, plain HTTP); unset: nowhere.
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    #[command(flatten)]
    pub identity: super::IdentityArgs,
}

/// Applies every valid change of `dir` to `cp`; an invalid change is logged and recorded, and the last good set
/// keeps serving. Runs until the watcher stops.
pub async fn follow(cp: ControlPlane, dir: PathBuf, served: [u8; 32]) {
    let mut changes = watch_dir(dir.clone(), Duration::from_millis(300), Some(served));
    while let Some(change) = changes.recv().await {
        let change = change.and_then(|loaded| match cp.admissible(&loaded.set) {
            Ok(()) => Ok(loaded),
            Err(e) => Err(super::refusal(&dir, e)),
        });
        match change {
            Ok(loaded) => {
                cp.apply(loaded.set);
                tracing::info!(
                    generation = cp.desired.borrow().generation,
                    "manifests changed: applied"
                );
            }
            Err(diags) => {
                tracing::error!(
                    "manifest change rejected, still serving the last good set:\n{diags}"
                );
                cp.reject(diags.0.iter().map(ToString::to_string).collect());
            }
        }
    }
}

pub async fn run(args: ControlArgs) -> anyhow::Result<()> {
    let loaded =
        load_dir(&args.manifests).map_err(|d| anyhow::anyhow!("invalid manifests:\n{d}"))?;
    let identities = std::sync::Arc::new(args.identity.open(&args.manifests, &loaded.set)?);
    let td = identities.trust_domain().clone();
    let cp = ControlPlane::with_warmup(loaded.set, args.warmup, identities);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("bind {}", args.listen))?;
    let addr = listener.local_addr()?;
    let state_dir = args.identity.state_dir(&args.manifests);
    let _pointer = super::Pointer::write(addr, &state_dir, &td)?;
    tracing::info!(%addr, trust_domain = %td, state_dir = %state_dir.display(), "control plane serving");
    tokio::spawn(follow(cp.clone(), args.manifests.clone(), loaded.digest));
    if let Some(addr) = args.metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind --metrics {addr}"))?;
        tracing::info!(addr = %listener.local_addr()?, "control plane metrics at /metrics");
        tokio::spawn(crate::serve::metrics::serve_http(listener, cp.clone()));
    }
    let tls = cp.tls().context("the control plane's own certificate")?;
    cp.serve(listener, tls, shutdown_signal()).await?;
    Ok(())
}
