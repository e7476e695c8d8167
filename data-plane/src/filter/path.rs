//! Request path normalisation on arrival, before routing, authorization and filters see the path (Envoy's
//! `normalize_path` and `merge_slashes`, which Istio turns on): dot-segments removed (RFC 3986 5.2.4), repeated
//! slashes merged, percent-encoded unreserved characters decoded. An encoded `/` or `\` is refused (400): what it
//! means depends on the app, so no policy could be written for it. The normalised path is also what the
//! upstream gets, so the app serves what the policy decided on.

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the request path has an encoded '/' or '\\' (%2F, %5C)")]
pub struct EscapedSlash;

/// The normalised form of `path` (no query), borrowed when it is already normal.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, EscapedSlash> {
    if !path.contains('%') && !path.contains("//") && !path.contains("/.") {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing = false;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            // Repeated slashes merge; the first (empty) segment is the leading slash.
            "" => trailing = i == last && i > 0,
            "." => trailing = i == last,
            ".." => {
                out.pop();
                trailing = i == last;
            }
            s => {
                out.push(s);
                trailing = false;
            }
        }
    }
    let mut normal = String::with_capacity(decoded.len());
    for s in &out {
        normal.push('/');
        normal.push_str(s);
    }
    if trailing || normal.is_empty() {
        normal.push('/');
    }
    Ok(Cow::Owned(normal))
}

/// Decodes `%XX` of unreserved characters (ALPHA, DIGIT, `-`, `.`, `_`, `~`); other escapes stay as they are.
fn decode_unreserved(path: &str) -> Result<String, EscapedSlash> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 3)
            .filter(|_| bytes[i] == b'%')
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match escaped {
            Some(b'/' | b'\\') => return Err(EscapedSlash),
            Some(b) if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => {
                out.push(b);
                i += 3;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    // Only ASCII went in (a URI path is ASCII), so this never replaces anything.
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_like_envoy_does() {
        for (raw, want) in [
            ("/api/orders", "/api/orders"),
            ("/api//orders", "/api/orders"),
            ("//admin", "/admin"),
            ("/./admin", "/admin"),
            ("/api/../admin", "/admin"),
            ("/api/./v1/../orders/", "/api/orders/"),
            ("/..", "/"),
            ("/a/b/..", "/a/"),
            ("/%61dmin", "/admin"),
            ("/api/%2e%2e/admin", "/admin"),
            ("/q%20space", "/q%20space"),
            ("/", "/"),
        ] {
            assert_eq!(normalize(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn an_encoded_slash_is_refused() {
        for raw in ["/api%2Fadmin", "/api%2fadmin", "/a%5Cb", "/a%5cb"] {
            assert_eq!(normalize(raw), Err(EscapedSlash), "{raw}");
        }
    }

    #[test]
    fn a_normal_path_is_not_copied() {
        assert!(matches!(normalize("/api/v1/orders"), Ok(Cow::Borrowed(_))));
    }
}
