//! A gateway's edge limits as a hostile client meets them (issue 11, items 1, 2 and 5), on a real
//! `meshwork-proxy --manifests` process: a flood of silent connections under a low file-descriptor limit, a
//! body trickled or too large, and SIGTERM with a request in flight. The timing logic itself is tested on paused
//! time in `src/listener/tests.rs`; these check the wiring (flags, replies, counters, process limits).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tokio::time::Instant;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The gateway's manifests; with `sink`, `/mirrored` is also mirrored to the service `sink` at that port.
fn manifests_mirroring(gw: u16, origin: u16, sink: Option<u16>) -> String {
    let mirror = if sink.is_some() {
        "    - matches: [{path: {type: Exact, value: /mirrored}}]
      backendRefs: [{name: origin}]
      filters:
        - type: RequestMirror
          requestMirror: {backendRef: {name: sink}}
"
    } else {
        ""
    };
    let sink_workload = sink.map_or(String::new(), |port| {
        format!(
            "---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {{name: sink}}
spec: {{service: sink, endpoints: ['127.0.0.1:{port}']}}
"
        )
    });
    format!(
        "apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {{name: origin}}
spec: {{service: origin, endpoints: ['127.0.0.1:{origin}']}}
---
apiVersion: meshwork.dev/v1alpha1
kind: TrafficPolicy
metadata: {{name: origin}}
spec:
  targetRef: {{kind: Service, name: origin}}
  retry: {{attempts: 0}}
  circuitBreaker: {{consecutiveFailures: 1, openFor: 30s}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec: {{listeners: [{{name: http, port: {gw}}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
{mirror}    - backendRefs: [{{name: origin}}]
{sink_workload}"
    )
}

struct Edge {
    gw: u16,
    admin: u16,
    origin: u16,
    proxy: Proc,
    _origin: Proc,
    _dir: tempfile::TempDir,
}

/// A standalone gateway in front of a demo echo app; `shell_prefix` runs before the proxy in `sh` (a ulimit).
async fn start(shell_prefix: &str, flags: &[&str]) -> Edge {
    start_mirroring(shell_prefix, flags, None).await
}

async fn start_mirroring(shell_prefix: &str, flags: &[&str], sink: Option<u16>) -> Edge {
    let dir = tempfile::tempdir().unwrap();
    let (gw, origin, admin) = (free_port(), free_port(), free_port());
    let origin_proc = demo_echo(origin);
    write(dir.path(), "m.yaml", &manifests_mirroring(gw, origin, sink));
    let proxy = Proc::spawn(
        "proxy",
        &mut shell_proxy(dir.path(), shell_prefix, admin, flags),
    );
    let c = client();
    wait_serving(
        &c,
        &format!("http://127.0.0.1:{gw}/"),
        Duration::from_secs(15),
        "the gateway",
    )
    .await;
    Edge {
        gw,
        admin,
        origin,
        proxy,
        _origin: origin_proc,
        _dir: dir,
    }
}

fn shell_proxy(dir: &Path, prefix: &str, admin: u16, flags: &[&str]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("{prefix} exec \"$0\" \"$@\""))
        .arg(bin("meshwork-proxy"))
        .arg("--manifests")
        .arg(dir)
        .args(["--workers", "1", "--admin", &format!("127.0.0.1:{admin}")])
        .args(flags)
        .stdout(std::process::Stdio::null())
        .stderr(log_file(&dir.join("proxy.log")));
    cmd
}

/// Sends a raw request (and optionally a body trickled a byte every `gap`), returns the whole answer.
async fn raw(port: u16, head: &str, trickle: Option<(usize, Duration)>) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let (mut r, mut w) = s.split();
    let send = async {
        if let Some((n, gap)) = trickle {
            for _ in 0..n {
                if w.write_all(b"x").await.is_err() {
                    break;
                }
                tokio::time::sleep(gap).await;
            }
        }
    };
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut answer));
    let (_, read) = tokio::join!(send, read);
    assert!(read.is_ok(), "no answer within 20 s");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_connections_under_a_low_fd_limit_leaves_ready_and_requests_answered() {
    let edge = start("ulimit -n 256;", &["--request-headers-timeout", "3s"]).await;
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(TcpStream::connect(("127.0.0.1", edge.gw)).await.unwrap());
    }
    let c = client();
    let t0 = Instant::now();
    let ready = get(&c, &format!("http://127.0.0.1:{}/ready", edge.admin), &[]).await;
    assert_eq!(
        ready.status,
        200,
        "admin answers during the flood: {}",
        ready.text()
    );
    // Over the cap a request is answered 503 or its connection closed at once; never left hanging.
    let url = format!("http://127.0.0.1:{}/", edge.gw);
    let during = send(&client(), "GET", &url, &[], bytes::Bytes::new()).await;
    if let Ok(r) = &during {
        assert!(
            r.status == 200 || (r.status == 503 && r.text().contains("too many connections")),
            "answered, or clearly refused: {} {}",
            r.status,
            r.text()
        );
    }
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "answers came at once"
    );
    // The silent ones are dropped at the header deadline; normal service comes back.
    let back = Instant::now() + Duration::from_secs(10);
    let mut attempts = Vec::new();
    loop {
        let started = Instant::now();
        let r = send(&c, "GET", &url, &[], bytes::Bytes::new()).await;
        if r.as_ref().is_ok_and(|r| r.status == 200) {
            break;
        }
        attempts.push(format!(
            "{:?} after {:?}: {}",
            started.duration_since(t0),
            started.elapsed(),
            match &r {
                Ok(r) => format!("{} {}", r.status, r.text()),
                Err(e) => e.clone(),
            }
        ));
        if Instant::now() >= back {
            let fds = std::fs::read_dir(format!("/proc/{}/fd", edge.proxy.pid()))
                .map(|d| d.count())
                .unwrap_or(0);
            let log =
                std::fs::read_to_string(edge._dir.path().join("proxy.log")).unwrap_or_default();
            let m = metrics(&client(), &format!("127.0.0.1:{}", edge.admin)).await;
            panic!(
                "the gateway did not serve within 10 s of the flood; proxy fds {fds}; attempts:\n{}\nlog:\n{log}\nmetrics:\n{m}",
                attempts.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(silent);
    let mut proxy = edge.proxy;
    assert!(
        matches!(proxy.child.try_wait(), Ok(None)),
        "the proxy still runs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_gets_408_and_opens_no_breaker() {
    let edge = start("", &["--request-body-grace", "1s"]).await;
    let head = "POST /upload HTTP/1.1\r\nhost: edge\r\ncontent-length: 1000\r\n\r\n";
    let t0 = Instant::now();
    let answer = raw(edge.gw, head, Some((1000, Duration::from_millis(500)))).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("slower than 240 bytes/s"), "{answer:?}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    let c = client();
    let after = get(&c, &format!("http://127.0.0.1:{}/after", edge.gw), &[]).await;
    assert_eq!(
        after.status,
        200,
        "the breaker (1 failure opens it) stayed closed: {}",
        after.text()
    );
    let m = metrics(&c, &format!("127.0.0.1:{}", edge.admin)).await;
    assert_eq!(
        metric_value(
            &m,
            "meshwork_circuit_breaker_opened_total",
            "service/default/origin"
        ),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_body_over_the_maximum_gets_413_and_reaches_no_upstream() {
    let edge = start("", &["--max-request-body", "1Ki"]).await;
    let c = client();
    let app = format!("http://127.0.0.1:{}", edge.origin);
    let before = demo_count(&c, &app).await;
    let head = "POST /upload HTTP/1.1\r\nhost: edge\r\ncontent-length: 2000\r\n\r\n";
    let answer = raw(edge.gw, head, None).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert!(answer.contains("exceeds 1024 bytes"), "{answer:?}");
    assert_eq!(demo_count(&c, &app).await, before, "nothing forwarded");
    let small = "POST /upload HTTP/1.1\r\nhost: edge\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello";
    assert!(raw(edge.gw, small, None).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_drains_on_sigterm_not_ready_and_finishing_requests_in_flight() {
    let mut edge = start("", &["--drain-timeout", "10s"]).await;
    let c = client();
    let slow = {
        let c = c.clone();
        let url = format!("http://127.0.0.1:{}/delay/2000", edge.gw);
        tokio::spawn(async move { get(&c, &url, &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    edge.proxy.signal(nix::sys::signal::Signal::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = get(&c, &format!("http://127.0.0.1:{}/ready", edge.admin), &[]).await;
    assert_eq!(
        ready.status,
        503,
        "not ready while draining: {}",
        ready.text()
    );
    let r = slow.await.unwrap();
    assert_eq!(
        r.status,
        200,
        "the request in flight finished: {}",
        r.text()
    );
    eventually(Duration::from_secs(15), "the proxy to exit", || {
        let done = matches!(edge.proxy.child.try_wait(), Ok(Some(_)));
        async move { done.then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upstream_without_a_policy_gets_504_at_the_default_timeout() {
    let edge = start("", &["--default-request-timeout", "1s"]).await;
    let c = client();
    let t0 = Instant::now();
    let r = get(&c, &format!("http://127.0.0.1:{}/delay/5000", edge.gw), &[]).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_to_a_stalled_service_is_given_up_at_the_timeout() {
    let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = sink.local_addr().unwrap().port();
    let edge = start_mirroring("", &["--default-request-timeout", "1s"], Some(port)).await;
    let c = client();
    let r = get(&c, &format!("http://127.0.0.1:{}/mirrored", edge.gw), &[]).await;
    assert_eq!(
        r.status,
        200,
        "the real request is not held up: {}",
        r.text()
    );
    // The mirror's connection: it sends its request, never gets an answer, and is closed at the timeout.
    let (mut conn, _) = tokio::time::timeout(Duration::from_secs(5), sink.accept())
        .await
        .expect("the mirror connects")
        .unwrap();
    let t0 = Instant::now();
    let mut seen = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut seen)).await;
    assert!(read.is_ok(), "the mirror request was never given up");
    assert!(String::from_utf8_lossy(&seen).starts_with("GET /mirrored"));
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
}

/// A change the gateway cannot apply (a new listener on a port another process holds) leaves no trace: the
/// circuit breaker that was open stays open and its counters stay as they were (issue 11, item 10).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_cannot_be_applied_leaves_breaker_state_alone() {
    let edge = start("", &[]).await;
    let c = client();
    let base = format!("http://127.0.0.1:{}", edge.gw);
    let admin = format!("127.0.0.1:{}", edge.admin);
    let cluster = "service/default/origin";
    assert_eq!(
        get(&c, &format!("{base}/status/503"), &[]).await.status,
        503
    );
    let open = get(&c, &format!("{base}/after"), &[]).await;
    assert!(open.text().contains("circuit open"), "{}", open.text());
    let before = metrics(&c, &admin).await;
    assert_eq!(
        metric_value(&before, "meshwork_circuit_breaker_state", cluster),
        1
    );
    // A second listener on a port that is taken: the whole change is refused.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = edge._dir.path();
    let text = std::fs::read_to_string(dir.join("m.yaml"))
        .unwrap()
        .replace(
            &format!("{{name: http, port: {}}}", edge.gw),
            &format!(
                "{{name: http, port: {}}}, {{name: extra, port: {port}}}",
                edge.gw
            ),
        );
    write(dir, "m.yaml", &text);
    eventually(
        std::time::Duration::from_secs(15),
        "the refusal in the log",
        || {
            let log = std::fs::read_to_string(dir.join("proxy.log")).unwrap_or_default();
            async move { log.contains("cannot be applied").then_some(()) }
        },
    )
    .await;
    let after = metrics(&c, &admin).await;
    for name in [
        "meshwork_circuit_breaker_state",
        "meshwork_circuit_breaker_opened_total",
    ] {
        assert_eq!(
            metric_value(&after, name, cluster),
            metric_value(&before, name, cluster),
            "{name}"
        );
    }
    let still = get(&c, &format!("{base}/after"), &[]).await;
    assert!(still.text().contains("circuit open"), "{}", still.text());
}
