//! Who may register what (issue 11, item 9), over real gRPC discovery streams to a control plane on 127.0.0.1:
//! a node id held by a live proxy cannot be taken over by another one (the same proxy reconnecting may), and a
//! sidecar can only register an endpoint on the host it connects from. Who a proxy is (tokens, certificates) is
//! tests/bootstrap.rs.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;

use std::time::Duration;

use meshwork_control::serve::ControlPlane;
use meshwork_manifest::model::ManifestSet;
use meshwork_proto as pb;
use support::{bootstrap, control_plane, hello, Served};
use tokio::sync::mpsc;
use tonic::Code;

/// Bootstraps a proxy saying `hello` (with a token of its own); Ok holds the sender that keeps its stream open
/// and the first push.
async fn connect(
    s: &Served,
    hello: pb::Hello,
) -> Result<(mpsc::Sender<pb::ProxyMessage>, pb::Push), tonic::Status> {
    let (stream, first) = bootstrap(s, hello).await?;
    let mut pushes = stream.pushes;
    tokio::spawn(async move { while let Ok(Some(_)) = pushes.message().await {} });
    Ok((stream.tx, first))
}

fn endpoints_of(cp: &ControlPlane, node: &str) -> Vec<String> {
    cp.registry
        .list()
        .into_iter()
        .filter(|r| r.node_id == node)
        .map(|r| r.inbound_addr)
        .collect()
}

#[tokio::test]
async fn a_live_node_id_cannot_be_taken_over_by_another_proxy() {
    let s = control_plane().await;
    let cp = &s.cp;
    let _first = connect(&s, hello("origin-1", "127.0.0.1:7001"))
        .await
        .unwrap();
    let err = connect(&s, hello("origin-1", "127.0.0.1:6666"))
        .await
        .expect_err("the second proxy is refused");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert!(
        err.message().contains("cannot be taken over"),
        "{}",
        err.message()
    );
    assert_eq!(endpoints_of(cp, "origin-1"), ["127.0.0.1:7001"]);
}

#[tokio::test]
async fn the_same_proxy_reconnecting_keeps_its_node_id() {
    let s = control_plane().await;
    let cp = &s.cp;
    let first = connect(&s, hello("origin-1", "127.0.0.1:7001"))
        .await
        .unwrap();
    let again = connect(&s, hello("origin-1", "127.0.0.1:7001")).await;
    assert!(again.is_ok(), "{:?}", again.err());
    drop(first);
    assert_eq!(endpoints_of(cp, "origin-1"), ["127.0.0.1:7001"]);
}

#[tokio::test]
async fn an_endpoint_on_another_host_is_refused() {
    let s = control_plane().await;
    let cp = &s.cp;
    let err = connect(&s, hello("origin-1", "10.1.2.3:8080"))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("hello.inbound_addr"),
        "{}",
        err.message()
    );
    assert!(endpoints_of(cp, "origin-1").is_empty());
}

#[tokio::test]
async fn an_unspecified_endpoint_ip_becomes_the_peers() {
    let s = control_plane().await;
    let cp = &s.cp;
    let _p = connect(&s, hello("origin-1", "0.0.0.0:7001"))
        .await
        .unwrap();
    assert_eq!(endpoints_of(cp, "origin-1"), ["127.0.0.1:7001"]);
}

/// A manifest directory where a WasmPlugin (module `bytes`) filters the inbound side of service `origin`.
fn plugin_set(dir: &std::path::Path, bytes: &[u8], route_prefix: &str) -> ManifestSet {
    std::fs::write(dir.join("f.wasm"), bytes).unwrap();
    std::fs::write(
        dir.join("m.yaml"),
        format!(
            "apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {{name: origin}}
spec: {{service: origin, endpoints: ['127.0.0.1:7001']}}
---
apiVersion: meshwork.dev/v1alpha1
kind: WasmPlugin
metadata: {{name: f}}
spec:
  url: f.wasm
  targetRefs: [{{kind: Service, name: origin}}]
  pluginConfig: {{prefix: {route_prefix}}}
"
        ),
    )
    .unwrap();
    meshwork_manifest::source::files::load_dir(dir).unwrap().set
}

async fn next_push(pushes: &mut tonic::Streaming<pb::Push>) -> pb::Push {
    support::next_push(pushes).await.unwrap()
}

/// Module bytes count as delivered only once a push that carried them is ACKed: after a NACK they go again.
#[tokio::test]
async fn modules_of_a_rejected_push_are_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let module = b"\0asm\x01\0\0\0";
    let s = control_plane().await;
    let cp = &s.cp;
    cp.apply(plugin_set(dir.path(), module, "/a"));
    let (stream, first) = bootstrap(&s, hello("origin-1", "127.0.0.1:7001"))
        .await
        .unwrap();
    let (tx, mut pushes) = (stream.tx, stream.pushes);
    let say = |m| pb::ProxyMessage { msg: Some(m) };
    assert_eq!(first.modules.len(), 1, "the first push carries the module");
    tx.send(say(pb::proxy_message::Msg::Nack(pb::Nack {
        version: first.version,
        nonce: first.nonce.clone(),
        reason: "cannot take it".into(),
    })))
    .await
    .unwrap();
    cp.apply(plugin_set(dir.path(), module, "/b"));
    let second = next_push(&mut pushes).await;
    assert_eq!(
        second.modules.len(),
        1,
        "sent again: the rejected push proved nothing"
    );
    tx.send(say(pb::proxy_message::Msg::Ack(pb::Ack {
        version: second.version,
        nonce: second.nonce.clone(),
    })))
    .await
    .unwrap();
    // Bounded wait for the control plane to record the ACK.
    for _ in 0..200 {
        if cp
            .registry
            .list()
            .iter()
            .any(|r| r.acked_version == second.version)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cp.apply(plugin_set(dir.path(), module, "/c"));
    let third = next_push(&mut pushes).await;
    assert!(third.modules.is_empty(), "delivered once ACKed");
}
