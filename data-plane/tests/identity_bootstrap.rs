//! Who may join a running mesh (issue 12), with real processes: every proxy `meshwork up` starts holds a
//! certificate for its own identity; a proxy started by hand needs a bootstrap token for the service it claims.
//! Issue 11 reproduced the hijack this closes: `meshwork-proxy --node-id attacker --service backend` joined with no
//! credentials and received real user requests.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::*;

/// A hand-started sidecar claiming service `backend` as node `node` (its app is the demo echo on `app`).
fn hand_started(node: &str, app: u16, log: &std::path::Path, cp: &str) -> std::process::Command {
    let mut cmd = proxy_command(Some(log));
    cmd.args(["--control-plane", &format!("http://{cp}")])
        .args([
            "--role",
            "sidecar",
            "--service",
            "backend",
            "--node-id",
            node,
        ])
        .args(["--inbound", &format!("127.0.0.1:{}", free_port())])
        .args(["--outbound", &format!("127.0.0.1:{}", free_port())])
        .args(["--app", &format!("127.0.0.1:{app}")])
        .args(["--admin", &format!("127.0.0.1:{}", free_port())])
        .env_remove("MESHWORK_BOOTSTRAP_TOKEN")
        .env("MESHWORK_LOG", "info");
    cmd
}

async fn registered(cp: &str, node: &str) -> Option<meshwork_proto::ProxyStatus> {
    cp_status(cp)
        .await?
        .proxies
        .into_iter()
        .find(|p| p.node_id == node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_proxies_with_a_token_for_their_service_join() {
    let mesh = Mesh::start(gateway_to_backend).await;
    let c = client();
    let cp = mesh.control_plane.clone();
    let app = free_port();
    let _app = demo_echo(app);

    // What `meshwork up` started holds its identity: the gateway and the backend's sidecar.
    let dump = get(
        &c,
        &format!("http://{}/config_dump", mesh.admin("gateway-edge")),
        &[],
    )
    .await;
    assert_eq!(
        dump.json()["identity"]["spiffe_id"],
        "spiffe://cluster.local/ns/default/gateway/edge"
    );
    let backend = registered(&cp, "backend-0").await.unwrap();
    assert_eq!(
        backend.spiffe_id,
        "spiffe://cluster.local/ns/default/sa/backend"
    );
    assert!(backend.cert_not_after_unix_ms > 0);

    // No token: the proxy refuses to start, saying how to get one.
    let out = hand_started("attacker", app, &mesh.dir.join("a.log"), &cp)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let log = std::fs::read_to_string(mesh.dir.join("a.log")).unwrap()
        + &String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("no bootstrap token"), "{log}");

    // A token for another service: the control plane refuses it; it is never registered.
    let token = bootstrap_token(&mesh.dir, "frontend", "attacker");
    let log = mesh.dir.join("b.log");
    let mut cmd = hand_started("attacker", app, &log, &cp);
    let _attacker = Proc::spawn("attacker", cmd.env("MESHWORK_BOOTSTRAP_TOKEN", token));
    let refused = eventually(
        Duration::from_secs(20),
        "the refusal in the attacker's log",
        || {
            let log = log.clone();
            async move {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                text.contains("for service default/frontend, not default/backend")
                    .then_some(text)
            }
        },
    )
    .await;
    assert!(refused.contains("Unauthenticated"), "{refused}");
    assert!(registered(&cp, "attacker").await.is_none());

    // Its own token: it joins as backend, with the identity of backend.
    let token = bootstrap_token(&mesh.dir, "backend", "backend-by-hand");
    let mut cmd = hand_started("backend-by-hand", app, &mesh.dir.join("c.log"), &cp);
    let _joined = Proc::spawn("joined", cmd.env("MESHWORK_BOOTSTRAP_TOKEN", token));
    let joined = eventually(
        Duration::from_secs(20),
        "the hand-started proxy to register",
        || {
            let cp = cp.clone();
            async move { registered(&cp, "backend-by-hand").await }
        },
    )
    .await;
    assert_eq!(joined.spiffe_id, backend.spiffe_id);
}
