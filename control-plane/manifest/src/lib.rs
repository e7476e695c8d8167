//! Meshwork manifests: from a directory of YAML to the snapshot one proxy needs.
//!
//! This crate exists so that both binaries that read manifests share one implementation without the proxy
//! linking the control plane: `meshwork` (crate `meshwork-control`) serves the result to proxies, and
//! `meshwork-proxy --manifests DIR` (crate `meshwork-proxy`, standalone mode) translates a directory for itself.
//! Both therefore report the same errors and build the same snapshots.
//!
//! 1. [`source`]: a manifest directory (YAML with line numbers), followed for changes.
//! 2. [`model`]: typed manifests, field-level checks; [`validate`]: cross-object checks; [`diag`]: the errors.
//! 3. [`translate`]: pure functions from the model and the live instances to one snapshot per proxy.
//!
//! [`process`] holds the two process helpers both binaries start with (logging, shutdown signal).

pub mod diag;
pub mod model;
pub mod process;
pub mod source;
pub mod translate;
pub mod validate;
