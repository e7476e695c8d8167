//! The workload's own certificate as both rustls configs see it: one swappable slot that the
//! server side (`ResolvesServerCert`) and the client side (`ResolvesClientCert`) read on every new
//! handshake, so a rotated certificate is used at once while open connections carry on. A resumed
//! session presents no certificate: it keeps the identity verified on its full handshake.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

use crate::svid::leaf_spiffe_id;

/// The current certificate and key of this workload; [`RotatingIdentity::rotate`] swaps them.
pub struct RotatingIdentity {
    current: ArcSwap<CertifiedKey>,
}

impl RotatingIdentity {
    /// Starts with `initial`; share the returned `Arc` between server and client configs.
    pub fn new(initial: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwap::new(initial),
        })
    }

    /// Makes `next` the certificate of every handshake that starts from now on.
    pub fn rotate(&self, next: Arc<CertifiedKey>) {
        self.current.store(next);
    }

    /// The certificate new handshakes present.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for RotatingIdentity {
    /// The same certificate whatever the SNI (or none): mesh peers dial by identity, not name.
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for RotatingIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl fmt::Debug for RotatingIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.current.load();
        let id = current
            .cert
            .first()
            .and_then(|leaf| leaf_spiffe_id(leaf).ok());
        f.debug_struct("RotatingIdentity")
            .field("chain_len", &current.cert.len())
            .field("id", &id)
            .finish_non_exhaustive()
    }
}
