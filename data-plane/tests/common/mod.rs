//! End-to-end test harness: real processes (`meshwork up`, `meshwork control`, `meshwork-proxy`, the demo app) on
//! 127.0.0.1, every wait bounded, every process stopped (by PID) when its guard drops.
#![allow(dead_code, clippy::unwrap_used)]
// The process guard runs in Drop, outside any runtime, so it waits on the std clock.
#![allow(clippy::disallowed_types)]

pub mod prereqs;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

pub mod shared;

/// A binary built by this workspace (`cargo test --workspace` builds all of them before any test runs).
pub fn bin(name: &str) -> PathBuf {
    let proxy = PathBuf::from(env!("CARGO_BIN_EXE_meshwork-proxy"));
    let path = proxy.with_file_name(name);
    assert!(
        path.exists(),
        "{} is not built; run the tests with `cargo test --workspace` (it builds every binary)",
        path.display()
    );
    path
}

/// A port nobody listens on right now (bound and released), for a process the test starts to listen on. Drawn
/// below the kernel's ephemeral range, so the source port of an outgoing connection (tests make thousands, and
/// they come from that range) cannot take it before the process binds it; never the same twice in one test binary.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let mut given = GIVEN.lock().unwrap();
    for _ in 0..200 {
        let port = if start > 20000 {
            fastrand::u16(20000..start)
        } else {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free local port after 200 tries");
}

/// A child process stopped with SIGTERM (then SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        Proc {
            child,
            name: name.to_string(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    /// SIGTERM, then wait up to `limit`, then SIGKILL.
    pub fn stop(&mut self, limit: Duration) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop(Duration::from_secs(20));
        }
    }
}

/// For when this test process dies without running destructors (SIGKILL, an abort, or a normal exit with a
/// process-wide fixture still alive, as statics are never dropped): a `sh` in its own process group blocks reading
/// a pipe only this process holds open. When the pipe closes it sends SIGTERM to `pid` (if that is still `comm`),
/// SIGKILL after 30 s, then removes `dir`. Dropping the watchdog kills it first, so a normal teardown never
/// triggers it.
pub struct Watchdog {
    child: Child,
}

impl Watchdog {
    pub fn new(pid: u32, comm: &str, dir: Option<&Path>) -> Watchdog {
        // Running = its /proc/PID/stat state (after the command name) is not Z: an orphan's zombie may stay until
        // init reaps it.
        const SCRIPT: &str = r#"read _
[ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] || exit 0
running() { s=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) && [ -n "$s" ] && [ "${s%% *}" != Z ]; }
kill -TERM "$1" 2>/dev/null
i=0
while running "$1" && [ "$i" -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
running "$1" && kill -KILL "$1" 2>/dev/null
if [ -n "$3" ]; then rm -rf -- "$3"; fi
"#;
        let child = Command::new("sh")
            .args(["-c", SCRIPT, "watchdog", &pid.to_string(), comm])
            .arg(dir.map_or(OsStr::new(""), Path::as_os_str))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Not in the test's process group: a Ctrl-C must not take the watchdog down before it does its job.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start the watchdog (sh): {e}"));
        Watchdog { child }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // SIGKILL before the pipe closes (dropping `child` closes it), so it never acts on a normal teardown.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stdio writing to a new file at `path` (a process's log, kept in the test's temp dir).
pub fn log_file(path: &Path) -> Stdio {
    Stdio::from(std::fs::File::create(path).unwrap())
}

/// `meshwork-demo echo` listening on 127.0.0.1:`port`, output discarded.
pub fn demo_echo(port: u16) -> Proc {
    Proc::spawn(
        "meshwork-demo echo",
        Command::new(bin("meshwork-demo"))
            .args(["echo", "--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

/// A `meshwork-proxy` command: stdout discarded, the log (stderr) to `log` (a new file) if given, else discarded.
/// Add arguments and environment, then start it with [`Proc::spawn`].
pub fn proxy_command(log: Option<&Path>) -> Command {
    let mut cmd = Command::new(bin("meshwork-proxy"));
    cmd.stdout(Stdio::null())
        .stderr(log.map_or_else(Stdio::null, log_file));
    cmd
}

/// A single-use bootstrap token for proxy `node` of `service` (namespace `default`), from the control plane serving
/// `manifests` (its state directory is `manifests/.meshwork`). Waits (up to 20 s) for that control plane to have
/// made its CA and token key. Give it to the proxy as `MESHWORK_BOOTSTRAP_TOKEN`.
pub fn bootstrap_token(manifests: &Path, service: &str, node: &str) -> String {
    token_create(manifests, &["--service", service, "--node", node])
}

/// Like [`bootstrap_token`], for a gateway proxy of the Gateway `gateway`.
pub fn gateway_token(manifests: &Path, gateway: &str, node: &str) -> String {
    token_create(
        manifests,
        &["--gateway", "--service", gateway, "--node", node],
    )
}

fn token_create(manifests: &Path, args: &[&str]) -> String {
    let state = manifests.join(".meshwork");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !(state.join("ca.pem").exists() && state.join("token.key").exists()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the control plane made no CA in {} within 20 s",
            state.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = Command::new(bin("meshwork"))
        .args(["token", "create"])
        .args(args)
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "meshwork token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A node started by `meshwork up`, from its `started ...` line.
#[derive(Debug, Clone, Default)]
pub struct Node {
    pub fields: HashMap<String, String>,
}

impl Node {
    pub fn get(&self, k: &str) -> &str {
        self.fields.get(k).map_or("", String::as_str)
    }
}

/// `meshwork up DIR`, with its stdout lines available to wait on. Dropping it stops `meshwork up` (which stops
/// everything it started); a [`Watchdog`] does the same if the test process dies without dropping it.
pub struct Mesh {
    // Fields drop in this order: the process before its watchdog, both before the temp dir (the apps' cwd).
    pub proc: Proc,
    watchdog: Watchdog,
    lines: mpsc::UnboundedReceiver<String>,
    pub seen: Arc<Mutex<Vec<String>>>,
    pub nodes: HashMap<String, Node>,
    pub control_plane: String,
    pub ready: String,
    pub dir: PathBuf,
    /// The gateway listener's port when started with [`Mesh::start`] (0 with [`Mesh::up`]).
    pub gw: u16,
    tmp: Option<tempfile::TempDir>,
}

impl Mesh {
    /// `meshwork up` on a new temp dir holding one file, mesh.yaml, written as `manifests(gw)` where `gw` is a free
    /// port for the gateway's listener ([`Mesh::base`]); waits for its `ready:` line. The dir (with up.log) is
    /// removed once the mesh has stopped.
    pub async fn start(manifests: impl FnOnce(u16) -> String) -> Mesh {
        Self::start_with(&[], manifests).await
    }

    /// Like [`Mesh::start`], with more arguments for `meshwork up`.
    pub async fn start_with(args: &[&str], manifests: impl FnOnce(u16) -> String) -> Mesh {
        Self::start_with_env(args, &[], manifests).await
    }

    /// Like [`Mesh::start_with`], with environment variables for `meshwork up` (which its proxies inherit).
    pub async fn start_with_env(
        args: &[&str],
        env: &[(&str, &str)],
        manifests: impl FnOnce(u16) -> String,
    ) -> Mesh {
        let tmp = tempfile::tempdir().unwrap();
        let gw = free_port();
        write(tmp.path(), "mesh.yaml", &manifests(gw));
        let mut mesh = Self::launch(tmp.path(), true, args, env).await;
        mesh.gw = gw;
        mesh.tmp = Some(tmp);
        mesh
    }

    /// `meshwork up DIR` on manifests the test has written (and keeps); waits for its `ready:` line.
    pub async fn up(dir: &Path) -> Mesh {
        Self::launch(dir, false, &[], &[]).await
    }

    async fn launch(dir: &Path, owns_dir: bool, args: &[&str], env: &[(&str, &str)]) -> Mesh {
        let log = std::fs::File::create(dir.join("up.log")).unwrap();
        let mut cmd = Command::new(bin("meshwork"));
        cmd.arg("up")
            .arg(dir)
            .args([
                "--control-plane",
                "127.0.0.1:0",
                "--ready-timeout-secs",
                "60",
            ])
            .args(args)
            .envs(env.iter().copied())
            .env("MESHWORK_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut proc = Proc::spawn("meshwork up", &mut cmd);
        let watchdog = Watchdog::new(proc.child.id(), "meshwork", owns_dir.then_some(dir));
        let stdout = proc.child.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                seen2.lock().unwrap().push(line.clone());
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut mesh = Mesh {
            proc,
            watchdog,
            lines,
            seen,
            nodes: HashMap::new(),
            control_plane: String::new(),
            ready: String::new(),
            dir: dir.to_path_buf(),
            gw: 0,
            tmp: None,
        };
        mesh.ready = mesh.wait_line("ready:", Duration::from_secs(90)).await;
        for line in mesh.seen.lock().unwrap().iter() {
            if let Some(rest) = line.strip_prefix("control plane: ") {
                mesh.control_plane = rest.to_string();
            }
        }
        mesh.refresh_nodes();
        mesh
    }

    /// The built-in dashboard's address, from the `dashboard: http://...` line `meshwork up` printed.
    pub fn dashboard(&self) -> String {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .find_map(|l| l.strip_prefix("dashboard: "))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no dashboard line in {seen:?}"))
    }

    /// `http://127.0.0.1:GW`, the gateway of a mesh started with [`Mesh::start`].
    pub fn base(&self) -> String {
        assert_ne!(
            self.gw, 0,
            "the gateway port is known only with Mesh::start"
        );
        format!("http://127.0.0.1:{}", self.gw)
    }

    /// A node from its `started` line (`gateway-edge`, `web-0`, ...).
    pub fn node(&self, name: &str) -> &Node {
        self.nodes.get(name).unwrap_or_else(|| {
            panic!(
                "no node {name}; started: {:?}",
                self.nodes.keys().collect::<Vec<_>>()
            )
        })
    }

    /// `http://ADDR` of a node's app (where the demo app listens, bypassing its sidecar).
    pub fn app(&self, node: &str) -> String {
        format!("http://{}", self.node(node).get("app"))
    }

    /// The address of a node's proxy admin listener (`/ready`, `/metrics`, `/config_dump`).
    pub fn admin(&self, node: &str) -> String {
        self.node(node).get("admin").to_string()
    }

    pub fn refresh_nodes(&mut self) {
        for line in self.seen.lock().unwrap().iter() {
            if let Some(rest) = line.strip_prefix("started ") {
                let mut words = rest.split_whitespace();
                let name = words.next().unwrap().to_string();
                let fields = words
                    .filter_map(|w| w.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                self.nodes.insert(name, Node { fields });
            }
        }
    }

    /// Waits for a stdout line starting with `prefix` (lines before it are skipped).
    pub async fn wait_line(&mut self, prefix: &str, limit: Duration) -> String {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) if line.starts_with(prefix) => return line,
                Ok(Some(_)) => continue,
                Ok(None) => panic!(
                    "meshwork up exited while waiting for {prefix:?}; log:\n{}",
                    self.log()
                ),
                Err(_) => panic!(
                    "no {prefix:?} line within {limit:?}; stdout so far: {:?}\nlog:\n{}",
                    self.seen.lock().unwrap(),
                    self.log()
                ),
            }
        }
    }

    /// The last 60 lines of `meshwork up`'s log, after every earlier line that reports an error or a panic (a
    /// process's backtrace would otherwise push its error line out of the tail).
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("up.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines.len().saturating_sub(60);
        let errors = lines[..tail].iter().filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("error") || l.contains("panicked") || l.contains("exited")
        });
        let mut out: Vec<&str> = errors.copied().take(40).collect();
        if !out.is_empty() {
            out.push("[...]");
        }
        out.extend(&lines[tail..]);
        out.join("\n")
    }
}

/// Writes manifest file `dir/name` the way an editor saves it.
pub fn write(dir: &Path, name: &str, text: &str) {
    // Write-then-rename, as editors do, so the watcher never sees half a file.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!(
                "not JSON ({}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// An HTTP/1.1 client. Its connections are tasks of the runtime it is first used on: one per test, never shared.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(16)
        .build_http()
}

pub fn h2_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub async fn send(
    c: &HttpClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Resp, String> {
    let mut b = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(body)).map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), c.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| format!("{e:?}"))?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

/// GET; a transport error or timeout fails the test.
pub async fn get(c: &HttpClient, url: &str, headers: &[(&str, &str)]) -> Resp {
    send(c, "GET", url, headers, Bytes::new())
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// Polls `f` until it returns Some, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (at most `limit`) until GET `url` answers 200, and returns that answer.
pub async fn wait_serving(c: &HttpClient, url: &str, limit: Duration, what: &str) -> Resp {
    eventually(limit, what, || async {
        send(c, "GET", url, &[], Bytes::new())
            .await
            .ok()
            .filter(|r| r.status == 200)
    })
    .await
}

/// Asserts that a proxy's admin `/ready` (at `admin`, an address) answers 200 now.
pub async fn assert_ready(c: &HttpClient, admin: &str) {
    let r = get(c, &format!("http://{admin}/ready"), &[]).await;
    assert_eq!(r.status, 200, "{admin}/ready: {}", r.text());
}

/// A proxy's `/metrics` text (Prometheus format), from its admin address.
pub async fn metrics(c: &HttpClient, admin: &str) -> String {
    get(c, &format!("http://{admin}/metrics"), &[]).await.text()
}

/// The value of `name{cluster="CLUSTER"}` in a `/metrics` text; missing fails the test.
pub fn metric_value(metrics: &str, name: &str, cluster: &str) -> u64 {
    let prefix = format!("{name}{{cluster=\"{cluster}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
        .trim()
        .parse()
        .unwrap()
}

/// How many requests a demo app (at `app`, an `http://` URL) has served, not counting `/_demo/` ones.
pub async fn demo_count(c: &HttpClient, app: &str) -> u64 {
    get(c, &format!("{app}/_demo/count"), &[]).await.json()["requests"]
        .as_u64()
        .unwrap()
}

/// Switches a demo app's failure mode (`/_demo/mode?QUERY`, e.g. `fail=1`, `slow=150`).
pub async fn demo_mode(c: &HttpClient, app: &str, query: &str) {
    let r = get(c, &format!("{app}/_demo/mode?{query}"), &[]).await;
    assert_eq!(r.status, 200);
}

/// Waits (at most `limit`) for the control plane at `cp` to report a NACK from `node` whose text contains
/// `containing` (any NACK for ""), and returns that proxy's status.
pub async fn wait_nack(
    cp: &str,
    node: &str,
    containing: &str,
    limit: Duration,
    what: &str,
) -> meshwork_proto::ProxyStatus {
    eventually(limit, what, || async {
        cp_status(cp).await?.proxies.into_iter().find(|p| {
            p.node_id == node && !p.last_nack.is_empty() && p.last_nack.contains(containing)
        })
    })
    .await
}

/// Continuous load in the background: `workers` loops of GET `url` until stopped. Counts non-200 answers and
/// transport errors as failures, with the first few recorded.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(u64, Vec<String>)>>,
}

impl Load {
    pub fn start(url: String, workers: usize) -> Load {
        Self::start_with_headers(url, workers, Vec::new())
    }

    pub fn start_with_headers(url: String, workers: usize, headers: Vec<(String, String)>) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = (0..workers)
            .map(|_| {
                let (url, stop, c, headers) =
                    (url.clone(), stop.clone(), client(), headers.clone());
                tokio::spawn(async move {
                    let (mut ok, mut failures) = (0u64, Vec::new());
                    let headers: Vec<(&str, &str)> = headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        match send(&c, "GET", &url, &headers, Bytes::new()).await {
                            Ok(r) if r.status == 200 => ok += 1,
                            Ok(r) => failures.push(format!("{}: {}", r.status, r.text().trim())),
                            Err(e) => failures.push(e),
                        }
                    }
                    (ok, failures)
                })
            })
            .collect();
        Load { stop, tasks }
    }

    /// Stops the load, asserts that no request failed ("N failures `during`, e.g. ..."); returns the successes.
    pub async fn finish_without_failures(self, during: &str) -> u64 {
        let (ok, failures) = self.finish().await;
        assert!(
            failures.is_empty(),
            "{} failures {during}, e.g. {:?}",
            failures.len(),
            &failures[..failures.len().min(3)]
        );
        ok
    }

    /// Stops the load; returns (successes, failures).
    pub async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut ok = 0;
        let mut failures = Vec::new();
        for t in self.tasks {
            let (o, f) = t.await.unwrap();
            ok += o;
            failures.extend(f);
        }
        (ok, failures)
    }
}

/// The control plane's view of the connected proxies (None while it does not answer), asked as its operator
/// (the state directory it recorded on this host).
pub async fn cp_status(addr: &str) -> Option<meshwork_proto::StatusResponse> {
    use meshwork_identity::operator::{client_config, Pointer};
    let (dir, td) = Pointer::read(addr.parse().ok()?)?;
    let config = client_config(&dir, &td, Duration::from_secs(300)).ok()?;
    let url = format!("http://{addr}");
    let channel = meshwork_identity::channel::connect(
        &url,
        std::sync::Arc::new(config),
        Duration::from_secs(5),
    )
    .await
    .ok()?;
    let mut c = meshwork_proto::discovery_client::DiscoveryClient::new(channel);
    c.status(meshwork_proto::StatusRequest {})
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// The first-party filters (plugins/), compiled from source for wasm32-wasip1 once per test run, into a target
/// directory of their own beside this build's. Returns the directory holding the `.wasm` files.
pub fn plugins_dir() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
            let target = bin("meshwork-proxy").parent().unwrap().parent().unwrap().join("wasm-plugins");
            prereqs::wasm_target();
            let status = Command::new(env!("CARGO"))
                .args(["build", "--release", "--target", "wasm32-wasip1", "--manifest-path"])
                .arg(repo.join("plugins/Cargo.toml"))
                .env("CARGO_TARGET_DIR", &target)
                .status()
                .expect("run cargo to build the filters");
            assert!(status.success(), "building plugins/ for wasm32-wasip1 failed (is the target installed? rustup target add wasm32-wasip1)");
            target.join("wasm32-wasip1/release")
        })
        .clone()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn wasm_out(sub: &str) -> PathBuf {
    let dir = bin("meshwork-proxy")
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("wasm-plugins")
        .join(sub);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The C filter (plugins/c), compiled with clang for wasm32-wasi against plugin-sdk/c/proxy_wasm.h.
pub fn c_filter() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = wasm_out("c").join("tag_filter.wasm");
            prereqs::c_toolchain();
            let status = Command::new("clang")
                .args([
                    "--target=wasm32-wasi",
                    "--sysroot=/usr",
                    "-mexec-model=reactor",
                    "-O2",
                    "-I",
                ])
                .arg(repo().join("plugin-sdk/c"))
                .arg("-o")
                .arg(&out)
                .arg(repo().join("plugins/c/tag_filter.c"))
                .status()
                .expect(
                    "run clang (apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32)",
                );
            assert!(status.success(), "building the C filter failed");
            out
        })
        .clone()
}

/// The AssemblyScript filter (plugins/assemblyscript), built with assemblyscript and @solo-io/proxy-runtime from npm.
pub fn as_filter() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = repo().join("plugins/assemblyscript");
            if !dir.join("node_modules/.bin/asc").exists() {
                let status = Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund"])
                    .current_dir(&dir)
                    .status()
                    .expect("run npm (Node.js and npm are needed)");
                assert!(status.success(), "npm ci in plugins/assemblyscript failed");
            }
            let out = wasm_out("as").join("filter.wasm");
            let status = Command::new(dir.join("node_modules/.bin/asc"))
                .args([
                    "assembly/index.ts",
                    "--use",
                    "abort=abort_proc_exit",
                    "-O3",
                    "--runtime",
                    "full",
                    "-b",
                ])
                .arg(&out)
                .current_dir(&dir)
                .status()
                .expect("run asc");
            assert!(
                status.success(),
                "building the AssemblyScript filter failed"
            );
            out
        })
        .clone()
}

/// The smallest mesh a filter test needs: a `backend` service (the demo echo app) behind the Gateway `edge` on
/// port `gw`, every path routed to it by the HTTPRoute `all`. Tests append their own documents.
pub fn gateway_to_backend(gw: u16) -> String {
    format!(
        r#"
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {{name: backend}}
spec: {{service: backend, command: meshwork-demo echo}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec: {{listeners: [{{name: http, port: {gw}}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: all}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{backendRefs: [{{name: backend}}]}}]
"#
    )
}
