//! The control plane killed and restarted while traffic flows: proxies keep serving their last config, reconnect,
//! and nothing fails. Then a registered instance stops and disappears from every proxy's endpoints.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn control_plane(dir: &std::path::Path, port: u16) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("cp.log"))
        .unwrap();
    Proc::spawn(
        "meshwork control",
        Command::new(bin("meshwork"))
            .args([
                "control",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--warmup",
                "3s",
                "--manifests",
            ])
            .arg(dir.join("manifests"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log)),
    )
}

/// A proxy of `service` with node id `node`, bootstrapping with a token of its own.
fn proxy(dir: &std::path::Path, name: &str, service: &str, node: &str, args: &[String]) -> Proc {
    let log = dir.join(format!("{name}.log"));
    let token = if args.iter().any(|a| a == "gateway") {
        gateway_token(&dir.join("manifests"), service, node)
    } else {
        bootstrap_token(&dir.join("manifests"), service, node)
    };
    Proc::spawn(
        name,
        proxy_command(Some(&log))
            .args(args)
            .args(["--service", service, "--node-id", node])
            .env("MESHWORK_BOOTSTRAP_TOKEN", token)
            .env("MESHWORK_LOG", "info"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_restart_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let (cp_port, gw, app, inbound, outbound) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    std::fs::create_dir(dir.path().join("manifests")).unwrap();
    write(
        &dir.path().join("manifests"),
        "mesh.yaml",
        &gateway_to_backend(gw),
    );
    let mut cp = control_plane(dir.path(), cp_port);
    let _app = demo_echo(app);
    let cp_url = format!("http://127.0.0.1:{cp_port}");
    let mut sidecar = proxy(
        dir.path(),
        "sidecar",
        "backend",
        "backend-0",
        &[
            "--control-plane",
            &cp_url,
            "--role",
            "sidecar",
            "--inbound",
            &format!("127.0.0.1:{inbound}"),
            "--outbound",
            &format!("127.0.0.1:{outbound}"),
            "--app",
            &format!("127.0.0.1:{app}"),
            "--admin",
            &format!("127.0.0.1:{}", free_port()),
        ]
        .map(String::from),
    );
    let gw_admin = format!("127.0.0.1:{}", free_port());
    let _gateway = proxy(
        dir.path(),
        "gateway",
        "edge",
        "gw",
        &[
            "--control-plane",
            &cp_url,
            "--role",
            "gateway",
            "--admin",
            &gw_admin,
            "--workers",
            "1",
        ]
        .map(String::from),
    );
    let c = client();
    let url = format!("http://127.0.0.1:{gw}/x");
    wait_serving(&c, &url, Duration::from_secs(20), "the gateway to serve").await;
    assert_ready(&c, &gw_admin).await;

    let load = Load::start(url.clone(), 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    cp.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = cp.child.wait();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cp2 = control_plane(dir.path(), cp_port);
    let cp_addr = format!("127.0.0.1:{cp_port}");
    eventually(
        Duration::from_secs(30),
        "both proxies to reconnect and ACK",
        || {
            let cp_addr = cp_addr.clone();
            async move {
                let s = cp_status(&cp_addr).await?;
                let synced = |id: &str| {
                    s.proxies.iter().any(|p| {
                        p.node_id == id && p.sent_version > 0 && p.acked_version == p.sent_version
                    })
                };
                (synced("gw") && synced("backend-0")).then_some(())
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ok = load
        .finish_without_failures("across a control-plane restart")
        .await;
    assert!(ok > 100, "load ran ({ok})");

    // Versions keep growing across the restart (the proxy announces what it applied).
    let gw_status = cp_status(&cp_addr)
        .await
        .unwrap()
        .proxies
        .into_iter()
        .find(|p| p.node_id == "gw")
        .unwrap();
    assert!(gw_status.acked_version >= 2, "{gw_status:?}");

    // An instance that stops leaves the registry and every proxy's endpoints.
    sidecar.stop(Duration::from_secs(10));
    eventually(
        Duration::from_secs(10),
        "the endpoint to disappear from the gateway",
        || {
            let (c, admin) = (c.clone(), gw_admin.clone());
            async move {
                let dump = get(&c, &format!("http://{admin}/config_dump"), &[])
                    .await
                    .json();
                let eps = dump["snapshot"]["clusters"][0]["endpoints"]
                    .as_array()?
                    .len();
                (eps == 0).then_some(())
            }
        },
    )
    .await;
    let s = cp_status(&cp_addr).await.unwrap();
    assert!(!s.proxies.iter().any(|p| p.node_id == "backend-0"));
    let r = get(&c, &url, &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());

    // SIGTERM stops the control plane promptly even with proxies still streaming from it.
    let mut cp2 = cp2;
    cp2.signal(nix::sys::signal::Signal::SIGTERM);
    let exited = eventually(
        Duration::from_secs(5),
        "the control plane to exit on SIGTERM",
        || {
            let status = cp2.child.try_wait().unwrap();
            async move { status }
        },
    )
    .await;
    assert!(exited.success(), "{exited:?}");
}
