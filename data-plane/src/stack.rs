//! The request path, top to bottom in request order: route (stage 3) -> route filters (4) -> weighted backend and
//! endpoint (6) -> upstream (7). Later stages (Wasm filters, resilience layers) slot in between, here.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Scheme, Uri};
use http::{Request, Response, Version};
use hyper::body::Incoming;

use crate::body::{RequestBody, ResponseBody};
use crate::config::snapshot::{Cluster, Filters, Protocol, Route};
use crate::config::ConfigStore;
use crate::error::ProxyError;
use crate::filter::chain::{Chain, Verdict};
use crate::filter::headers;
use crate::router;
use crate::upstream::{self, Upstreams};

/// What a listener does with a request.
pub enum Mode {
    /// Route by the named listener of the current snapshot (gateway listeners, the sidecar's outbound listener).
    Routed(Arc<str>),
    /// Forward everything to the local app (the sidecar's inbound listener).
    Inbound(Arc<Cluster>),
}

pub struct ListenerCtx {
    pub mode: Mode,
    pub store: Arc<ConfigStore>,
    pub upstreams: Upstreams,
}

static TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

pub fn error_response(err: &ProxyError) -> Response<ResponseBody> {
    tracing::debug!(error = %crate::error::chain(err), "request failed");
    let mut resp = Response::new(ResponseBody::text(format!("meshwork: {err}\n")));
    *resp.status_mut() = err.status();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, TEXT_PLAIN.clone());
    resp
}

pub async fn handle(
    ctx: &ListenerCtx,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ResponseBody> {
    match route_and_forward(ctx, req, peer).await {
        Ok(resp) => resp,
        Err(e) => error_response(&e),
    }
}

async fn route_and_forward(
    ctx: &ListenerCtx,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<ResponseBody>, ProxyError> {
    let name = match &ctx.mode {
        Mode::Inbound(app) => {
            let endpoint = app
                .pick()
                .ok_or_else(|| ProxyError::NoEndpoint(app.name.to_string()))?;
            let (mut parts, body) = req.into_parts();
            let snapshot = ctx.store.load();
            let eos = http_body::Body::is_end_stream(&body);
            let (chain, verdict) = Chain::on_request(
                &snapshot.inbound_wasm,
                &mut parts,
                peer,
                None,
                Some(&app.name),
                eos,
            )
            .await;
            if let Verdict::Respond(r) = verdict {
                return Ok(r);
            }
            prepare_headers(&mut parts, peer);
            let body = with_body_filters(&chain, &mut parts, RequestBody::Incoming(body));
            let resp = forward(ctx, parts, body, app, endpoint.authority.clone(), None).await?;
            return Ok(through_response_filters(chain, resp).await);
        }
        Mode::Routed(name) => name,
    };
    // The snapshot is loaded once: this request finishes on it even if a new one is published meanwhile.
    let snapshot = ctx.store.load();
    let listener = snapshot
        .listeners
        .get(name)
        .ok_or_else(|| ProxyError::NotConfigured(name.to_string()))?;
    let (mut parts, body) = req.into_parts();
    let host = router::request_host(&parts).unwrap_or("");
    let no_route = || ProxyError::NoRoute {
        host: host.to_string(),
        path: parts.uri.path().to_string(),
    };
    let vhost = router::find_vhost(&listener.vhosts, host).ok_or_else(no_route)?;
    let route = router::find_route(vhost, &parts).ok_or_else(no_route)?;
    let cluster = route.pick_backend();

    // Wasm filters see the request before the router acts on it (as Envoy's HTTP filters run before its router).
    let eos = http_body::Body::is_end_stream(&body);
    let (chain, verdict) = Chain::on_request(
        &route.wasm,
        &mut parts,
        peer,
        Some(&route.name),
        cluster.map(|c| &c.name),
        eos,
    )
    .await;
    if let Verdict::Respond(r) = verdict {
        return Ok(r);
    }
    if let Some(redirect) = &route.filters.redirect {
        return Ok(redirect_response(route, redirect, &parts));
    }
    let cluster = cluster.ok_or_else(|| ProxyError::NoBackend(route.name.to_string()))?;
    let endpoint = cluster
        .pick()
        .ok_or_else(|| ProxyError::NoEndpoint(cluster.name.to_string()))?;

    prepare_headers(&mut parts, peer);
    apply_request_filters(&mut parts, route);
    let body = mirror(ctx, &parts, body, &route.filters);
    let body = with_body_filters(&chain, &mut parts, body);
    let fut = forward(
        ctx,
        parts,
        body,
        cluster,
        endpoint.authority.clone(),
        route.filters.response_headers.as_ref(),
    );
    let resp = match route.timeout {
        Some(t) => tokio::time::timeout(t, fut)
            .await
            .map_err(|_| ProxyError::Timeout(t))??,
        None => fut.await?,
    };
    Ok(through_response_filters(chain, resp).await)
}

/// Puts the request body through the Wasm filters' body callbacks, if any filter has one. The body may change
/// length, so the upstream request is sent without Content-Length (chunked / HTTP/2 framing).
fn with_body_filters(
    chain: &Chain,
    parts: &mut http::request::Parts,
    body: RequestBody,
) -> RequestBody {
    match chain.request_body_filter() {
        Some(filter) if !matches!(body, RequestBody::Empty) && !body_is_empty(&body) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            RequestBody::Filtered(Box::new(crate::body::FilteredBody::new(body, filter, None)))
        }
        _ => body,
    }
}

fn body_is_empty(body: &RequestBody) -> bool {
    http_body::Body::is_end_stream(body)
}

/// Response headers through the Wasm filters (last to first); a filter may answer instead.
/// When a filter reads the response body, the body carries the chain, so the filters' stream contexts end
/// (done, log, delete) after the body; the body may change length, so Content-Length is dropped.
async fn through_response_filters(
    mut chain: Chain,
    resp: Response<ResponseBody>,
) -> Response<ResponseBody> {
    let (mut parts, body) = resp.into_parts();
    let eos = http_body::Body::is_end_stream(&body);
    if let Some(local) = chain.on_response(&mut parts, eos).await {
        return local;
    }
    match chain.response_body_filter() {
        Some(filter) if !eos => {
            parts.headers.remove(header::CONTENT_LENGTH);
            let body = crate::body::FilteredBody::new(body, filter, Some(chain));
            Response::from_parts(parts, ResponseBody::Filtered(Box::new(body)))
        }
        _ => Response::from_parts(parts, body),
    }
}

fn prepare_headers(parts: &mut http::request::Parts, peer: SocketAddr) {
    // An HTTP/2 request carries its host in :authority; an HTTP/1.1 upstream needs a Host header.
    if !parts.headers.contains_key(header::HOST) {
        if let Some(v) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            parts.headers.insert(header::HOST, v);
        }
    }
    headers::strip_hop_by_hop(&mut parts.headers, true);
    headers::forwarding_headers(&mut parts.headers, peer.ip());
}

fn apply_request_filters(parts: &mut http::request::Parts, route: &Route) {
    let f = &route.filters;
    if let Some(m) = &f.request_headers {
        headers::apply_header_mod(&mut parts.headers, m);
    }
    if let Some(host) = &f.rewrite_host {
        parts.headers.insert(header::HOST, host.clone());
    }
    if let Some(rw) = &f.rewrite_path {
        let new_path = headers::rewrite_path(parts.uri.path(), rw, &route.matcher.path);
        if let Some(pq) = headers::with_path(parts.uri.path_and_query(), &new_path) {
            let mut uri_parts = std::mem::take(&mut parts.uri).into_parts();
            uri_parts.path_and_query = Some(pq);
            parts.uri = Uri::from_parts(uri_parts).unwrap_or_default();
        }
    }
}

fn redirect_response(
    route: &Route,
    r: &crate::config::snapshot::Redirect,
    parts: &http::request::Parts,
) -> Response<ResponseBody> {
    let host = router::request_host(parts).unwrap_or("localhost");
    let port = parts.uri.port_u16().or_else(|| {
        parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.rsplit_once(':'))
            .and_then(|(_, p)| p.parse().ok())
    });
    let location = headers::redirect_location(
        r,
        host,
        port,
        parts.uri.path_and_query(),
        &route.matcher.path,
    );
    let mut resp = Response::new(ResponseBody::empty());
    *resp.status_mut() = r.status;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Fires a copy of the request at each mirror (per its percentage), without waiting for or using the answers.
fn mirror(
    ctx: &ListenerCtx,
    parts: &http::request::Parts,
    body: Incoming,
    filters: &Filters,
) -> RequestBody {
    if filters.mirrors.is_empty() {
        return RequestBody::Incoming(body);
    }
    let has_body = !http_body::Body::is_end_stream(&body);
    let mut copies = Vec::new();
    for m in &filters.mirrors {
        if m.percent < 100 && fastrand::u32(0..100) >= m.percent {
            continue;
        }
        let Some(endpoint) = m.cluster.pick() else {
            continue;
        };
        let mirror_body = if has_body {
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            copies.push(tx);
            RequestBody::Mirror(rx)
        } else {
            RequestBody::Empty
        };
        let Some(uri) = upstream_uri(endpoint.authority.clone(), parts.uri.path_and_query()) else {
            continue;
        };
        let mut req = Request::new(mirror_body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = parts.headers.clone();
        *req.version_mut() = version_for(m.cluster.protocol);
        let fut = ctx.upstreams.request(m.cluster.protocol, req);
        let cluster = m.cluster.name.clone();
        tokio::spawn(async move {
            match fut.await {
                Ok(resp) => upstream::drain(resp).await,
                Err(e) => {
                    tracing::debug!(%cluster, error = %crate::error::chain(&e), "mirror request failed")
                }
            }
        });
    }
    if copies.is_empty() {
        RequestBody::Incoming(body)
    } else {
        RequestBody::Tee {
            inner: body,
            copies,
        }
    }
}

pub(crate) fn version_for(p: Protocol) -> Version {
    match p {
        Protocol::Http1 => Version::HTTP_11,
        Protocol::Http2 => Version::HTTP_2,
    }
}

pub(crate) fn upstream_uri(
    authority: http::uri::Authority,
    pq: Option<&PathAndQuery>,
) -> Option<Uri> {
    let mut p = http::uri::Parts::default();
    p.scheme = Some(Scheme::HTTP);
    p.authority = Some(authority);
    p.path_and_query = Some(
        pq.cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    Uri::from_parts(p).ok()
}

async fn forward(
    ctx: &ListenerCtx,
    parts: http::request::Parts,
    body: RequestBody,
    cluster: &Cluster,
    authority: http::uri::Authority,
    response_headers: Option<&crate::config::snapshot::HeaderMod>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let endpoint_addr = authority.clone();
    let uri = upstream_uri(authority, parts.uri.path_and_query())
        .ok_or(ProxyError::BadRequest("cannot build the upstream URI"))?;
    let mut req = Request::from_parts(parts, body);
    *req.uri_mut() = uri;
    *req.version_mut() = version_for(cluster.protocol);
    let resp = ctx
        .upstreams
        .request(cluster.protocol, req)
        .await
        .map_err(|source| {
            // Only the error path pays for these strings.
            if let Some(e) = crate::error::find::<crate::filter::chain::BodyTooLarge>(&source) {
                return ProxyError::PayloadTooLarge(e.to_string());
            }
            if let Some(e) = crate::error::find::<crate::filter::chain::BodyFilterFailed>(&source) {
                return ProxyError::FilterFailed(e.to_string());
            }
            let (cluster, addr) = (cluster.name.to_string(), endpoint_addr.to_string());
            if source.is_connect() {
                ProxyError::Connect {
                    cluster,
                    addr,
                    source,
                }
            } else {
                ProxyError::Upstream {
                    cluster,
                    addr,
                    source,
                }
            }
        })?;
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, false);
    if let Some(m) = response_headers {
        headers::apply_header_mod(&mut parts.headers, m);
    }
    Ok(Response::from_parts(parts, ResponseBody::Upstream(body)))
}
