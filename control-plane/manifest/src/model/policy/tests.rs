//! TrafficPolicy reading: every field lands in the `meshwork.v1.Policy` message, left-out fields keep the
//! proxies' defaults, and a field group that cannot be read drops the policy before the groups after it.

use meshwork_proto as pb;

use crate::diag::Sink;
use crate::model::{parse_document, ManifestSet};
use crate::source::yaml::parse_documents;

/// The policies read from `spec` (under a fixed header) and every diagnostic, in the order reported.
fn read(spec: &str) -> (Vec<pb::Policy>, Vec<String>) {
    let text = format!(
        "apiVersion: meshwork.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: p}}\nspec:\n{spec}"
    );
    let docs = match parse_documents(&text) {
        Ok(docs) => docs,
        Err(e) => panic!("invalid test YAML: {}", e.message),
    };
    let mut sink = Sink::new("p.yaml");
    let mut set = ManifestSet::default();
    for doc in &docs {
        parse_document(doc, &mut sink, &mut set);
    }
    let policies = set.policies.into_iter().map(|p| p.policy).collect();
    (
        policies,
        sink.diags.iter().map(ToString::to_string).collect(),
    )
}

#[test]
fn every_field_lands_in_the_message() {
    let (policies, errors) = read(
        r#"  targetRef: {group: meshwork.dev, kind: Service, name: api}
  timeouts: {request: 2s, perTry: 500ms, connect: 100ms, idle: 1m}
  retry:
    attempts: 3
    on: [5xx]
    statusCodes: [429]
    backoff: {base: 10ms, max: 1s}
    budget: {ratio: 0.5, minPerSecond: 5, enabled: false}
    nonIdempotent: true
  circuitBreaker:
    consecutiveFailures: 5
    failureRate: {threshold: 0.5, minRequests: 10, window: 30s}
    openFor: 1s
    maxOpenFor: 10s
    halfOpenProbes: 2
    fallback: {status: 502, headers: {x-fallback: "1"}, body: sorry}
  outlierDetection: {consecutive5xx: 3, consecutiveGatewayErrors: 2, baseEjectionTime: 10s, maxEjectionPercent: 30}
  rateLimit: {requestsPerSecond: 2.5, burst: 5, key: {header: X-User}, onLimit: queue, maxDelay: 200ms, side: server}
  bulkhead: {maxConcurrentRequests: 100, maxPending: 10}
  loadBalancer: {policy: consistent-hash, hashOn: {header: X-Session}}
  healthCheck: {path: /healthz, interval: 2s, timeout: 300ms, healthyThreshold: 2, unhealthyThreshold: 3}
  faultInjection:
    delay: {percent: 12.5, fixed: 50ms}
    abort: {percent: 1, grpcStatus: 14}
    header: {name: X-Fault, value: "on"}
"#,
    );
    assert_eq!(errors, Vec::<String>::new());
    let expected = pb::Policy {
        timeouts: Some(pb::Timeouts {
            request_ms: 2000,
            per_try_ms: 500,
            connect_ms: 100,
            idle_ms: 60_000,
        }),
        retry: Some(pb::Retry {
            attempts: 3,
            on: vec!["5xx".into(), "retriable-status-codes".into()],
            status_codes: vec![429],
            backoff_base_ms: 10,
            backoff_max_ms: 1000,
            budget_ratio: 0.5,
            budget_min_per_second: 5,
            budget_disabled: true,
            non_idempotent: true,
        }),
        circuit_breaker: Some(pb::CircuitBreaker {
            consecutive_failures: 5,
            failure_rate_threshold: 0.5,
            failure_rate_min_requests: 10,
            failure_rate_window_ms: 30_000,
            open_for_ms: 1000,
            max_open_for_ms: 10_000,
            half_open_probes: 2,
            fallback: Some(pb::Fallback {
                status: 502,
                headers: [("x-fallback".to_string(), "1".to_string())].into(),
                body: "sorry".into(),
            }),
        }),
        outlier_detection: Some(pb::OutlierDetection {
            consecutive_5xx: 3,
            consecutive_gateway_errors: 2,
            base_ejection_time_ms: 10_000,
            max_ejection_percent: 30,
        }),
        rate_limit: Some(pb::RateLimit {
            requests_per_second: 2.5,
            burst: 5,
            key: "header".into(),
            key_header: "x-user".into(),
            queue: true,
            max_delay_ms: 200,
            server_side: true,
        }),
        bulkhead: Some(pb::Bulkhead {
            max_concurrent_requests: 100,
            max_pending: 10,
        }),
        load_balancer: Some(pb::LoadBalancer {
            policy: "consistent-hash".into(),
            hash_on: "header".into(),
            hash_name: "x-session".into(),
        }),
        health_check: Some(pb::HealthCheck {
            path: "/healthz".into(),
            interval_ms: 2000,
            timeout_ms: 300,
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }),
        fault_injection: Some(pb::FaultInjection {
            delay_percent: 12.5,
            delay_ms: 50,
            abort_percent: 1.0,
            abort_status: 0,
            abort_grpc: true,
            abort_grpc_status: 14,
            header_name: "x-fault".into(),
            header_value: "on".into(),
        }),
    };
    assert_eq!(policies, [expected]);
}

#[test]
fn left_out_fields_keep_the_defaults() {
    let (policies, errors) = read(
        "  targetRef: {kind: HTTPRoute, name: r}
  retry: {}
  rateLimit: {requestsPerSecond: 10}
  loadBalancer: {}
  healthCheck: {}
  faultInjection: {abort: {status: 503}}
",
    );
    assert_eq!(errors, Vec::<String>::new());
    let [p] = policies.as_slice() else {
        panic!("expected one policy, got {policies:?}")
    };
    assert_eq!(p.timeouts, None);
    assert_eq!(
        p.retry,
        Some(pb::Retry {
            attempts: 2,
            ..Default::default()
        })
    );
    let rl = p
        .rate_limit
        .as_ref()
        .map(|r| (r.key.as_str(), r.queue, r.server_side));
    assert_eq!(rl, Some(("global", false, false)));
    let lb = p.load_balancer.as_ref().map(|l| l.policy.as_str());
    assert_eq!(lb, Some("peak-ewma"));
    let hc = p.health_check.as_ref().map(|h| h.path.as_str());
    assert_eq!(hc, Some("/"));
    let fi = p
        .fault_injection
        .as_ref()
        .map(|f| (f.abort_status, f.abort_grpc));
    assert_eq!(fi, Some((503, false)));
}

#[test]
fn an_unreadable_group_drops_the_policy_before_later_groups() {
    let (policies, errors) = read(
        "  targetRef: {kind: Service, name: api}
  timeouts: {request: soon}
  retry: [3]
  bulkhead: {}
",
    );
    assert_eq!(policies, []);
    assert_eq!(
        errors,
        [
            "p.yaml:6: spec.timeouts.request: expected a duration like \"250ms\" or \"1m30s\", got \"soon\" (expected a number)",
            "p.yaml:7: spec.retry: expected a mapping, got a list",
        ]
    );
}
