//! pb::AuthorizationPolicy -> authz::Policy (checked: a condition key must be `request.headers[<name>]`).

use std::sync::Arc;

use http::header::HeaderName;
use meshwork_proto as pb;

use super::{invalid, InvalidSnapshot};
use crate::authz::{Action, Condition, Operation, Pattern, Policy, Rule, Source, Values};

pub fn policies(list: &[pb::AuthorizationPolicy]) -> Result<Vec<Policy>, InvalidSnapshot> {
    list.iter().map(policy).collect()
}

fn policy(p: &pb::AuthorizationPolicy) -> Result<Policy, InvalidSnapshot> {
    let path = format!("authorization {}", p.name);
    let action = match pb::AuthzAction::try_from(p.action) {
        Ok(pb::AuthzAction::AuthzAllow) => Action::Allow,
        Ok(pb::AuthzAction::AuthzDeny) => Action::Deny,
        Ok(pb::AuthzAction::AuthzAudit) => Action::Audit,
        Err(_) => return Err(invalid(&path, format!("unknown action {}", p.action))),
    };
    let rules = p
        .rules
        .iter()
        .map(|r| rule(&path, r))
        .collect::<Result<_, _>>()?;
    Ok(Policy {
        name: Arc::from(p.name.as_str()),
        action,
        rules,
    })
}

fn values(any_of: &[String], none_of: &[String]) -> Values {
    Values {
        any_of: any_of.iter().map(|v| Pattern::parse(v)).collect(),
        none_of: none_of.iter().map(|v| Pattern::parse(v)).collect(),
    }
}

fn rule(path: &str, r: &pb::AuthzRule) -> Result<Rule, InvalidSnapshot> {
    let from = r
        .from
        .iter()
        .map(|s| Source {
            principals: values(&s.principals, &s.not_principals),
            namespaces: values(&s.namespaces, &s.not_namespaces),
        })
        .collect();
    let to =
        r.to.iter()
            .map(|o| Operation {
                methods: values(&o.methods, &o.not_methods),
                paths: values(&o.paths, &o.not_paths),
                hosts: values(&o.hosts, &o.not_hosts),
            })
            .collect();
    let when = r
        .when
        .iter()
        .map(|c| {
            let name = c
                .key
                .strip_prefix("request.headers[")
                .and_then(|k| k.strip_suffix(']'))
                .and_then(|k| HeaderName::from_bytes(k.as_bytes()).ok())
                .ok_or_else(|| {
                    invalid(
                        path,
                        format!(
                            "condition key {:?}: expected request.headers[<name>]",
                            c.key
                        ),
                    )
                })?;
            Ok(Condition {
                header: name,
                values: values(&c.values, &c.not_values),
            })
        })
        .collect::<Result<_, InvalidSnapshot>>()?;
    Ok(Rule { from, to, when })
}
