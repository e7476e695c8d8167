//! A table of cases over Istio's evaluation order: ALLOW / DENY / AUDIT / no policy, principals, namespaces,
//! methods, paths, hosts and request headers, with `*` wildcards and the `not` forms.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;

use http::HeaderMap;

use super::*;

fn values(any_of: &[&str], none_of: &[&str]) -> Values {
    Values {
        any_of: any_of.iter().map(|v| Pattern::parse(v)).collect(),
        none_of: none_of.iter().map(|v| Pattern::parse(v)).collect(),
    }
}

fn policy(name: &str, action: Action, rules: Vec<Rule>) -> Policy {
    Policy {
        name: Arc::from(name),
        action,
        rules,
    }
}

fn from_principals(any_of: &[&str], none_of: &[&str]) -> Rule {
    Rule {
        from: vec![Source {
            principals: values(any_of, none_of),
            ..Source::default()
        }],
        ..Rule::default()
    }
}

fn to(methods: &[&str], paths: &[&str], not_paths: &[&str]) -> Rule {
    Rule {
        to: vec![Operation {
            methods: values(methods, &[]),
            paths: values(paths, not_paths),
            ..Operation::default()
        }],
        ..Rule::default()
    }
}

struct Req {
    method: &'static str,
    path: &'static str,
    host: &'static str,
    principal: &'static str,
    namespace: &'static str,
    headers: Vec<(&'static str, &'static str)>,
}

const FRONTEND: Req = Req {
    method: "GET",
    path: "/api/orders",
    host: "backend",
    principal: "cluster.local/ns/default/sa/frontend",
    namespace: "default",
    headers: Vec::new(),
};

fn decide_for(policies: &[Policy], r: &Req) -> Decision {
    let mut headers = HeaderMap::new();
    for (k, v) in &r.headers {
        headers.insert(HeaderName::from_static(k), v.parse().unwrap());
    }
    let s = Subject {
        method: r.method,
        path: r.path,
        host: r.host,
        headers: &headers,
        principal: r.principal,
        namespace: r.namespace,
    };
    decide(policies, &s).0
}

fn deny(name: &str) -> Decision {
    Decision::Deny(Some(Arc::from(name)))
}

#[test]
fn the_table() {
    let only_frontend = policy(
        "default/only-frontend",
        Action::Allow,
        vec![from_principals(
            &["cluster.local/ns/default/sa/frontend"],
            &[],
        )],
    );
    let no_delete = policy(
        "default/no-delete",
        Action::Deny,
        vec![to(&["DELETE"], &[], &[])],
    );
    let require_mtls = policy(
        "default/require-mtls",
        Action::Deny,
        vec![from_principals(&[], &["*"])],
    );
    let allow_nothing = policy("default/allow-nothing", Action::Allow, Vec::new());
    let api_only = policy(
        "default/api",
        Action::Allow,
        vec![to(&["GET", "POST"], &["/api/*"], &["/api/admin*"])],
    );
    let prod_ns = policy(
        "default/prod",
        Action::Allow,
        vec![Rule {
            from: vec![Source {
                namespaces: values(&["prod*"], &["prod-test"]),
                ..Source::default()
            }],
            ..Rule::default()
        }],
    );
    let tenant = policy(
        "default/tenant",
        Action::Allow,
        vec![Rule {
            when: vec![Condition {
                header: HeaderName::from_static("x-tenant"),
                values: values(&["acme", "*-corp"], &["evil-corp"]),
            }],
            ..Rule::default()
        }],
    );
    let hosts = policy(
        "default/hosts",
        Action::Allow,
        vec![Rule {
            to: vec![Operation {
                hosts: values(&["*.example.com"], &[]),
                ..Operation::default()
            }],
            ..Rule::default()
        }],
    );
    let audit = policy(
        "default/audit",
        Action::Audit,
        vec![to(&[], &["/api/*"], &[])],
    );
    let web = Req {
        principal: "cluster.local/ns/default/sa/web",
        ..FRONTEND
    };
    let plaintext = Req {
        principal: "",
        namespace: "",
        ..FRONTEND
    };
    let delete = Req {
        method: "DELETE",
        ..FRONTEND
    };
    let admin = Req {
        path: "/api/admin/users",
        ..FRONTEND
    };
    let put = Req {
        method: "PUT",
        ..FRONTEND
    };
    let in_ns = |namespace| Req {
        namespace,
        ..FRONTEND
    };
    let with_tenant = |v| Req {
        headers: vec![("x-tenant", v)],
        ..FRONTEND
    };
    let at_host = |host| Req { host, ..FRONTEND };
    let cases: Vec<(&str, Vec<Policy>, Req, Decision)> = vec![
        ("no policy: allowed", vec![], web, Decision::Allow),
        (
            "ALLOW matching principal",
            vec![only_frontend.clone()],
            FRONTEND,
            Decision::Allow,
        ),
        (
            "ALLOW, other principal",
            vec![only_frontend.clone()],
            Req {
                principal: "cluster.local/ns/default/sa/web",
                ..FRONTEND
            },
            Decision::Deny(None),
        ),
        (
            "ALLOW, no identity",
            vec![only_frontend.clone()],
            Req {
                principal: "",
                ..FRONTEND
            },
            Decision::Deny(None),
        ),
        (
            "DENY before ALLOW",
            vec![only_frontend.clone(), no_delete.clone()],
            delete,
            deny("default/no-delete"),
        ),
        (
            "DENY that does not match",
            vec![no_delete.clone()],
            FRONTEND,
            Decision::Allow,
        ),
        (
            "notPrincipals * denies plaintext",
            vec![require_mtls.clone()],
            plaintext,
            deny("default/require-mtls"),
        ),
        (
            "notPrincipals * lets mTLS through",
            vec![require_mtls],
            FRONTEND,
            Decision::Allow,
        ),
        (
            "ALLOW without rules allows nothing",
            vec![allow_nothing],
            FRONTEND,
            Decision::Deny(None),
        ),
        (
            "paths prefix",
            vec![api_only.clone()],
            FRONTEND,
            Decision::Allow,
        ),
        (
            "notPaths",
            vec![api_only.clone()],
            admin,
            Decision::Deny(None),
        ),
        ("methods", vec![api_only.clone()], put, Decision::Deny(None)),
        (
            "namespaces prefix",
            vec![prod_ns.clone()],
            in_ns("prod-eu"),
            Decision::Allow,
        ),
        (
            "notNamespaces",
            vec![prod_ns.clone()],
            in_ns("prod-test"),
            Decision::Deny(None),
        ),
        (
            "namespaces other",
            vec![prod_ns],
            in_ns("default"),
            Decision::Deny(None),
        ),
        (
            "header value",
            vec![tenant.clone()],
            with_tenant("acme"),
            Decision::Allow,
        ),
        (
            "header suffix",
            vec![tenant.clone()],
            with_tenant("big-corp"),
            Decision::Allow,
        ),
        (
            "header notValues",
            vec![tenant.clone()],
            with_tenant("evil-corp"),
            Decision::Deny(None),
        ),
        (
            "header missing",
            vec![tenant],
            FRONTEND,
            Decision::Deny(None),
        ),
        (
            "host suffix, any case",
            vec![hosts.clone()],
            at_host("API.Example.com"),
            Decision::Allow,
        ),
        (
            "host other",
            vec![hosts],
            at_host("example.org"),
            Decision::Deny(None),
        ),
        (
            "AUDIT never decides",
            vec![audit],
            admin_get(),
            Decision::Allow,
        ),
    ];
    let mut failed = Vec::new();
    for (name, policies, req, want) in cases {
        let got = decide_for(&policies, &req);
        if got != want {
            failed.push(format!("{name}: got {got:?}, want {want:?}"));
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}

fn admin_get() -> Req {
    Req {
        path: "/api/admin",
        ..FRONTEND
    }
}

#[test]
fn audit_policies_that_match_are_reported() {
    let audit = policy(
        "default/audit",
        Action::Audit,
        vec![to(&[], &["/api/*"], &[])],
    );
    let headers = HeaderMap::new();
    let s = Subject {
        method: "GET",
        path: "/api/x",
        host: "h",
        headers: &headers,
        principal: "",
        namespace: "",
    };
    let (decision, audited) = decide(std::slice::from_ref(&audit), &s);
    assert_eq!(decision, Decision::Allow);
    assert_eq!(audited, [&audit.name]);
}

#[test]
fn a_header_sent_twice_is_matched_as_all_its_values() {
    // DENY x-user: admin. Sending another value first must not hide the second.
    let deny_admin = policy(
        "default/no-admin-user",
        Action::Deny,
        vec![Rule {
            when: vec![Condition {
                header: HeaderName::from_static("x-user"),
                values: values(&["admin"], &[]),
            }],
            ..Rule::default()
        }],
    );
    let mut headers = HeaderMap::new();
    headers.append("x-user", "guest".parse().unwrap());
    headers.append("x-user", "admin".parse().unwrap());
    let s = Subject {
        method: "GET",
        path: "/",
        host: "h",
        headers: &headers,
        principal: "",
        namespace: "",
    };
    let (decision, _) = decide(std::slice::from_ref(&deny_admin), &s);
    assert_eq!(decision, deny("default/no-admin-user"));
    // And a notValues list: an ALLOW for tenants other than evil refuses a request carrying evil among others.
    let not_evil = policy(
        "default/not-evil",
        Action::Allow,
        vec![Rule {
            when: vec![Condition {
                header: HeaderName::from_static("x-tenant"),
                values: values(&[], &["evil"]),
            }],
            ..Rule::default()
        }],
    );
    let mut headers = HeaderMap::new();
    headers.append("x-tenant", "acme".parse().unwrap());
    headers.append("x-tenant", "evil".parse().unwrap());
    let s = Subject {
        headers: &headers,
        ..s
    };
    assert_eq!(
        decide(std::slice::from_ref(&not_evil), &s).0,
        Decision::Deny(None)
    );
}

#[test]
fn decisions_are_logged_at_most_a_few_a_second_but_all_counted() {
    let stats = Stats::default();
    let name: Arc<str> = Arc::from("default/p");
    let mut logged = 0;
    for _ in 0..1000 {
        stats.count(&name, "deny");
        if stats.may_log() {
            logged += 1;
        }
    }
    // 1000 decisions within a second or two: at most two seconds' worth logged.
    assert!(logged <= 2 * LOG_PER_SECOND, "{logged}");
    assert!(logged >= 1);
    assert_eq!(stats.snapshot(), vec![(name, "deny", 1000)]);
}
