//! The call to an upstream service for one routed request: TrafficPolicy's layers around the balancer and the
//! upstream, outermost first (changing the order is a design change; docs/resilience.md explains it):
//!
//! 1. fault injection (delay, abort): chaos on the caller's side, before anything else;
//! 2. rate limit (client side): shed or queue before spending upstream capacity;
//! 3. circuit breaker: an open circuit fails fast (its fallback is answered by `error.rs`);
//! 4. total timeout (`timeouts.request`, else the HTTPRoute's), retries included: one deadline every wait below
//!    respects (one timer per attempt, not one per layer);
//! 5. retries, with the budget and backoff; per attempt:
//!    6. bulkhead (a slot, or wait among `maxPending`, or fail),
//!    7. balancer (skipping ejected and unhealthy endpoints),
//!    8. per-try timeout around the upstream call,
//!    9. the outcome recorded: latency EWMA (by the attempt itself), outlier detection, breaker.
//!
//! Every step is a function below, in that order; the layers' own answers (429, 503, fault aborts) are errors
//! here, turned into replies by `error.rs`, the one owner of the proxy's replies.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::Response;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::balance::{self, InFlight, PENALTY};
use super::breaker::{Admit, ProbeSlot};
use super::bucket::Take;
use super::retry::{self, Outcome};
use super::{clock, inc, Balancer, ClusterRuntime};
use crate::config::policy::{
    Abort, FaultConfig, HashOn, LimitKey, RequestPolicy, RetryPolicy, Timeouts,
};
use crate::telemetry::trace::span::{Attributes, Value};
use crate::telemetry::Journal;
use crate::upstream::body::{BoxError, RequestBody, ResponseBody};
use crate::upstream::{self, UpstreamError, Upstreams};

/// Request bodies up to this size are kept so a retry can send them again; larger ones are not retried.
pub const REPLAY_LIMIT: u64 = 64 * 1024;

/// The calling service, as the caller's sidecar states it (what limits keyed by `sourceService` read).
pub const SOURCE_HEADER: HeaderName = HeaderName::from_static("x-meshwork-source");

/// Why a call ended without an upstream answer. Each is answered by `error.rs`.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("no healthy endpoint for {0}")]
    NoEndpoint(Arc<str>),
    #[error("bulkhead full: {cluster} already has {max} requests in flight and no room to wait")]
    BulkheadFull { cluster: Arc<str>, max: u32 },
    #[error("circuit open for {}: failing fast", .0.name)]
    CircuitOpen(Arc<ClusterRuntime>),
    #[error("rate limited")]
    RateLimited {
        retry_after: Duration,
        limit: u32,
        reset: u64,
    },
    #[error("fault injected")]
    FaultAbort(Abort),
    #[error("the request body could not be read")]
    RequestBody(#[source] BoxError),
}

/// One routed request as the resilience layers see it.
pub struct Request<'a> {
    pub parts: http::request::Parts,
    pub body: RequestBody,
    pub peer: SocketAddr,
    /// A TrafficPolicy targeting the route: its per-request fields (and rate-limit state) override the service's.
    pub route_policy: Option<&'a ClusterRuntime>,
    /// The HTTPRoute's own request timeout, used when no policy sets `timeouts.request`.
    pub route_timeout: Option<Duration>,
    /// Where the attempts and the layers' decisions are noted, when the request is logged or traced.
    pub journal: Option<&'a Journal>,
}

/// Calls the upstream service `b` through every layer, in the order the module documents.
pub async fn call(
    clients: &Upstreams,
    b: &Balancer,
    req: Request<'_>,
) -> Result<Response<ResponseBody>, CallError> {
    let rt = &b.rt;
    let clients = tuned_clients(clients, rt);
    let own = req.route_policy.map(|p| &p.policy.request);
    let pick =
        |has: fn(&RequestPolicy) -> bool| own.filter(|p| has(p)).unwrap_or(&rt.policy.request);
    inc(&rt.counters.requests);
    let journal = req.journal;
    // 1. Fault injection.
    if let Some(f) = &pick(|p| p.fault.is_some()).fault {
        inject_fault(f, &req.parts, rt, journal).await?;
    }
    // 2. Client-side rate limit (the route's bucket when the route's policy has one).
    let limiter = match req.route_policy {
        Some(route) if route.policy.request.rate_limit.is_some() => route,
        _ => rt,
    };
    rate_limit(limiter, &req.parts, req.peer)
        .await
        .inspect_err(|_| note(journal, "rate_limited", Vec::new))?;
    // 3. Circuit breaker. A half-open probe that never reports (the client went away, a timeout) gives its slot
    //    back when `slot` drops.
    let mut slot = ProbeSlot::default();
    let probe = admit(rt, &mut slot).inspect_err(|_| note(journal, "circuit_open", Vec::new))?;
    // 4. The total timeout, as a deadline.
    let timeouts = pick(|p| p.timeouts.is_some()).timeouts.unwrap_or_default();
    let total = timeouts.request.or(req.route_timeout);
    let deadline = Deadline {
        at: total.map(|t| Instant::now() + t),
        total: total.unwrap_or_default(),
    };
    let default_retry = RetryPolicy::default();
    let retry = pick(|p| p.retry.is_some())
        .retry
        .as_ref()
        .unwrap_or(&default_retry);
    // 5. Retries.
    let attempts = Attempts {
        clients,
        b,
        retry,
        timeouts,
        deadline,
        journal,
    };
    attempts.run(req, probe, slot).await
}

/// The upstream clients for the service's `timeouts.connect` / `timeouts.idle`, made once per cluster runtime
/// (no lock on the request path after the first request).
fn tuned_clients<'a>(clients: &'a Upstreams, rt: &'a ClusterRuntime) -> &'a Upstreams {
    let t = rt.policy.request.timeouts.unwrap_or_default();
    if t.connect.is_none() && t.idle.is_none() {
        return clients;
    }
    rt.clients.get_or_init(|| clients.tuned(t.connect, t.idle))
}

/// What every attempt of one call shares.
struct Attempts<'a> {
    clients: &'a Upstreams,
    b: &'a Balancer,
    retry: &'a RetryPolicy,
    timeouts: Timeouts,
    deadline: Deadline,
    journal: Option<&'a Journal>,
}

impl<'a> Attempts<'a> {
    /// Step 5: attempts until one answers for good, the policy or the budget allows no more, or the deadline.
    async fn run(
        &self,
        req: Request<'_>,
        mut probe: bool,
        mut slot: ProbeSlot<'a>,
    ) -> Result<Response<ResponseBody>, CallError> {
        let rt = &self.b.rt;
        let mut body = Replay::keep(req.body, self.retry.attempts > 0, self.deadline, rt).await?;
        let key = hash_key(rt, &req.parts, req.peer);
        rt.budget.deposit(Instant::now());
        let mut retry_no = 0u32;
        loop {
            let held = self.bulkhead().await?;
            let i = self
                .b
                .choose(key)
                .ok_or_else(|| CallError::NoEndpoint(self.b.cluster.name.clone()))?;
            let parts = clone_parts(&req.parts);
            let (result, outcome) = self.attempt(parts, body.next(), i).await?;
            self.record(i, &outcome, probe, &mut slot);
            let again = retry_no < self.retry.attempts
                && body.replayable()
                && retry::retriable(&outcome, self.retry, &req.parts.method);
            if !again {
                return hold_slot(result, held);
            }
            if !rt.budget.try_withdraw(Instant::now()) {
                inc(&rt.counters.budget_exhausted);
                note(self.journal, "retry_budget_exhausted", Vec::new);
                return hold_slot(result, held);
            }
            drop(held);
            self.back_off(retry_no, result).await?;
            retry_no += 1;
            inc(&rt.counters.retries);
            note(self.journal, "retry", || {
                vec![
                    ("meshwork.retry.number", Value::Int(retry_no.into())),
                    ("meshwork.retry.after", Value::Static(outcome.describe())),
                ]
            });
            // An attempt that opened the circuit ends the retries: the breaker decides again.
            probe = admit(rt, &mut slot)?;
        }
    }

    /// Step 6: a bulkhead slot (None without a bulkhead), waiting among `maxPending` within the deadline.
    async fn bulkhead(&self) -> Result<Option<OwnedSemaphorePermit>, CallError> {
        let rt = &self.b.rt;
        let Some(bulkhead) = &rt.bulkhead else {
            return Ok(None);
        };
        match self.deadline.within(rt, bulkhead.enter()).await? {
            Some(permit) => Ok(Some(permit)),
            None => {
                inc(&rt.counters.bulkhead_rejected);
                Err(CallError::BulkheadFull {
                    cluster: self.b.cluster.name.clone(),
                    max: bulkhead.cfg.max_concurrent,
                })
            }
        }
    }

    /// Steps 7-8: one attempt at `endpoint`, bounded by the per-try timeout and the deadline. The endpoint counts
    /// it in flight until it ends, however it ends. The deadline passing ends the whole call (Err).
    async fn attempt(
        &self,
        mut parts: http::request::Parts,
        body: RequestBody,
        i: usize,
    ) -> Result<(AttemptResult, Outcome), CallError> {
        let cluster = &self.b.cluster;
        let (endpoint, state) = (&cluster.endpoints[i], &*self.b.states[i]);
        let _in_flight = InFlight::new(state);
        let noted = self
            .journal
            .map(|j| (j, j.attempt(endpoint.addr, &mut parts.headers)));
        let started = Instant::now();
        let fut = upstream::send(
            self.clients,
            &cluster.name,
            cluster.protocol,
            endpoint,
            parts,
            body,
        );
        let fut = async {
            fut.await
                .map(|r| r.map(ResponseBody::Upstream))
                .map_err(CallError::from)
        };
        let per_try = self.timeouts.per_try.map(|t| (started + t, t));
        let result = match (per_try, self.deadline.at) {
            (Some((at, t)), d) if d.is_none_or(|d| at < d) => tokio::time::timeout_at(at, fut)
                .await
                .unwrap_or(Err(CallError::Timeout(t))),
            (_, Some(d)) => match tokio::time::timeout_at(d, fut).await {
                Ok(r) => r,
                Err(_) => {
                    state.observe(PENALTY, clock::now_nanos());
                    if let Some((j, n)) = noted {
                        j.outcome(n, 0, Some("timeout"));
                    }
                    return Err(self.deadline.passed(&self.b.rt));
                }
            },
            (_, None) => fut.await,
        };
        let outcome = Outcome::of(&result);
        if let Some((j, n)) = noted {
            j.outcome(n, outcome.status.unwrap_or(0), outcome.error_type());
        }
        let elapsed = Instant::now() - started;
        let rtt = if outcome.penalised() {
            PENALTY.max(elapsed)
        } else {
            elapsed
        };
        state.observe(rtt, clock::now_nanos());
        Ok((result, outcome))
    }

    /// Step 9: the outcome, recorded: outlier detection, breaker, timeouts (latency was recorded by `attempt`).
    fn record(&self, i: usize, outcome: &Outcome, probe: bool, slot: &mut ProbeSlot<'a>) {
        let rt = &self.b.rt;
        if let Some(status) = outcome.outlier_status() {
            if rt.observe_outlier(&self.b.states, i, status) {
                let endpoint = self.b.cluster.endpoints[i].addr;
                note(self.journal, "endpoint_ejected", || {
                    vec![("network.peer.address", Value::Owned(endpoint.to_string()))]
                });
            }
        }
        if let (Some(breaker), true) = (&rt.breaker, outcome.kind != retry::Kind::Local) {
            rt.breaker_moved(breaker.record(Instant::now(), !outcome.failed(), probe));
            slot.disarm();
        }
        if outcome.kind == retry::Kind::Timeout {
            inc(&rt.counters.timeouts);
        }
    }

    /// Waits before the next retry (backoff, or the answer's `Retry-After`), unless that would pass the deadline.
    async fn back_off(&self, retry_no: u32, result: AttemptResult) -> Result<(), CallError> {
        let wait = retry::delay(self.retry, retry_no, &result);
        if let Ok(resp) = result {
            tokio::spawn(drain_response(resp));
        }
        if let Some(d) = self.deadline.at {
            if Instant::now() + wait >= d {
                tokio::time::sleep_until(d).await;
                return Err(self.deadline.passed(&self.b.rt));
            }
        }
        tokio::time::sleep(wait).await;
        Ok(())
    }
}

type AttemptResult = Result<Response<ResponseBody>, CallError>;

/// Step 4: the total timeout as one deadline (None: unbounded).
#[derive(Clone, Copy)]
struct Deadline {
    at: Option<Instant>,
    total: Duration,
}

impl Deadline {
    /// `fut`, unless the deadline passes first.
    async fn within<T>(
        self,
        rt: &ClusterRuntime,
        fut: impl std::future::Future<Output = T>,
    ) -> Result<T, CallError> {
        match self.at {
            Some(d) => tokio::time::timeout_at(d, fut)
                .await
                .map_err(|_| self.passed(rt)),
            None => Ok(fut.await),
        }
    }

    fn passed(self, rt: &ClusterRuntime) -> CallError {
        inc(&rt.counters.timeouts);
        CallError::Timeout(self.total)
    }
}

/// The request body across attempts: kept whole for replay when retries are possible and it is small enough,
/// else streamed once (a streamed body goes with its attempt: nothing to send again).
enum Replay {
    Kept(Bytes),
    Streamed(Option<RequestBody>),
}

impl Replay {
    async fn keep(
        body: RequestBody,
        retries: bool,
        deadline: Deadline,
        rt: &ClusterRuntime,
    ) -> Result<Replay, CallError> {
        use http_body::Body;
        if !retries {
            return Ok(Replay::Streamed(Some(body)));
        }
        if body.is_end_stream() {
            return Ok(Replay::Kept(Bytes::new()));
        }
        if body.size_hint().upper().is_none_or(|n| n > REPLAY_LIMIT) {
            return Ok(Replay::Streamed(Some(body)));
        }
        use http_body_util::BodyExt;
        let collected = deadline.within(rt, body.collect()).await?;
        Ok(Replay::Kept(
            collected.map_err(CallError::RequestBody)?.to_bytes(),
        ))
    }

    fn next(&mut self) -> RequestBody {
        match self {
            Replay::Kept(b) if b.is_empty() => RequestBody::Empty,
            Replay::Kept(b) => RequestBody::Full(Some(b.clone())),
            Replay::Streamed(b) => b.take().unwrap_or(RequestBody::Empty),
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, Replay::Kept(_))
    }
}

/// Step 1: a delay and/or an abort, each on its percentage of the requests (only those carrying the configured
/// header, if any).
async fn inject_fault(
    f: &FaultConfig,
    parts: &http::request::Parts,
    rt: &ClusterRuntime,
    journal: Option<&Journal>,
) -> Result<(), CallError> {
    if let Some((name, value)) = &f.header {
        match parts.headers.get(name) {
            Some(v) if value.is_empty() || v.as_bytes() == value.as_bytes() => {}
            _ => return Ok(()),
        }
    }
    if f.delay_percent > 0.0 && fastrand::f64() * 100.0 < f.delay_percent {
        inc(&rt.counters.fault_delays);
        let delay = f.delay;
        note(journal, "fault_delay", || {
            vec![(
                "meshwork.fault.delay_ms",
                Value::Int(delay.as_millis().min(i64::MAX as u128) as i64),
            )]
        });
        tokio::time::sleep(f.delay).await;
    }
    if f.abort_percent > 0.0 && fastrand::f64() * 100.0 < f.abort_percent {
        inc(&rt.counters.fault_aborts);
        note(journal, "fault_abort", Vec::new);
        if let Some(abort) = &f.abort {
            return Err(CallError::FaultAbort(abort.clone()));
        }
    }
    Ok(())
}

/// Step 2 (and the server-side limit of a sidecar's inbound listener): go on, wait for a token (queue mode), or
/// fail with `RateLimited`.
pub async fn rate_limit(
    rt: &ClusterRuntime,
    parts: &http::request::Parts,
    peer: SocketAddr,
) -> Result<(), CallError> {
    let (Some(limiter), Some(cfg)) = (&rt.limiter, &rt.policy.request.rate_limit) else {
        return Ok(());
    };
    let ip;
    let key: &str = match &cfg.key {
        LimitKey::Global => "",
        LimitKey::SourceIp => {
            ip = peer.ip().to_string();
            &ip
        }
        LimitKey::Header(h) => header_str(parts, h),
        LimitKey::SourceService => header_str(parts, &SOURCE_HEADER),
    };
    let (take, reset) = limiter.take(key, Instant::now(), cfg.max_delay);
    match take {
        Take::Now { .. } => Ok(()),
        Take::After(wait) => {
            inc(&rt.counters.rate_queued);
            tokio::time::sleep(wait).await;
            Ok(())
        }
        Take::Rejected { retry_after } => {
            inc(&rt.counters.rate_limited);
            Err(CallError::RateLimited {
                retry_after,
                limit: limiter.burst,
                reset,
            })
        }
    }
}

fn header_str<'a>(parts: &'a http::request::Parts, name: &HeaderName) -> &'a str {
    parts
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
}

/// Step 3: asks the cluster's breaker (if any) to let a request through: whether it is a half-open probe (its
/// slot held by `slot`), or `CircuitOpen`.
fn admit<'a>(rt: &'a Arc<ClusterRuntime>, slot: &mut ProbeSlot<'a>) -> Result<bool, CallError> {
    let Some(b) = &rt.breaker else {
        return Ok(false);
    };
    let (admit, moved) = b.admit(Instant::now());
    rt.breaker_moved(moved);
    match admit {
        Admit::No => {
            inc(&rt.counters.breaker_rejected);
            Err(CallError::CircuitOpen(rt.clone()))
        }
        Admit::Yes { probe } => {
            slot.arm(Some(b), probe);
            Ok(probe)
        }
    }
}

/// The consistent-hash key of a request, if the cluster balances by one.
fn hash_key(rt: &ClusterRuntime, parts: &http::request::Parts, peer: SocketAddr) -> Option<u64> {
    match rt.policy.hash_on.as_ref()? {
        HashOn::Header(h) => parts.headers.get(h).map(|v| balance::hash(v.as_bytes())),
        HashOn::SourceIp => Some(balance::hash(peer.ip().to_string().as_bytes())),
        HashOn::Cookie(name) => parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| balance::hash(v.as_bytes())),
    }
}

/// The bulkhead slot stays taken until the response body ends (a long streamed answer still occupies the
/// upstream), carried by the body.
pub(crate) fn hold_slot(
    result: AttemptResult,
    slot: Option<OwnedSemaphorePermit>,
) -> AttemptResult {
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

async fn drain_response(resp: Response<ResponseBody>) {
    use http_body_util::BodyExt;
    let mut body = resp.into_body();
    while let Some(Ok(_)) = body.frame().await {}
}

/// Notes a layer's decision on a traced request.
fn note(journal: Option<&Journal>, name: &'static str, attributes: impl FnOnce() -> Attributes) {
    if let Some(j) = journal {
        j.event(name, attributes);
    }
}

fn clone_parts(p: &http::request::Parts) -> http::request::Parts {
    let mut req = http::Request::new(());
    *req.method_mut() = p.method.clone();
    *req.uri_mut() = p.uri.clone();
    *req.version_mut() = p.version;
    *req.headers_mut() = p.headers.clone();
    req.into_parts().0
}
