//! pb::Snapshot -> Snapshot. Protobuf stays at this boundary; every check a proxy can make is made here, so a
//! snapshot that cannot be applied is NACKed with the reason and the previous one keeps serving.

use crate::telemetry::trace::settings::Protocol as TraceProtocol;
use crate::telemetry::trace::{MeshTracing, Propagators};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::Method;
use meshwork_proto as pb;
use regex::Regex;

mod authz;
pub mod plugins;
pub mod policy;
#[cfg(test)]
mod tests;

use super::snapshot::*;
use crate::filter::wasm::PluginHandle;

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct InvalidSnapshot {
    pub path: String,
    pub message: String,
}

fn invalid(path: impl Into<String>, message: impl Into<String>) -> InvalidSnapshot {
    InvalidSnapshot {
        path: path.into(),
        message: message.into(),
    }
}

fn regex(path: &str, pattern: &str) -> Result<Regex, InvalidSnapshot> {
    // Anchored: a regex match is a full match, as in Envoy.
    Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| invalid(path, format!("bad regex {pattern:?}: {e}")))
}

fn str_match(path: &str, ty: i32, value: &str) -> Result<StrMatch, InvalidSnapshot> {
    match pb::MatchType::try_from(ty) {
        Ok(pb::MatchType::MatchExact) => Ok(StrMatch::Exact(value.to_string())),
        Ok(pb::MatchType::MatchRegex) => Ok(StrMatch::Regex(regex(path, value)?)),
        _ => Err(invalid(path, "expected an exact or regex match")),
    }
}

fn header_name(path: &str, name: &str) -> Result<HeaderName, InvalidSnapshot> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| invalid(path, format!("bad header name {name:?}")))
}

fn header_value(path: &str, value: &str) -> Result<HeaderValue, InvalidSnapshot> {
    HeaderValue::from_str(value).map_err(|_| invalid(path, format!("bad header value {value:?}")))
}

fn header_mod(path: &str, m: &pb::HeaderModifier) -> Result<HeaderMod, InvalidSnapshot> {
    let pairs = |list: &[pb::Header]| -> Result<Vec<(HeaderName, HeaderValue)>, InvalidSnapshot> {
        list.iter()
            .map(|h| Ok((header_name(path, &h.name)?, header_value(path, &h.value)?)))
            .collect()
    };
    Ok(HeaderMod {
        set: pairs(&m.set)?,
        add: pairs(&m.add)?,
        remove: m
            .remove
            .iter()
            .map(|n| header_name(path, n))
            .collect::<Result<_, _>>()?,
    })
}

fn upstream_tls(
    path: &str,
    address: &str,
    t: &pb::UpstreamTls,
) -> Result<Arc<UpstreamTls>, InvalidSnapshot> {
    if rustls::pki_types::DnsName::try_from(t.sni.as_str()).is_err() {
        return Err(invalid(
            path,
            format!("endpoint {address}: tls sni {:?} is not a DNS name", t.sni),
        ));
    }
    let ca_file = match t.ca_file.as_str() {
        "" => None,
        f if std::path::Path::new(f).is_absolute() => Some(std::path::PathBuf::from(f)),
        f => {
            return Err(invalid(
                path,
                format!("endpoint {address}: tls ca_file {f:?} is not an absolute path"),
            ))
        }
    };
    Ok(Arc::new(UpstreamTls {
        sni: Arc::from(t.sni.as_str()),
        ca_file,
    }))
}

fn cluster(c: &pb::Cluster) -> Result<Cluster, InvalidSnapshot> {
    let path = format!("clusters[{}]", c.name);
    let protocol = match pb::Protocol::try_from(c.protocol) {
        Ok(pb::Protocol::Http1) => Protocol::Http1,
        Ok(pb::Protocol::Http2 | pb::Protocol::Grpc) => Protocol::Http2,
        Err(_) => return Err(invalid(path, format!("unknown protocol {}", c.protocol))),
    };
    let endpoints = c
        .endpoints
        .iter()
        .map(|e| {
            let addr: SocketAddr = e
                .address
                .parse()
                .map_err(|_| invalid(&path, format!("bad endpoint address {:?}", e.address)))?;
            let authority = addr
                .to_string()
                .parse()
                .map_err(|_| invalid(&path, "bad endpoint authority"))?;
            let identity = match e.identity.as_str() {
                "" => None,
                id => Some(meshwork_identity::SpiffeId::parse(id).map_err(|err| {
                    invalid(
                        &path,
                        format!("endpoint {} identity {id:?}: {err}", e.address),
                    )
                })?),
            };
            let tls = e
                .tls
                .as_ref()
                .map(|t| upstream_tls(&path, &e.address, t))
                .transpose()?;
            if tls.is_some() && identity.is_some() {
                return Err(invalid(
                    &path,
                    format!(
                        "endpoint {}: both a mesh identity and TLS origination",
                        e.address
                    ),
                ));
            }
            Ok(Endpoint {
                addr,
                authority,
                identity,
                tls,
                mesh_peer: !e.node_id.is_empty(),
            })
        })
        .collect::<Result<Vec<_>, InvalidSnapshot>>()?;
    let name: Arc<str> = Arc::from(c.name.as_str());
    Ok(Cluster {
        name,
        protocol,
        endpoints,
        policy: Arc::new(c.policy.as_ref().map(policy::policy).unwrap_or_default()),
    })
}

type Plugins = HashMap<String, Arc<PluginHandle>>;

fn plugin_list(
    path: &str,
    names: &[String],
    plugins: &Plugins,
) -> Result<Vec<Arc<PluginHandle>>, InvalidSnapshot> {
    names
        .iter()
        .map(|n| {
            plugins
                .get(n)
                .cloned()
                .ok_or_else(|| invalid(path, format!("unknown wasm plugin {n:?}")))
        })
        .collect()
}

fn route(
    r: &pb::Route,
    clusters: &HashMap<Arc<str>, Arc<Cluster>>,
    plugins: &Plugins,
) -> Result<Route, InvalidSnapshot> {
    let path = format!("route {}", r.name);
    let lookup = |name: &str| {
        clusters
            .get(name)
            .cloned()
            .ok_or_else(|| invalid(&path, format!("unknown cluster {name:?}")))
    };
    let m = r.r#match.clone().unwrap_or_default();
    let pm = m.path.unwrap_or(pb::PathMatch {
        r#type: pb::MatchType::MatchPrefix as i32,
        value: "/".into(),
    });
    let path_match = match pb::MatchType::try_from(pm.r#type) {
        Ok(pb::MatchType::MatchExact) => PathMatch::Exact(pm.value),
        Ok(pb::MatchType::MatchPrefix) => {
            PathMatch::Prefix(pm.value.trim_end_matches('/').to_string())
        }
        Ok(pb::MatchType::MatchRegex) => PathMatch::Regex(regex(&path, &pm.value)?),
        Err(_) => return Err(invalid(&path, "unknown path match type")),
    };
    let matcher = RouteMatch {
        path: path_match,
        headers: m
            .headers
            .iter()
            .map(|h| {
                Ok((
                    header_name(&path, &h.name)?,
                    str_match(&path, h.r#type, &h.value)?,
                ))
            })
            .collect::<Result<_, _>>()?,
        query: m
            .query_params
            .iter()
            .map(|q| Ok((q.name.clone(), str_match(&path, q.r#type, &q.value)?)))
            .collect::<Result<_, _>>()?,
        method: if m.method.is_empty() {
            None
        } else {
            Some(
                Method::from_bytes(m.method.as_bytes())
                    .map_err(|_| invalid(&path, format!("bad method {:?}", m.method)))?,
            )
        },
    };
    let mut filters = Filters::default();
    for f in &r.filters {
        use pb::filter::Kind;
        match &f.kind {
            Some(Kind::RequestHeaderModifier(h)) => {
                filters.request_headers = Some(header_mod(&path, h)?)
            }
            Some(Kind::ResponseHeaderModifier(h)) => {
                filters.response_headers = Some(header_mod(&path, h)?)
            }
            Some(Kind::UrlRewrite(u)) => {
                if !u.hostname.is_empty() {
                    filters.rewrite_host = Some(header_value(&path, &u.hostname)?);
                }
                filters.rewrite_path = u.path.as_ref().map(|p| match p {
                    pb::url_rewrite::Path::ReplaceFullPath(v) => PathRewrite::Full(v.clone()),
                    pb::url_rewrite::Path::ReplacePrefixMatch(v) => PathRewrite::Prefix(v.clone()),
                });
            }
            Some(Kind::RequestRedirect(rd)) => {
                let status = u16::try_from(rd.status_code)
                    .ok()
                    .and_then(|s| http::StatusCode::from_u16(s).ok())
                    .filter(|s| s.is_redirection())
                    .ok_or_else(|| {
                        invalid(&path, format!("bad redirect status {}", rd.status_code))
                    })?;
                filters.redirect = Some(Redirect {
                    scheme: Some(rd.scheme.clone()).filter(|s| !s.is_empty()),
                    hostname: Some(rd.hostname.clone()).filter(|s| !s.is_empty()),
                    path: rd.path.as_ref().map(|p| match p {
                        pb::request_redirect::Path::ReplaceFullPath(v) => {
                            PathRewrite::Full(v.clone())
                        }
                        pb::request_redirect::Path::ReplacePrefixMatch(v) => {
                            PathRewrite::Prefix(v.clone())
                        }
                    }),
                    port: u16::try_from(rd.port).ok().filter(|p| *p != 0),
                    status,
                });
            }
            Some(Kind::RequestMirror(mi)) => filters.mirrors.push(Mirror {
                cluster: lookup(&mi.cluster)?,
                percent: mi.percent.min(100),
            }),
            None => return Err(invalid(&path, "empty filter")),
        }
    }
    let mut total: u32 = 0;
    let mut backends = Vec::new();
    for b in &r.backends {
        if b.weight == 0 {
            continue;
        }
        total = total
            .checked_add(b.weight)
            .ok_or_else(|| invalid(&path, "weights overflow"))?;
        // An empty cluster is a backendRef the control plane refused (a cross-namespace reference without a grant).
        let cluster = match b.cluster.as_str() {
            "" => None,
            name => Some(lookup(name)?),
        };
        backends.push(WeightedCluster {
            cluster,
            cumulative: total,
        });
    }
    Ok(Route {
        name: Arc::from(r.name.as_str()),
        matcher,
        filters,
        backends,
        total_weight: total,
        timeout: (r.timeout_ms > 0).then(|| Duration::from_millis(r.timeout_ms)),
        wasm: plugin_list(&path, &r.wasm, plugins)?,
        policy: r.policy.as_ref().map(|p| PolicyRef {
            key: Arc::from(format!("route/{}", r.name)),
            policy: Arc::new(policy::policy(p)),
        }),
    })
}

fn listener(
    l: &pb::Listener,
    clusters: &HashMap<Arc<str>, Arc<Cluster>>,
    plugins: &Plugins,
) -> Result<Listener, InvalidSnapshot> {
    let port = u16::try_from(l.port).map_err(|_| {
        invalid(
            format!("listener {}", l.name),
            format!("bad port {}", l.port),
        )
    })?;
    let mut vhosts = VirtualHosts::default();
    for (i, vh) in l.virtual_hosts.iter().enumerate() {
        let routes = vh
            .routes
            .iter()
            .map(|r| route(r, clusters, plugins))
            .collect::<Result<Vec<_>, _>>()?;
        for d in &vh.domains {
            let d = d.to_ascii_lowercase();
            if d == "*" {
                vhosts.any = Some(i);
            } else if let Some(suffix) = d.strip_prefix('*') {
                vhosts.wildcards.push((suffix.to_string(), i));
            } else {
                vhosts.exact.insert(d, i);
            }
        }
        vhosts.hosts.push(VirtualHost {
            name: vh.name.clone(),
            routes,
        });
    }
    vhosts
        .wildcards
        .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
    Ok(Listener {
        name: Arc::from(l.name.as_str()),
        port,
        vhosts,
        hostname: Some(l.hostname.to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .map(Arc::from),
        tls: l
            .tls
            .as_ref()
            .map(|t| listener_tls(&l.name, t))
            .transpose()?,
    })
}

fn listener_tls(
    listener: &str,
    t: &pb::ListenerTls,
) -> Result<Arc<[ServingFiles]>, InvalidSnapshot> {
    let path = format!("listener {listener}: tls");
    if t.certificates.is_empty() {
        return Err(invalid(path, "no certificate to terminate TLS with"));
    }
    t.certificates
        .iter()
        .map(|c| {
            let (cert, key) = (
                std::path::PathBuf::from(&c.cert_file),
                std::path::PathBuf::from(&c.key_file),
            );
            if !cert.is_absolute() || !key.is_absolute() {
                return Err(invalid(
                    &path,
                    format!("certificate {}: expected absolute file paths", c.name),
                ));
            }
            Ok(ServingFiles {
                name: Arc::from(c.name.as_str()),
                cert,
                key,
            })
        })
        .collect()
}

impl Snapshot {
    /// `plugins`: the Wasm plugins built for this snapshot, by name (built by the applier before this).
    pub fn from_proto(
        version: u64,
        pb: pb::Snapshot,
        plugins: Plugins,
    ) -> Result<Snapshot, InvalidSnapshot> {
        let clusters: HashMap<Arc<str>, Arc<Cluster>> = pb
            .clusters
            .iter()
            .map(|c| Ok((Arc::from(c.name.as_str()), Arc::new(cluster(c)?))))
            .collect::<Result<_, InvalidSnapshot>>()?;
        let mut listeners = HashMap::new();
        for l in &pb.listeners {
            let built = listener(l, &clusters, &plugins)?;
            if listeners.insert(built.name.clone(), built).is_some() {
                return Err(invalid(
                    format!("listener {}", l.name),
                    "duplicate listener name",
                ));
            }
        }
        let inbound_wasm = plugin_list("inbound", &pb.inbound_wasm, &plugins)?;
        let inbound_limit = pb.inbound_rate_limit.as_ref().map(|rl| {
            let p = pb::Policy {
                rate_limit: Some(rl.clone()),
                ..Default::default()
            };
            PolicyRef {
                key: Arc::from("inbound"),
                policy: Arc::new(policy::policy(&p)),
            }
        });
        let mesh_keys = if pb.mesh_key.is_empty() {
            Vec::new()
        } else {
            vec![bytes::Bytes::copy_from_slice(&pb.mesh_key)]
        };
        let trust_domain = match pb.trust_domain.as_str() {
            "" => None,
            td => Some(
                meshwork_identity::TrustDomain::new(td)
                    .map_err(|e| invalid("trust_domain", format!("{td:?}: {e}")))?,
            ),
        };
        let inbound_mtls = match pb::MtlsMode::try_from(pb.inbound_mtls) {
            Ok(pb::MtlsMode::MtlsPermissive) => MtlsMode::Permissive,
            Ok(pb::MtlsMode::MtlsStrict) => MtlsMode::Strict,
            Ok(pb::MtlsMode::MtlsDisabled) => MtlsMode::Disabled,
            Err(_) => {
                return Err(invalid(
                    "inbound_mtls",
                    format!("unknown mode {}", pb.inbound_mtls),
                ))
            }
        };
        let authorization = authz::policies(&pb.authorization)?;
        let access_log = pb.access_log.as_ref().map(access_log).transpose()?;
        let mesh_tracing = pb.tracing.as_ref().map(tracing).transpose()?;
        Ok(Snapshot {
            version,
            authorization,
            listeners,
            clusters,
            inbound_wasm,
            inbound_limit,
            mesh_keys,
            trust_domain,
            inbound_mtls,
            plugins,
            access_log,
            mesh_tracing,
            tracing: None,
            source: pb,
        })
    }
}

/// The Mesh's tracing settings: an http(s) collector URL, a known protocol, a share, known propagators, sane
/// resource attributes (the control plane checked them; a proxy does not take them on trust).
fn tracing(pb: &pb::Tracing) -> Result<MeshTracing, InvalidSnapshot> {
    let endpoint = Some(pb.endpoint.clone()).filter(|e| !e.is_empty());
    if let Some(e) = &endpoint {
        let ok = e
            .parse::<http::Uri>()
            .is_ok_and(|u| u.scheme_str() == Some("http") && u.host().is_some());
        if !ok {
            return Err(invalid(
                "tracing.endpoint",
                format!("expected an http:// URL (the exporter has no TLS yet), got {e:?}"),
            ));
        }
    }
    let protocol = match pb::TracingProtocol::try_from(pb.protocol) {
        Ok(pb::TracingProtocol::Unset) => None,
        Ok(pb::TracingProtocol::Grpc) => Some(TraceProtocol::Grpc),
        Ok(pb::TracingProtocol::HttpProtobuf) => Some(TraceProtocol::HttpProtobuf),
        Err(_) => {
            return Err(invalid(
                "tracing.protocol",
                format!("unknown protocol {}", pb.protocol),
            ))
        }
    };
    if pb.sampling_ppm.is_some_and(|s| s > 1_000_000) {
        return Err(invalid(
            "tracing.sampling_ppm",
            format!("expected at most 1000000, got {:?}", pb.sampling_ppm),
        ));
    }
    let propagators = match pb.propagators.is_empty() {
        true => None,
        false => Some(
            Propagators::parse(pb.propagators.iter().map(String::as_str))
                .map_err(|e| invalid("tracing.propagators", e))?,
        ),
    };
    if pb.resource_attributes.len() > 64
        || pb
            .resource_attributes
            .iter()
            .any(|a| a.key.is_empty() || a.key.len() > 256 || a.value.len() > 256)
    {
        return Err(invalid(
            "tracing.resource_attributes",
            "expected at most 64 attributes with keys of 1 to 256 bytes and values of at most 256"
                .to_string(),
        ));
    }
    Ok(MeshTracing {
        enabled: pb.enabled,
        endpoint,
        protocol,
        sampling_ppm: pb.sampling_ppm,
        propagators,
        resource: pb
            .resource_attributes
            .iter()
            .map(|a| (a.key.clone(), a.value.clone()))
            .collect(),
    })
}

/// The Mesh's access log settings: a known format, a path the proxy can write to by name, a share of requests.
fn access_log(pb: &pb::AccessLog) -> Result<Arc<AccessLogConfig>, InvalidSnapshot> {
    let json = match pb::AccessLogFormat::try_from(pb.format) {
        Ok(pb::AccessLogFormat::AccessLogJson) => true,
        Ok(pb::AccessLogFormat::AccessLogText) => false,
        Err(_) => {
            return Err(invalid(
                "access_log.format",
                format!("unknown format {}", pb.format),
            ))
        }
    };
    let path = pb.path.as_str();
    if !matches!(path, "stdout" | "stderr") && !std::path::Path::new(path).is_absolute() {
        return Err(invalid(
            "access_log.path",
            format!("expected stdout, stderr or an absolute file path, got {path:?}"),
        ));
    }
    if pb.sampling_ppm > 1_000_000 {
        return Err(invalid(
            "access_log.sampling_ppm",
            format!("expected at most 1000000, got {}", pb.sampling_ppm),
        ));
    }
    Ok(Arc::new(AccessLogConfig {
        json,
        path: Arc::from(path),
        sampling_ppm: pb.sampling_ppm,
    }))
}
