//! Where intent comes from: a directory of YAML manifests, found and read with limits (`walk`), parsed into
//! position-aware nodes with limits (`yaml`), loaded and followed for changes (`files`, comparing a
//! `fingerprint` of the manifests and the modules they reference).

pub mod files;
pub mod fingerprint;
pub mod walk;
pub mod yaml;

pub use files::{load_dir, watch_dir, Follow, LoadedSet};

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
