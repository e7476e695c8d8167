//! Issuing X.509-SVIDs from workload CSRs. Only the CSR's public key is used (after its
//! self-signature verifies); everything else it asks for is dropped. The leaf gets exactly the
//! SPIFFE ID the caller vouches for and leaf-only key usages.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType,
    SerialNumber, SubjectPublicKeyInfo,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use super::Authority;
use crate::bundle::der_to_pem;
use crate::spiffe::{SpiffeId, TrustDomain};

/// The shortest certificate lifetime `issue` grants (short ones are for tests).
pub const MIN_LIFETIME: Duration = Duration::from_secs(10);
/// The longest certificate lifetime `issue` grants.
pub const MAX_LIFETIME: Duration = Duration::from_secs(90 * 24 * 60 * 60);
/// How far before "now" an issued leaf's validity starts, for peers whose clocks lag.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// The smallest RSA modulus accepted in a CSR.
const MIN_RSA_BITS: usize = 2048;

/// Why a certificate was not issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("a lifetime of {asked:?} was asked; the shortest allowed is {MIN_LIFETIME:?}")]
    LifetimeTooShort { asked: Duration },
    #[error("a lifetime of {asked:?} was asked; the longest allowed is {MAX_LIFETIME:?}")]
    LifetimeTooLong { asked: Duration },
    #[error("{id} is in trust domain {got}; this CA issues only in {expected}")]
    WrongTrustDomain {
        id: SpiffeId,
        got: TrustDomain,
        expected: TrustDomain,
    },
    #[error("{0} names a trust domain, not a workload; expected a path such as /ns/<ns>/sa/<sa>")]
    NoWorkloadPath(SpiffeId),
    #[error("the CSR could not be parsed as PKCS#10 DER: {0}")]
    UnparsableCsr(String),
    #[error(
        "the CSR's public key is {found}; expected ECDSA P-256 or P-384, Ed25519, or RSA of at least {MIN_RSA_BITS} bits"
    )]
    UnsupportedKey { found: String },
    #[error("the CSR's RSA key has {bits} bits; expected at least {MIN_RSA_BITS}")]
    WeakRsaKey { bits: usize },
    #[error(
        "the CSR's self-signature does not verify ({0}); expected it signed by the key it carries"
    )]
    BadSignature(String),
    #[error("could not sign the certificate: {0}")]
    Sign(#[source] rcgen::Error),
    #[error("could not draw a random serial number: {0}")]
    Random(#[source] getrandom::Error),
}

/// An issued X.509-SVID and the chain to present with it.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The identity in the leaf's URI SAN.
    pub id: SpiffeId,
    /// The leaf certificate (DER).
    pub leaf: CertificateDer<'static>,
    /// Leaf first, then any intermediates up to (not including) the trust anchor.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's notAfter, to the second.
    pub not_after: SystemTime,
}

impl Issued {
    /// The leaf as a PEM `CERTIFICATE` block.
    pub fn leaf_pem(&self) -> String {
        der_to_pem(&self.leaf)
    }

    /// The chain (leaf first) as concatenated PEM `CERTIFICATE` blocks.
    pub fn chain_pem(&self) -> String {
        self.chain.iter().map(|cert| der_to_pem(cert)).collect()
    }
}

/// The public key algorithms a CSR may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyKind {
    Ecdsa,
    Ed25519,
    Rsa,
}

impl Authority {
    /// Issues an X.509-SVID for `id`, valid from one minute ago (clock skew) for `lifetime`, to
    /// the public key in `csr_der` (PKCS#10). The caller has already authenticated the workload
    /// as `id`; nothing but the CSR's public key is taken from it.
    pub fn issue(
        &self,
        csr_der: &[u8],
        id: &SpiffeId,
        lifetime: Duration,
    ) -> Result<Issued, IssueError> {
        check_lifetime(lifetime)?;
        self.check_id(id)?;
        let (public_key, kind) = verified_public_key(csr_der)?;
        let now = SystemTime::now();
        let (not_after_x509, not_after) = x509_time(now + lifetime);
        let mut params = leaf_params(id, kind)?;
        params.not_before = x509_time(now - CLOCK_SKEW).0;
        params.not_after = not_after_x509;
        let leaf = params
            .signed_by(&public_key, &self.issuer)
            .map_err(IssueError::Sign)?;
        let leaf: CertificateDer<'static> = leaf.into();
        let mut chain = vec![leaf.clone()];
        chain.extend(self.intermediates.iter().cloned());
        Ok(Issued {
            id: id.clone(),
            leaf,
            chain,
            not_after,
        })
    }

    fn check_id(&self, id: &SpiffeId) -> Result<(), IssueError> {
        if id.trust_domain() != &self.trust_domain {
            return Err(IssueError::WrongTrustDomain {
                id: id.clone(),
                got: id.trust_domain().clone(),
                expected: self.trust_domain.clone(),
            });
        }
        if id.path().is_empty() {
            return Err(IssueError::NoWorkloadPath(id.clone()));
        }
        Ok(())
    }
}

fn check_lifetime(asked: Duration) -> Result<(), IssueError> {
    if asked < MIN_LIFETIME {
        return Err(IssueError::LifetimeTooShort { asked });
    }
    if asked > MAX_LIFETIME {
        return Err(IssueError::LifetimeTooLong { asked });
    }
    Ok(())
}

/// Parses the CSR, checks its key type, then verifies its self-signature (proof of possession).
fn verified_public_key(csr_der: &[u8]) -> Result<(SubjectPublicKeyInfo, KeyKind), IssueError> {
    let unparsable = |e: &dyn std::fmt::Display| IssueError::UnparsableCsr(e.to_string());
    let (rest, csr) = X509CertificationRequest::from_der(csr_der).map_err(|e| unparsable(&e))?;
    if !rest.is_empty() {
        return Err(unparsable(&"trailing bytes after the CSR"));
    }
    let spki = &csr.certification_request_info.subject_pki;
    let kind = key_kind(spki)?;
    csr.verify_signature()
        .map_err(|e| IssueError::BadSignature(e.to_string()))?;
    let public_key =
        SubjectPublicKeyInfo::from_der(spki.raw).map_err(|e| IssueError::UnsupportedKey {
            found: e.to_string(),
        })?;
    Ok((public_key, kind))
}

fn key_kind(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<KeyKind, IssueError> {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_SIG_ED25519 {
        return Ok(KeyKind::Ed25519);
    }
    if *alg == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => modulus_bits(rsa.modulus),
            _ => return Err(IssueError::UnparsableCsr("malformed RSA public key".into())),
        };
        if bits < MIN_RSA_BITS {
            return Err(IssueError::WeakRsaKey { bits });
        }
        return Ok(KeyKind::Rsa);
    }
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 || c == OID_NIST_EC_P384 => Ok(KeyKind::Ecdsa),
            Some(c) => Err(IssueError::UnsupportedKey {
                found: format!("an EC key on curve {c}"),
            }),
            None => Err(IssueError::UnsupportedKey {
                found: "an EC key with no named curve".into(),
            }),
        };
    }
    Err(IssueError::UnsupportedKey {
        found: format!("a key of algorithm {alg}"),
    })
}

/// The bit length of a big-endian unsigned modulus (leading zero bytes ignored).
fn modulus_bits(modulus: &[u8]) -> usize {
    let significant = modulus
        .iter()
        .position(|&b| b != 0)
        .map_or(&[][..], |i| &modulus[i..]);
    match significant.first() {
        Some(&first) => significant.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

/// Everything in the leaf but its validity: one URI SAN, not a CA, leaf key usages.
fn leaf_params(id: &SpiffeId, kind: KeyKind) -> Result<CertificateParams, IssueError> {
    let mut params = CertificateParams::default();
    // An empty subject makes rcgen mark the SAN extension critical, as RFC 5280 requires.
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(
        id.as_str().try_into().map_err(IssueError::Sign)?,
    )];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if kind == KeyKind::Rsa {
        params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
    }
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial().map_err(IssueError::Random)?);
    Ok(params)
}

/// A random 128-bit serial number. rcgen encodes it as a positive DER INTEGER (a leading zero
/// octet when the top bit is set), at most 17 octets: within RFC 5280's 20.
pub(crate) fn random_serial() -> Result<SerialNumber, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(SerialNumber::from_slice(&bytes))
}

/// `t` truncated to whole seconds (what X.509 time stores), for rcgen and as a `SystemTime`.
pub(crate) fn x509_time(t: SystemTime) -> (OffsetDateTime, SystemTime) {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let truncated = UNIX_EPOCH + Duration::from_secs(secs);
    (OffsetDateTime::from(truncated), truncated)
}
