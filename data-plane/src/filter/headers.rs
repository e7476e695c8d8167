//! Gateway API route filters: header modifiers, URL rewrite, redirect. Hop-by-hop handling and forwarding headers
//! (x-forwarded-for, x-request-id) live here too: they are what every hop does to headers.

use std::net::IpAddr;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;

use crate::config::snapshot::{HeaderMod, PathMatch, PathRewrite, Redirect};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTP: HeaderValue = HeaderValue::from_static("http");
static HTTPS: HeaderValue = HeaderValue::from_static("https");

/// Removes hop-by-hop headers (RFC 9110 7.6.1), including those named by `Connection`. `TE: trailers` survives on
/// requests: gRPC needs it end to end.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, request: bool) {
    // Most messages carry none: one pass over their few names instead of a removal (a hash lookup) per name.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // Every `Connection` line counts (a message may carry several), not just the first.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|list| list.split(','))
        .map(str::trim)
        .filter(|n| !n.eq_ignore_ascii_case("te"))
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    headers.remove(header::CONNECTION);
    for name in named {
        headers.remove(name);
    }
    for name in [&KEEP_ALIVE, &PROXY_CONNECTION] {
        headers.remove(name);
    }
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::UPGRADE);
    headers.remove(header::TRAILER);
    headers.remove(header::PROXY_AUTHORIZATION);
    if request {
        let keep_te = headers
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        if !keep_te {
            headers.remove(header::TE);
        }
    } else {
        headers.remove(header::TE);
        headers.remove(header::PROXY_AUTHENTICATE);
    }
}

/// Removes `names`. One pass over the message's (usually few) names comes first, so that the usual case, none of
/// them present, costs no hash lookup per name (`HeaderMap::remove` hashes its argument even when absent).
pub fn remove_all(headers: &mut HeaderMap, names: &[&HeaderName]) {
    if headers.keys().any(|k| names.contains(&k)) {
        for name in names {
            headers.remove(*name);
        }
    }
}

/// Appends the peer to x-forwarded-for, sets x-forwarded-proto, and gives the request an x-request-id if it has
/// none (kept as is across hops, so every proxy and app logs the same id). `edge_tls`: at a gateway (the edge,
/// where a client's claim is worth nothing) x-forwarded-proto is the scheme the client really spoke, whatever it
/// sent (`Some(true)`: https, `Some(false)`: http); between mesh hops (`None`) the first proxy's value is kept and
/// only a missing one is set to http.
pub fn forwarding_headers(headers: &mut HeaderMap, peer: IpAddr, edge_tls: Option<bool>) {
    let mut ip_buf = [0u8; 48];
    let ip = format_ip(peer, &mut ip_buf);
    let xff = match headers.get(&X_FORWARDED_FOR) {
        Some(prev) => {
            let mut v = BytesMut::with_capacity(prev.len() + 2 + ip.len());
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(ip);
            HeaderValue::from_maybe_shared(v.freeze())
        }
        None => HeaderValue::from_bytes(ip),
    };
    if let Ok(xff) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), xff);
    }
    match edge_tls {
        Some(true) => {
            headers.insert(X_FORWARDED_PROTO.clone(), HTTPS.clone());
        }
        Some(false) => {
            headers.insert(X_FORWARDED_PROTO.clone(), HTTP.clone());
        }
        None if !headers.contains_key(&X_FORWARDED_PROTO) => {
            headers.insert(X_FORWARDED_PROTO.clone(), HTTP.clone());
        }
        None => {}
    }
    if !headers.contains_key(&X_REQUEST_ID) {
        headers.insert(X_REQUEST_ID.clone(), request_id());
    }
}

/// The names `strip_hop_by_hop` removes, or (`connection`) that name more to remove.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
        &header::TRAILER,
        &header::PROXY_AUTHORIZATION,
        &header::PROXY_AUTHENTICATE,
        &header::TE,
    ]
    .contains(&name)
}

fn format_ip(ip: IpAddr, buf: &mut [u8; 48]) -> &[u8] {
    use std::io::Write;
    let mut cur = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cur, "{ip}");
    let n = cur.position() as usize;
    &buf[..n]
}

/// A random UUID (version 4) as a header value.
pub fn request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes = fastrand::u128(..).to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut out = [0u8; 36];
    let mut j = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[j] = b'-';
            j += 1;
        }
        out[j] = HEX[usize::from(b >> 4)];
        out[j + 1] = HEX[usize::from(b & 0xf)];
        j += 2;
    }
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

pub fn apply_header_mod(headers: &mut HeaderMap, m: &HeaderMod) {
    for (name, value) in &m.set {
        headers.insert(name.clone(), value.clone());
    }
    for (name, value) in &m.add {
        headers.append(name.clone(), value.clone());
    }
    for name in &m.remove {
        headers.remove(name);
    }
}

/// Rewrites `path` per a Gateway API path modifier; `matched` is the route's path match (for prefix replacement).
pub fn rewrite_path(path: &str, rewrite: &PathRewrite, matched: &PathMatch) -> String {
    match rewrite {
        PathRewrite::Full(p) => p.clone(),
        PathRewrite::Prefix(replacement) => {
            let prefix_len = match matched {
                PathMatch::Prefix(p) => p.len(),
                _ => 0,
            };
            let rest = &path[prefix_len.min(path.len())..];
            let base = replacement.trim_end_matches('/');
            if rest.is_empty() {
                if base.is_empty() {
                    "/".to_string()
                } else {
                    base.to_string()
                }
            } else {
                format!("{base}{rest}")
            }
        }
    }
}

/// New path-and-query after a rewrite, keeping the query string.
pub fn with_path(original: Option<&PathAndQuery>, new_path: &str) -> Option<PathAndQuery> {
    let pq = match original.and_then(PathAndQuery::query) {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path.to_string(),
    };
    pq.parse().ok()
}

/// The Location of a RequestRedirect.
pub fn redirect_location(
    r: &Redirect,
    host: &str,
    port: Option<u16>,
    pq: Option<&PathAndQuery>,
    matched: &PathMatch,
) -> String {
    let scheme = r.scheme.as_deref().unwrap_or("http");
    let host = r.hostname.as_deref().unwrap_or(host);
    // Gateway API: an explicit port wins; a scheme change drops the old port (the new scheme's default applies).
    let port = r.port.or(if r.scheme.is_some() { None } else { port });
    let port = port.filter(|p| !(scheme == "http" && *p == 80 || scheme == "https" && *p == 443));
    let path = pq.map_or("/", PathAndQuery::path);
    let path = match &r.path {
        Some(rw) => rewrite_path(path, rw, matched),
        None => path.to_string(),
    };
    let query = pq
        .and_then(PathAndQuery::query)
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    match port {
        Some(p) => format!("{scheme}://{host}:{p}{path}{query}"),
        None => format!("{scheme}://{host}{path}{query}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_rewrites() {
        let m = PathMatch::Prefix("/v1".into());
        let rw = PathRewrite::Prefix("/v2".into());
        assert_eq!(rewrite_path("/v1/users", &rw, &m), "/v2/users");
        assert_eq!(rewrite_path("/v1", &rw, &m), "/v2");
        assert_eq!(
            rewrite_path("/v1/a", &PathRewrite::Prefix("/".into()), &m),
            "/a"
        );
        assert_eq!(
            rewrite_path("/v1", &PathRewrite::Prefix("/".into()), &m),
            "/"
        );
        assert_eq!(
            rewrite_path("/x", &PathRewrite::Full("/y".into()), &m),
            "/y"
        );
    }

    #[test]
    fn remove_all_removes_every_name_when_one_is_present() {
        let (a, b) = (
            HeaderName::from_static("x-a"),
            HeaderName::from_static("x-b"),
        );
        let mut h = HeaderMap::new();
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_all(&mut h, &[&a, &b]);
        assert_eq!(h.len(), 1, "nothing named is present: nothing goes");
        h.insert(&b, HeaderValue::from_static("1"));
        h.append(&b, HeaderValue::from_static("2"));
        h.insert(&a, HeaderValue::from_static("1"));
        remove_all(&mut h, &[&a, &b]);
        assert!(!h.contains_key(&a) && !h.contains_key(&b), "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn hop_by_hop_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("x-second-line"),
        );
        h.insert("x-second-line", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, true);
        assert!(
            h.get("x-second-line").is_none(),
            "a second Connection line is honoured too"
        );
        assert!(
            h.get("x-secret").is_none()
                && h.get("keep-alive").is_none()
                && h.get(header::CONNECTION).is_none()
        );
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        assert!(h.get("x-kept").is_some());
    }

    #[test]
    fn forwarding() {
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        forwarding_headers(&mut h, "127.0.0.1".parse().unwrap(), None);
        assert_eq!(h.get(&X_FORWARDED_FOR).unwrap(), "10.0.0.1, 127.0.0.1");
        let id = h.get(&X_REQUEST_ID).unwrap().to_str().unwrap().to_string();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        forwarding_headers(&mut h, "127.0.0.2".parse().unwrap(), None);
        assert_eq!(
            h.get(&X_REQUEST_ID).unwrap().to_str().unwrap(),
            id,
            "an existing id is kept"
        );
    }

    #[test]
    fn the_edge_says_the_real_scheme_and_mesh_hops_keep_it() {
        let proto = |sent: Option<&'static str>, edge_tls: Option<bool>| {
            let mut h = HeaderMap::new();
            if let Some(v) = sent {
                h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(v));
            }
            forwarding_headers(&mut h, "127.0.0.1".parse().unwrap(), edge_tls);
            h.get(&X_FORWARDED_PROTO)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string()
        };
        // A plaintext client claiming https at a gateway is corrected; a TLS one is https whatever it said.
        assert_eq!(proto(Some("https"), Some(false)), "http");
        assert_eq!(proto(Some("http"), Some(true)), "https");
        assert_eq!(proto(None, Some(true)), "https");
        // Between mesh hops the gateway's value stays.
        assert_eq!(proto(Some("https"), None), "https");
        assert_eq!(proto(None, None), "http");
    }

    #[test]
    fn redirects() {
        let r = Redirect {
            scheme: Some("https".into()),
            hostname: None,
            path: None,
            port: None,
            status: http::StatusCode::FOUND,
        };
        let pq: PathAndQuery = "/a?b=1".parse().unwrap();
        assert_eq!(
            redirect_location(
                &r,
                "example.com",
                Some(8080),
                Some(&pq),
                &PathMatch::Prefix(String::new())
            ),
            "https://example.com/a?b=1"
        );
        let r = Redirect {
            scheme: None,
            hostname: Some("new.example".into()),
            path: Some(PathRewrite::Full("/z".into())),
            port: None,
            status: http::StatusCode::MOVED_PERMANENTLY,
        };
        assert_eq!(
            redirect_location(
                &r,
                "example.com",
                Some(8080),
                Some(&pq),
                &PathMatch::Prefix(String::new())
            ),
            "http://new.example:8080/z?b=1"
        );
    }
}
