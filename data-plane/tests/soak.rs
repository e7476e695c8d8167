//! Soak under chaos (issue 11): idempotent GETs flow through a gateway to three replicas (app + sidecar each)
//! while, for a bounded time, a random part of the mesh is SIGKILLed and restarted: an app, a sidecar, or the
//! control plane, one at a time, so every request always has at least two healthy endpoints. With retries on
//! (`5xx`, resets, connect failures) and outlier detection, no request may be lost. The test prints the counts;
//! `MESHWORK_SOAK_SECS` lengthens it (default 20 s).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const REPLICAS: usize = 3;

fn manifests(gw: u16) -> String {
    format!(
        "{}---
apiVersion: meshwork.dev/v1alpha1
kind: TrafficPolicy
metadata: {{name: backend}}
spec:
  targetRef: {{kind: Service, name: backend}}
  timeouts: {{request: 5s, perTry: 1s, connect: 500ms}}
  retry:
    attempts: 3
    on: [5xx, reset, connect-failure]
    backoff: {{base: 10ms, max: 50ms}}
    budget: {{ratio: 0.5, minPerSecond: 50}}
  outlierDetection: {{consecutive5xx: 2, baseEjectionTime: 2s, maxEjectionPercent: 34}}
",
        gateway_to_backend(gw)
    )
}

fn control_plane(dir: &Path, port: u16) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("cp.log"))
        .unwrap();
    Proc::spawn(
        "meshwork control",
        Command::new(bin("meshwork"))
            .args(["control", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--warmup", "2s", "--manifests"])
            .arg(dir.join("manifests"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log)),
    )
}

/// One replica's fixed addresses, so a restarted part comes back where it was.
struct Replica {
    app: u16,
    inbound: u16,
    outbound: u16,
    admin: u16,
}

fn sidecar(dir: &Path, cp: &str, i: usize, r: &Replica) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("sidecar-{i}.log")))
        .unwrap();
    let addr = |p: u16| format!("127.0.0.1:{p}");
    Proc::spawn(
        "sidecar",
        proxy_command(None)
            .args([
                "--control-plane",
                cp,
                "--role",
                "sidecar",
                "--service",
                "backend",
            ])
            .args(["--node-id", &format!("backend-{i}"), "--workers", "1"])
            .args([
                "--inbound",
                &addr(r.inbound),
                "--outbound",
                &addr(r.outbound),
            ])
            .args(["--app", &addr(r.app), "--admin", &addr(r.admin)])
            .args(["--shutdown-delay", "0s"])
            .env(
                "MESHWORK_BOOTSTRAP_TOKEN",
                bootstrap_token(&dir.join("manifests"), "backend", &format!("backend-{i}")),
            )
            .stderr(Stdio::from(log)),
    )
}

/// A replica's parts; `None` while killed.
struct Parts {
    apps: Vec<Option<Proc>>,
    sidecars: Vec<Option<Proc>>,
    cp: Option<Proc>,
}

fn kill(p: &mut Option<Proc>) {
    if let Some(mut p) = p.take() {
        p.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = p.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_with_a_healthy_endpoint_is_lost_while_parts_die_and_return() {
    let secs: u64 = std::env::var("MESHWORK_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let (cp_port, gw) = (free_port(), free_port());
    std::fs::create_dir(dir.path().join("manifests")).unwrap();
    write(&dir.path().join("manifests"), "mesh.yaml", &manifests(gw));
    let cp_url = format!("http://127.0.0.1:{cp_port}");
    let replicas: Vec<Replica> = (0..REPLICAS)
        .map(|_| Replica {
            app: free_port(),
            inbound: free_port(),
            outbound: free_port(),
            admin: free_port(),
        })
        .collect();
    let mut parts = Parts {
        apps: replicas.iter().map(|r| Some(demo_echo(r.app))).collect(),
        sidecars: Vec::new(),
        cp: Some(control_plane(dir.path(), cp_port)),
    };
    for (i, r) in replicas.iter().enumerate() {
        parts
            .sidecars
            .push(Some(sidecar(dir.path(), &cp_url, i, r)));
    }
    let gw_log = dir.path().join("gateway.log");
    let _gateway = Proc::spawn(
        "gateway",
        proxy_command(Some(&gw_log))
            .args([
                "--control-plane",
                &cp_url,
                "--role",
                "gateway",
                "--service",
                "edge",
            ])
            .args([
                "--node-id",
                "gw",
                "--admin",
                &format!("127.0.0.1:{}", free_port()),
            ])
            .env(
                "MESHWORK_BOOTSTRAP_TOKEN",
                gateway_token(&dir.path().join("manifests"), "edge", "gw"),
            ),
    );
    let c = client();
    let url = format!("http://127.0.0.1:{gw}/soak");
    wait_serving(&c, &url, Duration::from_secs(30), "the gateway").await;
    let cp_addr = format!("127.0.0.1:{cp_port}");
    eventually(Duration::from_secs(30), "every replica registered", || {
        let cp_addr = cp_addr.clone();
        async move {
            let s = cp_status(&cp_addr).await?;
            let n = s
                .proxies
                .iter()
                .filter(|p| p.node_id.starts_with("backend-"))
                .count();
            (n == REPLICAS).then_some(())
        }
    })
    .await;

    let load = Load::start(url, 4);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut chaos = Vec::new();
    while tokio::time::Instant::now() < deadline {
        let i = fastrand::usize(0..REPLICAS);
        let what = match fastrand::u8(0..3) {
            0 => {
                kill(&mut parts.apps[i]);
                tokio::time::sleep(Duration::from_millis(1500)).await;
                parts.apps[i] = Some(demo_echo(replicas[i].app));
                format!("app {i}")
            }
            1 => {
                kill(&mut parts.sidecars[i]);
                tokio::time::sleep(Duration::from_millis(1500)).await;
                parts.sidecars[i] = Some(sidecar(dir.path(), &cp_url, i, &replicas[i]));
                format!("sidecar {i}")
            }
            _ => {
                kill(&mut parts.cp);
                tokio::time::sleep(Duration::from_millis(1500)).await;
                parts.cp = Some(control_plane(dir.path(), cp_port));
                "control plane".to_string()
            }
        };
        chaos.push(what);
        // Back to full strength before the next blow (the restarted part rejoins within this).
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    let (ok, failures) = load.finish().await;
    println!(
        "soak: {secs} s, {} disruptions ({}), {ok} requests answered 200, {} lost",
        chaos.len(),
        chaos.join(", "),
        failures.len()
    );
    assert!(ok > 1000, "the load ran ({ok})");
    assert!(
        failures.is_empty(),
        "{} of {} requests lost, e.g. {:?}",
        failures.len(),
        ok + failures.len() as u64,
        &failures[..failures.len().min(5)]
    );
}
