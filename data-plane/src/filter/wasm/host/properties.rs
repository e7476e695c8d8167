//! Properties: `proxy_get_property` and `proxy_set_property`. Paths arrive as NUL-separated segments and are
//! looked up joined with dots; values are encoded as Envoy encodes them. Properties a filter sets live on the
//! stream and shadow the built-in ones for that stream only.

use wasmtime::Linker;

use super::{st, HostState, C, R};
use crate::filter::wasm::abi::status;
use crate::filter::wasm::memory::{read, return_bytes};
use crate::filter::wasm::stream::HeaderAccess;

pub(super) fn link(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.func_wrap("env", "proxy_get_property", get_property)?;
    l.func_wrap("env", "proxy_set_property", set_property)?;
    Ok(())
}

fn get_property(mut c: C<'_>, pp: i32, pn: i32, ptr_out: i32, len_out: i32) -> R {
    let raw = ok_or_status!(read(&mut c, pp, pn));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let segments: Vec<&str> = text.split('\0').filter(|s| !s.is_empty()).collect();
    match property(&c, &segments) {
        Some(v) => Ok(st(return_bytes(&mut c, &v, ptr_out, len_out)?)),
        None => Ok(status::NOT_FOUND),
    }
}

/// Only during a stream callback (NOT_FOUND otherwise): there is nowhere else to keep the value.
fn set_property(mut c: C<'_>, pp: i32, pn: i32, vp: i32, vn: i32) -> R {
    let (path, value) = match (read(&mut c, pp, pn), read(&mut c, vp, vn)) {
        (Ok(p), Ok(v)) => (p, v),
        (Err(s), _) | (_, Err(s)) => return Ok(s),
    };
    let key = String::from_utf8_lossy(&path)
        .split('\0')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(".");
    match c.data_mut().stream.as_mut() {
        Some(s) => {
            s.custom.retain(|(k, _)| *k != key);
            s.custom.push((key, value));
            Ok(status::OK)
        }
        None => Ok(status::NOT_FOUND),
    }
}

/// A property's bytes, as Envoy encodes them: strings raw, integers 8-byte little-endian.
fn property(c: &C<'_>, path: &[&str]) -> Option<Vec<u8>> {
    let d = c.data();
    let meta = &d.meta;
    let joined = path.join(".");
    if let Some(s) = &d.stream {
        if let Some((_, v)) = s.custom.iter().find(|(k, _)| *k == joined) {
            return Some(v.clone());
        }
    }
    let text = |s: &str| Some(s.as_bytes().to_vec());
    let int = |v: i64| Some(v.to_le_bytes().to_vec());
    match joined.as_str() {
        "plugin_name" => return text(&meta.name),
        "plugin_root_id" => return text(&meta.root_id),
        "plugin_vm_id" => return text(""),
        "node.id" => return text(&meta.node_id),
        _ => {}
    }
    let s = d.stream.as_ref()?;
    let req = |k: &str| s.request_headers.value(k).map(String::into_bytes);
    match joined.as_str() {
        "request.path" => req(":path"),
        "request.url_path" => {
            req(":path").map(|p| p.split(|b| *b == b'?').next().unwrap_or_default().to_vec())
        }
        "request.host" => req(":authority"),
        "request.method" => req(":method"),
        "request.scheme" => req(":scheme"),
        "request.id" => req("x-request-id"),
        "request.protocol" => text(s.protocol),
        "request.useragent" => req("user-agent"),
        "request.referer" => req("referer"),
        "request.headers" => Some(s.request_headers.serialize()),
        "response.code" => s.response_code.and_then(|code| int(i64::from(code))),
        "response.headers" if s.response_code.is_some() => Some(s.response_headers.serialize()),
        "source.address" => s.source.map(|a| a.to_string().into_bytes()),
        "source.port" => s.source.and_then(|a| int(i64::from(a.port()))),
        "connection.mtls" => Some(vec![u8::from(s.peer_tls.is_some())]),
        // The mTLS peer (Envoy's connection attributes; `source.principal` / `destination.principal` as Istio's
        // filters name them): NOT_FOUND on a plaintext connection.
        "source.principal" | "connection.uri_san_peer_certificate" => {
            s.peer_tls.as_ref().and_then(|p| text(p.id.as_str()))
        }
        "destination.principal" | "connection.uri_san_local_certificate" => {
            s.peer_tls.as_ref().and_then(|p| text(p.local.as_str()))
        }
        "connection.tls_version" => s.peer_tls.as_ref().and_then(|_| text("TLSv1.3")),
        "route_name" | "xds.route_name" => s.route_name.as_deref().and_then(text),
        "cluster_name" | "xds.cluster_name" => s.cluster_name.as_deref().and_then(text),
        _ => None,
    }
}
