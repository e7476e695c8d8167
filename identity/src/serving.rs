//! Server certificates the operator gives in files (gateway HTTPS listeners): read with a size bound, parsed from
//! PEM, the private key checked against the leaf, with the leaf's DNS names (for SNI selection) and its expiry.
//! Errors name the file and what was wrong in it, never any of its bytes.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;

use crate::tls::provider;

/// The most a certificate or key file may hold (a chain of a few certificates is a few KiB).
pub const MAX_PEM_BYTES: u64 = 1 << 20;

/// A certificate chain and its key, ready for rustls, with what selection and metrics need from the leaf.
#[derive(Debug)]
pub struct ServingCert {
    pub key: Arc<CertifiedKey>,
    /// The leaf's DNS subject alternative names, lowercase (`*.example.com` wildcards kept as written).
    pub names: Vec<String>,
    pub not_after: SystemTime,
}

#[derive(Debug, thiserror::Error)]
pub enum ServingCertError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: larger than {MAX_PEM_BYTES} bytes: expected a PEM file")]
    TooLarge { path: PathBuf },
    #[error("{path}: not a regular file: expected a PEM file")]
    NotAFile { path: PathBuf },
    #[error("{path}: expected PEM `CERTIFICATE` blocks (the leaf first), found none")]
    NoCertificate { path: PathBuf },
    #[error("{path}: the leaf certificate cannot be parsed: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    #[error("{path}: expected a PEM private key (PKCS#8, PKCS#1 or SEC1), found none")]
    NoKey { path: PathBuf },
    #[error("{path}: the private key is malformed or of an unsupported type")]
    BadKey { path: PathBuf },
    #[error("the private key in {key} does not belong to the certificate in {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
}

impl ServingCertError {
    /// The file at fault (for a mismatch: the key file).
    pub fn path(&self) -> &Path {
        match self {
            ServingCertError::Read { path, .. }
            | ServingCertError::TooLarge { path }
            | ServingCertError::NotAFile { path }
            | ServingCertError::NoCertificate { path }
            | ServingCertError::BadCertificate { path, .. }
            | ServingCertError::NoKey { path }
            | ServingCertError::BadKey { path } => path,
            ServingCertError::Mismatch { key, .. } => key,
        }
    }
}

/// Reads `cert` (a PEM chain, leaf first) and `key` (its PEM private key) and checks that they belong together.
pub fn load(cert: &Path, key: &Path) -> Result<ServingCert, ServingCertError> {
    let cert_pem = read_bounded(cert)?;
    let key_pem = read_bounded(key)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    let leaf = chain
        .first()
        .ok_or_else(|| ServingCertError::NoCertificate {
            path: cert.to_path_buf(),
        })?;
    let (names, not_after) =
        leaf_facts(leaf).map_err(|reason| ServingCertError::BadCertificate {
            path: cert.to_path_buf(),
            reason,
        })?;
    let der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| ServingCertError::NoKey {
        path: key.to_path_buf(),
    })?;
    let signing =
        provider()
            .key_provider
            .load_private_key(der)
            .map_err(|_| ServingCertError::BadKey {
                path: key.to_path_buf(),
            })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        // `Unknown`: the key type cannot say its public key; rustls will find out at the first handshake.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(ServingCertError::Mismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            })
        }
    }
    Ok(ServingCert {
        key: Arc::new(certified),
        names,
        not_after,
    })
}

/// Reads CA certificates (PEM, one or more) to verify a server with.
pub fn load_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, ServingCertError> {
    let pem = read_bounded(path)?;
    let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if roots.is_empty() {
        return Err(ServingCertError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(roots)
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, ServingCertError> {
    let read = |source| ServingCertError::Read {
        path: path.to_path_buf(),
        source,
    };
    // A FIFO or a device would block the open or the read forever: only regular files (symlinks followed).
    let meta = std::fs::metadata(path).map_err(read)?;
    if !meta.is_file() {
        return Err(ServingCertError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let file = std::fs::File::open(path).map_err(read)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(ServingCertError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

fn leaf_facts(leaf: &CertificateDer<'_>) -> Result<(Vec<String>, SystemTime), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| e.to_string())?;
    // A CA certificate is not a server's (and pointing a listener at the mesh CA's files must not serve its key).
    if cert.is_ca() {
        return Err(
            "it is a CA certificate (basicConstraints cA=true): expected a server certificate"
                .into(),
        );
    }
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    let secs = cert.validity().not_after.timestamp();
    let not_after = if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH
    };
    Ok((names, not_after))
}

/// Whether a certificate DNS name covers `host` (lowercase, no port): equal, or a `*.` wildcard standing for
/// exactly one leftmost label (RFC 6125 §6.4.3, as browsers do).
pub fn dns_name_covers(name: &str, host: &str) -> bool {
    match name.strip_prefix("*.") {
        None => name == host,
        Some(parent) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn files(cert: &str, key: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        (dir, c, k)
    }

    #[test]
    fn a_matching_pair_loads_with_its_names_and_expiry() {
        let (cert, key) = self_signed(&["a.example.test", "*.b.example.test"]);
        let (_d, c, k) = files(&cert, &key);
        let loaded = load(&c, &k).unwrap();
        assert_eq!(loaded.names, ["a.example.test", "*.b.example.test"]);
        assert!(loaded.not_after > SystemTime::now());
        assert_eq!(loaded.key.cert.len(), 1);
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let (cert, _) = self_signed(&["a.example.test"]);
        let (_, other_key) = self_signed(&["a.example.test"]);
        let (_d, c, k) = files(&cert, &other_key);
        let err = load(&c, &k).unwrap_err();
        assert!(matches!(err, ServingCertError::Mismatch { .. }), "{err}");
        assert_eq!(err.path(), k);
    }

    #[test]
    fn a_file_without_a_certificate_is_refused_without_echoing_it() {
        let (_, key) = self_signed(&["a.example.test"]);
        let (_d, c, k) = files("not a certificate: s3cr3t", &key);
        let err = load(&c, &k).unwrap_err();
        assert!(
            matches!(err, ServingCertError::NoCertificate { .. }),
            "{err}"
        );
        assert!(!err.to_string().contains("s3cr3t"));
        assert_eq!(err.path(), c);
    }

    #[test]
    fn a_key_file_holding_a_certificate_is_refused() {
        let (cert, _) = self_signed(&["a.example.test"]);
        let (_d, c, k) = files(&cert, &cert);
        let err = load(&c, &k).unwrap_err();
        assert!(matches!(err, ServingCertError::NoKey { .. }), "{err}");
    }

    #[test]
    fn a_missing_or_oversized_file_is_refused() {
        let (cert, key) = self_signed(&["a.example.test"]);
        let (d, c, _) = files(&cert, &key);
        let missing = d.path().join("absent.key");
        assert!(matches!(
            load(&c, &missing).unwrap_err(),
            ServingCertError::Read { .. }
        ));
        let big = d.path().join("big.crt");
        std::fs::write(&big, vec![b'A'; MAX_PEM_BYTES as usize + 1]).unwrap();
        assert!(matches!(
            load(&big, &c).unwrap_err(),
            ServingCertError::TooLarge { .. }
        ));
    }

    #[test]
    fn a_ca_certificate_or_a_fifo_is_refused() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["ca.example.test".to_string()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let (d, c, k) = files(&ca.pem(), &key.serialize_pem());
        let err = load(&c, &k).unwrap_err();
        assert!(err.to_string().contains("CA certificate"), "{err}");
        let fifo = d.path().join("fifo.crt");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        assert!(matches!(
            load(&fifo, &k).unwrap_err(),
            ServingCertError::NotAFile { .. }
        ));
    }

    #[test]
    fn wildcards_cover_exactly_one_label() {
        assert!(dns_name_covers("*.example.test", "a.example.test"));
        assert!(!dns_name_covers("*.example.test", "a.b.example.test"));
        assert!(!dns_name_covers("*.example.test", "example.test"));
        assert!(!dns_name_covers("*.example.test", ".example.test"));
        assert!(dns_name_covers("a.example.test", "a.example.test"));
        assert!(!dns_name_covers("a.example.test", "b.example.test"));
    }
}
