//! Configuration: domain types (`snapshot`), conversion from the wire (`from_proto`), the atomic store, and the
//! two sources: the control-plane stream (`client`) and a manifest directory (`standalone`).

pub mod client;
pub mod from_proto;
pub mod snapshot;
pub mod standalone;
pub mod store;

pub use snapshot::Snapshot;
pub use store::ConfigStore;
