//! Runs a route's Wasm filters over a request: request headers and body in order, response headers and body in
//! reverse order (as Envoy's decoder/encoder chains do), then done/log/delete when the chain is dropped (after the
//! response body when a filter reads it). Header maps are converted once per chain and written back only if a
//! filter changed them. A failing filter fails only this request, as its fail strategy says.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{request, response, Response, StatusCode};

use super::wasm::abi::ACTION_CONTINUE;
use super::wasm::stream::{get, header_pairs, to_header_map, StreamData};
use super::wasm::{PluginHandle, WasmError};
use crate::body::ResponseBody;

struct Active {
    plugin: Arc<PluginHandle>,
    slot: usize,
    instance: u64,
    stream: StreamData,
    /// The filter exports `proxy_on_request_body` / `proxy_on_response_body`.
    request_body: bool,
    response_body: bool,
}

impl Active {
    fn reads_body(&self, response: bool) -> bool {
        if response {
            self.response_body
        } else {
            self.request_body
        }
    }
}

type Shared = Arc<Mutex<Vec<Active>>>;

fn lock(active: &Shared) -> MutexGuard<'_, Vec<Active>> {
    active.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The filters a request went through; dropping it ends their stream contexts. Shared with the body filters
/// (`BodyFilter`), which run the body callbacks while the bodies stream.
#[derive(Default)]
pub struct Chain {
    active: Shared,
}

/// A body larger than a pausing Wasm filter may buffer (`limits.bodyBuffer`). On the request side this answers
/// 413; on the response side (headers already sent) it aborts the response.
#[derive(Debug, thiserror::Error)]
#[error("the {side} body exceeds the {limit} bytes a Wasm filter may buffer")]
pub struct BodyTooLarge {
    pub side: &'static str,
    pub limit: usize,
}

/// A Wasm filter failed in a body callback (and its fail strategy is FAIL_CLOSE).
#[derive(Debug, thiserror::Error)]
#[error("wasm plugin {plugin} failed on the body: {error}")]
pub struct BodyFilterFailed {
    pub plugin: String,
    pub error: WasmError,
}

pub enum BodyStep {
    /// Every body filter continued: the held bytes may go on.
    Release,
    /// A filter paused: keep holding.
    Hold,
}

/// Runs the chain's body callbacks over the request body (filters in order) or the response body (reverse order).
pub struct BodyFilter {
    active: Shared,
    response: bool,
    pub limit: usize,
}

impl BodyFilter {
    /// Offers `buffer` (everything held so far) to each body filter in turn; a filter may rewrite it.
    pub fn run(
        &self,
        buffer: &mut Vec<u8>,
        end_of_stream: bool,
    ) -> Result<BodyStep, BodyFilterFailed> {
        let response = self.response;
        let mut active = lock(&self.active);
        let mut filters: Vec<&mut Active> = active
            .iter_mut()
            .filter(|a| a.reads_body(response))
            .collect();
        if response {
            filters.reverse();
        }
        for a in filters {
            let held = Some(std::mem::take(buffer));
            if response {
                a.stream.response_body = held;
            } else {
                a.stream.request_body = held;
            }
            let r = a.plugin.run(a.slot, Some(a.instance), |i| {
                i.on_body(&mut a.stream, response, end_of_stream)
            });
            let back = if response {
                a.stream.response_body.take()
            } else {
                a.stream.request_body.take()
            };
            *buffer = back.unwrap_or_default();
            if a.stream.local_response.take().is_some() {
                tracing::warn!(plugin = %a.plugin.meta.name, "a local reply from a body callback is not supported; ignored");
            }
            match r {
                Ok(Some((action, _))) if action != ACTION_CONTINUE && !end_of_stream => {
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

    pub fn too_large(&self) -> BodyTooLarge {
        BodyTooLarge {
            side: if self.response { "response" } else { "request" },
            limit: self.limit,
        }
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
        let pseudo = [
            (":method", parts.method.as_str()),
            (":path", &path),
            (":authority", &authority),
            (":scheme", "http"),
        ];
        let mut pairs = header_pairs(&parts.headers, &pseudo);
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
                inst.on_headers(&mut stream, false, end_of_stream)?;
                Ok((
                    inst.closed(),
                    inst.has_body_callback(false),
                    inst.has_body_callback(true),
                ))
            });
            pairs = std::mem::take(&mut stream.request_headers);
            dirty |= stream.request_dirty;
            match result {
                Ok(Some(((closed, request_body, response_body), instance))) => {
                    let local = local_response(&mut stream);
                    active.push(Active {
                        plugin: plugin.clone(),
                        slot,
                        instance,
                        stream,
                        request_body,
                        response_body,
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
                active: Arc::new(Mutex::new(active)),
            },
            verdict,
        )
    }

    /// The request body's filter, if a filter that saw the headers has a body callback. The smallest `bodyBuffer`
    /// among them applies.
    pub fn request_body_filter(&self) -> Option<BodyFilter> {
        self.body_filter(false)
    }

    /// Likewise for the response body.
    pub fn response_body_filter(&self) -> Option<BodyFilter> {
        self.body_filter(true)
    }

    fn body_filter(&self, response: bool) -> Option<BodyFilter> {
        let limit = lock(&self.active)
            .iter()
            .filter(|a| a.reads_body(response))
            .map(|a| a.plugin.meta.body_limit)
            .min()?;
        Some(BodyFilter {
            active: self.active.clone(),
            response,
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
            if let Some(code) = get(&pairs, ":status")
                .and_then(|v| v.parse().ok())
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

/// Writes a filter's request-header edits back: method and path only if they changed, then the header map.
fn apply_request(parts: &mut request::Parts, pairs: &[(String, String)]) {
    if let Some(m) = get(pairs, ":method")
        .filter(|m| *m != parts.method.as_str())
        .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok())
    {
        parts.method = m;
    }
    let current = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    if let Some(pq) = get(pairs, ":path")
        .filter(|p| *p != current)
        .and_then(|p| p.parse::<http::uri::PathAndQuery>().ok())
    {
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
