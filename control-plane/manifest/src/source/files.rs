//! Loads a manifest directory (the files `walk` finds, several documents per file) and follows it for changes.
//! Following polls file contents: it is immune to the rename-on-save dance of editors and to missing inotify events
//! on bind mounts, and manifest directories are small.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::diag::{Diagnostics, Sink};
use crate::model::{parse_document, ManifestSet};
use crate::source::walk::read_files;
use crate::source::yaml::parse_documents;
use crate::validate::validate;

/// A validated manifest set and the digest of the files it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedSet {
    pub set: ManifestSet,
    pub digest: [u8; 32],
}

/// The WasmPlugins of a manifest directory whose modules are built from source (`spec.build`).
pub fn declared_builds(dir: &Path) -> Result<Vec<crate::model::wasm::DeclaredBuild>, Diagnostics> {
    Ok(crate::model::wasm::declared_builds(&read_files(dir)?))
}

fn digest(files: &[(PathBuf, String)]) -> [u8; 32] {
    let mut h = Sha256::new();
    for (path, text) in files {
        h.update(path.to_string_lossy().as_bytes());
        h.update([0]);
        h.update(text.as_bytes());
        h.update([0]);
    }
    h.finalize().into()
}

/// Parses and validates texts as if they were files (the path is only used in diagnostics).
pub fn load_texts(files: &[(PathBuf, String)]) -> Result<ManifestSet, Diagnostics> {
    let mut set = ManifestSet::default();
    let mut diags = Vec::new();
    for (path, text) in files {
        let mut sink = Sink::new(path.clone());
        match parse_documents(text) {
            Ok(docs) => docs
                .iter()
                .for_each(|d| parse_document(d, &mut sink, &mut set)),
            Err(e) => sink.error(e.line, "", format!("invalid YAML: {}", e.message)),
        }
        diags.extend(sink.diags);
    }
    if diags.is_empty() {
        diags = validate(&set);
    }
    if diags.is_empty() {
        Ok(set)
    } else {
        Err(Diagnostics(diags))
    }
}

/// Reads, parses and validates a manifest directory. Paths in diagnostics are relative to `dir`'s parent when
/// possible, as the user typed them.
pub fn load_dir(dir: &Path) -> Result<LoadedSet, Diagnostics> {
    if !dir.is_dir() {
        let mut sink = Sink::new(dir);
        sink.error(0, "", "expected a directory of *.yaml manifests");
        return Err(Diagnostics(sink.diags));
    }
    let files = read_files(dir)?;
    let digest = digest(&files);
    if files.is_empty() {
        let mut sink = Sink::new(dir);
        sink.error(0, "", "no *.yaml or *.yml files found");
        return Err(Diagnostics(sink.diags));
    }
    load_texts(&files).map(|set| LoadedSet { set, digest })
}

/// Follows `dir`: sends the result of every load whose files changed since the last one (starting with `last`,
/// the digest already served, if any). Stops when the receiver is dropped.
pub fn watch_dir(
    dir: PathBuf,
    interval: Duration,
    mut last: Option<[u8; 32]>,
) -> mpsc::Receiver<Result<LoadedSet, Diagnostics>> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if tx.is_closed() {
                return;
            }
            let d = dir.clone();
            let files = tokio::task::spawn_blocking(move || read_files(&d)).await;
            let Ok(files) = files else { continue };
            let result = match files {
                Ok(files) => {
                    let dg = digest(&files);
                    if last == Some(dg) {
                        continue;
                    }
                    last = Some(dg);
                    load_texts(&files).map(|set| LoadedSet { set, digest: dg })
                }
                Err(e) => Err(e),
            };
            if tx.send(result).await.is_err() {
                return;
            }
        }
    });
    rx
}
