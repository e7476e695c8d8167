//! Meshwork control plane: desired state in, per-proxy snapshots out.
//!
//! 1. [`source`]: a manifest directory (YAML with line numbers), followed for changes.
//! 2. [`model`]: typed manifests, field-level checks; [`validate`]: cross-object checks.
//! 3. [`translate`]: pure functions from the model and the live [`registry`] to one snapshot per proxy.
//! 4. [`serve`]: the gRPC discovery stream (versions, nonces, ACK/NACK) and status.
//! 5. [`cli`]: `meshwork up | control | validate | status`.

pub mod cli;
pub mod diag;
pub mod model;
pub mod registry;
pub mod serve;
pub mod source;
pub mod translate;
pub mod validate;
