//! AuthorizationPolicy: what is read (Istio's field names and apiVersions), what is refused with a reason, and
//! which proxies get which policies.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::PathBuf;

use meshwork_proto as pb;

use super::{snapshot_for, ProxyKey, ProxyRole};
use crate::source::files::load_texts;

const MESH: &str = "apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {name: backend}
spec: {service: backend, command: app}
---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {name: web}
spec: {service: web, command: app}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec: {listeners: [{name: http, port: 8080}]}
";

fn load(policies: &str) -> Result<crate::model::ManifestSet, Vec<String>> {
    let files = vec![
        (PathBuf::from("mesh.yaml"), MESH.to_string()),
        (PathBuf::from("authz.yaml"), policies.to_string()),
    ];
    load_texts(&files).map_err(|d| d.0.iter().map(ToString::to_string).collect())
}

fn for_proxy(policies: &str, role: ProxyRole, name: &str) -> Vec<pb::AuthorizationPolicy> {
    let set = load(policies).unwrap();
    let key = ProxyKey {
        role,
        name: name.into(),
        namespace: "default".into(),
    };
    snapshot_for(&set, &[], &key).authorization
}

const FRONTEND_ONLY: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: frontend-only}
spec:
  targetRefs: [{kind: Service, name: backend}]
  action: ALLOW
  rules:
    - from: [{source: {principals: [cluster.local/ns/default/sa/frontend], notNamespaces: [test]}}]
      to: [{operation: {methods: [GET], paths: [/api/*], notPaths: [/api/admin*]}}]
      when: [{key: 'request.headers[X-Tenant]', values: [acme], notValues: [evil]}]
";

#[test]
fn an_istio_policy_reaches_the_sidecars_of_its_target_only() {
    let got = for_proxy(FRONTEND_ONLY, ProxyRole::Sidecar, "backend");
    assert_eq!(got.len(), 1);
    let p = &got[0];
    assert_eq!(p.name, "default/frontend-only");
    assert_eq!(p.action, pb::AuthzAction::AuthzAllow as i32);
    let rule = &p.rules[0];
    assert_eq!(
        rule.from[0].principals,
        ["cluster.local/ns/default/sa/frontend"]
    );
    assert_eq!(rule.from[0].not_namespaces, ["test"]);
    assert_eq!(rule.to[0].methods, ["GET"]);
    assert_eq!(rule.to[0].not_paths, ["/api/admin*"]);
    assert_eq!(rule.when[0].key, "request.headers[x-tenant]");
    assert_eq!(rule.when[0].not_values, ["evil"]);
    assert!(for_proxy(FRONTEND_ONLY, ProxyRole::Sidecar, "web").is_empty());
    assert!(for_proxy(FRONTEND_ONLY, ProxyRole::Gateway, "edge").is_empty());
}

#[test]
fn a_policy_without_targets_covers_every_sidecar_of_its_namespace() {
    let deny = "apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: no-delete}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
";
    for service in ["backend", "web"] {
        let got = for_proxy(deny, ProxyRole::Sidecar, service);
        assert_eq!(got.len(), 1, "{service}");
        assert_eq!(got[0].action, pb::AuthzAction::AuthzDeny as i32);
    }
    assert!(for_proxy(deny, ProxyRole::Gateway, "edge").is_empty());
}

#[test]
fn a_policy_for_a_gateway_reaches_that_gateway() {
    let audit = "apiVersion: meshwork.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: watch}
spec:
  targetRefs: [{kind: Gateway, name: edge}]
  action: AUDIT
  rules: [{to: [{operation: {paths: ['/admin*']}}]}]
";
    let got = for_proxy(audit, ProxyRole::Gateway, "edge");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].action, pb::AuthzAction::AuthzAudit as i32);
}

#[test]
fn an_empty_spec_is_istios_allow_nothing() {
    let none = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing}
spec: {targetRefs: [{kind: Service, name: web}]}
";
    let got = for_proxy(none, ProxyRole::Sidecar, "web");
    assert_eq!(got[0].action, pb::AuthzAction::AuthzAllow as i32);
    assert!(got[0].rules.is_empty());
}

fn refused(policy: &str, wanted: &str) {
    let errors = load(policy).unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("authz.yaml") && e.contains(wanted)),
        "{errors:?}"
    );
}

#[test]
fn unsupported_or_wrong_fields_are_refused_with_the_reason() {
    let policy = |spec: &str| {
        format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p}}\nspec:\n{spec}")
    };
    refused(
        &policy("  selector: {matchLabels: {app: web}}\n"),
        "spec.selector: workload selectors are not supported",
    );
    refused(&policy("  action: CUSTOM\n"), "spec.action");
    refused(
        &policy("  targetRefs: [{kind: Service, name: nosuch}]\n"),
        "spec.targetRefs[0].name: unknown mesh service",
    );
    refused(
        &policy("  targetRefs: [{kind: HTTPRoute, name: r}]\n"),
        "spec.targetRefs[0].kind",
    );
    refused(
        &policy("  rules: [{when: [{key: source.ip, values: [10.0.0.1]}]}]\n"),
        "spec.rules[0].when[0].key: expected request.headers[<header name>]",
    );
    refused(
        &policy("  rules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}]\n"),
        "spec.rules[0].from[0].source",
    );
}
