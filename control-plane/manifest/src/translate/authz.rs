//! AuthorizationPolicies for one proxy: a sidecar gets the policies of its namespace that target its Service or
//! target nothing (namespace-wide); a gateway those of its namespace that target its Gateway.

use meshwork_proto as pb;

use super::{ProxyKey, ProxyRole};
use crate::model::authz::{AuthorizationPolicy, AuthzAction, AuthzTargetKind, Match};
use crate::model::ManifestSet;

pub fn policies_for(set: &ManifestSet, proxy: &ProxyKey) -> Vec<pb::AuthorizationPolicy> {
    let mut out: Vec<pb::AuthorizationPolicy> = set
        .authorization_policies
        .iter()
        .filter(|p| p.meta.namespace == proxy.namespace && applies(p, proxy))
        .map(policy)
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn applies(p: &AuthorizationPolicy, proxy: &ProxyKey) -> bool {
    let kind = match proxy.role {
        ProxyRole::Sidecar => AuthzTargetKind::Service,
        ProxyRole::Gateway => AuthzTargetKind::Gateway,
    };
    if p.targets.is_empty() {
        return proxy.role == ProxyRole::Sidecar;
    }
    p.targets
        .iter()
        .any(|t| t.kind == kind && t.name == proxy.name)
}

fn policy(p: &AuthorizationPolicy) -> pb::AuthorizationPolicy {
    pb::AuthorizationPolicy {
        name: format!("{}/{}", p.meta.namespace, p.meta.name),
        action: match p.action {
            AuthzAction::Allow => pb::AuthzAction::AuthzAllow,
            AuthzAction::Deny => pb::AuthzAction::AuthzDeny,
            AuthzAction::Audit => pb::AuthzAction::AuthzAudit,
        } as i32,
        rules: p
            .rules
            .iter()
            .map(|r| pb::AuthzRule {
                from: r
                    .from
                    .iter()
                    .map(|s| pb::AuthzSource {
                        principals: s.principals.values.clone(),
                        not_principals: s.principals.not_values.clone(),
                        namespaces: s.namespaces.values.clone(),
                        not_namespaces: s.namespaces.not_values.clone(),
                    })
                    .collect(),
                to: r
                    .to
                    .iter()
                    .map(|o| pb::AuthzOperation {
                        methods: o.methods.values.clone(),
                        not_methods: o.methods.not_values.clone(),
                        paths: o.paths.values.clone(),
                        not_paths: o.paths.not_values.clone(),
                        hosts: o.hosts.values.clone(),
                        not_hosts: o.hosts.not_values.clone(),
                    })
                    .collect(),
                when: r.when.iter().map(condition).collect(),
            })
            .collect(),
    }
}

fn condition(c: &crate::model::authz::AuthzCondition) -> pb::AuthzCondition {
    let Match { values, not_values } = &c.values;
    pb::AuthzCondition {
        key: format!("request.headers[{}]", c.header),
        values: values.clone(),
        not_values: not_values.clone(),
    }
}
