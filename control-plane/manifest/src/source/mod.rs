//! Where intent comes from: a directory of YAML manifests (`files`), parsed into position-aware nodes (`yaml`).

pub mod files;
pub mod yaml;

pub use files::{load_dir, watch_dir, LoadedSet};

#[cfg(test)]
mod tests;
