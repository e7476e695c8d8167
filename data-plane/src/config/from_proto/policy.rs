//! pb::Policy -> Policy: a TrafficPolicy's wire form with every default filled in (docs/resilience.md).

use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use meshwork_proto as pb;

use crate::config::policy::*;

fn ms(v: u64) -> Option<Duration> {
    (v > 0).then(|| Duration::from_millis(v))
}

fn or_ms(v: u64, default: Duration) -> Duration {
    ms(v).unwrap_or(default)
}

pub fn timeouts(t: &pb::Timeouts) -> Timeouts {
    Timeouts {
        request: ms(t.request_ms),
        per_try: ms(t.per_try_ms),
        connect: ms(t.connect_ms),
        idle: ms(t.idle_ms),
    }
}

pub fn retry(r: &pb::Retry) -> RetryPolicy {
    let d = RetryPolicy::default();
    let mut on = r.on.iter().fold(0, |acc, n| acc | on::parse(n));
    if on == 0 {
        on = d.on;
    }
    RetryPolicy {
        attempts: r.attempts,
        on,
        status_codes: r
            .status_codes
            .iter()
            .filter_map(|c| u16::try_from(*c).ok())
            .collect(),
        backoff_base: or_ms(r.backoff_base_ms, d.backoff_base),
        backoff_max: or_ms(
            r.backoff_max_ms,
            d.backoff_max.max(ms(r.backoff_base_ms).unwrap_or_default()),
        ),
        budget: (!r.budget_disabled).then_some(BudgetConfig {
            ratio: if r.budget_ratio > 0.0 {
                r.budget_ratio
            } else {
                DEFAULT_BUDGET.ratio
            },
            min_per_second: if r.budget_min_per_second > 0 || r.budget_ratio > 0.0 {
                r.budget_min_per_second
            } else {
                DEFAULT_BUDGET.min_per_second
            },
        }),
        non_idempotent: r.non_idempotent,
    }
}

pub fn rate_limit(r: &pb::RateLimit) -> RateLimitConfig {
    RateLimitConfig {
        rate: r.requests_per_second.max(0.001),
        burst: if r.burst > 0 {
            r.burst
        } else {
            r.requests_per_second.ceil().max(1.0) as u32
        },
        key: match r.key.as_str() {
            "sourceIP" => LimitKey::SourceIp,
            "sourceService" => LimitKey::SourceService,
            "header" => HeaderName::from_bytes(r.key_header.as_bytes())
                .map(LimitKey::Header)
                .unwrap_or(LimitKey::Global),
            _ => LimitKey::Global,
        },
        max_delay: if r.queue { ms(r.max_delay_ms) } else { None },
    }
}

pub fn fault(f: &pb::FaultInjection) -> FaultConfig {
    let abort = if f.abort_percent <= 0.0 {
        None
    } else if f.abort_grpc {
        Some(Abort::Grpc(f.abort_grpc_status))
    } else {
        http::StatusCode::from_u16(u16::try_from(f.abort_status).unwrap_or(503))
            .ok()
            .map(Abort::Http)
    };
    FaultConfig {
        delay_percent: f.delay_percent,
        delay: Duration::from_millis(f.delay_ms),
        abort_percent: f.abort_percent,
        abort,
        header: HeaderName::from_bytes(f.header_name.as_bytes())
            .ok()
            .map(|h| (h, f.header_value.clone())),
    }
}

pub fn request_policy(p: &pb::Policy) -> RequestPolicy {
    RequestPolicy {
        timeouts: p.timeouts.as_ref().map(timeouts),
        retry: p.retry.as_ref().map(retry),
        rate_limit: p.rate_limit.as_ref().map(rate_limit),
        fault: p.fault_injection.as_ref().map(fault),
    }
}

/// The whole policy of a service (or of a route, whose per-request fields override its backend's).
pub fn policy(p: &pb::Policy) -> Policy {
    let d = Policy::default();
    let breaker = p.circuit_breaker.as_ref().map(|c| {
        let open_for = or_ms(c.open_for_ms, Duration::from_secs(5));
        BreakerConfig {
            consecutive_failures: c.consecutive_failures,
            failure_rate: c.failure_rate_threshold,
            min_requests: if c.failure_rate_min_requests > 0 {
                c.failure_rate_min_requests
            } else {
                20
            },
            window: or_ms(c.failure_rate_window_ms, Duration::from_secs(10)),
            open_for,
            max_open_for: or_ms(c.max_open_for_ms, Duration::from_secs(300)).max(open_for),
            half_open_probes: c.half_open_probes.max(1),
        }
    });
    let (balancer, hash_on) = match &p.load_balancer {
        Some(lb) => (
            match lb.policy.as_str() {
                "round-robin" => Balancer::RoundRobin,
                "random" => Balancer::Random,
                "least-request" => Balancer::LeastRequest,
                "consistent-hash" => Balancer::ConsistentHash,
                _ => Balancer::PeakEwma,
            },
            match lb.hash_on.as_str() {
                "header" => HeaderName::from_bytes(lb.hash_name.as_bytes())
                    .ok()
                    .map(HashOn::Header),
                "cookie" => Some(HashOn::Cookie(lb.hash_name.clone())),
                "sourceIP" => Some(HashOn::SourceIp),
                _ => None,
            },
        ),
        None => (d.balancer, None),
    };
    Policy {
        request: request_policy(p),
        breaker,
        outlier: p.outlier_detection.as_ref().map(|o| OutlierConfig {
            consecutive_5xx: if o.consecutive_5xx > 0 || o.consecutive_gateway_errors > 0 {
                o.consecutive_5xx
            } else {
                5
            },
            consecutive_gateway: o.consecutive_gateway_errors,
            base_ejection: or_ms(o.base_ejection_time_ms, Duration::from_secs(30)),
            max_percent: if o.max_ejection_percent > 0 {
                o.max_ejection_percent
            } else {
                50
            },
        }),
        bulkhead: p.bulkhead.as_ref().map(|b| BulkheadConfig {
            max_concurrent: b.max_concurrent_requests.max(1),
            max_pending: b.max_pending,
        }),
        balancer,
        hash_on,
        fallback: fallback(p),
        health: p.health_check.as_ref().map(|h| HealthConfig {
            path: if h.path.is_empty() {
                "/".into()
            } else {
                h.path.clone()
            },
            interval: or_ms(h.interval_ms, Duration::from_secs(5)),
            timeout: or_ms(h.timeout_ms, Duration::from_secs(1)),
            healthy_threshold: if h.healthy_threshold > 0 {
                h.healthy_threshold
            } else {
                2
            },
            unhealthy_threshold: if h.unhealthy_threshold > 0 {
                h.unhealthy_threshold
            } else {
                3
            },
        }),
    }
}

/// The fallback a breaker serves while open (default: a fast 503 that says so).
fn fallback(p: &pb::Policy) -> Option<Fallback> {
    let f = p.circuit_breaker.as_ref()?.fallback.as_ref()?;
    Some(Fallback {
        status: http::StatusCode::from_u16(u16::try_from(f.status).unwrap_or(503))
            .unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE),
        headers: f
            .headers
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    HeaderName::from_bytes(k.as_bytes()).ok()?,
                    HeaderValue::from_str(v).ok()?,
                ))
            })
            .collect(),
        body: bytes::Bytes::from(f.body.clone()),
    })
}
