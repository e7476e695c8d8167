//! Cross-object checks: references resolve, names and ports do not clash. Field-level checks are in `model`.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::diag::Diagnostic;
use crate::model::{
    AppProtocol, BackendKind, BackendRef, Filter, ManifestSet, Meta, ParentKind, WasmTargetKind,
};

fn diag(meta: &Meta, line: usize, field: &str, message: String) -> Diagnostic {
    Diagnostic {
        file: meta.file.clone(),
        line,
        field: field.to_string(),
        message,
    }
}

/// The mesh services declared by Workloads: (namespace, service) -> protocol.
pub fn services(set: &ManifestSet) -> BTreeMap<(String, String), AppProtocol> {
    set.workloads
        .iter()
        .map(|w| ((w.meta.namespace.clone(), w.service.clone()), w.protocol))
        .collect()
}

pub fn validate(set: &ManifestSet) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut names: HashMap<(&str, &str, &str), &Meta> = HashMap::new();
    let objects = set
        .workloads
        .iter()
        .map(|w| ("Workload", &w.meta))
        .chain(set.gateways.iter().map(|g| ("Gateway", &g.meta)))
        .chain(set.routes.iter().map(|r| (r.kind.as_str(), &r.meta)))
        .chain(set.meshes.iter().map(|m| ("Mesh", &m.meta)))
        .chain(set.wasm_plugins.iter().map(|p| ("WasmPlugin", &p.meta)))
        .chain(set.policies.iter().map(|p| ("TrafficPolicy", &p.meta)))
        .chain(
            set.authorization_policies
                .iter()
                .map(|p| ("AuthorizationPolicy", &p.meta)),
        )
        .chain(
            set.tls_certificates
                .iter()
                .map(|c| ("TLSCertificate", &c.meta)),
        );
    for (kind, meta) in objects {
        if meta.namespace == "meshwork-system" {
            out.push(diag(
                meta,
                meta.line,
                "metadata.namespace",
                format!("{kind} in namespace meshwork-system: that namespace is reserved for the control plane's own identities"),
            ));
        }
        if let Some(first) = names.insert((kind, &meta.namespace, &meta.name), meta) {
            out.push(diag(
                meta,
                meta.line,
                "metadata.name",
                format!(
                    "duplicate {kind} {}/{} (first defined at {}:{})",
                    meta.namespace,
                    meta.name,
                    first.file.display(),
                    first.line
                ),
            ));
        }
    }
    // One Mesh: its trust domain, mTLS mode and certificate lifetime hold for the whole mesh.
    if let Some((first, extra)) = set.meshes.split_first() {
        for m in extra {
            out.push(diag(
                &m.meta,
                m.meta.line,
                "kind",
                format!(
                    "only one Mesh object is allowed: Mesh {}/{} is already defined at {}:{}",
                    first.meta.namespace,
                    first.meta.name,
                    first.meta.file.display(),
                    first.meta.line
                ),
            ));
        }
    }

    let mut protocols: HashMap<(&str, &str), (AppProtocol, &Meta)> = HashMap::new();
    for w in &set.workloads {
        match protocols.get(&(w.meta.namespace.as_str(), w.service.as_str())) {
            Some((p, first)) if *p != w.protocol => out.push(diag(&w.meta, w.meta.line, "spec.protocol", format!(
                "service {} is {} in Workload {} but {} here: every workload of a service must speak the same protocol",
                w.service, p.as_str(), first.name, w.protocol.as_str()
            ))),
            _ => {
                protocols.insert((&w.meta.namespace, &w.service), (w.protocol, &w.meta));
            }
        }
    }

    let mut ports: HashMap<u16, (&Meta, &str)> = HashMap::new();
    for g in &set.gateways {
        let mut listener_names = HashSet::new();
        for (i, l) in g.listeners.iter().enumerate() {
            if !listener_names.insert(l.name.as_str()) {
                out.push(diag(
                    &g.meta,
                    l.line,
                    &format!("spec.listeners[{i}].name"),
                    format!("duplicate listener name {:?}", l.name),
                ));
            }
            for c in l.tls.iter().flat_map(|t| &t.certificate_refs) {
                if let Err(message) = certificate_ref_resolves(set, g, c) {
                    out.push(diag(&g.meta, c.line, &c.field, message));
                }
            }
            if let Some((other, other_listener)) = ports.insert(l.port, (&g.meta, &l.name)) {
                out.push(diag(
                    &g.meta,
                    l.line,
                    &format!("spec.listeners[{i}].port"),
                    format!(
                        "port {} is already used by listener {:?} of Gateway {}/{}",
                        l.port, other_listener, other.namespace, other.name
                    ),
                ));
            }
        }
    }

    let services = services(set);
    let workloads: HashSet<(&str, &str)> = set
        .workloads
        .iter()
        .map(|w| (w.meta.namespace.as_str(), w.meta.name.as_str()))
        .collect();
    let check_backend = |b: &BackendRef, meta: &Meta, out: &mut Vec<Diagnostic>| {
        let known = match b.kind {
            BackendKind::Service => services.contains_key(&(b.namespace.clone(), b.name.clone())),
            BackendKind::Workload => workloads.contains(&(b.namespace.as_str(), b.name.as_str())),
        };
        if !known {
            let what = if b.kind == BackendKind::Service {
                "mesh service (no Workload has spec.service"
            } else {
                "Workload (none is named"
            };
            out.push(diag(
                meta,
                b.line,
                &format!("{}.name", b.field),
                format!("unknown {what} {:?} in namespace {})", b.name, b.namespace),
            ));
        }
    };
    for p in &set.wasm_plugins {
        for t in &p.targets {
            let ns = p.meta.namespace.as_str();
            let known = match t.kind {
                WasmTargetKind::Gateway => set
                    .gateways
                    .iter()
                    .any(|g| g.meta.name == t.name && g.meta.namespace == ns),
                WasmTargetKind::Service => services.contains_key(&(ns.to_string(), t.name.clone())),
                WasmTargetKind::HttpRoute => set.routes.iter().any(|r| {
                    r.kind == crate::model::RouteKind::Http
                        && r.meta.name == t.name
                        && r.meta.namespace == ns
                }),
            };
            if !known {
                out.push(diag(
                    &p.meta,
                    t.line,
                    &format!("{}.name", t.field),
                    format!("unknown {:?} {:?} in namespace {ns}", t.kind, t.name),
                ));
            }
        }
    }
    // TrafficPolicy: the target exists, and no two policies target the same object (which would win is unclear).
    let mut targeted: HashMap<(crate::model::PolicyTargetKind, &str, &str), &Meta> = HashMap::new();
    for p in &set.policies {
        let ns = p.meta.namespace.as_str();
        let (known, what) = match p.target_kind {
            crate::model::PolicyTargetKind::Service => (
                services.contains_key(&(ns.to_string(), p.target_name.clone())),
                "Service (a service some Workload declares)",
            ),
            crate::model::PolicyTargetKind::HttpRoute => (
                set.routes
                    .iter()
                    .any(|r| r.meta.name == p.target_name && r.meta.namespace == ns),
                "HTTPRoute",
            ),
        };
        if !known {
            out.push(diag(
                &p.meta,
                p.target_line,
                "spec.targetRef.name",
                format!("unknown {what} {:?} in namespace {ns}", p.target_name),
            ));
        }
        if let Some(first) = targeted.insert((p.target_kind, ns, &p.target_name), &p.meta) {
            out.push(diag(
                &p.meta,
                p.target_line,
                "spec.targetRef",
                format!(
                    "{:?} is already targeted by TrafficPolicy {} ({}:{}); expected one policy per target",
                    p.target_name,
                    first.name,
                    first.file.display(),
                    first.line
                ),
            ));
        }
    }
    for route in &set.routes {
        let meta = &route.meta;
        if route.parent_refs.is_empty() {
            out.push(diag(
                meta,
                meta.line,
                "spec.parentRefs",
                "expected at least one Gateway or Service reference".into(),
            ));
        }
        for p in &route.parent_refs {
            match p.kind {
                ParentKind::Gateway => match set
                    .gateways
                    .iter()
                    .find(|g| g.meta.name == p.name && g.meta.namespace == p.namespace)
                {
                    None => out.push(diag(
                        meta,
                        p.line,
                        &format!("{}.name", p.field),
                        format!("unknown Gateway {:?} in namespace {}", p.name, p.namespace),
                    )),
                    Some(g) => {
                        if let Some(section) = &p.section_name {
                            if !g.listeners.iter().any(|l| &l.name == section) {
                                let names: Vec<&str> =
                                    g.listeners.iter().map(|l| l.name.as_str()).collect();
                                out.push(diag(
                                    meta,
                                    p.line,
                                    &format!("{}.sectionName", p.field),
                                    format!(
                                        "Gateway {} has no listener {section:?} (it has: {})",
                                        g.meta.name,
                                        names.join(", ")
                                    ),
                                ));
                            }
                        }
                    }
                },
                ParentKind::Service => {
                    if !services.contains_key(&(p.namespace.clone(), p.name.clone())) {
                        out.push(diag(meta, p.line, &format!("{}.name", p.field), format!("unknown mesh service {:?} in namespace {} (no Workload has spec.service {:?})", p.name, p.namespace, p.name)));
                    }
                    if !route.hostnames.is_empty() {
                        out.push(diag(meta, meta.line, "spec.hostnames", "not allowed on a route attached to a Service: the service name is the host (GAMMA)".into()));
                    }
                }
            }
        }
        for rule in &route.rules {
            for b in &rule.backends {
                check_backend(b, meta, &mut out);
            }
            for f in &rule.filters {
                if let Filter::Mirror { backend, .. } = f {
                    check_backend(backend, meta, &mut out);
                }
            }
        }
    }
    authz_targets(set, &services, &mut out);
    out
}

/// An AuthorizationPolicy's targetRefs name a Service (a Workload's `spec.service`) or a Gateway of its own
/// namespace (a policy applies only there, as in Istio).
fn authz_targets(
    set: &ManifestSet,
    services: &BTreeMap<(String, String), AppProtocol>,
    out: &mut Vec<Diagnostic>,
) {
    use crate::model::authz::AuthzTargetKind;
    for p in &set.authorization_policies {
        let ns = &p.meta.namespace;
        for t in &p.targets {
            let known = match t.kind {
                AuthzTargetKind::Service => services.contains_key(&(ns.clone(), t.name.clone())),
                AuthzTargetKind::Gateway => set
                    .gateways
                    .iter()
                    .any(|g| g.meta.namespace == *ns && g.meta.name == t.name),
            };
            if !known {
                let kind = match t.kind {
                    AuthzTargetKind::Service => "mesh service (no Workload has spec.service",
                    AuthzTargetKind::Gateway => "Gateway (none is named",
                };
                out.push(diag(
                    &p.meta,
                    t.line,
                    &format!("{}.name", t.field),
                    format!("unknown {kind} {:?} in namespace {ns})", t.name),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests;

/// A listener's certificate reference names a TLSCertificate, in the Gateway's namespace or, with a
/// ReferenceGrant there from this Gateway's namespace, in another one.
fn certificate_ref_resolves(
    set: &ManifestSet,
    g: &crate::model::Gateway,
    c: &crate::model::CertificateRef,
) -> Result<(), String> {
    let exists = set
        .tls_certificates
        .iter()
        .any(|t| t.meta.name == c.name && t.meta.namespace == c.namespace);
    if !exists {
        return Err(format!(
            "unknown TLSCertificate {:?} in namespace {}",
            c.name, c.namespace
        ));
    }
    if c.namespace != g.meta.namespace
        && !crate::model::grant::certificate_permitted(&set.reference_grants, g, c)
    {
        return Err(format!(
            "TLSCertificate {}/{} is in another namespace: expected a ReferenceGrant in {} from Gateway in {} to TLSCertificate",
            c.namespace, c.name, c.namespace, g.meta.namespace
        ));
    }
    Ok(())
}
