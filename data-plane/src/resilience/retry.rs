//! What an attempt's outcome means: success or failure (for the breaker, outlier detection and the balancer),
//! and whether the retry policy may try again.

use std::time::Duration;

use http::{Method, Response};

use super::call::CallError;
use crate::config::policy::{on, RetryPolicy};
use crate::upstream::body::{ClientBodyFailed, ResponseBody, StoppedByProxy};
use crate::upstream::error::{chain, find};
use crate::upstream::UpstreamError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Answered,
    ConnectFailure,
    RefusedStream,
    Reset,
    Timeout,
    /// Not the upstream's fault (the client's body failed, a filter refused it): never retried, not counted.
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub kind: Kind,
    pub status: Option<u16>,
    pub grpc_status: Option<u32>,
}

impl Outcome {
    pub fn of(result: &Result<Response<ResponseBody>, CallError>) -> Outcome {
        match result {
            Ok(r) => Outcome {
                kind: Kind::Answered,
                status: Some(r.status().as_u16()),
                grpc_status: r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok()),
            },
            Err(e) => Outcome {
                kind: match e {
                    CallError::Upstream(UpstreamError::Connect { .. }) => Kind::ConnectFailure,
                    CallError::Upstream(UpstreamError::Failed { source, .. }) => {
                        if find::<StoppedByProxy>(source).is_some()
                            || find::<ClientBodyFailed>(source).is_some()
                        {
                            Kind::Local
                        } else {
                            let text = chain(source);
                            if text.contains("REFUSED_STREAM") || text.contains("refused stream") {
                                Kind::RefusedStream
                            } else {
                                Kind::Reset
                            }
                        }
                    }
                    CallError::Timeout(_) => Kind::Timeout,
                    _ => Kind::Local,
                },
                status: None,
                grpc_status: None,
            },
        }
    }

    /// Why no response came, as OpenTelemetry's `error.type` says it; None with a response.
    pub fn error_type(&self) -> Option<&'static str> {
        match self.kind {
            Kind::Answered => None,
            Kind::ConnectFailure => Some("connect"),
            Kind::RefusedStream => Some("refused_stream"),
            Kind::Reset => Some("reset"),
            Kind::Timeout => Some("timeout"),
            Kind::Local => Some("local"),
        }
    }

    /// What a retry follows, in a word: the status class or the failure.
    pub fn describe(&self) -> &'static str {
        match (self.kind, self.status) {
            (Kind::Answered, Some(500..=599)) => "5xx",
            (Kind::Answered, Some(400..=499)) => "4xx",
            (Kind::Answered, _) => "response",
            (k, _) => Outcome {
                kind: k,
                status: None,
                grpc_status: None,
            }
            .error_type()
            .unwrap_or("failure"),
        }
    }

    /// A failure of the upstream (5xx or no answer): what the breaker and outlier detection count.
    pub fn failed(&self) -> bool {
        match self.kind {
            Kind::Answered => self.status.is_some_and(|s| s >= 500),
            Kind::Local => false,
            _ => true,
        }
    }

    /// Worth a latency penalty for the balancer: no answer, or an answer saying "not now" (429/503).
    pub fn penalised(&self) -> bool {
        match self.kind {
            Kind::Answered => matches!(self.status, Some(429 | 503)),
            Kind::Local => false,
            _ => true,
        }
    }

    /// The status outlier detection sees (None = no answer, a gateway error).
    pub fn outlier_status(&self) -> Option<Option<u16>> {
        match self.kind {
            Kind::Answered => Some(self.status),
            Kind::Local => None,
            _ => Some(None),
        }
    }
}

/// Methods safe to send twice (RFC 9110 idempotent methods).
pub fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Whether the policy retries this outcome. A connect failure or a refused stream never reached the app, so it
/// is retried whatever the method; anything else only for idempotent methods unless `nonIdempotent`.
pub fn retriable(o: &Outcome, r: &RetryPolicy, method: &Method) -> bool {
    let safe = r.non_idempotent || idempotent(method);
    let has = |bits: u16| r.on & bits != 0;
    match o.kind {
        Kind::ConnectFailure => {
            has(on::CONNECT_FAILURE | on::HTTP_5XX | on::GATEWAY_ERROR | on::RESET)
        }
        Kind::RefusedStream => has(on::REFUSED_STREAM | on::HTTP_5XX | on::RESET),
        Kind::Reset | Kind::Timeout => safe && has(on::RESET | on::HTTP_5XX | on::GATEWAY_ERROR),
        Kind::Local => false,
        Kind::Answered => {
            if !safe {
                return false;
            }
            let status = o.status.unwrap_or(200);
            let grpc = match o.grpc_status {
                Some(1) => has(on::GRPC_CANCELLED),
                Some(4) => has(on::GRPC_DEADLINE_EXCEEDED),
                Some(8) => has(on::GRPC_RESOURCE_EXHAUSTED),
                Some(14) => has(on::GRPC_UNAVAILABLE),
                _ => false,
            };
            grpc || (status >= 500 && has(on::HTTP_5XX))
                || ((502..=504).contains(&status) && has(on::GATEWAY_ERROR))
                || (has(on::STATUS_CODES) && r.status_codes.contains(&status))
        }
    }
}

/// How long to wait before retry number `retry` (0-based): full-jitter backoff, or the answer's `Retry-After` if
/// longer.
pub fn delay(
    r: &RetryPolicy,
    retry: u32,
    result: &Result<Response<ResponseBody>, CallError>,
) -> Duration {
    let backoff =
        super::backoff::full_jitter(r.backoff_base, r.backoff_max, retry, fastrand::f64());
    match result {
        Ok(resp) => {
            super::backoff::retry_after(resp.headers()).map_or(backoff, |ra| ra.max(backoff))
        }
        Err(_) => backoff,
    }
}
