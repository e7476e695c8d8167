//! The Mesh's `spec.tracing` block: where and how every proxy exports OpenTelemetry spans. Each field left out
//! falls back to the proxy's own OTEL_* environment variables, so the model keeps "left out" apart from any value.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;

use crate::model::read::{index, join, Obj, Reader};
use crate::source::yaml::{Kind, Node};

/// The fields a `tracing` block may have.
const FIELDS: [&str; 6] = [
    "enabled",
    "endpoint",
    "protocol",
    "sampling",
    "propagators",
    "resourceAttributes",
];
/// At most this many `resourceAttributes`.
pub const MAX_RESOURCE_ATTRIBUTES: usize = 64;
/// The longest resource attribute name, and the longest value, in bytes.
pub const MAX_ATTRIBUTE_BYTES: usize = 256;

/// `spec.tracing`. Every optional field left out (None, or empty) is the proxy environment's to decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracing {
    /// `enabled` (default true): false turns tracing off for every proxy, whatever its environment says (the other
    /// fields are still checked, but not sent).
    pub enabled: bool,
    /// `endpoint`: the OTLP collector, an absolute `http://` URL (OTEL_EXPORTER_OTLP_*ENDPOINT).
    pub endpoint: Option<String>,
    /// `protocol`: `grpc` or `http/protobuf` (OTEL_EXPORTER_OTLP_PROTOCOL).
    pub protocol: Option<TracingProtocol>,
    /// `sampling`: the share of new traces sampled, 0 to 1, in parts per million (OTEL_TRACES_SAMPLER_ARG).
    pub sampling_ppm: Option<u32>,
    /// `propagators`, in order; empty: left out (OTEL_PROPAGATORS). A list in the manifest has at least one.
    pub propagators: Vec<Propagator>,
    /// `resourceAttributes`, by name (OTEL_RESOURCE_ATTRIBUTES); scalar values kept as written.
    pub resource_attributes: BTreeMap<String, String>,
}

/// How spans are sent to the collector (OTLP/HTTP with JSON is not supported).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TracingProtocol {
    Grpc,
    HttpProtobuf,
}

impl TracingProtocol {
    pub const NAMES: [&'static str; 2] = ["grpc", "http/protobuf"];

    pub fn as_str(self) -> &'static str {
        match self {
            TracingProtocol::Grpc => "grpc",
            TracingProtocol::HttpProtobuf => "http/protobuf",
        }
    }

    fn from_name(name: &str) -> Option<TracingProtocol> {
        match name {
            "grpc" => Some(TracingProtocol::Grpc),
            "http/protobuf" => Some(TracingProtocol::HttpProtobuf),
            _ => None,
        }
    }
}

/// A trace context format, read on the way in and written on the way out (OTEL_PROPAGATORS names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagator {
    /// W3C `traceparent`/`tracestate`.
    TraceContext,
    /// B3 in one `b3` header.
    B3,
    /// B3 in `X-B3-*` headers.
    B3Multi,
}

impl Propagator {
    pub const NAMES: [&'static str; 3] = ["tracecontext", "b3", "b3multi"];

    pub fn as_str(self) -> &'static str {
        match self {
            Propagator::TraceContext => "tracecontext",
            Propagator::B3 => "b3",
            Propagator::B3Multi => "b3multi",
        }
    }

    fn from_name(name: &str) -> Option<Propagator> {
        match name {
            "tracecontext" => Some(Propagator::TraceContext),
            "b3" => Some(Propagator::B3),
            "b3multi" => Some(Propagator::B3Multi),
            _ => None,
        }
    }
}

/// The Mesh's `tracing` block: `{enabled, endpoint: http(s)://host[:port][/path], protocol: grpc | http/protobuf,
/// sampling: 0..1, propagators: [tracecontext | b3 | b3multi], resourceAttributes: {name: value}}`. Every field
/// is read before the first error ends it, so one pass reports them all.
pub(super) fn parse_tracing(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<Tracing> {
    let obj = r.obj(node, path, &FIELDS)?;
    let enabled = super::enabled(r, &obj);
    let endpoint = endpoint(r, &obj);
    let protocol = protocol(r, &obj);
    let sampling_ppm = super::share(r, &obj, "sampling", "new traces");
    let propagators = propagators(r, &obj);
    let resource_attributes = resource_attributes(r, &obj);
    Some(Tracing {
        enabled: enabled?,
        endpoint: endpoint?,
        protocol: protocol?,
        sampling_ppm: sampling_ppm?,
        propagators: propagators?,
        resource_attributes: resource_attributes?,
    })
}

/// `endpoint`. `Some(None)`: left out; None: invalid (reported).
fn endpoint(r: &mut Reader<'_>, obj: &Obj<'_>) -> Option<Option<String>> {
    let Some(n) = obj.get("endpoint") else {
        return Some(None);
    };
    let field = obj.field("endpoint");
    let url = r.string(n, &field)?;
    if url.starts_with("https://") {
        r.error(
            n.line,
            field,
            format!("an https:// collector is not supported yet (the proxies' exporter has no TLS): use http://, got {url:?}"),
        );
        return None;
    }
    if valid_endpoint(&url) {
        return Some(Some(url));
    }
    r.error(
        n.line,
        field,
        format!(
            "expected an absolute http:// URL with a host, such as http://127.0.0.1:4317 (grpc) or \
             http://collector:4318/v1/traces (http/protobuf), got {url:?}"
        ),
    );
    None
}

/// An absolute `http://` URL: a host (a name, an IPv4 address or a bracketed IPv6 address), an
/// optional port from 1 to 65535, then any path; no user info, no whitespace.
fn valid_endpoint(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    match split_port(authority) {
        Some((host, port)) => valid_host(host) && port.is_none_or(valid_port),
        None => false,
    }
}

/// `host[:port]` -> (host, port); a bracketed IPv6 host keeps its brackets. None: something other than a port
/// after the `]` of an IPv6 host.
fn split_port(authority: &str) -> Option<(&str, Option<&str>)> {
    let host_end = match authority.starts_with('[') {
        true => authority.find(']')? + 1,
        false => authority.rfind(':').unwrap_or(authority.len()),
    };
    let (host, rest) = authority.split_at(host_end);
    match rest {
        "" => Some((host, None)),
        _ => rest.strip_prefix(':').map(|port| (host, Some(port))),
    }
}

fn valid_host(host: &str) -> bool {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        }
    }
}

fn valid_port(port: &str) -> bool {
    !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|p| p != 0)
}

/// `protocol`. `Some(None)`: left out; None: invalid (reported).
fn protocol(r: &mut Reader<'_>, obj: &Obj<'_>) -> Option<Option<TracingProtocol>> {
    let Some(n) = obj.get("protocol") else {
        return Some(None);
    };
    let field = obj.field("protocol");
    let name = r.string(n, &field)?;
    if let Some(p) = TracingProtocol::from_name(&name) {
        return Some(Some(p));
    }
    let why = match name.as_str() {
        "http/json" => " (only grpc and http/protobuf are supported)",
        _ => "",
    };
    r.error(
        n.line,
        field,
        format!("expected grpc or http/protobuf, got {name:?}{why}"),
    );
    None
}

/// `propagators`: at least one, each once. Empty: left out; None: invalid (reported).
fn propagators(r: &mut Reader<'_>, obj: &Obj<'_>) -> Option<Vec<Propagator>> {
    let Some(n) = obj.get("propagators") else {
        return Some(Vec::new());
    };
    let field = obj.field("propagators");
    let items = r.list(n, &field)?;
    if items.is_empty() {
        r.error(
            n.line,
            field,
            format!(
                "expected at least one of {}, got an empty list",
                Propagator::NAMES.join(", ")
            ),
        );
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let path = index(&field, i);
        let name = r.choice(item, &path, &Propagator::NAMES);
        match name.as_deref().and_then(Propagator::from_name) {
            Some(p) if out.contains(&p) => {
                let message = format!("expected each propagator once, got {:?} again", p.as_str());
                r.error(item.line, path, message);
                ok = false;
            }
            Some(p) => out.push(p),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// `resourceAttributes`: at most [`MAX_RESOURCE_ATTRIBUTES`] names, each once. Empty: left out; None: invalid
/// (reported).
fn resource_attributes(r: &mut Reader<'_>, obj: &Obj<'_>) -> Option<BTreeMap<String, String>> {
    let Some(n) = obj.get("resourceAttributes") else {
        return Some(BTreeMap::new());
    };
    let field = obj.field("resourceAttributes");
    let Kind::Map(entries) = &n.kind else {
        let message = format!(
            "expected a mapping of attribute names to values, got {}",
            n.describe()
        );
        r.error(n.line, field, message);
        return None;
    };
    if entries.len() > MAX_RESOURCE_ATTRIBUTES {
        let message = format!(
            "expected at most {MAX_RESOURCE_ATTRIBUTES} attributes, got {}",
            entries.len()
        );
        r.error(n.line, field, message);
        return None;
    }
    let mut out = BTreeMap::new();
    let mut ok = true;
    for (k, v) in entries {
        match attribute(r, &field, k, v) {
            Some((name, _)) if out.contains_key(&name) => {
                r.error(k.line, join(&field, &name), "duplicate key");
                ok = false;
            }
            Some((name, value)) => {
                out.insert(name, value);
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// One resource attribute: a non-empty name and a scalar value (a string, number or boolean, kept as written),
/// each at most [`MAX_ATTRIBUTE_BYTES`]. None: invalid (reported).
fn attribute(r: &mut Reader<'_>, path: &str, k: &Node, v: &Node) -> Option<(String, String)> {
    let name = match k.as_scalar() {
        Some("") => Err("expected a non-empty attribute name, got \"\"".to_string()),
        Some(name) if name.len() > MAX_ATTRIBUTE_BYTES => Err(format!(
            "expected attribute names of at most {MAX_ATTRIBUTE_BYTES} bytes, got one of {} bytes",
            name.len()
        )),
        Some(name) => Ok(name),
        None => Err(format!("expected string keys, got {}", k.describe())),
    };
    let name = name
        .map_err(|message| r.error(k.line, path, message))
        .ok()?;
    let field = join(path, name);
    let value = match v.as_scalar() {
        Some(value) if value.len() > MAX_ATTRIBUTE_BYTES => Err(format!(
            "expected a value of at most {MAX_ATTRIBUTE_BYTES} bytes, got {} bytes",
            value.len()
        )),
        Some(value) => Ok(value),
        None => Err(format!(
            "expected a string, number or boolean, got {}",
            v.describe()
        )),
    };
    let value = value
        .map_err(|message| r.error(v.line, field, message))
        .ok()?;
    Some((name.to_string(), value.to_string()))
}

#[cfg(test)]
mod tests;
