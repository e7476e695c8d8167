//! `check_svid` on leaves made directly with rcgen (signed by a test CA), one refusal each.

use meshwork_identity::{check_svid, SpiffeId, SvidError, TrustDomain};
use rcgen::{BasicConstraints, IsCa, KeyPair, KeyUsagePurpose, SanType};

use crate::support::{leaf_params, td, TestCa};

const FRONTEND: &str = "spiffe://cluster.local/ns/default/sa/frontend";

fn check(params: &rcgen::CertificateParams) -> Result<SpiffeId, SvidError> {
    let ca = TestCa::new("svid root");
    let leaf = ca.sign(params, &KeyPair::generate().unwrap());
    check_svid(&leaf, &td())
}

#[test]
fn a_valid_svid_gives_its_spiffe_id() {
    assert_eq!(
        check(&leaf_params(&[FRONTEND])),
        Ok(SpiffeId::parse(FRONTEND).unwrap())
    );
}

#[test]
fn two_uri_sans_are_refused() {
    let params = leaf_params(&[FRONTEND, "spiffe://cluster.local/ns/default/sa/backend"]);
    assert_eq!(check(&params), Err(SvidError::TooManyUriSans { count: 2 }));
}

#[test]
fn no_uri_san_is_refused() {
    let mut params = leaf_params(&[]);
    params.subject_alt_names = vec![SanType::DnsName("frontend.default.svc".try_into().unwrap())];
    assert_eq!(check(&params), Err(SvidError::NoUriSan));
    assert_eq!(check(&leaf_params(&[])), Err(SvidError::NoUriSan));
}

#[test]
fn a_ca_certificate_is_refused() {
    let mut params = leaf_params(&[FRONTEND]);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    assert_eq!(check(&params), Err(SvidError::IsCa));
}

#[test]
fn a_leaf_allowed_to_sign_certificates_is_refused() {
    let mut params = leaf_params(&[FRONTEND]);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
    ];
    assert_eq!(check(&params), Err(SvidError::CaKeyUsage));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign];
    assert_eq!(check(&params), Err(SvidError::CaKeyUsage));
}

#[test]
fn an_svid_of_another_trust_domain_is_refused() {
    let err = check(&leaf_params(&[
        "spiffe://other.example/ns/default/sa/frontend",
    ]))
    .unwrap_err();
    let expected = SvidError::WrongTrustDomain {
        got: TrustDomain::new("other.example").unwrap(),
        expected: td(),
    };
    assert_eq!(err, expected);
    assert_eq!(err.reason(), "wrong_trust_domain");
}

#[test]
fn a_uri_san_that_is_not_a_spiffe_id_is_refused() {
    let err = check(&leaf_params(&["https://frontend.example/"])).unwrap_err();
    assert!(matches!(err, SvidError::NotSpiffe { .. }), "{err}");
    let err = check(&leaf_params(&["spiffe://cluster.local"])).unwrap_err();
    assert!(matches!(err, SvidError::NoWorkloadPath(_)), "{err}");
}

#[test]
fn bytes_that_are_not_a_certificate_are_unparsable() {
    let err = check_svid(b"garbage", &td()).unwrap_err();
    assert!(matches!(err, SvidError::Unparsable(_)), "{err}");
}
