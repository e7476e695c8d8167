//! A TrafficPolicy as the proxy applies it: plain data, with every default filled in (docs/resilience.md lists
//! them; `from_proto::policy` converts the wire message). With no TrafficPolicy a cluster gets `Policy::default()`: retries of connect
//! failures and refused streams only (2 attempts, within the default budget), peak-ewma balancing.

use std::time::Duration;

use http::header::{HeaderName, HeaderValue};

/// Retry conditions (`retry.on`), as bits.
pub mod on {
    pub const CONNECT_FAILURE: u16 = 1;
    pub const REFUSED_STREAM: u16 = 1 << 1;
    pub const RESET: u16 = 1 << 2;
    pub const HTTP_5XX: u16 = 1 << 3;
    pub const GATEWAY_ERROR: u16 = 1 << 4;
    pub const STATUS_CODES: u16 = 1 << 5;
    pub const GRPC_CANCELLED: u16 = 1 << 6;
    pub const GRPC_DEADLINE_EXCEEDED: u16 = 1 << 7;
    pub const GRPC_RESOURCE_EXHAUSTED: u16 = 1 << 8;
    pub const GRPC_UNAVAILABLE: u16 = 1 << 9;

    pub fn parse(name: &str) -> u16 {
        match name {
            "connect-failure" => CONNECT_FAILURE,
            "refused-stream" => REFUSED_STREAM,
            "reset" => RESET,
            "5xx" => HTTP_5XX,
            "gateway-error" => GATEWAY_ERROR,
            "retriable-status-codes" => STATUS_CODES,
            "cancelled" => GRPC_CANCELLED,
            "deadline-exceeded" => GRPC_DEADLINE_EXCEEDED,
            "resource-exhausted" => GRPC_RESOURCE_EXHAUSTED,
            "unavailable" => GRPC_UNAVAILABLE,
            _ => 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub on: u16,
    pub status_codes: Vec<u16>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub budget: Option<BudgetConfig>,
    pub non_idempotent: bool,
}

pub const DEFAULT_BUDGET: BudgetConfig = BudgetConfig {
    ratio: 0.2,
    min_per_second: 10,
};

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 2,
            on: on::CONNECT_FAILURE | on::REFUSED_STREAM,
            status_codes: Vec::new(),
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            budget: Some(DEFAULT_BUDGET),
            non_idempotent: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Timeouts {
    pub request: Option<Duration>,
    pub per_try: Option<Duration>,
    pub connect: Option<Duration>,
    pub idle: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Fallback {
    pub status: http::StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: bytes::Bytes,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    pub consecutive_5xx: u32,
    pub consecutive_gateway: u32,
    pub base_ejection: Duration,
    pub max_percent: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LimitKey {
    Global,
    SourceIp,
    Header(HeaderName),
    SourceService,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    pub rate: f64,
    pub burst: u32,
    pub key: LimitKey,
    /// Queue mode: wait up to this long for a token instead of rejecting.
    pub max_delay: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BulkheadConfig {
    pub max_concurrent: u32,
    pub max_pending: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum HashOn {
    Header(HeaderName),
    Cookie(String),
    SourceIp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Abort {
    Http(http::StatusCode),
    Grpc(u32),
}

#[derive(Debug, Clone, PartialEq)]
pub struct FaultConfig {
    pub delay_percent: f64,
    pub delay: Duration,
    pub abort_percent: f64,
    pub abort: Option<Abort>,
    pub header: Option<(HeaderName, String)>,
}

/// Per-request fields: from the route's policy when it sets them, else from the backend service's.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RequestPolicy {
    pub timeouts: Option<Timeouts>,
    pub retry: Option<RetryPolicy>,
    pub rate_limit: Option<RateLimitConfig>,
    pub fault: Option<FaultConfig>,
}

/// Per-upstream-service fields plus the service's per-request defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub request: RequestPolicy,
    pub breaker: Option<BreakerConfig>,
    pub outlier: Option<OutlierConfig>,
    pub bulkhead: Option<BulkheadConfig>,
    pub balancer: Balancer,
    /// What an open circuit answers (None: a fast 503 that says so).
    pub fallback: Option<Fallback>,
    pub hash_on: Option<HashOn>,
    pub health: Option<HealthConfig>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            request: RequestPolicy::default(),
            breaker: None,
            outlier: None,
            bulkhead: None,
            balancer: Balancer::PeakEwma,
            hash_on: None,
            health: None,
            fallback: None,
        }
    }
}

/// Circuit breaker thresholds (resilience/breaker.rs).
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// 0 = not used.
    pub consecutive_failures: u32,
    /// 0.0 = not used.
    pub failure_rate: f64,
    pub min_requests: u32,
    pub window: Duration,
    pub open_for: Duration,
    pub max_open_for: Duration,
    pub half_open_probes: u32,
}

/// Retry budget (resilience/budget.rs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    pub ratio: f64,
    pub min_per_second: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// How a cluster's balancer picks an endpoint (resilience/balance.rs).
pub enum Balancer {
    RoundRobin,
    Random,
    LeastRequest,
    PeakEwma,
    ConsistentHash,
}
