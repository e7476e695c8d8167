//! Admission control: `spec.rateLimit` (requests per second, by key, rejected or queued, client or server side)
//! and `spec.bulkhead` (requests in flight and waiting).

use meshwork_proto as pb;

use crate::model::read::Reader;
use crate::source::yaml::{Kind, Node};

pub(super) fn rate_limit(r: &mut Reader<'_>, n: &Node) -> Option<pb::RateLimit> {
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
        rate_limit_key(r, k, &mut rl)?;
    }
    if let Some(v) = o.get("onLimit") {
        rl.queue = r.choice(v, "spec.rateLimit.onLimit", &["reject", "queue"])? == "queue";
    }
    if rl.queue && rl.max_delay_ms == 0 {
        r.error(
            o.line,
            "spec.rateLimit.maxDelay",
            "required with onLimit: queue: expected the longest a request may wait, such as 500ms",
        );
    }
    if let Some(v) = o.get("side") {
        rl.server_side = r.choice(v, "spec.rateLimit.side", &["client", "server"])? == "server";
    }
    Some(rl)
}

/// `spec.rateLimit.key`: what gets its own bucket: nothing (`global`), each `sourceIP`, each `sourceService`, or
/// each value of `{header: NAME}`.
fn rate_limit_key(r: &mut Reader<'_>, k: &Node, rl: &mut pb::RateLimit) -> Option<()> {
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
    Some(())
}

pub(super) fn bulkhead(r: &mut Reader<'_>, n: &Node) -> Option<pb::Bulkhead> {
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
    Some(pb::Bulkhead {
        max_concurrent_requests: max,
        max_pending: r.opt_u32(&o, "maxPending", 0, 1_000_000).unwrap_or(0),
    })
}
