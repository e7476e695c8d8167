//! `Authority::issue`: what an issued leaf contains, what a CSR cannot get, and which CSRs and
//! lifetimes are refused.

use std::time::{Duration, SystemTime};

use meshwork_identity::ca::{MAX_LIFETIME, MIN_LIFETIME};
use meshwork_identity::{check_svid, Authority, IssueError, Issued, TrustBundle, WorkloadKey};
use rcgen::{BasicConstraints, IsCa, KeyPair, KeyUsagePurpose, PublicKeyData, SanType};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::server::ParsedCertificate;
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::support::{id, leaf_params, pem, unix_secs, TestCa, HOUR};

const RSA_1024_CSR: &[u8] = include_bytes!("fixtures/rsa1024.csr.der");
const RSA_2048_CSR: &[u8] = include_bytes!("fixtures/rsa2048.csr.der");

fn issue_for_new_key(ca: &Authority, lifetime: Duration) -> Issued {
    let key = WorkloadKey::generate().unwrap();
    let csr = key.csr_der(&id("default", "frontend")).unwrap();
    ca.issue(&csr, &id("default", "frontend"), lifetime)
        .unwrap()
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    X509Certificate::from_der(der).unwrap().1
}

fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect()
}

/// Verifies `chain` (leaf first) against `roots` with webpki, as the TLS verifiers do.
fn chains_to(chain: &[CertificateDer<'static>], roots: &TrustBundle) -> Result<(), rustls::Error> {
    let leaf = ParsedCertificate::try_from(&chain[0])?;
    let algs = meshwork_identity::tls::provider()
        .signature_verification_algorithms
        .all;
    let store = roots.root_store();
    verify_server_cert_signed_by_trust_anchor(&leaf, &store, &chain[1..], UnixTime::now(), algs)
}

#[test]
fn issued_leaf_is_an_x509_svid_for_the_asked_id_and_lifetime() {
    let test_ca = TestCa::new("issuance root");
    let ca = test_ca.authority();
    let before = SystemTime::now();
    let issued = issue_for_new_key(&ca, HOUR);
    let leaf = parse(&issued.leaf);

    assert_eq!(
        uri_sans(&leaf),
        [r#"URI("spiffe://cluster.local/ns/default/sa/frontend")"#]
    );
    let bc = leaf.basic_constraints().unwrap().unwrap();
    assert!(
        !bc.value.ca && bc.critical,
        "basicConstraints cA=false, critical"
    );
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature());
    assert!(!ku.key_cert_sign() && !ku.crl_sign() && !ku.key_encipherment());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(leaf.raw_serial().len() >= 14, "128 random bits");

    let (not_before, not_after) = (leaf.validity().not_before, leaf.validity().not_after);
    let skew = (unix_secs(before) - 60 - not_before.timestamp()).abs();
    assert!(skew <= 2, "notBefore is now - 1 min (off by {skew} s)");
    let lifetime = not_after.timestamp() - not_before.timestamp();
    assert!(
        (3600 + 60 - 2..=3600 + 60 + 2).contains(&lifetime),
        "lifetime {lifetime} s"
    );
    assert_eq!(unix_secs(issued.not_after), not_after.timestamp());

    assert_eq!(
        issued.chain,
        std::slice::from_ref(&issued.leaf),
        "a root CA adds no intermediates"
    );
    assert_eq!(
        ca.trust_bundle().roots(),
        std::slice::from_ref(&test_ca.cert)
    );
    chains_to(&issued.chain, ca.trust_bundle()).unwrap();
    assert_eq!(
        check_svid(&issued.leaf, ca.trust_domain()),
        Ok(issued.id.clone())
    );
    assert!(issued
        .chain_pem()
        .starts_with("-----BEGIN CERTIFICATE-----\n"));
}

#[test]
fn csr_asking_for_extra_sans_and_ca_powers_gets_neither() {
    let ca = TestCa::new("issuance root").authority();
    let key = KeyPair::generate().unwrap();
    let mut asked = leaf_params(&["spiffe://cluster.local/ns/kube-system/sa/admin"]);
    asked
        .subject_alt_names
        .push(SanType::DnsName("evil.example".try_into().unwrap()));
    asked.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    asked.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let csr = asked.serialize_request(&key).unwrap();

    let issued = ca
        .issue(csr.der(), &id("default", "frontend"), HOUR)
        .unwrap();
    let leaf = parse(&issued.leaf);
    assert_eq!(
        uri_sans(&leaf),
        [r#"URI("spiffe://cluster.local/ns/default/sa/frontend")"#]
    );
    assert!(!leaf.basic_constraints().unwrap().unwrap().value.ca);
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(!ku.key_cert_sign() && !ku.crl_sign());
    assert_eq!(leaf.public_key().raw, key.subject_public_key_info());
}

#[test]
fn csr_whose_signature_does_not_verify_is_refused() {
    let ca = TestCa::new("issuance root").authority();
    let key = WorkloadKey::generate().unwrap();
    let mut csr = key
        .csr_der(&id("default", "frontend"))
        .unwrap()
        .as_ref()
        .to_vec();
    *csr.last_mut().unwrap() ^= 0x01; // the last byte of the signature
    let err = ca
        .issue(&csr, &id("default", "frontend"), HOUR)
        .unwrap_err();
    assert!(matches!(err, IssueError::BadSignature(_)), "{err}");
}

#[test]
fn garbage_csr_is_refused_as_unparsable() {
    let ca = TestCa::new("issuance root").authority();
    let err = ca
        .issue(b"not a csr", &id("default", "frontend"), HOUR)
        .unwrap_err();
    assert!(matches!(err, IssueError::UnparsableCsr(_)), "{err}");
}

#[test]
fn lifetimes_outside_one_minute_to_ninety_days_are_refused() {
    let ca = TestCa::new("issuance root").authority();
    let key = WorkloadKey::generate().unwrap();
    let csr = key.csr_der(&id("default", "frontend")).unwrap();
    let too_long = MAX_LIFETIME + Duration::from_secs(1);
    let err = ca
        .issue(&csr, &id("default", "frontend"), too_long)
        .unwrap_err();
    assert!(
        matches!(err, IssueError::LifetimeTooLong { asked } if asked == too_long),
        "{err}"
    );
    let too_short = MIN_LIFETIME - Duration::from_secs(1);
    let err = ca
        .issue(&csr, &id("default", "frontend"), too_short)
        .unwrap_err();
    assert!(matches!(err, IssueError::LifetimeTooShort { .. }), "{err}");
    assert!(ca
        .issue(&csr, &id("default", "frontend"), MIN_LIFETIME)
        .is_ok());
    assert!(ca
        .issue(&csr, &id("default", "frontend"), MAX_LIFETIME)
        .is_ok());
}

#[test]
fn rsa_1024_csr_is_refused_as_a_weak_key() {
    let ca = TestCa::new("issuance root").authority();
    let err = ca
        .issue(RSA_1024_CSR, &id("test", "rsa"), HOUR)
        .unwrap_err();
    assert!(
        matches!(err, IssueError::WeakRsaKey { bits: 1024 }),
        "{err}"
    );
}

#[test]
fn rsa_2048_csr_gets_a_leaf_that_also_allows_key_encipherment() {
    let ca = TestCa::new("issuance root").authority();
    let issued = ca.issue(RSA_2048_CSR, &id("test", "rsa"), HOUR).unwrap();
    let leaf = parse(&issued.leaf);
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment());
    assert!(!ku.key_cert_sign() && !ku.crl_sign());
}

#[test]
fn csr_with_an_unsupported_key_is_refused() {
    let ca = TestCa::new("issuance root").authority();
    // P-384 and Ed25519 keys are accepted. A P-521 key (ring cannot make one) is simulated by
    // rewriting a P-384 CSR's curve OID: the key type is checked before the signature.
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let csr = leaf_params(&[]).serialize_request(&key).unwrap();
    assert!(ca.issue(csr.der(), &id("default", "p384"), HOUR).is_ok());
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let csr = leaf_params(&[]).serialize_request(&key).unwrap();
    assert!(ca.issue(csr.der(), &id("default", "ed25519"), HOUR).is_ok());

    let p384_oid = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22]; // secp384r1
    let p521_oid = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23]; // secp521r1
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut csr = leaf_params(&[])
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec();
    let at = csr
        .windows(p384_oid.len())
        .position(|w| w == p384_oid)
        .unwrap();
    csr[at..at + p521_oid.len()].copy_from_slice(&p521_oid);
    let err = ca.issue(&csr, &id("default", "p521"), HOUR).unwrap_err();
    assert!(matches!(err, IssueError::UnsupportedKey { .. }), "{err}");
}

#[test]
fn id_in_another_trust_domain_is_refused() {
    let ca = TestCa::new("issuance root").authority();
    let key = WorkloadKey::generate().unwrap();
    let other = meshwork_identity::SpiffeId::parse("spiffe://other.example/ns/a/sa/b").unwrap();
    let err = ca
        .issue(&key.csr_der(&other).unwrap(), &other, HOUR)
        .unwrap_err();
    assert!(matches!(err, IssueError::WrongTrustDomain { .. }), "{err}");
}

#[test]
fn two_leaves_get_different_random_serials() {
    let ca = TestCa::new("issuance root").authority();
    let a = issue_for_new_key(&ca, HOUR);
    let b = issue_for_new_key(&ca, HOUR);
    assert_ne!(parse(&a.leaf).raw_serial(), parse(&b.leaf).raw_serial());
}

#[test]
fn an_intermediate_ca_issues_chains_that_carry_it_and_trust_only_the_root() {
    let root = TestCa::new("offline root");
    let inter_key = KeyPair::generate().unwrap();
    let mut inter = leaf_params(&["spiffe://cluster.local"]);
    inter.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    inter.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    inter.extended_key_usages = vec![];
    let inter_cert = root.sign(&inter, &inter_key);
    let chain_pem = pem(&inter_cert) + &root.cert_pem();
    let ca = Authority::from_pem(
        &chain_pem,
        &inter_key.serialize_pem(),
        &crate::support::td(),
    )
    .unwrap();

    let issued = issue_for_new_key(&ca, HOUR);
    assert_eq!(issued.chain, [issued.leaf.clone(), inter_cert]);
    assert_eq!(ca.trust_bundle().roots(), std::slice::from_ref(&root.cert));
    chains_to(&issued.chain, ca.trust_bundle()).unwrap();
}

#[test]
fn previous_roots_stay_in_the_trust_bundle_during_a_rotation() {
    let old = TestCa::new("old root");
    let new = TestCa::new("new root");
    let ca = new
        .authority()
        .with_previous_roots(old.authority().trust_bundle());
    assert_eq!(
        ca.trust_bundle().roots(),
        [new.cert.clone(), old.cert.clone()]
    );
    let old_leaf = issue_for_new_key(&old.authority(), HOUR);
    chains_to(&old_leaf.chain, ca.trust_bundle()).unwrap();
    let pem = ca.trust_bundle().to_pem();
    assert_eq!(TrustBundle::from_pem(&pem).unwrap(), *ca.trust_bundle());
}
