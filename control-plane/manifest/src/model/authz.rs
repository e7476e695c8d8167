//! AuthorizationPolicy, with Istio's field names (`security.istio.io/v1`, `v1beta1`, or `meshwork.dev/v1alpha1`):
//! `targetRefs` (Service or Gateway; none: every sidecar of the policy's namespace), `action` ALLOW (default) |
//! DENY | AUDIT, and `rules[]` of `from[].source` (principals, namespaces and their `not` forms), `to[].operation`
//! (methods, paths, hosts and their `not` forms) and `when[]` (`request.headers[<name>]` with values / notValues).
//! Values may start or end with `*`. Istio's evaluation order is the proxy's (data-plane/src/authz.rs).

use super::read::{index, Obj, Reader};
use super::Meta;
use crate::source::yaml::Node;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthzAction {
    Allow,
    Deny,
    Audit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthzTargetKind {
    Service,
    Gateway,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzTarget {
    pub kind: AuthzTargetKind,
    pub name: String,
    pub line: usize,
    pub field: String,
}

/// A list of values and a list of values that must not match; both empty: anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    pub values: Vec<String>,
    pub not_values: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthzSource {
    pub principals: Match,
    pub namespaces: Match,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthzOperation {
    pub methods: Match,
    pub paths: Match,
    pub hosts: Match,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzCondition {
    /// The request header named in `request.headers[<name>]`, lower-cased.
    pub header: String,
    pub values: Match,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthzRule {
    pub from: Vec<AuthzSource>,
    pub to: Vec<AuthzOperation>,
    pub when: Vec<AuthzCondition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationPolicy {
    pub meta: Meta,
    pub targets: Vec<AuthzTarget>,
    pub action: AuthzAction,
    pub rules: Vec<AuthzRule>,
}

pub(super) fn parse(r: &mut Reader<'_>, meta: Meta, spec: &Node) -> Option<AuthorizationPolicy> {
    let s = r.obj(
        spec,
        "spec",
        &[
            "targetRefs",
            "targetRef",
            "selector",
            "action",
            "rules",
            "provider",
        ],
    )?;
    for (key, why) in [
        (
            "selector",
            "workload selectors are not supported: name the Service or Gateway in targetRefs",
        ),
        ("targetRef", "use targetRefs (a list)"),
        (
            "provider",
            "CUSTOM actions and providers are not supported (ALLOW, DENY or AUDIT)",
        ),
    ] {
        if let Some(n) = s.get(key) {
            r.error(n.line, format!("spec.{key}"), why);
        }
    }
    let action = match s.get("action") {
        None => AuthzAction::Allow,
        Some(n) => match r
            .choice(n, "spec.action", &["ALLOW", "DENY", "AUDIT"])?
            .as_str()
        {
            "DENY" => AuthzAction::Deny,
            "AUDIT" => AuthzAction::Audit,
            _ => AuthzAction::Allow,
        },
    };
    let targets = match s.get("targetRefs") {
        Some(n) => targets(r, n),
        None => Vec::new(),
    };
    let mut rules = Vec::new();
    if let Some(n) = s.get("rules") {
        for (i, rule) in r.list(n, "spec.rules")?.iter().enumerate() {
            rules.push(parse_rule(r, rule, &index("spec.rules", i))?);
        }
    }
    Some(AuthorizationPolicy {
        meta,
        targets,
        action,
        rules,
    })
}

fn targets(r: &mut Reader<'_>, n: &Node) -> Vec<AuthzTarget> {
    let mut out = Vec::new();
    for (i, t) in r
        .list(n, "spec.targetRefs")
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let path = index("spec.targetRefs", i);
        let Some(o) = r.obj(t, &path, &["group", "kind", "name"]) else {
            continue;
        };
        if let Some(g) = o.get("group") {
            r.string(g, &o.field("group"));
        }
        let kind = r
            .required(&o, "kind", "Service or Gateway")
            .and_then(|k| r.choice(k, &o.field("kind"), &["Service", "Gateway"]));
        let kind = match kind.as_deref() {
            Some("Service") => AuthzTargetKind::Service,
            Some(_) => AuthzTargetKind::Gateway,
            None => continue,
        };
        if let Some(name) = r.req_string(&o, "name", "the target's name") {
            out.push(AuthzTarget {
                kind,
                name,
                line: o.line,
                field: path,
            });
        }
    }
    out
}

fn parse_rule(r: &mut Reader<'_>, n: &Node, path: &str) -> Option<AuthzRule> {
    let o = r.obj(n, path, &["from", "to", "when"])?;
    let mut rule = AuthzRule::default();
    if let Some(list) = o.get("from") {
        for (i, f) in r.list(list, &format!("{path}.from"))?.iter().enumerate() {
            let p = index(&format!("{path}.from"), i);
            let f = r.obj(f, &p, &["source"])?;
            let src = r.required(&f, "source", "a mapping of principals / namespaces")?;
            let src = r.obj(src, &format!("{p}.source"), &SOURCE_FIELDS)?;
            rule.from.push(AuthzSource {
                principals: pair(r, &src, "principals", "notPrincipals"),
                namespaces: pair(r, &src, "namespaces", "notNamespaces"),
            });
        }
    }
    if let Some(list) = o.get("to") {
        for (i, t) in r.list(list, &format!("{path}.to"))?.iter().enumerate() {
            let p = index(&format!("{path}.to"), i);
            let t = r.obj(t, &p, &["operation"])?;
            let op = r.required(&t, "operation", "a mapping of methods / paths / hosts")?;
            let op = r.obj(op, &format!("{p}.operation"), &OPERATION_FIELDS)?;
            rule.to.push(AuthzOperation {
                methods: pair(r, &op, "methods", "notMethods"),
                paths: pair(r, &op, "paths", "notPaths"),
                hosts: pair(r, &op, "hosts", "notHosts"),
            });
        }
    }
    if let Some(list) = o.get("when") {
        for (i, w) in r.list(list, &format!("{path}.when"))?.iter().enumerate() {
            let p = index(&format!("{path}.when"), i);
            rule.when.push(condition(r, w, &p)?);
        }
    }
    Some(rule)
}

const SOURCE_FIELDS: [&str; 4] = ["principals", "notPrincipals", "namespaces", "notNamespaces"];
const OPERATION_FIELDS: [&str; 6] = [
    "methods",
    "notMethods",
    "paths",
    "notPaths",
    "hosts",
    "notHosts",
];

fn pair(r: &mut Reader<'_>, o: &Obj<'_>, yes: &str, no: &str) -> Match {
    let mut list = |key: &str| -> Vec<String> {
        let Some(n) = o.get(key) else {
            return Vec::new();
        };
        let values = r.string_list(n, &o.field(key));
        if values.iter().any(String::is_empty) {
            r.error(n.line, o.field(key), "expected non-empty values");
        }
        values
    };
    Match {
        values: list(yes),
        not_values: list(no),
    }
}

fn condition(r: &mut Reader<'_>, n: &Node, path: &str) -> Option<AuthzCondition> {
    let o = r.obj(n, path, &["key", "values", "notValues"])?;
    let key = r.req_string(&o, "key", "request.headers[<name>]")?;
    let header = key
        .strip_prefix("request.headers[")
        .and_then(|k| k.strip_suffix(']'))
        .filter(|h| http_token(h));
    let Some(header) = header else {
        let line = o.get("key").map_or(o.line, |k| k.line);
        r.error(
            line,
            format!("{path}.key"),
            format!("expected request.headers[<header name>] (the only condition supported), got {key:?}"),
        );
        return None;
    };
    Some(AuthzCondition {
        header: header.to_ascii_lowercase(),
        values: pair(r, &o, "values", "notValues"),
    })
}

fn http_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
