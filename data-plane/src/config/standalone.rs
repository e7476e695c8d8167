//! Standalone gateway: translate a manifest directory locally, with the validation and translation code the
//! control plane uses (meshwork-manifest), and follow it for changes. No control plane, no registry (static
//! endpoints only).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use meshwork_manifest::model::ManifestSet;
use meshwork_manifest::source::{load_dir, watch_dir};
use meshwork_manifest::translate::{modules_for, snapshot_for, ProxyKey, ProxyRole};
use meshwork_proto as pb;

use super::{Apply, Received};

/// Which Gateway this proxy runs: the named one, or the only one.
fn gateway_key(set: &ManifestSet, name: Option<&str>, namespace: &str) -> Result<ProxyKey, String> {
    let key = |n: &str, ns: &str| ProxyKey {
        role: ProxyRole::Gateway,
        name: n.to_string(),
        namespace: ns.to_string(),
    };
    match name {
        Some(n)
            if set
                .gateways
                .iter()
                .any(|g| g.meta.name == n && g.meta.namespace == namespace) =>
        {
            Ok(key(n, namespace))
        }
        Some(n) => Err(format!("no Gateway {namespace}/{n} in the manifests")),
        None => match set.gateways.as_slice() {
            [only] => Ok(key(&only.meta.name, &only.meta.namespace)),
            [] => Err("the manifests define no Gateway".into()),
            _ => Err("the manifests define several Gateways: choose one with --gateway".into()),
        },
    }
}

/// The gateway's snapshot and the code of the modules it uses (compiled once per digest by the proxy).
fn translate(set: &ManifestSet, key: &ProxyKey) -> (pb::Snapshot, Vec<pb::WasmModule>) {
    let snapshot = snapshot_for(set, &[], key);
    let modules = modules_for(set, &snapshot);
    (snapshot, modules)
}

/// Applies the directory once (an error here is a startup error), then follows it in the background.
pub async fn start(
    dir: PathBuf,
    gateway: Option<String>,
    namespace: String,
    applier: Arc<dyn Apply>,
) -> anyhow::Result<()> {
    let loaded = load_dir(&dir).map_err(|d| anyhow::anyhow!("invalid manifests:\n{d}"))?;
    let key =
        gateway_key(&loaded.set, gateway.as_deref(), &namespace).map_err(anyhow::Error::msg)?;
    let mut version = 1;
    apply(&applier, version, translate(&loaded.set, &key)).map_err(anyhow::Error::msg)?;
    tokio::spawn(async move {
        let mut changes = watch_dir(dir, Duration::from_millis(300), Some(loaded.digest));
        while let Some(change) = changes.recv().await {
            match change {
                Ok(next) => {
                    version += 1;
                    match apply(&applier, version, translate(&next.set, &key)) {
                        Ok(()) => tracing::info!(version, "manifests changed: applied"),
                        Err(e) => {
                            tracing::error!(error = %e, "manifests changed but cannot be applied; keeping the previous configuration")
                        }
                    }
                }
                Err(d) => tracing::error!(
                    "manifest change rejected, keeping the previous configuration:\n{d}"
                ),
            }
        }
    });
    Ok(())
}

fn apply(
    applier: &Arc<dyn Apply>,
    version: u64,
    (snapshot, modules): (pb::Snapshot, Vec<pb::WasmModule>),
) -> Result<(), String> {
    applier.apply(Received::new(version, snapshot, modules))
}
