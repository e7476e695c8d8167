//! `meshwork up` on a test manifest set: every HTTPRoute feature through a real gateway and real sidecars, then
//! live changes under load (a route edit, an invalid edit, a NACK, a scale-down), with zero failed requests.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use common::*;

const WORKLOADS: &str = r#"
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {name: web}
spec: {service: web, command: meshwork-demo echo}
---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {name: backend-v1}
spec: {service: backend, labels: {version: v1}, replicas: REPLICAS, command: meshwork-demo echo}
---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {name: backend-v2}
spec: {service: backend, labels: {version: v2}, command: [meshwork-demo, echo, --port, "{port}"]}
---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {name: sink}
spec: {service: sink, command: meshwork-demo echo}
---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {name: frontend}
spec: {service: frontend, command: meshwork-demo frontend --upstream backend}
---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {name: empty}
spec: {service: empty, replicas: 0, command: meshwork-demo echo}
---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {name: dead}
spec: {service: dead, endpoints: ["127.0.0.1:DEAD"]}
"#;

const GATEWAY: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  listeners:
    - {name: http, port: GW, protocol: HTTP}
EXTRA
";

const ROUTES: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: edge}
spec:
  parentRefs: [{name: edge, sectionName: http}]
  rules:
    - matches: [{path: {type: Exact, value: /exact}}]
      backendRefs: [{name: web}]
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier:
            set: [{name: x-added, value: "yes"}]
            remove: [x-remove-me]
        - type: ResponseHeaderModifier
          responseHeaderModifier:
            add: [{name: x-resp, value: r}]
    - matches: [{path: {value: /api}, method: POST}]
      backendRefs: [{group: meshwork.dev, kind: Workload, name: backend-v2}]
    - matches: [{path: {value: /q}, queryParams: [{name: debug, value: "1"}]}]
      backendRefs: [{group: meshwork.dev, kind: Workload, name: backend-v2}]
    - matches: [{path: {value: /q}}]
      backendRefs: [{name: web}]
    - matches: [{headers: [{name: x-canary, value: "yes"}]}]
      backendRefs: [{group: meshwork.dev, kind: Workload, name: backend-v2}]
    - matches: [{path: {value: /old}}]
      filters:
        - type: RequestRedirect
          requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /new}, statusCode: 301}
    - matches: [{path: {value: /rewrite}}]
      backendRefs: [{name: web}]
      filters:
        - type: URLRewrite
          urlRewrite: {hostname: rewritten.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
    - matches: [{path: {value: /mirror}}]
      backendRefs: [{name: web}]
      filters:
        - type: RequestMirror
          requestMirror: {backendRef: {name: sink}}
    - matches: [{path: {type: Exact, value: /sink-count}}]
      backendRefs: [{name: sink}]
      filters:
        - type: URLRewrite
          urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /_demo/count}}
    - matches: [{path: {value: /split}}]
      backendRefs:
        - {group: meshwork.dev, kind: Workload, name: backend-v1, weight: W1}
        - {group: meshwork.dev, kind: Workload, name: backend-v2, weight: W2}
    - matches: [{path: {type: RegularExpression, value: "/re/[0-9]+"}}]
      backendRefs: [{group: meshwork.dev, kind: Workload, name: backend-v2}]
    - matches: [{path: {value: /fe}}]
      backendRefs: [{name: frontend}]
      filters:
        - type: URLRewrite
          urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}
    - matches: [{path: {value: /slow}}]
      backendRefs: [{name: web}]
      timeouts: {request: 300ms}
      filters:
        - type: URLRewrite
          urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /delay}}
    - matches: [{path: {value: /empty}}]
      backendRefs: [{name: empty}]
    - matches: [{path: {value: /dead}}]
      backendRefs: [{name: dead}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: backend}
spec:
  parentRefs: [{kind: Service, name: backend}]
  rules:
    - matches: [{headers: [{name: x-user, value: beta}]}]
      backendRefs: [{group: meshwork.dev, kind: Workload, name: backend-v2}]
    - backendRefs: [{group: meshwork.dev, kind: Workload, name: backend-v1}]
"#;

struct Fixture {
    dir: tempfile::TempDir,
    gw: u16,
    dead: u16,
}

impl Fixture {
    fn workloads(&self, replicas: u32) {
        let text = WORKLOADS
            .replace("REPLICAS", &replicas.to_string())
            .replace("DEAD", &self.dead.to_string());
        write(self.dir.path(), "workloads.yaml", &text);
    }
    fn gateway(&self, extra_port: Option<u16>) {
        let extra = extra_port
            .map(|p| format!("    - {{name: extra, port: {p}, protocol: HTTP}}"))
            .unwrap_or_default();
        write(
            self.dir.path(),
            "gateway.yaml",
            &GATEWAY
                .replace("GW", &self.gw.to_string())
                .replace("EXTRA", &extra),
        );
    }
    fn routes(&self, w1: &str, w2: &str) {
        write(
            self.dir.path(),
            "routes.yaml",
            &ROUTES.replace("W1", w1).replace("W2", w2),
        );
    }
}

fn field<'a>(v: &'a serde_json::Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_filters_and_live_changes() {
    let dir = tempfile::tempdir().unwrap();
    let fx = Fixture {
        gw: free_port(),
        dead: free_port(),
        dir,
    };
    fx.workloads(2);
    fx.gateway(None);
    fx.routes("80", "20");
    let mut mesh = Mesh::up(fx.dir.path()).await;
    let base = format!("http://127.0.0.1:{}", fx.gw);
    assert_eq!(mesh.ready, format!("ready: gateway {base}"));
    let c = client();

    // Header modifiers, hop-by-hop removal, forwarding headers.
    let r = get(
        &c,
        &format!("{base}/exact"),
        &[
            ("x-remove-me", "1"),
            ("connection", "x-secret"),
            ("x-secret", "s"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(field(&j, &["workload"]), "web");
    assert_eq!(field(&j, &["headers", "x-added"]), "yes");
    assert!(
        j["headers"].get("x-remove-me").is_none() && j["headers"].get("x-secret").is_none(),
        "{j}"
    );
    assert_eq!(
        field(&j, &["headers", "x-forwarded-for"]),
        "127.0.0.1, 127.0.0.1",
        "gateway and sidecar each append"
    );
    assert_eq!(field(&j, &["headers", "x-request-id"]).len(), 36);
    assert_eq!(r.headers.get("x-resp").unwrap(), "r");

    // Method, query, header, regex matches; precedence puts the more specific rule first.
    let post = send(
        &c,
        "POST",
        &format!("{base}/api/x"),
        &[],
        Bytes::from_static(b"{}"),
    )
    .await
    .unwrap();
    assert_eq!(field(&post.json(), &["workload"]), "backend-v2");
    assert_eq!(
        get(&c, &format!("{base}/api/x"), &[]).await.status,
        404,
        "GET has no route"
    );
    assert_eq!(
        field(
            &get(&c, &format!("{base}/q?debug=1"), &[]).await.json(),
            &["workload"]
        ),
        "backend-v2"
    );
    assert_eq!(
        field(
            &get(&c, &format!("{base}/q?debug=0"), &[]).await.json(),
            &["workload"]
        ),
        "web"
    );
    assert_eq!(
        field(
            &get(&c, &format!("{base}/anything"), &[("x-canary", "yes")])
                .await
                .json(),
            &["workload"]
        ),
        "backend-v2"
    );
    assert_eq!(
        field(
            &get(&c, &format!("{base}/re/123"), &[]).await.json(),
            &["workload"]
        ),
        "backend-v2"
    );
    let nf = get(&c, &format!("{base}/re/abc"), &[]).await;
    assert_eq!(nf.status, 404);
    assert!(nf.text().contains("no route"), "{}", nf.text());

    // Redirect and rewrite.
    let r = get(&c, &format!("{base}/old/x?a=1"), &[]).await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.headers.get("location").unwrap().to_str().unwrap(),
        format!("{base}/new?a=1")
    );
    let j = get(&c, &format!("{base}/rewrite/abc?z=2"), &[])
        .await
        .json();
    assert_eq!(field(&j, &["path"]), "/v2/abc");
    assert_eq!(field(&j, &["query"]), "z=2");
    assert_eq!(field(&j, &["headers", "host"]), "rewritten.example");

    // Mirror: the sink sees a copy of every mirrored request (body included), the client only the primary answer.
    let count = |r: Resp| r.json()["requests"].as_u64().unwrap();
    let before = count(get(&c, &format!("{base}/sink-count"), &[]).await);
    for _ in 0..5 {
        let r = send(
            &c,
            "POST",
            &format!("{base}/mirror"),
            &[],
            Bytes::from(vec![b'm'; 100_000]),
        )
        .await
        .unwrap();
        assert_eq!(field(&r.json(), &["workload"]), "web");
        assert_eq!(r.json()["body_bytes"], 100_000);
    }
    eventually(
        Duration::from_secs(5),
        "mirrored requests at the sink",
        || {
            let c = c.clone();
            let url = format!("{base}/sink-count");
            async move { (count(get(&c, &url, &[]).await) == before + 5).then_some(()) }
        },
    )
    .await;

    // Weighted split (80/20) and round robin over backend-v1's two replicas.
    let mut by_node: HashMap<String, u32> = HashMap::new();
    let n = 2000;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (c, url) = (c.clone(), format!("{base}/split"));
        tasks.push(tokio::spawn(async move {
            let mut nodes = Vec::new();
            for _ in 0..n / 8 {
                nodes.push(
                    get(&c, &url, &[]).await.json()["node"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                );
            }
            nodes
        }));
    }
    for t in tasks {
        for node in t.await.unwrap() {
            *by_node.entry(node).or_default() += 1;
        }
    }
    let v2 = f64::from(by_node.get("backend-v2-0").copied().unwrap_or(0)) / f64::from(n);
    assert!(
        (0.17..=0.23).contains(&v2),
        "v2 share {v2} outside 0.20 +- 0.03: {by_node:?}"
    );
    let (a, b) = (by_node["backend-v1-0"], by_node["backend-v1-1"]);
    // The default balancer is peak-ewma (latency-aware), not strict round robin: equal replicas share the load,
    // not necessarily evenly.
    assert!(
        a.min(b) * 4 >= a + b,
        "both v1 replicas serve a fair share: {a} vs {b}"
    );

    // East-west: the frontend app calls `http://backend/...` through HTTP_PROXY; the GAMMA route pins beta users.
    let j = get(&c, &format!("{base}/fe/hello"), &[]).await.json();
    assert_eq!(field(&j, &["called"]), "http://backend/hello");
    assert_eq!(field(&j, &["response", "workload"]), "backend-v1");
    let j = get(
        &c,
        &format!("{base}/fe/hello"),
        &[("x-user", "beta"), ("x-request-id", "req-42")],
    )
    .await
    .json();
    assert_eq!(field(&j, &["response", "workload"]), "backend-v2");
    assert_eq!(
        field(&j, &["response", "headers", "x-request-id"]),
        "req-42",
        "the request id survives every hop"
    );

    // Errors map to statuses with a body that says why.
    let r = get(&c, &format!("{base}/slow/2000"), &[]).await;
    assert_eq!(r.status, 504, "{}", r.text());
    let r = get(&c, &format!("{base}/empty"), &[]).await;
    assert_eq!(
        (r.status, r.text().contains("no healthy endpoint")),
        (503, true),
        "{}",
        r.text()
    );
    let r = get(&c, &format!("{base}/dead"), &[]).await;
    assert_eq!(
        (r.status, r.text().contains("connect error")),
        (503, true),
        "{}",
        r.text()
    );

    // A route edited under continuous load: zero failed requests, and the new weights take over.
    let load = Load::start(format!("{base}/split"), 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    fx.routes("0", "100");
    mesh.wait_line("applied: generation 2", Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ok = load.finish_without_failures("during a route edit").await;
    assert!(ok > 50, "load ran ({ok} requests)");
    for _ in 0..50 {
        assert_eq!(
            field(
                &get(&c, &format!("{base}/split"), &[]).await.json(),
                &["workload"]
            ),
            "backend-v2"
        );
    }

    // An invalid edit is rejected with file, line and field; the last good set keeps serving.
    fx.routes("ten", "100");
    let line = mesh.wait_line("rejected:", Duration::from_secs(30)).await;
    let written = std::fs::read_to_string(fx.dir.path().join("routes.yaml")).unwrap();
    let at = written
        .lines()
        .position(|l| l.contains("weight: ten"))
        .unwrap()
        + 1;
    let want = format!("routes.yaml:{at}: spec.rules[9].backendRefs[0].weight: expected a non-negative integer, got \"ten\"");
    assert!(
        line.ends_with(&want),
        "{line}\nwanted it to end with {want}"
    );
    let status = cp_status(&mesh.control_plane).await.unwrap();
    assert!(status.rejected_errors[0].contains("got \"ten\""));
    assert_eq!(
        field(
            &get(&c, &format!("{base}/split"), &[]).await.json(),
            &["workload"]
        ),
        "backend-v2"
    );
    fx.routes("0", "100");

    // A snapshot the gateway cannot apply (its new listener's port is taken) is NACKed; it keeps serving.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap().port();
    fx.gateway(Some(taken));
    mesh.wait_line("applied: generation", Duration::from_secs(30))
        .await;
    let gw = wait_nack(
        &mesh.control_plane,
        "gateway-edge",
        "",
        Duration::from_secs(10),
        "a NACK from the gateway",
    )
    .await;
    assert!(
        gw.last_nack.contains("cannot bind") && gw.last_nack.contains(&taken.to_string()),
        "{}",
        gw.last_nack
    );
    assert!(gw.acked_version < gw.sent_version);
    assert_eq!(
        get(&c, &format!("{base}/exact"), &[]).await.status,
        200,
        "previous config still serving"
    );
    drop(squatter);
    fx.gateway(None);
    mesh.wait_line("applied: generation", Duration::from_secs(30))
        .await;

    // Scale-down under load: the instance leaves the registry before it stops, so no request fails.
    let load = Load::start(format!("{base}/fe/x"), 4);
    fx.workloads(1);
    fx.routes("100", "0");
    let line = mesh
        .wait_line("applied: generation", Duration::from_secs(60))
        .await;
    assert!(!line.contains("not yet"), "{line}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ok = load.finish_without_failures("during scale-down").await;
    assert!(ok > 20);
    let status = cp_status(&mesh.control_plane).await.unwrap();
    assert!(
        !status.proxies.iter().any(|p| p.node_id == "backend-v1-1"),
        "stopped instance deregistered"
    );
    let admin = mesh.admin("gateway-edge");
    let dump = get(&c, &format!("http://{admin}/config_dump"), &[])
        .await
        .json();
    let clusters = dump["snapshot"]["clusters"].as_array().unwrap();
    let v1 = clusters
        .iter()
        .find(|cl| cl["name"] == "workload/default/backend-v1")
        .unwrap();
    assert_eq!(v1["endpoints"].as_array().unwrap().len(), 1, "{v1}");
    let mut nodes = HashMap::new();
    for _ in 0..20 {
        *nodes
            .entry(
                get(&c, &format!("{base}/split"), &[]).await.json()["node"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
            .or_insert(0) += 1;
    }
    assert_eq!(nodes.keys().collect::<Vec<_>>(), ["backend-v1-0"]);

    // Ctrl-C / SIGTERM stops every process `up` started: the proxies, and every app with everything it started
    // (apps given as a command line run under `sh -c`; each app leads its own process group).
    let words: Vec<String> = mesh
        .seen
        .lock()
        .unwrap()
        .iter()
        .flat_map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        .collect();
    let pids: Vec<i32> = words
        .iter()
        .filter_map(|w| w.strip_prefix("pid=")?.parse().ok())
        .collect();
    let app_groups: Vec<i32> = words
        .iter()
        .filter_map(|w| w.strip_prefix("app_pid=")?.parse().ok())
        .collect();
    assert!(!app_groups.is_empty());
    mesh.proc.stop(Duration::from_secs(30));
    for pid in pids {
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
            && !is_zombie(pid);
        assert!(!alive, "process {pid} outlived meshwork up");
    }
    for group in app_groups {
        let alive = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(group), None).is_ok();
        assert!(
            !alive,
            "a process of app group {group} outlived meshwork up"
        );
    }
    // And whatever the grouping: no process is left running in the manifest directory (every app's cwd).
    let dir = fx.dir.path().canonicalize().unwrap();
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| std::fs::read_link(e.path().join("cwd")).is_ok_and(|cwd| cwd == dir))
        .filter(|e| !is_zombie(e.file_name().to_string_lossy().parse().unwrap_or(0)))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        left.is_empty(),
        "processes still running in the manifest directory: {left:?}"
    );
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(true, |s| s.split_whitespace().nth(2) == Some("Z"))
}
