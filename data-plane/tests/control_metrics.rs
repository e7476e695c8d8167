//! The control plane's own telemetry (issue 13): its Prometheus families (connected proxies, instances, pushes,
//! ACK/NACK, change-to-converged time) on the `meshwork up` dashboard's `/metrics` and on `meshwork control
//! --metrics`, and the gRPC health service (grpc.health.v1) beside the discovery service, over the control
//! plane's own mTLS port.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// The value of the sample line starting with `key ` in a metrics text (0 if absent).
fn value(text: &str, key: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn health(addr: &str, service: &str) -> Option<i32> {
    use meshwork_identity::operator::{client_config, Pointer};
    let (dir, td) = Pointer::read(addr.parse().ok()?)?;
    let config = client_config(&dir, &td, Duration::from_secs(300)).ok()?;
    let channel = meshwork_identity::channel::connect(
        &format!("http://{addr}"),
        std::sync::Arc::new(config),
        Duration::from_secs(5),
    )
    .await
    .ok()?;
    let mut c = tonic_health::pb::health_client::HealthClient::new(channel);
    let req = tonic_health::pb::HealthCheckRequest {
        service: service.to_string(),
    };
    c.check(req).await.ok().map(|r| r.into_inner().status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_reports_proxies_pushes_acks_and_convergence() {
    let mut mesh = Mesh::start(gateway_to_backend).await;
    let c = client();
    let url = format!("{}/metrics", mesh.dashboard());
    let text = get(&c, &url, &[]).await.text();
    assert_eq!(
        value(&text, "meshwork_control_connected_proxies"),
        2.0,
        "{text}"
    );
    assert_eq!(
        value(&text, "meshwork_control_registered_instances"),
        1.0,
        "{text}"
    );
    assert!(
        value(&text, "meshwork_control_pushes_total{role=\"sidecar\"}") >= 1.0,
        "{text}"
    );
    assert!(
        value(&text, "meshwork_control_pushes_total{role=\"gateway\"}") >= 1.0,
        "{text}"
    );
    assert!(
        value(&text, "meshwork_control_replies_total{result=\"ack\"}") >= 2.0,
        "{text}"
    );
    assert_eq!(
        value(&text, "meshwork_control_replies_total{result=\"nack\"}"),
        0.0,
        "{text}"
    );
    assert!(
        text.contains("# TYPE meshwork_control_pushes_total counter"),
        "{text}"
    );
    // A change: once both proxies ACKed it, its time to converge is observed once.
    let changed = format!(
        "{}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: more}}\nspec:\n  parentRefs: [{{name: edge}}]\n  hostnames: [more]\n  rules: [{{backendRefs: [{{name: backend}}]}}]\n",
        gateway_to_backend(mesh.gw)
    );
    write(&mesh.dir, "mesh.yaml", &changed);
    mesh.wait_line("applied: generation 2", Duration::from_secs(30))
        .await;
    let text = eventually(
        Duration::from_secs(10),
        "the change's convergence observed",
        || async {
            let t = get(&c, &url, &[]).await.text();
            (value(&t, "meshwork_control_change_converged_seconds_count") == 1.0).then_some(t)
        },
    )
    .await;
    assert!(
        value(&text, "meshwork_control_change_converged_seconds_sum") > 0.0,
        "{text}"
    );
    // grpc.health.v1 on the control plane's port: SERVING (1) overall and for the discovery service.
    assert_eq!(health(&mesh.control_plane, "").await, Some(1));
    assert_eq!(
        health(&mesh.control_plane, "meshwork.v1.Discovery").await,
        Some(1)
    );
    assert_eq!(
        health(&mesh.control_plane, "no.such.Service").await,
        None,
        "an unknown service is NOT_FOUND"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshwork_control_serves_its_metrics_where_asked() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    write(&manifests, "mesh.yaml", &gateway_to_backend(free_port()));
    let (port, metrics_port) = (free_port(), free_port());
    let mut cmd = Command::new(bin("meshwork"));
    cmd.args(["control", "--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--metrics",
            &format!("127.0.0.1:{metrics_port}"),
            "--manifests",
        ])
        .arg(&manifests)
        .stdout(Stdio::null())
        .stderr(log_file(&dir.path().join("cp.log")));
    let _cp = Proc::spawn("meshwork control", &mut cmd);
    let c = client();
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let r = wait_serving(
        &c,
        &url,
        Duration::from_secs(20),
        "the control plane's metrics",
    )
    .await;
    assert!(
        r.text().contains("meshwork_control_connected_proxies 0"),
        "{}",
        r.text()
    );
    assert_eq!(
        get(&c, &format!("http://127.0.0.1:{metrics_port}/other"), &[])
            .await
            .status,
        404
    );
}
