//! Admin listener: `/live`, `/ready` (200 once the first snapshot is applied), `/config_dump` (JSON), `/metrics`
//! (Prometheus text: Wasm filters, resilience layers, mTLS handshakes and the certificate's expiry).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::net::TcpListener;

use crate::config::ConfigStore;
use crate::listener::{self, FdBudget, Limits};
use crate::upstream::client_body::ClientBody;

pub struct AdminState {
    pub store: Arc<ConfigStore>,
    pub wasm: Arc<crate::filter::wasm::LazyWasm>,
    pub resilience: Arc<crate::resilience::Registry>,
    pub node_id: String,
    /// Who this proxy is (its certificate's identity and expiry; never the key).
    pub identity: Arc<crate::identity::MeshIdentity>,
    /// mTLS handshakes between proxies, both sides.
    pub tls: Arc<crate::tls::TlsMetrics>,
    /// Gateway HTTPS listeners' certificates (expiry, reloads).
    pub serving: Arc<crate::tls::serving::ServingCerts>,
    /// AuthorizationPolicy decisions.
    pub authz: Arc<crate::authz::Stats>,
    /// Request metrics of every listener (golden metrics).
    pub http: Arc<crate::telemetry::HttpMetrics>,
    pub role: &'static str,
    /// Set when the proxy is shutting down: `/ready` answers 503 so load balancers stop sending here.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

fn route(state: &AdminState, req: &Request<ClientBody>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/live" => respond(StatusCode::OK, "text/plain", "live\n"),
        "/ready" => {
            let v = state.store.version();
            if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: shutting down\n",
                )
            } else if v > 0 {
                respond(
                    StatusCode::OK,
                    "text/plain",
                    format!("ready: config version {v}\n"),
                )
            } else {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: no configuration applied yet\n",
                )
            }
        }
        "/config_dump" => {
            let snap = state.store.load();
            let dump = serde_json::json!({
                "node_id": state.node_id,
                "role": state.role,
                "identity": state.identity.dump(),
                "version": snap.version,
                "snapshot": crate::config::dump::redacted(&snap.source),
            });
            match serde_json::to_vec_pretty(&dump) {
                Ok(body) => respond(StatusCode::OK, "application/json", body),
                Err(e) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    e.to_string(),
                ),
            }
        }
        "/metrics" => respond(StatusCode::OK, "text/plain; version=0.0.4", metrics(state)),
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "admin endpoints: /live /ready /config_dump /metrics\n",
        ),
    }
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// What each resilience layer did, per upstream service (`route/...` for a route's own policy, `inbound` for a
/// server-side rate limit).
fn resilience_metrics(out: &mut String, registry: &crate::resilience::Registry) {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let all = registry.all();
    type Get = fn(&crate::resilience::Counters) -> &std::sync::atomic::AtomicU64;
    let counters: [(&str, &str, Get); 15] = [
        (
            "meshwork_upstream_requests_total",
            "Requests to the upstream service (before retries).",
            |c| &c.requests,
        ),
        ("meshwork_retries_total", "Retries sent.", |c| &c.retries),
        (
            "meshwork_retry_budget_exhausted_total",
            "Retries not sent because the retry budget was spent.",
            |c| &c.budget_exhausted,
        ),
        (
            "meshwork_circuit_breaker_rejected_total",
            "Requests answered by an open circuit.",
            |c| &c.breaker_rejected,
        ),
        (
            "meshwork_circuit_breaker_opened_total",
            "Transitions to open.",
            |c| &c.breaker_opened,
        ),
        (
            "meshwork_circuit_breaker_half_opened_total",
            "Transitions to half-open.",
            |c| &c.breaker_half_opened,
        ),
        (
            "meshwork_circuit_breaker_closed_total",
            "Transitions back to closed.",
            |c| &c.breaker_closed,
        ),
        (
            "meshwork_outlier_ejections_total",
            "Endpoints ejected by outlier detection.",
            |c| &c.ejections,
        ),
        (
            "meshwork_rate_limited_total",
            "Requests rejected by a rate limit (429).",
            |c| &c.rate_limited,
        ),
        (
            "meshwork_rate_limit_queued_total",
            "Requests delayed by a rate limit in queue mode.",
            |c| &c.rate_queued,
        ),
        (
            "meshwork_bulkhead_rejected_total",
            "Requests rejected by a full bulkhead.",
            |c| &c.bulkhead_rejected,
        ),
        ("meshwork_fault_delays_total", "Injected delays.", |c| {
            &c.fault_delays
        }),
        ("meshwork_fault_aborts_total", "Injected aborts.", |c| {
            &c.fault_aborts
        }),
        (
            "meshwork_upstream_timeouts_total",
            "Per-try or total timeouts.",
            |c| &c.timeouts,
        ),
        (
            "meshwork_health_check_failures_total",
            "Failed active health checks.",
            |c| &c.health_check_failures,
        ),
    ];
    for (name, help, get) in counters {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for rt in &all {
            let _ = writeln!(
                out,
                "{name}{{cluster=\"{}\"}} {}",
                label(&rt.name),
                get(&rt.counters).load(Relaxed)
            );
        }
    }
    let _ = writeln!(out, "# HELP meshwork_circuit_breaker_state Circuit breaker state: 0 closed, 1 open, 2 half-open.");
    let _ = writeln!(out, "# TYPE meshwork_circuit_breaker_state gauge");
    for rt in &all {
        if let Some(b) = &rt.breaker {
            let _ = writeln!(
                out,
                "meshwork_circuit_breaker_state{{cluster=\"{}\"}} {}",
                label(&rt.name),
                b.state().gauge()
            );
        }
    }
    let _ = writeln!(out, "# HELP meshwork_endpoints_unavailable Endpoints currently ejected or failing health checks.");
    let _ = writeln!(out, "# TYPE meshwork_endpoints_unavailable gauge");
    let now = crate::resilience::clock::now_nanos();
    for rt in &all {
        let out_of_set = rt
            .endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .filter(|e| !e.available(now))
            .count();
        let _ = writeln!(
            out,
            "meshwork_endpoints_unavailable{{cluster=\"{}\"}} {out_of_set}",
            label(&rt.name)
        );
    }
    let _ = writeln!(
        out,
        "# HELP meshwork_bulkhead_in_flight Requests holding a bulkhead slot."
    );
    let _ = writeln!(out, "# TYPE meshwork_bulkhead_in_flight gauge");
    for rt in &all {
        if let Some(b) = &rt.bulkhead {
            let _ = writeln!(
                out,
                "meshwork_bulkhead_in_flight{{cluster=\"{}\"}} {}",
                label(&rt.name),
                b.in_flight()
            );
        }
    }
}

/// Prometheus text format: Wasm filter failures by plugin and kind, and the metrics filters defined.
fn metrics(state: &AdminState) -> String {
    use std::fmt::Write;
    let snap = state.store.load();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP meshwork_config_version Version of the applied configuration snapshot."
    );
    let _ = writeln!(out, "# TYPE meshwork_config_version gauge");
    let _ = writeln!(out, "meshwork_config_version {}", snap.version);
    let _ = writeln!(out, "# HELP meshwork_authz_decisions_total Requests an AuthorizationPolicy denied (deny) or audited (audit).");
    let _ = writeln!(out, "# TYPE meshwork_authz_decisions_total counter");
    for (policy, outcome, n) in state.authz.snapshot() {
        let _ = writeln!(
            out,
            "meshwork_authz_decisions_total{{policy=\"{}\",outcome=\"{outcome}\"}} {n}",
            label(&policy)
        );
    }
    resilience_metrics(&mut out, &state.resilience);
    state
        .tls
        .write(&mut out, state.identity.current().as_deref());
    state.serving.write_metrics(&mut out);
    if let Some(cache) = state.wasm.existing().and_then(|w| w.cache.as_ref()) {
        let _ = writeln!(out, "# HELP meshwork_wasm_compile_cache_total Module compilations served from the on-disk cache (hit) or compiled (miss).");
        let _ = writeln!(out, "# TYPE meshwork_wasm_compile_cache_total counter");
        let _ = writeln!(
            out,
            "meshwork_wasm_compile_cache_total{{result=\"hit\"}} {}",
            cache.cache_hits()
        );
        let _ = writeln!(
            out,
            "meshwork_wasm_compile_cache_total{{result=\"miss\"}} {}",
            cache.cache_misses()
        );
    }
    state.http.encode(&mut out);
    out
}

/// Serves the admin endpoints under the same connection deadlines as the data path, with a small cap of its
/// own (it never shares the data listeners' budget, so a flood there leaves `/ready` answering).
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, limits: Arc<Limits>) {
    let handler = move |req: Request<ClientBody>, _peer| {
        let resp = route(&state, &req);
        async move { resp }
    };
    let (_never, stop) = tokio::sync::watch::channel(false);
    let budget = FdBudget::new(limits.max_connections);
    listener::serve_with(
        listener,
        handler,
        stop,
        Duration::ZERO,
        limits,
        budget,
        listener::PerConnection::default(),
    )
    .await
}
