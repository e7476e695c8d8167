//! The trust bundle: the root certificates a workload trusts, more than one while a CA rotation
//! overlaps (old and new root both trusted until every certificate signed by the old one expired).

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// Why a trust bundle could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("the trust bundle has no certificate; expected at least one PEM `CERTIFICATE` block")]
    Empty,
    #[error("the trust bundle's PEM is malformed: {0}")]
    Pem(String),
    #[error("trust bundle certificate #{index} is not a usable trust anchor: {reason}")]
    BadRoot { index: usize, reason: String },
}

/// An ordered, duplicate-free set of root certificates (DER). The current root comes first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
}

impl TrustBundle {
    /// A bundle of the given DER roots; each must parse as an X.509 trust anchor.
    pub fn from_der(roots: Vec<CertificateDer<'static>>) -> Result<Self, BundleError> {
        if roots.is_empty() {
            return Err(BundleError::Empty);
        }
        for (index, root) in roots.iter().enumerate() {
            webpki_anchor_check(root).map_err(|reason| BundleError::BadRoot { index, reason })?;
        }
        let mut bundle = Self::default();
        roots.into_iter().for_each(|root| bundle.push(root));
        Ok(bundle)
    }

    /// A bundle from concatenated PEM `CERTIFICATE` blocks.
    pub fn from_pem(pem: &str) -> Result<Self, BundleError> {
        let roots = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BundleError::Pem(e.to_string()))?;
        Self::from_der(roots)
    }

    /// Adds `other`'s roots after this bundle's own, skipping ones already present.
    pub fn merge(&mut self, other: &TrustBundle) {
        other.roots.iter().for_each(|root| self.push(root.clone()));
    }

    /// The roots, current first.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The roots as concatenated PEM `CERTIFICATE` blocks.
    pub fn to_pem(&self) -> String {
        self.roots.iter().map(|root| der_to_pem(root)).collect()
    }

    /// The roots as a rustls trust-anchor store.
    pub fn root_store(&self) -> RootCertStore {
        let mut store = RootCertStore::empty();
        // Every root was checked to parse as an anchor when it was added, so nothing is skipped.
        let _ = store.add_parsable_certificates(self.roots.iter().cloned());
        store
    }

    fn push(&mut self, root: CertificateDer<'static>) {
        if !self.roots.contains(&root) {
            self.roots.push(root);
        }
    }
}

/// One certificate as a PEM `CERTIFICATE` block.
pub(crate) fn der_to_pem(der: &[u8]) -> String {
    let lf = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der), lf)
}

fn webpki_anchor_check(root: &CertificateDer<'_>) -> Result<(), String> {
    let mut store = RootCertStore::empty();
    store.add(root.clone()).map_err(|e| e.to_string())
}
