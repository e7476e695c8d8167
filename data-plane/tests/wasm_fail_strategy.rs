//! A filter's fail strategy when its shared instance fails under a waiting stream (issue 11, item 3). The filter
//! (misbehave's `ask-then-deny`) lets nothing through: it pauses on a callout to `gate`, a server in this test
//! that answers only when told, and denies when the answer comes; in its response headers for paths with `/late`,
//! and at the end of the request body for paths with `/body` (asking there first for `/body/ask`). While a stream waits on it, requests to `/boom`
//! make the plugin's instances trap, which discards that stream's context. FAIL_CLOSE must then answer with the
//! proxy's own 503 (the upstream seeing nothing the filter had not passed, and its answer never reaching the
//! client); FAIL_OPEN skips the filter, as before.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

fn manifests(gw: u16, gate: u16, sink: u16, plugins: &std::path::Path) -> String {
    let p = plugins.display();
    format!(
        r#"
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {{name: backend}}
spec: {{service: backend, command: meshwork-demo echo}}
---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {{name: gate}}
spec: {{service: gate, endpoints: ['127.0.0.1:{gate}']}}
---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {{name: sink}}
spec: {{service: sink, endpoints: ['127.0.0.1:{sink}']}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec: {{listeners: [{{name: http, port: {gw}}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: closed}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - {{matches: [{{path: {{value: /closed}}}}], backendRefs: [{{name: backend}}]}}
    - {{matches: [{{path: {{value: /closed/body}}}}], backendRefs: [{{name: sink}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: open}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - {{matches: [{{path: {{value: /open}}}}], backendRefs: [{{name: backend}}]}}
    - {{matches: [{{path: {{value: /open/body}}}}], backendRefs: [{{name: sink}}]}}
---
apiVersion: meshwork.dev/v1alpha1
kind: WasmPlugin
metadata: {{name: guard-closed}}
spec:
  url: file://{p}/meshwork_filter_misbehave.wasm
  targetRefs: [{{kind: HTTPRoute, name: closed}}]
  pluginConfig: ask-then-deny
  failStrategy: FAIL_CLOSE
---
apiVersion: meshwork.dev/v1alpha1
kind: WasmPlugin
metadata: {{name: guard-open}}
spec:
  url: file://{p}/meshwork_filter_misbehave.wasm
  targetRefs: [{{kind: HTTPRoute, name: open}}]
  pluginConfig: ask-then-deny
  failStrategy: FAIL_OPEN
"#
    )
}

/// A server in this test, one request per connection. As the gate (the filter's callout target) it announces each
/// request and answers it (204) only when the test lets one through; as the sink (upstream of the `/body` routes)
/// it announces each request, then reports the body bytes it got before the body ended or the connection closed.
struct Server {
    port: u16,
    heads: mpsc::UnboundedReceiver<()>,
    bodies: mpsc::UnboundedReceiver<Vec<u8>>,
    answers: Arc<Semaphore>,
}

impl Server {
    async fn start(gate: bool) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (heads_tx, heads) = mpsc::unbounded_channel();
        let (bodies_tx, bodies) = mpsc::unbounded_channel();
        let answers = Arc::new(Semaphore::new(0));
        let permits = answers.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (heads, bodies, permits) =
                    (heads_tx.clone(), bodies_tx.clone(), permits.clone());
                tokio::spawn(async move {
                    if gate {
                        hold(conn, heads, permits).await
                    } else {
                        sink(conn, heads, bodies).await
                    }
                });
            }
        });
        Server {
            port,
            heads,
            bodies,
            answers,
        }
    }

    /// Waits (at most 10 s) for the next request's head.
    async fn head(&mut self) {
        tokio::time::timeout(Duration::from_secs(10), self.heads.recv())
            .await
            .expect("no request within 10 s")
            .unwrap();
    }

    /// Waits (at most 10 s) for the next request's body (as much of it as came).
    async fn body(&mut self) -> Vec<u8> {
        tokio::time::timeout(Duration::from_secs(10), self.bodies.recv())
            .await
            .expect("no body within 10 s")
            .unwrap()
    }

    fn answer_one(&self) {
        self.answers.add_permits(1);
    }
}

/// A request's head, and the bytes read past it; None if the connection ended first.
async fn read_head(conn: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let (mut data, mut buf) = (Vec::new(), [0u8; 1024]);
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = data.split_off(end + 4);
            return Some((String::from_utf8_lossy(&data).into_owned(), rest));
        }
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
}

async fn hold(mut conn: TcpStream, heads: mpsc::UnboundedSender<()>, answers: Arc<Semaphore>) {
    if read_head(&mut conn).await.is_none() {
        return;
    }
    let _ = heads.send(());
    let Ok(permit) = answers.acquire().await else {
        return;
    };
    permit.forget();
    let _ = conn
        .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
        .await;
}

async fn sink(
    mut conn: TcpStream,
    heads: mpsc::UnboundedSender<()>,
    bodies: mpsc::UnboundedSender<Vec<u8>>,
) {
    let Some((head, mut body)) = read_head(&mut conn).await else {
        return;
    };
    let _ = heads.send(());
    let declared: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut buf = [0u8; 1024];
    while body.len() < declared {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    let whole = body.len() == declared;
    let _ = bodies.send(body);
    if whole {
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n";
        let _ = conn.write_all(answer).await;
    }
}

/// The mesh, the two servers of this test, and the demo upstream's address (its `/_demo/count`).
struct Fixture {
    mesh: Mesh,
    gate: Server,
    sink: Server,
    c: HttpClient,
    backend: String,
}

/// One fail strategy: the path prefix of its plugin's route, and whether it fails open.
struct Strategy {
    prefix: &'static str,
    fail_open: bool,
}

const STRATEGIES: [Strategy; 2] = [
    Strategy {
        prefix: "/closed",
        fail_open: false,
    },
    Strategy {
        prefix: "/open",
        fail_open: true,
    },
];

/// Requests to `/boom` that make the plugin's instances trap (see `trap_every_instance`).
const TRAPS: u64 = 16;

impl Strategy {
    /// How many of those reach the upstream: all when failing open (the filter is skipped), none otherwise.
    fn traps_forwarded(&self) -> u64 {
        if self.fail_open {
            TRAPS
        } else {
            0
        }
    }
}

impl Fixture {
    /// GETs `path`; once its filter waits on the gate, makes the filter's instances trap, then lets the gate
    /// answer. Returns the answer to `path`.
    async fn lose_while_paused(&mut self, s: &Strategy, path: &str) -> Resp {
        let (c, url) = (
            self.c.clone(),
            format!("{}{}{path}", self.mesh.base(), s.prefix),
        );
        let paused = tokio::spawn(async move { get(&c, &url, &[]).await });
        self.gate.head().await;
        trap_every_instance(&self.c, &self.mesh.base(), s).await;
        assert!(!paused.is_finished(), "the request waits on its filter");
        self.gate.answer_one();
        paused.await.unwrap()
    }

    async fn upstream_count(&self) -> u64 {
        demo_count(&self.c, &self.backend).await
    }
}

/// Makes every instance of the strategy's plugin trap. Streams take the plugin's instances round robin, and a
/// plugin has at most 16, so 16 requests in a row reach each of them.
async fn trap_every_instance(c: &HttpClient, base: &str, s: &Strategy) {
    let want = if s.fail_open { 200 } else { 503 };
    for _ in 0..TRAPS {
        let r = get(c, &format!("{base}{}/boom", s.prefix), &[]).await;
        assert_eq!(r.status, want, "{}", r.text());
    }
}

/// POSTs `path` to the gateway at `gw` with the 11-byte body `first part.` in two parts: the second only after
/// `between`. Returns the raw answer.
async fn post_in_two_parts(gw: u16, path: &str, between: impl Future<Output = ()>) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", gw)).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: edge\r\ncontent-length: 11\r\nconnection: close\r\n\r\nfirst "
    );
    s.write_all(head.as_bytes()).await.unwrap();
    between.await;
    s.write_all(b"part.").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
        .await
        .expect("no answer within 10 s")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// What the proxy answers for a FAIL_CLOSE filter that lost the stream.
const LOST: &str =
    "meshwork: wasm plugin default/guard-closed failed: its instance failed while this request waited\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fail_close_filter_passes_nothing_it_lost() {
    let plugins = plugins_dir();
    let (gate, sink) = (Server::start(true).await, Server::start(false).await);
    let mesh = Mesh::start(|gw| manifests(gw, gate.port, sink.port, &plugins)).await;
    let backend = mesh.app("backend-0");
    let mut f = Fixture {
        mesh,
        gate,
        sink,
        c: client(),
        backend,
    };
    nothing_fails_so_everything_is_denied(&mut f).await;
    for s in &STRATEGIES {
        lost_in_the_request_headers(&mut f, s).await;
        lost_in_the_response_headers(&mut f, s).await;
        lost_in_the_request_body(&mut f, s).await;
        lost_at_the_end_of_the_request_body(&mut f, s).await;
    }
}

/// With its instance intact, the filter denies every request, in each phase: a 200 below is the filter skipped.
async fn nothing_fails_so_everything_is_denied(f: &mut Fixture) {
    for path in ["/closed/x", "/closed/late/x", "/open/x", "/open/late/x"] {
        let (c, url) = (f.c.clone(), format!("{}{path}", f.mesh.base()));
        let asked = tokio::spawn(async move { get(&c, &url, &[]).await });
        f.gate.head().await;
        f.gate.answer_one();
        let r = asked.await.unwrap();
        assert_eq!(
            (r.status, r.text().as_str()),
            (403, "denied after asking\n"),
            "{path}"
        );
    }
    for path in ["/closed/body/ask", "/open/body/ask"] {
        // The filter asks at the end of the body and denies when the answer comes: the body's end waits for it.
        let (gate, sink) = (&mut f.gate, &mut f.sink);
        let answer_gate = async {
            gate.head().await;
            gate.answer_one();
        };
        let (answer, ()) =
            tokio::join!(post_in_two_parts(f.mesh.gw, path, sink.head()), answer_gate);
        assert!(answer.starts_with("HTTP/1.1 403"), "{path}: {answer}");
        assert_ne!(
            f.sink.body().await,
            b"first part.",
            "a body denied at its end never reaches the upstream whole"
        );
    }
    for path in ["/closed/body", "/open/body"] {
        let answer = post_in_two_parts(f.mesh.gw, path, f.sink.head()).await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{path}: {answer}");
        assert_ne!(
            f.sink.body().await,
            b"first part.",
            "a denied body never reaches the upstream whole"
        );
    }
}

/// Paused in the request headers: FAIL_CLOSE answers 503 and the upstream sees nothing.
async fn lost_in_the_request_headers(f: &mut Fixture, s: &Strategy) {
    let before = f.upstream_count().await;
    let r = f.lose_while_paused(s, "/x").await;
    if s.fail_open {
        assert_eq!(r.status, 200, "FAIL_OPEN skips the filter: {}", r.text());
        assert_eq!(r.json()["path"], "/open/x");
    } else {
        assert_eq!((r.status, r.text()), (503, LOST.to_string()));
    }
    let passed = u64::from(s.fail_open);
    assert_eq!(
        f.upstream_count().await,
        before + passed + s.traps_forwarded()
    );
}

/// Paused in the response headers: FAIL_CLOSE replaces the upstream's answer with 503.
async fn lost_in_the_response_headers(f: &mut Fixture, s: &Strategy) {
    let before = f.upstream_count().await;
    let r = f.lose_while_paused(s, "/late/x").await;
    if s.fail_open {
        assert_eq!(r.status, 200, "FAIL_OPEN skips the filter: {}", r.text());
        assert_eq!(r.json()["path"], "/open/late/x");
    } else {
        assert_eq!((r.status, r.text()), (503, LOST.to_string()));
    }
    // The filter had passed the request itself.
    assert_eq!(f.upstream_count().await, before + 1 + s.traps_forwarded());
}

/// Holding the request body: FAIL_CLOSE fails the body, so the upstream never gets it whole, and answers 503.
async fn lost_in_the_request_body(f: &mut Fixture, s: &Strategy) {
    let path = format!("{}/body", s.prefix);
    let (base, sink, c) = (f.mesh.base(), &mut f.sink, &f.c);
    let between = async {
        // The filter passed the headers on (so the upstream has them) and holds the body.
        sink.head().await;
        trap_every_instance(c, &base, s).await;
    };
    let answer = post_in_two_parts(f.mesh.gw, &path, between).await;
    let got = f.sink.body().await;
    if s.fail_open {
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "FAIL_OPEN skips: {answer}"
        );
        assert_eq!(got, b"first part.");
    } else {
        // The proxy's 503 for the failed body (which goes through the response filters too, where this filter
        // has lost the stream as well).
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.ends_with(LOST), "{answer}");
        assert_ne!(
            got, b"first part.",
            "the upstream got the body the filter held"
        );
    }
}

/// Waiting on the filter's callout at the end of the request body: FAIL_CLOSE fails the body (503, the upstream
/// never gets it whole); FAIL_OPEN skips the filter and the body goes on.
async fn lost_at_the_end_of_the_request_body(f: &mut Fixture, s: &Strategy) {
    let path = format!("{}/body/ask", s.prefix);
    let (base, sink, gate, c) = (f.mesh.base(), &mut f.sink, &mut f.gate, &f.c);
    let lose = async {
        gate.head().await;
        trap_every_instance(c, &base, s).await;
        gate.answer_one();
    };
    let (answer, ()) = tokio::join!(post_in_two_parts(f.mesh.gw, &path, sink.head()), lose);
    let got = f.sink.body().await;
    if s.fail_open {
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "FAIL_OPEN skips: {answer}"
        );
        assert_eq!(got, b"first part.");
    } else {
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.ends_with(LOST), "{answer}");
        assert_ne!(
            got, b"first part.",
            "the upstream got the body the filter held"
        );
    }
}
