//! SPIFFE ID and trust domain parsing, printing and the workload/principal forms.

use meshwork_identity::spiffe::MAX_SPIFFE_ID_LEN;
use meshwork_identity::{SpiffeId, SpiffeIdError as E, TrustDomain, DEFAULT_TRUST_DOMAIN};

#[test]
fn valid_spiffe_ids_parse_and_print_unchanged() {
    let valid = [
        ("spiffe://cluster.local", "cluster.local", ""),
        (
            "spiffe://cluster.local/ns/default/sa/frontend",
            "cluster.local",
            "/ns/default/sa/frontend",
        ),
        (
            "spiffe://example.org/a/B.c/d-e/f_g",
            "example.org",
            "/a/B.c/d-e/f_g",
        ),
        ("spiffe://td_1-x.y/workload", "td_1-x.y", "/workload"),
        ("spiffe://td/..a/a../...", "td", "/..a/a../..."),
    ];
    for (uri, td, path) in valid {
        let id = SpiffeId::parse(uri).unwrap_or_else(|e| panic!("{uri}: {e}"));
        assert_eq!(id.to_string(), uri);
        assert_eq!(id.trust_domain().as_str(), td, "{uri}");
        assert_eq!(id.path(), path, "{uri}");
    }
}

#[test]
fn invalid_spiffe_ids_are_refused_with_the_reason() {
    let too_long = format!("spiffe://td/{}", "a".repeat(MAX_SPIFFE_ID_LEN));
    let invalid: Vec<(&str, E)> = vec![
        ("", E::Empty),
        ("http://cluster.local/ns/a", E::WrongScheme),
        ("SPIFFE://cluster.local/x", E::WrongScheme),
        ("spiffe:/cluster.local/x", E::WrongScheme),
        ("cluster.local/ns/a/sa/b", E::WrongScheme),
        ("spiffe://", E::MissingTrustDomain),
        ("spiffe:///ns/a", E::MissingTrustDomain),
        (
            "spiffe://Cluster.local/x",
            E::TrustDomainChar { found: 'C' },
        ),
        ("spiffe://clüster/x", E::TrustDomainChar { found: 'ü' }),
        ("spiffe://cluster.local:8443/x", E::Port),
        ("spiffe://user@cluster.local/x", E::UserInfo),
        ("spiffe://cluster.local/x?y=1", E::Query),
        ("spiffe://cluster.local/x#frag", E::Fragment),
        ("spiffe://cluster.local/", E::TrailingSlash),
        ("spiffe://cluster.local/ns/a/", E::TrailingSlash),
        ("spiffe://cluster.local//a", E::EmptySegment),
        ("spiffe://cluster.local/a//b", E::EmptySegment),
        ("spiffe://cluster.local/a/./b", E::DotSegment),
        ("spiffe://cluster.local/a/..", E::DotSegment),
        ("spiffe://cluster.local/a%20b", E::PathChar { found: '%' }),
        ("spiffe://cluster.local/a b", E::PathChar { found: ' ' }),
        ("spiffe://cluster.local/a:b", E::PathChar { found: ':' }),
        (
            &too_long,
            E::TooLong {
                len: too_long.len(),
            },
        ),
    ];
    for (uri, expected) in invalid {
        assert_eq!(SpiffeId::parse(uri), Err(expected), "{uri:?}");
    }
}

#[test]
fn a_spiffe_id_of_exactly_2048_bytes_is_accepted() {
    let prefix = "spiffe://td/";
    let uri = format!("{prefix}{}", "a".repeat(MAX_SPIFFE_ID_LEN - prefix.len()));
    assert_eq!(uri.len(), 2048);
    assert!(SpiffeId::parse(&uri).is_ok());
}

#[test]
fn workload_ids_have_the_namespace_and_service_account_shape() {
    let td = TrustDomain::default();
    let id = SpiffeId::workload(&td, "default", "frontend").unwrap();
    assert_eq!(
        id.to_string(),
        "spiffe://cluster.local/ns/default/sa/frontend"
    );
    assert_eq!(id.principal(), "cluster.local/ns/default/sa/frontend");
    assert_eq!(
        id.namespace_and_service_account(),
        Some(("default", "frontend"))
    );
    assert_eq!(SpiffeId::parse(id.as_str()), Ok(id));
}

#[test]
fn only_the_ns_sa_path_yields_a_namespace_and_service_account() {
    for uri in [
        "spiffe://cluster.local",
        "spiffe://cluster.local/ns/default",
        "spiffe://cluster.local/ns/default/sa/frontend/extra",
        "spiffe://cluster.local/namespace/default/sa/frontend",
    ] {
        let id = SpiffeId::parse(uri).unwrap();
        assert_eq!(id.namespace_and_service_account(), None, "{uri}");
    }
}

#[test]
fn workload_refuses_segments_that_are_not_path_segments() {
    let td = TrustDomain::default();
    assert_eq!(
        SpiffeId::workload(&td, "", "sa").unwrap_err(),
        E::EmptySegment
    );
    assert_eq!(
        SpiffeId::workload(&td, "ns", "..").unwrap_err(),
        E::DotSegment
    );
    assert_eq!(
        SpiffeId::workload(&td, "a/b", "sa").unwrap_err(),
        E::PathChar { found: '/' }
    );
}

#[test]
fn trust_domains_parse_and_default_to_cluster_local() {
    assert_eq!(TrustDomain::default().as_str(), DEFAULT_TRUST_DOMAIN);
    assert_eq!(DEFAULT_TRUST_DOMAIN, "cluster.local");
    assert_eq!(
        "prod.example".parse::<TrustDomain>().unwrap().to_string(),
        "prod.example"
    );
    assert_eq!(TrustDomain::new(""), Err(E::MissingTrustDomain));
    assert_eq!(
        TrustDomain::new("Prod"),
        Err(E::TrustDomainChar { found: 'P' })
    );
    assert_eq!(TrustDomain::new("td:1"), Err(E::Port));
    assert_eq!(
        TrustDomain::default().id().to_string(),
        "spiffe://cluster.local"
    );
}
