//! `spec.timeouts` and `spec.retry` (with its backoff and budget): how long one call may take, and when and how
//! often it is tried again.

use meshwork_proto as pb;

use crate::model::read::{index, Reader};
use crate::source::yaml::Node;

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

pub(super) fn timeouts(r: &mut Reader<'_>, n: &Node) -> Option<pb::Timeouts> {
    let o = r.obj(
        n,
        "spec.timeouts",
        &["request", "perTry", "connect", "idle"],
    )?;
    Some(pb::Timeouts {
        request_ms: r.opt_ms(&o, "request"),
        per_try_ms: r.opt_ms(&o, "perTry"),
        connect_ms: r.opt_ms(&o, "connect"),
        idle_ms: r.opt_ms(&o, "idle"),
    })
}

pub(super) fn retry(r: &mut Reader<'_>, n: &Node) -> Option<pb::Retry> {
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
        retry.on = retry_on(r, list);
    }
    if let Some(list) = o.get("statusCodes") {
        retry.status_codes = status_codes(r, list);
        // Listing codes is enough to retry on them.
        if !retry.status_codes.is_empty() && !retry.on.iter().any(|o| o == "retriable-status-codes")
        {
            retry.on.push("retriable-status-codes".into());
        }
    }
    if let Some(b) = o.get("backoff") {
        backoff(r, b, &mut retry)?;
    }
    if let Some(b) = o.get("budget") {
        budget(r, b, &mut retry)?;
    }
    Some(retry)
}

/// `spec.retry.on`: the conditions, each one of [`RETRY_ON`]; unknown ones are reported and left out.
fn retry_on(r: &mut Reader<'_>, list: &Node) -> Vec<String> {
    let mut on = Vec::new();
    for (i, item) in r
        .list(list, "spec.retry.on")
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        if let Some(c) = r.choice(item, &index("spec.retry.on", i), RETRY_ON) {
            on.push(c);
        }
    }
    on
}

/// `spec.retry.statusCodes`: HTTP statuses; invalid ones are reported and left out.
fn status_codes(r: &mut Reader<'_>, list: &Node) -> Vec<u32> {
    let mut codes = Vec::new();
    for (i, item) in r
        .list(list, "spec.retry.statusCodes")
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        if let Some(c) = r.int(item, &index("spec.retry.statusCodes", i), 100, 599) {
            codes.push(c as u32);
        }
    }
    codes
}

/// `spec.retry.backoff`: the base and the cap of the delay between attempts.
fn backoff(r: &mut Reader<'_>, n: &Node, retry: &mut pb::Retry) -> Option<()> {
    let b = r.obj(n, "spec.retry.backoff", &["base", "max"])?;
    retry.backoff_base_ms = r.opt_ms(&b, "base");
    retry.backoff_max_ms = r.opt_ms(&b, "max");
    if retry.backoff_max_ms != 0 && retry.backoff_max_ms < retry.backoff_base_ms {
        r.error(
            b.line,
            "spec.retry.backoff.max",
            "expected max to be at least base",
        );
    }
    Some(())
}

/// `spec.retry.budget`: over 10 s, retries may add at most `ratio` x requests + `minPerSecond` x 10;
/// `enabled: false` turns the limit off.
fn budget(r: &mut Reader<'_>, n: &Node, retry: &mut pb::Retry) -> Option<()> {
    let b = r.obj(
        n,
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
    Some(())
}
