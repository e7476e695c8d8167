//! The resilience state machines on paused tokio time: breaker, budget, token bucket, backoff, EWMA, the hash
//! ring, outlier ejection, health-check thresholds and the retry rules.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::balance::{self, EndpointState, Ring};
use super::breaker::{Admit, Breaker, State};
use super::bucket::{KeyedLimiter, Take, TokenBucket};
use super::budget::Budget;
use super::call::hold_slot;
use super::retry::{retriable, Kind, Outcome};
use super::*;
use crate::config::policy::{self, on, Balancer, BreakerConfig, BudgetConfig, RetryPolicy};
use crate::upstream::body::ResponseBody;

fn breaker(consecutive: u32, rate: f64) -> Breaker {
    Breaker::new(BreakerConfig {
        consecutive_failures: consecutive,
        failure_rate: rate,
        min_requests: 10,
        window: Duration::from_secs(10),
        open_for: Duration::from_secs(1),
        max_open_for: Duration::from_secs(4),
        half_open_probes: 2,
    })
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_half_opens_and_closes() {
    let b = breaker(3, 0.0);
    let now = Instant::now();
    assert_eq!(b.admit(now).0, Admit::Yes { probe: false });
    assert_eq!(b.record(now, false, false), None);
    assert_eq!(
        b.record(now, true, false),
        None,
        "a success resets the streak"
    );
    assert_eq!(b.record(now, false, false), None);
    assert_eq!(b.record(now, false, false), None);
    assert_eq!(b.record(now, false, false), Some(State::Open));
    assert_eq!(b.admit(now).0, Admit::No, "open: fail fast");
    tokio::time::advance(Duration::from_millis(999)).await;
    assert_eq!(b.admit(Instant::now()).0, Admit::No);
    tokio::time::advance(Duration::from_millis(1)).await;
    let (a, moved) = b.admit(Instant::now());
    assert_eq!(
        (a, moved),
        (Admit::Yes { probe: true }, Some(State::HalfOpen))
    );
    assert_eq!(
        b.admit(Instant::now()).0,
        Admit::Yes { probe: true },
        "two probes"
    );
    assert_eq!(b.admit(Instant::now()).0, Admit::No, "no third probe");
    assert_eq!(b.record(Instant::now(), true, true), None);
    assert_eq!(b.record(Instant::now(), true, true), Some(State::Closed));
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn breaker_open_time_grows_on_repeated_trips_up_to_the_max() {
    let b = breaker(1, 0.0);
    let mut expected = Vec::new();
    for _ in 0..4 {
        let start = Instant::now();
        assert_eq!(
            b.record(start, false, matches!(b.state(), State::HalfOpen)),
            Some(State::Open)
        );
        // Find how long it stays open.
        let mut waited = Duration::ZERO;
        while b.admit(Instant::now()).0 == Admit::No {
            tokio::time::advance(Duration::from_millis(100)).await;
            waited += Duration::from_millis(100);
        }
        expected.push(waited.as_millis());
    }
    assert_eq!(
        expected,
        vec![1000, 2000, 4000, 4000],
        "1s, doubled, capped at maxOpenFor"
    );
    // A successful probe closes it and resets the growth.
    assert_eq!(b.record(Instant::now(), true, true), None);
    assert_eq!(b.admit(Instant::now()).0, Admit::Yes { probe: true });
    assert_eq!(b.record(Instant::now(), true, true), Some(State::Closed));
}

#[tokio::test(start_paused = true)]
async fn breaker_failure_rate_needs_min_requests_within_the_window() {
    let b = breaker(0, 0.5);
    for _ in 0..4 {
        assert_eq!(
            b.record(Instant::now(), false, false),
            None,
            "under minRequests"
        );
    }
    // Old failures leave the window.
    tokio::time::advance(Duration::from_secs(11)).await;
    for _ in 0..6 {
        assert_eq!(b.record(Instant::now(), true, false), None);
    }
    for _ in 0..3 {
        assert_eq!(
            b.record(Instant::now(), false, false),
            None,
            "3 of 9 in the window"
        );
    }
    assert_eq!(
        b.record(Instant::now(), false, false),
        None,
        "4 of 10: under 50%"
    );
    assert_eq!(
        b.record(Instant::now(), false, false),
        None,
        "5 of 11: under 50%"
    );
    assert_eq!(
        b.record(Instant::now(), false, false),
        Some(State::Open),
        "6 of 12"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_budget_allows_ratio_plus_minimum() {
    let b = Budget::new(Some(BudgetConfig {
        ratio: 0.2,
        min_per_second: 1,
    }));
    for _ in 0..100 {
        b.deposit(Instant::now());
    }
    // 1/s over 10 s + 20% of 100 = 30 retries in the window.
    let allowed = (0..100).filter(|_| b.try_withdraw(Instant::now())).count();
    assert_eq!(allowed, 30);
    // After the window, the old requests and retries no longer count: only the minimum is left.
    tokio::time::advance(Duration::from_secs(11)).await;
    let allowed = (0..100).filter(|_| b.try_withdraw(Instant::now())).count();
    assert_eq!(allowed, 10);
    assert!(
        Budget::new(None).try_withdraw(Instant::now()),
        "no budget: always"
    );
}

#[tokio::test(start_paused = true)]
async fn token_bucket_burst_rate_and_queueing() {
    let mut b = TokenBucket::new(10.0, 5, Instant::now());
    let now = Instant::now();
    let burst = (0..20)
        .filter(|_| matches!(b.take(now, None), Take::Now { .. }))
        .count();
    assert_eq!(burst, 5);
    match b.take(now, None) {
        Take::Rejected { retry_after } => assert_eq!(retry_after, Duration::from_millis(100)),
        other => panic!("{other:?}"),
    }
    // Over 2 s at 10/s: 20 more.
    let mut admitted = 0;
    for _ in 0..200 {
        tokio::time::advance(Duration::from_millis(10)).await;
        if matches!(b.take(Instant::now(), None), Take::Now { .. }) {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 20);
    // Queue mode: reservations line up 100 ms apart, up to max_delay.
    let mut q = TokenBucket::new(10.0, 1, Instant::now());
    let now = Instant::now();
    let max = Some(Duration::from_millis(350));
    assert!(matches!(q.take(now, max), Take::Now { .. }));
    let waits: Vec<_> = (0..4).map(|_| q.take(now, max)).collect();
    assert_eq!(
        waits,
        vec![
            Take::After(Duration::from_millis(100)),
            Take::After(Duration::from_millis(200)),
            Take::After(Duration::from_millis(300)),
            Take::Rejected {
                retry_after: Duration::from_millis(400)
            }
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn keyed_limiter_keeps_one_bucket_per_key() {
    let l = KeyedLimiter::new(1.0, 2);
    let now = Instant::now();
    let ok = |k: &str| matches!(l.take(k, now, None).0, Take::Now { .. });
    assert!(ok("a") && ok("a") && !ok("a"));
    assert!(ok("b") && ok("b") && !ok("b"), "b has its own quota");
}

/// 70,000 one-off keys (issue 11, item 4) leave a table of at most `MAX_KEYS`, and a key in active use keeps its
/// state through the flood: it is still limited.
#[tokio::test(start_paused = true)]
async fn keyed_limiter_stays_bounded_and_keeps_the_keys_in_use() {
    use super::bucket::MAX_KEYS;
    let l = KeyedLimiter::new(0.001, 1);
    let now = Instant::now();
    let limited = |k: &str| matches!(l.take(k, now, None).0, Take::Rejected { .. });
    assert!(!limited("hot") && limited("hot"));
    for i in 0..70_000 {
        assert!(!limited(&format!("user-{i}")), "a new key gets its burst");
        if i % 100 == 0 {
            assert!(limited("hot"), "the key in use is remembered (at key {i})");
        }
    }
    assert!(l.keys() <= MAX_KEYS, "{} keys", l.keys());
}

/// Long keys are remembered by their hash, each still with its own quota.
#[tokio::test(start_paused = true)]
async fn keyed_limiter_long_keys_keep_their_own_quota() {
    let l = KeyedLimiter::new(0.001, 1);
    let now = Instant::now();
    let (a, b) = ("x".repeat(5_000) + "a", "x".repeat(5_000) + "b");
    let ok = |k: &str| matches!(l.take(k, now, None).0, Take::Now { .. });
    assert!(ok(&a) && !ok(&a));
    assert!(ok(&b) && !ok(&b), "another long key, another bucket");
    assert_eq!(l.keys(), 2);
}

#[test]
fn backoff_is_full_jitter_capped() {
    use super::backoff::full_jitter;
    let (base, max) = (Duration::from_millis(25), Duration::from_millis(250));
    assert_eq!(full_jitter(base, max, 0, 1.0), Duration::from_millis(25));
    assert_eq!(full_jitter(base, max, 2, 1.0), Duration::from_millis(100));
    assert_eq!(
        full_jitter(base, max, 9, 1.0),
        Duration::from_millis(250),
        "capped"
    );
    assert_eq!(full_jitter(base, max, 3, 0.5), Duration::from_millis(100));
    assert_eq!(full_jitter(base, max, 3, 0.0), Duration::ZERO);
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("2"),
    );
    assert_eq!(
        super::backoff::retry_after(&h),
        Some(Duration::from_secs(2))
    );
}

/// An upstream cannot park requests: `Retry-After: 3600` waits `MAX_RETRY_AFTER` at most.
#[test]
fn retry_after_is_capped() {
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("3600"),
    );
    assert_eq!(
        super::backoff::retry_after(&h),
        Some(super::backoff::MAX_RETRY_AFTER)
    );
    assert_eq!(super::backoff::MAX_RETRY_AFTER, Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn ewma_is_peak_sensitive_and_decays() {
    let e = EndpointState::default();
    let t0 = clock::now_nanos();
    e.observe(Duration::from_millis(10), t0);
    assert!((e.ewma_nanos(t0) - 10e6).abs() < 1.0);
    e.observe(Duration::from_millis(100), t0);
    assert!(
        (e.ewma_nanos(t0) - 100e6).abs() < 1.0,
        "a slower sample takes over at once"
    );
    tokio::time::advance(Duration::from_secs(10)).await;
    let t1 = clock::now_nanos();
    let decayed = e.ewma_nanos(t1);
    assert!(
        (decayed - 100e6 / std::f64::consts::E).abs() < 1e5,
        "{decayed}"
    );
    e.observe(Duration::from_millis(10), t1);
    let v = e.ewma_nanos(t1);
    assert!(
        v < 100e6 && v > 10e6,
        "a faster sample pulls it down gradually: {v}"
    );
}

fn states(n: usize) -> Vec<Arc<EndpointState>> {
    (0..n).map(|_| Arc::new(EndpointState::default())).collect()
}

#[tokio::test(start_paused = true)]
async fn peak_ewma_prefers_the_fast_endpoint() {
    let s = states(2);
    let now = clock::now_nanos();
    s[0].observe(Duration::from_millis(200), now);
    s[1].observe(Duration::from_millis(2), now);
    let rr = std::sync::atomic::AtomicUsize::new(0);
    let picks: Vec<usize> = (0..1000)
        .filter_map(|_| balance::choose(Balancer::PeakEwma, &s, &Ring::default(), &rr, None))
        .collect();
    let slow = picks.iter().filter(|i| **i == 0).count();
    assert!(slow < 50, "the slow endpoint got {slow} of 1000");
    // Round robin alternates; ejected endpoints are skipped.
    s[0].ejected_until
        .store(u64::MAX, std::sync::atomic::Ordering::Relaxed);
    for _ in 0..10 {
        assert_eq!(
            balance::choose(Balancer::RoundRobin, &s, &Ring::default(), &rr, None),
            Some(1)
        );
    }
    // With none available, everything is used again (panic mode).
    s[1].unhealthy
        .store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(balance::choose(Balancer::Random, &s, &Ring::default(), &rr, None).is_some());
}

#[test]
fn consistent_hash_moves_about_one_nth_of_the_keys() {
    let addrs: Vec<String> = (0..5).map(|i| format!("127.0.0.1:{}", 9000 + i)).collect();
    let full = Ring::new(&addrs);
    let fewer = Ring::new(&addrs[..4]);
    let mut moved = 0;
    let mut per = [0usize; 5];
    for k in 0..10_000u32 {
        let key = balance::hash(&k.to_le_bytes());
        let a = full.walk(key).next().unwrap();
        let b = fewer.walk(key).next().unwrap();
        per[a] += 1;
        if a != 4 {
            assert_eq!(a, b, "a key on a remaining endpoint stays there");
        } else {
            moved += 1;
        }
    }
    assert!(
        (1500..2500).contains(&moved),
        "about 1/5 of the keys moved: {moved}"
    );
    assert!(
        per.iter().all(|n| (1200..2800).contains(n)),
        "spread: {per:?}"
    );
}

fn runtime_with(policy: Policy, n: usize) -> (ClusterRuntime, Vec<Arc<EndpointState>>) {
    let rt = ClusterRuntime::new(
        "service/default/x".into(),
        Arc::new(policy),
        Default::default(),
    );
    let s = (0..n)
        .map(|i| {
            rt.endpoint(std::net::SocketAddr::from((
                [127, 0, 0, 1],
                9000 + i as u16,
            )))
        })
        .collect();
    (rt, s)
}

/// A snapshot may carry any duration (the fuzz suite made `u64::MAX` seconds): ejecting for it saturates
/// instead of overflowing (a panic in debug builds, a wrap to "not ejected" in release).
#[tokio::test(start_paused = true)]
async fn an_endless_ejection_time_saturates() {
    let cfg = policy::OutlierConfig {
        consecutive_5xx: 1,
        consecutive_gateway: 0,
        base_ejection: Duration::MAX,
        max_percent: 50,
    };
    let (rt, s) = runtime_with(
        Policy {
            outlier: Some(cfg),
            ..Policy::default()
        },
        2,
    );
    assert!(rt.observe_outlier(&s, 0, Some(500)), "ejected");
    assert!(!s[0].available(clock::now_nanos()), "and stays out");
    assert!(!rt.observe_outlier(&s, 0, Some(200)));
}

#[tokio::test(start_paused = true)]
async fn outlier_detection_ejects_within_the_percent_and_readmits() {
    let cfg = policy::OutlierConfig {
        consecutive_5xx: 3,
        consecutive_gateway: 0,
        base_ejection: Duration::from_secs(10),
        max_percent: 50,
    };
    let (rt, s) = runtime_with(
        Policy {
            outlier: Some(cfg),
            ..Policy::default()
        },
        4,
    );
    assert!(!rt.observe_outlier(&s, 0, Some(Some(500)).flatten()));
    assert!(
        !rt.observe_outlier(&s, 0, Some(200)),
        "a success resets the streak"
    );
    for _ in 0..2 {
        assert!(!rt.observe_outlier(&s, 0, Some(503)));
    }
    assert!(
        rt.observe_outlier(&s, 0, Some(503)),
        "third in a row: ejected"
    );
    assert!(!s[0].available(clock::now_nanos()));
    for _ in 0..3 {
        rt.observe_outlier(&s, 1, None);
    }
    assert!(
        !s[1].available(clock::now_nanos()),
        "a connect failure counts too"
    );
    for _ in 0..3 {
        assert!(
            !rt.observe_outlier(&s, 2, Some(500)),
            "50% of 4 already out"
        );
    }
    assert!(s[2].available(clock::now_nanos()));
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(
        s[0].available(clock::now_nanos()),
        "back after baseEjectionTime"
    );
    for _ in 0..3 {
        rt.observe_outlier(&s, 0, Some(500));
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(
        !s[0].available(clock::now_nanos()),
        "second ejection lasts twice as long"
    );
    assert_eq!(
        rt.counters
            .ejections
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
}

#[test]
fn health_thresholds() {
    let cfg = policy::HealthConfig {
        path: "/healthz".into(),
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        healthy_threshold: 2,
        unhealthy_threshold: 3,
    };
    let s = EndpointState::default();
    assert!(!health::record(&s, &cfg, false));
    assert!(!health::record(&s, &cfg, true), "streak broken");
    assert!(!health::record(&s, &cfg, false));
    assert!(!health::record(&s, &cfg, false));
    assert!(
        health::record(&s, &cfg, false),
        "third failure in a row: out"
    );
    assert!(!s.available(0));
    assert!(!health::record(&s, &cfg, true));
    assert!(health::record(&s, &cfg, true), "second pass: back");
    assert!(s.available(0));
}

#[test]
fn retry_rules() {
    let r = RetryPolicy {
        attempts: 3,
        on: on::HTTP_5XX | on::GRPC_UNAVAILABLE | on::STATUS_CODES,
        status_codes: vec![409],
        ..RetryPolicy::default()
    };
    let answered = |status: u16, grpc: Option<u32>| Outcome {
        kind: Kind::Answered,
        status: Some(status),
        grpc_status: grpc,
    };
    let get = http::Method::GET;
    let post = http::Method::POST;
    assert!(retriable(&answered(503, None), &r, &get));
    assert!(
        !retriable(&answered(503, None), &r, &post),
        "POST is not retried by default"
    );
    assert!(retriable(&answered(409, None), &r, &get));
    assert!(!retriable(&answered(404, None), &r, &get));
    assert!(retriable(&answered(200, Some(14)), &r, &get));
    assert!(!retriable(&answered(200, Some(5)), &r, &get));
    let connect = Outcome {
        kind: Kind::ConnectFailure,
        status: None,
        grpc_status: None,
    };
    assert!(
        retriable(&connect, &r, &post),
        "a connect failure never reached the app"
    );
    let d = RetryPolicy::default();
    assert!(retriable(&connect, &d, &get));
    assert!(
        !retriable(&answered(503, None), &d, &get),
        "defaults: connect failures and refused streams only"
    );
    let lenient = RetryPolicy {
        non_idempotent: true,
        ..r
    };
    assert!(retriable(&answered(503, None), &lenient, &post));
}

#[tokio::test]
async fn bulkhead_rejects_beyond_slots_and_queue() {
    let b = Bulkhead::new(policy::BulkheadConfig {
        max_concurrent: 2,
        max_pending: 1,
    });
    let p1 = b.enter().await.unwrap();
    let _p2 = b.enter().await.unwrap();
    let b = Arc::new(b);
    let waiting = tokio::spawn({
        let b = b.clone();
        async move { b.enter().await.is_some() }
    });
    tokio::task::yield_now().await;
    while b.pending.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        tokio::task::yield_now().await;
    }
    assert!(b.enter().await.is_none(), "slots and queue full");
    drop(p1);
    assert!(waiting.await.unwrap(), "the queued one got the freed slot");
}

#[tokio::test(start_paused = true)]
async fn bulkhead_queue_is_left_when_a_waiter_gives_up() {
    let b = Bulkhead::new(policy::BulkheadConfig {
        max_concurrent: 1,
        max_pending: 1,
    });
    let slot = b.enter().await.unwrap();
    // A waiter times out (its future is dropped mid-wait)...
    let gave_up = tokio::time::timeout(Duration::from_millis(10), b.enter()).await;
    assert!(gave_up.is_err());
    assert_eq!(
        b.pending.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "it left the queue"
    );
    // ...so the queue still has room for the next one.
    let next = tokio::time::timeout(Duration::from_millis(10), b.enter()).await;
    assert!(
        next.is_err(),
        "queued (not rejected at once), then timed out"
    );
    drop(slot);
    assert!(b.enter().await.is_some());
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_probe_frees_its_slot() {
    let b = breaker(1, 0.0);
    assert_eq!(b.record(Instant::now(), false, false), Some(State::Open));
    tokio::time::advance(Duration::from_secs(1)).await;
    {
        let mut slot = super::breaker::ProbeSlot::default();
        assert_eq!(b.admit(Instant::now()).0, Admit::Yes { probe: true });
        slot.arm(Some(&b), true);
        assert_eq!(b.admit(Instant::now()).0, Admit::Yes { probe: true });
        assert_eq!(
            b.admit(Instant::now()).0,
            Admit::No,
            "both probe slots taken"
        );
        // `slot` is dropped without a result: the client went away.
    }
    assert_eq!(
        b.admit(Instant::now()).0,
        Admit::Yes { probe: true },
        "the slot came back"
    );
}

#[tokio::test]
async fn a_bulkhead_slot_lasts_as_long_as_the_response_body() {
    use http_body_util::BodyExt;
    // A real upstream body (hyper's Incoming) that stays open until the test says so.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (finish_tx, finish_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nab")
            .await
            .unwrap();
        let _ = finish_rx.await;
        s.write_all(b"cd").await.unwrap();
    });
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let upstream = send
        .send_request(http::Request::new(
            http_body_util::Empty::<bytes::Bytes>::new(),
        ))
        .await
        .unwrap()
        .map(ResponseBody::Upstream);

    let b = Bulkhead::new(policy::BulkheadConfig {
        max_concurrent: 1,
        max_pending: 0,
    });
    let slot = b.enter().await;
    let mut resp = hold_slot(Ok(upstream), slot).unwrap();
    assert_eq!(b.in_flight(), 1, "held while the body streams");
    assert!(b.enter().await.is_none());
    let _ = finish_tx.send(());
    while let Some(frame) = resp.body_mut().frame().await {
        frame.unwrap();
    }
    drop(resp);
    assert_eq!(b.in_flight(), 0, "released when the body is done");
    // A body the proxy made (not the upstream's) gives the slot back at once.
    let slot = b.enter().await;
    let local = hold_slot(Ok(http::Response::new(ResponseBody::text("x"))), slot);
    assert!(local.is_ok());
    assert_eq!(b.in_flight(), 0);
}
