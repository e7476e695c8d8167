//! Which endpoint gets a call: `spec.loadBalancer` (the policy, and what consistent hashing hashes on), and the
//! endpoints it skips: `spec.outlierDetection` (passive ejection) and `spec.healthCheck` (active checks).

use meshwork_proto as pb;

use crate::model::read::Reader;
use crate::source::yaml::{Kind, Node};

const POLICIES: &[&str] = &[
    "round-robin",
    "random",
    "least-request",
    "peak-ewma",
    "consistent-hash",
];

/// Either a policy name, or a map with `policy` (peak-ewma unless set) and `hashOn`.
pub(super) fn load_balancer(r: &mut Reader<'_>, n: &Node) -> Option<pb::LoadBalancer> {
    let mut lb = pb::LoadBalancer::default();
    match &n.kind {
        Kind::Map(_) => {
            let o = r.obj(n, "spec.loadBalancer", &["policy", "hashOn"])?;
            lb.policy = match o.get("policy") {
                Some(v) => r.choice(v, "spec.loadBalancer.policy", POLICIES)?,
                None => "peak-ewma".into(),
            };
            if let Some(h) = o.get("hashOn") {
                hash_on(r, h, &mut lb)?;
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
    Some(lb)
}

/// `spec.loadBalancer.hashOn`: `header: NAME`, `cookie: NAME` or `sourceIP`.
fn hash_on(r: &mut Reader<'_>, h: &Node, lb: &mut pb::LoadBalancer) -> Option<()> {
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
    Some(())
}

pub(super) fn outlier_detection(r: &mut Reader<'_>, n: &Node) -> Option<pb::OutlierDetection> {
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
    Some(pb::OutlierDetection {
        consecutive_5xx: r.opt_u32(&o, "consecutive5xx", 1, 1_000_000).unwrap_or(0),
        consecutive_gateway_errors: r
            .opt_u32(&o, "consecutiveGatewayErrors", 1, 1_000_000)
            .unwrap_or(0),
        base_ejection_time_ms: r.opt_ms(&o, "baseEjectionTime"),
        max_ejection_percent: r.opt_u32(&o, "maxEjectionPercent", 0, 100).unwrap_or(0),
    })
}

pub(super) fn health_check(r: &mut Reader<'_>, n: &Node) -> Option<pb::HealthCheck> {
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
    Some(pb::HealthCheck {
        path,
        interval_ms: r.opt_ms(&o, "interval"),
        timeout_ms: r.opt_ms(&o, "timeout"),
        healthy_threshold: r.opt_u32(&o, "healthyThreshold", 1, 1000).unwrap_or(0),
        unhealthy_threshold: r.opt_u32(&o, "unhealthyThreshold", 1, 1000).unwrap_or(0),
    })
}
