//! `gateway.networking.k8s.io/v1beta1` ReferenceGrant, and the Gateway API's rules for references across
//! namespaces: a route may use another namespace's backend only when a ReferenceGrant in that namespace permits
//! it; a route attaches to a Gateway listener in another namespace only when the listener's
//! `allowedRoutes.namespaces.from` is `All` (the default, `Same`, keeps it to the Gateway's namespace).

use super::read::{index, Reader};
use super::route::{BackendKind, BackendRef, ParentKind, ParentRef, Route};
use super::{Gateway, GatewayListener, Meta};
use crate::source::yaml::Node;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceGrant {
    pub meta: Meta,
    /// (group, kind, namespace) of what may refer.
    pub from: Vec<(String, String, String)>,
    /// (group, kind, name) of what may be referred to; no name: every object of that kind.
    pub to: Vec<(String, String, Option<String>)>,
}

pub(super) fn parse(r: &mut Reader<'_>, meta: Meta, spec: &Node) -> Option<ReferenceGrant> {
    let s = r.obj(spec, "spec", &["from", "to"])?;
    let mut from = Vec::new();
    let node = r.required(
        &s,
        "from",
        "a list of {group, kind, namespace} allowed to refer",
    )?;
    for (i, n) in r.list(node, "spec.from")?.iter().enumerate() {
        let path = index("spec.from", i);
        let f = r.obj(n, &path, &["group", "kind", "namespace"])?;
        let group = r.req_string(
            &f,
            "group",
            "an API group such as gateway.networking.k8s.io",
        );
        let kind = r.req_string(&f, "kind", "a kind such as HTTPRoute");
        let ns = r.req_string(&f, "namespace", "the namespace of the referring objects");
        from.push((group?, kind?, ns?));
    }
    let mut to = Vec::new();
    let node = r.required(
        &s,
        "to",
        "a list of {group, kind, name} that may be referred to",
    )?;
    for (i, n) in r.list(node, "spec.to")?.iter().enumerate() {
        let path = index("spec.to", i);
        let t = r.obj(n, &path, &["group", "kind", "name"])?;
        let group = r.opt_string(&t, "group").unwrap_or_default();
        let kind = r.req_string(&t, "kind", "a kind such as Service")?;
        to.push((group, kind, r.opt_string(&t, "name")));
    }
    Some(ReferenceGrant { meta, from, to })
}

/// May `route` use backend `b`? Always in its own namespace; across namespaces only with a ReferenceGrant in
/// the backend's namespace from the route's kind and namespace to the backend's kind (and name, if it says one).
pub fn backend_permitted(grants: &[ReferenceGrant], route: &Route, b: &BackendRef) -> bool {
    if b.namespace == route.meta.namespace {
        return true;
    }
    let (to_group, to_kind) = match b.kind {
        BackendKind::Service => ("", "Service"),
        BackendKind::Workload => ("meshwork.dev", "Workload"),
    };
    grants
        .iter()
        .filter(|g| g.meta.namespace == b.namespace)
        .any(|g| {
            g.from.iter().any(|(group, kind, ns)| {
                group == "gateway.networking.k8s.io"
                    && kind == route.kind.as_str()
                    && *ns == route.meta.namespace
            }) && g.to.iter().any(|(group, kind, name)| {
                (group == to_group || (to_group.is_empty() && group == "core"))
                    && kind == to_kind
                    && name.as_ref().is_none_or(|n| *n == b.name)
            })
        })
}

/// May Gateway `g` terminate TLS with certificate `c` of another namespace? Only with a ReferenceGrant there from
/// Gateways of `g`'s namespace to TLSCertificates (all, or this one).
pub fn certificate_permitted(
    grants: &[ReferenceGrant],
    g: &Gateway,
    c: &super::tls::CertificateRef,
) -> bool {
    grants
        .iter()
        .filter(|grant| grant.meta.namespace == c.namespace)
        .any(|grant| {
            grant.from.iter().any(|(group, kind, ns)| {
                group == "gateway.networking.k8s.io" && kind == "Gateway" && *ns == g.meta.namespace
            }) && grant.to.iter().any(|(group, kind, name)| {
                group == "meshwork.dev"
                    && kind == super::tls::KIND
                    && name.as_ref().is_none_or(|n| *n == c.name)
            })
        })
}

/// Does `p` (a parentRef of `route`) attach the route to listener `l` of `gw`? The Gateway and namespace must
/// match, `sectionName` and `port` (when given) must name this listener, and the listener must allow routes from
/// the route's namespace.
pub fn attaches(route: &Route, p: &ParentRef, gw: &Gateway, l: &GatewayListener) -> bool {
    p.kind == ParentKind::Gateway
        && p.name == gw.meta.name
        && p.namespace == gw.meta.namespace
        && p.section_name.as_ref().is_none_or(|s| *s == l.name)
        && p.port.is_none_or(|port| port == l.port)
        && (l.routes_from_all_namespaces || route.meta.namespace == gw.meta.namespace)
}
