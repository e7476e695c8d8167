//! TLS for the control-plane channel. The control plane presents its own SVID (with the root appended, so a proxy
//! that has only a pin can find it) and asks proxies for a client certificate without requiring one: a proxy that
//! has no certificate yet bootstraps with a token inside the TLS session; one that has a certificate proves its
//! identity with it. A proxy checks the control plane against its trust bundle, or, before it has one, against the
//! root whose sha256 its bootstrap token pins.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, DigitallySignedStruct, Error, RootCertStore, ServerConfig, SignatureScheme,
};
use sha2::{Digest, Sha256};

use super::{provider, RotatingIdentity, SvidClientVerifier, SvidServerVerifier, TlsConfigError};
use crate::bundle::TrustBundle;
use crate::spiffe::{SpiffeId, TrustDomain};

/// The control plane's server config: its certificate for any SNI, ALPN h2, client certificates verified when
/// presented (against `bundle`, then the SVID rules) but not required.
pub fn control_server_config(
    identity: Arc<RotatingIdentity>,
    bundle: &TrustBundle,
    trust_domain: &TrustDomain,
) -> Result<ServerConfig, TlsConfigError> {
    let provider = provider();
    let roots = Arc::new(bundle.root_store());
    if roots.is_empty() {
        return Err(TlsConfigError::NoRoots);
    }
    let webpki = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .allow_unauthenticated()
        .build()?;
    let verifier = SvidClientVerifier::optional(webpki, trust_domain.clone());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(identity);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// What a proxy trusts the control plane by.
#[derive(Clone)]
pub enum ControlTrust {
    /// The mesh's roots (after bootstrap).
    Bundle(TrustBundle),
    /// Before bootstrap: the sha256 (32 bytes) of the root certificate, which the control plane sends after its own.
    Pinned([u8; 32]),
}

/// A proxy's client config for the control plane: the server must prove `control_plane` (SPIFFE ID) under
/// `trust`; the proxy presents `identity` when it has one.
pub fn control_client_config(
    identity: Option<Arc<RotatingIdentity>>,
    trust: ControlTrust,
    trust_domain: &TrustDomain,
    control_plane: SpiffeId,
) -> Result<ClientConfig, TlsConfigError> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match trust {
        ControlTrust::Bundle(bundle) => {
            let roots = Arc::new(bundle.root_store());
            if roots.is_empty() {
                return Err(TlsConfigError::NoRoots);
            }
            Arc::new(SvidServerVerifier::new(
                roots,
                provider.clone(),
                trust_domain.clone(),
                vec![control_plane],
            ))
        }
        ControlTrust::Pinned(pin) => Arc::new(PinnedRootVerifier {
            pin,
            provider: provider.clone(),
            trust_domain: trust_domain.clone(),
            signatures: SvidServerVerifier::new(
                Arc::new(RootCertStore::empty()),
                provider.clone(),
                trust_domain.clone(),
                vec![control_plane.clone()],
            ),
            control_plane,
        }),
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some(identity) => builder.with_client_cert_resolver(identity),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Verifies the server against the root in its chain whose sha256 is `pin` (a chain without it is refused), with
/// the same rules as `SvidServerVerifier` from there on.
struct PinnedRootVerifier {
    pin: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
    trust_domain: TrustDomain,
    control_plane: SpiffeId,
    /// For the handshake signatures, which do not depend on the roots: the same checks as after bootstrap.
    signatures: SvidServerVerifier,
}

impl PinnedRootVerifier {
    fn pinned(&self, intermediates: &[CertificateDer<'_>]) -> Result<SvidServerVerifier, Error> {
        let root = intermediates
            .iter()
            .find(|c| Sha256::digest(c.as_ref()).as_slice() == self.pin)
            .ok_or(Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))?;
        let mut roots = RootCertStore::empty();
        roots
            .add(root.clone().into_owned())
            .map_err(|_| Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
        Ok(SvidServerVerifier::new(
            Arc::new(roots),
            self.provider.clone(),
            self.trust_domain.clone(),
            vec![self.control_plane.clone()],
        ))
    }
}

impl ServerCertVerifier for PinnedRootVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.pinned(intermediates)?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.signatures.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.signatures.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.supported_verify_schemes()
    }
}

impl fmt::Debug for PinnedRootVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedRootVerifier")
            .field("control_plane", &self.control_plane)
            .finish_non_exhaustive()
    }
}
