//! Who a proxy is (issue 12): over real TLS discovery streams to a control plane on 127.0.0.1, a proxy joins only
//! with a valid single-use bootstrap token for its own service, or with a certificate the control plane issued
//! for that identity; it gets an X.509-SVID for the key it made (the CA takes only the CSR's public key), renews
//! it on the stream, and a refused proxy is never registered nor sent anything. The Status RPC is the operator's.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;

use meshwork_identity::spiffe::TrustDomain;
use meshwork_identity::svid::check_svid;
use meshwork_proto as pb;
use support::{bootstrap, control_plane, hello, id, next_push, open, Served};
use tonic::Code;

fn registered(s: &Served, node: &str) -> bool {
    s.cp.registry.list().iter().any(|r| r.node_id == node)
}

/// Opens a stream with `hello` as is (no token added) and expects it refused with `code`.
async fn refused(s: &Served, hello: pb::Hello, code: Code) -> String {
    let node = hello.node_id.clone();
    let result = match open(s.channel(None).await, hello).await {
        Ok(mut stream) => next_push(&mut stream.pushes).await.map(|_| ()),
        Err(e) => Err(e),
    };
    let err = result.expect_err("the proxy was let in");
    assert_eq!(err.code(), code, "{err:?}");
    assert!(!registered(s, &node), "a refused proxy is in the registry");
    err.message().to_string()
}

#[tokio::test]
async fn a_proxy_with_its_token_gets_a_certificate_for_its_service() {
    let s = control_plane().await;
    let (_stream, first) = bootstrap(&s, hello("origin-1", "127.0.0.1:7001"))
        .await
        .unwrap();
    let identity = first
        .identity
        .expect("the first push carries the certificate");
    assert_eq!(
        identity.spiffe_id,
        "spiffe://cluster.local/ns/default/sa/origin"
    );
    let leaf = identity.chain.first().unwrap();
    let proved = check_svid(leaf, &TrustDomain::default()).unwrap();
    assert_eq!(proved, id("origin"));
    assert_eq!(identity.trust_bundle.len(), 1);
    let reg =
        s.cp.registry
            .list()
            .into_iter()
            .find(|r| r.node_id == "origin-1")
            .unwrap();
    assert_eq!(reg.spiffe_id, identity.spiffe_id);
    assert_eq!(reg.cert_not_after_unix_ms, identity.not_after_unix_ms);
}

#[tokio::test]
async fn a_proxy_without_a_token_gets_nothing() {
    let s = control_plane().await;
    let msg = refused(
        &s,
        hello("attacker", "127.0.0.1:7001"),
        Code::Unauthenticated,
    )
    .await;
    assert!(msg.contains("no bootstrap token"), "{msg}");
}

#[tokio::test]
async fn a_used_token_is_refused() {
    let s = control_plane().await;
    let token = s.token("origin", None);
    let mut first = hello("origin-1", "127.0.0.1:7001");
    first.bootstrap_token = token.clone();
    let mut stream = open(s.channel(None).await, first).await.unwrap();
    next_push(&mut stream.pushes).await.unwrap();
    let mut again = hello("origin-2", "127.0.0.1:7002");
    again.bootstrap_token = token;
    let msg = refused(&s, again, Code::Unauthenticated).await;
    assert!(msg.contains("already been used"), "{msg}");
}

#[tokio::test]
async fn a_token_for_another_service_is_refused() {
    // The hijack of issue 11: a hand-started proxy claiming to serve `origin` with a token for `frontend`.
    let s = control_plane().await;
    let mut h = hello("attacker", "127.0.0.1:7001");
    h.bootstrap_token = s.token("frontend", None);
    let msg = refused(&s, h, Code::Unauthenticated).await;
    assert!(
        msg.contains("for service default/frontend, not default/origin"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_token_bound_to_another_node_is_refused() {
    let s = control_plane().await;
    let mut h = hello("attacker", "127.0.0.1:7001");
    h.bootstrap_token = s.token("origin", Some("origin-0"));
    let msg = refused(&s, h, Code::Unauthenticated).await;
    assert!(msg.contains("for node"), "{msg}");
}

#[tokio::test]
async fn a_token_this_control_plane_did_not_sign_is_refused() {
    let s = control_plane().await;
    let other = control_plane().await;
    let mut h = hello("origin-1", "127.0.0.1:7001");
    h.bootstrap_token = other.token("origin", None);
    // The other mesh's token pins the other root: present this one's channel anyway (an attacker could).
    let msg = refused(&s, h, Code::Unauthenticated).await;
    assert!(msg.contains("not made by this control plane"), "{msg}");
}

#[tokio::test]
async fn a_certificate_proves_the_proxy_on_later_connections() {
    let s = control_plane().await;
    let cert = s.certificate(&id("origin"));
    let stream = open(
        s.channel(Some(cert)).await,
        hello("origin-1", "127.0.0.1:7001"),
    )
    .await;
    let mut stream = stream.unwrap();
    let first = next_push(&mut stream.pushes).await.unwrap();
    assert!(first.snapshot.is_some());
    assert!(registered(&s, "origin-1"));
}

#[tokio::test]
async fn a_certificate_for_another_service_cannot_claim_this_one() {
    let s = control_plane().await;
    let cert = s.certificate(&id("frontend"));
    let err = open(
        s.channel(Some(cert)).await,
        hello("origin-1", "127.0.0.1:7001"),
    )
    .await;
    let err = match err {
        Ok(mut stream) => next_push(&mut stream.pushes).await.expect_err("let in"),
        Err(e) => e,
    };
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message()
            .contains("proves spiffe://cluster.local/ns/default/sa/frontend"),
        "{}",
        err.message()
    );
    assert!(!registered(&s, "origin-1"));
}

#[tokio::test]
async fn a_proxy_renews_its_certificate_on_the_stream() {
    let s = control_plane().await;
    let (mut stream, first) = bootstrap(&s, hello("origin-1", "127.0.0.1:7001"))
        .await
        .unwrap();
    let old = first.identity.unwrap();
    let key = meshwork_identity::csr::WorkloadKey::generate().unwrap();
    let csr = key.csr_der(&id("origin")).unwrap().as_ref().to_vec();
    stream
        .tx
        .send(pb::ProxyMessage {
            msg: Some(pb::proxy_message::Msg::Renew(pb::Renew { csr })),
        })
        .await
        .unwrap();
    let renewed = next_push(&mut stream.pushes).await.unwrap();
    assert!(
        renewed.snapshot.is_none(),
        "a renewal carries only the certificate"
    );
    let new = renewed.identity.expect("a new certificate");
    assert_eq!(new.spiffe_id, old.spiffe_id);
    assert_ne!(new.chain[0], old.chain[0]);
    // It is for the new key.
    let chain = new.chain.iter().map(|c| c.clone().into()).collect();
    key.certified_key(chain)
        .expect("the renewed certificate is for the key of the CSR");
}

#[tokio::test]
async fn a_plaintext_client_cannot_talk_to_the_control_plane() {
    let s = control_plane().await;
    let result = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut client = pb::discovery_client::DiscoveryClient::connect(s.url.clone()).await?;
        client.status(pb::StatusRequest {}).await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })
    .await
    .expect("bounded");
    assert!(result.is_err(), "plaintext gRPC was answered");
}

#[tokio::test]
async fn status_answers_only_the_operator() {
    let s = control_plane().await;
    let mut client = pb::discovery_client::DiscoveryClient::new(s.channel(None).await);
    let err = client
        .status(pb::StatusRequest {})
        .await
        .expect_err("answered anyone");
    assert_eq!(err.code(), Code::PermissionDenied);
    let proxy = s.certificate(&id("origin"));
    let mut client = pb::discovery_client::DiscoveryClient::new(s.channel(Some(proxy)).await);
    let err = client
        .status(pb::StatusRequest {})
        .await
        .expect_err("answered a proxy");
    assert_eq!(err.code(), Code::PermissionDenied);
    let operator = meshwork_control::serve::operator_id(&s.ids).unwrap();
    let mut client =
        pb::discovery_client::DiscoveryClient::new(s.channel(Some(s.certificate(&operator))).await);
    client
        .status(pb::StatusRequest {})
        .await
        .expect("the operator is answered");
}

#[tokio::test]
async fn a_change_of_trust_domain_is_refused_while_running() {
    let s = control_plane().await;
    let dir = tempfile::tempdir().unwrap();
    let mesh = |td: &str| {
        std::fs::write(
            dir.path().join("mesh.yaml"),
            format!("apiVersion: meshwork.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: mesh}}\nspec: {{trustDomain: {td}}}\n"),
        )
        .unwrap();
        meshwork_manifest::source::files::load_dir(dir.path())
            .unwrap()
            .set
    };
    assert!(s.cp.admissible(&mesh("cluster.local")).is_ok());
    let err = s.cp.admissible(&mesh("prod.example.com")).unwrap_err();
    assert!(err.contains("needs a new CA"), "{err}");
}

/// The trust bundle a push carries, as a bundle.
fn bundle_of(identity: &pb::Identity) -> meshwork_identity::TrustBundle {
    let roots = identity
        .trust_bundle
        .iter()
        .map(|c| c.clone().into())
        .collect();
    meshwork_identity::TrustBundle::from_der(roots).unwrap()
}

#[tokio::test]
async fn a_ca_rotation_in_two_phases_never_locks_a_proxy_out() {
    use meshwork_identity::ca::Authority;
    let td = TrustDomain::default();
    // Before: CA A. A proxy holds a certificate of A and trusts A only.
    let before = control_plane().await;
    let cert_a = before.certificate(&id("origin"));
    let bundle_a = before.ids.authority().trust_bundle().clone();
    let new_state = tempfile::tempdir().unwrap();
    let ca_b = Authority::load_or_create(new_state.path(), &td).unwrap();
    let root_b = ca_b.trust_bundle().clone();

    // Phase 1: still signing with A, also trusting B. The proxy reconnects with its certificate and gets the bundle
    // [A, B] on its first push (no CSR needed).
    let phase1_state = tempfile::tempdir().unwrap();
    let ca_a = Authority::load_or_create(before.state_dir(), &td)
        .unwrap()
        .with_previous_roots(&root_b);
    let phase1 = support::serve_with(ca_a, phase1_state).await;
    let channel = phase1
        .channel_trusting(bundle_a.clone(), cert_a.clone())
        .await
        .unwrap();
    let mut stream = open(channel, hello("origin-1", "127.0.0.1:7001"))
        .await
        .unwrap();
    let first = next_push(&mut stream.pushes).await.unwrap();
    let bundle_ab = bundle_of(first.identity.as_ref().expect("the trust bundle"));
    assert_eq!(bundle_ab.roots().len(), 2);
    drop(stream);

    // Phase 2: signing with B, still trusting A. The proxy (bundle [A, B], certificate of A) reconnects, and its
    // next CSR gets a certificate of B.
    let phase2 = support::serve_with(ca_b.with_previous_roots(&bundle_a), new_state).await;
    let channel = phase2
        .channel_trusting(bundle_ab, cert_a.clone())
        .await
        .unwrap();
    let mut stream = open(channel, hello("origin-1", "127.0.0.1:7001"))
        .await
        .unwrap();
    let renewed = next_push(&mut stream.pushes)
        .await
        .unwrap()
        .identity
        .unwrap();
    let leaf: rustls::pki_types::CertificateDer = renewed.chain[0].clone().into();
    let parsed = rustls::server::ParsedCertificate::try_from(&leaf).unwrap();
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &root_b.root_store(),
        &[],
        rustls::pki_types::UnixTime::now(),
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .all,
    )
    .expect("the new certificate chains to B");

    // Skipping phase 1 is what locks proxies out: one that trusts only A refuses a control plane signed by B.
    let skipped = phase2.channel_trusting(bundle_a, cert_a).await;
    let refused = match skipped {
        Err(_) => true,
        Ok(channel) => open(channel, hello("origin-2", "127.0.0.1:7002"))
            .await
            .is_err(),
    };
    assert!(
        refused,
        "a proxy trusting only the old root accepted the new CA"
    );
}

#[tokio::test]
async fn nothing_can_claim_the_control_planes_own_namespace() {
    let s = control_plane().await;
    let ttl = std::time::Duration::from_secs(60);
    assert!(s
        .ids
        .mint(
            meshwork_manifest::translate::ProxyRole::Sidecar,
            "meshwork-system",
            "control-plane",
            None,
            ttl
        )
        .is_err());
    // A proxy claiming to be the control plane (with a token for some other service) is refused outright.
    let mut h = hello("cp", "127.0.0.1:7001");
    h.namespace = "meshwork-system".into();
    h.service = "control-plane".into();
    h.bootstrap_token = s.token("origin", None);
    let msg = refused(&s, h, Code::InvalidArgument).await;
    assert!(msg.contains("reserved"), "{msg}");
    // And no manifest object may live there.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("w.yaml"),
        "apiVersion: meshwork.dev/v1alpha1\nkind: Workload\nmetadata: {name: control-plane, namespace: meshwork-system}\nspec: {service: control-plane, command: app}\n",
    )
    .unwrap();
    let err = meshwork_manifest::source::files::load_dir(dir.path()).unwrap_err();
    assert!(err.to_string().contains("reserved"), "{err}");
}

#[tokio::test]
async fn silent_connections_do_not_keep_proxies_out() {
    let s = control_plane().await;
    let addr = s.url.trim_start_matches("http://").to_string();
    // More silent clients than there are handshake slots.
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    // A proxy retries as the real one does (its backoff): the silent ones lose their slots after 3 s, and the
    // accept loop never stopped accepting meanwhile.
    let joined = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let addr_ok = tokio::net::TcpStream::connect(&addr).await.is_ok();
            if addr_ok {
                let config = support::pinned_config(&s);
                let url = s.url.clone();
                let channel = meshwork_identity::channel::connect(
                    &url,
                    std::sync::Arc::new(config),
                    std::time::Duration::from_secs(2),
                );
                if let Ok(channel) = channel.await {
                    let mut h = hello("origin-1", "127.0.0.1:7001");
                    h.bootstrap_token = s.token("origin", None);
                    if let Ok(mut stream) = open(channel, h).await {
                        if next_push(&mut stream.pushes).await.is_ok() {
                            return stream;
                        }
                    }
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    })
    .await;
    assert!(joined.is_ok(), "no proxy got through within 10 s");
    drop(silent);
}

#[tokio::test]
async fn a_sidecars_token_cannot_make_a_gateway() {
    let s = control_plane().await;
    let mut h = hello("edge-1", "");
    h.role = pb::Role::Gateway as i32;
    h.service = "origin".into();
    h.bootstrap_token = s.token("origin", None);
    let msg = refused(&s, h, Code::Unauthenticated).await;
    assert!(msg.contains("not default/gateway:origin"), "{msg}");
}

#[tokio::test]
async fn renewals_in_a_loop_are_cut_off() {
    let s = control_plane().await;
    let (mut stream, _) = bootstrap(&s, hello("origin-1", "127.0.0.1:7001"))
        .await
        .unwrap();
    let renew = || {
        let key = meshwork_identity::csr::WorkloadKey::generate().unwrap();
        let csr = key.csr_der(&id("origin")).unwrap().as_ref().to_vec();
        pb::ProxyMessage {
            msg: Some(pb::proxy_message::Msg::Renew(pb::Renew { csr })),
        }
    };
    stream.tx.send(renew()).await.unwrap();
    assert!(next_push(&mut stream.pushes)
        .await
        .unwrap()
        .identity
        .is_some());
    stream.tx.send(renew()).await.unwrap();
    let err = next_push(&mut stream.pushes)
        .await
        .expect_err("a second renewal at once");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
}

#[tokio::test]
async fn a_failed_bootstrap_does_not_spend_the_token() {
    let s = control_plane().await;
    let token = s.token("origin", Some("origin-1"));
    // A CSR the CA refuses: refused, and the token is still good.
    let mut bad = hello("origin-1", "127.0.0.1:7001");
    bad.bootstrap_token = token.clone();
    bad.csr = b"not a CSR".to_vec();
    let mut client = pb::discovery_client::DiscoveryClient::new(s.channel(None).await);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(pb::ProxyMessage {
        msg: Some(pb::proxy_message::Msg::Hello(bad)),
    })
    .await
    .unwrap();
    let err = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect_err("a bad CSR is refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let mut good = hello("origin-1", "127.0.0.1:7001");
    good.bootstrap_token = token;
    let mut stream = open(s.channel(None).await, good).await.unwrap();
    assert!(next_push(&mut stream.pushes)
        .await
        .unwrap()
        .identity
        .is_some());
}
