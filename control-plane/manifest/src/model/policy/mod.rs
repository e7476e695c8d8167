//! `meshwork.dev/v1alpha1` TrafficPolicy: resilience for a Service (every caller's outbound traffic to it, and
//! its own inbound proxies for `rateLimit.side: server`) or an HTTPRoute (per-request overrides). Read straight
//! into the `meshwork.v1.Policy` message the proxies get; defaults are the proxies' (docs/resilience.md).
//!
//! `parse` reads the target, then each field group of `spec` with its own function, in the order
//! docs/resilience.md lists them. The functions live by concern: `call` (timeouts, retry), `breaker` (circuit
//! breaker and its fallback), `admission` (rate limit, bulkhead), `balance` (load balancer, outlier
//! detection, health check), `fault` (fault injection). A group's function returns `None` when the group cannot
//! be read at all; its parts that fill fields of the group's message take that message by `&mut` and return
//! `Option<()>` in the same sense.

mod admission;
mod balance;
mod breaker;
mod call;
mod fault;
#[cfg(test)]
mod tests;

use std::time::Duration;

use meshwork_proto as pb;

use super::read::{Obj, Reader};
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
    let (target_kind, target_name, target_line) = target_ref(r, &s)?;
    // Read in this order (struct fields are evaluated as written): a group that cannot be read drops the policy
    // before the groups after it are looked at, so their errors are reported once this one is fixed.
    let policy = pb::Policy {
        timeouts: group(r, &s, "timeouts", call::timeouts)?,
        retry: group(r, &s, "retry", call::retry)?,
        circuit_breaker: group(r, &s, "circuitBreaker", breaker::circuit_breaker)?,
        outlier_detection: group(r, &s, "outlierDetection", balance::outlier_detection)?,
        rate_limit: group(r, &s, "rateLimit", admission::rate_limit)?,
        bulkhead: group(r, &s, "bulkhead", admission::bulkhead)?,
        load_balancer: group(r, &s, "loadBalancer", balance::load_balancer)?,
        health_check: group(r, &s, "healthCheck", balance::health_check)?,
        fault_injection: group(r, &s, "faultInjection", fault::fault_injection)?,
    };
    Some(TrafficPolicy {
        meta,
        target_kind,
        target_name,
        target_line,
        policy,
    })
}

/// `spec.targetRef`: the kind and name of the target, and the line of the reference.
fn target_ref(r: &mut Reader<'_>, s: &Obj<'_>) -> Option<(PolicyTargetKind, String, usize)> {
    let t = r.required(s, "targetRef", "a reference to a Service or an HTTPRoute")?;
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
    Some((target_kind, target_name, t.line))
}

/// The field group `spec.<key>` read by `read`: `Some(None)` if it is absent, `None` if it could not be read (the
/// reason is already reported, and the policy is dropped).
fn group<T>(
    r: &mut Reader<'_>,
    s: &Obj<'_>,
    key: &str,
    read: impl FnOnce(&mut Reader<'_>, &Node) -> Option<T>,
) -> Option<Option<T>> {
    match s.get(key) {
        Some(n) => read(r, n).map(Some),
        None => Some(None),
    }
}
