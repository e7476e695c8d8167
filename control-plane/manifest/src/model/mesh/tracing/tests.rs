//! The Mesh's `spec.tracing`: every valid form is read, a field left out stays apart from any value (the proxy's
//! environment decides it), and every invalid field is refused with the file, the line, the field and what was
//! expected.

use std::collections::BTreeMap;

use super::super::tests::{errors, load, mesh};
use super::{Propagator, Tracing, TracingProtocol};

/// The Mesh's tracing with `block` (flow style) as `spec.tracing`, or every error.
fn tracing(block: &str) -> Result<Option<Tracing>, Vec<String>> {
    load(&mesh(&format!("{{tracing: {block}}}"))).map(|s| s.meshes[0].tracing.clone())
}

/// The errors for `block` as `spec.tracing` (all on line 4).
fn refused(block: &str) -> Vec<String> {
    errors(&mesh(&format!("{{tracing: {block}}}")))
}

/// Tracing on, every field left to the environment.
fn on() -> Tracing {
    Tracing {
        enabled: true,
        endpoint: None,
        protocol: None,
        sampling_ppm: None,
        propagators: Vec::new(),
        resource_attributes: BTreeMap::new(),
    }
}

#[test]
fn without_a_tracing_block_the_environment_decides() {
    for text in [
        "apiVersion: meshwork.dev/v1alpha1\nkind: Mesh\nmetadata: {name: mesh}\n".to_string(),
        mesh("{}"),
        mesh("{tracing: }"),
    ] {
        let set = load(&text).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(set.meshes[0].tracing, None, "{text}");
    }
}

#[test]
fn an_empty_tracing_block_is_on_with_every_field_left_out() {
    assert_eq!(tracing("{}"), Ok(Some(on())));
    assert_eq!(tracing("{enabled: true}"), Ok(Some(on())));
}

#[test]
fn enabled_false_is_kept_as_tracing_off_not_as_no_block() {
    let off = Tracing {
        enabled: false,
        ..on()
    };
    assert_eq!(tracing("{enabled: false}"), Ok(Some(off)));
    let with_fields = tracing("{enabled: false, protocol: grpc}")
        .unwrap()
        .unwrap();
    assert!(!with_fields.enabled);
    assert_eq!(with_fields.protocol, Some(TracingProtocol::Grpc));
}

#[test]
fn every_tracing_field_is_read() {
    let text = mesh("")
        + "  tracing:
    enabled: true
    endpoint: http://collector:4318/v1/traces
    protocol: http/protobuf
    sampling: 0.25
    propagators: [b3, tracecontext]
    resourceAttributes:
      service.namespace: shop
      deployment.environment: prod
";
    let set = load(&text).unwrap_or_else(|e| panic!("{e:?}"));
    let want = Tracing {
        enabled: true,
        endpoint: Some("http://collector:4318/v1/traces".to_string()),
        protocol: Some(TracingProtocol::HttpProtobuf),
        sampling_ppm: Some(250_000),
        propagators: vec![Propagator::B3, Propagator::TraceContext],
        resource_attributes: BTreeMap::from([
            ("deployment.environment".to_string(), "prod".to_string()),
            ("service.namespace".to_string(), "shop".to_string()),
        ]),
    };
    assert_eq!(set.meshes[0].tracing, Some(want));
}

#[test]
fn enabled_that_is_not_true_or_false_is_refused() {
    assert_eq!(
        refused("{enabled: yes}"),
        ["m.yaml:4: spec.tracing.enabled: expected true or false, got \"yes\""]
    );
}

#[test]
fn http_endpoints_with_a_host_are_read() {
    for url in [
        "http://127.0.0.1:4317",
        "http://collector:4318/v1/traces",
        "http://otel.example.com/",
        "http://[::1]:4317",
        "http://otel-collector.observability.svc.cluster.local:4318/v1/traces",
    ] {
        let t = tracing(&format!("{{endpoint: '{url}'}}"));
        assert_eq!(
            t.map(|t| t.and_then(|t| t.endpoint)),
            Ok(Some(url.to_string()))
        );
    }
    // Unquoted in a flow mapping too.
    let t = tracing("{endpoint: http://127.0.0.1:4317}")
        .unwrap()
        .unwrap();
    assert_eq!(t.endpoint.as_deref(), Some("http://127.0.0.1:4317"));
}

#[test]
fn an_https_endpoint_is_refused_until_the_exporter_speaks_tls() {
    assert_eq!(
        refused("{endpoint: 'https://otel.example.com'}"),
        ["m.yaml:4: spec.tracing.endpoint: an https:// collector is not supported yet (the proxies' exporter has no TLS): use http://, got \"https://otel.example.com\""]
    );
}

#[test]
fn an_endpoint_that_is_not_an_http_url_with_a_host_is_refused() {
    for url in [
        "collector:4317",
        "127.0.0.1:4317",
        "grpc://collector:4317",
        "HTTP://collector:4317",
        "http://",
        "http:///v1/traces",
        "http://:4317",
        "http://collector:",
        "http://collector:0",
        "http://collector:65536",
        "http://collector:http",
        "http://user:secret@collector:4317",
        "http://[::1:4317",
        "http://[::1]4317",
        "http://collector:4318/v1/ traces",
        "",
    ] {
        assert_eq!(
            refused(&format!("{{endpoint: '{url}'}}")),
            [format!(
                "m.yaml:4: spec.tracing.endpoint: expected an absolute http:// URL with a host, such as \
                 http://127.0.0.1:4317 (grpc) or http://collector:4318/v1/traces (http/protobuf), got {url:?}"
            )],
            "{url}"
        );
    }
}

#[test]
fn an_endpoint_that_is_not_a_string_is_refused() {
    assert_eq!(
        refused("{endpoint: {host: collector}}"),
        ["m.yaml:4: spec.tracing.endpoint: expected a string, got a mapping"]
    );
}

#[test]
fn both_otlp_protocols_are_read() {
    for (name, protocol) in [
        ("grpc", TracingProtocol::Grpc),
        ("http/protobuf", TracingProtocol::HttpProtobuf),
    ] {
        let t = tracing(&format!("{{protocol: {name}}}")).unwrap().unwrap();
        assert_eq!(t.protocol, Some(protocol));
        assert_eq!(protocol.as_str(), name);
    }
}

#[test]
fn otlp_over_json_is_refused_saying_which_protocols_are_supported() {
    assert_eq!(
        refused("{protocol: http/json}"),
        ["m.yaml:4: spec.tracing.protocol: expected grpc or http/protobuf, got \"http/json\" (only grpc and http/protobuf are supported)"]
    );
}

#[test]
fn an_unknown_protocol_is_refused() {
    assert_eq!(
        refused("{protocol: GRPC}"),
        ["m.yaml:4: spec.tracing.protocol: expected grpc or http/protobuf, got \"GRPC\""]
    );
}

#[test]
fn sampling_from_0_to_1_is_read_in_parts_per_million() {
    for (value, ppm) in [
        ("0", 0),
        ("0.0001", 100),
        ("0.5", 500_000),
        ("1", 1_000_000),
    ] {
        let t = tracing(&format!("{{sampling: {value}}}")).unwrap().unwrap();
        assert_eq!(t.sampling_ppm, Some(ppm), "{value}");
    }
}

#[test]
fn sampling_out_of_range_or_not_a_number_is_refused() {
    for (value, got) in [
        ("1.5", "\"1.5\""),
        ("-0.1", "\"-0.1\""),
        ("half", "\"half\""),
        ("[1]", "a list"),
    ] {
        assert_eq!(
            refused(&format!("{{sampling: {value}}}")),
            [format!("m.yaml:4: spec.tracing.sampling: expected a share of new traces from 0 to 1, such as 0.1, got {got}")]
        );
    }
}

#[test]
fn propagators_are_read_in_order() {
    let t = tracing("{propagators: [b3multi, tracecontext, b3]}")
        .unwrap()
        .unwrap();
    assert_eq!(
        t.propagators,
        [
            Propagator::B3Multi,
            Propagator::TraceContext,
            Propagator::B3
        ]
    );
    let names: Vec<&str> = t.propagators.iter().map(|p| p.as_str()).collect();
    assert_eq!(names, ["b3multi", "tracecontext", "b3"]);
}

#[test]
fn an_unknown_propagator_is_refused_with_the_ones_supported() {
    assert_eq!(
        refused("{propagators: [tracecontext, baggage, none]}"),
        [
            "m.yaml:4: spec.tracing.propagators[1]: expected one of tracecontext, b3, b3multi, got \"baggage\"",
            "m.yaml:4: spec.tracing.propagators[2]: expected one of tracecontext, b3, b3multi, got \"none\"",
        ]
    );
}

#[test]
fn an_empty_propagator_list_is_refused() {
    assert_eq!(
        refused("{propagators: []}"),
        ["m.yaml:4: spec.tracing.propagators: expected at least one of tracecontext, b3, b3multi, got an empty list"]
    );
}

#[test]
fn a_propagator_listed_twice_is_refused() {
    assert_eq!(
        refused("{propagators: [b3, tracecontext, b3]}"),
        ["m.yaml:4: spec.tracing.propagators[2]: expected each propagator once, got \"b3\" again"]
    );
}

#[test]
fn propagators_that_are_not_a_list_are_refused() {
    assert_eq!(
        refused("{propagators: 'tracecontext,b3'}"),
        ["m.yaml:4: spec.tracing.propagators: expected a list, got \"tracecontext,b3\""]
    );
}

#[test]
fn resource_attribute_values_are_kept_as_written() {
    let t =
        tracing("{resourceAttributes: {b.count: 3, a.flag: true, c.ratio: 0.50, d.text: 'x: y'}}")
            .unwrap()
            .unwrap();
    let pairs: Vec<(&str, &str)> = t
        .resource_attributes
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("a.flag", "true"),
            ("b.count", "3"),
            ("c.ratio", "0.50"),
            ("d.text", "x: y")
        ]
    );
}

#[test]
fn an_empty_resource_attribute_name_is_refused() {
    assert_eq!(
        refused("{resourceAttributes: {'': prod}}"),
        ["m.yaml:4: spec.tracing.resourceAttributes: expected a non-empty attribute name, got \"\""]
    );
}

#[test]
fn at_most_64_resource_attributes_are_accepted() {
    let attributes = |n: usize| {
        let pairs: Vec<String> = (0..n).map(|i| format!("k{i}: v")).collect();
        format!("{{resourceAttributes: {{{}}}}}", pairs.join(", "))
    };
    let t = tracing(&attributes(64)).unwrap().unwrap();
    assert_eq!(t.resource_attributes.len(), 64);
    assert_eq!(
        refused(&attributes(65)),
        ["m.yaml:4: spec.tracing.resourceAttributes: expected at most 64 attributes, got 65"]
    );
}

#[test]
fn resource_attribute_names_and_values_over_256_bytes_are_refused() {
    let (max, over) = ("n".repeat(256), "n".repeat(257));
    let t = tracing(&format!("{{resourceAttributes: {{{max}: {max}}}}}"))
        .unwrap()
        .unwrap();
    assert_eq!(t.resource_attributes.get(&max), Some(&max));
    assert_eq!(
        refused(&format!("{{resourceAttributes: {{{over}: v}}}}")),
        ["m.yaml:4: spec.tracing.resourceAttributes: expected attribute names of at most 256 bytes, got one of 257 bytes"]
    );
    assert_eq!(
        refused(&format!("{{resourceAttributes: {{k: {over}}}}}")),
        ["m.yaml:4: spec.tracing.resourceAttributes.k: expected a value of at most 256 bytes, got 257 bytes"]
    );
}

#[test]
fn a_resource_attribute_value_that_is_not_a_scalar_is_refused() {
    assert_eq!(
        refused("{resourceAttributes: {team: [a, b], owner: {name: x}, empty: }}"),
        [
            "m.yaml:4: spec.tracing.resourceAttributes.team: expected a string, number or boolean, got a list",
            "m.yaml:4: spec.tracing.resourceAttributes.owner: expected a string, number or boolean, got a mapping",
            "m.yaml:4: spec.tracing.resourceAttributes.empty: expected a string, number or boolean, got nothing (null)",
        ]
    );
}

#[test]
fn resource_attributes_that_are_not_a_mapping_are_refused() {
    assert_eq!(
        refused("{resourceAttributes: 'deployment.environment=prod'}"),
        ["m.yaml:4: spec.tracing.resourceAttributes: expected a mapping of attribute names to values, got \"deployment.environment=prod\""]
    );
}

#[test]
fn a_resource_attribute_named_twice_is_refused() {
    assert_eq!(
        refused("{resourceAttributes: {env: prod, env: dev}}"),
        ["m.yaml:4: spec.tracing.resourceAttributes.env: duplicate key"]
    );
}

#[test]
fn unknown_fields_under_tracing_are_refused_with_the_fields_supported() {
    assert_eq!(
        refused("{endpoint: 'http://collector:4317', headers: {x-token: abc}}"),
        ["m.yaml:4: spec.tracing.headers: unknown or unsupported field (supported here: enabled, endpoint, protocol, sampling, propagators, resourceAttributes)"]
    );
}

#[test]
fn tracing_that_is_not_a_mapping_is_refused() {
    assert_eq!(
        refused("true"),
        ["m.yaml:4: spec.tracing: expected a mapping, got \"true\""]
    );
}

#[test]
fn every_bad_tracing_field_is_reported_on_its_own_line() {
    let text = mesh("")
        + "  tracing:
    enabled: maybe
    endpoint: collector:4317
    protocol: http/json
    sampling: 2
    propagators:
      - tracecontext
      - jaeger
    resourceAttributes:
      '': x
";
    assert_eq!(
        errors(&text),
        [
            "m.yaml:6: spec.tracing.enabled: expected true or false, got \"maybe\"",
            "m.yaml:7: spec.tracing.endpoint: expected an absolute http:// URL with a host, such as \
             http://127.0.0.1:4317 (grpc) or http://collector:4318/v1/traces (http/protobuf), got \"collector:4317\"",
            "m.yaml:8: spec.tracing.protocol: expected grpc or http/protobuf, got \"http/json\" (only grpc and http/protobuf are supported)",
            "m.yaml:9: spec.tracing.sampling: expected a share of new traces from 0 to 1, such as 0.1, got \"2\"",
            "m.yaml:12: spec.tracing.propagators[1]: expected one of tracecontext, b3, b3multi, got \"jaeger\"",
            "m.yaml:14: spec.tracing.resourceAttributes: expected a non-empty attribute name, got \"\"",
        ]
    );
}

#[test]
fn the_tracing_example_in_the_manifest_docs_loads() {
    let docs = include_str!("../../../../../../docs/manifests.md");
    let section = &docs[docs.find("**Tracing.**").expect("the tracing part")..];
    let start = section.find("```yaml\n").expect("a YAML example") + "```yaml\n".len();
    let example = &section[start..start + section[start..].find("```").expect("its end")];
    let set = load(example).unwrap_or_else(|e| panic!("{e:?}"));
    let t = set.meshes[0].tracing.clone().expect("a tracing block");
    assert!(t.enabled);
    assert_eq!(t.endpoint.as_deref(), Some("http://collector:4317"));
    assert_eq!(
        (t.protocol, t.sampling_ppm),
        (Some(TracingProtocol::Grpc), Some(100_000))
    );
    assert_eq!(
        t.propagators,
        [Propagator::TraceContext, Propagator::B3Multi]
    );
    assert_eq!(t.resource_attributes.len(), 2);
}
