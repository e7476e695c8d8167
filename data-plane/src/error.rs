//! The proxy's own replies, in one place: every error of the request path becomes a status and a short
//! `text/plain` body here (`meshwork: <what happened>`), and so do the layers' deliberate answers (429 with its
//! rate-limit headers, a circuit breaker's fallback, an injected fault, a redirect). Replies never carry internal
//! addresses, error chains or backtraces: those go to the log. Beside each status, the access log's
//! `response_flags` for it (`flag`): why the request ended the way it did.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::filter::chain::{BodyFilterFailed, BodyReplied, BodyTooLarge, Fault, FilterError};
use crate::filter::wasm::WasmError;
use crate::resilience::CallError;
use crate::upstream::body::{ClientBodyFailed, ResponseBody, StoppedByProxy};
use crate::upstream::error::{chain, find};
use crate::upstream::UpstreamError;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route for host {host:?} and path {path:?}")]
    NoRoute { host: String, path: String },
    #[error("listener {0:?} has no configuration yet")]
    NotConfigured(String),
    #[error("route {0} has no backend with a non-zero weight")]
    NoBackend(String),
    #[error("no endpoint for {0}")]
    NoEndpoint(String),
    #[error(transparent)]
    Call(#[from] CallError),
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// The client's body broke a bound before anything was forwarded (a declared length over the maximum).
    #[error(transparent)]
    ClientBody(#[from] ClientBodyFailed),
    /// The request path has an encoded slash (filter/path.rs).
    #[error(transparent)]
    BadPath(#[from] crate::filter::path::EscapedSlash),
    /// An AuthorizationPolicy refused the request (the DENY policy that matched; None: no ALLOW policy matched).
    #[error("denied by AuthorizationPolicy {}", .0.as_deref().unwrap_or(crate::authz::NO_ALLOW_MATCHED))]
    Denied(Option<std::sync::Arc<str>>),
}

/// The answer to a connection refused at a listener's connection cap, written raw (no request was read).
pub const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 31\r\n\r\nmeshwork: too many connections\n";

static TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

/// The reply for an error of the request path. The details go to the log (debug: most of these are the
/// upstream's or the client's doing, not the proxy's).
pub fn reply(err: &ProxyError) -> Response<ResponseBody> {
    tracing::debug!(error = %chain(err), "request failed");
    match err {
        ProxyError::NoRoute { .. } => {
            text(StatusCode::NOT_FOUND, "no route for this host and path")
        }
        ProxyError::NotConfigured(_) => text(StatusCode::SERVICE_UNAVAILABLE, "not configured yet"),
        ProxyError::NoBackend(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the route has no backend",
        ),
        ProxyError::NoEndpoint(_) => text(StatusCode::SERVICE_UNAVAILABLE, "no healthy endpoint"),
        ProxyError::Call(e) => call_reply(e),
        ProxyError::Filter(e) => filter_reply(e),
        ProxyError::ClientBody(e) => client_body_reply(e),
        // Envoy's RBAC reply; which policy denied goes to the log and /metrics, not to the client.
        ProxyError::Denied(_) => text(StatusCode::FORBIDDEN, "RBAC: access denied"),
        ProxyError::BadPath(e) => text(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

/// `response_flags` of a request a Wasm filter answered itself (it denied it, or replied from its own logic).
pub const FILTER_REPLIED: &str = "FR";

/// The access log's `response_flags` for an error of the request path (the codes are Envoy's where Envoy has
/// one; docs/observability.md lists them all).
pub fn flag(err: &ProxyError) -> &'static str {
    match err {
        ProxyError::NoRoute { .. } => "NR",
        ProxyError::NotConfigured(_) | ProxyError::NoBackend(_) => "NC",
        ProxyError::NoEndpoint(_) => "UH",
        ProxyError::Call(e) => call_flag(e),
        ProxyError::Filter(_) => "FF",
        ProxyError::ClientBody(e) => client_body_flag(e),
        ProxyError::BadPath(_) => "DPE",
        ProxyError::Denied(_) => "RBAC",
    }
}

fn call_flag(err: &CallError) -> &'static str {
    match err {
        CallError::Upstream(UpstreamError::Connect { .. }) => "UF",
        CallError::Upstream(UpstreamError::Failed { source, .. }) => {
            find::<ClientBodyFailed>(source).map_or("UC", client_body_flag)
        }
        CallError::Upstream(UpstreamError::BadUri) => "DPE",
        CallError::Timeout(_) => "UT",
        CallError::NoEndpoint(_) => "UH",
        CallError::BulkheadFull { .. } | CallError::CircuitOpen(_) => "UO",
        CallError::RateLimited { .. } => "RL",
        CallError::FaultAbort(_) => "FI",
        CallError::RequestBody(e) => find::<ClientBodyFailed>(&**e).map_or("DPE", client_body_flag),
    }
}

fn client_body_flag(err: &ClientBodyFailed) -> &'static str {
    match err {
        ClientBodyFailed::TooSlow(_) => "DT",
        ClientBodyFailed::Read(_) | ClientBodyFailed::TooLarge(_) => "DPE",
    }
}

/// The client's own body failed: 400 (bad framing), 408 (too slow), 413 (too large). Each closes the connection,
/// since the rest of the body is not read.
fn client_body_reply(err: &ClientBodyFailed) -> Response<ResponseBody> {
    let mut r = match err {
        ClientBodyFailed::Read(_) => text(
            StatusCode::BAD_REQUEST,
            "the request body could not be read",
        ),
        ClientBodyFailed::TooSlow(_) => text(StatusCode::REQUEST_TIMEOUT, &err.to_string()),
        ClientBodyFailed::TooLarge(_) => text(StatusCode::PAYLOAD_TOO_LARGE, &err.to_string()),
    };
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

fn call_reply(err: &CallError) -> Response<ResponseBody> {
    match err {
        CallError::Upstream(UpstreamError::Connect { .. }) => {
            text(StatusCode::SERVICE_UNAVAILABLE, "upstream connect error")
        }
        CallError::Upstream(UpstreamError::Failed { source, .. }) => body_reply(source)
            .unwrap_or_else(|| text(StatusCode::BAD_GATEWAY, "upstream request failed")),
        CallError::Upstream(UpstreamError::BadUri) => text(
            StatusCode::BAD_REQUEST,
            "bad request: cannot build the upstream URI",
        ),
        CallError::Timeout(t) => {
            let msg = format!("upstream did not answer within {t:?}");
            text(StatusCode::GATEWAY_TIMEOUT, &msg)
        }
        CallError::NoEndpoint(_) => text(StatusCode::SERVICE_UNAVAILABLE, "no healthy endpoint"),
        CallError::BulkheadFull { .. } => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "bulkhead full: no room to wait",
        ),
        CallError::CircuitOpen(rt) => match &rt.policy.fallback {
            Some(f) => {
                let body = Some(f.body.clone()).filter(|b| !b.is_empty());
                let mut r = Response::new(ResponseBody::Full(body));
                *r.status_mut() = f.status;
                for (k, v) in &f.headers {
                    r.headers_mut().append(k.clone(), v.clone());
                }
                r
            }
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "circuit open: failing fast",
            ),
        },
        CallError::RateLimited {
            retry_after,
            limit,
            reset,
        } => {
            let mut r = text(StatusCode::TOO_MANY_REQUESTS, "rate limited");
            let h = r.headers_mut();
            let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            h.insert("ratelimit-limit", HeaderValue::from(*limit));
            h.insert("ratelimit-remaining", HeaderValue::from(0u32));
            h.insert("ratelimit-reset", HeaderValue::from((*reset).max(1)));
            r
        }
        CallError::FaultAbort(crate::config::policy::Abort::Http(status)) => {
            text(*status, "fault injected")
        }
        CallError::FaultAbort(crate::config::policy::Abort::Grpc(code)) => {
            grpc(*code, "fault injected")
        }
        CallError::RequestBody(e) => body_reply(&**e).unwrap_or_else(|| {
            text(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            )
        }),
    }
}

/// A request body that a Wasm filter stopped: 413 when it was too large to buffer, 503 when the filter failed
/// (or answered from its body callback: that answer replaces this one, see `Chain::body_reply`).
fn body_reply(err: &(dyn std::error::Error + 'static)) -> Option<Response<ResponseBody>> {
    if let Some(e) = find::<BodyTooLarge>(err) {
        return Some(text(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string()));
    }
    if let Some(e) = find::<BodyFilterFailed>(err) {
        let msg = format!(
            "wasm plugin {} failed on the body: {}",
            e.plugin,
            wasm_failure(&e.error)
        );
        return Some(text(StatusCode::SERVICE_UNAVAILABLE, &msg));
    }
    if let Some(e) = find::<FilterError>(err) {
        // A filter that paused at the end of the body failed, closed the stream or could never resume it.
        return Some(filter_reply(e));
    }
    if let Some(e) = find::<BodyReplied>(err) {
        return Some(text(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()));
    }
    if let Some(e) = find::<ClientBodyFailed>(err) {
        return Some(client_body_reply(e));
    }
    if find::<StoppedByProxy>(err).is_some() {
        // A filter changed the length of a body whose Content-Length was already sent: not the upstream's doing.
        return Some(text(
            StatusCode::BAD_GATEWAY,
            "a Wasm filter broke the request body",
        ));
    }
    None
}

fn filter_reply(err: &FilterError) -> Response<ResponseBody> {
    match err {
        FilterError::Failed { plugin, error } => {
            let msg = format!("wasm plugin {plugin} failed: {}", wasm_failure(error));
            text(StatusCode::SERVICE_UNAVAILABLE, &msg)
        }
        FilterError::Closed(_) => text(StatusCode::BAD_GATEWAY, &err.to_string()),
        FilterError::Stuck(_) => text(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string()),
        FilterError::Ended => text(StatusCode::SERVICE_UNAVAILABLE, &err.to_string()),
    }
}

/// What a client is told of a filter's failure: its kind, not the trap's backtrace (that goes to the log).
fn wasm_failure(e: &Fault) -> &'static str {
    match e {
        Fault::Wasm(WasmError::Load(_)) => "could not be loaded",
        Fault::Wasm(WasmError::Rejected(_)) => "rejected the stream",
        Fault::Wasm(WasmError::Trap(_)) => "trapped",
        Fault::Wasm(WasmError::Timeout(_)) => "exceeded its CPU limit",
        Fault::Wasm(WasmError::OutOfMemory(_)) => "ran out of memory",
        // Another stream's failure discarded the instance holding this stream's context (FAIL_CLOSE).
        Fault::Lost => "its instance failed while this request waited",
    }
}

/// A redirect (an HTTPRoute's RequestRedirect filter).
pub fn redirect(status: StatusCode, location: Option<HeaderValue>) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::empty());
    *resp.status_mut() = status;
    if let Some(v) = location {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// The convention for the proxy's own replies: `meshwork: <message>` as text/plain.
fn text(status: StatusCode, message: &str) -> Response<ResponseBody> {
    let body = Bytes::from(format!("meshwork: {message}\n"));
    let mut r = Response::new(ResponseBody::Full(Some(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, TEXT_PLAIN.clone());
    r
}

/// A trailers-only gRPC answer: the status travels in the headers.
fn grpc(code: u32, message: &'static str) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::empty());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(code));
    h.insert("grpc-message", HeaderValue::from_static(message));
    r
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use http_body_util::BodyExt;

    use super::*;
    use crate::config::snapshot::Protocol;
    use crate::upstream::body::RequestBody;
    use crate::upstream::Upstreams;

    async fn body_of(r: Response<ResponseBody>) -> (StatusCode, Option<HeaderValue>, String) {
        let status = r.status();
        let ct = r.headers().get(header::CONTENT_TYPE).cloned();
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        (status, ct, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// A real connect failure to a closed port on 127.0.0.1: the reply says what kind of failure, never where.
    #[tokio::test]
    async fn upstream_errors_never_show_the_address_or_the_error_chain() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let endpoint = crate::config::snapshot::Endpoint::plain(std::net::SocketAddr::from((
            [127, 0, 0, 1],
            port,
        )));
        let parts = http::Request::new(()).into_parts().0;
        let clients = Upstreams::new(Duration::from_secs(1));
        let cluster: Arc<str> = Arc::from("service/default/secret-backend");
        let err = crate::upstream::send(
            &clients,
            &cluster,
            Protocol::Http1,
            &endpoint,
            parts,
            RequestBody::Empty,
        )
        .await
        .unwrap_err();
        let (status, ct, body) = body_of(reply(&ProxyError::Call(err.into()))).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ct, Some(TEXT_PLAIN.clone()));
        assert_eq!(body, "meshwork: upstream connect error\n");
        assert!(!body.contains(&port.to_string()) && !body.contains("secret-backend"));
    }

    /// A filter's trap keeps its backtrace in the log; the client learns the plugin and the kind of failure.
    #[tokio::test]
    async fn a_trapped_filter_reply_carries_no_backtrace() {
        let err = FilterError::Failed {
            plugin: "default/auth".into(),
            error: WasmError::Trap("wasm backtrace:\n 0: 0x1234 - auth.wasm!handle".into()).into(),
        };
        let (status, _, body) = body_of(reply(&ProxyError::Filter(err))).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "meshwork: wasm plugin default/auth failed: trapped\n");
    }

    /// Every reply follows one convention: a status, `text/plain`, and `meshwork: ` in front of the message.
    #[tokio::test]
    async fn every_text_reply_follows_the_convention() {
        let errors = [
            ProxyError::NoRoute {
                host: "a.example".into(),
                path: "/x".into(),
            },
            ProxyError::NotConfigured("http".into()),
            ProxyError::NoBackend("r".into()),
            ProxyError::NoEndpoint("local-app/a".into()),
            ProxyError::Call(CallError::Timeout(Duration::from_millis(250))),
            ProxyError::Call(CallError::NoEndpoint(Arc::from("service/default/b"))),
            ProxyError::Call(CallError::BulkheadFull {
                cluster: Arc::from("service/default/b"),
                max: 3,
            }),
            ProxyError::Filter(FilterError::Closed("p".into())),
            ProxyError::Filter(FilterError::Stuck("p".into())),
            ProxyError::Filter(FilterError::Failed {
                plugin: "p".into(),
                error: Fault::Lost,
            }),
        ];
        let want = [404, 503, 500, 503, 504, 503, 503, 502, 500, 503];
        for (err, want) in errors.iter().zip(want) {
            let (status, ct, body) = body_of(reply(err)).await;
            assert_eq!(status.as_u16(), want, "{err}");
            assert_eq!(ct, Some(TEXT_PLAIN.clone()), "{err}");
            assert!(
                body.starts_with("meshwork: ") && body.ends_with('\n'),
                "{body:?}"
            );
            assert!(
                !body.contains("service/default") && !body.contains("a.example"),
                "{body:?}"
            );
        }
    }

    #[tokio::test]
    async fn rate_limited_answers_429_with_its_headers() {
        let err = CallError::RateLimited {
            retry_after: Duration::from_millis(1500),
            limit: 10,
            reset: 0,
        };
        let r = reply(&ProxyError::Call(err));
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        let h = r.headers();
        assert_eq!(h[header::RETRY_AFTER], "2");
        assert_eq!(h["ratelimit-limit"], "10");
        assert_eq!(h["ratelimit-remaining"], "0");
        assert_eq!(h["ratelimit-reset"], "1");
    }
}
