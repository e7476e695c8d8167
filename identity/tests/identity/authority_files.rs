//! The CA's files: `load_or_create` in a state directory, and operator-given CAs (`from_files`).

use std::fs;
use std::os::unix::fs::PermissionsExt;

use meshwork_identity::{Authority, AuthorityError, TrustDomain};
use rcgen::{BasicConstraints, IsCa, KeyPair, KeyUsagePurpose};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::support::{leaf_params, td, TestCa};

fn mode(path: &std::path::Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn load_or_create_twice_gives_the_same_root() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("ca");
    let first = Authority::load_or_create(&state, &td()).unwrap();
    let second = Authority::load_or_create(&state, &td()).unwrap();
    assert_eq!(first.trust_bundle(), second.trust_bundle());
    assert_eq!(first.trust_bundle().roots().len(), 1);
}

#[test]
fn a_created_root_is_a_spiffe_ca_for_ten_years() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::load_or_create(dir.path(), &td()).unwrap();
    let (_, root) = X509Certificate::from_der(&ca.trust_bundle().roots()[0]).unwrap();
    assert!(root.basic_constraints().unwrap().unwrap().value.ca);
    let ku = root.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
    let san = root.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        format!("{:?}", san.value.general_names),
        r#"[URI("spiffe://cluster.local")]"#
    );
    assert!(
        root.subject().to_string().contains("cluster.local"),
        "{}",
        root.subject()
    );
    let years = (root.validity().not_after.timestamp() - root.validity().not_before.timestamp())
        / (365 * 24 * 3600);
    assert_eq!(years, 10);
}

#[test]
fn the_state_dir_is_0700_and_the_key_file_0600() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("ca");
    Authority::load_or_create(&state, &td()).unwrap();
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("ca-key.pem")), 0o600);
    let names: Vec<_> = fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "no temporary files left: {names:?}");
}

#[test]
fn a_key_file_that_does_not_match_the_root_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    Authority::load_or_create(&a, &td()).unwrap();
    Authority::load_or_create(&b, &td()).unwrap();
    fs::copy(b.join("ca-key.pem"), a.join("ca-key.pem")).unwrap();
    let err = Authority::load_or_create(&a, &td()).unwrap_err();
    assert!(matches!(err, AuthorityError::KeyMismatch), "{err}");
    assert!(err.to_string().contains("does not match"), "{err}");
}

#[test]
fn a_root_without_its_key_is_refused_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    Authority::load_or_create(dir.path(), &td()).unwrap();
    fs::remove_file(dir.path().join("ca-key.pem")).unwrap();
    let err = Authority::load_or_create(dir.path(), &td()).unwrap_err();
    assert!(matches!(err, AuthorityError::Incomplete { .. }), "{err}");
}

#[test]
fn the_state_dir_of_another_trust_domain_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    Authority::load_or_create(dir.path(), &td()).unwrap();
    let other = TrustDomain::new("other.example").unwrap();
    let err = Authority::load_or_create(dir.path(), &other).unwrap_err();
    assert!(
        matches!(err, AuthorityError::WrongTrustDomain { .. }),
        "{err}"
    );
}

#[test]
fn from_files_accepts_an_operator_root() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("operator root");
    let (cert, key) = (dir.path().join("root.pem"), dir.path().join("root-key.pem"));
    fs::write(&cert, ca.cert_pem()).unwrap();
    fs::write(&key, ca.key.serialize_pem()).unwrap();
    let authority = Authority::from_files(&cert, &key, &td()).unwrap();
    assert_eq!(
        authority.trust_bundle().roots(),
        std::slice::from_ref(&ca.cert)
    );
}

#[test]
fn from_files_refuses_a_certificate_that_is_not_a_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("operator root");
    let key = KeyPair::generate().unwrap();
    let leaf = ca.sign(&leaf_params(&["spiffe://cluster.local/ns/a/sa/b"]), &key);
    let (cert_path, key_path) = (dir.path().join("leaf.pem"), dir.path().join("leaf-key.pem"));
    fs::write(&cert_path, crate::support::pem(&leaf)).unwrap();
    fs::write(&key_path, key.serialize_pem()).unwrap();
    let err = Authority::from_files(&cert_path, &key_path, &td()).unwrap_err();
    assert!(matches!(err, AuthorityError::NotCa), "{err}");
}

#[test]
fn from_pem_refuses_a_ca_without_key_cert_sign() {
    let key = KeyPair::generate().unwrap();
    let mut params = leaf_params(&[]);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).unwrap();
    let err = Authority::from_pem(&cert.pem(), &key.serialize_pem(), &td()).unwrap_err();
    assert!(matches!(err, AuthorityError::NoKeyCertSign), "{err}");
}

#[test]
fn from_pem_refuses_an_empty_chain_and_a_bad_key() {
    let ca = TestCa::new("operator root");
    let err = Authority::from_pem("", &ca.key.serialize_pem(), &td()).unwrap_err();
    assert!(matches!(err, AuthorityError::NoCertificate), "{err}");
    let err = Authority::from_pem(&ca.cert_pem(), "not a key", &td()).unwrap_err();
    assert!(matches!(err, AuthorityError::BadKey(_)), "{err}");
}
