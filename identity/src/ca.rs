//! The mesh certificate authority that lives in the control plane: its signing certificate and key
//! (generated on first start, or given by the operator), the trust bundle it hands out, and the
//! issuance of X.509-SVIDs from workload CSRs (`issue.rs`). Keys on disk: `state.rs`.

mod issue;
mod state;

use std::path::{Path, PathBuf};

use rcgen::{Issuer, KeyPair, PublicKeyData};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

pub use issue::{IssueError, Issued, MAX_LIFETIME, MIN_LIFETIME};

use crate::bundle::{BundleError, TrustBundle};
use crate::spiffe::{SpiffeId, TrustDomain};

/// Why the CA's certificate and key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{present} exists but {missing} does not; expected both (or neither, to create a new CA)"
    )]
    Incomplete { present: PathBuf, missing: PathBuf },
    #[error("the CA certificate PEM has no certificate; expected the signing certificate first")]
    NoCertificate,
    #[error("the CA certificate PEM is malformed: {0}")]
    CertPem(String),
    #[error("the CA key is not a usable private key (expected PKCS#8 PEM): {0}")]
    BadKey(String),
    #[error("the CA certificate could not be parsed as X.509: {0}")]
    Unparsable(String),
    #[error("the CA certificate is not a CA (basicConstraints cA=true is required)")]
    NotCa,
    #[error("the CA certificate's key usage lacks keyCertSign, so it may not sign certificates")]
    NoKeyCertSign,
    #[error("the CA key does not match the CA certificate's public key")]
    KeyMismatch,
    #[error("the CA certificate is not valid now (valid from {not_before} to {not_after})")]
    NotValidNow {
        not_before: String,
        not_after: String,
    },
    #[error("the CA certificate names trust domain {got}; expected {expected}")]
    WrongTrustDomain { got: String, expected: TrustDomain },
    #[error("the CA's trust anchor is unusable: {0}")]
    Bundle(#[from] BundleError),
    #[error("could not generate the CA: {0}")]
    Generate(#[source] rcgen::Error),
    #[error("could not draw a random serial number for the CA: {0}")]
    Random(#[source] getrandom::Error),
}

/// A certificate authority for one trust domain.
pub struct Authority {
    trust_domain: TrustDomain,
    issuer: Issuer<'static, KeyPair>,
    /// Sent after each leaf: the operator chain minus its trust anchor (empty for a root CA).
    intermediates: Vec<CertificateDer<'static>>,
    bundle: TrustBundle,
}

impl Authority {
    /// Loads `ca.pem` and `ca-key.pem` from `state_dir`, or creates a new self-signed root there
    /// on first start (directory mode 0700, key file mode 0600).
    pub fn load_or_create(
        state_dir: &Path,
        trust_domain: &TrustDomain,
    ) -> Result<Self, AuthorityError> {
        state::load_or_create(state_dir, trust_domain)
    }

    /// An operator-given CA from files: a PEM chain (signing certificate first, trust anchor last)
    /// and its PEM private key.
    pub fn from_files(
        cert_chain: &Path,
        key: &Path,
        trust_domain: &TrustDomain,
    ) -> Result<Self, AuthorityError> {
        let chain_pem = state::read(cert_chain)?;
        let key_pem = state::read(key)?;
        Self::from_pem(&chain_pem, &key_pem, trust_domain)
    }

    /// A CA from a PEM chain (signing certificate first; the last certificate becomes the trust
    /// anchor and the ones before it travel with every issued leaf) and its PEM private key.
    pub fn from_pem(
        cert_chain_pem: &str,
        key_pem: &str,
        trust_domain: &TrustDomain,
    ) -> Result<Self, AuthorityError> {
        let chain = CertificateDer::pem_slice_iter(cert_chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| AuthorityError::CertPem(e.to_string()))?;
        let (signing, anchor) = match (chain.first(), chain.last()) {
            (Some(first), Some(last)) => (first, last.clone()),
            _ => return Err(AuthorityError::NoCertificate),
        };
        let key = KeyPair::from_pem(key_pem).map_err(|e| AuthorityError::BadKey(e.to_string()))?;
        check_signing_cert(signing, &key, trust_domain)?;
        let issuer = Issuer::from_ca_cert_der(signing, key)
            .map_err(|e| AuthorityError::Unparsable(e.to_string()))?;
        Ok(Self {
            trust_domain: trust_domain.clone(),
            issuer,
            intermediates: chain[..chain.len() - 1].to_vec(),
            bundle: TrustBundle::from_der(vec![anchor])?,
        })
    }

    /// Also trust `previous` roots (a CA rotation overlap): they are added to the trust bundle
    /// after this CA's own anchor.
    pub fn with_previous_roots(mut self, previous: &TrustBundle) -> Self {
        self.bundle.merge(previous);
        self
    }

    /// The roots workloads should trust: this CA's anchor first, then any previous roots.
    pub fn trust_bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    /// The trust domain this CA issues identities in.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("intermediates", &self.intermediates.len())
            .field("roots", &self.bundle.roots().len())
            .field("key", &"[elided]")
            .finish()
    }
}

/// The operator's (or our stored) signing certificate must be a CA allowed to sign certificates,
/// valid now, for this trust domain, and must carry `key`'s public key.
fn check_signing_cert(
    der: &CertificateDer<'_>,
    key: &KeyPair,
    trust_domain: &TrustDomain,
) -> Result<(), AuthorityError> {
    let unparsable = |e: &dyn std::fmt::Display| AuthorityError::Unparsable(e.to_string());
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| unparsable(&e))?;
    if !cert
        .basic_constraints()
        .map_err(|e| unparsable(&e))?
        .is_some_and(|bc| bc.value.ca)
    {
        return Err(AuthorityError::NotCa);
    }
    let ku = cert.key_usage().map_err(|e| unparsable(&e))?;
    if !ku.is_some_and(|ku| ku.value.key_cert_sign()) {
        return Err(AuthorityError::NoKeyCertSign);
    }
    if cert.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(AuthorityError::KeyMismatch);
    }
    if !cert.validity().is_valid() {
        return Err(AuthorityError::NotValidNow {
            not_before: cert.validity().not_before.to_string(),
            not_after: cert.validity().not_after.to_string(),
        });
    }
    check_ca_trust_domain(&cert, trust_domain)
}

/// A CA certificate carrying a SPIFFE URI SAN must name our trust domain (`spiffe://<td>`).
fn check_ca_trust_domain(
    cert: &X509Certificate<'_>,
    expected: &TrustDomain,
) -> Result<(), AuthorityError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| AuthorityError::Unparsable(e.to_string()))?;
    let uris = san.iter().flat_map(|ext| ext.value.general_names.iter());
    for name in uris {
        let GeneralName::URI(uri) = name else {
            continue;
        };
        if !uri.starts_with("spiffe://") {
            continue;
        }
        match SpiffeId::parse(uri) {
            Ok(id) if id.trust_domain() == expected => {}
            _ => {
                return Err(AuthorityError::WrongTrustDomain {
                    got: (*uri).to_owned(),
                    expected: expected.clone(),
                })
            }
        }
    }
    Ok(())
}
