//! How a call to an upstream endpoint fails, and helpers to walk an error's sources (which every layer uses:
//! they live here, in the lowest layer).

use std::sync::Arc;

use http::uri::Authority;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream connect error ({cluster} at {addr})")]
    Connect {
        cluster: Arc<str>,
        addr: Authority,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("upstream request failed ({cluster} at {addr})")]
    Failed {
        cluster: Arc<str>,
        addr: Authority,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("cannot build the upstream URI")]
    BadUri,
}

/// An endpoint with an identity was to be reached over mTLS, but this proxy has no certificate to present.
#[derive(Debug, thiserror::Error)]
#[error("no certificate to present for mTLS yet")]
pub struct MtlsUnavailable;

/// The TLS handshake with an upstream endpoint failed (mesh mTLS: the server proved another identity, its chain did
/// not verify, it refused ours; egress: its certificate is not valid for the name or not from a trusted CA; or it
/// took too long): a connect failure, which retries and outlier detection handle. `peer`: the SPIFFE ID or the
/// server name it had to prove.
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake with {peer} failed ({reason})")]
pub struct TlsConnectError {
    pub peer: String,
    pub reason: &'static str,
    #[source]
    pub source: std::io::Error,
}

/// The first error of type `E` in `err`'s source chain.
pub fn find<'a, E: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        cur = e.source();
    }
    None
}

/// A short error chain for logs: "outer: inner: innermost".
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}
