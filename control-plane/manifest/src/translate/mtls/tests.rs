//! Identity and mTLS in snapshots: the trust domain, the mode a sidecar's inbound enforces (the Mesh's, a
//! Workload's override, the strictest when a service's Workloads disagree), and the SPIFFE ID callers expect
//! from each endpoint (registered sidecar instances only, none when DISABLED).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use meshwork_proto as pb;

use crate::model::{ManifestSet, MtlsMode};
use crate::source::files::load_texts;
use crate::translate::{
    certificate_lifetime, service_mtls, snapshot_for, trust_domain, Instance, ProxyKey, ProxyRole,
    WORKLOAD_LABEL,
};

/// Services `web` and `api` (two Workloads, v1 and v2) behind sidecars, `cart` in namespace `shop`, `legacy`
/// outside the mesh (static endpoints), and a Gateway whose route splits between api's Workloads.
const SERVICES: &str = r#"
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
spec: {service: api, labels: {version: v2}, command: "true"}
---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {name: cart, namespace: shop}
spec: {service: cart, command: "true"}
---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {name: legacy}
spec: {service: legacy, endpoints: ["10.0.0.9:80"]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec: {listeners: [{name: http, port: 8080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split}
spec:
  parentRefs: [{name: edge}]
  rules:
    - backendRefs:
        - {group: meshwork.dev, kind: Workload, name: api-v1, weight: 90}
        - {group: meshwork.dev, kind: Workload, name: api-v2, weight: 10}
    - matches: [{path: {type: PathPrefix, value: /legacy}}]
      backendRefs: [{name: legacy}]
"#;

/// `SERVICES` with `edits` (each `(from, to)` replaced once) and `extra` documents appended.
fn set(edits: &[(&str, &str)], extra: &str) -> ManifestSet {
    let mut text = SERVICES.to_string();
    for (from, to) in edits {
        assert!(text.contains(from), "no {from:?} to edit");
        text = text.replacen(from, to, 1);
    }
    if !extra.is_empty() {
        text.push_str("---\n");
        text.push_str(extra);
    }
    load_texts(&[(PathBuf::from("t.yaml"), text)])
        .unwrap_or_else(|d| panic!("invalid test manifests:\n{d}"))
}

fn mesh(spec: &str) -> String {
    format!(
        "apiVersion: meshwork.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: mesh}}\nspec: {spec}\n"
    )
}

fn instance(ns: &str, service: &str, workload: &str, addr: &str) -> Instance {
    let labels = BTreeMap::from([(WORKLOAD_LABEL.to_string(), workload.to_string())]);
    Instance {
        node_id: format!("{workload}-{addr}"),
        namespace: ns.into(),
        service: service.into(),
        labels,
        addr: addr.into(),
    }
}

fn instances() -> Vec<Instance> {
    vec![
        instance("default", "web", "web", "127.0.0.1:3001"),
        instance("default", "api", "api-v1", "127.0.0.1:1001"),
        instance("default", "api", "api-v2", "127.0.0.1:2001"),
        instance("shop", "cart", "cart", "127.0.0.1:4001"),
    ]
}

fn sidecar(name: &str) -> ProxyKey {
    ProxyKey {
        role: ProxyRole::Sidecar,
        name: name.into(),
        namespace: "default".into(),
    }
}

fn gateway() -> ProxyKey {
    ProxyKey {
        role: ProxyRole::Gateway,
        name: "edge".into(),
        namespace: "default".into(),
    }
}

/// (address, identity) of every endpoint of cluster `name`.
fn identities(snap: &pb::Snapshot, name: &str) -> Vec<(String, String)> {
    snap.clusters
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no cluster {name}"))
        .endpoints
        .iter()
        .map(|e| (e.address.clone(), e.identity.clone()))
        .collect()
}

fn pair(addr: &str, identity: &str) -> (String, String) {
    (addr.to_string(), identity.to_string())
}

fn inbound(set: &ManifestSet, service: &str) -> pb::MtlsMode {
    let snap = snapshot_for(set, &instances(), &sidecar(service));
    pb::MtlsMode::try_from(snap.inbound_mtls).expect("a known mode")
}

#[test]
fn without_a_mesh_the_trust_domain_is_cluster_local_and_certificates_last_24h() {
    let s = set(&[], "");
    assert_eq!(trust_domain(&s), "cluster.local");
    assert_eq!(certificate_lifetime(&s), Duration::from_secs(24 * 3600));
    for key in [sidecar("web"), gateway()] {
        assert_eq!(snapshot_for(&s, &[], &key).trust_domain, "cluster.local");
    }
    let s = set(&[], &mesh("{}"));
    assert_eq!(trust_domain(&s), "cluster.local");
    assert_eq!(certificate_lifetime(&s), Duration::from_secs(24 * 3600));
}

#[test]
fn the_mesh_sets_the_trust_domain_of_snapshots_and_identities_and_the_certificate_lifetime() {
    let s = set(
        &[],
        &mesh("{trustDomain: prod.example.org, identity: {certificateLifetime: 30m}}"),
    );
    assert_eq!(trust_domain(&s), "prod.example.org");
    assert_eq!(certificate_lifetime(&s), Duration::from_secs(1800));
    let snap = snapshot_for(&s, &instances(), &sidecar("web"));
    assert_eq!(snap.trust_domain, "prod.example.org");
    assert_eq!(
        identities(&snap, "service/default/web"),
        [pair(
            "127.0.0.1:3001",
            "spiffe://prod.example.org/ns/default/sa/web"
        )]
    );
    assert_eq!(
        snapshot_for(&s, &[], &gateway()).trust_domain,
        "prod.example.org"
    );
}

#[test]
fn without_a_mesh_every_inbound_is_permissive() {
    let s = set(&[], "");
    for service in ["web", "api"] {
        assert_eq!(inbound(&s, service), pb::MtlsMode::MtlsPermissive);
    }
}

#[test]
fn a_sidecar_inbound_takes_the_mesh_mode() {
    for (mode, want) in [
        ("STRICT", pb::MtlsMode::MtlsStrict),
        ("PERMISSIVE", pb::MtlsMode::MtlsPermissive),
        ("DISABLED", pb::MtlsMode::MtlsDisabled),
    ] {
        let s = set(&[], &mesh(&format!("{{mtls: {{mode: {mode}}}}}")));
        assert_eq!(inbound(&s, "web"), want, "Mesh {mode}");
        assert_eq!(inbound(&s, "api"), want, "Mesh {mode}");
    }
}

#[test]
fn a_workload_mode_overrides_the_mesh_for_its_service_only() {
    let s = set(
        &[(
            "{service: web, command: \"true\"}",
            "{service: web, command: \"true\", mtls: {mode: STRICT}}",
        )],
        &mesh("{mtls: {mode: DISABLED}}"),
    );
    assert_eq!(inbound(&s, "web"), pb::MtlsMode::MtlsStrict);
    assert_eq!(inbound(&s, "api"), pb::MtlsMode::MtlsDisabled);
    assert_eq!(service_mtls(&s, "default", "web"), MtlsMode::Strict);
}

#[test]
fn workloads_of_a_service_that_disagree_give_the_strictest_mode() {
    let v1 = "{service: api, labels: {version: v1}, command: \"true\"}";
    let v1_with = |mode: &str| {
        format!(
            "{{service: api, labels: {{version: v1}}, command: \"true\", mtls: {{mode: {mode}}}}}"
        )
    };
    // One Workload STRICT, the other inherits the Mesh's PERMISSIVE: STRICT.
    let s = set(&[(v1, &v1_with("STRICT"))], "");
    assert_eq!(inbound(&s, "api"), pb::MtlsMode::MtlsStrict);
    // One DISABLED, the other PERMISSIVE (the Mesh's): PERMISSIVE, and api's instances keep their identity.
    let s = set(&[(v1, &v1_with("DISABLED"))], "");
    assert_eq!(inbound(&s, "api"), pb::MtlsMode::MtlsPermissive);
    let snap = snapshot_for(&s, &instances(), &sidecar("web"));
    assert_eq!(
        identities(&snap, "service/default/api"),
        [
            pair("127.0.0.1:1001", "spiffe://cluster.local/ns/default/sa/api"),
            pair("127.0.0.1:2001", "spiffe://cluster.local/ns/default/sa/api"),
        ]
    );
}

#[test]
fn registered_instances_carry_their_spiffe_id_and_static_endpoints_none() {
    let s = set(&[], "");
    let snap = snapshot_for(&s, &instances(), &sidecar("web"));
    assert_eq!(
        identities(&snap, "service/default/api"),
        [
            pair("127.0.0.1:1001", "spiffe://cluster.local/ns/default/sa/api"),
            pair("127.0.0.1:2001", "spiffe://cluster.local/ns/default/sa/api"),
        ]
    );
    assert_eq!(
        identities(&snap, "service/shop/cart"),
        [pair(
            "127.0.0.1:4001",
            "spiffe://cluster.local/ns/shop/sa/cart"
        )]
    );
    assert_eq!(
        identities(&snap, "service/default/legacy"),
        [pair("10.0.0.9:80", "")]
    );
    // The order instances register in does not change the snapshot.
    let mut reversed = instances();
    reversed.reverse();
    assert_eq!(snapshot_for(&s, &reversed, &sidecar("web")), snap);
}

#[test]
fn instances_of_a_disabled_service_have_no_identity() {
    let s = set(
        &[(
            "{name: cart, namespace: shop}\nspec: {service: cart, command: \"true\"}",
            "{name: cart, namespace: shop}\nspec: {service: cart, command: \"true\", mtls: {mode: DISABLED}}",
        )],
        &mesh("{mtls: {mode: STRICT}}"),
    );
    let snap = snapshot_for(&s, &instances(), &sidecar("web"));
    assert_eq!(
        identities(&snap, "service/shop/cart"),
        [pair("127.0.0.1:4001", "")]
    );
    assert_eq!(
        identities(&snap, "service/default/web"),
        [pair(
            "127.0.0.1:3001",
            "spiffe://cluster.local/ns/default/sa/web"
        )]
    );
}

#[test]
fn a_disabled_mesh_leaves_identities_only_to_workloads_that_override_it() {
    let s = set(
        &[(
            "{service: web, command: \"true\"}",
            "{service: web, command: \"true\", mtls: {mode: PERMISSIVE}}",
        )],
        &mesh("{mtls: {mode: DISABLED}}"),
    );
    let snap = snapshot_for(&s, &instances(), &sidecar("api"));
    assert_eq!(
        identities(&snap, "service/default/web"),
        [pair(
            "127.0.0.1:3001",
            "spiffe://cluster.local/ns/default/sa/web"
        )]
    );
    assert_eq!(
        identities(&snap, "service/default/api"),
        [pair("127.0.0.1:1001", ""), pair("127.0.0.1:2001", "")]
    );
    // A registered instance of a service no sidecar Workload declares follows the Mesh.
    let ids = super::Identities::new(&s);
    assert_eq!(ids.of_instance("default", "ghost"), "");
    assert_eq!(ids.of_instance("default", "legacy"), "");
}

#[test]
fn gateway_snapshots_carry_endpoint_identities() {
    let s = set(&[], "");
    let snap = snapshot_for(&s, &instances(), &gateway());
    assert_eq!(
        identities(&snap, "workload/default/api-v1"),
        [pair(
            "127.0.0.1:1001",
            "spiffe://cluster.local/ns/default/sa/api"
        )]
    );
    assert_eq!(
        identities(&snap, "workload/default/api-v2"),
        [pair(
            "127.0.0.1:2001",
            "spiffe://cluster.local/ns/default/sa/api"
        )]
    );
    assert_eq!(
        identities(&snap, "service/default/legacy"),
        [pair("10.0.0.9:80", "")]
    );
    // A gateway has no inbound sidecar listener: its snapshot keeps the default mode.
    let strict = set(&[], &mesh("{mtls: {mode: STRICT}}"));
    assert_eq!(
        snapshot_for(&strict, &instances(), &gateway()).inbound_mtls,
        pb::MtlsMode::MtlsPermissive as i32
    );
}
