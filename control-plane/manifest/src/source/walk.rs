//! Finds and reads the manifest files of a directory: recursively, in name order, each directory once (directory
//! symlinks are followed, but a directory reached again by another path, e.g. through a symlink loop, is skipped),
//! at most [`MAX_DIR_DEPTH`] levels deep, each file at most [`MAX_FILE_BYTES`].

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::diag::{Diagnostics, Sink};

/// The largest manifest file read.
pub const MAX_FILE_BYTES: u64 = 4 << 20;
/// How many directory levels below the manifest directory are read.
pub const MAX_DIR_DEPTH: usize = 32;

/// The `*.yaml` / `*.yml` files under `dir` and their texts, sorted by path.
pub fn read_files(dir: &Path) -> Result<Vec<(PathBuf, String)>, Diagnostics> {
    let mut walk = Walk::default();
    walk.collect(dir, 0)?;
    walk.files.sort();
    walk.files
        .into_iter()
        .map(|p| read_text(&p).map(|text| (p, text)))
        .collect()
}

fn error(path: &Path, message: String) -> Diagnostics {
    let mut sink = Sink::new(path);
    sink.error(0, "", message);
    Diagnostics(sink.diags)
}

#[derive(Default)]
struct Walk {
    /// Canonical paths of the directories read so far.
    visited: HashSet<PathBuf>,
    files: Vec<PathBuf>,
}

impl Walk {
    fn collect(&mut self, dir: &Path, depth: usize) -> Result<(), Diagnostics> {
        let io_err = |e: std::io::Error| error(dir, format!("cannot read: {e}"));
        if !self.visited.insert(dir.canonicalize().map_err(io_err)?) {
            return Ok(()); // already read through another path (a symlink, or a symlink loop)
        }
        if depth > MAX_DIR_DEPTH {
            return Err(error(
                dir,
                format!("directories nest too deep: expected at most {MAX_DIR_DEPTH} levels below the manifest directory"),
            ));
        }
        let mut entries = std::fs::read_dir(dir)
            .and_then(|it| {
                it.map(|e| e.map(|e| e.path()))
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(io_err)?;
        entries.sort();
        for path in entries {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') {
                continue; // editor swap files, .git
            }
            if path.is_dir() {
                self.collect(&path, depth + 1)?;
            } else if name.ends_with(".yaml") || name.ends_with(".yml") {
                self.files.push(path);
            }
        }
        Ok(())
    }
}

/// Reads one manifest file, refusing one larger than [`MAX_FILE_BYTES`] without reading it all (the bound holds
/// even if the file grows while it is read).
fn read_text(path: &Path) -> Result<String, Diagnostics> {
    let io_err = |e: std::io::Error| error(path, format!("cannot read: {e}"));
    let file = std::fs::File::open(path).map_err(io_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(error(
            path,
            format!(
                "file too large: expected a manifest file of at most {} MiB",
                MAX_FILE_BYTES >> 20
            ),
        ));
    }
    String::from_utf8(bytes)
        .map_err(|e| error(path, format!("cannot read: expected UTF-8 text: {e}")))
}
