//! What a filter sees of one HTTP stream: header maps (with pseudo-headers, as Envoy presents them), properties,
//! and the local reply it may send. Built from the request once per filter chain and written back only if changed.

use std::net::SocketAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};

#[derive(Debug, Clone)]
pub struct LocalResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub details: String,
}

#[derive(Debug, Default)]
pub struct StreamData {
    pub context_id: u32,
    pub request_headers: Vec<(String, String)>,
    pub request_dirty: bool,
    pub response_headers: Vec<(String, String)>,
    pub response_dirty: bool,
    pub response_code: Option<u16>,
    pub source: Option<SocketAddr>,
    pub route_name: Option<std::sync::Arc<str>>,
    pub cluster_name: Option<std::sync::Arc<str>>,
    pub protocol: &'static str,
    /// Properties the filter set with `proxy_set_property`.
    pub custom: Vec<(String, Vec<u8>)>,
    pub local_response: Option<LocalResponse>,
    /// During `proxy_on_request_body`: the body the filter sees (and may rewrite with `proxy_set_buffer_bytes`).
    pub request_body: Option<Vec<u8>>,
    /// During `proxy_on_response_body`: likewise for the response.
    pub response_body: Option<Vec<u8>>,
    /// Trailers, once they arrived (and the filter may edit them in its trailers callback).
    pub request_trailers: Option<Vec<(String, String)>>,
    pub response_trailers: Option<Vec<(String, String)>>,
    pub trailers_dirty: bool,
    /// Set by `proxy_continue_stream` (or the 0.1.0 `proxy_continue_request/response`) on a paused stream.
    pub resumed: bool,
}

pub fn header_pairs(headers: &HeaderMap, pseudo: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(pseudo.len() + headers.len());
    for (k, v) in pseudo {
        out.push(((*k).to_string(), (*v).to_string()));
    }
    for (k, v) in headers {
        out.push((
            k.as_str().to_string(),
            String::from_utf8_lossy(v.as_bytes()).into_owned(),
        ));
    }
    out
}

/// Regular headers back into a map (pseudo-headers skipped; invalid names or values dropped with a log line).
pub fn to_header_map(pairs: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(pairs.len());
    for (k, v) in pairs {
        if k.starts_with(':') {
            continue;
        }
        match (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            (Ok(name), Ok(value)) => {
                map.append(name, value);
            }
            _ => tracing::warn!(header = %k, "wasm filter set an invalid header; dropped"),
        }
    }
    map
}

pub fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
}
