//! The certificate verifiers: webpki checks the peer's chain against the trust bundle (signatures,
//! validity period, key purpose), then the SVID rules run on the leaf. The client side also
//! requires the server's ID to be an allowed one, and ignores the DNS name it dialled.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
};
use rustls::{Error, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::spiffe::{SpiffeId, TrustDomain};
use crate::svid::{check_svid, SvidError};

/// Why a peer whose chain verified was still refused. Carried inside the rustls error
/// (`InvalidCertificate(Other(..))`); [`PeerRejected::from_rustls`] finds it for metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerRejected {
    #[error("the peer's certificate is not an acceptable SVID: {0}")]
    Svid(#[from] SvidError),
    #[error("the server is {got}; expected one of: {allowed}")]
    NotAllowed { got: SpiffeId, allowed: String },
}

impl PeerRejected {
    /// A short, stable label for this reason (e.g. a metrics label value).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Svid(e) => e.reason(),
            Self::NotAllowed { .. } => "server_not_allowed",
        }
    }

    /// The rejection inside a rustls handshake error, if that is why the handshake failed.
    pub fn from_rustls(err: &Error) -> Option<&PeerRejected> {
        match err {
            Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
                inner.downcast_ref::<PeerRejected>()
            }
            _ => None,
        }
    }

    fn into_rustls(self) -> Error {
        Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(self))))
    }
}

/// Server side: webpki's client verifier (client certificate required, unless built `optional`), then the SVID
/// rules.
pub struct SvidClientVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
    trust_domain: TrustDomain,
    optional: bool,
}

impl SvidClientVerifier {
    /// Wraps a webpki client verifier built over the trust bundle.
    pub fn new(webpki: Arc<dyn ClientCertVerifier>, trust_domain: TrustDomain) -> Self {
        Self {
            webpki,
            trust_domain,
            optional: false,
        }
    }

    /// Like `new`, but a client without a certificate may complete the handshake (it proves nothing then); one
    /// that presents a certificate is held to every rule. `webpki` must allow unauthenticated clients too.
    pub fn optional(webpki: Arc<dyn ClientCertVerifier>, trust_domain: TrustDomain) -> Self {
        Self {
            webpki,
            trust_domain,
            optional: true,
        }
    }
}

impl ClientCertVerifier for SvidClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        !self.optional
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.webpki
            .verify_client_cert(end_entity, intermediates, now)?;
        check_svid(end_entity, &self.trust_domain)
            .map_err(|e| PeerRejected::Svid(e).into_rustls())?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

impl fmt::Debug for SvidClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SvidClientVerifier")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

/// Client side: webpki's chain check without the DNS-name check (mesh certificates name
/// workloads, not hosts), then the SVID rules and the allowed-server set. rustls'
/// `WebPkiServerVerifier` is not wrapped because it always checks the name; this runs the same
/// chain check (`verify_server_cert_signed_by_trust_anchor`) and the provider's signature checks.
pub struct SvidServerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    trust_domain: TrustDomain,
    allowed: Vec<SpiffeId>,
}

impl SvidServerVerifier {
    /// A verifier over `roots` that accepts only servers whose SPIFFE ID is in `allowed`.
    pub fn new(
        roots: Arc<RootCertStore>,
        provider: Arc<CryptoProvider>,
        trust_domain: TrustDomain,
        allowed: Vec<SpiffeId>,
    ) -> Self {
        Self {
            roots,
            provider,
            trust_domain,
            allowed,
        }
    }

    fn check_allowed(&self, id: SpiffeId) -> Result<(), PeerRejected> {
        if self.allowed.contains(&id) {
            return Ok(());
        }
        let allowed = self
            .allowed
            .iter()
            .map(SpiffeId::as_str)
            .collect::<Vec<_>>();
        Err(PeerRejected::NotAllowed {
            got: id,
            allowed: if allowed.is_empty() {
                "(none)".into()
            } else {
                allowed.join(", ")
            },
        })
    }
}

impl ServerCertVerifier for SvidServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        // What WebPkiServerVerifier::verify_server_cert does, minus `verify_server_name`.
        let cert = ParsedCertificate::try_from(end_entity)?;
        let algs = self.provider.signature_verification_algorithms.all;
        verify_server_cert_signed_by_trust_anchor(&cert, &self.roots, intermediates, now, algs)?;
        let id = check_svid(end_entity, &self.trust_domain)
            .map_err(|e| PeerRejected::Svid(e).into_rustls())?;
        self.check_allowed(id).map_err(PeerRejected::into_rustls)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl fmt::Debug for SvidServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SvidServerVerifier")
            .field("trust_domain", &self.trust_domain)
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}
