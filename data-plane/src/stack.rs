//! The request path, top to bottom in request order: route (stage 3) -> Wasm filters and route filters (4) ->
//! weighted backend (5) -> resilience layers and the balancer (6, `call_upstream`) -> upstream (7).

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
    /// Sidecar outbound listeners: the calling service, sent upstream as `x-meshwork-source` (what server-side
    /// rate limits keyed by `sourceService` read). Elsewhere the header is removed from incoming requests.
    pub source: Option<HeaderValue>,
}

/// The calling service, as the caller's sidecar states it.
pub const SOURCE_HEADER: header::HeaderName = header::HeaderName::from_static("x-meshwork-source");

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
            // Server-side rate limit (a TrafficPolicy with side: server targeting this service) before anything
            // else spends work on the request.
            if let Some(limit) = &snapshot.inbound_limit {
                if let Some(r) = rate_limit(limit, &parts, peer).await {
                    return Ok(r);
                }
            }
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
            prepare_headers(ctx, &mut parts, peer);
            let body = with_body_filters(&chain, &mut parts, RequestBody::Incoming(body));
            let filtered = matches!(body, RequestBody::Filtered(_));
            // The proxy's own error answers go through the response filters too, as Envoy's local replies do.
            let resp = forward(ctx, parts, body, app, endpoint.authority.clone(), None)
                .await
                .unwrap_or_else(|e| error_response(&e));
            if let Some(reply) = filtered.then(|| chain.body_reply()).flatten() {
                return Ok(reply);
            }
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

    prepare_headers(ctx, &mut parts, peer);
    apply_request_filters(&mut parts, route);
    let body = mirror(ctx, &parts, body, &route.filters);
    let body = with_body_filters(&chain, &mut parts, body);
    let filtered = matches!(body, RequestBody::Filtered(_));
    // The proxy's own error answers (503, 504...) go through the response filters too, as Envoy's local replies do.
    let resp = call_upstream(ctx, parts, body, cluster, route, peer)
        .await
        .unwrap_or_else(|e| error_response(&e));
    // A filter that answered from its request-body callback: its reply, not the upstream's (aborted) answer.
    if let Some(reply) = filtered.then(|| chain.body_reply()).flatten() {
        return Ok(reply);
    }
    Ok(through_response_filters(chain, resp).await)
}

/// Request bodies up to this size are kept so a retry can send them again; larger ones are not retried.
pub const REPLAY_LIMIT: u64 = 64 * 1024;

/// Stage 6 for one routed request: the resilience layers of TrafficPolicy around the balancer and the upstream
/// call, outermost first (changing the order is a design change, docs/resilience.md explains it):
///
/// 1. fault injection (delay, abort): chaos on the caller's side, before anything else;
/// 2. rate limit (client side): shed or queue before spending upstream capacity;
/// 3. circuit breaker: an open circuit answers with its fallback at once;
/// 4. total timeout (`timeouts.request`, else the HTTPRoute's), retries included;
/// 5. retries, with the budget and backoff; per attempt:
///    6. bulkhead (a slot, or wait among `maxPending`, or 503),
///    7. balancer (skipping ejected and unhealthy endpoints),
///    8. per-try timeout around the upstream call (stage 7, `forward`),
///    9. the outcome recorded: latency EWMA, outlier detection, breaker.
async fn call_upstream(
    ctx: &ListenerCtx,
    parts: http::request::Parts,
    body: RequestBody,
    cluster: &Arc<Cluster>,
    route: &Route,
    peer: SocketAddr,
) -> Result<Response<ResponseBody>, ProxyError> {
    use crate::resilience::{inc, retry};
    let rt = &cluster.rt;
    let own = route.policy.as_ref().map(|p| &p.policy.request);
    let service = &rt.policy.request;
    let pick = |f: fn(&crate::resilience::policy::RequestPolicy) -> bool| {
        if own.is_some_and(f) {
            own
        } else {
            Some(service)
        }
    };
    inc(&rt.counters.requests);

    // 1. Fault injection.
    if let Some(f) = pick(|p| p.fault.is_some()).and_then(|p| p.fault.as_ref()) {
        if let Some(r) = inject_fault(f, &parts, rt).await {
            return Ok(r);
        }
    }
    // 2. Client-side rate limit (the route's bucket when the route's policy has one).
    let limiter_rt = if own.is_some_and(|p| p.rate_limit.is_some()) {
        route.policy.as_ref()
    } else {
        Some(rt)
    };
    if let Some(lrt) = limiter_rt.filter(|r| r.limiter.is_some()) {
        if let Some(r) = rate_limit(lrt, &parts, peer).await {
            return Ok(r);
        }
    }
    // 3. Circuit breaker.
    // A half-open probe that never reports (the client went away, a timeout) gives its slot back.
    let mut probe_slot = crate::resilience::breaker::ProbeSlot::default();
    let mut probe = match admit(rt, &mut probe_slot) {
        Ok(p) => p,
        Err(fallback) => return Ok(*fallback),
    };
    let timeouts = pick(|p| p.timeouts.is_some())
        .and_then(|p| p.timeouts)
        .unwrap_or_default();
    let total = timeouts.request.or(route.timeout);
    let default_retry = crate::resilience::policy::RetryPolicy::default();
    let retry_policy = pick(|p| p.retry.is_some())
        .and_then(|p| p.retry.as_ref())
        .unwrap_or(&default_retry);
    // 4. The total timeout is a deadline every wait below respects (one timer per attempt, not one per layer).
    let deadline = total.map(|t| tokio::time::Instant::now() + t);
    let total_timeout = || {
        inc(&rt.counters.timeouts);
        ProxyError::Timeout(total.unwrap_or_default())
    };
    {
        // Keep the body for replay when a retry may need it and it is small enough.
        let mut streaming = Some(body);
        let mut replay: Option<bytes::Bytes> = None;
        if retry_policy.attempts > 0 {
            let b = streaming.take().unwrap_or(RequestBody::Empty);
            let small = http_body::Body::size_hint(&b)
                .upper()
                .is_some_and(|n| n <= REPLAY_LIMIT);
            if http_body::Body::is_end_stream(&b) {
                replay = Some(bytes::Bytes::new());
            } else if small {
                use http_body_util::BodyExt;
                let collected = within(deadline, b.collect())
                    .await
                    .ok_or_else(total_timeout)?
                    .map_err(body_error)?;
                replay = Some(collected.to_bytes());
            } else {
                streaming = Some(b);
            }
        }
        let key = hash_key(rt, &parts, peer);
        rt.budget.deposit(tokio::time::Instant::now());
        let mut retry_no = 0u32;
        loop {
            // 6. Bulkhead.
            let slot = match &rt.bulkhead {
                Some(b) => match within(deadline, b.enter())
                    .await
                    .ok_or_else(total_timeout)?
                {
                    Some(p) => Some(p),
                    None => {
                        inc(&rt.counters.bulkhead_rejected);
                        return Err(ProxyError::BulkheadFull {
                            cluster: cluster.name.to_string(),
                            max: b.cfg.max_concurrent,
                        });
                    }
                },
                None => None,
            };
            // 7. Balancer.
            let i = cluster
                .choose(key)
                .ok_or_else(|| ProxyError::NoEndpoint(cluster.name.to_string()))?;
            let (endpoint, state) = (&cluster.endpoints[i], &cluster.states[i]);
            let body = match (&replay, streaming.take()) {
                (Some(b), _) if b.is_empty() => RequestBody::Empty,
                (Some(b), _) => RequestBody::Full(Some(b.clone())),
                (None, Some(b)) => b,
                (None, None) => RequestBody::Empty,
            };
            // Counted in flight until this attempt ends, however it ends (a client that goes away drops it).
            let in_flight = crate::resilience::balance::InFlight::new(state);
            let started = tokio::time::Instant::now();
            // 8. Per-try timeout around the upstream call.
            let fut = forward(
                ctx,
                clone_parts(&parts),
                body,
                cluster,
                endpoint.authority.clone(),
                route.filters.response_headers.as_ref(),
            );
            let try_deadline = timeouts.per_try.map(|t| (started + t, t));
            let result = match (try_deadline, deadline) {
                (Some((at, t)), d) if d.is_none_or(|d| at < d) => tokio::time::timeout_at(at, fut)
                    .await
                    .unwrap_or(Err(ProxyError::Timeout(t))),
                (_, Some(d)) => match tokio::time::timeout_at(d, fut).await {
                    Ok(r) => r,
                    Err(_) => {
                        drop(in_flight);
                        state.observe(
                            crate::resilience::balance::PENALTY,
                            crate::resilience::clock::now_nanos(),
                        );
                        return Err(total_timeout());
                    }
                },
                (_, None) => fut.await,
            };
            drop(in_flight);
            // 9. The outcome, recorded.
            let outcome = retry::Outcome::of(&result);
            let now = tokio::time::Instant::now();
            let rtt = if outcome.penalised() {
                crate::resilience::balance::PENALTY.max(now - started)
            } else {
                now - started
            };
            state.observe(rtt, crate::resilience::clock::nanos(now));
            if let Some(status) = outcome.outlier_status() {
                rt.observe_outlier(&cluster.states, i, status);
            }
            if let (Some(b), true) = (&rt.breaker, outcome.kind != retry::Kind::Local) {
                rt.breaker_moved(b.record(now, !outcome.failed(), probe));
                probe_slot.disarm();
            }
            if outcome.kind == retry::Kind::Timeout {
                inc(&rt.counters.timeouts);
            }
            // A streamed body (too large to keep) went with the attempt: nothing to send again.
            let again = retry_no < retry_policy.attempts
                && replay.is_some()
                && retry::retriable(&outcome, retry_policy, &parts.method);
            if !again {
                return hold_slot(result, slot);
            }
            if !rt.budget.try_withdraw(now) {
                inc(&rt.counters.budget_exhausted);
                return hold_slot(result, slot);
            }
            drop(slot);
            let wait = retry::delay(retry_policy, retry_no, &result);
            if let Ok(resp) = result {
                tokio::spawn(drain_response(resp));
            }
            if let Some(d) = deadline {
                if tokio::time::Instant::now() + wait >= d {
                    tokio::time::sleep_until(d).await;
                    return Err(total_timeout());
                }
            }
            tokio::time::sleep(wait).await;
            retry_no += 1;
            inc(&rt.counters.retries);
            // An attempt that opened the circuit ends the retries: the breaker decides again.
            match admit(rt, &mut probe_slot) {
                Ok(p) => probe = p,
                Err(fallback) => return Ok(*fallback),
            }
        }
    };
}

/// `fut` bounded by `deadline` (None: unbounded); None when the deadline passed first.
async fn within<T>(
    deadline: Option<tokio::time::Instant>,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, fut).await.ok(),
        None => Some(fut.await),
    }
}

/// The bulkhead slot stays taken until the response body ends (a long streamed answer still occupies the
/// upstream), carried by the body.
pub(crate) fn hold_slot(
    result: Result<Response<ResponseBody>, ProxyError>,
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Result<Response<ResponseBody>, ProxyError> {
    match (result, slot) {
        (Ok(resp), Some(permit)) if !http_body::Body::is_end_stream(resp.body()) => {
            Ok(resp.map(|b| match b {
                ResponseBody::Upstream(incoming) => ResponseBody::Held(incoming, permit),
                // Anything else is not coming from the upstream any more.
                other => other,
            }))
        }
        (result, _) => result,
    }
}

/// Asks the cluster's breaker (if any) to let a request through: Ok(whether it is a half-open probe, its slot
/// held by `slot`), or Err(the open circuit's answer).
fn admit<'a>(
    rt: &'a crate::resilience::ClusterRuntime,
    slot: &mut crate::resilience::breaker::ProbeSlot<'a>,
) -> Result<bool, Box<Response<ResponseBody>>> {
    let Some(b) = &rt.breaker else {
        return Ok(false);
    };
    let (admit, moved) = b.admit(tokio::time::Instant::now());
    rt.breaker_moved(moved);
    match admit {
        crate::resilience::breaker::Admit::No => {
            crate::resilience::inc(&rt.counters.breaker_rejected);
            Err(Box::new(circuit_open(rt)))
        }
        crate::resilience::breaker::Admit::Yes { probe } => {
            slot.arm(Some(b), probe);
            Ok(probe)
        }
    }
}

fn body_error(e: crate::body::BoxError) -> ProxyError {
    let e: &(dyn std::error::Error + 'static) = &*e;
    if let Some(e) = crate::error::find::<crate::filter::chain::BodyTooLarge>(e) {
        return ProxyError::PayloadTooLarge(e.to_string());
    }
    if let Some(e) = crate::error::find::<crate::filter::chain::BodyFilterFailed>(e) {
        return ProxyError::FilterFailed(e.to_string());
    }
    if let Some(e) = crate::error::find::<crate::filter::chain::BodyReplied>(e) {
        return ProxyError::FilterFailed(e.to_string());
    }
    ProxyError::BadRequest("the request body could not be read")
}

async fn drain_response(resp: Response<ResponseBody>) {
    use http_body_util::BodyExt;
    let mut body = resp.into_body();
    while let Some(Ok(_)) = body.frame().await {}
}

fn clone_parts(p: &http::request::Parts) -> http::request::Parts {
    let mut req = Request::new(());
    *req.method_mut() = p.method.clone();
    *req.uri_mut() = p.uri.clone();
    *req.version_mut() = p.version;
    *req.headers_mut() = p.headers.clone();
    req.into_parts().0
}

/// The consistent-hash key of a request, if the cluster balances by one.
fn hash_key(
    rt: &crate::resilience::ClusterRuntime,
    parts: &http::request::Parts,
    peer: SocketAddr,
) -> Option<u64> {
    use crate::resilience::balance::hash;
    use crate::resilience::policy::HashOn;
    match rt.policy.hash_on.as_ref()? {
        HashOn::Header(h) => parts.headers.get(h).map(|v| hash(v.as_bytes())),
        HashOn::SourceIp => Some(hash(peer.ip().to_string().as_bytes())),
        HashOn::Cookie(name) => parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| hash(v.as_bytes())),
    }
}

/// A fast answer while the circuit is open: the policy's fallback, or a 503 that says so.
fn circuit_open(rt: &crate::resilience::ClusterRuntime) -> Response<ResponseBody> {
    match &rt.fallback {
        Some(f) => {
            let mut r = Response::new(ResponseBody::Full(
                Some(f.body.clone()).filter(|b| !b.is_empty()),
            ));
            *r.status_mut() = f.status;
            for (k, v) in &f.headers {
                r.headers_mut().append(k.clone(), v.clone());
            }
            r
        }
        None => {
            let mut r = Response::new(ResponseBody::text(format!(
                "meshwork: circuit open for {}: failing fast\n",
                rt.name
            )));
            *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            r.headers_mut()
                .insert(header::CONTENT_TYPE, TEXT_PLAIN.clone());
            r
        }
    }
}

/// Fault injection: a delay and/or an abort, each on its percentage of the requests (only those carrying the
/// configured header, if any).
async fn inject_fault(
    f: &crate::resilience::policy::FaultConfig,
    parts: &http::request::Parts,
    rt: &crate::resilience::ClusterRuntime,
) -> Option<Response<ResponseBody>> {
    use crate::resilience::inc;
    use crate::resilience::policy::Abort;
    if let Some((name, value)) = &f.header {
        match parts.headers.get(name) {
            Some(v) if value.is_empty() || v.as_bytes() == value.as_bytes() => {}
            _ => return None,
        }
    }
    if f.delay_percent > 0.0 && fastrand::f64() * 100.0 < f.delay_percent {
        inc(&rt.counters.fault_delays);
        tokio::time::sleep(f.delay).await;
    }
    if f.abort_percent > 0.0 && fastrand::f64() * 100.0 < f.abort_percent {
        inc(&rt.counters.fault_aborts);
        let mut r = Response::new(ResponseBody::empty());
        match f.abort.as_ref()? {
            Abort::Http(status) => {
                *r.body_mut() = ResponseBody::text("meshwork: fault injected\n");
                *r.status_mut() = *status;
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, TEXT_PLAIN.clone());
            }
            Abort::Grpc(code) => {
                // A trailers-only gRPC answer: the status travels in the headers.
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/grpc"),
                );
                r.headers_mut()
                    .insert("grpc-status", HeaderValue::from(*code));
                r.headers_mut()
                    .insert("grpc-message", HeaderValue::from_static("fault injected"));
            }
        }
        return Some(r);
    }
    None
}

/// A rate limit: go on (None), wait for a token (queue mode), or answer 429 with `Retry-After` and the
/// `RateLimit-*` headers.
async fn rate_limit(
    rt: &crate::resilience::ClusterRuntime,
    parts: &http::request::Parts,
    peer: SocketAddr,
) -> Option<Response<ResponseBody>> {
    use crate::resilience::bucket::Take;
    use crate::resilience::inc;
    use crate::resilience::policy::LimitKey;
    let limiter = rt.limiter.as_ref()?;
    let cfg = rt.policy.request.rate_limit.as_ref()?;
    let ip;
    let key: &str = match &cfg.key {
        LimitKey::Global => "",
        LimitKey::SourceIp => {
            ip = peer.ip().to_string();
            &ip
        }
        LimitKey::Header(h) => parts
            .headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-"),
        LimitKey::SourceService => parts
            .headers
            .get(&SOURCE_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-"),
    };
    let (take, reset) = limiter.take(key, tokio::time::Instant::now(), cfg.max_delay);
    match take {
        Take::Now { .. } => None,
        Take::After(wait) => {
            inc(&rt.counters.rate_queued);
            tokio::time::sleep(wait).await;
            None
        }
        Take::Rejected { retry_after } => {
            inc(&rt.counters.rate_limited);
            let mut r = Response::new(ResponseBody::text("meshwork: rate limited\n"));
            *r.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, TEXT_PLAIN.clone());
            h.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after.as_secs_f64().ceil().max(1.0) as u64),
            );
            h.insert("ratelimit-limit", HeaderValue::from(limiter.burst));
            h.insert("ratelimit-remaining", HeaderValue::from(0u32));
            h.insert("ratelimit-reset", HeaderValue::from(reset.max(1)));
            Some(r)
        }
    }
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
            RequestBody::Filtered(Box::new(crate::body::FilteredBody::new(
                body, filter, None, declared,
            )))
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
) -> Response<ResponseBody> {
    let (mut parts, body) = resp.into_parts();
    let eos = http_body::Body::is_end_stream(&body);
    if let Some(local) = chain.on_response(&mut parts, eos).await {
        return local;
    }
    match chain.response_body_filter() {
        Some(filter) if !eos => {
            let declared = content_length(&parts.headers);
            let body = crate::body::FilteredBody::new(body, filter, Some(chain), declared);
            Response::from_parts(parts, ResponseBody::Filtered(Box::new(body)))
        }
        _ => Response::from_parts(parts, body),
    }
}

fn prepare_headers(ctx: &ListenerCtx, parts: &mut http::request::Parts, peer: SocketAddr) {
    match &ctx.source {
        Some(v) => {
            parts.headers.insert(SOURCE_HEADER, v.clone());
        }
        // Only the listener that reads it (inbound) keeps the caller sidecar's statement.
        None if !matches!(ctx.mode, Mode::Inbound(_)) => {
            parts.headers.remove(SOURCE_HEADER);
        }
        None => {}
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
    let t = cluster.rt.policy.request.timeouts.unwrap_or_default();
    let upstreams = if t.connect.is_some() || t.idle.is_some() {
        // Made once per cluster runtime: no lock on the request path after the first request.
        cluster
            .rt
            .clients
            .get_or_init(|| ctx.upstreams.tuned(t.connect, t.idle))
    } else {
        &ctx.upstreams
    };
    let resp = upstreams
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
            // Not the upstream's failure: the filter's local reply replaces the answer (`Chain::body_reply`).
            if let Some(e) = crate::error::find::<crate::filter::chain::BodyReplied>(&source) {
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
