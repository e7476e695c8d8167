//! How a snapshot is shown to operators (`/config_dump`): everything but the values that may be secrets (the mesh
//! key is left out altogether).

use meshwork_proto as pb;

/// The snapshot as `/config_dump` shows it: Wasm plugins' `pluginConfig` and `vmConfig.env` values may hold secrets
/// (API keys, passwords), so they appear as their sha256 only: enough to tell whether two proxies run the same
/// configuration, nothing to read.
pub fn redacted(snapshot: &pb::Snapshot) -> serde_json::Value {
    let mut snapshot = snapshot.clone();
    snapshot.mesh_key.clear();
    for p in &mut snapshot.wasm_plugins {
        p.config = digest(&p.config).into_bytes();
        for v in p.env.values_mut() {
            *v = digest(v.as_bytes());
        }
    }
    let mut json = serde_json::to_value(&snapshot).unwrap_or_default();
    // `config` is bytes on the wire; show the digest as the string it now is.
    if let Some(plugins) = json.get_mut("wasm_plugins").and_then(|p| p.as_array_mut()) {
        for (p, src) in plugins.iter_mut().zip(&snapshot.wasm_plugins) {
            p["config"] =
                serde_json::Value::String(String::from_utf8_lossy(&src.config).into_owned());
        }
    }
    json
}

fn digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    let hex: String = sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}
