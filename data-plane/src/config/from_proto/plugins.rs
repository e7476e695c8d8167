//! A snapshot's Wasm plugins: new modules compiled, each plugin built from its module (or kept running, with its
//! instances and in-flight streams, when its definition did not change).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use meshwork_proto as pb;

use crate::config::Snapshot;
use crate::filter::wasm::{LazyWasm, PluginHandle, PluginMeta};

/// Compiles `modules` and builds every plugin `snapshot` names. Any failure is the reason for a NACK.
pub fn build(
    wasm: &LazyWasm,
    snapshot: &pb::Snapshot,
    modules: &[pb::WasmModule],
    previous: &Snapshot,
    node_id: &str,
) -> Result<HashMap<String, Arc<PluginHandle>>, String> {
    for m in modules {
        wasm.get()?
            .add_module(&m.digest, &m.code)
            .map_err(|e| format!("wasm module {}: {e}", m.digest))?;
    }
    let mut plugins = HashMap::new();
    for p in &snapshot.wasm_plugins {
        let unchanged = previous.source.wasm_plugins.iter().any(|old| old == p);
        let handle = match previous.plugins.get(&p.name) {
            Some(h) if unchanged => h.clone(),
            _ => wasm
                .get()?
                .plugin(&p.digest, meta(p, node_id))
                .map_err(|e| format!("wasm plugin {}: {e}", p.name))?,
        };
        plugins.insert(p.name.clone(), handle);
    }
    Ok(plugins)
}

fn meta(p: &pb::WasmPlugin, node_id: &str) -> PluginMeta {
    PluginMeta {
        name: p.name.clone(),
        root_id: p.root_id.clone(),
        config: p.config.clone(),
        env: p.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        node_id: node_id.to_string(),
        fail_open: p.fail_open,
        memory_limit: usize::try_from(p.memory_limit_bytes).unwrap_or(usize::MAX),
        cpu_per_call: Duration::from_millis(p.cpu_per_call_ms.max(1)),
        body_limit: usize::try_from(p.body_buffer_bytes).unwrap_or(usize::MAX),
        started: tokio::time::Instant::now(),
    }
}
