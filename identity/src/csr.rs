//! The proxy's side of issuance: a fresh ECDSA P-256 key that never leaves memory, a PKCS#10 CSR
//! for its SPIFFE ID, and the issued chain plus that key turned into what rustls presents.

use std::fmt;
use std::sync::Arc;

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{
    CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer,
};

use crate::spiffe::SpiffeId;
use crate::tls::provider;

/// Why a key, CSR or certified key could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("could not generate an ECDSA P-256 key: {0}")]
    Generate(#[source] rcgen::Error),
    #[error("could not encode the CSR for {id}: {source}")]
    Encode {
        id: SpiffeId,
        #[source]
        source: rcgen::Error,
    },
    #[error("the issued chain is empty; expected the leaf certificate first")]
    EmptyChain,
    #[error(
        "the issued chain does not fit this key (expected the leaf to carry its public key): {0}"
    )]
    KeyMismatch(#[source] rustls::Error),
}

/// A workload's private key (ECDSA P-256). Held in memory only; `Debug` does not print it.
pub struct WorkloadKey {
    key: KeyPair,
}

/// A fresh ECDSA P-256 workload key.
pub fn generate() -> Result<WorkloadKey, CsrError> {
    WorkloadKey::generate()
}

impl WorkloadKey {
    /// A fresh ECDSA P-256 key from the system's random source.
    pub fn generate() -> Result<Self, CsrError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CsrError::Generate)?;
        Ok(Self { key })
    }

    /// A PKCS#10 CSR (DER) for `id`, signed by this key. The CA takes only the public key from
    /// it; the URI SAN is there for humans and other CAs.
    pub fn csr_der(
        &self,
        id: &SpiffeId,
    ) -> Result<CertificateSigningRequestDer<'static>, CsrError> {
        let encode = |source| CsrError::Encode {
            id: id.clone(),
            source,
        };
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.as_str().try_into().map_err(encode)?)];
        let csr = params.serialize_request(&self.key).map_err(encode)?;
        Ok(csr.into())
    }

    /// The public key as a DER SubjectPublicKeyInfo.
    pub fn public_key_der(&self) -> Vec<u8> {
        rcgen::PublicKeyData::subject_public_key_info(&self.key)
    }

    /// The issued chain (leaf first) and this key, as rustls presents them. Refuses a chain whose
    /// leaf is for another key.
    pub fn certified_key(
        &self,
        chain: Vec<CertificateDer<'static>>,
    ) -> Result<Arc<CertifiedKey>, CsrError> {
        if chain.is_empty() {
            return Err(CsrError::EmptyChain);
        }
        let key = CertifiedKey::from_der(chain, self.private_key_der(), &provider())
            .map_err(CsrError::KeyMismatch)?;
        Ok(Arc::new(key))
    }

    /// The private key (PKCS#8 DER), for handing to rustls directly. Do not log or persist it.
    pub fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }
}

impl fmt::Debug for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadKey")
            .field("algorithm", &"ECDSA P-256")
            .field("private_key", &"[elided]")
            .finish()
    }
}
