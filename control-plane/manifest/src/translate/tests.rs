//! Translation tests: manifests in, the snapshot each kind of proxy gets out (routes in precedence order,
//! clusters and endpoints, policies and Wasm filters attached where they target).

use std::collections::BTreeMap;
use std::path::PathBuf;

use meshwork_proto as pb;

use super::*;
use crate::source::files::load_texts;

fn set(yaml: &str) -> ManifestSet {
    match load_texts(&[(PathBuf::from("t.yaml"), yaml.to_string())]) {
        Ok(s) => s,
        Err(d) => panic!("invalid test manifests:\n{d}"),
    }
}

const BASE: &str = r#"
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {name: web}
spec: {service: web, command: "true"}
---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {name: api-v1}
spec: {service: api, labels: {version: v1}, command: "true"}
---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {name: api-v2}
spec: {service: api, labels: {version: v2}, command: "true", protocol: http}
---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {name: legacy}
spec: {service: legacy, endpoints: ["10.0.0.9:80"]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec: {listeners: [{name: http, port: 8080}, {name: admin, port: 8081}]}
"#;

fn gateway(s: &ManifestSet) -> pb::Snapshot {
    snapshot_for(
        s,
        &[],
        &ProxyKey {
            role: ProxyRole::Gateway,
            name: "edge".into(),
            namespace: "default".into(),
        },
    )
}

fn instance(node: &str, service: &str, workload: &str, version: &str, addr: &str) -> Instance {
    let mut labels = BTreeMap::new();
    labels.insert(WORKLOAD_LABEL.to_string(), workload.to_string());
    labels.insert("version".to_string(), version.to_string());
    Instance {
        node_id: node.into(),
        namespace: "default".into(),
        service: service.into(),
        labels,
        addr: addr.into(),
    }
}

#[test]
fn precedence_exact_then_longest_prefix_then_method_then_headers() {
    let s = set(&format!(
        "{BASE}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: b}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - matches: [{{path: {{value: /}}}}]
      backendRefs: [{{name: web}}]
    - matches: [{{path: {{value: /api}}, headers: [{{name: x-a, value: '1'}}]}}]
      backendRefs: [{{name: api}}]
    - matches: [{{path: {{type: RegularExpression, value: '/r.*'}}}}]
      backendRefs: [{{name: api}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: a}}
spec:
  parentRefs: [{{name: edge, sectionName: http}}]
  rules:
    - matches: [{{path: {{value: /api/v1}}}}, {{path: {{value: /api}}, method: POST}}, {{path: {{type: Exact, value: /api}}}}]
      backendRefs: [{{name: api}}]
"
    ));
    let snap = gateway(&s);
    let http = snap.listeners.iter().find(|l| l.name == "http").unwrap();
    let names: Vec<&str> = http.virtual_hosts[0]
        .routes
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "HTTPRoute/default/a/rule/0/match/2", // exact
            "HTTPRoute/default/a/rule/0/match/0", // longest prefix
            "HTTPRoute/default/a/rule/0/match/1", // /api with a method
            "HTTPRoute/default/b/rule/1/match/0", // /api with a header
            "HTTPRoute/default/b/rule/0/match/0", // /
            "HTTPRoute/default/b/rule/2/match/0", // regex last
        ]
    );
    // sectionName: route `a` is not on the admin listener.
    let admin = snap.listeners.iter().find(|l| l.name == "admin").unwrap();
    assert!(admin.virtual_hosts[0]
        .routes
        .iter()
        .all(|r| r.name.contains("/b/")));
}

#[test]
fn hostnames_group_into_virtual_hosts() {
    let s = set(&format!(
        "{BASE}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: shop}}
spec:
  parentRefs: [{{name: edge}}]
  hostnames: [shop.example.com, '*.example.com']
  rules: [{{backendRefs: [{{name: api}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: any}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{backendRefs: [{{name: web}}]}}]
"
    ));
    let snap = gateway(&s);
    let vhosts = &snap.listeners[0].virtual_hosts;
    let domains: Vec<&str> = vhosts.iter().map(|v| v.domains[0].as_str()).collect();
    assert_eq!(domains, ["*", "*.example.com", "shop.example.com"]);
    // The catch-all route also applies to named hosts (a route without hostnames matches every host).
    assert_eq!(vhosts[2].routes.len(), 2);
    assert_eq!(vhosts[0].routes.len(), 1);
}

#[test]
fn endpoints_come_from_registry_and_static_addresses() {
    let s = set(&format!(
        "{BASE}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: split}}
spec:
  parentRefs: [{{kind: Service, name: api}}]
  rules:
    - backendRefs:
        - {{group: meshwork.dev, kind: Workload, name: api-v1, weight: 90}}
        - {{group: meshwork.dev, kind: Workload, name: api-v2, weight: 10}}
"
    ));
    let instances = vec![
        instance("api-v1-0", "api", "api-v1", "v1", "127.0.0.1:1001"),
        instance("api-v1-1", "api", "api-v1", "v1", "127.0.0.1:1002"),
        instance("api-v2-0", "api", "api-v2", "v2", "127.0.0.1:2001"),
        instance("web-0", "web", "web", "", "127.0.0.1:3001"),
    ];
    let key = ProxyKey {
        role: ProxyRole::Sidecar,
        name: "web".into(),
        namespace: "default".into(),
    };
    let snap = snapshot_for(&s, &instances, &key);
    let cluster = |n: &str| {
        snap.clusters
            .iter()
            .find(|c| c.name == n)
            .unwrap_or_else(|| panic!("no cluster {n}"))
    };
    let addrs = |n: &str| {
        cluster(n)
            .endpoints
            .iter()
            .map(|e| e.address.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        addrs("workload/default/api-v1"),
        ["127.0.0.1:1001", "127.0.0.1:1002"]
    );
    assert_eq!(addrs("workload/default/api-v2"), ["127.0.0.1:2001"]);
    assert_eq!(addrs("service/default/legacy"), ["10.0.0.9:80"]);
    assert_eq!(addrs("service/default/web"), ["127.0.0.1:3001"]);
    // Every service is reachable by its short name from the outbound listener; api via the split route.
    let out = &snap.listeners[0];
    let api = out
        .virtual_hosts
        .iter()
        .find(|v| v.name == "api.default")
        .unwrap();
    assert!(
        api.domains.contains(&"api".to_string())
            && api
                .domains
                .contains(&"api.default.svc.cluster.local".to_string())
    );
    let weights: Vec<u32> = api.routes[0].backends.iter().map(|b| b.weight).collect();
    assert_eq!(weights, [90, 10]);

    // An instance leaving changes the snapshot (that is what triggers a push), and only its endpoint goes.
    let fewer = snapshot_for(&s, &instances[1..], &key);
    assert_ne!(fewer, snap);
    assert_eq!(snapshot_for(&s, &instances, &key), snap, "deterministic");
}

#[test]
fn grpc_methods_become_paths() {
    let s = set(&format!(
        "{BASE}---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: g}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - matches: [{{method: {{service: pkg.Svc, method: Get}}}}, {{method: {{service: pkg.Other}}}}]
      backendRefs: [{{name: api}}]
"
    ));
    let snap = gateway(&s);
    let routes = &snap.listeners[0].virtual_hosts[0].routes;
    let paths: Vec<(i32, &str, &str)> = routes
        .iter()
        .map(|r| {
            let m = r.r#match.as_ref().unwrap();
            let p = m.path.as_ref().unwrap();
            (p.r#type, p.value.as_str(), m.method.as_str())
        })
        .collect();
    assert_eq!(
        paths,
        [
            (pb::MatchType::MatchExact as i32, "/pkg.Svc/Get", "POST"),
            (pb::MatchType::MatchPrefix as i32, "/pkg.Other/", "POST")
        ]
    );
}

#[test]
fn traffic_policies_attach_to_clusters_routes_and_the_targets_inbound() {
    let s = set(&format!(
        "{BASE}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{backendRefs: [{{name: api}}]}}]
---
apiVersion: meshwork.dev/v1alpha1
kind: TrafficPolicy
metadata: {{name: api}}
spec:
  targetRef: {{kind: Service, name: api}}
  retry: {{attempts: 4}}
  rateLimit: {{requestsPerSecond: 50, side: server}}
---
apiVersion: meshwork.dev/v1alpha1
kind: TrafficPolicy
metadata: {{name: r}}
spec:
  targetRef: {{kind: HTTPRoute, name: r}}
  timeouts: {{request: 2s}}
"
    ));
    let g = gateway(&s);
    let api = g
        .clusters
        .iter()
        .find(|c| c.name == "service/default/api")
        .unwrap();
    let policy = api.policy.as_ref().unwrap();
    assert_eq!(policy.retry.as_ref().unwrap().attempts, 4);
    assert!(
        policy.rate_limit.is_none(),
        "a server-side limit is not the callers' business"
    );
    let route = &g.listeners[0].virtual_hosts[0].routes[0];
    assert_eq!(
        route
            .policy
            .as_ref()
            .unwrap()
            .timeouts
            .as_ref()
            .unwrap()
            .request_ms,
        2000
    );
    assert!(g.inbound_rate_limit.is_none());
    let sidecar = |svc: &str| {
        snapshot_for(
            &s,
            &[],
            &ProxyKey {
                role: ProxyRole::Sidecar,
                name: svc.into(),
                namespace: "default".into(),
            },
        )
    };
    let rl = sidecar("api").inbound_rate_limit.unwrap();
    assert!(rl.server_side && rl.requests_per_second == 50.0);
    assert!(sidecar("web").inbound_rate_limit.is_none());
}

/// The gateway's routes on listener `name`: (route name, backend clusters).
fn routes_on(snap: &pb::Snapshot, listener: &str) -> Vec<(String, Vec<String>)> {
    snap.listeners
        .iter()
        .filter(|l| l.name == listener)
        .flat_map(|l| &l.virtual_hosts)
        .flat_map(|v| &v.routes)
        .map(|r| {
            (
                r.name.clone(),
                r.backends.iter().map(|b| b.cluster.clone()).collect(),
            )
        })
        .collect()
}

const OTHER_NS: &str = r#"
---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {name: billing, namespace: finance}
spec: {service: billing, endpoints: ["10.0.0.7:80"]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: pay}
spec:
  parentRefs: [{name: edge, sectionName: http}]
  rules:
    - matches: [{path: {value: /pay}}]
      backendRefs: [{name: billing, namespace: finance}]
    - backendRefs: [{name: web}]
"#;

const GRANT: &str = r#"
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: from-default, namespace: finance}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: default}]
  to: [{group: "", kind: Service, name: billing}]
"#;

#[test]
fn a_cross_namespace_backend_without_a_reference_grant_is_kept_as_an_unusable_backend() {
    let routes = routes_on(&gateway(&set(&format!("{BASE}{OTHER_NS}"))), "http");
    let pay = routes.iter().find(|(_, b)| b.len() == 1 && b[0].is_empty());
    assert!(
        pay.is_some(),
        "the /pay rule stays, with no usable cluster: {routes:?}"
    );
    assert!(
        routes.iter().any(|(_, b)| b == &["service/default/web"]),
        "the rest of the route works: {routes:?}"
    );
}

#[test]
fn a_reference_grant_opens_the_backend_to_routes_of_the_namespace_it_names() {
    let routes = routes_on(&gateway(&set(&format!("{BASE}{OTHER_NS}{GRANT}"))), "http");
    assert!(
        routes
            .iter()
            .any(|(_, b)| b == &["service/finance/billing"]),
        "{routes:?}"
    );
    // A grant for another name, or from another namespace, opens nothing.
    for grant in [
        GRANT.replace("name: billing}", "name: ledger}"),
        GRANT.replace("namespace: default}", "namespace: shop}"),
    ] {
        let routes = routes_on(&gateway(&set(&format!("{BASE}{OTHER_NS}{grant}"))), "http");
        assert!(
            !routes
                .iter()
                .any(|(_, b)| b == &["service/finance/billing"]),
            "{routes:?}"
        );
    }
}

const FOREIGN_ROUTE: &str = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: shop}
spec:
  parentRefs: [{name: edge, namespace: default}]
  rules: [{backendRefs: [{name: web, namespace: default}]}]
"#;

#[test]
fn a_route_from_another_namespace_attaches_only_where_the_listener_allows_all() {
    let routes = routes_on(&gateway(&set(&format!("{BASE}{FOREIGN_ROUTE}"))), "http");
    assert!(
        routes.is_empty(),
        "allowedRoutes defaults to Same: {routes:?}"
    );
    let base = BASE.replace(
        "{name: http, port: 8080}",
        "{name: http, port: 8080, allowedRoutes: {namespaces: {from: All}}}",
    );
    let snap = gateway(&set(&format!("{base}{FOREIGN_ROUTE}")));
    assert_eq!(routes_on(&snap, "http").len(), 1, "All admits it");
    assert!(
        routes_on(&snap, "admin").is_empty(),
        "the other listener is still Same"
    );
}

#[test]
fn a_parent_ref_port_attaches_to_that_listener_only() {
    let route = |port: u16| {
        format!(
            "{BASE}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r}}
spec:
  parentRefs: [{{name: edge, port: {port}}}]
  rules: [{{backendRefs: [{{name: web}}]}}]
"
        )
    };
    let snap = gateway(&set(&route(8081)));
    assert!(routes_on(&snap, "http").is_empty());
    assert_eq!(routes_on(&snap, "admin").len(), 1);
    let snap = gateway(&set(&route(9999)));
    assert!(routes_on(&snap, "http").is_empty() && routes_on(&snap, "admin").is_empty());
}

#[test]
fn allowed_routes_selector_is_refused_with_a_reason() {
    let base = BASE.replace(
        "{name: http, port: 8080}",
        "{name: http, port: 8080, allowedRoutes: {namespaces: {from: Selector}}}",
    );
    let err = load_texts(&[(PathBuf::from("t.yaml"), base)]).expect_err("refused");
    assert!(
        err.to_string().contains("Selector needs Namespace objects"),
        "{err}"
    );
}

#[test]
fn a_listener_hostname_narrows_the_routes_it_serves() {
    let s = set(&format!(
        "{BASE}---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: shop-edge}}
spec: {{listeners: [{{name: shop, port: 9443, hostname: '*.shop.test'}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: catch-all}}
spec:
  parentRefs: [{{name: shop-edge}}]
  rules: [{{backendRefs: [{{name: web}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: named}}
spec:
  parentRefs: [{{name: shop-edge}}]
  hostnames: [cart.shop.test, '*.test', other.example]
  rules: [{{backendRefs: [{{name: api}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: elsewhere}}
spec:
  parentRefs: [{{name: shop-edge}}]
  hostnames: [other.example]
  rules: [{{backendRefs: [{{name: legacy}}]}}]
"
    ));
    let snap = snapshot_for(
        &s,
        &[],
        &ProxyKey {
            role: ProxyRole::Gateway,
            name: "shop-edge".into(),
            namespace: "default".into(),
        },
    );
    let l = &snap.listeners[0];
    assert_eq!(l.hostname, "*.shop.test");
    let vhosts: Vec<(&str, usize)> = l
        .virtual_hosts
        .iter()
        .map(|v| (v.domains[0].as_str(), v.routes.len()))
        .collect();
    // No catch-all "*": the route without hostnames serves the listener's; `*.test` narrows to `*.shop.test`;
    // other.example is outside the listener, so the route naming only it does not attach.
    assert_eq!(vhosts, [("*.shop.test", 2), ("cart.shop.test", 2)]);
    assert!(l.tls.is_none());
}

#[test]
fn hostname_intersections_follow_the_gateway_api() {
    use crate::translate::routes::hostname_intersection as meet;
    for (route, listener, both) in [
        ("a.shop.test", "a.shop.test", Some("a.shop.test")),
        ("a.b.shop.test", "*.shop.test", Some("a.b.shop.test")),
        ("*.shop.test", "a.shop.test", Some("a.shop.test")),
        ("*.a.shop.test", "*.shop.test", Some("*.a.shop.test")),
        ("*.test", "*.shop.test", Some("*.shop.test")),
        ("shop.test", "*.shop.test", None),
        ("a.shop.test", "b.shop.test", None),
        ("*.other.test", "*.shop.test", None),
    ] {
        assert_eq!(
            meet(route, listener).as_deref(),
            both,
            "{route} ∩ {listener}"
        );
    }
}

#[test]
fn https_listeners_carry_their_certificate_files() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["shop.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.path().join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("tls.key"), key.serialize_pem()).unwrap();
    let yaml = format!(
        "{BASE}---
apiVersion: meshwork.dev/v1alpha1
kind: TLSCertificate
metadata: {{name: shop}}
spec: {{certFile: tls.crt, keyFile: {}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: shop-edge}}
spec:
  listeners:
    - name: https
      port: 9443
      protocol: HTTPS
      tls: {{mode: Terminate, certificateRefs: [{{kind: TLSCertificate, group: meshwork.dev, name: shop}}]}}
",
        dir.path().join("tls.key").display()
    );
    let s = load_texts(&[(dir.path().join("m.yaml"), yaml)]).unwrap();
    let snap = snapshot_for(
        &s,
        &[],
        &ProxyKey {
            role: ProxyRole::Gateway,
            name: "shop-edge".into(),
            namespace: "default".into(),
        },
    );
    let tls = snap.listeners[0].tls.as_ref().unwrap();
    assert_eq!(tls.certificates.len(), 1);
    let c = &tls.certificates[0];
    assert_eq!(c.name, "default/shop");
    // Relative paths are resolved against the manifest's directory, absolute ones kept.
    assert_eq!(PathBuf::from(&c.cert_file), dir.path().join("tls.crt"));
    assert_eq!(PathBuf::from(&c.key_file), dir.path().join("tls.key"));
}
