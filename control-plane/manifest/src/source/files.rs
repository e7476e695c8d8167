//! Loads a manifest directory (parse, validate, refuse an empty one) and follows it for changes. Following polls:
//! it is immune to the rename-on-save dance of editors and to missing inotify events on bind mounts, and manifest
//! directories are small. A poll compares the manifest texts and the Wasm modules they reference
//! ([`Fingerprint`]); a directory that changed but cannot be loaded (invalid, emptied, unreadable) is reported
//! once, and followers keep their last good set.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::diag::{Diagnostics, Sink};
use crate::model::{parse_document, ManifestSet};
use crate::source::fingerprint::Fingerprint;
use crate::source::walk::read_files;
use crate::source::yaml::parse_documents;
use crate::validate::validate;

/// A validated manifest set and the digest of the files (and modules) it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedSet {
    pub set: ManifestSet,
    pub digest: [u8; 32],
}

/// The WasmPlugins of a manifest directory whose modules are built from source (`spec.build`).
pub fn declared_builds(dir: &Path) -> Result<Vec<crate::model::wasm::DeclaredBuild>, Diagnostics> {
    Ok(crate::model::wasm::declared_builds(&read_files(dir)?))
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

fn dir_error(dir: &Path, message: &str) -> Diagnostics {
    let mut sink = Sink::new(dir);
    sink.error(0, "", message);
    Diagnostics(sink.diags)
}

/// Loads the files read from `dir`. A directory with no manifest is refused, at startup and when followed alike:
/// an editor or a deploy tool that empties it for a moment must not withdraw every listener.
fn load_files(
    dir: &Path,
    files: &[(PathBuf, String)],
    digest: [u8; 32],
) -> Result<LoadedSet, Diagnostics> {
    if files.is_empty() {
        return Err(dir_error(
            dir,
            "no *.yaml or *.yml files found: expected at least one manifest",
        ));
    }
    let set = load_texts(files)?;
    if set.is_empty() {
        return Err(dir_error(
            dir,
            "no manifest documents in its *.yaml / *.yml files: expected at least one",
        ));
    }
    Ok(LoadedSet { set, digest })
}

/// Reads, parses and validates a manifest directory. Paths in diagnostics start with `dir` as given.
pub fn load_dir(dir: &Path) -> Result<LoadedSet, Diagnostics> {
    if !dir.is_dir() {
        return Err(dir_error(dir, "expected a directory of *.yaml manifests"));
    }
    let files = read_files(dir)?;
    let digest = Fingerprint::default().of(&files);
    load_files(dir, &files, digest)
}

/// A followed directory and what its last poll saw.
#[derive(Debug)]
pub struct Follow {
    dir: PathBuf,
    /// The fingerprint of the last files seen, or the digest of the error they gave.
    last: Option<[u8; 32]>,
    fingerprint: Fingerprint,
}

impl Follow {
    /// Follows `dir`, whose state `last` (a [`LoadedSet::digest`]) is already applied, if any.
    pub fn new(dir: PathBuf, last: Option<[u8; 32]>) -> Self {
        Follow {
            dir,
            last,
            fingerprint: Fingerprint::default(),
        }
    }

    /// Reads the directory (blocking): `None` when nothing changed since the last poll, else the result of
    /// loading it. The same failure twice in a row is reported once.
    pub fn poll(&mut self) -> Option<Result<LoadedSet, Diagnostics>> {
        let (seen, files) = match read_files(&self.dir) {
            Ok(files) => (self.fingerprint.of(&files), Ok(files)),
            Err(d) => (Sha256::digest(d.to_string()).into(), Err(d)),
        };
        if self.last == Some(seen) {
            return None;
        }
        self.last = Some(seen);
        Some(files.and_then(|files| load_files(&self.dir, &files, seen)))
    }
}

/// Follows `dir`: sends the result of every poll that saw a change (see [`Follow`]), starting from `last`, the
/// digest already served, if any. Stops when the receiver is dropped.
pub fn watch_dir(
    dir: PathBuf,
    interval: Duration,
    last: Option<[u8; 32]>,
) -> mpsc::Receiver<Result<LoadedSet, Diagnostics>> {
    let (tx, rx) = mpsc::channel(4);
    let follow = Arc::new(Mutex::new(Follow::new(dir, last)));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if tx.is_closed() {
                return;
            }
            let f = follow.clone();
            let polled = tokio::task::spawn_blocking(move || {
                f.lock().unwrap_or_else(PoisonError::into_inner).poll()
            })
            .await;
            let Ok(Some(result)) = polled else { continue };
            if tx.send(result).await.is_err() {
                return;
            }
        }
    });
    rx
}
