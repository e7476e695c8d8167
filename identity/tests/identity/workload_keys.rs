//! The proxy's key: CSRs for its ID, the issued chain turned into a rustls identity, and no
//! secret in `Debug` output.

use meshwork_identity::{CsrError, WorkloadKey};
use rustls_pki_types::PrivateKeyDer;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use crate::support::{id, TestCa, HOUR};

#[test]
fn the_csr_carries_the_key_and_the_id_and_is_self_signed() {
    let key = WorkloadKey::generate().unwrap();
    let csr = key.csr_der(&id("default", "frontend")).unwrap();
    let (_, parsed) = X509CertificationRequest::from_der(&csr).unwrap();
    parsed.verify_signature().unwrap();
    assert_eq!(
        parsed.certification_request_info.subject_pki.raw,
        key.public_key_der()
    );
    let exts = format!(
        "{:?}",
        parsed.requested_extensions().unwrap().collect::<Vec<_>>()
    );
    assert!(
        exts.contains("spiffe://cluster.local/ns/default/sa/frontend"),
        "{exts}"
    );
}

#[test]
fn an_issued_chain_becomes_a_rustls_identity_only_for_its_own_key() {
    let ca = TestCa::new("key root").authority();
    let key = WorkloadKey::generate().unwrap();
    let issued = ca
        .issue(
            &key.csr_der(&id("default", "frontend")).unwrap(),
            &id("default", "frontend"),
            HOUR,
        )
        .unwrap();
    let certified = key.certified_key(issued.chain.clone()).unwrap();
    assert_eq!(certified.cert, issued.chain);

    let other = WorkloadKey::generate().unwrap();
    let err = other.certified_key(issued.chain).unwrap_err();
    assert!(matches!(err, CsrError::KeyMismatch(_)), "{err}");
    assert!(matches!(
        other.certified_key(vec![]),
        Err(CsrError::EmptyChain)
    ));
}

#[test]
fn debug_output_never_shows_private_keys() {
    let key = WorkloadKey::generate().unwrap();
    let PrivateKeyDer::Pkcs8(secret) = key.private_key_der() else {
        panic!("PKCS#8 expected")
    };
    let secret_hex: String = secret
        .secret_pkcs8_der()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let shown = format!("{key:?} {key:#?}");
    assert!(shown.contains("[elided]"), "{shown}");
    assert!(
        !shown.contains(&secret_hex[secret_hex.len() - 16..]),
        "{shown}"
    );

    let dir = tempfile::tempdir().unwrap();
    let ca =
        meshwork_identity::Authority::load_or_create(dir.path(), &crate::support::td()).unwrap();
    let key_pem = std::fs::read_to_string(dir.path().join("ca-key.pem")).unwrap();
    let body = key_pem.lines().nth(1).unwrap();
    let shown = format!("{ca:?}");
    assert!(
        shown.contains("[elided]") && !shown.contains(body),
        "{shown}"
    );
}
