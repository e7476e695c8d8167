//! The proxy's own identity: a key it makes itself (it never leaves the process: the control plane gets a CSR),
//! the X.509-SVID the control plane issues for it, and the trust bundle. The control-plane client installs each
//! certificate it receives; listeners and upstream connections read the current one per handshake (rotation swaps
//! it in place: new handshakes use the new certificate, open connections keep theirs).
//!
//! Before the first certificate the proxy can prove nothing: it bootstraps with a single-use token instead.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use meshwork_identity::csr::WorkloadKey;
use meshwork_identity::spiffe::{SpiffeId, TrustDomain};
use meshwork_identity::tls::RotatingIdentity;
use meshwork_identity::TrustBundle;

/// What the proxy holds once the control plane has certified it.
pub struct Certified {
    pub id: SpiffeId,
    pub trust_domain: TrustDomain,
    pub bundle: TrustBundle,
    /// The certificate presented in handshakes (swapped on renewal).
    pub resolver: Arc<RotatingIdentity>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// When this proxy last installed a certificate.
    pub installed: SystemTime,
}

impl Certified {
    /// When to ask for the next certificate: at a jittered 50-70% of this one's lifetime.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + lifetime.mul_f64(0.5 + fastrand::f64() * 0.2)
    }
}

/// A certificate as the control plane sends it (config/client.rs converts it from the push).
pub struct Issued {
    pub spiffe_id: String,
    /// DER, the proxy's own certificate first.
    pub chain: Vec<Vec<u8>>,
    /// DER roots.
    pub trust_bundle: Vec<Vec<u8>>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// The proxy's identity store.
#[derive(Default)]
pub struct MeshIdentity {
    current: ArcSwapOption<Certified>,
    /// The key whose CSR was last sent, until its certificate arrives.
    pending: Mutex<Option<WorkloadKey>>,
}

/// Why a certificate could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("identity.spiffe_id {0:?}: {1}")]
    Id(String, String),
    #[error("a certificate arrived, but no CSR of this proxy is waiting for one")]
    NoPendingKey,
    #[error("identity.chain: {0}")]
    Chain(String),
    #[error("identity.trust_bundle: {0}")]
    Bundle(String),
}

impl MeshIdentity {
    pub fn current(&self) -> Option<Arc<Certified>> {
        self.current.load_full()
    }

    /// Whether a certificate is installed (no reference taken: cheap enough per request).
    pub fn is_certified(&self) -> bool {
        self.current.load().is_some()
    }

    /// A new key and a CSR for it, for `id`. The key waits for its certificate.
    pub fn new_csr(&self, id: &SpiffeId) -> anyhow::Result<Vec<u8>> {
        let key = WorkloadKey::generate()?;
        let csr = key.csr_der(id)?.as_ref().to_vec();
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = Some(key);
        Ok(csr)
    }

    /// Installs the certificate the control plane sent for the pending key; a message without a chain updates
    /// only the trust bundle of the current certificate (the control plane sends one on every connection, so a
    /// new root reaches every proxy before anything is signed with it).
    pub fn install(&self, msg: &Issued) -> Result<Arc<Certified>, InstallError> {
        let id = SpiffeId::parse(&msg.spiffe_id)
            .map_err(|e| InstallError::Id(msg.spiffe_id.clone(), e.to_string()))?;
        if msg.chain.is_empty() {
            return self.update_bundle(msg);
        }
        let chain: Vec<_> = msg
            .chain
            .iter()
            .map(|c| rustls::pki_types::CertificateDer::from(c.clone()))
            .collect();
        let roots = msg
            .trust_bundle
            .iter()
            .map(|c| rustls::pki_types::CertificateDer::from(c.clone()))
            .collect();
        let bundle =
            TrustBundle::from_der(roots).map_err(|e| InstallError::Bundle(e.to_string()))?;
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let key = pending.as_ref().ok_or(InstallError::NoPendingKey)?;
        let certified = key
            .certified_key(chain)
            .map_err(|e| InstallError::Chain(e.to_string()))?;
        *pending = None;
        let resolver = match self.current() {
            Some(c) => {
                c.resolver.rotate(certified);
                c.resolver.clone()
            }
            None => RotatingIdentity::new(certified),
        };
        let next = Arc::new(Certified {
            trust_domain: id.trust_domain().clone(),
            id,
            bundle,
            resolver,
            not_before: msg.not_before,
            not_after: msg.not_after,
            installed: SystemTime::now(),
        });
        self.current.store(Some(next.clone()));
        Ok(next)
    }

    /// Tests: installs a certificate made in the test (e.g. by a test `Authority`), as `install` would.
    #[cfg(test)]
    pub fn install_certified(
        &self,
        id: SpiffeId,
        certified: Arc<rustls::sign::CertifiedKey>,
        bundle: TrustBundle,
        not_after: SystemTime,
    ) -> Arc<Certified> {
        let resolver = match self.current() {
            Some(c) => {
                c.resolver.rotate(certified);
                c.resolver.clone()
            }
            None => RotatingIdentity::new(certified),
        };
        let next = Arc::new(Certified {
            trust_domain: id.trust_domain().clone(),
            id,
            bundle,
            resolver,
            not_before: SystemTime::now(),
            not_after,
            installed: SystemTime::now(),
        });
        self.current.store(Some(next.clone()));
        next
    }

    fn update_bundle(&self, msg: &Issued) -> Result<Arc<Certified>, InstallError> {
        let current = self.current().ok_or(InstallError::NoPendingKey)?;
        let roots = msg
            .trust_bundle
            .iter()
            .map(|c| rustls::pki_types::CertificateDer::from(c.clone()))
            .collect();
        let bundle =
            TrustBundle::from_der(roots).map_err(|e| InstallError::Bundle(e.to_string()))?;
        if bundle.roots() == current.bundle.roots() {
            return Ok(current);
        }
        // A new value, so configs built for the old bundle are rebuilt (they are cached per `Certified`).
        let next = Arc::new(Certified {
            id: current.id.clone(),
            trust_domain: current.trust_domain.clone(),
            bundle,
            resolver: current.resolver.clone(),
            not_before: current.not_before,
            not_after: current.not_after,
            installed: current.installed,
        });
        self.current.store(Some(next.clone()));
        Ok(next)
    }

    /// For `/config_dump`: who the proxy is and until when (never the key).
    pub fn dump(&self) -> serde_json::Value {
        match self.current() {
            None => serde_json::json!({"spiffe_id": null}),
            Some(c) => serde_json::json!({
                "spiffe_id": c.id.as_str(),
                "trust_domain": c.trust_domain.as_str(),
                "not_after_unix_ms": ms(c.not_after),
                "installed_unix_ms": ms(c.installed),
                "trust_bundle_roots": c.bundle.roots().len(),
            }),
        }
    }
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The sha256 of the mesh root and the trust domain a bootstrap token pins (the token's format is the control
/// plane's: `mwt1.<hex payload>.<hex mac>`, payload `namespace|service|node|expiry|nonce|ca-sha256|trust-domain`).
/// The proxy cannot check the token's mac; the control plane does.
pub fn pinned_root(token: &str) -> Option<([u8; 32], TrustDomain)> {
    let (payload, _mac) = token.strip_prefix("mwt1.")?.split_once('.')?;
    let payload = unhex(payload)?;
    let text = std::str::from_utf8(&payload).ok()?;
    let fields: Vec<&str> = text.split('|').collect();
    let pin = unhex(fields.get(5)?)?.try_into().ok()?;
    let td = TrustDomain::new(fields.get(6)?).ok()?;
    Some((pin, td))
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 4096 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use std::time::Duration;

    use meshwork_identity::Authority;

    use super::*;

    fn issued(ca: &Authority, mesh: &MeshIdentity, id: &SpiffeId) -> Issued {
        let csr = mesh.new_csr(id).unwrap();
        let cert = ca.issue(&csr, id, Duration::from_secs(3600)).unwrap();
        Issued {
            spiffe_id: id.to_string(),
            chain: cert.chain.iter().map(|c| c.as_ref().to_vec()).collect(),
            trust_bundle: ca
                .trust_bundle()
                .roots()
                .iter()
                .map(|r| r.as_ref().to_vec())
                .collect(),
            not_before: SystemTime::now(),
            not_after: cert.not_after,
        }
    }

    #[test]
    fn a_bundle_alone_updates_the_roots_and_keeps_the_certificate() {
        let td = TrustDomain::default();
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (ca_a, ca_b) = (
            Authority::load_or_create(dir_a.path(), &td).unwrap(),
            Authority::load_or_create(dir_b.path(), &td).unwrap(),
        );
        let id = SpiffeId::workload(&td, "default", "web").unwrap();
        let mesh = MeshIdentity::default();
        let first = mesh.install(&issued(&ca_a, &mesh, &id)).unwrap();
        assert_eq!(first.bundle.roots().len(), 1);
        let both = ca_a.with_previous_roots(ca_b.trust_bundle());
        let bundle_only = Issued {
            spiffe_id: id.to_string(),
            chain: Vec::new(),
            trust_bundle: both
                .trust_bundle()
                .roots()
                .iter()
                .map(|r| r.as_ref().to_vec())
                .collect(),
            not_before: SystemTime::UNIX_EPOCH,
            not_after: SystemTime::UNIX_EPOCH,
        };
        let next = mesh.install(&bundle_only).unwrap();
        assert_eq!(next.bundle.roots().len(), 2);
        assert!(
            Arc::ptr_eq(&next.resolver, &first.resolver),
            "the certificate stays"
        );
        assert_eq!(next.not_after, first.not_after);
        assert!(
            !Arc::ptr_eq(&next, &first),
            "a new value, so cached TLS configs are rebuilt"
        );
    }
}
