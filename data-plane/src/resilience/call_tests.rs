//! The order of the layers in `call` (its module doc), one test per pair of neighbours, each failing if the two
//! were swapped. The upstream is a real HTTP/1.1 server on 127.0.0.1 that answers by a script and counts what
//! reaches it; the cluster's runtime comes from `Registry::sync`, as in the proxy.
//!
//! Time is paused: tokio moves the clock only when every task waits, and loopback I/O is ready by then, so the
//! clock jumps only to the timers the tests mean (per-try and total timeouts, backoff, `Retry-After`). Rate limits
//! refill at one token per 1000 s and breakers stay open 10 s, so no test depends on a refill or a half-open probe
//! it does not ask for.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderName;
use http::{Response, StatusCode};
use http_body_util::Empty;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::breaker::State;
use super::{call, Balancer, CallError, ClusterRuntime, Registry, Request};
use crate::config::policy::{
    on, Abort, BreakerConfig, BulkheadConfig, FaultConfig, LimitKey, Policy, RateLimitConfig,
    RequestPolicy, RetryPolicy, Timeouts,
};
use crate::config::snapshot::{Cluster, Endpoint, Protocol, Snapshot};
use crate::upstream::body::{RequestBody, ResponseBody};
use crate::upstream::Upstreams;

/// What the fake upstream does with one request.
#[derive(Clone, Copy)]
enum Reply {
    Status(u16),
    /// A status with `Retry-After: <seconds>`.
    StatusRetryAfter(u16, u64),
    /// Never answers.
    Hang,
}

/// A real HTTP/1.1 server answering request n with `script[n]` (the last entry once the script runs out).
struct FakeUpstream {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl FakeUpstream {
    async fn start(script: &[Reply]) -> FakeUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let script: Arc<[Reply]> = script.into();
        let counted = hits.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (script, hits) = (script.clone(), counted.clone());
                let svc = service_fn(move |_req| {
                    let n = hits.fetch_add(1, Ordering::SeqCst);
                    answer(script[n.min(script.len() - 1)])
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
        FakeUpstream { addr, hits }
    }

    /// Requests that reached the upstream.
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn answer(reply: Reply) -> Result<Response<Empty<Bytes>>, Infallible> {
    let mut resp = Response::new(Empty::new());
    match reply {
        Reply::Status(s) => *resp.status_mut() = StatusCode::from_u16(s).unwrap(),
        Reply::StatusRetryAfter(s, secs) => {
            *resp.status_mut() = StatusCode::from_u16(s).unwrap();
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, secs.into());
        }
        Reply::Hang => std::future::pending::<()>().await,
    }
    Ok(resp)
}

/// One cluster `svc` with one endpoint (the fake upstream) and `policy`, bound through `Registry::sync`.
struct Fixture {
    upstream: FakeUpstream,
    clients: Upstreams,
    balancer: Arc<Balancer>,
}

async fn fixture(policy: Policy, script: &[Reply]) -> Fixture {
    let upstream = FakeUpstream::start(script).await;
    let endpoint = Endpoint::plain(upstream.addr);
    let cluster = Arc::new(Cluster {
        name: "svc".into(),
        protocol: Protocol::Http1,
        endpoints: vec![endpoint],
        policy: Arc::new(policy),
    });
    let mut snapshot = Snapshot::empty();
    snapshot
        .clusters
        .insert(cluster.name.clone(), cluster.clone());
    let clients = Upstreams::new(Duration::from_secs(30));
    let registry = Registry::default();
    registry.sync(&snapshot, &clients);
    let balancer = registry.balancer(&cluster);
    Fixture {
        upstream,
        clients,
        balancer,
    }
}

impl Fixture {
    /// A GET through every layer, with these request headers.
    async fn send_with(&self, headers: &[(&'static str, &'static str)]) -> Sent {
        let mut req = http::Request::get("/").body(()).unwrap();
        for (name, value) in headers {
            req.headers_mut()
                .insert(*name, http::HeaderValue::from_static(value));
        }
        let req = Request {
            parts: req.into_parts().0,
            body: RequestBody::Empty,
            peer: "127.0.0.1:40000".parse().unwrap(),
            route_policy: None,
            route_timeout: None,
            journal: None,
        };
        call(&self.clients, &self.balancer, req).await
    }

    async fn send(&self) -> Sent {
        self.send_with(&[]).await
    }

    fn rt(&self) -> &ClusterRuntime {
        &self.balancer.rt
    }

    fn breaker_state(&self) -> State {
        self.rt().breaker.as_ref().unwrap().state()
    }
}

type Sent = Result<Response<ResponseBody>, CallError>;

fn n(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn status(sent: Sent) -> u16 {
    match sent {
        Ok(resp) => resp.status().as_u16(),
        Err(e) => panic!("expected an answer, got {e:?}"),
    }
}

fn error(sent: Sent) -> CallError {
    match sent {
        Ok(resp) => panic!("expected an error, got {}", resp.status()),
        Err(e) => e,
    }
}

/// `attempts` retries on `on`, no backoff (a `Retry-After` still counts), no budget.
fn retry(attempts: u32, on: u16) -> Option<RetryPolicy> {
    Some(RetryPolicy {
        attempts,
        on,
        backoff_base: Duration::ZERO,
        backoff_max: Duration::ZERO,
        budget: None,
        ..RetryPolicy::default()
    })
}

/// Opens after `consecutive` failures in a row, for 10 s, one probe.
fn breaker(consecutive: u32) -> Option<BreakerConfig> {
    Some(BreakerConfig {
        consecutive_failures: consecutive,
        failure_rate: 0.0,
        min_requests: 10,
        window: Duration::from_secs(10),
        open_for: Duration::from_secs(10),
        max_open_for: Duration::from_secs(10),
        half_open_probes: 1,
    })
}

/// `burst` tokens, one more per 1000 s.
fn limit(burst: u32) -> Option<RateLimitConfig> {
    Some(RateLimitConfig {
        rate: 0.001,
        burst,
        key: LimitKey::Global,
        max_delay: None,
    })
}

fn timeouts(request: Option<u64>, per_try: Option<u64>) -> Option<Timeouts> {
    Some(Timeouts {
        request: request.map(Duration::from_millis),
        per_try: per_try.map(Duration::from_millis),
        ..Timeouts::default()
    })
}

fn bulkhead(max_concurrent: u32) -> Option<BulkheadConfig> {
    Some(BulkheadConfig {
        max_concurrent,
        max_pending: 0,
    })
}

/// Fault injection (1) before the rate limit (2): an aborted request takes no token.
#[tokio::test(start_paused = true)]
async fn fault_abort_comes_before_the_rate_limit() {
    let fault = FaultConfig {
        delay_percent: 0.0,
        delay: Duration::ZERO,
        abort_percent: 100.0,
        abort: Some(Abort::Http(StatusCode::IM_A_TEAPOT)),
        header: Some((HeaderName::from_static("x-fault"), String::new())),
    };
    let policy = Policy {
        request: RequestPolicy {
            fault: Some(fault),
            rate_limit: limit(1),
            ..RequestPolicy::default()
        },
        ..Policy::default()
    };
    let f = fixture(policy, &[Reply::Status(200)]).await;

    let e = error(f.send_with(&[("x-fault", "1")]).await);
    assert!(
        matches!(
            e,
            CallError::FaultAbort(Abort::Http(StatusCode::IM_A_TEAPOT))
        ),
        "{e:?}"
    );
    assert_eq!(n(&f.rt().counters.fault_aborts), 1);
    assert_eq!(n(&f.rt().counters.rate_limited), 0);
    assert_eq!(
        status(f.send().await),
        200,
        "the aborted request took no token"
    );
    let e = error(f.send().await);
    assert!(matches!(e, CallError::RateLimited { .. }), "{e:?}");
    assert_eq!(f.upstream.hits(), 1);
}

/// Fault injection (1) before the total timeout (4): an injected delay is not counted in it.
#[tokio::test(start_paused = true)]
async fn fault_delay_is_not_counted_in_the_total_timeout() {
    let fault = FaultConfig {
        delay_percent: 100.0,
        delay: Duration::from_secs(5),
        abort_percent: 0.0,
        abort: None,
        header: None,
    };
    let policy = Policy {
        request: RequestPolicy {
            fault: Some(fault),
            timeouts: timeouts(Some(1000), None),
            ..RequestPolicy::default()
        },
        ..Policy::default()
    };
    let f = fixture(policy, &[Reply::Status(200)]).await;

    let start = Instant::now();
    assert_eq!(status(f.send().await), 200);
    assert!(Instant::now() - start >= Duration::from_secs(5));
    assert_eq!(n(&f.rt().counters.fault_delays), 1);
    assert_eq!(n(&f.rt().counters.timeouts), 0);
    assert_eq!(f.upstream.hits(), 1);
}

/// Rate limit (2) before the circuit breaker (3): a rate-limited request is neither rejected by the open breaker
/// nor admitted by it (it would have been the half-open probe).
#[tokio::test(start_paused = true)]
async fn rate_limit_comes_before_the_circuit_breaker() {
    let policy = Policy {
        request: RequestPolicy {
            rate_limit: limit(2),
            retry: retry(0, 0),
            ..RequestPolicy::default()
        },
        breaker: breaker(1),
        ..Policy::default()
    };
    let f = fixture(policy, &[Reply::Status(503)]).await;
    let counters = &f.rt().counters;

    assert_eq!(status(f.send().await), 503, "token 1; opens the breaker");
    assert_eq!(f.breaker_state(), State::Open);
    let e = error(f.send().await);
    assert!(matches!(e, CallError::CircuitOpen(_)), "token 2: {e:?}");
    assert_eq!(n(&counters.breaker_rejected), 1);

    let e = error(f.send().await);
    assert!(matches!(e, CallError::RateLimited { .. }), "{e:?}");
    assert_eq!(n(&counters.rate_limited), 1);
    assert_eq!(n(&counters.breaker_rejected), 1, "not a breaker rejection");

    // The breaker would let a probe through now; the limiter (a hundredth of a token back) still sheds first.
    tokio::time::advance(Duration::from_secs(10)).await;
    let e = error(f.send().await);
    assert!(matches!(e, CallError::RateLimited { .. }), "{e:?}");
    assert_eq!(f.breaker_state(), State::Open, "no probe was admitted");
    assert_eq!(n(&counters.breaker_half_opened), 0);
    assert_eq!(n(&counters.breaker_rejected), 1);
    assert_eq!(f.upstream.hits(), 1);
}

/// The circuit breaker (3) before the bulkhead (6) and the upstream: an open circuit answers at once, even when
/// the bulkhead is full, and nothing reaches the upstream.
#[tokio::test(start_paused = true)]
async fn open_breaker_fails_fast_before_the_bulkhead_and_the_upstream() {
    let policy = Policy {
        request: RequestPolicy {
            retry: retry(0, 0),
            ..RequestPolicy::default()
        },
        breaker: breaker(1),
        bulkhead: bulkhead(1),
        ..Policy::default()
    };
    let f = fixture(policy, &[Reply::Status(503)]).await;
    let counters = &f.rt().counters;
    let slots = f.rt().bulkhead.as_ref().unwrap();

    // The bulkhead works: with its one slot taken, a request through a closed breaker is shed.
    let held = slots.enter().await.unwrap();
    let e = error(f.send().await);
    assert!(matches!(e, CallError::BulkheadFull { max: 1, .. }), "{e:?}");
    assert_eq!(n(&counters.bulkhead_rejected), 1);
    drop(held);

    assert_eq!(status(f.send().await), 503, "opens the breaker");
    assert_eq!(f.breaker_state(), State::Open);
    assert_eq!(f.upstream.hits(), 1);

    let held = slots.enter().await.unwrap();
    let e = error(f.send().await);
    assert!(matches!(e, CallError::CircuitOpen(_)), "{e:?}");
    assert_eq!(n(&counters.breaker_rejected), 1);
    assert_eq!(
        n(&counters.bulkhead_rejected),
        1,
        "the bulkhead was not asked"
    );
    assert_eq!(f.upstream.hits(), 1, "nothing reached the upstream");
    drop(held);
}

/// Retries (5) inside the total timeout (4): total 2.5 s, per-try 1 s, 5 retries allowed against a hanging
/// upstream: the attempts that fit (at 0 s, 1 s, 2 s), then the total's timeout.
#[tokio::test(start_paused = true)]
async fn retries_run_inside_the_total_timeout() {
    let policy = Policy {
        request: RequestPolicy {
            timeouts: timeouts(Some(2500), Some(1000)),
            retry: retry(5, on::RESET),
            ..RequestPolicy::default()
        },
        ..Policy::default()
    };
    let f = fixture(policy, &[Reply::Hang]).await;

    let start = Instant::now();
    let e = error(f.send().await);
    let elapsed = Instant::now() - start;
    assert!(
        matches!(e, CallError::Timeout(t) if t == Duration::from_millis(2500)),
        "{e:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(2500) && elapsed < Duration::from_millis(2600),
        "{elapsed:?}"
    );
    assert_eq!(f.upstream.hits(), 3);
    assert_eq!(n(&f.rt().counters.retries), 2);
    assert_eq!(
        n(&f.rt().counters.timeouts),
        3,
        "two per-try timeouts and the total"
    );
}

/// The per-try timeout (8) bounds each attempt, not the retries: per-try 1 s, 2 retries, a hanging upstream.
#[tokio::test(start_paused = true)]
async fn per_try_timeout_applies_to_each_attempt() {
    let policy = Policy {
        request: RequestPolicy {
            timeouts: timeouts(None, Some(1000)),
            retry: retry(2, on::RESET),
            ..RequestPolicy::default()
        },
        ..Policy::default()
    };
    let f = fixture(policy, &[Reply::Hang]).await;

    let start = Instant::now();
    let e = error(f.send().await);
    let elapsed = Instant::now() - start;
    assert!(
        matches!(e, CallError::Timeout(t) if t == Duration::from_secs(1)),
        "{e:?}"
    );
    assert!(
        elapsed >= Duration::from_secs(3) && elapsed < Duration::from_millis(3100),
        "{elapsed:?}"
    );
    assert_eq!(f.upstream.hits(), 3);
    assert_eq!(n(&f.rt().counters.retries), 2);
    assert_eq!(n(&f.rt().counters.timeouts), 3);
}

/// The bulkhead (6) is taken per attempt, inside the retries: with one slot, a retried call does not shut itself
/// out, and between attempts (waiting out `Retry-After: 1`) the slot is free for others.
#[tokio::test(start_paused = true)]
async fn bulkhead_is_taken_per_attempt_inside_retries() {
    let policy = Policy {
        request: RequestPolicy {
            retry: retry(1, on::HTTP_5XX),
            ..RequestPolicy::default()
        },
        bulkhead: bulkhead(1),
        ..Policy::default()
    };
    let script = [Reply::StatusRetryAfter(503, 1), Reply::Status(200)];
    let f = Arc::new(fixture(policy, &script).await);

    let call = tokio::spawn({
        let f = f.clone();
        async move { f.send().await.map(|r| r.status().as_u16()) }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let slots = f.rt().bulkhead.as_ref().unwrap();
    assert_eq!(f.upstream.hits(), 1, "between the attempts");
    assert_eq!(slots.in_flight(), 0, "no slot held while backing off");
    assert!(slots.enter().await.is_some(), "the slot is free for others");

    assert_eq!(call.await.unwrap().unwrap(), 200);
    assert_eq!(f.upstream.hits(), 2);
    assert_eq!(n(&f.rt().counters.retries), 1);
    assert_eq!(n(&f.rt().counters.bulkhead_rejected), 0);
    assert_eq!(slots.in_flight(), 0, "an empty answer keeps no slot");
}

/// The outcome (9) is recorded after each attempt, not once per call: a breaker opening after 2 failures in a
/// row opens during one call with one retry against an upstream answering 503.
#[tokio::test(start_paused = true)]
async fn outcome_is_recorded_after_each_attempt() {
    let policy = Policy {
        request: RequestPolicy {
            retry: retry(1, on::HTTP_5XX),
            ..RequestPolicy::default()
        },
        breaker: breaker(2),
        ..Policy::default()
    };
    let f = fixture(policy, &[Reply::Status(503)]).await;

    assert_eq!(status(f.send().await), 503);
    assert_eq!(f.upstream.hits(), 2);
    assert_eq!(n(&f.rt().counters.retries), 1);
    assert_eq!(f.breaker_state(), State::Open);
    assert_eq!(n(&f.rt().counters.breaker_opened), 1);

    let e = error(f.send().await);
    assert!(matches!(e, CallError::CircuitOpen(_)), "{e:?}");
    assert_eq!(f.upstream.hits(), 2);
}

/// The breaker (3) decides again before each retry (5): an attempt that opened the circuit ends the retries.
#[tokio::test(start_paused = true)]
async fn attempt_that_opens_the_breaker_ends_the_retries() {
    let policy = Policy {
        request: RequestPolicy {
            retry: retry(3, on::HTTP_5XX),
            ..RequestPolicy::default()
        },
        breaker: breaker(1),
        ..Policy::default()
    };
    let f = fixture(policy, &[Reply::Status(503)]).await;

    let e = error(f.send().await);
    assert!(matches!(e, CallError::CircuitOpen(_)), "{e:?}");
    assert_eq!(f.upstream.hits(), 1, "no retry was sent");
    assert_eq!(n(&f.rt().counters.breaker_rejected), 1);
}
