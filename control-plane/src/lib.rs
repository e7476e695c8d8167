//! Meshwork control plane: desired state in, per-proxy snapshots out.
//!
//! Reading, validating and translating manifests is [`meshwork_manifest`]'s job (shared with the standalone
//! proxy); this crate adds what only a control plane has:
//! 1. [`registry`]: live proxy registrations; the sidecars' inbound addresses are the instances translated.
//! 2. [`serve`]: the gRPC discovery stream (versions, nonces, ACK/NACK) and status.
//! 3. [`identity`]: the mesh CA, bootstrap tokens and who each proxy is.
//! 4. [`cli`]: `meshwork up | control | validate | status | plugin`.

pub mod cli;
pub mod dashboard;
pub mod identity;
pub mod registry;
pub mod serve;
