//! Typed manifests, parsed from YAML nodes with source locations. Field-level checks happen here; checks that
//! span objects (references, port clashes) are in `validate`.

pub mod authz;
pub mod grant;
pub mod mesh;
pub mod policy;
pub mod read;
mod route;
pub mod tls;
pub mod wasm;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

pub use grant::ReferenceGrant;
pub use mesh::{Mesh, MtlsMode};
pub use policy::{PolicyTargetKind, TrafficPolicy};
pub use route::*;
pub use tls::{CertificateRef, ListenerTls, TlsCertificate};
pub use wasm::{WasmPlugin, WasmTarget, WasmTargetKind};

use crate::diag::Sink;
use crate::source::yaml::Node;
use read::{index, valid_name, Obj, Reader};

pub const MESHWORK_API: &str = "meshwork.dev/v1alpha1";
pub const GATEWAY_API: &str = "gateway.networking.k8s.io/v1";
/// ReferenceGrant is served as v1beta1 in the Gateway API's standard channel (v1 is accepted too).
pub const GATEWAY_API_BETA: &str = "gateway.networking.k8s.io/v1beta1";
pub const ISTIO_SECURITY_API: &str = "security.istio.io/v1";
pub const ISTIO_SECURITY_API_BETA: &str = "security.istio.io/v1beta1";

/// Where an object came from, and its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub name: String,
    pub namespace: String,
    pub file: Arc<Path>,
    pub line: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AppProtocol {
    #[default]
    Http,
    Http2,
    Grpc,
}

impl AppProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            AppProtocol::Http => "http",
            AppProtocol::Http2 => "http2",
            AppProtocol::Grpc => "grpc",
        }
    }
}

/// How a Workload's instances run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Run {
    /// `meshwork up` starts `replicas` copies, each behind its own sidecar.
    Command {
        argv: Vec<String>,
        shell: bool,
        env: BTreeMap<String, String>,
    },
    /// An app outside the mesh (no sidecar): plain upstream addresses.
    External {
        endpoints: Vec<String>,
        /// `spec.tls`: requests to these endpoints originate TLS (egress to a system that speaks HTTPS).
        tls: Option<tls::OriginateTls>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub meta: Meta,
    pub service: String,
    pub labels: BTreeMap<String, String>,
    pub replicas: u32,
    pub protocol: AppProtocol,
    pub run: Run,
    /// `spec.mtls.mode`: overrides the Mesh's mode for this workload's instances (sidecar workloads only).
    pub mtls: Option<MtlsMode>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayListener {
    pub name: String,
    pub port: u16,
    /// `allowedRoutes.namespaces.from: All`; the default (`Same`) admits routes of the Gateway's namespace only.
    pub routes_from_all_namespaces: bool,
    /// `hostname`: the only host names (exact, or `*.suffix`) this listener serves; `None`: any.
    pub hostname: Option<String>,
    /// `protocol: HTTPS`: TLS terminated with these certificates; `None` for `protocol: HTTP`.
    pub tls: Option<ListenerTls>,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    pub meta: Meta,
    pub listeners: Vec<GatewayListener>,
}

/// Everything read from a manifest directory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ManifestSet {
    pub workloads: Vec<Workload>,
    pub gateways: Vec<Gateway>,
    pub routes: Vec<Route>,
    pub meshes: Vec<Mesh>,
    pub wasm_plugins: Vec<WasmPlugin>,
    pub policies: Vec<TrafficPolicy>,
    pub reference_grants: Vec<ReferenceGrant>,
    pub authorization_policies: Vec<authz::AuthorizationPolicy>,
    pub tls_certificates: Vec<TlsCertificate>,
}

impl ManifestSet {
    /// True when no document defined anything (the files were empty or held only comments).
    pub fn is_empty(&self) -> bool {
        let ManifestSet {
            workloads,
            gateways,
            routes,
            meshes,
            wasm_plugins,
            policies,
            reference_grants,
            authorization_policies,
            tls_certificates,
        } = self;
        workloads.is_empty()
            && gateways.is_empty()
            && routes.is_empty()
            && meshes.is_empty()
            && wasm_plugins.is_empty()
            && policies.is_empty()
            && reference_grants.is_empty()
            && authorization_policies.is_empty()
            && tls_certificates.is_empty()
    }
}

const KINDS: &str =
    "meshwork.dev/v1alpha1 Workload/Mesh/WasmPlugin/TrafficPolicy/AuthorizationPolicy/TLSCertificate, gateway.networking.k8s.io/v1 Gateway/HTTPRoute/GRPCRoute, gateway.networking.k8s.io/v1beta1 ReferenceGrant, security.istio.io/v1 (or v1beta1) AuthorizationPolicy";

/// Parses one YAML document into `set`, reporting problems to `sink`.
pub fn parse_document(doc: &Node, sink: &mut Sink, set: &mut ManifestSet) {
    let mut r = Reader { sink };
    let Some(root) = r.obj(doc, "", &["apiVersion", "kind", "metadata", "spec"]) else {
        return;
    };
    let api = r.req_string(
        &root,
        "apiVersion",
        "an API version such as meshwork.dev/v1alpha1",
    );
    let kind = r.req_string(&root, "kind", "an object kind such as HTTPRoute");
    let (Some(api), Some(kind)) = (api, kind) else {
        return;
    };
    let kind_line = root.get("kind").map_or(root.line, |n| n.line);
    let known = matches!(
        (api.as_str(), kind.as_str()),
        (
            MESHWORK_API,
            "Workload" | "Mesh" | "WasmPlugin" | "TrafficPolicy" | "TLSCertificate"
        ) | (GATEWAY_API, "Gateway" | "HTTPRoute" | "GRPCRoute")
            | (GATEWAY_API | GATEWAY_API_BETA, "ReferenceGrant")
            | (
                MESHWORK_API | ISTIO_SECURITY_API | ISTIO_SECURITY_API_BETA,
                "AuthorizationPolicy"
            )
    );
    if !known {
        r.error(
            kind_line,
            "kind",
            format!("unsupported apiVersion/kind {api} {kind} (supported: {KINDS})"),
        );
        return;
    }
    let Some(meta) = parse_meta(&mut r, &root) else {
        return;
    };
    let spec = match root.get("spec") {
        Some(s) => s,
        None if kind == "Mesh" => {
            set.meshes.push(Mesh::with_defaults(meta));
            return;
        }
        None => {
            r.error(
                root.line,
                "spec",
                "required field is missing: expected a mapping",
            );
            return;
        }
    };
    match kind.as_str() {
        "Workload" => {
            if let Some(w) = parse_workload(&mut r, meta, spec) {
                set.workloads.push(w);
            }
        }
        "Mesh" => {
            if let Some(mesh) = mesh::parse_mesh(&mut r, meta, spec) {
                set.meshes.push(mesh);
            }
        }
        "WasmPlugin" => {
            if let Some(p) = wasm::parse(&mut r, meta, spec) {
                set.wasm_plugins.push(p);
            }
        }
        "TrafficPolicy" => {
            if let Some(p) = policy::parse(&mut r, meta, spec) {
                set.policies.push(p);
            }
        }
        "AuthorizationPolicy" => {
            if let Some(p) = authz::parse(&mut r, meta, spec) {
                set.authorization_policies.push(p);
            }
        }
        "ReferenceGrant" => {
            if let Some(g) = grant::parse(&mut r, meta, spec) {
                set.reference_grants.push(g);
            }
        }
        "TLSCertificate" => {
            if let Some(c) = tls::parse_certificate(&mut r, meta, spec) {
                set.tls_certificates.push(c);
            }
        }
        "Gateway" => {
            if let Some(g) = parse_gateway(&mut r, meta, spec) {
                set.gateways.push(g);
            }
        }
        "HTTPRoute" => {
            if let Some(route) = route::parse_route(&mut r, meta, spec, RouteKind::Http) {
                set.routes.push(route);
            }
        }
        "GRPCRoute" => {
            if let Some(route) = route::parse_route(&mut r, meta, spec, RouteKind::Grpc) {
                set.routes.push(route);
            }
        }
        _ => {}
    }
}

fn parse_meta(r: &mut Reader<'_>, root: &Obj<'_>) -> Option<Meta> {
    let node = r.required(root, "metadata", "a mapping with at least `name`")?;
    let md = r.obj(
        node,
        "metadata",
        &["name", "namespace", "labels", "annotations"],
    )?;
    // labels/annotations are accepted as Kubernetes metadata; they carry no behaviour (spec.labels does).
    for key in ["labels", "annotations"] {
        if let Some(n) = md.get(key) {
            r.string_map(n, &md.field(key));
        }
    }
    let name = r.req_string(&md, "name", "a DNS-1123 name such as `backend-v1`")?;
    let name_line = md.get("name").map_or(md.line, |n| n.line);
    if !valid_name(&name) {
        r.error(
            name_line,
            "metadata.name",
            format!("expected a DNS-1123 name (lowercase letters, digits, '-', '.'), got {name:?}"),
        );
        return None;
    }
    let namespace = r
        .opt_string(&md, "namespace")
        .unwrap_or_else(|| "default".to_string());
    if !valid_name(&namespace) {
        r.error(
            md.line,
            "metadata.namespace",
            format!("expected a DNS-1123 name, got {namespace:?}"),
        );
        return None;
    }
    Some(Meta {
        name,
        namespace,
        file: r.sink.file.clone(),
        line: root.line,
    })
}

fn parse_workload(r: &mut Reader<'_>, meta: Meta, spec: &Node) -> Option<Workload> {
    let s = r.obj(
        spec,
        "spec",
        &[
            "service",
            "labels",
            "replicas",
            "protocol",
            "command",
            "env",
            "endpoints",
            "mtls",
            "tls",
        ],
    )?;
    let service = r.req_string(
        &s,
        "service",
        "the mesh service name this workload belongs to",
    );
    if let Some(svc) = &service {
        if !valid_name(svc) || svc.contains('.') {
            r.error(
                s.get("service").map_or(s.line, |n| n.line),
                "spec.service",
                format!("expected a DNS-1123 label (lowercase letters, digits, '-'), got {svc:?}"),
            );
        }
    }
    let labels = s
        .get("labels")
        .map(|n| r.string_map(n, "spec.labels"))
        .unwrap_or_default();
    let replicas = match s.get("replicas") {
        Some(n) => r.int(n, "spec.replicas", 0, 64).map_or(1, |v| v as u32),
        None => 1,
    };
    let protocol = match s.get("protocol") {
        Some(n) => match r
            .choice(n, "spec.protocol", &["http", "http2", "grpc"])
            .as_deref()
        {
            Some("http2") => AppProtocol::Http2,
            Some("grpc") => AppProtocol::Grpc,
            _ => AppProtocol::Http,
        },
        None => AppProtocol::Http,
    };
    let env = s
        .get("env")
        .map(|n| r.string_map(n, "spec.env"))
        .unwrap_or_default();
    let mtls = s
        .get("mtls")
        .and_then(|n| mesh::parse_mtls(r, n, "spec.mtls"));
    let run = match (s.get("command"), s.get("endpoints")) {
        (Some(cmd), None) => {
            if let Some(t) = s.get("tls") {
                r.error(t.line, "spec.tls", "only meaningful with spec.endpoints: a workload meshwork runs is reached through its sidecar, over mesh mTLS");
            }
            let (argv, shell) = match cmd.as_scalar() {
                Some(line) => (vec![line.to_string()], true),
                None => (r.string_list(cmd, "spec.command"), false),
            };
            if argv.is_empty() || argv[0].trim().is_empty() {
                r.error(
                    cmd.line,
                    "spec.command",
                    "expected a command line or a non-empty list of arguments",
                );
                return None;
            }
            Run::Command { argv, shell, env }
        }
        (None, Some(eps)) => {
            if s.has("env") {
                r.error(
                    s.line,
                    "spec.env",
                    "only meaningful with spec.command (external endpoints are not started)",
                );
            }
            let items = r.list(eps, "spec.endpoints")?;
            let mut endpoints = Vec::new();
            for (i, n) in items.iter().enumerate() {
                let path = index("spec.endpoints", i);
                if let Some(addr) = r.string(n, &path) {
                    if addr.parse::<std::net::SocketAddr>().is_ok() {
                        endpoints.push(addr);
                    } else {
                        r.error(n.line, path, format!("expected an IP:port address such as \"127.0.0.1:9000\", got {addr:?}"));
                    }
                }
            }
            if items.is_empty() {
                r.error(eps.line, "spec.endpoints", "expected at least one address");
            }
            if let Some(m) = s.get("mtls") {
                r.error(
                    m.line,
                    "spec.mtls",
                    "only meaningful with spec.command: an app outside the mesh has no sidecar, so its endpoints are always reached in plaintext",
                );
            }
            let tls = s
                .get("tls")
                .and_then(|t| tls::parse_origination(r, t, "spec.tls"));
            Run::External { endpoints, tls }
        }
        (Some(_), Some(_)) => {
            r.error(s.line, "spec", "expected either `command` (an app meshwork runs) or `endpoints` (an app outside the mesh), not both");
            return None;
        }
        (None, None) => {
            r.error(s.line, "spec", "expected either `command` (an app meshwork runs) or `endpoints` (an app outside the mesh)");
            return None;
        }
    };
    Some(Workload {
        meta,
        service: service?,
        labels,
        replicas,
        protocol,
        run,
        mtls,
    })
}

/// A listener's `allowedRoutes`: true for `namespaces.from: All`, false for `Same` (the default).
fn allowed_from_all(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<bool> {
    let a = r.obj(node, path, &["namespaces"])?;
    let Some(ns) = a.get("namespaces") else {
        return Some(false);
    };
    let ns = r.obj(ns, &format!("{path}.namespaces"), &["from"])?;
    let from = match ns.get("from") {
        Some(f) => r.choice(f, &ns.field("from"), &["Same", "All", "Selector"])?,
        None => return Some(false),
    };
    if from == "Selector" {
        r.error(
            ns.line,
            ns.field("from"),
            "Selector needs Namespace objects with labels, which Meshwork does not read: expected Same or All",
        );
        return None;
    }
    Some(from == "All")
}

fn parse_gateway(r: &mut Reader<'_>, meta: Meta, spec: &Node) -> Option<Gateway> {
    let s = r.obj(spec, "spec", &["gatewayClassName", "listeners"])?;
    if let Some(n) = s.get("gatewayClassName") {
        r.string(n, "spec.gatewayClassName");
    }
    let node = r.required(
        &s,
        "listeners",
        "a list of listeners with name, port and protocol",
    )?;
    let items = r.list(node, "spec.listeners")?;
    if items.is_empty() {
        r.error(
            node.line,
            "spec.listeners",
            "expected at least one listener",
        );
    }
    let mut listeners = Vec::new();
    for (i, n) in items.iter().enumerate() {
        let path = index("spec.listeners", i);
        let Some(l) = r.obj(
            n,
            &path,
            &[
                "name",
                "port",
                "protocol",
                "allowedRoutes",
                "hostname",
                "tls",
            ],
        ) else {
            continue;
        };
        let name = r.req_string(
            &l,
            "name",
            "a listener name (sectionName in route parentRefs)",
        );
        let port = r
            .required(&l, "port", "a port number")
            .and_then(|p| r.int(p, &l.field("port"), 1, 65535));
        let https = match l.get("protocol") {
            Some(p) => {
                r.choice(p, &l.field("protocol"), &["HTTP", "HTTPS"])
                    .as_deref()
                    == Some("HTTPS")
            }
            None => false,
        };
        let hostname = listener_hostname(r, &l);
        let tls = match (https, l.get("tls")) {
            (true, Some(t)) => tls::parse_listener_tls(r, t, &l.field("tls"), &meta.namespace),
            (true, None) => {
                r.error(n.line, l.field("tls"), "required for protocol HTTPS: expected {mode: Terminate, certificateRefs: [...]}");
                None
            }
            (false, Some(t)) => {
                r.error(
                    t.line,
                    l.field("tls"),
                    "only HTTPS listeners take tls: expected protocol: HTTPS, or no tls",
                );
                None
            }
            (false, None) => None,
        };
        let all = match l.get("allowedRoutes") {
            Some(a) => allowed_from_all(r, a, &l.field("allowedRoutes"))?,
            None => false,
        };
        if let (Some(name), Some(port)) = (name, port) {
            if https && tls.is_none() {
                continue;
            }
            listeners.push(GatewayListener {
                name,
                port: port as u16,
                routes_from_all_namespaces: all,
                hostname,
                tls,
                line: n.line,
            });
        }
    }
    Some(Gateway { meta, listeners })
}

fn listener_hostname(r: &mut Reader<'_>, l: &Obj<'_>) -> Option<String> {
    let n = l.get("hostname")?;
    let h = r.string(n, &l.field("hostname"))?;
    if !valid_hostname(&h) {
        r.error(
            n.line,
            l.field("hostname"),
            format!(
                "expected a host name such as \"shop.example.com\" or \"*.example.com\", got {h:?}"
            ),
        );
        return None;
    }
    Some(h)
}
