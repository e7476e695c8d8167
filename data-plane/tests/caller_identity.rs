//! `x-meshwork-source` at an inbound sidecar (issue 11, item 7): a caller that is not a mesh sidecar cannot
//! claim to be a service (the header is dropped), while a call through a sidecar's outbound listener arrives
//! with its source; the proof that carries it reaches no app. Between the two sidecars the hop is mutual TLS
//! (issue 12): the app also learns the caller as `x-forwarded-client-cert`, which no caller can forge.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;

const MESH: &str = r#"
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {name: backend}
spec: {service: backend, command: meshwork-demo echo}
---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {name: web}
spec: {service: web, command: meshwork-demo echo}
"#;

/// What the backend app saw of a request: its `x-meshwork-source` and `x-meshwork-source-proof` headers.
fn seen(r: &Resp) -> (Option<String>, Option<String>) {
    let headers = &r.json()["headers"];
    let h = |k: &str| headers[k].as_str().map(String::from);
    (h("x-meshwork-source"), h("x-meshwork-source-proof"))
}

/// The `x-forwarded-client-cert` the backend app saw.
fn xfcc(r: &Resp) -> Option<String> {
    r.json()["headers"]["x-forwarded-client-cert"]
        .as_str()
        .map(String::from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_caller_cannot_claim_a_source_but_a_sidecar_states_its_own() {
    let mesh = Mesh::start(|_| MESH.to_string()).await;
    let c = client();
    let inbound = mesh.node("backend-0").get("inbound").to_string();
    let outbound = mesh.node("web-0").get("outbound").to_string();

    // Straight at backend's inbound listener, claiming to be the admin service, with a made-up proof.
    let forged = get(
        &c,
        &format!("http://{inbound}/echo"),
        &[
            ("x-meshwork-source", "admin.default"),
            ("x-meshwork-source-proof", &"ab".repeat(32)),
            (
                "x-forwarded-client-cert",
                "By=spiffe://cluster.local/ns/default/sa/backend;URI=spiffe://cluster.local/ns/default/sa/admin",
            ),
        ],
    )
    .await;
    assert_eq!(forged.status, 200, "{}", forged.text());
    assert_eq!(
        seen(&forged),
        (None, None),
        "a claim without proof is dropped"
    );
    assert_eq!(
        xfcc(&forged),
        None,
        "a forged client certificate header is dropped"
    );

    // As web's app calls backend: through web's sidecar; a source the app sets itself is replaced.
    let stated = eventually(
        std::time::Duration::from_secs(15),
        "backend via web's sidecar",
        || {
            let (c, url) = (c.clone(), format!("http://{outbound}/echo"));
            async move {
                let r = send(
                    &c,
                    "GET",
                    &url,
                    &[("host", "backend"), ("x-meshwork-source", "admin.default")],
                    Default::default(),
                )
                .await
                .ok()?;
                (r.status == 200).then_some(r)
            }
        },
    )
    .await;
    assert_eq!(
        seen(&stated),
        (Some("web.default".into()), None),
        "the sidecar's statement arrives, its proof does not"
    );
    assert_eq!(
        xfcc(&stated).as_deref(),
        Some("By=spiffe://cluster.local/ns/default/sa/backend;URI=spiffe://cluster.local/ns/default/sa/web"),
        "the hop between the sidecars is mTLS, and the app learns the verified caller"
    );
    let m = metrics(&c, &mesh.admin("backend-0")).await;
    let handshakes = m
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                r#"meshwork_tls_handshakes_total{side="inbound",result="ok",reason=""} "#,
            )
        })
        .and_then(|n| n.parse::<u64>().ok());
    assert!(handshakes.is_some_and(|n| n >= 1), "{m}");
}
