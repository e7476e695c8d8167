//! Configuration, the plain data under every stage: domain types (`snapshot`, `policy`), conversion from the wire
//! (`from_proto`, the only place protobuf is read), the atomic store, and the two sources: the control-plane
//! stream (`client`) and a manifest directory (`standalone`), which hand what they receive to an `Apply`.

pub mod client;
pub mod from_proto;
pub mod policy;
pub mod snapshot;
pub mod standalone;
pub mod store;

pub use snapshot::Snapshot;
pub use store::ConfigStore;

use meshwork_proto as pb;

/// Applies what a source receives (the proxy's `app::Applier`): builds the snapshot and publishes it, or refuses
/// it with the reason (a NACK) and keeps the previous one.
pub trait Apply: Send + Sync {
    fn apply(
        &self,
        version: u64,
        snapshot: pb::Snapshot,
        modules: Vec<pb::WasmModule>,
    ) -> Result<(), String>;

    /// The version being served (0 before the first).
    fn applied_version(&self) -> u64;

    /// Digests of the Wasm modules compiled already, so a reconnect need not send their code again.
    fn cached_modules(&self) -> Vec<String>;
}
