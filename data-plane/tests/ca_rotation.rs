//! A CA rotation with overlap under load (issue 12), with real processes: the control plane is restarted twice,
//! first still signing with CA A but also trusting a new root B (every proxy gets the bundle [A, B] when it
//! reconnects), then signing with B while still trusting A (proxies keep their A certificates, which are still
//! accepted, and renew into B). Requests flow gateway -> backend's sidecar (an mTLS hop) throughout; none fails.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn control_plane(dir: &Path, port: u16, extra: &[&Path], flags: &[&str]) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("cp.log"))
        .unwrap();
    let mut cmd = Command::new(bin("meshwork"));
    cmd.args(["control", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--warmup", "1s", "--cert-lifetime", "20s", "--manifests"])
        .arg(dir.join("manifests"));
    for (flag, path) in flags.iter().zip(extra) {
        cmd.arg(flag).arg(path);
    }
    Proc::spawn(
        "meshwork control",
        cmd.stdout(Stdio::null()).stderr(Stdio::from(log)),
    )
}

fn restart(cp: &mut Proc) {
    cp.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = cp.child.wait();
}

/// A proxy's identity as its /config_dump shows it.
async fn identity(c: &HttpClient, admin: &str) -> serde_json::Value {
    get(c, &format!("http://{admin}/config_dump"), &[])
        .await
        .json()["identity"]
        .clone()
}

/// Waits until every admin's identity satisfies `ok`.
async fn until_all(
    c: &HttpClient,
    admins: &[String],
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) {
    eventually(Duration::from_secs(40), what, || async {
        for a in admins {
            if !ok(&identity(c, a).await) {
                return None;
            }
        }
        Some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_rotation_with_overlap_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let (cp_port, gw, app, inbound, outbound) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    write(&manifests, "mesh.yaml", &gateway_to_backend(gw));
    let mut cp = control_plane(dir.path(), cp_port, &[], &[]);
    let _app = demo_echo(app);
    let cp_url = format!("http://127.0.0.1:{cp_port}");
    let (gw_admin, sidecar_admin) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let _sidecar = Proc::spawn(
        "sidecar",
        proxy_command(Some(&dir.path().join("sidecar.log")))
            .args([
                "--control-plane",
                &cp_url,
                "--role",
                "sidecar",
                "--service",
                "backend",
            ])
            .args([
                "--node-id",
                "backend-0",
                "--inbound",
                &addr(inbound),
                "--outbound",
                &addr(outbound),
            ])
            .args(["--app", &addr(app), "--admin", &sidecar_admin])
            .env(
                "MESHWORK_BOOTSTRAP_TOKEN",
                bootstrap_token(&manifests, "backend", "backend-0"),
            ),
    );
    let _gateway = Proc::spawn(
        "gateway",
        proxy_command(Some(&dir.path().join("gateway.log")))
            .args([
                "--control-plane",
                &cp_url,
                "--role",
                "gateway",
                "--service",
                "edge",
            ])
            .args(["--node-id", "gw", "--admin", &gw_admin])
            .env(
                "MESHWORK_BOOTSTRAP_TOKEN",
                gateway_token(&manifests, "edge", "gw"),
            ),
    );
    let c = client();
    let url = format!("http://127.0.0.1:{gw}/rotate");
    wait_serving(&c, &url, Duration::from_secs(20), "the gateway").await;
    let admins = [gw_admin.clone(), sidecar_admin.clone()];
    until_all(&c, &admins, "both proxies certified", |i| {
        i["spiffe_id"].is_string()
    })
    .await;
    let load = Load::start(url, 4);

    // The new CA B, made beside (not yet used).
    let ca_b = dir.path().join("ca-b");
    meshwork_identity::Authority::load_or_create(&ca_b, &meshwork_identity::TrustDomain::default())
        .unwrap();
    let (b_cert, b_key, a_cert) = (
        ca_b.join("ca.pem"),
        ca_b.join("ca-key.pem"),
        manifests.join(".meshwork/ca.pem"),
    );

    // Phase 1: still signing with A, also trusting B: the bundle [A, B] reaches both proxies when they reconnect.
    restart(&mut cp);
    cp = control_plane(dir.path(), cp_port, &[&b_cert], &["--also-trust"]);
    until_all(&c, &admins, "the bundle [A, B] on both proxies", |i| {
        i["trust_bundle_roots"] == 2
    })
    .await;

    // Phase 2: signing with B, still trusting A: both proxies renew into B (their next certificate is installed
    // after the switch), and nothing fails meanwhile.
    restart(&mut cp);
    let switched = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    cp = control_plane(
        dir.path(),
        cp_port,
        &[&b_cert, &b_key, &a_cert],
        &["--ca-cert", "--ca-key", "--also-trust"],
    );
    until_all(&c, &admins, "both proxies renewed under CA B", |i| {
        i["installed_unix_ms"]
            .as_u64()
            .is_some_and(|t| t > switched)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let served = load.finish_without_failures("a CA rotation").await;
    assert!(served > 100, "only {served} requests");
    drop(cp);
}
