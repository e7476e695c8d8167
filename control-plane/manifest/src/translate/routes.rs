//! Listeners, virtual hosts and routes, ordered by Gateway API precedence.

use std::cmp::Reverse;
use std::collections::BTreeSet;

use meshwork_proto as pb;

use super::{cluster_name, OUTBOUND_LISTENER};
use crate::model::grant::{attaches, backend_permitted};
use crate::model::{
    BackendKind, BackendRef, Filter, HeaderMod, ManifestSet, Match, ParentKind, PathMatch,
    PathModifier, ReferenceGrant, Route, Rule,
};
use crate::validate::services;

/// One (route, rule, match) triple; a proxy tries them in order.
pub struct Entry<'a> {
    pub route: &'a Route,
    pub rule_index: usize,
    pub rule: &'a Rule,
    pub match_index: usize,
    pub m: &'a Match,
}

/// Flattens routes into entries sorted by the Gateway API's precedence: exact path, then longest prefix (regex
/// last), then method, then most header matches, then most query matches; ties go to the route that sorts first
/// by namespace/name, then rule and match order.
pub fn route_entries<'a>(routes: &[&'a Route]) -> Vec<Entry<'a>> {
    let mut entries: Vec<Entry<'a>> = routes
        .iter()
        .flat_map(|route| {
            route
                .rules
                .iter()
                .enumerate()
                .flat_map(move |(rule_index, rule)| {
                    rule.matches
                        .iter()
                        .enumerate()
                        .map(move |(match_index, m)| Entry {
                            route,
                            rule_index,
                            rule,
                            match_index,
                            m,
                        })
                })
        })
        .collect();
    entries.sort_by_key(|e| {
        let (rank, len) = match &e.m.path {
            PathMatch::Exact(v) => (0u8, v.len()),
            PathMatch::Prefix(v) => (1, v.len()),
            PathMatch::Regex(_) => (2, 0),
        };
        (
            rank,
            Reverse(len),
            e.m.method.is_none(),
            Reverse(e.m.headers.len()),
            Reverse(e.m.query.len()),
            (e.route.meta.namespace.clone(), e.route.meta.name.clone()),
            e.rule_index,
            e.match_index,
        )
    });
    entries
}

fn header_mod(h: &HeaderMod) -> pb::HeaderModifier {
    let pair = |(n, v): &(String, String)| pb::Header {
        name: n.clone(),
        value: v.clone(),
    };
    pb::HeaderModifier {
        set: h.set.iter().map(pair).collect(),
        add: h.add.iter().map(pair).collect(),
        remove: h.remove.clone(),
    }
}

/// A route filter as the proxy takes it; a mirror to a backend the route may not use is left out.
fn filter(grants: &[ReferenceGrant], route: &Route, f: &Filter) -> Option<pb::Filter> {
    use pb::filter::Kind;
    let kind = match f {
        Filter::RequestHeaders(h) => Kind::RequestHeaderModifier(header_mod(h)),
        Filter::ResponseHeaders(h) => Kind::ResponseHeaderModifier(header_mod(h)),
        Filter::Rewrite { hostname, path } => Kind::UrlRewrite(pb::UrlRewrite {
            hostname: hostname.clone().unwrap_or_default(),
            path: path.as_ref().map(|p| match p {
                PathModifier::Full(v) => pb::url_rewrite::Path::ReplaceFullPath(v.clone()),
                PathModifier::Prefix(v) => pb::url_rewrite::Path::ReplacePrefixMatch(v.clone()),
            }),
        }),
        Filter::Redirect {
            scheme,
            hostname,
            path,
            port,
            status,
        } => Kind::RequestRedirect(pb::RequestRedirect {
            scheme: scheme.clone().unwrap_or_default(),
            hostname: hostname.clone().unwrap_or_default(),
            path: path.as_ref().map(|p| match p {
                PathModifier::Full(v) => pb::request_redirect::Path::ReplaceFullPath(v.clone()),
                PathModifier::Prefix(v) => {
                    pb::request_redirect::Path::ReplacePrefixMatch(v.clone())
                }
            }),
            port: port.map_or(0, u32::from),
            status_code: u32::from(*status),
        }),
        Filter::Mirror { backend, percent } => {
            if !backend_permitted(grants, route, backend) {
                return None;
            }
            Kind::RequestMirror(pb::RequestMirror {
                cluster: cluster_name(backend),
                percent: *percent,
            })
        }
    };
    Some(pb::Filter { kind: Some(kind) })
}

fn value_matches(v: &[crate::model::ValueMatch]) -> Vec<(String, i32, String)> {
    v.iter()
        .map(|m| {
            (
                m.name.clone(),
                if m.regex {
                    pb::MatchType::MatchRegex
                } else {
                    pb::MatchType::MatchExact
                } as i32,
                m.value.clone(),
            )
        })
        .collect()
}

fn route_proto(grants: &[ReferenceGrant], e: &Entry<'_>) -> pb::Route {
    let (ty, value) = match &e.m.path {
        PathMatch::Exact(v) => (pb::MatchType::MatchExact, v),
        PathMatch::Prefix(v) => (pb::MatchType::MatchPrefix, v),
        PathMatch::Regex(v) => (pb::MatchType::MatchRegex, v),
    };
    let route = e.route;
    pb::Route {
        name: format!(
            "{}/{}/{}/rule/{}/match/{}",
            route.kind.as_str(),
            route.meta.namespace,
            route.meta.name,
            e.rule_index,
            e.match_index
        ),
        r#match: Some(pb::RouteMatch {
            path: Some(pb::PathMatch {
                r#type: ty as i32,
                value: value.clone(),
            }),
            headers: value_matches(&e.m.headers)
                .into_iter()
                .map(|(name, r#type, value)| pb::HeaderMatch {
                    name,
                    r#type,
                    value,
                })
                .collect(),
            query_params: value_matches(&e.m.query)
                .into_iter()
                .map(|(name, r#type, value)| pb::QueryMatch {
                    name,
                    r#type,
                    value,
                })
                .collect(),
            method: e.m.method.clone().unwrap_or_default(),
        }),
        filters: e
            .rule
            .filters
            .iter()
            .filter_map(|f| filter(grants, route, f))
            .collect(),
        backends: e
            .rule
            .backends
            .iter()
            .map(|b| pb::WeightedBackend {
                // Not permitted (no ReferenceGrant): an empty cluster, which the proxy answers 500.
                cluster: if backend_permitted(grants, route, b) {
                    cluster_name(b)
                } else {
                    String::new()
                },
                weight: b.weight,
            })
            .collect(),
        timeout_ms: e.rule.timeout.map_or(0, |d| d.as_millis().max(1) as u64),
        wasm: Vec::new(),
        policy: None,
    }
}

fn default_route(cluster: String) -> pb::Route {
    pb::Route {
        name: "default".into(),
        r#match: Some(pb::RouteMatch {
            path: Some(pb::PathMatch {
                r#type: pb::MatchType::MatchPrefix as i32,
                value: "/".into(),
            }),
            ..Default::default()
        }),
        filters: vec![],
        backends: vec![pb::WeightedBackend { cluster, weight: 1 }],
        timeout_ms: 0,
        wasm: Vec::new(),
        policy: None,
    }
}

/// A sidecar's outbound listener: one virtual host per mesh service, reachable by its short name (in the
/// proxy's own namespace) and its qualified names. Services with no route attached get a default route.
pub fn outbound_listener(set: &ManifestSet, own_ns: &str) -> pb::Listener {
    let mut virtual_hosts = Vec::new();
    for (ns, svc) in services(set).into_keys() {
        let attached: Vec<&Route> = set
            .routes
            .iter()
            .filter(|r| {
                r.parent_refs
                    .iter()
                    .any(|p| p.kind == ParentKind::Service && p.name == svc && p.namespace == ns)
            })
            .collect();
        let routes = if attached.is_empty() {
            let b = BackendRef {
                kind: BackendKind::Service,
                name: svc.clone(),
                namespace: ns.clone(),
                weight: 1,
                line: 0,
                field: String::new(),
            };
            vec![default_route(cluster_name(&b))]
        } else {
            let grants = &set.reference_grants;
            route_entries(&attached)
                .iter()
                .map(|e| route_proto(grants, e))
                .collect()
        };
        let mut domains = vec![
            format!("{svc}.{ns}"),
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}.svc.cluster.local"),
        ];
        if ns == own_ns {
            domains.insert(0, svc.clone());
        }
        virtual_hosts.push(pb::VirtualHost {
            name: format!("{svc}.{ns}"),
            domains,
            routes,
        });
    }
    pb::Listener {
        name: OUTBOUND_LISTENER.into(),
        port: 0,
        virtual_hosts,
        ..Default::default()
    }
}

/// Whether a route with these host names (empty: any) serves `host` (a virtual host's name).
fn names_apply(names: &[String], host: &str) -> bool {
    names.is_empty()
        || names.iter().any(|h| {
            h == host || (h.starts_with("*.") && !host.starts_with("*.") && host.ends_with(&h[1..]))
        })
}

/// A gateway's listeners, each with the routes attached to it (by Gateway, optionally by sectionName), grouped
/// into virtual hosts by hostname. A listener `hostname` narrows them (Gateway API): a route without hostnames
/// serves the listener's, a route with hostnames serves their intersections with it, and a route with none in
/// common does not attach; requests for other hosts find no virtual host (404).
pub fn gateway_listeners(set: &ManifestSet, ns: &str, name: &str) -> Vec<pb::Listener> {
    let Some(gw) = set
        .gateways
        .iter()
        .find(|g| g.meta.name == name && g.meta.namespace == ns)
    else {
        return Vec::new();
    };
    gw.listeners
        .iter()
        .map(|l| pb::Listener {
            name: l.name.clone(),
            port: u32::from(l.port),
            virtual_hosts: gateway_virtual_hosts(set, gw, l),
            hostname: l.hostname.clone().unwrap_or_default(),
            tls: l.tls.as_ref().map(|t| listener_tls(set, t)),
        })
        .collect()
}

fn gateway_virtual_hosts(
    set: &ManifestSet,
    gw: &crate::model::Gateway,
    l: &crate::model::GatewayListener,
) -> Vec<pb::VirtualHost> {
    // Each attached route with the host names it serves on this listener (empty: any).
    let attached: Vec<(&Route, Vec<String>)> = set
        .routes
        .iter()
        .filter(|r| r.parent_refs.iter().any(|p| attaches(r, p, gw, l)))
        .filter_map(|r| {
            let Some(listener) = &l.hostname else {
                return Some((r, r.hostnames.clone()));
            };
            if r.hostnames.is_empty() {
                return Some((r, vec![listener.clone()]));
            }
            let common: Vec<String> = r
                .hostnames
                .iter()
                .filter_map(|h| hostname_intersection(h, listener))
                .collect();
            (!common.is_empty()).then_some((r, common))
        })
        .collect();
    let mut hosts: BTreeSet<String> = attached
        .iter()
        .flat_map(|(_, h)| h.iter().cloned())
        .collect();
    if attached.iter().any(|(_, h)| h.is_empty()) {
        hosts.insert("*".into());
    }
    hosts
        .into_iter()
        .map(|host| {
            let routes: Vec<&Route> = attached
                .iter()
                .filter(|(_, names)| {
                    host == "*" && names.is_empty() || host != "*" && names_apply(names, &host)
                })
                .map(|(r, _)| *r)
                .collect();
            pb::VirtualHost {
                name: host.clone(),
                domains: vec![host],
                routes: route_entries(&routes)
                    .iter()
                    .map(|e| route_proto(&set.reference_grants, e))
                    .collect(),
            }
        })
        .collect()
}

/// The host names both a route hostname and a listener hostname cover (the more specific of the two), if any.
/// Gateway API wildcards (`*.example.com`) cover any number of leading labels.
pub fn hostname_intersection(route: &str, listener: &str) -> Option<String> {
    let covers = |wild: &str, name: &str| {
        wild.strip_prefix('*')
            .is_some_and(|suffix| name.len() > suffix.len() && name.ends_with(suffix))
    };
    if route == listener || covers(listener, route) {
        Some(route.to_string())
    } else if covers(route, listener) {
        Some(listener.to_string())
    } else {
        None
    }
}

fn listener_tls(set: &ManifestSet, t: &crate::model::ListenerTls) -> pb::ListenerTls {
    let certificates = t
        .certificate_refs
        .iter()
        .filter_map(|c| {
            set.tls_certificates
                .iter()
                .find(|t| t.meta.name == c.name && t.meta.namespace == c.namespace)
        })
        .map(|t| pb::ServingCertificate {
            name: format!("{}/{}", t.meta.namespace, t.meta.name),
            cert_file: t.cert_file.to_string_lossy().into_owned(),
            key_file: t.key_file.to_string_lossy().into_owned(),
        })
        .collect();
    pb::ListenerTls { certificates }
}
