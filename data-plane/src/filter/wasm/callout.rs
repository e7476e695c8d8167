//! HTTP callouts (`proxy_http_call`): what a filter asked for, what came back, and the seam through which the
//! proxy sends them (`Callouts`, implemented over the current snapshot's clusters in `crate::filter::callout`).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// One `proxy_http_call`, recorded by the host function and sent by whoever ran the callback that made it.
#[derive(Debug, Clone)]
pub struct Callout {
    pub token: u32,
    /// The context whose `proxy_on_http_call_response` receives the answer (the stream's or the root's).
    pub context_id: u32,
    pub upstream: String,
    /// Includes `:method`, `:path` and `:authority`.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
    pub timeout: Duration,
}

/// The answer a filter reads in `proxy_on_http_call_response`: headers include `:status`. A failed call (no
/// answer, timeout, unknown upstream) is delivered as an empty response, as Envoy does (zero headers).
#[derive(Debug, Clone, Default)]
pub struct CallResponse {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
}

pub type CallFuture = Pin<Box<dyn Future<Output = Result<CallResponse, String>> + Send>>;

/// Sends callouts to the mesh.
pub trait Callouts: Send + Sync {
    /// Whether a callout to `upstream` can be sent (the host function answers BAD_ARGUMENT otherwise).
    fn knows(&self, upstream: &str) -> bool;
    /// Sends it; resolves with the whole response (bounded) or why there is none.
    fn send(&self, call: Callout) -> CallFuture;
}

/// Sends a callout and turns any failure into the empty response the filter is told about.
pub async fn answer(callouts: Option<std::sync::Arc<dyn Callouts>>, call: Callout) -> CallResponse {
    let Some(c) = callouts else {
        return CallResponse::default();
    };
    let (upstream, token) = (call.upstream.clone(), call.token);
    match c.send(call).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%upstream, token, error = %e, "wasm http callout failed");
            CallResponse::default()
        }
    }
}
