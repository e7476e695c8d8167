//! What a filter sees of one HTTP stream: header maps (with pseudo-headers, as Envoy presents them), properties,
//! and the local reply it may send. The request's and response's headers are the proxy's own `HeaderMap`, moved
//! in for the chain and back out after it: filters read and edit it in place (no conversion to string pairs and
//! back per request); only the pseudo-headers are kept as strings.

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
    pub request_headers: Headers,
    pub request_dirty: bool,
    pub response_headers: Headers,
    pub response_dirty: bool,
    pub response_code: Option<u16>,
    pub source: Option<SocketAddr>,
    /// The caller an mTLS handshake proved on this stream's connection (sidecar inbound listeners).
    pub peer_tls: Option<std::sync::Arc<crate::tls::VerifiedPeer>>,
    pub route_name: Option<std::sync::Arc<str>>,
    pub cluster_name: Option<std::sync::Arc<str>>,
    pub protocol: &'static str,
    /// Properties the filter set with `proxy_set_property`.
    pub custom: Vec<(String, Vec<u8>)>,
    pub local_response: Option<LocalResponse>,
    /// During `proxy_on_request_body`: the body the filter sees (and may rewrite with `proxy_set_buffer_bytes`).
    /// Shared with the chunk that arrived, so a filter that only looks costs no copy.
    pub request_body: Option<bytes::Bytes>,
    /// During `proxy_on_response_body`: likewise for the response.
    pub response_body: Option<bytes::Bytes>,
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

/// Regular headers back into a map (pseudo-headers skipped; invalid names or values, and names past what a map
/// holds, dropped with a log line).
pub fn to_header_map(pairs: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(pairs.len().min(super::abi::MAX_HEADER_PAIRS));
    for (k, v) in pairs {
        if k.starts_with(':') {
            continue;
        }
        match (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            (Ok(name), Ok(value)) => {
                if map.try_append(name, value).is_err() {
                    full(k);
                }
            }
            _ => tracing::warn!(header = %k, "wasm filter set an invalid header; dropped"),
        }
    }
    map
}

/// `http`'s maps hold at most 24,576 names (their `insert`, `append` and `with_capacity` panic past that): a name a
/// filter sets beyond it is dropped, as an invalid one is.
fn full(key: &str) {
    tracing::warn!(header = %key, "wasm filter set more header names than a header map holds; dropped");
}

pub fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
}

/// A header map as the ABI's map functions see it. Implemented by the proxy's headers (`Headers`) and by plain
/// pairs (trailers, callout responses).
pub trait HeaderAccess {
    /// The first value of `key` (case-insensitive).
    fn value(&self, key: &str) -> Option<String>;
    /// The ABI's serialized map.
    fn serialize(&self) -> Vec<u8>;
    fn set_all(&mut self, pairs: Vec<(String, String)>);
    /// Appends a value (the key in any case; names are kept lowercase). Borrowed text: a map copies only what it
    /// keeps.
    fn add(&mut self, key: &str, value: &str);
    /// Sets `key` to `value` alone (replacing every value it had).
    fn replace(&mut self, key: &str, value: &str);
    fn remove(&mut self, key: &str);
    fn count(&self) -> usize;
}

impl HeaderAccess for Vec<(String, String)> {
    fn value(&self, key: &str) -> Option<String> {
        get(self, key).map(str::to_string)
    }

    fn serialize(&self) -> Vec<u8> {
        super::abi::serialize_map(self)
    }

    fn set_all(&mut self, pairs: Vec<(String, String)>) {
        *self = pairs;
    }

    fn add(&mut self, key: &str, value: &str) {
        self.push((key.to_ascii_lowercase(), value.to_string()));
    }

    fn replace(&mut self, key: &str, value: &str) {
        let key = key.to_ascii_lowercase();
        match self.iter().position(|(k, _)| *k == key) {
            Some(first) => {
                self[first].1 = value.to_string();
                let mut i = 0;
                self.retain(|(k, _)| {
                    let keep = *k != key || i == first;
                    i += 1;
                    keep
                });
            }
            None => self.push((key, value.to_string())),
        }
    }

    fn remove(&mut self, key: &str) {
        self.retain(|(k, _)| !k.eq_ignore_ascii_case(key));
    }

    fn count(&self) -> usize {
        self.len()
    }
}

/// A pseudo-header's name or value. The names and the common values (methods, schemes, status codes) are static
/// strings, and the path and authority share the request's own bytes (`PathAndQuery`, `Authority`, or the Host
/// header's value, each a reference-counted slice of what the proxy parsed): presenting them to a filter costs no
/// allocation per request. Only a value a filter sets is owned.
#[derive(Debug, Clone)]
pub enum Text {
    Borrowed(&'static str),
    Owned(String),
    Path(http::uri::PathAndQuery),
    Authority(http::uri::Authority),
    /// A header value known to be visible ASCII (checked when it was made).
    Value(HeaderValue),
}

impl Text {
    /// A header value as text: shared if it is visible ASCII, copied (lossily) otherwise.
    pub fn value(v: &HeaderValue) -> Text {
        match v.to_str() {
            Ok(_) => Text::Value(v.clone()),
            Err(_) => Text::Owned(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        }
    }
}

impl std::ops::Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            Text::Borrowed(s) => s,
            Text::Owned(s) => s,
            Text::Path(p) => p.as_str(),
            Text::Authority(a) => a.as_str(),
            // Checked to be visible ASCII when made (`Text::value`), so this is the whole value.
            Text::Value(v) => v.to_str().unwrap_or_default(),
        }
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        **self == **other
    }
}

impl Eq for Text {}

/// The pseudo-headers Envoy shows filters (`:method`, `:path`, `:authority`, `:scheme`; `:status`), in order,
/// stored inline (no allocation for the usual four).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pseudo(smallvec::SmallVec<[(Text, Text); 4]>);

impl Pseudo {
    pub fn new<const N: usize>(pairs: [(Text, Text); N]) -> Pseudo {
        Pseudo(pairs.into_iter().collect())
    }

    /// The first value of `key` (case-insensitive).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_ref())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn add(&mut self, key: String, value: String) {
        self.0.push((name(key), Text::Owned(value)));
    }

    /// Sets `key` to `value` alone: the first occurrence keeps its place, any others go.
    fn replace(&mut self, key: String, value: String) {
        match self
            .0
            .iter()
            .position(|(k, _)| k.eq_ignore_ascii_case(&key))
        {
            Some(first) => {
                self.0[first].1 = Text::Owned(value);
                let mut i = 0;
                self.0.retain(|(k, _)| {
                    let keep = i == first || !k.eq_ignore_ascii_case(&key);
                    i += 1;
                    keep
                });
            }
            None => self.add(key, value),
        }
    }

    fn remove(&mut self, key: &str) {
        self.0.retain(|(k, _)| !k.eq_ignore_ascii_case(key));
    }
}

/// The static spelling of a well-known pseudo-header name.
fn name(key: String) -> Text {
    match key.as_str() {
        ":method" => Text::Borrowed(":method"),
        ":path" => Text::Borrowed(":path"),
        ":authority" => Text::Borrowed(":authority"),
        ":scheme" => Text::Borrowed(":scheme"),
        ":status" => Text::Borrowed(":status"),
        _ => Text::Owned(key),
    }
}

/// A method as a pseudo-header value (static for the standard methods).
pub fn method_text(m: &http::Method) -> Text {
    match *m {
        http::Method::GET => Text::Borrowed("GET"),
        http::Method::POST => Text::Borrowed("POST"),
        http::Method::PUT => Text::Borrowed("PUT"),
        http::Method::DELETE => Text::Borrowed("DELETE"),
        http::Method::HEAD => Text::Borrowed("HEAD"),
        http::Method::OPTIONS => Text::Borrowed("OPTIONS"),
        http::Method::PATCH => Text::Borrowed("PATCH"),
        http::Method::CONNECT => Text::Borrowed("CONNECT"),
        http::Method::TRACE => Text::Borrowed("TRACE"),
        _ => Text::Owned(m.as_str().to_string()),
    }
}

/// A status code as a pseudo-header value (static for the common codes).
pub fn status_text(code: http::StatusCode) -> Text {
    const COMMON: [(u16, &str); 24] = [
        (200, "200"),
        (201, "201"),
        (202, "202"),
        (204, "204"),
        (206, "206"),
        (301, "301"),
        (302, "302"),
        (303, "303"),
        (304, "304"),
        (307, "307"),
        (308, "308"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (405, "405"),
        (409, "409"),
        (413, "413"),
        (429, "429"),
        (431, "431"),
        (500, "500"),
        (502, "502"),
        (503, "503"),
        (504, "504"),
    ];
    match COMMON.iter().find(|(c, _)| *c == code.as_u16()) {
        Some((_, text)) => Text::Borrowed(text),
        None => Text::Owned(code.as_str().to_string()),
    }
}

/// The request's or response's headers during a filter chain: the pseudo-headers, and the rest as the proxy's own
/// `HeaderMap`.
#[derive(Debug, Default)]
pub struct Headers {
    pub pseudo: Pseudo,
    pub map: HeaderMap,
    /// A filter set, added or removed a pseudo-header (so the method, path, authority or status may differ).
    pub pseudo_changed: bool,
}

impl Headers {
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Headers {
        let mut h = Headers::default();
        h.set_all(pairs);
        h
    }

    /// A pseudo-header's value.
    pub fn pseudo(&self, key: &str) -> Option<&str> {
        self.pseudo.get(key)
    }

    /// Every pair, pseudo-headers first (tests, debugging).
    pub fn pairs(&self) -> Vec<(String, String)> {
        header_pairs(&self.map, &self.pseudo.iter().collect::<Vec<_>>())
    }
}

/// The header names filters set, per worker thread: a filter usually sets the same few names on every request, and
/// a name that is not one of the standard ones is an allocation to make (and another to share when the request is
/// cloned for a retry). A name from here is shared (a reference count), so setting it again costs neither.
mod names {
    use http::header::HeaderName;
    use std::cell::RefCell;

    const KEEP: usize = 32;

    thread_local! {
        static NAMES: RefCell<(Vec<HeaderName>, usize)> = const { RefCell::new((Vec::new(), 0)) };
    }

    /// `key` (any case) as a header name.
    pub fn get(key: &str) -> Option<HeaderName> {
        let key = key.as_bytes();
        NAMES.with(|n| {
            let mut n = n.borrow_mut();
            let (names, next) = &mut *n;
            if let Some(name) = names
                .iter()
                .find(|n| n.as_str().as_bytes().eq_ignore_ascii_case(key))
            {
                return Some(name.clone());
            }
            let name = HeaderName::from_bytes(key).ok()?;
            if names.len() < KEEP {
                names.push(name.clone());
            } else {
                names[*next] = name.clone();
                *next = (*next + 1) % KEEP;
            }
            Some(name)
        })
    }
}

/// A header name and value from a filter (the name in any case: names are lowercase).
fn parse_header(key: &str, value: &str) -> Option<(HeaderName, HeaderValue)> {
    match (names::get(key), HeaderValue::from_str(value)) {
        (Some(n), Ok(v)) => Some((n, v)),
        _ => {
            tracing::warn!(header = %key, "wasm filter set an invalid header; dropped");
            None
        }
    }
}

impl HeaderAccess for Headers {
    fn value(&self, key: &str) -> Option<String> {
        if key.starts_with(':') {
            return self.pseudo(key).map(str::to_string);
        }
        self.map
            .get(key)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    fn serialize(&self) -> Vec<u8> {
        let pairs = || {
            self.pseudo
                .iter()
                .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
                .chain(
                    self.map
                        .iter()
                        .map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes())),
                )
        };
        let size = 4 + pairs()
            .map(|(k, v)| 8 + k.len() + v.len() + 2)
            .sum::<usize>();
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(&(self.count() as u32).to_le_bytes());
        for (k, v) in pairs() {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs() {
            out.extend_from_slice(k);
            out.push(0);
            out.extend_from_slice(v);
            out.push(0);
        }
        out
    }

    fn set_all(&mut self, pairs: Vec<(String, String)>) {
        let (pseudo, rest): (Vec<_>, Vec<_>) =
            pairs.into_iter().partition(|(k, _)| k.starts_with(':'));
        self.pseudo_changed = true;
        self.pseudo = Pseudo(
            pseudo
                .into_iter()
                .map(|(k, v)| (name(k), Text::Owned(v)))
                .collect(),
        );
        self.map = to_header_map(&rest);
    }

    // Regular headers go straight from the borrowed text into the map (one copy, no intermediate strings).
    fn add(&mut self, key: &str, value: &str) {
        if key.starts_with(':') {
            self.pseudo_changed = true;
            self.pseudo.add(key.to_ascii_lowercase(), value.to_string());
        } else if let Some((n, v)) = parse_header(key, value) {
            if self.map.try_append(n, v).is_err() {
                full(key);
            }
        }
    }

    fn replace(&mut self, key: &str, value: &str) {
        if key.starts_with(':') {
            self.pseudo_changed = true;
            self.pseudo
                .replace(key.to_ascii_lowercase(), value.to_string());
        } else if let Some((n, v)) = parse_header(key, value) {
            if self.map.try_insert(n, v).is_err() {
                full(key);
            }
        }
    }

    fn remove(&mut self, key: &str) {
        if key.starts_with(':') {
            self.pseudo_changed = true;
            self.pseudo.remove(key);
        } else {
            self.map.remove(key);
        }
    }

    fn count(&self) -> usize {
        self.pseudo.len() + self.map.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn header_names_from_filters_are_shared_across_requests() {
        let a = names::get("X-Custom-Name").unwrap();
        let b = names::get("x-custom-name").unwrap();
        assert_eq!(a, "x-custom-name");
        assert_eq!(a, b);
        // The cached name and the one handed out share their bytes (no copy per request).
        assert_eq!(a.as_str().as_ptr(), b.as_str().as_ptr());
        assert!(names::get("bad name").is_none());
        // More names than the cache keeps still all resolve.
        for i in 0..100 {
            let n = format!("x-n-{i}");
            assert_eq!(names::get(&n).unwrap(), n.as_str());
        }
        assert_eq!(names::get("X-CUSTOM-NAME").unwrap(), "x-custom-name");
    }

    /// Regression: a filter may add any number of trailers (they are plain pairs), and turning more than
    /// `http` allows into a map panicked (`HeaderMap::with_capacity` past 24,576). The map keeps what it can hold.
    #[test]
    fn more_pairs_than_a_header_map_holds_are_dropped_not_a_panic() {
        let same: Vec<(String, String)> = vec![("x-a".into(), "1".into()); 40_000];
        assert_eq!(
            to_header_map(&same).len(),
            40_000,
            "values of one name are not limited"
        );
        let distinct: Vec<(String, String)> = (0..40_000)
            .map(|i| (format!("x-{i}"), "1".into()))
            .collect();
        let held = to_header_map(&distinct).keys_len();
        assert!(held > 20_000 && held < 40_000, "{held} names held");
    }

    #[test]
    fn headers_edit_the_map_in_place_with_envoy_semantics() {
        let mut h = Headers::from_pairs(vec![
            (":path".into(), "/a".into()),
            ("x-a".into(), "1".into()),
            ("x-a".into(), "2".into()),
        ]);
        assert_eq!(h.count(), 3);
        assert_eq!(
            h.value("X-A").as_deref(),
            Some("1"),
            "first value, any case"
        );
        assert_eq!(h.value(":path").as_deref(), Some("/a"));
        h.replace("x-a", "3");
        assert_eq!(
            h.map.get_all("x-a").iter().count(),
            1,
            "replace leaves one value"
        );
        h.add("x-a", "4");
        assert_eq!(h.map.get_all("x-a").iter().count(), 2);
        h.replace(":path", "/b");
        assert_eq!(h.pseudo(":path"), Some("/b"));
        h.add("bad header", "x");
        assert_eq!(h.count(), 3, "an invalid name is dropped");
        h.remove("X-A");
        assert_eq!(h.value("x-a"), None);
        let bytes = h.serialize();
        assert_eq!(
            super::super::abi::deserialize_map(&bytes).unwrap(),
            vec![(":path".to_string(), "/b".to_string())]
        );
        let mut v: Vec<(String, String)> = vec![("k".into(), "1".into()), ("k".into(), "2".into())];
        v.replace("k", "3");
        assert_eq!(v, vec![("k".to_string(), "3".to_string())]);
    }
}
