//! Admin listener: `/live`, `/ready` (200 once the first snapshot is applied), `/config_dump` (JSON), `/metrics`
//! (Prometheus text: every family of the proxy's one registry).

pub mod families;

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
    pub node_id: String,
    /// Who this proxy is (its certificate's identity and expiry; never the key).
    pub identity: Arc<crate::identity::MeshIdentity>,
    /// The metrics registry: request metrics of every listener (golden metrics) and every other family
    /// (`families.rs`).
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

/// The Prometheus text format: every family, from the one registry (prometheus-client) the request metrics, the
/// access log, the tracer, the Wasm filters and the proxy's own families (`families.rs`) are registered in.
fn metrics(state: &AdminState) -> String {
    let mut out = String::new();
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
