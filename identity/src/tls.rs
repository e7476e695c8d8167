//! rustls configurations for mesh mTLS: TLS 1.3 only, the ring provider, both sides presenting
//! X.509-SVIDs from a swappable [`RotatingIdentity`] and verifying the peer's chain against the
//! trust bundle and then its SVID (`verify.rs`). Session resumption keeps rustls' defaults; a
//! rebuilt config (new bundle or allowed set) starts with an empty session cache.

mod control;
mod resolver;
mod sessions;
mod verify;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::{ClientConfig, CommonState, ServerConfig};
use rustls_pki_types::CertificateDer;

pub use control::{control_client_config, control_server_config, ControlTrust};
pub use resolver::RotatingIdentity;
pub use sessions::{AgedSessions, MAX_SESSION_AGE};
pub use verify::{PeerRejected, SvidClientVerifier, SvidServerVerifier};

use crate::bundle::TrustBundle;
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::svid::check_svid;

/// Why an mTLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("the trust bundle has no usable root; expected at least one CA certificate")]
    NoRoots,
    #[error("could not build the certificate verifier: {0}")]
    Verifier(#[from] VerifierBuilderError),
    #[error("rustls refused the configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider every mesh config uses: ring (aws-lc-rs needs cmake and clang to build).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server config that requires a client certificate chaining to `bundle` and carrying an
/// SVID of `trust_domain`, and presents `identity`'s current certificate whatever the SNI.
pub fn server_config(
    identity: Arc<RotatingIdentity>,
    bundle: &TrustBundle,
    trust_domain: &TrustDomain,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsConfigError> {
    let provider = provider();
    let roots = Arc::new(bundle.root_store());
    if roots.is_empty() {
        return Err(TlsConfigError::NoRoots);
    }
    let webpki = WebPkiClientVerifier::builder_with_provider(roots, provider.clone()).build()?;
    let verifier = SvidClientVerifier::new(webpki, trust_domain.clone());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(identity);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Resumption skips the client certificate check: bounded in age, so an expired peer makes a full handshake.
    config.session_storage = AgedSessions::new(MAX_SESSION_AGE);
    Ok(config)
}

/// A client config that presents `identity`'s current certificate and accepts a server only if
/// its chain verifies against `bundle` (the DNS name is ignored) and its SPIFFE ID is one of
/// `allowed_server_ids` (the identities the control plane says serve the destination).
pub fn client_config(
    identity: Arc<RotatingIdentity>,
    bundle: &TrustBundle,
    trust_domain: &TrustDomain,
    allowed_server_ids: &[SpiffeId],
    alpn: &[&[u8]],
) -> Result<ClientConfig, TlsConfigError> {
    let provider = provider();
    let roots = Arc::new(bundle.root_store());
    if roots.is_empty() {
        return Err(TlsConfigError::NoRoots);
    }
    let verifier = SvidServerVerifier::new(
        roots,
        provider.clone(),
        trust_domain.clone(),
        allowed_server_ids.to_vec(),
    );
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(identity);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The verified peer's SPIFFE ID after a handshake (`None` before it, or without a peer
/// certificate). Pass a `ServerConnection` or `ClientConnection`: both deref to `CommonState`.
pub fn peer_identity(connection: &CommonState, trust_domain: &TrustDomain) -> Option<SpiffeId> {
    peer_identity_from_certs(connection.peer_certificates()?, trust_domain)
}

/// The SPIFFE ID of the leaf in a peer's certificate chain (leaf first).
pub fn peer_identity_from_certs(
    certs: &[CertificateDer<'_>],
    trust_domain: &TrustDomain,
) -> Option<SpiffeId> {
    check_svid(certs.first()?, trust_domain).ok()
}
