//! The request path, top to bottom in request order: route (stage 3) -> Wasm filters and route filters (4) ->
//! hand-off: to the resilience layers and the balancer (5-6, `resilience::call`) for a routed request, straight to
//! the local app for a sidecar's inbound one -> upstream (7). Every error on the way is answered by `error.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::uri::Uri;
use http::{Request, Response};

use crate::authz;
use crate::caller;
use crate::config::snapshot::{Cluster, Route, Snapshot};
use crate::config::ConfigStore;
use crate::error::{self, ProxyError};
use crate::filter::body::FilteredBody;
use crate::filter::chain::{Chain, Connection, Verdict};
use crate::filter::wasm::PluginHandle;
use crate::filter::{headers, path};
use crate::listener::Downstream;
use crate::resilience::{self, call::SOURCE_HEADER, Registry};
use crate::router;
use crate::telemetry::{Arrival, Exchange, Journal, ListenerMetrics, Observed};
use crate::tls::{VerifiedPeer, XFCC_HEADER};
use crate::upstream::body::{RequestBody, ResponseBody};
use crate::upstream::client_body::ClientBody;
use crate::upstream::{self, Upstreams};

/// What a listener does with a request.
pub enum Mode {
    /// Route by the named listener of the current snapshot (gateway listeners, the sidecar's outbound listener).
    Routed(Arc<str>),
    /// Forward everything to the local app (the sidecar's inbound listener).
    Inbound(Arc<Cluster>),
}

/// What the request path of one listener works with.
pub struct ListenerCtx {
    pub mode: Mode,
    pub store: Arc<ConfigStore>,
    /// The runtime state of the upstreams (breakers, budgets, balancers...), beside the snapshot.
    pub resilience: Arc<Registry>,
    pub upstreams: Upstreams,
    /// Sidecar outbound listeners: the calling service, sent upstream as `x-meshwork-source` (what server-side
    /// rate limits keyed by `sourceService` read). Elsewhere the header is removed from incoming requests.
    pub source: Option<HeaderValue>,
    /// Routed requests with neither a TrafficPolicy `timeouts.request` nor an HTTPRoute timeout wait this long
    /// for the upstream's answer (None: unbounded). Mirrors are always bounded, by the route's timeout, else this,
    /// else `MIRROR_TIMEOUT`.
    pub default_timeout: Option<Duration>,
    /// The outbound listener's proof of `source`, made once per mesh key.
    pub proof: caller::ProofCache,
    /// TLS before HTTP: mesh mTLS on a sidecar's inbound listener (what the snapshot's mode allows), the
    /// operator's certificates on a gateway HTTPS listener. `None` (a sidecar's outbound listener): plaintext.
    pub termination: Option<crate::listener::Termination>,
    /// Whether the snapshot's AuthorizationPolicies apply here (a sidecar's inbound listener, a gateway's
    /// listeners; not a sidecar's outbound one), and where their decisions are counted.
    pub authorize: Option<Arc<authz::Stats>>,
    /// Where this listener's requests are counted and timed.
    pub metrics: ListenerMetrics,
}

/// How long a mirrored request may take when neither its route nor the proxy sets a request timeout.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn handle(
    ctx: &ListenerCtx,
    req: Request<ClientBody>,
    downstream: Downstream,
) -> Response<Observed<ResponseBody>> {
    let declared = match http_body::Body::is_end_stream(req.body()) {
        true => Some(0),
        false => content_length(req.headers()),
    };
    let mut exchange = ctx.metrics.begin_with(req.method(), declared);
    let resp = match route_and_forward(ctx, req, downstream, &mut exchange).await {
        Ok(resp) => resp,
        Err(e) => {
            exchange.flag(error::flag(&e));
            error::reply(&e)
        }
    };
    exchange.respond(resp)
}

/// The caller as the access log names it: the mTLS peer's SPIFFE ID, else the service this sidecar's outbound
/// listener speaks for (a plaintext caller's own claim is not logged as its identity).
fn caller(ctx: &ListenerCtx, verified: Option<&VerifiedPeer>) -> Option<String> {
    match verified {
        Some(peer) => Some(peer.id.to_string()),
        None => ctx
            .source
            .as_ref()
            .and_then(|s| s.to_str().ok())
            .map(str::to_string),
    }
}

/// Where a request goes: the route it matched (none on a sidecar's inbound listener), the filters that run on it
/// and the cluster it is sent to.
struct Target<'a> {
    route: Option<&'a Route>,
    wasm: &'a [Arc<PluginHandle>],
    cluster: Option<&'a Arc<Cluster>>,
}

async fn route_and_forward(
    ctx: &ListenerCtx,
    req: Request<ClientBody>,
    downstream: Downstream,
    exchange: &mut Exchange,
) -> Result<Response<ResponseBody>, ProxyError> {
    let (peer, verified) = (downstream.addr, downstream.peer.as_deref());
    // The snapshot is loaded once: this request finishes on it even if a new one is published meanwhile.
    let snapshot = ctx.store.load();
    let (mut parts, body) = req.into_parts();
    let is_routed = matches!(ctx.mode, Mode::Routed(_));
    // A sidecar's outbound listener is the one routed listener without TLS termination.
    let outbound = is_routed && ctx.termination.is_none();
    exchange.observe(
        snapshot.access_log.as_ref(),
        snapshot.tracing.as_ref(),
        &Arrival {
            parts: &parts,
            downstream: peer,
            source: &|| caller(ctx, verified),
            https: downstream.https || verified.is_some(),
            // Gateways and inbound listeners serve; gateways and outbound listeners call.
            server_span: !outbound,
            client_spans: is_routed,
        },
    );
    if let Some(e) = body.declared_too_large() {
        return Err(e.into());
    }
    normalize_path(&mut parts)?;
    // What the client may not decide for the next hop goes on arrival, before routing and filters see it; what
    // the proxy verified about the caller goes in.
    sanitize(ctx, &snapshot, &mut parts.headers, verified);
    if let Some(stats) = &ctx.authorize {
        authorize(&snapshot, &parts, stats, verified)?;
    }
    // 3. Route.
    let target = match &ctx.mode {
        Mode::Inbound(app) => inbound(ctx, &snapshot, app, &parts, peer).await?,
        Mode::Routed(name) => routed(&snapshot, name, &parts)?,
    };
    // 4. Wasm filters see the request before the router acts on it (as Envoy's HTTP filters run before its
    //    router), then the route's own filters.
    let eos = http_body::Body::is_end_stream(&body);
    let route_name = target.route.map(|r| &r.name);
    let cluster_name = target.cluster.map(|c| &c.name);
    exchange.target(route_name, cluster_name);
    let (chain, verdict) = Chain::on_request(
        target.wasm,
        &mut parts,
        &Connection {
            addr: peer,
            peer: downstream.peer.as_ref(),
            tls: downstream.https || downstream.peer.is_some(),
        },
        route_name,
        cluster_name,
        eos,
        exchange.recording(),
    )
    .await;
    match verdict {
        Verdict::Continue => {}
        Verdict::Respond(r) => {
            exchange.flag(error::FILTER_REPLIED);
            return Ok(r);
        }
        Verdict::Fail(e) => return Err(e.into()),
    }
    if let Some((route, redirect)) = target
        .route
        .and_then(|r| Some((r, r.filters.redirect.as_ref()?)))
    {
        return Ok(redirect_response(route, redirect, &parts));
    }
    let route = target.route;
    let cluster = target
        .cluster
        .ok_or_else(|| ProxyError::NoBackend(route.map_or("", |r| &r.name).to_string()))?;
    prepare_headers(ctx, &snapshot, &mut parts, &downstream);
    exchange.request_id(&parts.headers);
    let body = match route {
        Some(route) => {
            apply_request_filters(&mut parts, route);
            mirror(ctx, &parts, body, route)
        }
        None => RequestBody::Incoming(body),
    };
    let body = with_body_filters(&chain, &mut parts, body);
    let filtered = matches!(body, RequestBody::Filtered(_));
    // 5-7. Hand-off. The proxy's own error answers (503, 504...) go through the response filters too, as Envoy's
    //      local replies do.
    let journal = exchange.journal().map(|j| &**j);
    let handed = hand_off(ctx, route, cluster, parts, body, peer, journal).await;
    let resp = match handed {
        Ok(resp) => resp,
        Err(e) => {
            exchange.flag(error::flag(&e));
            error::reply(&e)
        }
    };
    // A filter that answered from its request-body callback: its reply, not the upstream's (aborted) answer.
    if let Some(reply) = filtered.then(|| chain.body_reply()).flatten() {
        // Its answer replaces whatever the aborted hand-off ended with.
        exchange.reflag(error::FILTER_REPLIED);
        return Ok(reply);
    }
    Ok(through_response_filters(chain, resp, exchange).await)
}

/// A sidecar's inbound listener: everything goes to the local app, after the server-side rate limit (a
/// TrafficPolicy with `side: server` targeting this service), which comes before anything else spends work.
async fn inbound<'a>(
    ctx: &ListenerCtx,
    snapshot: &'a Snapshot,
    app: &'a Arc<Cluster>,
    parts: &http::request::Parts,
    peer: SocketAddr,
) -> Result<Target<'a>, ProxyError> {
    if app.endpoints.is_empty() {
        return Err(ProxyError::NoEndpoint(app.name.to_string()));
    }
    if let Some(limit) = &snapshot.inbound_limit {
        resilience::call::rate_limit(&ctx.resilience.policy(limit), parts, peer).await?;
    }
    Ok(Target {
        route: None,
        wasm: &snapshot.inbound_wasm,
        cluster: Some(app),
    })
}

/// A routed listener: host -> virtual host -> first matching route -> weighted backend.
fn routed<'a>(
    snapshot: &'a Snapshot,
    listener: &str,
    parts: &http::request::Parts,
) -> Result<Target<'a>, ProxyError> {
    let listener = snapshot
        .listeners
        .get(listener)
        .ok_or_else(|| ProxyError::NotConfigured(listener.to_string()))?;
    let host = router::request_host(parts).unwrap_or("");
    let no_route = || ProxyError::NoRoute {
        host: host.to_string(),
        path: parts.uri.path().to_string(),
    };
    let vhost = router::find_vhost(&listener.vhosts, host).ok_or_else(no_route)?;
    let route = router::find_route(vhost, parts).ok_or_else(no_route)?;
    Ok(Target {
        route: Some(route),
        wasm: &route.wasm,
        cluster: route.pick_backend(),
    })
}

/// Sends the request on: a routed one through the resilience layers (its route's policy, if any, overriding
/// the service's), an inbound one straight to the local app. The upstream's answer loses its hop-by-hop headers
/// and gets the route's response header edits.
async fn hand_off(
    ctx: &ListenerCtx,
    route: Option<&Route>,
    cluster: &Arc<Cluster>,
    mut parts: http::request::Parts,
    body: RequestBody,
    peer: SocketAddr,
    journal: Option<&Journal>,
) -> Result<Response<ResponseBody>, ProxyError> {
    if let Some(journal) = journal {
        journal.prepare(&mut parts.headers);
    }
    let resp = match route {
        Some(route) => {
            let route_policy = route.policy.as_ref().map(|p| ctx.resilience.policy(p));
            let req = resilience::Request {
                parts,
                body,
                peer,
                route_policy: route_policy.as_deref(),
                route_timeout: route.timeout.or(ctx.default_timeout),
                journal,
            };
            let balancer = ctx.resilience.balancer(cluster);
            resilience::call(&ctx.upstreams, &balancer, req).await?
        }
        None => {
            let endpoint = cluster
                .any_endpoint()
                .ok_or_else(|| ProxyError::NoEndpoint(cluster.name.to_string()))?;
            if let Some(journal) = journal {
                journal.attempt(endpoint.addr, &mut parts.headers);
            }
            let sent = upstream::send(
                &ctx.upstreams,
                &cluster.name,
                cluster.protocol,
                endpoint,
                parts,
                body,
            );
            sent.await
                .map_err(resilience::CallError::from)?
                .map(ResponseBody::Upstream)
        }
    };
    let (mut head, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut head.headers, false);
    if let Some(m) = route.and_then(|r| r.filters.response_headers.as_ref()) {
        headers::apply_header_mod(&mut head.headers, m);
    }
    Ok(Response::from_parts(head, body))
}

/// Puts the request body through the Wasm filters' body callbacks, if any filter has one. The request keeps its
/// Content-Length unless a filter removed it (see `FilteredBody`).
fn with_body_filters(
    chain: &Chain,
    parts: &mut http::request::Parts,
    body: RequestBody,
) -> RequestBody {
    match chain.request_body_filter() {
        Some(filter) if !matches!(body, RequestBody::Empty) && !body_is_empty(&body) => {
            let declared = content_length(&parts.headers);
            RequestBody::Filtered(Box::pin(FilteredBody::new(body, filter, None, declared)))
        }
        _ => body,
    }
}

/// The Content-Length a message will be sent with (after the filters' header edits), if it has a valid one.
fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn body_is_empty(body: &RequestBody) -> bool {
    http_body::Body::is_end_stream(body)
}

/// Response headers through the Wasm filters (last to first); a filter may answer instead.
/// When a filter reads the response body, the body carries the chain, so the filters' stream contexts end
/// (done, log, delete) after the body; Content-Length stays unless a filter removed it (see `FilteredBody`).
async fn through_response_filters(
    mut chain: Chain,
    resp: Response<ResponseBody>,
    exchange: &mut Exchange,
) -> Response<ResponseBody> {
    let (mut parts, body) = resp.into_parts();
    let eos = http_body::Body::is_end_stream(&body);
    match chain.on_response(&mut parts, eos).await {
        Verdict::Continue => {}
        Verdict::Respond(r) => {
            exchange.reflag(error::FILTER_REPLIED);
            return r;
        }
        Verdict::Fail(e) => {
            let e = e.into();
            exchange.reflag(error::flag(&e));
            return error::reply(&e);
        }
    }
    match chain.response_body_filter() {
        Some(filter) if !eos => {
            let declared = content_length(&parts.headers);
            let body = FilteredBody::new(body, filter, Some(chain), declared);
            Response::from_parts(parts, ResponseBody::Filtered(Box::pin(body)))
        }
        _ => Response::from_parts(parts, body),
    }
}

/// Before the filters: hop-by-hop headers (RFC 9110 7.6.1) and a caller statement no one here vouches for are
/// gone, so filters never see them and a client's `Connection` cannot remove what a filter sets. On a sidecar's
/// inbound listener the caller is then stated by what this proxy verified: on an mTLS connection the peer
/// (`x-forwarded-client-cert`, and the `x-meshwork-source` its identity names); on a plaintext one (a caller
/// sidecar that cannot do mTLS with this endpoint yet: no certificate, no identity for it, DISABLED) only a
/// source proven with the mesh key. STRICT takes no plaintext, so there only mTLS speaks for the caller.
fn sanitize(
    ctx: &ListenerCtx,
    snapshot: &Snapshot,
    headers: &mut http::HeaderMap,
    verified: Option<&VerifiedPeer>,
) {
    headers::strip_hop_by_hop(headers, true);
    if !matches!(ctx.mode, Mode::Inbound(_)) {
        headers::remove_all(
            headers,
            &[&XFCC_HEADER, &SOURCE_HEADER, &caller::PROOF_HEADER],
        );
        return;
    }
    headers::remove_all(headers, &[&XFCC_HEADER]);
    match verified {
        Some(peer) => {
            headers.remove(caller::PROOF_HEADER);
            state_verified(peer, headers);
        }
        None => caller::check(&snapshot.mesh_keys, headers),
    }
}

/// The verified mTLS peer as the app sees it.
fn state_verified(peer: &VerifiedPeer, headers: &mut http::HeaderMap) {
    headers.insert(XFCC_HEADER, peer.xfcc.clone());
    match &peer.source {
        Some(source) => headers.insert(SOURCE_HEADER, source.clone()),
        None => headers.remove(SOURCE_HEADER),
    };
}

/// The AuthorizationPolicies' decision on a request, before anything else spends work on it. The caller is only
/// what a handshake proved: the mTLS peer's SPIFFE ID (a sidecar's or a gateway's). A plaintext caller has no
/// principal and no namespace, even with a mesh-key proof of `x-meshwork-source`: that key is shared by every
/// sidecar, so it cannot tell one service from another to a policy. The path is the normalised one routing uses.
fn authorize(
    snapshot: &Snapshot,
    parts: &http::request::Parts,
    stats: &authz::Stats,
    verified: Option<&VerifiedPeer>,
) -> Result<(), ProxyError> {
    if snapshot.authorization.is_empty() {
        return Ok(());
    }
    let (principal, namespace) = match verified {
        Some(peer) => (peer.id.principal(), spiffe_namespace(&peer.id)),
        None => ("", ""),
    };
    let subject = authz::Subject {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        host: router::request_host(parts).unwrap_or(""),
        headers: &parts.headers,
        principal,
        namespace,
    };
    let (decision, audited) = authz::decide(&snapshot.authorization, &subject);
    for policy in audited {
        stats.count(policy, "audit");
        if !stats.may_log() {
            continue;
        }
        tracing::info!(%policy, method = %parts.method, path = parts.uri.path(), caller = %principal, "AuthorizationPolicy AUDIT matched");
    }
    match decision {
        authz::Decision::Allow => Ok(()),
        authz::Decision::Deny(policy) => {
            let name: Arc<str> = policy
                .clone()
                .unwrap_or_else(|| Arc::from(authz::NO_ALLOW_MATCHED));
            stats.count(&name, "deny");
            if stats.may_log() {
                tracing::info!(policy = %name, method = %parts.method, path = parts.uri.path(), caller = %principal, "request denied by AuthorizationPolicy");
            }
            Err(ProxyError::Denied(policy))
        }
    }
}

/// The normalised path (filter/path.rs) replaces the client's: routing, policies, filters and the upstream all
/// see the same one.
fn normalize_path(parts: &mut http::request::Parts) -> Result<(), ProxyError> {
    let Some(pq) = parts.uri.path_and_query() else {
        return Ok(());
    };
    let std::borrow::Cow::Owned(normal) = path::normalize(pq.path())? else {
        return Ok(());
    };
    let normal = match pq.query() {
        Some(q) => format!("{normal}?{q}"),
        None => normal,
    };
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.path_and_query = normal.parse().ok();
    parts.uri = Uri::from_parts(uri).unwrap_or_default();
    Ok(())
}

/// The namespace a mesh identity names (`spiffe://<td>/ns/<namespace>/...`: sidecars and gateways); "" otherwise.
fn spiffe_namespace(id: &meshwork_identity::SpiffeId) -> &str {
    let mut segments = id.path().split('/').skip(1);
    match (segments.next(), segments.next()) {
        (Some("ns"), Some(ns)) => ns,
        _ => "",
    }
}

/// After the filters: what this hop says to the next (the calling service, Host, forwarding headers). Hop-by-hop
/// headers a filter added are stripped again.
fn prepare_headers(
    ctx: &ListenerCtx,
    snapshot: &Snapshot,
    parts: &mut http::request::Parts,
    downstream: &Downstream,
) {
    let (peer, verified) = (downstream.addr, downstream.peer.as_deref());
    match &ctx.source {
        Some(v) => caller::state(
            &ctx.proof,
            snapshot.mesh_keys.first(),
            v,
            &mut parts.headers,
        ),
        // Not even a filter speaks for the caller here.
        None if !matches!(ctx.mode, Mode::Inbound(_)) => {
            let claims = [&SOURCE_HEADER, &caller::PROOF_HEADER];
            headers::remove_all(&mut parts.headers, &claims);
        }
        // Inbound: the app never sees a proof (a filter may not forge one for the next hop either), and sees a
        // client certificate only as this proxy verified it.
        None => {
            parts.headers.remove(caller::PROOF_HEADER);
            match verified {
                Some(peer) => parts.headers.insert(XFCC_HEADER, peer.xfcc.clone()),
                None => parts.headers.remove(XFCC_HEADER),
            };
        }
    }
    if !matches!(ctx.mode, Mode::Inbound(_)) {
        // Only an inbound sidecar speaks of a client certificate, and only to its app.
        headers::remove_all(&mut parts.headers, &[&XFCC_HEADER]);
    }
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
    // Gateway listeners (the only ones terminating the operator's TLS) are the edge.
    let edge = matches!(
        ctx.termination,
        Some(crate::listener::Termination::Https { .. })
    );
    let edge_tls = edge.then_some(downstream.https);
    headers::forwarding_headers(&mut parts.headers, peer.ip(), edge_tls);
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
    error::redirect(r.status, HeaderValue::from_str(&location).ok())
}

/// Fires a copy of the request at each mirror (per its percentage), without waiting for or using the answers.
fn mirror(
    ctx: &ListenerCtx,
    parts: &http::request::Parts,
    body: ClientBody,
    route: &Route,
) -> RequestBody {
    let filters = &route.filters;
    if filters.mirrors.is_empty() {
        return RequestBody::Incoming(body);
    }
    let has_body = !http_body::Body::is_end_stream(&body);
    let mut copies = Vec::new();
    for m in &filters.mirrors {
        if m.percent < 100 && fastrand::u32(0..100) >= m.percent {
            continue;
        }
        let Some(endpoint) = m.cluster.any_endpoint() else {
            continue;
        };
        let mirror_body = if has_body {
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            copies.push(tx);
            RequestBody::Mirror(rx)
        } else {
            RequestBody::Empty
        };
        let Some(uri) = upstream::uri(endpoint.authority.clone(), parts.uri.path_and_query())
        else {
            continue;
        };
        let mut req = Request::new(mirror_body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = parts.headers.clone();
        *req.version_mut() = upstream::version(m.cluster.protocol);
        let fut = ctx.upstreams.request(m.cluster.protocol, endpoint, req);
        let cluster = m.cluster.name.clone();
        let limit = route
            .timeout
            .or(ctx.default_timeout)
            .unwrap_or(MIRROR_TIMEOUT);
        tokio::spawn(async move {
            let mirrored = async {
                match fut.await {
                    Ok(resp) => upstream::drain(resp).await,
                    Err(e) => {
                        tracing::debug!(%cluster, error = %upstream::error::chain(&e), "mirror request failed")
                    }
                }
            };
            if tokio::time::timeout(limit, mirrored).await.is_err() {
                tracing::debug!(%cluster, ?limit, "mirror request timed out");
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
