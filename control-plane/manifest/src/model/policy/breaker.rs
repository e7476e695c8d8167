//! `spec.circuitBreaker`: what opens the circuit (consecutive failures, a failure rate), how long it stays open,
//! the half-open probes, and the fallback reply while it is open.

use meshwork_proto as pb;

use crate::model::read::Reader;
use crate::source::yaml::Node;

pub(super) fn circuit_breaker(r: &mut Reader<'_>, n: &Node) -> Option<pb::CircuitBreaker> {
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
        failure_rate(r, f, &mut cb)?;
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
        cb.fallback = Some(fallback(r, f)?);
    }
    Some(cb)
}

/// `spec.circuitBreaker.failureRate`: the failure ratio that opens the circuit, over at least `minRequests` in the
/// `window`.
fn failure_rate(r: &mut Reader<'_>, n: &Node, cb: &mut pb::CircuitBreaker) -> Option<()> {
    let f = r.obj(
        n,
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
    Some(())
}

/// `spec.circuitBreaker.fallback`: the reply callers get while the circuit is open (503 unless set).
fn fallback(r: &mut Reader<'_>, n: &Node) -> Option<pb::Fallback> {
    let f = r.obj(
        n,
        "spec.circuitBreaker.fallback",
        &["status", "headers", "body"],
    )?;
    Some(pb::Fallback {
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
    })
}
