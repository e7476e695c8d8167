//! Accept-side X.509-SVID rules (<https://github.com/spiffe/spiffe/blob/main/standards/X509-SVID.md>)
//! applied to any peer's leaf certificate after its chain verified: what makes a leaf a workload
//! identity of our trust domain, and the reason when it is not (one variant per reason, for metrics).

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::spiffe::{SpiffeId, SpiffeIdError, TrustDomain};

/// Why a peer's leaf certificate is not an acceptable X.509-SVID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    #[error("the certificate could not be parsed as X.509: {0}")]
    Unparsable(String),
    #[error("the certificate has no URI SAN; an X.509-SVID carries exactly one (its SPIFFE ID)")]
    NoUriSan,
    #[error("the certificate has {count} URI SANs; an X.509-SVID carries exactly one")]
    TooManyUriSans { count: usize },
    #[error("the URI SAN {uri:?} is not a SPIFFE ID: {reason}")]
    NotSpiffe { uri: String, reason: SpiffeIdError },
    #[error("the URI SAN {0} names a trust domain, not a workload; expected a path after it")]
    NoWorkloadPath(String),
    #[error("the certificate is a CA (basicConstraints cA=true); expected a leaf")]
    IsCa,
    #[error("the certificate's key usage allows keyCertSign or cRLSign; a leaf must not")]
    CaKeyUsage,
    #[error("the SPIFFE ID is in trust domain {got}; expected {expected}")]
    WrongTrustDomain {
        got: TrustDomain,
        expected: TrustDomain,
    },
}

impl SvidError {
    /// A short, stable label for this reason (e.g. a metrics label value).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unparsable(_) => "unparsable",
            Self::NoUriSan => "no_uri_san",
            Self::TooManyUriSans { .. } => "too_many_uri_sans",
            Self::NotSpiffe { .. } => "not_spiffe",
            Self::NoWorkloadPath(_) => "no_workload_path",
            Self::IsCa => "is_ca",
            Self::CaKeyUsage => "ca_key_usage",
            Self::WrongTrustDomain { .. } => "wrong_trust_domain",
        }
    }
}

/// Checks the SVID rules on a leaf certificate (DER) and returns its SPIFFE ID.
///
/// This does not verify the chain or validity period: the TLS verifiers do that first.
pub fn check_svid(leaf_der: &[u8], trust_domain: &TrustDomain) -> Result<SpiffeId, SvidError> {
    let id = leaf_spiffe_id(leaf_der)?;
    if id.trust_domain() != trust_domain {
        return Err(SvidError::WrongTrustDomain {
            got: id.trust_domain().clone(),
            expected: trust_domain.clone(),
        });
    }
    Ok(id)
}

/// The SVID rules but the trust domain's: a leaf (not a CA) with exactly one workload SPIFFE ID.
pub(crate) fn leaf_spiffe_id(leaf_der: &[u8]) -> Result<SpiffeId, SvidError> {
    let (_, cert) =
        X509Certificate::from_der(leaf_der).map_err(|e| SvidError::Unparsable(e.to_string()))?;
    check_not_ca(&cert)?;
    single_spiffe_id(&cert)
}

fn check_not_ca(cert: &X509Certificate<'_>) -> Result<(), SvidError> {
    let unparsable = |e: x509_parser::error::X509Error| SvidError::Unparsable(e.to_string());
    if cert
        .basic_constraints()
        .map_err(unparsable)?
        .is_some_and(|bc| bc.value.ca)
    {
        return Err(SvidError::IsCa);
    }
    if let Some(ku) = cert.key_usage().map_err(unparsable)? {
        if ku.value.key_cert_sign() || ku.value.crl_sign() {
            return Err(SvidError::CaKeyUsage);
        }
    }
    Ok(())
}

fn single_spiffe_id(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| SvidError::Unparsable(e.to_string()))?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    let uri = match uris.as_slice() {
        [] => return Err(SvidError::NoUriSan),
        [uri] => *uri,
        _ => return Err(SvidError::TooManyUriSans { count: uris.len() }),
    };
    let id = SpiffeId::parse(uri).map_err(|reason| SvidError::NotSpiffe {
        uri: uri.to_owned(),
        reason,
    })?;
    if id.path().is_empty() {
        return Err(SvidError::NoWorkloadPath(id.to_string()));
    }
    Ok(id)
}

/// Every URI SAN of a certificate (DER), in order: e.g. a mesh root's `spiffe://<trust-domain>`.
pub fn uri_sans(der: &[u8]) -> Result<Vec<String>, SvidError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| SvidError::Unparsable(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| SvidError::Unparsable(e.to_string()))?;
    Ok(san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some((*uri).to_string()),
            _ => None,
        })
        .collect())
}

/// A certificate's notAfter (DER), if it parses.
pub fn not_after(der: &[u8]) -> Option<std::time::SystemTime> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}
