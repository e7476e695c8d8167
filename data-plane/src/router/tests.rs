use http::Request;
use meshwork_proto as pb;
use proptest::prelude::*;

use super::*;
use crate::config::Snapshot;

fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn route(
    name: &str,
    ty: pb::MatchType,
    path: &str,
    method: &str,
    headers: Vec<pb::HeaderMatch>,
    query: Vec<pb::QueryMatch>,
) -> pb::Route {
    pb::Route {
        name: name.into(),
        r#match: Some(pb::RouteMatch {
            path: Some(pb::PathMatch {
                r#type: ty as i32,
                value: path.into(),
            }),
            headers,
            query_params: query,
            method: method.into(),
        }),
        filters: vec![],
        backends: vec![pb::WeightedBackend {
            cluster: "c".into(),
            weight: 1,
        }],
        timeout_ms: 0,
        wasm: vec![],
        policy: None,
    }
}

fn snapshot(routes: Vec<pb::Route>, domains: Vec<Vec<&str>>) -> Snapshot {
    let virtual_hosts = domains
        .into_iter()
        .enumerate()
        .map(|(i, d)| pb::VirtualHost {
            name: format!("vh{i}"),
            domains: d.into_iter().map(String::from).collect(),
            routes: routes.clone(),
        })
        .collect();
    let pb = pb::Snapshot {
        listeners: vec![pb::Listener {
            name: "l".into(),
            port: 0,
            virtual_hosts,
            ..Default::default()
        }],
        clusters: vec![pb::Cluster {
            name: "c".into(),
            protocol: 0,
            endpoints: vec![],
            policy: None,
        }],
        ..Default::default()
    };
    Snapshot::from_proto(1, pb, Default::default()).unwrap()
}

fn pick<'a>(s: &'a Snapshot, p: &Parts) -> Option<&'a str> {
    let l = s.listeners.get("l")?;
    let vh = find_vhost(&l.vhosts, request_host(p).unwrap_or(""))?;
    find_route(vh, p).map(|r| &*r.name)
}

#[test]
fn matches_path_method_headers_query() {
    let exact = pb::MatchType::MatchExact as i32;
    let regex = pb::MatchType::MatchRegex as i32;
    let s = snapshot(
        vec![
            route("exact", pb::MatchType::MatchExact, "/a", "", vec![], vec![]),
            route(
                "post",
                pb::MatchType::MatchPrefix,
                "/api",
                "POST",
                vec![],
                vec![],
            ),
            route(
                "hdr",
                pb::MatchType::MatchPrefix,
                "/api",
                "",
                vec![pb::HeaderMatch {
                    name: "x-user".into(),
                    r#type: exact,
                    value: "beta".into(),
                }],
                vec![],
            ),
            route(
                "q",
                pb::MatchType::MatchPrefix,
                "/api",
                "",
                vec![],
                vec![pb::QueryMatch {
                    name: "debug".into(),
                    r#type: regex,
                    value: "[0-9]+".into(),
                }],
            ),
            route(
                "api",
                pb::MatchType::MatchPrefix,
                "/api/",
                "",
                vec![],
                vec![],
            ),
            route(
                "re",
                pb::MatchType::MatchRegex,
                "/r/[a-z]+",
                "",
                vec![],
                vec![],
            ),
        ],
        vec![vec!["*"]],
    );
    assert_eq!(pick(&s, &parts("GET", "/a", &[])), Some("exact"));
    assert_eq!(pick(&s, &parts("GET", "/a/b", &[])), None);
    assert_eq!(pick(&s, &parts("POST", "/api/x", &[])), Some("post"));
    assert_eq!(
        pick(&s, &parts("GET", "/api/x", &[("x-user", "beta")])),
        Some("hdr")
    );
    assert_eq!(pick(&s, &parts("GET", "/api?debug=12", &[])), Some("q"));
    // The query does not match `q`; `/api/` matches `/api` (a trailing slash in a prefix is ignored).
    assert_eq!(pick(&s, &parts("GET", "/api?debug=x", &[])), Some("api"));
    assert_eq!(pick(&s, &parts("GET", "/api/y", &[])), Some("api"));
    assert_eq!(
        pick(&s, &parts("GET", "/apix", &[])),
        None,
        "prefix /api must not match /apix"
    );
    assert_eq!(pick(&s, &parts("GET", "/r/abc", &[])), Some("re"));
    assert_eq!(
        pick(&s, &parts("GET", "/r/abc/d", &[])),
        None,
        "regex is a full match"
    );
}

#[test]
fn host_selection_exact_then_wildcard_then_any() {
    let routes = vec![route(
        "r",
        pb::MatchType::MatchPrefix,
        "/",
        "",
        vec![],
        vec![],
    )];
    let s = snapshot(
        routes,
        vec![
            vec!["*"],
            vec!["*.example.com"],
            vec!["shop.example.com", "backend"],
        ],
    );
    let l = s.listeners.get("l").unwrap();
    let host = |h: &str| find_vhost(&l.vhosts, h).map(|v| v.name.clone());
    assert_eq!(host("shop.example.com").as_deref(), Some("vh2"));
    assert_eq!(host("SHOP.Example.com").as_deref(), Some("vh2"));
    assert_eq!(host("a.example.com").as_deref(), Some("vh1"));
    assert_eq!(host("example.com").as_deref(), Some("vh0"));
    // absolute-form (HTTP_PROXY) and Host with port
    assert_eq!(
        request_host(&parts("GET", "http://backend:8080/x", &[])),
        Some("backend")
    );
    assert_eq!(
        request_host(&parts("GET", "/x", &[("host", "backend:80")])),
        Some("backend")
    );
    assert_eq!(
        request_host(&parts("GET", "/x", &[("host", "[::1]:80")])),
        Some("::1")
    );
}

proptest! {
    /// Gateway API prefix semantics: a prefix matches itself and anything below it at a segment boundary, nothing else.
    #[test]
    fn prefix_matches_at_segment_boundaries(prefix in "(/[a-z]{1,3}){0,3}", rest in "[a-z/]{0,6}") {
        let m = PathMatch::Prefix(prefix.trim_end_matches('/').to_string());
        let path = if prefix.is_empty() { format!("/{rest}") } else { format!("{prefix}{rest}") };
        let expected = prefix.is_empty() || rest.is_empty() || rest.starts_with('/');
        prop_assert_eq!(path_matches(&m, &path), expected, "prefix {:?} path {:?}", prefix, path);
    }

    #[test]
    fn weighted_pick_respects_zero_weights(w in prop::collection::vec(0u32..5, 1..5)) {
        let clusters: Vec<pb::Cluster> = (0..w.len()).map(|i| pb::Cluster { name: format!("c{i}"), protocol: 0, endpoints: vec![], policy: None }).collect();
        let mut r = route("r", pb::MatchType::MatchPrefix, "/", "", vec![], vec![]);
        r.backends = w.iter().enumerate().map(|(i, w)| pb::WeightedBackend { cluster: format!("c{i}"), weight: *w }).collect();
        let pb = pb::Snapshot { listeners: vec![pb::Listener { name: "l".into(), port: 0, virtual_hosts: vec![pb::VirtualHost { name: "v".into(), domains: vec!["*".into()], routes: vec![r] }], ..Default::default() }], clusters, ..Default::default() };
        let s = Snapshot::from_proto(1, pb, Default::default()).unwrap();
        let route = &s.listeners.get("l").unwrap().vhosts.hosts[0].routes[0];
        for _ in 0..20 {
            match route.pick_backend() {
                Some(c) => {
                    let i: usize = c.name[1..].parse().unwrap();
                    prop_assert!(w[i] > 0);
                }
                None => prop_assert!(w.iter().all(|x| *x == 0)),
            }
        }
    }
}
