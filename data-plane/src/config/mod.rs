//! Configuration, the plain data under every stage: domain types (`snapshot`, `policy`), conversion from the wire
//! (`from_proto`, the only place protobuf is read), the atomic store, and the two sources: the control-plane
//! stream (`client`) and a manifest directory (`standalone`), which hand what they receive to an `Apply`.

pub mod client;
pub mod dump;
pub mod from_proto;
pub mod policy;
pub mod snapshot;
pub mod standalone;
pub mod store;

pub use snapshot::Snapshot;
pub use store::ConfigStore;

use meshwork_proto as pb;

use crate::filter::wasm::LazyWasm;

/// A configuration as a source received it: the snapshot and the Wasm modules it brings, still in wire form.
pub struct Received {
    pub version: u64,
    snapshot: pb::Snapshot,
    modules: Vec<pb::WasmModule>,
}

impl Received {
    pub fn new(version: u64, snapshot: pb::Snapshot, modules: Vec<pb::WasmModule>) -> Self {
        Received {
            version,
            snapshot,
            modules,
        }
    }

    /// Whether this is what `current` already serves (a reconnect re-sends it).
    pub fn same_as(&self, current: &Snapshot) -> bool {
        self.version == current.version && self.snapshot == current.source
    }

    /// Builds the snapshot, with its Wasm plugins (compiling new modules, keeping the plugins of `previous` whose
    /// definition did not change). An error is the reason for a NACK.
    pub fn build(
        self,
        wasm: &LazyWasm,
        previous: &Snapshot,
        node_id: &str,
    ) -> Result<Snapshot, String> {
        let plugins =
            from_proto::plugins::build(wasm, &self.snapshot, &self.modules, previous, node_id)?;
        let mut snap = Snapshot::from_proto(self.version, self.snapshot, plugins)
            .map_err(|e| e.to_string())?;
        // A new control plane brings a new mesh key: callers still on the old one stay trusted meanwhile.
        if let Some(old) = previous.mesh_keys.first() {
            if !snap.mesh_keys.contains(old) {
                snap.mesh_keys.push(old.clone());
            }
        }
        Ok(snap)
    }
}

/// Applies what a source receives (the proxy's `app::Applier`): builds the snapshot and publishes it, or refuses
/// it with the reason (a NACK) and keeps the previous one.
pub trait Apply: Send + Sync {
    fn apply(&self, received: Received) -> Result<(), String>;

    /// The version being served (0 before the first).
    fn applied_version(&self) -> u64;

    /// Digests of the Wasm modules compiled already, so a reconnect need not send their code again.
    fn cached_modules(&self) -> Vec<String>;
}
