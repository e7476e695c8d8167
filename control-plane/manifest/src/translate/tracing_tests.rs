//! The Mesh's `spec.tracing` in every proxy's snapshot: no block sends none (the proxy's environment decides),
//! `enabled: false` sends tracing off and nothing else, and fields left out are sent empty.

use std::path::PathBuf;

use meshwork_proto as pb;

use super::{snapshot_for, ProxyKey, ProxyRole};
use crate::source::files::load_texts;

const APPS: &str = "apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {name: web}
spec: {service: web, command: app}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec: {listeners: [{name: http, port: 8080}]}
";

/// The tracing a sidecar of `web` and the gateway `edge` get with `mesh_spec` as the Mesh's spec; both must agree.
fn tracing_sent(mesh_spec: &str) -> Option<pb::Tracing> {
    let mesh = format!(
        "apiVersion: meshwork.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: mesh}}\nspec: {mesh_spec}\n"
    );
    let files = [
        (PathBuf::from("apps.yaml"), APPS.to_string()),
        (PathBuf::from("mesh.yaml"), mesh),
    ];
    let set = load_texts(&files).unwrap();
    let for_proxy = |role, name: &str| {
        let key = ProxyKey {
            role,
            name: name.into(),
            namespace: "default".into(),
        };
        snapshot_for(&set, &[], &key).tracing
    };
    let sidecar = for_proxy(ProxyRole::Sidecar, "web");
    assert_eq!(sidecar, for_proxy(ProxyRole::Gateway, "edge"));
    sidecar
}

#[test]
fn without_a_tracing_block_no_tracing_is_sent() {
    assert_eq!(tracing_sent("{}"), None);
    assert_eq!(tracing_sent("{accessLog: {}}"), None);
}

#[test]
fn an_empty_tracing_block_sends_tracing_on_with_every_field_empty() {
    let want = pb::Tracing {
        enabled: true,
        ..pb::Tracing::default()
    };
    assert_eq!(tracing_sent("{tracing: {}}"), Some(want));
}

#[test]
fn tracing_off_sends_enabled_false_and_nothing_else() {
    let sent = tracing_sent(
        "{tracing: {enabled: false, endpoint: 'http://collector:4317', protocol: grpc, sampling: 0.5, \
         propagators: [b3], resourceAttributes: {env: prod}}}",
    );
    assert_eq!(sent, Some(pb::Tracing::default()));
}

#[test]
fn every_tracing_field_is_sent_with_resource_attributes_sorted_by_name() {
    let sent = tracing_sent(
        "{tracing: {endpoint: 'http://collector:4317', protocol: grpc, sampling: 0.1, \
         propagators: [b3multi, tracecontext], resourceAttributes: {z.last: 1, a.first: true, m.mid: x}}}",
    );
    let attribute = |key: &str, value: &str| pb::ResourceAttribute {
        key: key.into(),
        value: value.into(),
    };
    let want = pb::Tracing {
        enabled: true,
        endpoint: "http://collector:4317".into(),
        protocol: pb::TracingProtocol::Grpc as i32,
        sampling_ppm: Some(100_000),
        propagators: vec!["b3multi".into(), "tracecontext".into()],
        resource_attributes: vec![
            attribute("a.first", "true"),
            attribute("m.mid", "x"),
            attribute("z.last", "1"),
        ],
    };
    assert_eq!(sent, Some(want));
}

#[test]
fn each_protocol_is_sent_as_its_enum_and_left_out_as_unset() {
    for (block, want) in [
        ("{protocol: grpc}", pb::TracingProtocol::Grpc),
        (
            "{protocol: http/protobuf}",
            pb::TracingProtocol::HttpProtobuf,
        ),
        ("{}", pb::TracingProtocol::Unset),
    ] {
        let sent = tracing_sent(&format!("{{tracing: {block}}}")).unwrap();
        assert_eq!(sent.protocol, want as i32, "{block}");
    }
}

#[test]
fn sampling_zero_is_sent_not_left_to_the_environment() {
    let sent = tracing_sent("{tracing: {sampling: 0}}").unwrap();
    assert_eq!(sent.sampling_ppm, Some(0));
    assert_eq!(tracing_sent("{tracing: {}}").unwrap().sampling_ppm, None);
}
