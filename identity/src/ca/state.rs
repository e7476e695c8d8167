//! The CA's files in its state directory: `ca.pem` (the root certificate) and `ca-key.pem` (its
//! private key, mode 0600, written atomically, never logged), and the root generated on first start.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType, PKCS_ECDSA_P256_SHA256,
};

use super::issue::{random_serial, x509_time};
use super::{Authority, AuthorityError};
use crate::spiffe::TrustDomain;

/// The root certificate's file name in the state directory.
pub const CERT_FILE: &str = "ca.pem";
/// The root key's file name in the state directory.
pub const KEY_FILE: &str = "ca-key.pem";
/// How long a generated root is valid.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// How far before "now" a generated root's validity starts, for peers whose clocks lag.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

pub(super) fn load_or_create(dir: &Path, td: &TrustDomain) -> Result<Authority, AuthorityError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| io_error("creating directory", dir, source))?;
    let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    match (exists(&cert)?, exists(&key)?) {
        (true, true) => Authority::from_files(&cert, &key, td),
        (false, false) => {
            let (cert_pem, key_pem) = generate_root(td)?;
            write_atomically(&key, key_pem.as_bytes(), 0o600)?;
            write_atomically(&cert, cert_pem.as_bytes(), 0o644)?;
            Authority::from_pem(&cert_pem, &key_pem, td)
        }
        (true, false) => Err(AuthorityError::Incomplete {
            present: cert,
            missing: key,
        }),
        (false, true) => Err(AuthorityError::Incomplete {
            present: key,
            missing: cert,
        }),
    }
}

/// A self-signed ECDSA P-256 root for `td`, as (certificate PEM, PKCS#8 key PEM).
fn generate_root(td: &TrustDomain) -> Result<(String, String), AuthorityError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(AuthorityError::Generate)?;
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, td.as_str());
    params
        .distinguished_name
        .push(DnType::CommonName, format!("meshwork root CA {td}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let td_uri = td
        .id()
        .to_string()
        .try_into()
        .map_err(AuthorityError::Generate)?;
    params.subject_alt_names = vec![SanType::URI(td_uri)];
    params.serial_number = Some(random_serial().map_err(AuthorityError::Random)?);
    params.not_before = x509_time(now - CLOCK_SKEW).0;
    params.not_after = x509_time(now + ROOT_LIFETIME).0;
    let cert = params.self_signed(&key).map_err(AuthorityError::Generate)?;
    Ok((cert.pem(), key.serialize_pem()))
}

pub(super) fn read(path: &Path) -> Result<String, AuthorityError> {
    fs::read_to_string(path).map_err(|source| io_error("reading", path, source))
}

fn exists(path: &Path) -> Result<bool, AuthorityError> {
    path.try_exists()
        .map_err(|source| io_error("checking", path, source))
}

/// Writes `contents` to a temporary file with `mode` beside `path`, syncs it, and renames it
/// over `path`, so a crash leaves either no file or the whole file.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), AuthorityError> {
    let tmp = tmp_path(path);
    let _ = fs::remove_file(&tmp); // left by a crash of an earlier process with our pid
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        fs::File::open(dir.unwrap_or(Path::new(".")))?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|source| io_error("writing", path, source))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

fn io_error(action: &'static str, path: &Path, source: std::io::Error) -> AuthorityError {
    AuthorityError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}
