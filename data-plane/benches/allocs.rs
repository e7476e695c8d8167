//! Heap allocations per proxied request, counted on the proxy's data-path thread only.
//!
//! ```text
//! cargo bench -p meshwork-proxy --bench allocs                       # the table (docs/benchmarks.md)
//! cargo bench -p meshwork-proxy --bench allocs -- --requests 50000   # options: --requests N --warmup N
//! CARGO_PROFILE_BENCH_DEBUG=line-tables-only \
//!   cargo bench -p meshwork-proxy --bench allocs -- --sites [get|post|h2]   # where they happen (default: get)
//! ```
//!
//! **What runs.** The proxy runs in this process exactly as `bench/run.sh` starts it: a standalone gateway
//! (`app::run` with a `--manifests` directory holding one Gateway listener, one HTTPRoute and one origin Workload
//! with a static endpoint, written to a temp dir with free 127.0.0.1 ports) and `workers: 1`, so the whole data
//! path (accept, both HTTP connections, routing, resilience defaults, the upstream pool) is one current-thread
//! runtime on the thread that calls `app::run`. The origin (a hyper server answering a fixed 256-byte body, like
//! the shared harness's origin) and the load generator (hyper clients over keep-alive connections) run on another
//! thread with their own runtime. No tracing subscriber is installed, as with `MESHWORK_LOG=off`.
//!
//! **How counting is isolated to the proxy.** The workspace forbids `unsafe_code` (and `forbid` cannot be
//! lifted for one target), so this file cannot implement `GlobalAlloc` itself. It stacks two small allocator
//! crates from crates.io and keeps all its own code safe:
//!
//! - `densa_alloc::CountingAllocator` (outermost, sees every call the program makes) keeps *per-thread* counters
//!   of `alloc` (`alloc_zeroed` included: the crate counts both as allocations), `realloc`, `dealloc` and bytes
//!   requested (`alloc` size, `realloc` new size), then forwards the call unchanged. Per-thread counters mean the
//!   origin's and the load generator's allocations, on another thread, are never counted, whatever they do.
//! - `tracking_allocator::Allocator` (inside it) calls a safe hook ([`Recorder`]) on every allocation, on the
//!   allocating thread, with the *allocation group* that thread has entered, and with re-entrancy protection
//!   (allocations made inside the hook do not call it again). Only the proxy thread enters a group, just before
//!   it calls `app::run`; the hook ignores every other thread. On the proxy thread it publishes densa's counters
//!   for that thread to atomics, which the load generator reads at the start and end of a measured window (after
//!   the proxy has gone idle), so the window holds the measured requests and nothing else.
//!
//! Why two: densa alone counts per thread but can only be read *on* that thread (the proxy thread runs
//! `app::run` and nothing of ours); `tracking_allocator` alone has the hook but sees a `realloc` only as alloc +
//! free. Global counters (`stats_alloc`, `dhat`) would count the origin and the load generator too.
//!
//! Not counted: the `meshwork-control` thread (admin listener, manifest-directory watcher and snapshot building,
//! which `app.rs` runs on a runtime of its own, off the request path) and any thread other than the data-path
//! one. A plain route has no other data-path thread (the Wasm epoch ticker starts only with a Wasm plugin).
//! `tracking_allocator` turns a `realloc` into alloc + copy + free *below* densa's counters (and adds a small
//! header to each block): that changes the proxy's speed here, not the counts, which are of the calls the proxy
//! makes, as the system allocator sees them in production.
//!
//! **`--sites`.** In the recorded window the hook also captures `Backtrace::force_capture()` for each allocation
//! of the proxy thread (re-entrancy safe: the crate does not call the hook for the capture's own allocations, and
//! densa's counter movements caused by the hook are skipped when classifying the next event as alloc or realloc).
//! After the window the backtraces are resolved and aggregated by the first frame outside std and the allocator
//! plumbing, with the chain of the next callers and the first frame in `data-plane/src` (the proxy's own code).
//! The `bench` profile inherits `release`, which has no debug info: build with
//! `CARGO_PROFILE_BENCH_DEBUG=line-tables-only` so frames (and inlined frames) resolve to file:line.
#![allow(clippy::unwrap_used)] // a benchmark binary: a failed setup step should stop it loudly

use std::cell::Cell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use densa_alloc::{AllocStats, CountingAllocator};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshwork_proxy::app::{self, Options, Role, Source};
use meshwork_proxy::config::snapshot::Protocol;
use tracking_allocator::{
    AllocationGroupId, AllocationGroupToken, AllocationRegistry, AllocationTracker, Allocator,
};

#[global_allocator]
static GLOBAL: CountingAllocator<Allocator<std::alloc::System>> =
    CountingAllocator::new(Allocator::system());

/// The origin's response body, the size the shared harness's origin answers with by default.
const BODY_LEN: usize = 256;
/// How long to wait for the proxy to finish a batch's last bits of work before reading its counters.
const SETTLE: Duration = Duration::from_millis(200);

// ---------------------------------------------------------------------------------------------------------------
// Counting (runs inside the allocator: no locks except the sites list, no panics)

/// The allocation group the proxy thread entered (0: not yet).
static PROXY_GROUP: AtomicUsize = AtomicUsize::new(0);
/// The proxy thread's densa counters as of its latest allocation.
static PUB_ALLOCS: AtomicU64 = AtomicU64::new(0);
static PUB_REALLOCS: AtomicU64 = AtomicU64::new(0);
static PUB_FREES: AtomicU64 = AtomicU64::new(0);
static PUB_BYTES: AtomicU64 = AtomicU64::new(0);
/// `--sites`: capture a backtrace per proxy allocation while this is on.
static RECORDING: AtomicBool = AtomicBool::new(false);
static EVENTS: Mutex<Vec<Event>> = Mutex::new(Vec::new());

thread_local! {
    /// densa's counters right after the previous hook call on this thread (the hook's own allocations included).
    static SEEN: Cell<AllocStats> = const { Cell::new(AllocStats::ZERO) };
    /// What the hook itself allocated on this thread (`--sites`: backtraces, the events list), kept out of the counts.
    static OWN: Cell<AllocStats> = const { Cell::new(AllocStats::ZERO) };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Alloc,
    Realloc,
}

struct Event {
    kind: Kind,
    size: usize,
    backtrace: std::backtrace::Backtrace,
}

/// The hook `tracking_allocator` calls on every allocation (and free of a tracked block), on the allocating thread.
struct Recorder;

impl Recorder {
    fn on_proxy_thread(group: &AllocationGroupId) -> bool {
        let proxy = PROXY_GROUP.load(Ordering::Relaxed);
        proxy != 0 && group.as_usize().get() == proxy
    }

    /// Publishes the proxy thread's counters, less the hook's own allocations.
    fn publish(now: AllocStats) {
        let real = now.since(OWN.get());
        PUB_ALLOCS.store(real.allocs, Ordering::Release);
        PUB_REALLOCS.store(real.reallocs, Ordering::Release);
        PUB_FREES.store(real.deallocs, Ordering::Release);
        PUB_BYTES.store(real.bytes_allocated, Ordering::Release);
    }
}

impl AllocationTracker for Recorder {
    fn allocated(&self, _addr: usize, size: usize, _wrapped: usize, group: AllocationGroupId) {
        if !Self::on_proxy_thread(&group) {
            return;
        }
        let now = densa_alloc::thread_stats();
        Self::publish(now);
        if RECORDING.load(Ordering::Relaxed) {
            // densa (the outer allocator) has counted this call already; what moved since the last hook call says
            // whether the proxy called alloc or realloc (a realloc reaches this hook as an allocation).
            let kind = if now.reallocs > SEEN.get().reallocs {
                Kind::Realloc
            } else {
                Kind::Alloc
            };
            let backtrace = std::backtrace::Backtrace::force_capture();
            if let Ok(mut events) = EVENTS.lock() {
                events.push(Event {
                    kind,
                    size,
                    backtrace,
                });
            }
            // What the capture and the push allocated is not the proxy's: set it aside.
            let own = densa_alloc::thread_stats().since(now);
            let total = OWN.get();
            OWN.set(AllocStats {
                allocs: total.allocs.wrapping_add(own.allocs),
                deallocs: total.deallocs.wrapping_add(own.deallocs),
                reallocs: total.reallocs.wrapping_add(own.reallocs),
                bytes_allocated: total.bytes_allocated.wrapping_add(own.bytes_allocated),
            });
        }
        SEEN.set(densa_alloc::thread_stats());
    }

    fn deallocated(
        &self,
        _addr: usize,
        _size: usize,
        _wrapped: usize,
        _source: AllocationGroupId,
        current: AllocationGroupId,
    ) {
        if Self::on_proxy_thread(&current) {
            let now = densa_alloc::thread_stats();
            Self::publish(now);
            SEEN.set(now);
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Counts {
    allocs: u64,
    reallocs: u64,
    frees: u64,
    bytes: u64,
}

fn published() -> Counts {
    Counts {
        allocs: PUB_ALLOCS.load(Ordering::Acquire),
        reallocs: PUB_REALLOCS.load(Ordering::Acquire),
        frees: PUB_FREES.load(Ordering::Acquire),
        bytes: PUB_BYTES.load(Ordering::Acquire),
    }
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    fn sub(self, o: Counts) -> Counts {
        Counts {
            allocs: self.allocs - o.allocs,
            reallocs: self.reallocs - o.reallocs,
            frees: self.frees - o.frees,
            bytes: self.bytes - o.bytes,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The proxy, the origin, the load

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The same three objects as bench/manifests/bench.yaml, on this run's ports.
fn manifests(origin: u16, listener: u16) -> String {
    format!(
        r#"apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata:
  name: origin
spec:
  service: origin
  endpoints: ["127.0.0.1:{origin}"]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: bench
spec:
  listeners:
    - name: http
      port: {listener}
      protocol: HTTP
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: origin
spec:
  parentRefs:
    - name: bench
  rules:
    - backendRefs:
        - name: origin
"#
    )
}

/// Starts the proxy on a thread of its own, counted from its first allocation on; never returns from it.
fn start_proxy(dir: std::path::PathBuf, admin: u16) {
    let opts = Options {
        source: Source::Manifests { dir, gateway: None },
        role: Role::Gateway,
        node_id: "allocs-bench".into(),
        service: String::new(),
        namespace: "default".into(),
        labels: Vec::new(),
        inbound: None,
        outbound: None,
        app: None,
        app_protocol: Protocol::Http1,
        admin: SocketAddr::from(([127, 0, 0, 1], admin)),
        workers: 1,
        connect_timeout: Duration::from_secs(5),
        drain: Duration::from_secs(1),
        shutdown_delay: Duration::ZERO,
        wasm_cache_dir: None,
        limits: meshwork_proxy::listener::Limits::default(),
        default_timeout: None,
        bootstrap_token: None,
    };
    std::thread::Builder::new()
        .name("meshwork-data".into())
        .spawn(move || {
            let mut token = AllocationGroupToken::register().expect("an allocation group");
            PROXY_GROUP.store(token.id().as_usize().get(), Ordering::Relaxed);
            let _counted = token.enter();
            // workers: 1 -> a current-thread runtime on this very thread: the whole data path is counted here.
            let result = app::run(opts);
            eprintln!("allocs: the proxy stopped: {result:?}");
            std::process::exit(1);
        })
        .unwrap();
}

async fn origin(listener: tokio::net::TcpListener) {
    let body = Bytes::from(vec![b'x'; BODY_LEN]);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let body = body.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let body = body.clone();
                async move {
                    let _ = req.into_body().collect().await;
                    let mut resp = Response::new(Full::new(body));
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/plain"),
                    );
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Http1,
    H2c,
}

#[derive(Debug, Clone, Copy)]
struct Scenario {
    key: &'static str,
    name: &'static str,
    proto: Proto,
    /// Connections (HTTP/1.1) or concurrent streams on one connection (h2c), each sending requests in turn.
    lanes: usize,
    post_body: usize,
}

const SCENARIOS: [Scenario; 3] = [
    Scenario {
        key: "get",
        name: "HTTP/1.1 GET, 5 keep-alive connections",
        proto: Proto::Http1,
        lanes: 5,
        post_body: 0,
    },
    Scenario {
        key: "post",
        name: "HTTP/1.1 POST 1 KiB, 5 keep-alive connections",
        proto: Proto::Http1,
        lanes: 5,
        post_body: 1024,
    },
    Scenario {
        key: "h2",
        name: "HTTP/2 (h2c prior knowledge) GET, 1 connection x 5 streams",
        proto: Proto::H2c,
        lanes: 5,
        post_body: 0,
    },
];

enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

struct Lane {
    sender: Sender,
    scenario: Scenario,
    proxy: SocketAddr,
}

impl Lane {
    async fn open(scenario: Scenario, proxy: SocketAddr) -> Vec<Lane> {
        let mut lanes = Vec::new();
        match scenario.proto {
            Proto::Http1 => {
                for _ in 0..scenario.lanes {
                    let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
                    tcp.set_nodelay(true).unwrap();
                    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                        .await
                        .unwrap();
                    tokio::spawn(conn);
                    lanes.push(Lane {
                        sender: Sender::Http1(sender),
                        scenario,
                        proxy,
                    });
                }
            }
            Proto::H2c => {
                let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
                tcp.set_nodelay(true).unwrap();
                let (sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                for _ in 0..scenario.lanes {
                    lanes.push(Lane {
                        sender: Sender::H2(sender.clone()),
                        scenario,
                        proxy,
                    });
                }
            }
        }
        lanes
    }

    /// One request through the proxy; the response must be the origin's 200 and full body.
    async fn request(&mut self, body: &Bytes) -> Result<(), String> {
        let method = if self.scenario.post_body > 0 {
            Method::POST
        } else {
            Method::GET
        };
        let builder = Request::builder().method(method);
        let builder = match self.sender {
            Sender::Http1(_) => builder
                .uri("/bench")
                .header(http::header::HOST, self.proxy.to_string()),
            Sender::H2(_) => builder.uri(format!("http://{}/bench", self.proxy)),
        };
        let req = builder
            .body(Full::new(body.clone()))
            .map_err(|e| e.to_string())?;
        let resp = match &mut self.sender {
            Sender::Http1(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await
            }
        }
        .map_err(|e| e.to_string())?;
        let status = resp.status();
        let got = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if status != StatusCode::OK || got.len() != BODY_LEN {
            return Err(format!("{status}, {} body bytes", got.len()));
        }
        Ok(())
    }
}

/// Sends `n` requests spread over the lanes, each lane one request at a time; returns the lanes.
async fn drive(lanes: Vec<Lane>, n: usize) -> Vec<Lane> {
    let count = lanes.len();
    let body = Bytes::from(vec![
        b'p';
        lanes.first().map_or(0, |l| l.scenario.post_body)
    ]);
    let tasks: Vec<_> = lanes
        .into_iter()
        .enumerate()
        .map(|(i, mut lane)| {
            let body = body.clone();
            let share = n / count + usize::from(i < n % count);
            tokio::spawn(async move {
                for _ in 0..share {
                    if let Err(e) = lane.request(&body).await {
                        eprintln!("allocs: a request through the proxy failed: {e}");
                        std::process::exit(1);
                    }
                }
                lane
            })
        })
        .collect();
    let mut back = Vec::new();
    for t in tasks {
        back.push(t.await.unwrap());
    }
    back
}

/// Waits until the proxy routes a request to the origin (up to 15 s).
async fn wait_ready(proxy: SocketAddr) {
    let probe = SCENARIOS[0];
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(proxy).await.is_ok() {
            let mut lanes = Lane::open(Scenario { lanes: 1, ..probe }, proxy).await;
            if let Some(lane) = lanes.first_mut() {
                if lane.request(&Bytes::new()).await.is_ok() {
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("allocs: the proxy did not route a request within 15 s");
    std::process::exit(1);
}

/// Warm-up, then `n` measured requests; the proxy thread's counters over the measured window.
async fn measure(scenario: Scenario, proxy: SocketAddr, warmup: usize, n: usize) -> Counts {
    let lanes = Lane::open(scenario, proxy).await;
    let lanes = drive(lanes, warmup).await;
    tokio::time::sleep(SETTLE).await;
    let before = published();
    RECORDING.store(SITES.load(Ordering::Relaxed), Ordering::Relaxed);
    let lanes = drive(lanes, n).await;
    tokio::time::sleep(SETTLE).await;
    RECORDING.store(false, Ordering::Relaxed);
    let after = published();
    drop(lanes);
    after - before
}

/// Whether this run records sites (set once, before the proxy starts).
static SITES: AtomicBool = AtomicBool::new(false);

// ---------------------------------------------------------------------------------------------------------------
// Sites: aggregate resolved backtraces

#[derive(Debug, Clone)]
struct Frame {
    name: String,
    loc: Option<String>,
}

/// Frames of a resolved backtrace, innermost first, from its `Display` text.
fn frames(text: &str) -> Vec<Frame> {
    let mut out: Vec<Frame> = Vec::new();
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(loc) = t.strip_prefix("at ") {
            if let Some(f) = out.last_mut() {
                f.loc = Some(short_path(loc.trim()));
            }
        } else if let Some((num, name)) = t.split_once(": ") {
            if num.chars().all(|c| c.is_ascii_digit()) && !num.is_empty() {
                out.push(Frame {
                    name: name.trim().to_string(),
                    loc: None,
                });
            }
        }
    }
    out
}

/// `/root/.cargo/registry/src/index.crates.io-xxxx/hyper-1.7.0/src/x.rs:1:2` -> `hyper-1.7.0/src/x.rs:1`;
/// this workspace's files relative to its root; the column dropped.
fn short_path(loc: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut p = loc.to_string();
    if let Some(i) = p.find("/registry/src/") {
        let rest = &p[i + "/registry/src/".len()..];
        p = rest.split_once('/').map_or(rest, |(_, r)| r).to_string();
    } else if let Some(rest) = p.strip_prefix("./") {
        p = format!("data-plane/{rest}");
    } else if let Some(ws) = root.parent().and_then(|w| w.to_str()) {
        if let Some(rest) = p.strip_prefix(ws) {
            p = rest.trim_start_matches('/').to_string();
        }
    }
    // drop ":col"
    match p.rsplit_once(':') {
        Some((head, col))
            if col.chars().all(|c| c.is_ascii_digit()) && head.contains(':') && !col.is_empty() =>
        {
            head.to_string()
        }
        _ => p,
    }
}

/// std/core/alloc, the allocators and this file: not where the proxy's allocation comes from.
fn is_plumbing(f: &Frame) -> bool {
    if let Some(loc) = &f.loc {
        return loc.starts_with("/rustc/")
            || loc.starts_with("/rust/deps/")
            || loc.contains("densa-alloc-")
            || loc.contains("tracking-allocator-")
            || loc.ends_with("benches/allocs.rs")
            || loc.contains("benches/allocs.rs:");
    }
    let n = f.name.trim_start_matches('<');
    [
        "std::",
        "core::",
        "alloc::",
        "__rust",
        "densa_alloc",
        "tracking_allocator",
        "allocs::",
        "_Unwind",
        "__libc",
        "backtrace",
    ]
    .iter()
    .any(|p| n.starts_with(p))
}

/// A frame in the proxy's own code; `app.rs` is only the runtime's `block_on` under every task.
fn is_proxy(f: &Frame) -> bool {
    match f.loc.as_deref() {
        Some(l) => l.starts_with("data-plane/src/") && !l.starts_with("data-plane/src/app.rs"),
        None => {
            let n = f.name.trim_start_matches('<');
            n.starts_with("meshwork_proxy::") && !n.starts_with("meshwork_proxy::app::")
        }
    }
}

const NO_PROXY_FRAME: &str =
    "(no data-plane/src frame: a task spawned by hyper/hyper-util, e.g. the upstream connection's)";

/// A frame in one line: a shortened function name, then file:line.
fn show(f: &Frame) -> String {
    let mut name = f.name.clone();
    // strip a trailing ::h0123456789abcdef hash
    if let Some((head, hash)) = name.rsplit_once("::h") {
        if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) {
            name = head.to_string();
        }
    }
    if name.chars().count() > 100 {
        name = format!("{}…", name.chars().take(99).collect::<String>());
    }
    match &f.loc {
        Some(l) => format!("{name}  [{l}]"),
        None => name,
    }
}

#[derive(Default)]
struct Site {
    allocs: u64,
    reallocs: u64,
    bytes: u64,
    chain: Vec<String>,
    proxy: Option<String>,
}

fn report_sites(events: Vec<Event>, requests: usize) {
    let per = |x: u64| x as f64 / requests as f64;
    let mut sites: HashMap<String, Site> = HashMap::new();
    let mut by_proxy: HashMap<String, (u64, u64)> = HashMap::new();
    let (mut allocs, mut reallocs) = (0u64, 0u64);
    for e in &events {
        let text = e.backtrace.to_string();
        let fs = frames(&text);
        let user: Vec<&Frame> = fs.iter().filter(|f| !is_plumbing(f)).collect();
        let proxy = user.iter().find(|f| is_proxy(f)).map(|f| show(f));
        let first = user
            .first()
            .map_or_else(|| "(no frame outside std)".into(), |f| show(f));
        // One row per allocating frame and proxy caller, so the same helper called from two places is two rows.
        let key = format!("{first}\n{}", proxy.as_deref().unwrap_or(NO_PROXY_FRAME));
        let site = sites.entry(key).or_insert_with(|| Site {
            chain: user.iter().skip(1).take(5).map(|f| show(f)).collect(),
            proxy: proxy.clone(),
            ..Site::default()
        });
        let pk = proxy.unwrap_or_else(|| NO_PROXY_FRAME.into());
        let p = by_proxy.entry(pk).or_default();
        match e.kind {
            Kind::Alloc => {
                site.allocs += 1;
                p.0 += 1;
                allocs += 1;
            }
            Kind::Realloc => {
                site.reallocs += 1;
                p.1 += 1;
                reallocs += 1;
            }
        }
        site.bytes += e.size as u64;
    }
    println!(
        "\n{} allocation events recorded over {requests} requests: {:.2} allocs + {:.2} reallocs per request\n",
        events.len(),
        per(allocs),
        per(reallocs)
    );
    let mut rows: Vec<(String, Site)> = sites.into_iter().collect();
    rows.sort_by(|a, b| {
        (b.1.allocs + b.1.reallocs)
            .cmp(&(a.1.allocs + a.1.reallocs))
            .then(a.0.cmp(&b.0))
    });
    println!(
        "Sites, by the first frame outside std and the allocator (per request; bytes per request):"
    );
    for (i, (key, s)) in rows.iter().enumerate() {
        let first = key.split_once('\n').map_or(key.as_str(), |(f, _)| f);
        println!(
            "\n#{:<2} {:>5.2} allocs {:>5.2} reallocs {:>7.1} B  {first}",
            i + 1,
            per(s.allocs),
            per(s.reallocs),
            per(s.bytes)
        );
        for c in &s.chain {
            println!("        <- {c}");
        }
        match &s.proxy {
            Some(p) if s.chain.contains(p) || p == first => {}
            Some(p) => println!("        ... <- {p}"),
            None => println!("        ... {NO_PROXY_FRAME}"),
        }
    }
    let mut rows: Vec<(String, (u64, u64))> = by_proxy.into_iter().collect();
    rows.sort_by(|a, b| {
        (b.1 .0 + b.1 .1)
            .cmp(&(a.1 .0 + a.1 .1))
            .then(a.0.cmp(&b.0))
    });
    println!("\nThe same events by the innermost frame in data-plane/src (the proxy code that led to them):");
    for (key, (a, r)) in rows {
        println!("{:>6.2} allocs {:>5.2} reallocs  {key}", per(a), per(r));
    }
}

// ---------------------------------------------------------------------------------------------------------------

fn arg_value(args: &[String], name: &str) -> Option<usize> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

fn main() {
    // `cargo bench` passes --bench to harness-less benches.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let sites_pos = args.iter().position(|a| a == "--sites");
    let sites = sites_pos.is_some();
    SITES.store(sites, Ordering::Relaxed);
    let warmup = arg_value(&args, "--warmup").unwrap_or(2_000);
    let requests = arg_value(&args, "--requests").unwrap_or(if sites { 500 } else { 20_000 });
    let scenarios: Vec<Scenario> = match sites_pos {
        Some(i) => {
            let key = args.get(i + 1).map_or("get", String::as_str);
            match SCENARIOS.iter().find(|s| s.key == key) {
                Some(s) => vec![*s],
                None => vec![SCENARIOS[0]],
            }
        }
        None => SCENARIOS.to_vec(),
    };

    AllocationRegistry::set_global_tracker(Recorder).unwrap();
    AllocationRegistry::enable_tracking();

    let dir = tempfile::tempdir().unwrap();
    let origin_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    origin_listener.set_nonblocking(true).unwrap();
    let origin_port = origin_listener.local_addr().unwrap().port();
    let listener_port = free_port();
    let admin_port = free_port();
    std::fs::write(
        dir.path().join("bench.yaml"),
        manifests(origin_port, listener_port),
    )
    .unwrap();
    start_proxy(dir.path().to_path_buf(), admin_port);
    let proxy = SocketAddr::from(([127, 0, 0, 1], listener_port));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        tokio::spawn(origin(
            tokio::net::TcpListener::from_std(origin_listener).unwrap(),
        ));
        wait_ready(proxy).await;
        tokio::time::sleep(SETTLE).await;
        let idle_start = published();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle = published() - idle_start;

        println!(
            "meshwork-proxy allocations per proxied request (data-path thread only; {warmup} warm-up, then {requests} \
             measured requests per row; origin body {BODY_LEN} B)\n"
        );
        if sites {
            let s = scenarios[0];
            println!("{}", s.name);
            let counts = measure(s, proxy, warmup, requests).await;
            let events = std::mem::take(&mut *EVENTS.lock().unwrap());
            report_sites(events, requests);
            println!(
                "\nThe counters over the same window (the hook's own allocations set aside): {:.2} allocs, {:.2} \
                 reallocs per request",
                counts.allocs as f64 / requests as f64,
                counts.reallocs as f64 / requests as f64
            );
        } else {
            println!(
                "| scenario | requests | allocs/req | reallocs/req | frees/req | bytes/req |\n|---|---:|---:|---:|---:|---:|"
            );
            for s in &scenarios {
                let c = measure(*s, proxy, warmup, requests).await;
                let per = |x: u64| x as f64 / requests as f64;
                println!(
                    "| {} | {requests} | {:.2} | {:.2} | {:.2} | {:.0} |",
                    s.name,
                    per(c.allocs),
                    per(c.reallocs),
                    per(c.frees),
                    per(c.bytes)
                );
            }
            println!(
                "\nidle proxy, 1 s before the runs: {} allocs, {} reallocs",
                idle.allocs, idle.reallocs
            );
        }
    });
    std::process::exit(0);
}
