//! TrafficPolicy end to end through `meshwork up`: one service per behaviour, demo apps that fail, hang or slow
//! down on demand (`/flaky/P`, `/delay/MS`, `/_demo/mode?fail=1&slow=MS`), every call through the gateway (a
//! calling proxy) by host name. Counts come from the apps themselves (`/_demo/count`) and from the proxies'
//! `/metrics`.
//!
//! One test per scenario, so a failure names it. A mesh of twenty proxies and their apps takes seconds to start,
//! so all scenarios but one share one: [`SHARED`], started by the first of them to run and stopped as soon as the
//! last of them has finished, passed or failed (each test holds a lease whose drop, also when the test panics,
//! counts it as finished; the last one drops the mesh: SIGTERM to `meshwork up`, which stops every process it
//! started, then its temp dir goes). When only some of them run (a name filter), or this process is killed, the
//! mesh outlives the tests and its watchdog (common::Watchdog) stops it and removes the dir once the process has
//! exited. The scenarios run concurrently on the shared mesh without disturbing each other: each has services of
//! its own (its own apps, counters, breaker, buckets, endpoints), each test its own HTTP client, and none changes
//! the manifests.
//!
//! The exception, `consistent_hash_when_an_endpoint_leaves`, scales a service down by editing the manifests: a new
//! generation goes to every proxy, which would rebuild the shared gateway's clusters (and their breaker, outlier,
//! rate-limit and health state) under the other scenarios. It starts a mesh of its own (a gateway and the three
//! replicas of `sticky`), beside the shared one, stopped when the test ends.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::shared::{Lease, SharedFixture};
use common::*;

const SERVICES: &[(&str, u32)] = &[
    ("flaky", 1),
    ("slowpoke", 1),
    ("breaker", 1),
    ("outlier", 3),
    ("limited", 1),
    ("queued", 1),
    ("guarded", 1),
    ("bulkhead", 1),
    ("other", 1),
    ("ewma", 2),
    ("sticky", 3),
    ("checked", 2),
    ("chaos", 1),
];

fn gateway(gw: u16) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: edge}}\nspec: {{listeners: [{{name: http, port: {gw}}}]}}\n"
    )
}

/// A Workload of `replicas` demo apps and an HTTPRoute sending host `NAME.test` to it.
fn service(name: &str, replicas: u32) -> String {
    format!(
        r#"---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {{name: {name}}}
spec: {{service: {name}, replicas: {replicas}, command: meshwork-demo echo}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}}}
spec:
  parentRefs: [{{name: edge}}]
  hostnames: [{name}.test]
  rules: [{{backendRefs: [{{name: {name}}}]}}]
"#
    )
}

/// The shared mesh: every service in [`SERVICES`] with its policy, and the black-hole endpoint.
fn manifests(gw: u16, blackhole: u16) -> String {
    let mut out = gateway(gw);
    for (name, replicas) in SERVICES {
        out.push_str(&service(name, *replicas));
    }
    out.push_str(POLICIES);
    out.push_str(STICKY_POLICY);
    // An endpoint that never completes a connect (a listener whose accept queue is full), with a short
    // connect timeout.
    out.push_str(&format!(
        r#"---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {{name: blackhole}}
spec: {{service: blackhole, endpoints: ["127.0.0.1:{blackhole}"]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: blackhole}}
spec:
  parentRefs: [{{name: edge}}]
  hostnames: [blackhole.test]
  rules: [{{backendRefs: [{{name: blackhole}}]}}]
---
apiVersion: meshwork.dev/v1alpha1
kind: TrafficPolicy
metadata: {{name: blackhole}}
spec:
  targetRef: {{kind: Service, name: blackhole}}
  timeouts: {{connect: 300ms}}
  retry: {{attempts: 0}}
"#
    ));
    out
}

/// The consistent-hash scenario's own mesh: `sticky` alone, with `replicas` replicas.
fn sticky_manifests(gw: u16, replicas: u32) -> String {
    let mut out = gateway(gw);
    out.push_str(&service("sticky", replicas));
    out.push_str(STICKY_POLICY);
    out
}

const STICKY_POLICY: &str = r#"---
apiVersion: meshwork.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: sticky}
spec:
  targetRef: {kind: Service, name: sticky}
  loadBalancer: {policy: consistent-hash, hashOn: {header: x-user}}
"#;

const POLICIES: &str = r#"---
apiVersion: meshwork.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: other-route}
spec:
  targetRef: {kind: HTTPRoute, name: other}
  faultInjection:
    abort: {percent: 100, grpcStatus: 14}
    header: {name: x-route-chaos, value: "on"}
---
apiVersion: meshwork.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: flaky}
spec:
  targetRef: {kind: Service, name: flaky}
  retry:
    attempts: 3
    on: [5xx]
    backoff: {base: 2ms, max: 10ms}
    budget: {ratio: 0.5, minPerSecond: 10}
---
apiVersion: meshwork.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: slowpoke}
spec:
  targetRef: {kind: Service, name: slowpoke}
  timeouts: {request: 400ms, perTry: 100ms}
  retry: {attempts: 2, on: [gateway-error], backoff: {base: 5ms, max: 10ms}}
---
apiVersion: meshwork.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: breaker}
spec:
  targetRef: {kind: Service, name: breaker}
  retry: {attempts: 0}
  circuitBreaker:
    consecutiveFailures: 5
    openFor: 1s
    halfOpenProbes: 1
    fallback: {status: 503, headers: {x-fallback: "yes"}, body: "fallback: try again later"}
---
apiVersion: meshwork.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: outlier}
spec:
  targetRef: {kind: Service, name: outlier}
  retry: {attempts: 0}
  loadBalancer: round-robin
  outlierDetection: {consecutive5xx: 3, baseEjectionTime: 30s, maxEjectionPercent: 50}
---
apiVersion: meshwork.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: limited}
spec:
  targetRef: {kind: Service, name: limited}
  rateLimit: {requestsPerSecond: 20, burst: 5, key: {header: x-user}}
---
apiVersion: meshwork.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: queued}
spec:
  targetRef: {kind: Service, name: queued}
  rateLimit: {requestsPerSecond: 10, burst: 1, onLimit: queue, maxDelay: 2s}
---
apiVersion: meshwork.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: guarded}
spec:
  targetRef: {kind: Service, name: guarded}
  rateLimit: {requestsPerSecond: 5, burst: 5, side: server}
---
apiVersion: meshwork.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: bulkhead}
spec:
  targetRef: {kind: Service, name: bulkhead}
  bulkhead: {maxConcurrentRequests: 10, maxPending: 0}
---
apiVersion: meshwork.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: checked}
spec:
  targetRef: {kind: Service, name: checked}
  retry: {attempts: 0}
  loadBalancer: round-robin
  healthCheck: {path: /healthz, interval: 150ms, timeout: 500ms, healthyThreshold: 2, unhealthyThreshold: 2}
---
apiVersion: meshwork.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: chaos}
spec:
  targetRef: {kind: Service, name: chaos}
  faultInjection:
    abort: {percent: 30, status: 418}
    delay: {percent: 50, fixed: 1ms}
    header: {name: x-chaos}
"#;

/// The shared mesh, and the tests that use it: it stops when all of them have finished, so a test that uses it
/// must be listed here ([`SharedFixture::acquire`] checks).
static SHARED: SharedFixture<Shared> = SharedFixture::new(&[
    "retries_with_a_budget",
    "connect_timeout",
    "timeouts",
    "circuit_breaker",
    "outlier_detection",
    "rate_limits",
    "bulkhead",
    "load_balancing",
    "health_checks",
    "fault_injection",
]);

/// The shared mesh and the black-hole endpoint its manifests name (held open as long as the mesh runs).
struct Shared {
    mesh: Mesh,
    _blackhole: (std::net::TcpListener, Vec<std::net::TcpStream>),
}

impl Shared {
    async fn start() -> Shared {
        // Backlog 1 and never accepted: once a few handshakes fill the queue, further SYNs go unanswered.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let blackhole = socket.listen(1).unwrap();
        let port = blackhole.local_addr().unwrap().port();
        let mut fillers = Vec::new();
        for _ in 0..4 {
            let connect = tokio::net::TcpStream::connect(("127.0.0.1", port));
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(200), connect).await {
                fillers.push(s.into_std().unwrap());
            }
        }
        // Off this test's runtime (it ends with the test), onto plain sockets that live as long as the mesh.
        let blackhole = (blackhole.into_std().unwrap(), fillers);
        let mesh = Mesh::start(|gw| manifests(gw, port)).await;
        Shared {
            mesh,
            _blackhole: blackhole,
        }
    }
}

/// A test's view of a mesh: its own client (clients belong to the test's runtime), the gateway's URL.
struct Ctx {
    c: HttpClient,
    base: String,
    mesh: Held,
}

enum Held {
    Shared(Lease<Shared>),
    Own(Box<Mesh>),
}

impl Ctx {
    /// The shared mesh, for `test`.
    async fn shared(test: &'static str) -> Ctx {
        let fx = SHARED.acquire(test, Shared::start).await;
        Ctx {
            c: client(),
            base: fx.mesh.base(),
            mesh: Held::Shared(fx),
        }
    }

    /// A mesh of the test's own.
    fn own(mesh: Mesh) -> Ctx {
        Ctx {
            c: client(),
            base: mesh.base(),
            mesh: Held::Own(Box::new(mesh)),
        }
    }

    fn mesh(&self) -> &Mesh {
        match &self.mesh {
            Held::Shared(fx) => &fx.mesh,
            Held::Own(mesh) => mesh,
        }
    }

    /// The test's own mesh (to edit its manifests).
    fn own_mesh(&mut self) -> &mut Mesh {
        match &mut self.mesh {
            Held::Own(mesh) => mesh,
            Held::Shared(_) => panic!("the shared mesh is not to be changed"),
        }
    }

    async fn get(&self, service: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
        let host = format!("{service}.test");
        let mut h = vec![("host", host.as_str())];
        h.extend_from_slice(headers);
        get(&self.c, &format!("{}{path}", self.base), &h).await
    }

    async fn count(&self, node: &str) -> u64 {
        demo_count(&self.c, &self.mesh().app(node)).await
    }

    async fn mode(&self, node: &str, query: &str) {
        demo_mode(&self.c, &self.mesh().app(node), query).await;
    }

    async fn metrics(&self, node: &str) -> String {
        metrics(&self.c, &self.mesh().admin(node)).await
    }

    async fn metric(&self, node: &str, name: &str, cluster: &str) -> u64 {
        metric_value(&self.metrics(node).await, name, cluster)
    }
}

/// 30% of requests fail with 503 (evenly spread by the demo app); three retries make GETs succeed >= 99%; POSTs are not retried; the extra load
/// stays within the budget (ratio 0.5 + 10/s over 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_with_a_budget() {
    let ctx = Ctx::shared("retries_with_a_budget").await;
    let ctx = &ctx;
    let before = ctx.count("flaky-0").await;
    // One request at a time: the app fails requests n = 0, 4, 7 (mod 10), so a retry lands on a different slot.
    // (With concurrent callers the failures are independent draws and 3 retries give 1 - 0.3^4 = 99.2% on
    // average, too close to 99% for a test that must not flake.)
    let n = 400u64;
    let mut ok = 0;
    for _ in 0..n {
        let r = ctx.get("flaky", "/flaky/30", &[]).await;
        ok += u64::from(r.status == 200);
    }
    assert!(
        ok * 100 >= n * 99,
        "GET success {ok}/{n}; {}",
        ctx.metrics("gateway-edge")
            .await
            .lines()
            .filter(|l| l.contains("default/flaky"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let upstream = ctx.count("flaky-0").await - before;
    let extra = upstream - n;
    assert!(
        extra > 0 && extra as f64 <= 0.5 * n as f64 + 100.0,
        "extra upstream requests: {extra}"
    );
    let retries = ctx
        .metric(
            "gateway-edge",
            "meshwork_retries_total",
            "service/default/flaky",
        )
        .await;
    assert_eq!(retries, extra, "every extra request is a counted retry");

    let before = ctx.count("flaky-0").await;
    let mut failed = 0;
    for _ in 0..100 {
        let r = send(
            &ctx.c,
            "POST",
            &format!("{}/flaky/30", ctx.base),
            &[("host", "flaky.test")],
            bytes::Bytes::from_static(b"x"),
        )
        .await
        .unwrap();
        failed += u32::from(r.status == 503);
    }
    assert!(
        (28..=32).contains(&failed),
        "POST is not retried: {failed}/100 failed"
    );
    assert_eq!(
        ctx.count("flaky-0").await - before,
        100,
        "one upstream request per POST"
    );
}

/// `timeouts.connect` bounds the connect to an endpoint that never completes it (the proxy's default is 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout() {
    let ctx = Ctx::shared("connect_timeout").await;
    let ctx = &ctx;
    let started = tokio::time::Instant::now();
    let r = ctx.get("blackhole", "/x", &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("connect"), "{}", r.text());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(2000),
        "gave up after {took:?} (connect timeout 300ms)"
    );
}

/// The total timeout answers 504 within its bound; per-try timeouts trigger retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts() {
    let ctx = Ctx::shared("timeouts").await;
    let ctx = &ctx;
    let before = ctx.count("slowpoke-0").await;
    let started = tokio::time::Instant::now();
    let r = ctx.get("slowpoke", "/delay/2000", &[]).await;
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(
        took < Duration::from_millis(1200),
        "504 after {took:?} (bound 400ms)"
    );
    // 100 ms per try, 5-10 ms backoff: three tries fit in 400 ms.
    assert_eq!(
        ctx.count("slowpoke-0").await - before,
        3,
        "per-try timeouts were retried"
    );
    let r = ctx.get("slowpoke", "/delay/10", &[]).await;
    assert_eq!(r.status, 200);
}

/// A failing upstream opens the circuit; while open the fallback answers at once and the upstream sees nothing;
/// after openFor a probe closes it again once the upstream is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker() {
    let ctx = Ctx::shared("circuit_breaker").await;
    let ctx = &ctx;
    ctx.mode("breaker-0", "fail=1").await;
    for _ in 0..5 {
        assert_eq!(ctx.get("breaker", "/x", &[]).await.status, 503);
    }
    let before = ctx.count("breaker-0").await;
    let started = tokio::time::Instant::now();
    for _ in 0..20 {
        let r = ctx.get("breaker", "/x", &[]).await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (503, "fallback: try again later")
        );
        assert_eq!(r.headers.get("x-fallback").unwrap(), "yes");
    }
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "fallbacks are immediate"
    );
    assert_eq!(
        ctx.count("breaker-0").await,
        before,
        "the upstream saw no request while open"
    );
    ctx.mode("breaker-0", "fail=0").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = ctx.get("breaker", "/x", &[]).await;
    assert_eq!(
        r.status,
        200,
        "the half-open probe goes through: {}",
        r.text()
    );
    assert_eq!(
        ctx.get("breaker", "/x", &[]).await.status,
        200,
        "closed again"
    );
    let m = ctx.metrics("gateway-edge").await;
    for line in [
        r#"meshwork_circuit_breaker_opened_total{cluster="service/default/breaker"} 1"#,
        r#"meshwork_circuit_breaker_closed_total{cluster="service/default/breaker"} 1"#,
        r#"meshwork_circuit_breaker_rejected_total{cluster="service/default/breaker"} 20"#,
        r#"meshwork_circuit_breaker_state{cluster="service/default/breaker"} 0"#,
    ] {
        assert!(m.contains(line), "missing {line}");
    }
}

/// An endpoint returning errors is ejected and the traffic moves to the others; never more than
/// maxEjectionPercent (50% of 3 = 1 endpoint) is out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection() {
    let ctx = Ctx::shared("outlier_detection").await;
    let ctx = &ctx;
    ctx.mode("outlier-0", "fail=1").await;
    for _ in 0..12 {
        ctx.get("outlier", "/x", &[]).await;
    }
    for _ in 0..30 {
        let r = ctx.get("outlier", "/x", &[]).await;
        assert_eq!(r.status, 200, "the failing endpoint is out of the set");
    }
    ctx.mode("outlier-1", "fail=1").await;
    let before = ctx.count("outlier-1").await;
    for _ in 0..30 {
        ctx.get("outlier", "/x", &[]).await;
    }
    assert!(
        ctx.count("outlier-1").await - before >= 10,
        "the second failing endpoint is not ejected (floor)"
    );
    assert_eq!(
        ctx.metric(
            "gateway-edge",
            "meshwork_outlier_ejections_total",
            "service/default/outlier"
        )
        .await,
        1
    );
    ctx.mode("outlier-0", "fail=0").await;
    ctx.mode("outlier-1", "fail=0").await;
}

/// Token buckets per key match the configured rate; queue mode delays instead of rejecting; a server-side limit
/// is enforced by the target's own sidecar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits() {
    let ctx = Ctx::shared("rate_limits").await;
    let ctx = &ctx;
    let window = Duration::from_secs(2);
    let mut tasks = Vec::new();
    for user in ["alice", "bob"] {
        let (c, base) = (ctx.c.clone(), ctx.base.clone());
        tasks.push(tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let (mut ok, mut limited) = (0u32, 0u32);
            while started.elapsed() < window {
                let r = get(
                    &c,
                    &format!("{base}/x"),
                    &[("host", "limited.test"), ("x-user", user)],
                )
                .await;
                match r.status {
                    200 => ok += 1,
                    429 => {
                        limited += 1;
                        assert!(r.headers.contains_key("retry-after"));
                        assert_eq!(r.headers.get("ratelimit-limit").unwrap(), "5");
                        assert!(r.headers.contains_key("ratelimit-reset"));
                    }
                    s => panic!("unexpected {s}"),
                }
            }
            (ok, limited, started.elapsed())
        }));
    }
    for t in tasks {
        let (ok, limited, took) = t.await.unwrap();
        let expected = 5.0 + 20.0 * took.as_secs_f64();
        assert!(limited > 0);
        assert!(
            (f64::from(ok) - expected).abs() <= expected * 0.1,
            "admitted {ok}, bucket allows {expected:.0} in {took:?}"
        );
    }

    // Queue mode: 6 at once at 10/s with burst 1 are all served, spread over ~0.5 s.
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (c, base) = (ctx.c.clone(), ctx.base.clone());
        tasks.push(tokio::spawn(async move {
            get(&c, &format!("{base}/x"), &[("host", "queued.test")])
                .await
                .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200, "queued, not rejected");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "delayed: {:?}",
        started.elapsed()
    );

    // Server side: the guarded service's own sidecar admits its burst of 5 from a quick run of 20.
    let mut ok = 0;
    for _ in 0..20 {
        ok += u32::from(ctx.get("guarded", "/x", &[]).await.status == 200);
    }
    assert!((5..=7).contains(&ok), "server-side limit admitted {ok}");
    let limited = ctx
        .metric("guarded-0", "meshwork_rate_limited_total", "inbound")
        .await;
    assert_eq!(
        limited,
        u64::from(20 - ok),
        "counted by the target's sidecar"
    );
}

/// With a hanging upstream and maxConcurrentRequests 10, the 11th concurrent request is rejected at once; other
/// services through the same proxy are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulkhead() {
    let ctx = Ctx::shared("bulkhead").await;
    let ctx = &ctx;
    let mut hung = Vec::new();
    for _ in 0..10 {
        let (c, base) = (ctx.c.clone(), ctx.base.clone());
        hung.push(tokio::spawn(async move {
            get(
                &c,
                &format!("{base}/delay/3000"),
                &[("host", "bulkhead.test")],
            )
            .await
            .status
        }));
    }
    eventually(
        Duration::from_secs(5),
        "10 requests in the bulkhead",
        || async {
            let m = ctx.metrics("gateway-edge").await;
            m.contains(r#"meshwork_bulkhead_in_flight{cluster="service/default/bulkhead"} 10"#)
                .then_some(())
        },
    )
    .await;
    let started = tokio::time::Instant::now();
    let r = ctx.get("bulkhead", "/x", &[]).await;
    assert_eq!(r.status, 503);
    assert!(r.text().contains("bulkhead full"), "{}", r.text());
    assert!(started.elapsed() < Duration::from_millis(500));
    let r = ctx.get("other", "/x", &[]).await;
    assert_eq!(r.status, 200, "another service is unaffected");
    // (A policy on the HTTPRoute `other`, not its service: gRPC-style aborts only with x-route-chaos: on.)
    let r = ctx.get("other", "/x", &[("x-route-chaos", "on")]).await;
    assert_eq!(
        (
            r.status,
            r.headers.get("grpc-status").map(|v| v.to_str().unwrap())
        ),
        (200, Some("14")),
        "a route-level policy applies"
    );
    assert_eq!(
        ctx.get("other", "/x", &[("x-route-chaos", "off")])
            .await
            .headers
            .get("grpc-status"),
        None
    );
    assert!(started.elapsed() < Duration::from_millis(1000));
    for h in hung {
        assert_eq!(h.await.unwrap(), 200);
    }
    assert_eq!(
        ctx.metric(
            "gateway-edge",
            "meshwork_bulkhead_rejected_total",
            "service/default/bulkhead"
        )
        .await,
        1
    );
}

/// peak-ewma (the default) moves traffic away from a slow endpoint; consistent-hash keeps a key on one endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancing() {
    let ctx = Ctx::shared("load_balancing").await;
    let ctx = &ctx;
    ctx.mode("ewma-0", "slow=150").await;
    for _ in 0..10 {
        ctx.get("ewma", "/x", &[]).await;
    }
    let (a0, b0) = (ctx.count("ewma-0").await, ctx.count("ewma-1").await);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (c, base) = (ctx.c.clone(), ctx.base.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..40 {
                get(&c, &format!("{base}/x"), &[("host", "ewma.test")]).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (slow, fast) = (
        ctx.count("ewma-0").await - a0,
        ctx.count("ewma-1").await - b0,
    );
    assert!(
        slow * 10 <= slow + fast,
        "the slow endpoint got {slow} of {}",
        slow + fast
    );
    ctx.mode("ewma-0", "slow=0").await;

    for u in 0..20 {
        let user = format!("user-{u}");
        let mut nodes = std::collections::HashSet::new();
        for _ in 0..3 {
            nodes.insert(
                ctx.get("sticky", "/x", &[("x-user", &user)]).await.json()["node"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        assert_eq!(nodes.len(), 1, "{user} stays on one endpoint");
    }
}

/// Health checks take an endpoint out while it fails them and bring it back once it passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks() {
    let ctx = Ctx::shared("health_checks").await;
    let ctx = &ctx;
    ctx.mode("checked-0", "fail=1").await;
    eventually(
        Duration::from_secs(5),
        "the failing endpoint out of the set",
        || async {
            let m = ctx.metrics("gateway-edge").await;
            m.contains(r#"meshwork_endpoints_unavailable{cluster="service/default/checked"} 1"#)
                .then_some(())
        },
    )
    .await;
    for _ in 0..20 {
        assert_eq!(ctx.get("checked", "/x", &[]).await.status, 200);
    }
    ctx.mode("checked-0", "fail=0").await;
    let before = ctx.count("checked-0").await;
    eventually(
        Duration::from_secs(5),
        "the endpoint back in the set",
        || async {
            ctx.get("checked", "/x", &[]).await;
            (ctx.count("checked-0").await > before).then_some(())
        },
    )
    .await;
}

/// Aborts hit their percentage, only for requests with the header, and never reach the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection() {
    let ctx = Ctx::shared("fault_injection").await;
    let ctx = &ctx;
    for _ in 0..30 {
        assert_eq!(
            ctx.get("chaos", "/x", &[]).await.status,
            200,
            "no header, no faults"
        );
    }
    let before = ctx.count("chaos-0").await;
    let n = 600;
    let mut aborted = 0;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (c, base) = (ctx.c.clone(), ctx.base.clone());
        tasks.push(tokio::spawn(async move {
            let mut a = 0;
            for _ in 0..n / 6 {
                let r = get(
                    &c,
                    &format!("{base}/x"),
                    &[("host", "chaos.test"), ("x-chaos", "1")],
                )
                .await;
                a += u32::from(r.status == 418);
            }
            a
        }));
    }
    for t in tasks {
        aborted += t.await.unwrap();
    }
    let share = f64::from(aborted) / f64::from(n);
    assert!((0.25..=0.35).contains(&share), "abort share {share}");
    assert_eq!(
        ctx.count("chaos-0").await - before,
        u64::from(n - aborted),
        "aborted requests never reach the app"
    );
    let delays = ctx
        .metric(
            "gateway-edge",
            "meshwork_fault_delays_total",
            "service/default/chaos",
        )
        .await;
    let share = delays as f64 / f64::from(n);
    assert!((0.43..=0.57).contains(&share), "delay share {share}");
}

/// Taking one of three endpoints away moves only the keys it had (about a third).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_when_an_endpoint_leaves() {
    let mut ctx = Ctx::own(Mesh::start(|gw| sticky_manifests(gw, 3)).await);
    let users: Vec<String> = (0..150).map(|u| format!("key-{u}")).collect();
    let mut before = HashMap::new();
    for u in &users {
        before.insert(
            u.clone(),
            ctx.get("sticky", "/x", &[("x-user", u)]).await.json()["node"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let mesh = ctx.own_mesh();
    write(&mesh.dir, "mesh.yaml", &sticky_manifests(mesh.gw, 2));
    mesh.wait_line("applied: generation 2", Duration::from_secs(30))
        .await;
    eventually(
        Duration::from_secs(10),
        "sticky-2 gone from the gateway's endpoints",
        || async {
            let mut seen = std::collections::HashSet::new();
            for u in users.iter().take(30) {
                seen.insert(
                    ctx.get("sticky", "/x", &[("x-user", u)]).await.json()["node"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                );
            }
            (!seen.contains("sticky-2")).then_some(())
        },
    )
    .await;
    let mut moved = 0;
    for u in &users {
        let now = ctx.get("sticky", "/x", &[("x-user", u)]).await.json()["node"]
            .as_str()
            .unwrap()
            .to_string();
        if before[u] != "sticky-2" {
            assert_eq!(
                now, before[u],
                "{u} was not on the removed endpoint and stays"
            );
        } else {
            moved += 1;
        }
    }
    assert!(
        (25..=75).contains(&moved),
        "about a third of 150 keys moved: {moved}"
    );
}
