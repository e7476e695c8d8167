//! Stage 3: host -> virtual host -> first matching route (routes arrive in precedence order).

#[cfg(test)]
mod tests;

use http::request::Parts;

use crate::config::snapshot::{PathMatch, Route, RouteMatch, VirtualHost, VirtualHosts};

/// The host a request is for, without port: the absolute-form / HTTP/2 authority, else the Host header.
pub fn request_host(parts: &Parts) -> Option<&str> {
    let raw = match parts.uri.authority() {
        Some(a) => a.as_str(),
        None => parts.headers.get(http::header::HOST)?.to_str().ok()?,
    };
    Some(strip_port(raw))
}

fn strip_port(authority: &str) -> &str {
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or(host, |(ip6, _)| ip6);
    }
    host.split_once(':').map_or(host, |(h, _)| h)
}

pub fn find_vhost<'a>(vhosts: &'a VirtualHosts, host: &str) -> Option<&'a VirtualHost> {
    let lowered;
    let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        lowered = host.to_ascii_lowercase();
        lowered.as_str()
    } else {
        host
    };
    let exact = if vhosts.exact.is_empty() {
        None
    } else {
        vhosts.exact.get(host).copied()
    };
    let idx = exact
        .or_else(|| {
            vhosts
                .wildcards
                .iter()
                .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
                .map(|(_, i)| *i)
        })
        .or(vhosts.any)?;
    vhosts.hosts.get(idx)
}

pub fn find_route<'a>(vh: &'a VirtualHost, parts: &Parts) -> Option<&'a Route> {
    vh.routes.iter().find(|r| matches(&r.matcher, parts))
}

pub fn path_matches(m: &PathMatch, path: &str) -> bool {
    match m {
        PathMatch::Exact(p) => p == path,
        // Stored without a trailing slash: "" matches everything, "/foo" matches "/foo" and "/foo/..." only.
        PathMatch::Prefix(p) => {
            path.starts_with(p.as_str())
                && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
        }
        PathMatch::Regex(r) => r.is_match(path),
    }
}

pub fn matches(m: &RouteMatch, parts: &Parts) -> bool {
    if m.method
        .as_ref()
        .is_some_and(|method| method != parts.method)
    {
        return false;
    }
    if !path_matches(&m.path, parts.uri.path()) {
        return false;
    }
    let headers_ok = m.headers.iter().all(|(name, want)| {
        parts
            .headers
            .get_all(name)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| want.matches(v)))
    });
    if !headers_ok {
        return false;
    }
    if m.query.is_empty() {
        return true;
    }
    let query = parts.uri.query().unwrap_or("");
    m.query.iter().all(|(name, want)| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .is_some_and(|(_, v)| want.matches(&v))
    })
}
