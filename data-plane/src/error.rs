//! Request-path errors, and the one place that turns them into a status and a short body saying why.

use std::time::Duration;

use http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route for host {host:?} and path {path:?}")]
    NoRoute { host: String, path: String },
    #[error("listener {0:?} has no configuration yet")]
    NotConfigured(String),
    #[error("route {0} has no backend with a non-zero weight")]
    NoBackend(String),
    #[error("no healthy endpoint for {0}")]
    NoEndpoint(String),
    #[error("upstream connect error ({cluster} at {addr}): {source}")]
    Connect {
        cluster: String,
        addr: String,
        source: hyper_util::client::legacy::Error,
    },
    #[error("upstream request failed ({cluster} at {addr}): {source}")]
    Upstream {
        cluster: String,
        addr: String,
        source: hyper_util::client::legacy::Error,
    },
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    FilterFailed(String),
    #[error("bulkhead full: {cluster} already has {max} requests in flight and no room to wait")]
    BulkheadFull { cluster: String, max: u32 },
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

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::NotConfigured(_)
            | ProxyError::NoEndpoint(_)
            | ProxyError::Connect { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::NoBackend(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::FilterFailed(_) | ProxyError::BulkheadFull { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }
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
