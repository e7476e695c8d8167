//! The control plane's state directory: where its CA and token key live (never in the manifests). `meshwork up DIR`
//! and `meshwork control --manifests DIR` use `DIR/.meshwork` unless `--state-dir` says otherwise; the manifest
//! reader skips hidden directories, so nothing here is ever read as a manifest.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The state directory's name beside the manifests.
pub const DEFAULT_DIR: &str = ".meshwork";

/// `explicit`, else `manifests/.meshwork`; created (mode 0700) if missing.
pub fn resolve(explicit: Option<&Path>, manifests: &Path) -> std::io::Result<PathBuf> {
    let dir = explicit.map_or_else(|| manifests.join(DEFAULT_DIR), Path::to_path_buf);
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
    }
    Ok(dir)
}

/// The secret in `path` (exactly `len` bytes), or a new random one written there with mode 0600.
pub fn secret_file(path: &Path, len: usize) -> std::io::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.len() == len => return Ok(bytes),
        Ok(bytes) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{}: expected {len} bytes, found {} (remove it to make a new one; tokens made with it stop working)",
                    path.display(),
                    bytes.len()
                ),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut secret = vec![0u8; len];
    getrandom::fill(&mut secret).map_err(|e| std::io::Error::other(e.to_string()))?;
    write_private(path, &secret)?;
    Ok(secret)
}

/// Writes `bytes` to `path` with mode 0600, atomically (a temporary file beside it, then a rename).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path)
}
