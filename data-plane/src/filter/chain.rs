//! Runs a route's Wasm filters over a request: request headers in order, response headers in reverse order (as
//! Envoy's decoder/encoder chains do), then done/log/delete. Header maps are converted once per chain and written
//! back only if a filter changed them. A failing filter fails only this request, as its fail strategy says.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{request, response, Response, StatusCode};

use super::wasm::stream::{header_pairs, to_header_map, StreamData};
use super::wasm::{PluginHandle, WasmError};
use crate::body::ResponseBody;

struct Active {
    plugin: Arc<PluginHandle>,
    slot: usize,
    instance: u64,
    stream: StreamData,
    /// The filter exports `proxy_on_request_body`.
    has_body: bool,
}

type Shared = Arc<std::sync::Mutex<Vec<Active>>>;

fn lock(active: &Shared) -> std::sync::MutexGuard<'_, Vec<Active>> {
    active.lock().unwrap_or_else(|p| p.into_inner())
}

/// The filters a request went through; dropping it ends their stream contexts. Shared with the request body's
/// filter (`BodyFilter`), which runs the body callbacks while the body streams.
#[derive(Default)]
pub struct Chain {
    active: Shared,
}

/// A request body larger than a pausing Wasm filter may buffer (`limits.bodyBuffer`).
#[derive(Debug, thiserror::Error)]
#[error("the request body exceeds the {0} bytes a Wasm filter may buffer")]
pub struct BodyTooLarge(pub usize);

/// A Wasm filter failed in `proxy_on_request_body` (and its fail strategy is FAIL_CLOSE).
#[derive(Debug, thiserror::Error)]
#[error("wasm plugin {plugin} failed on the request body: {error}")]
pub struct BodyFilterFailed {
    pub plugin: String,
    pub error: WasmError,
}

pub enum BodyStep {
    /// Every body filter continued: the buffered bytes may go upstream.
    Release,
    /// A filter paused: keep buffering.
    Hold,
}

/// Runs `proxy_on_request_body` of the chain's filters over a request body as it streams.
pub struct BodyFilter {
    active: Shared,
    pub limit: usize,
}

impl BodyFilter {
    /// Offers `buffer` (everything held so far) to each body filter in order; a filter may rewrite it.
    pub fn run(
        &self,
        buffer: &mut Vec<u8>,
        end_of_stream: bool,
    ) -> Result<BodyStep, BodyFilterFailed> {
        let mut active = lock(&self.active);
        for a in active.iter_mut().filter(|a| a.has_body) {
            a.stream.request_body = Some(std::mem::take(buffer));
            let r = a.plugin.run(a.slot, Some(a.instance), |i| {
                i.on_request_body(&mut a.stream, end_of_stream)
            });
            *buffer = a.stream.request_body.take().unwrap_or_default();
            if a.stream.local_response.take().is_some() {
                tracing::warn!(plugin = %a.plugin.meta.name, "a local reply from a body callback is not supported; ignored");
            }
            match r {
                Ok(Some((action, _)))
                    if action != super::wasm::abi::ACTION_CONTINUE && !end_of_stream =>
                {
                    return Ok(BodyStep::Hold)
                }
                Ok(_) => {}
                Err(e) if a.plugin.meta.fail_open => {
                    tracing::debug!(plugin = %a.plugin.meta.name, error = %e, "failing open")
                }
                Err(error) => {
                    return Err(BodyFilterFailed {
                        plugin: a.plugin.meta.name.clone(),
                        error,
                    })
                }
            }
        }
        Ok(BodyStep::Release)
    }
}

pub enum Verdict {
    Continue,
    Respond(Response<ResponseBody>),
}

fn failure_response(plugin: &PluginHandle, e: &WasmError) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::text(format!(
        "meshwork: wasm plugin {} failed: {e}\n",
        plugin.meta.name
    )));
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn local_response(stream: &mut StreamData) -> Option<Response<ResponseBody>> {
    let local = stream.local_response.take()?;
    let mut r = Response::new(ResponseBody::Full(
        Some(Bytes::from(local.body)).filter(|b| !b.is_empty()),
    ));
    *r.status_mut() =
        StatusCode::from_u16(local.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    *r.headers_mut() = to_header_map(&local.headers);
    Some(r)
}

fn closed_response(plugin: &PluginHandle) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::text(format!(
        "meshwork: wasm plugin {} closed the stream\n",
        plugin.meta.name
    )));
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    r
}

impl Chain {
    /// Request headers through every filter. `Verdict::Respond` is a local reply (from a filter, or its failure).
    pub fn on_request(
        plugins: &[Arc<PluginHandle>],
        parts: &mut request::Parts,
        peer: SocketAddr,
        route: Option<&Arc<str>>,
        cluster: Option<&Arc<str>>,
        end_of_stream: bool,
    ) -> (Chain, Verdict) {
        if plugins.is_empty() {
            return (Chain::default(), Verdict::Continue);
        }
        let mut active = Vec::with_capacity(plugins.len());
        let authority = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| {
                parts
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            })
            .unwrap_or_default();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let mut pairs = header_pairs(
            &parts.headers,
            &[
                (":method", parts.method.as_str()),
                (":path", &path),
                (":authority", &authority),
                (":scheme", "http"),
            ],
        );
        let mut dirty = false;
        let protocol = match parts.version {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        };
        let mut verdict = Verdict::Continue;
        for plugin in plugins {
            let slot = plugin.pick_slot();
            let mut stream = StreamData {
                request_headers: std::mem::take(&mut pairs),
                source: Some(peer),
                route_name: route.cloned(),
                cluster_name: cluster.cloned(),
                protocol,
                ..StreamData::default()
            };
            let result = plugin.run(slot, None, |inst| {
                inst.new_context(&mut stream)?;
                let action = inst.on_headers(&mut stream, false, end_of_stream)?;
                Ok((action, inst.closed(), inst.has_request_body_callback()))
            });
            pairs = std::mem::take(&mut stream.request_headers);
            dirty |= stream.request_dirty;
            match result {
                Ok(Some(((_action, closed, has_body), instance))) => {
                    let local = local_response(&mut stream);
                    active.push(Active {
                        plugin: plugin.clone(),
                        slot,
                        instance,
                        stream,
                        has_body,
                    });
                    if let Some(r) = local {
                        verdict = Verdict::Respond(r);
                        break;
                    }
                    if closed {
                        verdict = Verdict::Respond(closed_response(plugin));
                        break;
                    }
                }
                Ok(None) => {}
                Err(e) if plugin.meta.fail_open => {
                    tracing::debug!(plugin = %plugin.meta.name, error = %e, "failing open")
                }
                Err(e) => {
                    verdict = Verdict::Respond(failure_response(plugin, &e));
                    break;
                }
            }
        }
        if dirty {
            apply_request(parts, &pairs);
        }
        (
            Chain {
                active: Arc::new(std::sync::Mutex::new(active)),
            },
            verdict,
        )
    }

    /// The request body's filter, if a filter that saw the headers has a body callback. The smallest
    /// `bodyBuffer` limit among them applies.
    pub fn request_body_filter(&self) -> Option<BodyFilter> {
        let limit = lock(&self.active)
            .iter()
            .filter(|a| a.has_body)
            .map(|a| a.plugin.meta.body_limit)
            .min()?;
        Some(BodyFilter {
            active: self.active.clone(),
            limit,
        })
    }

    /// Response headers through the filters, last to first. A filter may replace the response with a local one.
    pub fn on_response(
        &mut self,
        parts: &mut response::Parts,
        end_of_stream: bool,
    ) -> Option<Response<ResponseBody>> {
        let mut active = lock(&self.active);
        if active.is_empty() {
            return None;
        }
        let mut pairs = header_pairs(&parts.headers, &[(":status", parts.status.as_str())]);
        let mut dirty = false;
        let mut replaced = None;
        for a in active.iter_mut().rev() {
            a.stream.response_code = Some(parts.status.as_u16());
            a.stream.response_headers = std::mem::take(&mut pairs);
            let result = a.plugin.run(a.slot, Some(a.instance), |inst| {
                inst.on_headers(&mut a.stream, true, end_of_stream)
            });
            pairs = std::mem::take(&mut a.stream.response_headers);
            dirty |= a.stream.response_dirty;
            match result {
                Ok(_) => {
                    if let Some(r) = local_response(&mut a.stream) {
                        replaced = Some(r);
                        break;
                    }
                }
                Err(e) if a.plugin.meta.fail_open => {
                    tracing::debug!(plugin = %a.plugin.meta.name, error = %e, "failing open")
                }
                Err(e) => {
                    replaced = Some(failure_response(&a.plugin, &e));
                    break;
                }
            }
        }
        if dirty {
            if let Some(code) = pairs
                .iter()
                .find(|(k, _)| k == ":status")
                .and_then(|(_, v)| v.parse().ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
            {
                parts.status = code;
            }
            parts.headers = to_header_map(&pairs);
        }
        replaced
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        for mut a in lock(&self.active).drain(..) {
            let _ = a
                .plugin
                .run(a.slot, Some(a.instance), |inst| inst.finish(&mut a.stream));
        }
    }
}

fn apply_request(parts: &mut request::Parts, pairs: &[(String, String)]) {
    use super::wasm::stream::get;
    if let Some(m) = get(pairs, ":method").and_then(|m| http::Method::from_bytes(m.as_bytes()).ok())
    {
        parts.method = m;
    }
    if let Some(pq) = get(pairs, ":path").and_then(|p| p.parse::<http::uri::PathAndQuery>().ok()) {
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.path_and_query = Some(pq);
        parts.uri = http::Uri::from_parts(uri).unwrap_or_default();
    }
    let authority = get(pairs, ":authority").map(str::to_string);
    parts.headers = to_header_map(pairs);
    if let Some(a) = authority.and_then(|a| HeaderValue::from_str(&a).ok()) {
        parts.headers.insert(http::header::HOST, a);
    }
}
