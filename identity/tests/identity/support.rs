//! Test fixtures: a test CA made with rcgen (so tests hold its key and can sign odd certificates
//! directly), workload identities issued through the crate, and certificate parsing helpers.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshwork_identity::{Authority, SpiffeId, TrustDomain, WorkloadKey};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub const HOUR: Duration = Duration::from_secs(3600);

pub fn td() -> TrustDomain {
    TrustDomain::default()
}

pub fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::workload(&td(), ns, sa).unwrap()
}

/// A root CA made directly with rcgen, valid from a day ago for a year.
pub struct TestCa {
    pub params: CertificateParams,
    pub key: KeyPair,
    pub cert: CertificateDer<'static>,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.subject_alt_names = vec![SanType::URI("spiffe://cluster.local".try_into().unwrap())];
        set_validity(&mut params, SystemTime::now() - 24 * HOUR, 365 * 24 * HOUR);
        let cert = params.self_signed(&key).unwrap().into();
        Self { params, key, cert }
    }

    pub fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }

    pub fn cert_pem(&self) -> String {
        pem(&self.cert)
    }

    /// The crate's `Authority` over this CA.
    pub fn authority(&self) -> Authority {
        Authority::from_pem(&self.cert_pem(), &self.key.serialize_pem(), &td()).unwrap()
    }

    /// Signs `params` for `key` directly, bypassing the crate's issuance rules.
    pub fn sign(&self, params: &CertificateParams, key: &KeyPair) -> CertificateDer<'static> {
        params.signed_by(key, &self.issuer()).unwrap().into()
    }
}

/// SVID-like leaf parameters with the given URI SANs, valid from an hour ago for a day.
pub fn leaf_params(uris: &[&str]) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().unwrap()))
        .collect();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    set_validity(&mut params, SystemTime::now() - HOUR, 24 * HOUR);
    params
}

pub fn set_validity(params: &mut CertificateParams, from: SystemTime, lifetime: Duration) {
    params.not_before = from.into();
    params.not_after = (from + lifetime).into();
}

/// A workload identity issued through the crate: fresh key, CSR, `Authority::issue`.
pub fn workload(ca: &Authority, ns: &str, sa: &str) -> Arc<CertifiedKey> {
    let key = WorkloadKey::generate().unwrap();
    let csr = key.csr_der(&id(ns, sa)).unwrap();
    let issued = ca.issue(&csr, &id(ns, sa), HOUR).unwrap();
    key.certified_key(issued.chain).unwrap()
}

/// A rustls identity from a certificate signed directly (see `TestCa::sign`).
pub fn certified(chain: Vec<CertificateDer<'static>>, key: &KeyPair) -> Arc<CertifiedKey> {
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = meshwork_identity::tls::provider();
    Arc::new(CertifiedKey::from_der(chain, der, &provider).unwrap())
}

pub fn pem(der: &[u8]) -> String {
    ::pem::encode(&::pem::Pem::new("CERTIFICATE", der))
}

pub fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64
}
