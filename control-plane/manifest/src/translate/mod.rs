//! Pure functions: a validated manifest set plus the live instances (from the control plane's registry; none for a
//! standalone proxy) -> the snapshot one proxy needs.
//! Output is deterministic (sorted), so "did this proxy's snapshot change?" is a plain equality test.

mod authz;
#[cfg(test)]
mod authz_tests;
mod mtls;
mod routes;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tracing_tests;

use std::collections::{BTreeMap, BTreeSet};

use meshwork_proto as pb;

use crate::model::{
    AppProtocol, BackendKind, BackendRef, ManifestSet, Run, WasmPlugin, WasmTargetKind,
};
pub use mtls::{
    certificate_lifetime, mesh_mtls, proto_mtls, service_mtls, sidecar_identity, trust_domain,
};
pub use routes::route_entries;

/// Label that `meshwork up` gives every instance: the Workload it runs. Selects the instances of a Workload
/// backend; instances started by hand are selected by the Workload's `spec.labels` instead.
pub const WORKLOAD_LABEL: &str = "meshwork.dev/workload";

/// A live sidecar instance, as announced on its discovery stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub node_id: String,
    pub namespace: String,
    pub service: String,
    pub labels: BTreeMap<String, String>,
    pub addr: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyRole {
    Sidecar,
    Gateway,
}

/// Who a snapshot is for: a sidecar of a service, or a gateway proxy of a Gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyKey {
    pub role: ProxyRole,
    pub name: String,
    pub namespace: String,
}

pub const OUTBOUND_LISTENER: &str = "outbound";

/// Cluster name of a backend: `service/<ns>/<name>` or `workload/<ns>/<name>`.
pub fn cluster_name(b: &BackendRef) -> String {
    match b.kind {
        BackendKind::Service => format!("service/{}/{}", b.namespace, b.name),
        BackendKind::Workload => format!("workload/{}/{}", b.namespace, b.name),
    }
}

pub fn snapshot_for(set: &ManifestSet, instances: &[Instance], proxy: &ProxyKey) -> pb::Snapshot {
    let listeners = match proxy.role {
        ProxyRole::Sidecar => vec![routes::outbound_listener(set, &proxy.namespace)],
        ProxyRole::Gateway => routes::gateway_listeners(set, &proxy.namespace, &proxy.name),
    };
    let mut wanted = BTreeSet::new();
    for l in &listeners {
        for vh in &l.virtual_hosts {
            for r in &vh.routes {
                wanted.extend(r.backends.iter().map(|b| b.cluster.clone()));
                for f in &r.filters {
                    if let Some(pb::filter::Kind::RequestMirror(m)) = &f.kind {
                        wanted.insert(m.cluster.clone());
                    }
                }
            }
        }
    }
    let ids = mtls::Identities::new(set);
    let clusters = wanted
        .into_iter()
        .filter_map(|name| cluster(set, &ids, instances, &name))
        .collect();
    // Only a sidecar has an inbound listener; a gateway's snapshot keeps the default.
    let inbound_mtls = match proxy.role {
        ProxyRole::Sidecar => service_mtls(set, &proxy.namespace, &proxy.name),
        ProxyRole::Gateway => crate::model::MtlsMode::default(),
    };
    let mut snapshot = pb::Snapshot {
        listeners,
        clusters,
        wasm_plugins: Vec::new(),
        inbound_wasm: Vec::new(),
        inbound_rate_limit: None,
        mesh_key: Vec::new(), // added by the server, which holds the key
        trust_domain: trust_domain(set).to_string(),
        inbound_mtls: proto_mtls(inbound_mtls) as i32,
        authorization: authz::policies_for(set, proxy),
        access_log: access_log(set),
        tracing: tracing(set),
    };
    attach_wasm(set, proxy, &mut snapshot);
    // Filters may call any mesh service (`proxy_http_call`), so a proxy that runs filters knows them all.
    if !snapshot.wasm_plugins.is_empty() {
        let services: BTreeSet<String> = set
            .workloads
            .iter()
            .map(|w| format!("service/{}/{}", w.meta.namespace, w.service))
            .collect();
        for name in services {
            if snapshot.clusters.iter().all(|c| c.name != name) {
                snapshot
                    .clusters
                    .extend(cluster(set, &ids, instances, &name));
            }
        }
    }
    attach_policies(set, proxy, &mut snapshot);
    snapshot
}

/// The TrafficPolicy targeting a Service or an HTTPRoute, if any (validation allows at most one per target).
pub fn policy_for<'a>(
    set: &'a ManifestSet,
    kind: crate::model::PolicyTargetKind,
    namespace: &str,
    name: &str,
) -> Option<&'a crate::model::TrafficPolicy> {
    set.policies
        .iter()
        .find(|p| p.target_kind == kind && p.meta.namespace == namespace && p.target_name == name)
}

/// TrafficPolicies onto the snapshot: a Service's policy on its clusters (the service and its workload subsets;
/// client-side fields only) and, for the service's own sidecars, its server-side rate limit; an HTTPRoute's
/// policy on that route's entries.
fn attach_policies(set: &ManifestSet, proxy: &ProxyKey, snapshot: &mut pb::Snapshot) {
    use crate::model::PolicyTargetKind;
    if set.policies.is_empty() {
        return;
    }
    let client_side = |p: &pb::Policy| {
        let mut p = p.clone();
        if p.rate_limit.as_ref().is_some_and(|r| r.server_side) {
            p.rate_limit = None;
        }
        p
    };
    for c in &mut snapshot.clusters {
        let mut parts = c.name.splitn(3, '/');
        let (Some(kind), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let service = match kind {
            "service" => Some(name.to_string()),
            _ => set
                .workloads
                .iter()
                .find(|w| w.meta.namespace == ns && w.meta.name == name)
                .map(|w| w.service.clone()),
        };
        if let Some(p) = service.and_then(|s| policy_for(set, PolicyTargetKind::Service, ns, &s)) {
            c.policy = Some(client_side(&p.policy));
        }
    }
    for l in &mut snapshot.listeners {
        for vh in &mut l.virtual_hosts {
            for r in &mut vh.routes {
                let mut parts = r.name.splitn(4, '/');
                if let (Some("HTTPRoute" | "GRPCRoute"), Some(ns), Some(name)) =
                    (parts.next(), parts.next(), parts.next())
                {
                    if let Some(p) = policy_for(set, PolicyTargetKind::HttpRoute, ns, name) {
                        r.policy = Some(client_side(&p.policy));
                    }
                }
            }
        }
    }
    if proxy.role == ProxyRole::Sidecar {
        if let Some(p) = policy_for(
            set,
            PolicyTargetKind::Service,
            &proxy.namespace,
            &proxy.name,
        ) {
            snapshot.inbound_rate_limit = p.policy.rate_limit.clone().filter(|r| r.server_side);
        }
    }
}

pub fn plugin_name(p: &WasmPlugin) -> String {
    format!("{}/{}", p.meta.namespace, p.meta.name)
}

/// Puts each WasmPlugin on what it targets: a Gateway's routes, an HTTPRoute's routes (wherever attached), or the
/// inbound listener of a Service's sidecars. Filters run by phase (AUTHN, AUTHZ, STATS, unspecified), then by
/// descending priority, then by name.
fn attach_wasm(set: &ManifestSet, proxy: &ProxyKey, snapshot: &mut pb::Snapshot) {
    if set.wasm_plugins.is_empty() {
        return;
    }
    let mut plugins: Vec<&WasmPlugin> = set.wasm_plugins.iter().collect();
    plugins.sort_by_key(|p| (p.phase, std::cmp::Reverse(p.priority), plugin_name(p)));
    let targets = |p: &WasmPlugin, kind: WasmTargetKind, ns: &str, name: &str| {
        p.meta.namespace == ns && p.targets.iter().any(|t| t.kind == kind && t.name == name)
    };
    let mut used = BTreeSet::new();
    for l in &mut snapshot.listeners {
        for vh in &mut l.virtual_hosts {
            for r in &mut vh.routes {
                let mut parts = r.name.splitn(4, '/');
                let (kind, ns, name) = (
                    parts.next().unwrap_or(""),
                    parts.next().unwrap_or(""),
                    parts.next().unwrap_or(""),
                );
                r.wasm = plugins
                    .iter()
                    .filter(|p| {
                        (proxy.role == ProxyRole::Gateway
                            && targets(p, WasmTargetKind::Gateway, &proxy.namespace, &proxy.name))
                            || (kind == "HTTPRoute"
                                && targets(p, WasmTargetKind::HttpRoute, ns, name))
                    })
                    .map(|p| plugin_name(p))
                    .collect();
                used.extend(r.wasm.iter().cloned());
            }
        }
    }
    if proxy.role == ProxyRole::Sidecar {
        snapshot.inbound_wasm = plugins
            .iter()
            .filter(|p| targets(p, WasmTargetKind::Service, &proxy.namespace, &proxy.name))
            .map(|p| plugin_name(p))
            .collect();
        used.extend(snapshot.inbound_wasm.iter().cloned());
    }
    snapshot.wasm_plugins = plugins
        .iter()
        .filter(|p| used.contains(&plugin_name(p)))
        .map(|p| pb::WasmPlugin {
            name: plugin_name(p),
            digest: p.digest.clone(),
            root_id: p.root_id.clone(),
            config: p.config.clone(),
            fail_open: p.fail_open,
            env: p.env.iter().cloned().collect(),
            memory_limit_bytes: p.memory_limit,
            cpu_per_call_ms: p.cpu_per_call.as_millis() as u64,
            body_buffer_bytes: p.body_buffer,
        })
        .collect();
}

/// The code of every module `snapshot` uses, by digest.
pub fn modules_for(set: &ManifestSet, snapshot: &pb::Snapshot) -> Vec<pb::WasmModule> {
    let mut seen = BTreeSet::new();
    snapshot
        .wasm_plugins
        .iter()
        .filter(|p| seen.insert(p.digest.clone()))
        .filter_map(|p| set.wasm_plugins.iter().find(|w| w.digest == p.digest))
        .map(|w| pb::WasmModule {
            digest: w.digest.clone(),
            code: w.code.as_ref().clone(),
        })
        .collect()
}

fn cluster(
    set: &ManifestSet,
    ids: &mtls::Identities<'_>,
    instances: &[Instance],
    name: &str,
) -> Option<pb::Cluster> {
    let mut parts = name.splitn(3, '/');
    let (kind, ns, obj) = (parts.next()?, parts.next()?, parts.next()?);
    let mut endpoints: Vec<pb::Endpoint> = Vec::new();
    // Static addresses have no sidecar: no identity; plaintext unless the Workload originates TLS to them.
    let external = |w: &crate::model::Workload, endpoints: &mut Vec<pb::Endpoint>| {
        if let Run::External {
            endpoints: addrs,
            tls,
        } = &w.run
        {
            let tls = tls.as_ref().map(|t| pb::UpstreamTls {
                sni: t.sni.clone(),
                ca_file: t
                    .ca_file
                    .as_ref()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            });
            for a in addrs {
                endpoints.push(pb::Endpoint {
                    address: a.clone(),
                    labels: w.labels.clone().into_iter().collect(),
                    node_id: String::new(),
                    identity: String::new(),
                    tls: tls.clone(),
                });
            }
        }
    };
    let from_instance = |i: &Instance| pb::Endpoint {
        address: i.addr.clone(),
        labels: i.labels.clone().into_iter().collect(),
        node_id: i.node_id.clone(),
        identity: ids.of_instance(&i.namespace, &i.service),
        tls: None,
    };
    let protocol;
    match kind {
        "service" => {
            protocol = set
                .workloads
                .iter()
                .find(|w| w.meta.namespace == ns && w.service == obj)?
                .protocol;
            for w in set
                .workloads
                .iter()
                .filter(|w| w.meta.namespace == ns && w.service == obj)
            {
                external(w, &mut endpoints);
            }
            endpoints.extend(
                instances
                    .iter()
                    .filter(|i| i.namespace == ns && i.service == obj)
                    .map(from_instance),
            );
        }
        "workload" => {
            let w = set
                .workloads
                .iter()
                .find(|w| w.meta.namespace == ns && w.meta.name == obj)?;
            protocol = w.protocol;
            external(w, &mut endpoints);
            let selected = |i: &&Instance| {
                i.namespace == ns
                    && i.service == w.service
                    && match i.labels.get(WORKLOAD_LABEL) {
                        Some(name) => name == obj,
                        None => {
                            !w.labels.is_empty()
                                && w.labels.iter().all(|(k, v)| i.labels.get(k) == Some(v))
                        }
                    }
            };
            endpoints.extend(instances.iter().filter(selected).map(from_instance));
        }
        _ => return None,
    }
    endpoints.sort_by(|a, b| a.address.cmp(&b.address).then(a.node_id.cmp(&b.node_id)));
    endpoints.dedup_by(|a, b| a.address == b.address);
    Some(pb::Cluster {
        name: name.to_string(),
        protocol: proto_protocol(protocol) as i32,
        endpoints,
        policy: None,
    })
}

pub fn proto_protocol(p: AppProtocol) -> pb::Protocol {
    match p {
        AppProtocol::Http => pb::Protocol::Http1,
        AppProtocol::Http2 => pb::Protocol::Http2,
        AppProtocol::Grpc => pb::Protocol::Grpc,
    }
}

/// The Mesh's access log settings, for every proxy.
fn access_log(set: &ManifestSet) -> Option<pb::AccessLog> {
    let log = set.meshes.first()?.access_log.as_ref()?;
    let format = match log.json {
        true => pb::AccessLogFormat::AccessLogJson,
        false => pb::AccessLogFormat::AccessLogText,
    };
    Some(pb::AccessLog {
        format: format as i32,
        path: log.path.clone(),
        sampling_ppm: log.sampling_ppm,
    })
}

/// The Mesh's tracing settings, for every proxy. No block: None, each proxy's OTEL_* environment decides alone;
/// `enabled: false`: tracing off, and nothing else is sent. Fields left out stay empty (the environment's).
fn tracing(set: &ManifestSet) -> Option<pb::Tracing> {
    use crate::model::mesh::TracingProtocol;
    let t = set.meshes.first()?.tracing.as_ref()?;
    if !t.enabled {
        return Some(pb::Tracing {
            enabled: false,
            ..pb::Tracing::default()
        });
    }
    let protocol = match t.protocol {
        None => pb::TracingProtocol::Unset,
        Some(TracingProtocol::Grpc) => pb::TracingProtocol::Grpc,
        Some(TracingProtocol::HttpProtobuf) => pb::TracingProtocol::HttpProtobuf,
    };
    Some(pb::Tracing {
        enabled: true,
        endpoint: t.endpoint.clone().unwrap_or_default(),
        protocol: protocol as i32,
        sampling_ppm: t.sampling_ppm,
        propagators: t
            .propagators
            .iter()
            .map(|p| p.as_str().to_string())
            .collect(),
        // A BTreeMap: sorted by key.
        resource_attributes: t
            .resource_attributes
            .iter()
            .map(|(key, value)| pb::ResourceAttribute {
                key: key.clone(),
                value: value.clone(),
            })
            .collect(),
    })
}
