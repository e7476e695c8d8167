//! What the directory watcher compares between two polls: the manifest texts *and* the content of every Wasm
//! module they reference (`spec.url`), so a module rebuilt in place is applied even when no manifest changes and
//! the WasmPlugin gives no `sha256`; and of every certificate, key and CA file they name, so a set refused for a
//! missing or bad certificate is loaded again once the file is fixed. (Digests only: no content is kept.)
//!
//! A module is hashed again only when its size or modification time changed, or while that time is too recent to
//! trust: a rewrite within the file system's timestamp granularity keeps both, so a module written in the last
//! [`SETTLE`] is hashed on every poll (the rule git uses for its index).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::model::wasm::{module_files, MAX_MODULE_BYTES};

/// How old a module's modification time must be before its digest is reused on an unchanged size and time.
pub const SETTLE: Duration = Duration::from_secs(2);

/// The digests a watcher keeps between polls.
#[derive(Debug, Default)]
pub struct Fingerprint {
    /// The module files of the last manifest texts seen, by the digest of those texts.
    refs: Option<([u8; 32], Vec<PathBuf>)>,
    modules: HashMap<PathBuf, Settled>,
}

/// The digest of a module whose size and modification time have not changed for [`SETTLE`].
#[derive(Debug)]
struct Settled {
    len: u64,
    modified: SystemTime,
    digest: [u8; 32],
}

impl Fingerprint {
    /// The digest of these manifest files and of the modules they reference.
    pub fn of(&mut self, files: &[(PathBuf, String)]) -> [u8; 32] {
        let texts = texts_digest(files);
        let refs = match self.refs.take() {
            Some((d, refs)) if d == texts => refs,
            _ => {
                let mut refs = module_files(files);
                refs.extend(crate::model::tls::referenced_files(files));
                refs.sort();
                refs.dedup();
                refs
            }
        };
        let mut h = Sha256::new();
        h.update(texts);
        for path in &refs {
            h.update(path.to_string_lossy().as_bytes());
            h.update([0]);
            h.update(self.module(path));
        }
        self.modules.retain(|p, _| refs.contains(p));
        self.refs = Some((texts, refs));
        h.finalize().into()
    }

    /// The digest of one module's content, or of the reason it cannot be read (so that it appearing, or the
    /// error changing, counts as a change).
    fn module(&mut self, path: &Path) -> [u8; 32] {
        let meta = std::fs::metadata(path).and_then(|m| Ok((m.is_file(), m.len(), m.modified()?)));
        let meta = match meta {
            // Never opened: a device may never end, a FIFO blocks whoever opens it (loading refuses both).
            Ok((false, ..)) => return Sha256::digest("error: not a regular file").into(),
            Ok((true, len, modified)) => (len, modified),
            Err(e) => return Sha256::digest(format!("error: {}", e.kind())).into(),
        };
        if let Some(s) = self.modules.get(path) {
            if (s.len, s.modified) == meta {
                return s.digest;
            }
        }
        let digest = match hash_file(path) {
            Ok(d) => d,
            Err(e) => return Sha256::digest(format!("error: {}", e.kind())).into(),
        };
        let (len, modified) = meta;
        let settled = SystemTime::now()
            .duration_since(modified)
            .is_ok_and(|age| age >= SETTLE);
        if settled {
            let s = Settled {
                len,
                modified,
                digest,
            };
            self.modules.insert(path.to_path_buf(), s);
        } else {
            self.modules.remove(path);
        }
        digest
    }
}

fn texts_digest(files: &[(PathBuf, String)]) -> [u8; 32] {
    let mut h = Sha256::new();
    for (path, text) in files {
        h.update(path.to_string_lossy().as_bytes());
        h.update([0]);
        h.update(text.as_bytes());
        h.update([0]);
    }
    h.finalize().into()
}

/// Hashes a file as it streams (modules can be large; nothing is kept), up to one byte more than a module may
/// have: a file growing without end cannot hold the watcher (loading refuses a module that large).
fn hash_file(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut h = Sha256::new();
    let file = std::fs::File::open(path)?;
    std::io::copy(&mut file.take(MAX_MODULE_BYTES + 1), &mut h)?;
    Ok(h.finalize().into())
}
