//! `meshwork.dev/v1alpha1` TrafficPolicy: resilience for a Service (every caller's outbound traffic to it, and
//! its own inbound proxies for `rateLimit.side: server`) or an HTTPRoute (per-request overrides). Read straight
//! into the `meshwork.v1.Policy` message the proxies get; defaults are the proxies' (docs/resilience.md).

use std::time::Duration;

use meshwork_proto as pb;

use super::read::{index, Obj, Reader};
use super::Meta;
use crate::source::yaml::{Kind, Node};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyTargetKind {
    Service,
    HttpRoute,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrafficPolicy {
    pub meta: Meta,
    pub target_kind: PolicyTargetKind,
    pub target_name: String,
    pub target_line: usize,
    pub policy: pb::Policy,
}

const RETRY_ON: &[&str] = &[
    "connect-failure",
    "refused-stream",
    "reset",
    "5xx",
    "gateway-error",
    "retriable-status-codes",
    "cancelled",
    "deadline-exceeded",
    "resource-exhausted",
    "unavailable",
];

fn ms(d: Duration) -> u64 {
    d.as_millis().max(1) as u64
}

impl Reader<'_> {
    fn float(&mut self, node: &Node, path: &str, min: f64, max: f64) -> Option<f64> {
        let parsed = match &node.kind {
            Kind::Scalar {
                value,
                quoted: false,
            } => value.parse::<f64>().ok(),
            _ => None,
        };
        match parsed {
            Some(v) if v.is_finite() && (min..=max).contains(&v) => Some(v),
            _ => {
                self.error(
                    node.line,
                    path,
                    format!(
                        "expected a number from {min} to {max}, got {}",
                        node.describe()
                    ),
                );
                None
            }
        }
    }

    fn opt_duration(&mut self, o: &Obj<'_>, key: &str) -> Option<Duration> {
        let n = o.get(key)?;
        self.duration(n, &o.field(key))
    }

    fn opt_ms(&mut self, o: &Obj<'_>, key: &str) -> u64 {
        self.opt_duration(o, key).map_or(0, ms)
    }

    fn opt_u32(&mut self, o: &Obj<'_>, key: &str, min: i64, max: i64) -> Option<u32> {
        let n = o.get(key)?;
        self.int(n, &o.field(key), min, max).map(|v| v as u32)
    }

    fn opt_bool(&mut self, o: &Obj<'_>, key: &str) -> bool {
        let Some(n) = o.get(key) else { return false };
        match n.as_scalar() {
            Some("true") => true,
            Some("false") => false,
            _ => {
                self.error(
                    n.line,
                    o.field(key),
                    format!("expected true or false, got {}", n.describe()),
                );
                false
            }
        }
    }

    /// A percentage 0-100 (fractions allowed).
    fn percent(&mut self, o: &Obj<'_>, key: &str) -> f64 {
        o.get(key)
            .and_then(|n| self.float(n, &o.field(key), 0.0, 100.0))
            .unwrap_or(0.0)
    }
}

pub(super) fn parse(r: &mut Reader<'_>, meta: Meta, spec: &Node) -> Option<TrafficPolicy> {
    let s = r.obj(
        spec,
        "spec",
        &[
            "targetRef",
            "timeouts",
            "retry",
            "circuitBreaker",
            "outlierDetection",
            "rateLimit",
            "bulkhead",
            "loadBalancer",
            "healthCheck",
            "faultInjection",
        ],
    )?;
    let t = r.required(&s, "targetRef", "a reference to a Service or an HTTPRoute")?;
    let t = r.obj(t, "spec.targetRef", &["group", "kind", "name"])?;
    if let Some(g) = t.get("group") {
        r.string(g, &t.field("group"));
    }
    let target_kind = match r
        .required(&t, "kind", "Service or HTTPRoute")
        .and_then(|k| r.choice(k, &t.field("kind"), &["Service", "HTTPRoute"]))?
        .as_str()
    {
        "Service" => PolicyTargetKind::Service,
        _ => PolicyTargetKind::HttpRoute,
    };
    let target_name = r.req_string(&t, "name", "the target's name")?;
    let mut p = pb::Policy::default();

    if let Some(n) = s.get("timeouts") {
        let o = r.obj(
            n,
            "spec.timeouts",
            &["request", "perTry", "connect", "idle"],
        )?;
        p.timeouts = Some(pb::Timeouts {
            request_ms: r.opt_ms(&o, "request"),
            per_try_ms: r.opt_ms(&o, "perTry"),
            connect_ms: r.opt_ms(&o, "connect"),
            idle_ms: r.opt_ms(&o, "idle"),
        });
    }
    if let Some(n) = s.get("retry") {
        let o = r.obj(
            n,
            "spec.retry",
            &[
                "attempts",
                "on",
                "statusCodes",
                "backoff",
                "budget",
                "nonIdempotent",
            ],
        )?;
        let mut retry = pb::Retry {
            attempts: r.opt_u32(&o, "attempts", 0, 10).unwrap_or(2),
            non_idempotent: r.opt_bool(&o, "nonIdempotent"),
            ..Default::default()
        };
        if let Some(list) = o.get("on") {
            for (i, item) in r
                .list(list, "spec.retry.on")
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                if let Some(c) = r.choice(item, &index("spec.retry.on", i), RETRY_ON) {
                    retry.on.push(c);
                }
            }
        }
        if let Some(list) = o.get("statusCodes") {
            for (i, item) in r
                .list(list, "spec.retry.statusCodes")
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                if let Some(c) = r.int(item, &index("spec.retry.statusCodes", i), 100, 599) {
                    retry.status_codes.push(c as u32);
                }
            }
            if !retry.status_codes.is_empty()
                && !retry.on.iter().any(|o| o == "retriable-status-codes")
            {
                retry.on.push("retriable-status-codes".into());
            }
        }
        if let Some(b) = o.get("backoff") {
            let b = r.obj(b, "spec.retry.backoff", &["base", "max"])?;
            retry.backoff_base_ms = r.opt_ms(&b, "base");
            retry.backoff_max_ms = r.opt_ms(&b, "max");
            if retry.backoff_max_ms != 0 && retry.backoff_max_ms < retry.backoff_base_ms {
                r.error(
                    b.line,
                    "spec.retry.backoff.max",
                    "expected max to be at least base",
                );
            }
        }
        if let Some(b) = o.get("budget") {
            let b = r.obj(
                b,
                "spec.retry.budget",
                &["ratio", "minPerSecond", "enabled"],
            )?;
            if let Some(v) = b.get("ratio") {
                retry.budget_ratio = r
                    .float(v, "spec.retry.budget.ratio", 0.0, 1000.0)
                    .unwrap_or(0.0);
            }
            retry.budget_min_per_second = r.opt_u32(&b, "minPerSecond", 0, 1_000_000).unwrap_or(0);
            if let Some(e) = b.get("enabled") {
                retry.budget_disabled = e.as_scalar() == Some("false");
                if !matches!(e.as_scalar(), Some("true" | "false")) {
                    r.error(
                        e.line,
                        "spec.retry.budget.enabled",
                        format!("expected true or false, got {}", e.describe()),
                    );
                }
            }
        }
        p.retry = Some(retry);
    }
    if let Some(n) = s.get("circuitBreaker") {
        let o = r.obj(
            n,
            "spec.circuitBreaker",
            &[
                "consecutiveFailures",
                "failureRate",
                "openFor",
                "maxOpenFor",
                "halfOpenProbes",
                "fallback",
            ],
        )?;
        let mut cb = pb::CircuitBreaker {
            consecutive_failures: r
                .opt_u32(&o, "consecutiveFailures", 1, 1_000_000)
                .unwrap_or(0),
            open_for_ms: r.opt_ms(&o, "openFor"),
            max_open_for_ms: r.opt_ms(&o, "maxOpenFor"),
            half_open_probes: r.opt_u32(&o, "halfOpenProbes", 1, 1000).unwrap_or(0),
            ..Default::default()
        };
        if let Some(f) = o.get("failureRate") {
            let f = r.obj(
                f,
                "spec.circuitBreaker.failureRate",
                &["threshold", "minRequests", "window"],
            )?;
            match f.get("threshold") {
                Some(v) => {
                    cb.failure_rate_threshold = r
                        .float(v, "spec.circuitBreaker.failureRate.threshold", 0.01, 1.0)
                        .unwrap_or(0.0)
                }
                None => r.error(
                    f.line,
                    "spec.circuitBreaker.failureRate.threshold",
                    "required field is missing: expected a failure ratio such as 0.5",
                ),
            }
            cb.failure_rate_min_requests = r.opt_u32(&f, "minRequests", 1, 1_000_000).unwrap_or(0);
            cb.failure_rate_window_ms = r.opt_ms(&f, "window");
        }
        if cb.consecutive_failures == 0 && cb.failure_rate_threshold == 0.0 {
            r.error(
                o.line,
                "spec.circuitBreaker",
                "expected consecutiveFailures or failureRate (what opens the circuit)",
            );
        }
        if cb.max_open_for_ms != 0 && cb.max_open_for_ms < cb.open_for_ms {
            r.error(
                o.line,
                "spec.circuitBreaker.maxOpenFor",
                "expected maxOpenFor to be at least openFor",
            );
        }
        if let Some(f) = o.get("fallback") {
            let f = r.obj(
                f,
                "spec.circuitBreaker.fallback",
                &["status", "headers", "body"],
            )?;
            cb.fallback = Some(pb::Fallback {
                status: r.opt_u32(&f, "status", 200, 599).unwrap_or(503),
                headers: f
                    .get("headers")
                    .map(|h| {
                        r.string_map(h, "spec.circuitBreaker.fallback.headers")
                            .into_iter()
                            .collect()
                    })
                    .unwrap_or_default(),
                body: r.opt_string(&f, "body").unwrap_or_default(),
            });
        }
        p.circuit_breaker = Some(cb);
    }
    if let Some(n) = s.get("outlierDetection") {
        let o = r.obj(
            n,
            "spec.outlierDetection",
            &[
                "consecutive5xx",
                "consecutiveGatewayErrors",
                "baseEjectionTime",
                "maxEjectionPercent",
            ],
        )?;
        p.outlier_detection = Some(pb::OutlierDetection {
            consecutive_5xx: r.opt_u32(&o, "consecutive5xx", 1, 1_000_000).unwrap_or(0),
            consecutive_gateway_errors: r
                .opt_u32(&o, "consecutiveGatewayErrors", 1, 1_000_000)
                .unwrap_or(0),
            base_ejection_time_ms: r.opt_ms(&o, "baseEjectionTime"),
            max_ejection_percent: r.opt_u32(&o, "maxEjectionPercent", 0, 100).unwrap_or(0),
        });
    }
    if let Some(n) = s.get("rateLimit") {
        let o = r.obj(
            n,
            "spec.rateLimit",
            &[
                "requestsPerSecond",
                "burst",
                "key",
                "onLimit",
                "maxDelay",
                "side",
            ],
        )?;
        let rps = match o.get("requestsPerSecond") {
            Some(v) => r
                .float(v, "spec.rateLimit.requestsPerSecond", 0.001, 1e9)
                .unwrap_or(1.0),
            None => {
                r.error(
                    o.line,
                    "spec.rateLimit.requestsPerSecond",
                    "required field is missing: expected the sustained rate, such as 100",
                );
                1.0
            }
        };
        let mut rl = pb::RateLimit {
            requests_per_second: rps,
            burst: r.opt_u32(&o, "burst", 1, 1_000_000_000).unwrap_or(0),
            key: "global".into(),
            max_delay_ms: r.opt_ms(&o, "maxDelay"),
            ..Default::default()
        };
        if let Some(k) = o.get("key") {
            match &k.kind {
                Kind::Map(_) => {
                    let ko = r.obj(k, "spec.rateLimit.key", &["header"])?;
                    rl.key = "header".into();
                    rl.key_header = r
                        .req_string(&ko, "header", "the header whose value is the client's key")?
                        .to_ascii_lowercase();
                }
                _ => {
                    rl.key = r.choice(
                        k,
                        "spec.rateLimit.key",
                        &["global", "sourceIP", "sourceService"],
                    )?
                }
            }
        }
        if let Some(v) = o.get("onLimit") {
            rl.queue = r.choice(v, "spec.rateLimit.onLimit", &["reject", "queue"])? == "queue";
        }
        if rl.queue && rl.max_delay_ms == 0 {
            r.error(o.line, "spec.rateLimit.maxDelay", "required with onLimit: queue: expected the longest a request may wait, such as 500ms");
        }
        if let Some(v) = o.get("side") {
            rl.server_side = r.choice(v, "spec.rateLimit.side", &["client", "server"])? == "server";
        }
        p.rate_limit = Some(rl);
    }
    if let Some(n) = s.get("bulkhead") {
        let o = r.obj(n, "spec.bulkhead", &["maxConcurrentRequests", "maxPending"])?;
        let max = match o.get("maxConcurrentRequests") {
            Some(max) => r
                .int(max, "spec.bulkhead.maxConcurrentRequests", 1, 1_000_000)
                .unwrap_or(1) as u32,
            None => {
                r.error(
                    o.line,
                    "spec.bulkhead.maxConcurrentRequests",
                    "required field is missing: expected the most requests in flight, such as 100",
                );
                1
            }
        };
        p.bulkhead = Some(pb::Bulkhead {
            max_concurrent_requests: max,
            max_pending: r.opt_u32(&o, "maxPending", 0, 1_000_000).unwrap_or(0),
        });
    }
    if let Some(n) = s.get("loadBalancer") {
        const POLICIES: &[&str] = &[
            "round-robin",
            "random",
            "least-request",
            "peak-ewma",
            "consistent-hash",
        ];
        let mut lb = pb::LoadBalancer::default();
        match &n.kind {
            Kind::Map(_) => {
                let o = r.obj(n, "spec.loadBalancer", &["policy", "hashOn"])?;
                lb.policy = match o.get("policy") {
                    Some(v) => r.choice(v, "spec.loadBalancer.policy", POLICIES)?,
                    None => "peak-ewma".into(),
                };
                if let Some(h) = o.get("hashOn") {
                    match &h.kind {
                        Kind::Map(_) => {
                            let ho = r.obj(h, "spec.loadBalancer.hashOn", &["header", "cookie"])?;
                            if let Some(v) = r.opt_string(&ho, "header") {
                                lb.hash_on = "header".into();
                                lb.hash_name = v.to_ascii_lowercase();
                            } else if let Some(v) = r.opt_string(&ho, "cookie") {
                                lb.hash_on = "cookie".into();
                                lb.hash_name = v;
                            } else {
                                r.error(
                                    ho.line,
                                    "spec.loadBalancer.hashOn",
                                    "expected header: NAME, cookie: NAME or sourceIP",
                                );
                            }
                        }
                        _ => lb.hash_on = r.choice(h, "spec.loadBalancer.hashOn", &["sourceIP"])?,
                    }
                }
            }
            _ => lb.policy = r.choice(n, "spec.loadBalancer", POLICIES)?,
        }
        if lb.policy == "consistent-hash" && lb.hash_on.is_empty() {
            r.error(
                n.line,
                "spec.loadBalancer.hashOn",
                "required with consistent-hash: expected header: NAME, cookie: NAME or sourceIP",
            );
        }
        p.load_balancer = Some(lb);
    }
    if let Some(n) = s.get("healthCheck") {
        let o = r.obj(
            n,
            "spec.healthCheck",
            &[
                "path",
                "interval",
                "timeout",
                "healthyThreshold",
                "unhealthyThreshold",
            ],
        )?;
        let path = r.opt_string(&o, "path").unwrap_or_else(|| "/".into());
        if !path.starts_with('/') {
            r.error(
                o.line,
                "spec.healthCheck.path",
                format!("expected an absolute path such as /healthz, got {path:?}"),
            );
        }
        p.health_check = Some(pb::HealthCheck {
            path,
            interval_ms: r.opt_ms(&o, "interval"),
            timeout_ms: r.opt_ms(&o, "timeout"),
            healthy_threshold: r.opt_u32(&o, "healthyThreshold", 1, 1000).unwrap_or(0),
            unhealthy_threshold: r.opt_u32(&o, "unhealthyThreshold", 1, 1000).unwrap_or(0),
        });
    }
    if let Some(n) = s.get("faultInjection") {
        let o = r.obj(n, "spec.faultInjection", &["delay", "abort", "header"])?;
        let mut f = pb::FaultInjection::default();
        if let Some(d) = o.get("delay") {
            let d = r.obj(d, "spec.faultInjection.delay", &["percent", "fixed"])?;
            f.delay_percent = r.percent(&d, "percent");
            f.delay_ms = match d.get("fixed") {
                Some(v) => r
                    .duration(v, "spec.faultInjection.delay.fixed")
                    .map_or(0, ms),
                None => {
                    r.error(
                        d.line,
                        "spec.faultInjection.delay.fixed",
                        "required field is missing: expected a duration such as 200ms",
                    );
                    0
                }
            };
        }
        if let Some(a) = o.get("abort") {
            let a = r.obj(
                a,
                "spec.faultInjection.abort",
                &["percent", "status", "grpcStatus"],
            )?;
            f.abort_percent = r.percent(&a, "percent");
            match (a.get("status"), a.get("grpcStatus")) {
                (Some(v), None) => {
                    f.abort_status = r
                        .int(v, "spec.faultInjection.abort.status", 200, 599)
                        .unwrap_or(503) as u32
                }
                (None, Some(v)) => {
                    f.abort_grpc = true;
                    f.abort_grpc_status = r
                        .int(v, "spec.faultInjection.abort.grpcStatus", 1, 16)
                        .unwrap_or(14) as u32;
                }
                _ => r.error(
                    a.line,
                    "spec.faultInjection.abort",
                    "expected exactly one of status (HTTP) or grpcStatus",
                ),
            }
        }
        if let Some(h) = o.get("header") {
            let h = r.obj(h, "spec.faultInjection.header", &["name", "value"])?;
            f.header_name = r
                .req_string(
                    &h,
                    "name",
                    "the header that marks requests to inject faults into",
                )?
                .to_ascii_lowercase();
            f.header_value = r.opt_string(&h, "value").unwrap_or_default();
        }
        p.fault_injection = Some(f);
    }
    Some(TrafficPolicy {
        meta,
        target_kind,
        target_name,
        target_line: t.line,
        policy: p,
    })
}
