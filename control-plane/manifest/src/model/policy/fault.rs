//! `spec.faultInjection`: delays and aborts injected into a share of requests, optionally only into requests
//! that carry a marker header.

use meshwork_proto as pb;

use super::ms;
use crate::model::read::Reader;
use crate::source::yaml::Node;

pub(super) fn fault_injection(r: &mut Reader<'_>, n: &Node) -> Option<pb::FaultInjection> {
    let o = r.obj(n, "spec.faultInjection", &["delay", "abort", "header"])?;
    let mut f = pb::FaultInjection::default();
    if let Some(d) = o.get("delay") {
        delay(r, d, &mut f)?;
    }
    if let Some(a) = o.get("abort") {
        abort(r, a, &mut f)?;
    }
    if let Some(h) = o.get("header") {
        header(r, h, &mut f)?;
    }
    Some(f)
}

/// `spec.faultInjection.delay`: `percent` of requests wait `fixed` (required).
fn delay(r: &mut Reader<'_>, n: &Node, f: &mut pb::FaultInjection) -> Option<()> {
    let d = r.obj(n, "spec.faultInjection.delay", &["percent", "fixed"])?;
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
    Some(())
}

/// `spec.faultInjection.abort`: `percent` of requests get an HTTP `status` or a `grpcStatus` (exactly one).
fn abort(r: &mut Reader<'_>, n: &Node, f: &mut pb::FaultInjection) -> Option<()> {
    let a = r.obj(
        n,
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
    Some(())
}

/// `spec.faultInjection.header`: faults only for requests with this header (and this value, if given).
fn header(r: &mut Reader<'_>, n: &Node, f: &mut pb::FaultInjection) -> Option<()> {
    let h = r.obj(n, "spec.faultInjection.header", &["name", "value"])?;
    f.header_name = r
        .req_string(
            &h,
            "name",
            "the header that marks requests to inject faults into",
        )?
        .to_ascii_lowercase();
    f.header_value = r.opt_string(&h, "value").unwrap_or_default();
    Some(())
}
