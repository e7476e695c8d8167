//! The operator's access to a control plane on the same host: the control plane records, for its user, where its
//! state directory is (`Pointer`), and a client with read access to that directory mints itself a short-lived
//! operator certificate from the CA there (`client_config`). The control plane's Status RPC answers only that
//! identity. Also here: the identities of the control plane and the operator.

use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::ca::Authority;
use crate::csr::WorkloadKey;
use crate::spiffe::{SpiffeId, SpiffeIdError, TrustDomain};
use crate::tls::{control_client_config, ControlTrust, RotatingIdentity};

/// `spiffe://<td>/ns/meshwork-system/sa/control-plane`
pub fn control_plane_id(td: &TrustDomain) -> Result<SpiffeId, SpiffeIdError> {
    SpiffeId::workload(td, "meshwork-system", "control-plane")
}

/// `spiffe://<td>/ns/meshwork-system/sa/operator`
pub fn operator_id(td: &TrustDomain) -> Result<SpiffeId, SpiffeIdError> {
    SpiffeId::workload(td, "meshwork-system", "operator")
}

/// A TLS client config for the control plane presenting a fresh operator certificate (valid for `lifetime`) from
/// the CA in `state_dir`.
pub fn client_config(
    state_dir: &Path,
    td: &TrustDomain,
    lifetime: Duration,
) -> Result<rustls::ClientConfig, Box<dyn std::error::Error + Send + Sync>> {
    let ca = Authority::from_files(&state_dir.join("ca.pem"), &state_dir.join("ca-key.pem"), td)?;
    let operator = operator_id(td)?;
    let key = WorkloadKey::generate()?;
    let issued = ca.issue(key.csr_der(&operator)?.as_ref(), &operator, lifetime)?;
    let identity = RotatingIdentity::new(key.certified_key(issued.chain)?);
    let trust = ControlTrust::Bundle(ca.trust_bundle().clone());
    Ok(control_client_config(
        Some(identity),
        trust,
        td,
        control_plane_id(td)?,
    )?)
}

/// Where the control plane listening on an address keeps its state, recorded for its user on its host; removed
/// on drop.
pub struct Pointer(PathBuf);

impl Pointer {
    /// Records `state_dir` and `td` for `addr` (mode 0600, in a 0700 directory of this user's).
    pub fn write(addr: SocketAddr, state_dir: &Path, td: &TrustDomain) -> std::io::Result<Pointer> {
        let path = Self::path(addr)?;
        let state_dir = state_dir
            .canonicalize()
            .unwrap_or_else(|_| state_dir.to_path_buf());
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, format!("{}\n{}\n", state_dir.display(), td.as_str()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, &path)?;
        Ok(Pointer(path))
    }

    /// The state directory and trust domain of the control plane at `addr`, if one of this user's runs there.
    pub fn read(addr: SocketAddr) -> Option<(PathBuf, TrustDomain)> {
        let text = std::fs::read_to_string(Self::path(addr).ok()?).ok()?;
        let mut lines = text.lines();
        let dir = PathBuf::from(lines.next()?);
        let td = TrustDomain::new(lines.next()?).ok()?;
        Some((dir, td))
    }

    /// `$XDG_RUNTIME_DIR/meshwork/control-<ip>-<port>`, else the same under `<tmp>/meshwork-<uid>`; the directory
    /// must be this user's.
    fn path(addr: SocketAddr) -> std::io::Result<PathBuf> {
        let uid = std::fs::metadata("/proc/self")?.uid();
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join(format!("meshwork-{uid}")));
        let dir = base.join("meshwork");
        std::fs::create_dir_all(&dir)?;
        if std::fs::metadata(&dir)?.uid() != uid {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{} belongs to another user; set XDG_RUNTIME_DIR",
                    dir.display()
                ),
            ));
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let name = format!("control-{}-{}", addr.ip(), addr.port()).replace([':', '[', ']'], "_");
        Ok(dir.join(name))
    }
}

impl Drop for Pointer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
