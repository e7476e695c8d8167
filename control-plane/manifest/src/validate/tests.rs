//! Diagnostics name the file, the line, the field path and what was expected; property tests check that no input
//! makes the loader panic and that every error carries a position.

use std::path::PathBuf;

use proptest::prelude::*;

use crate::source::files::load_texts;

fn errors(files: &[(&str, &str)]) -> Vec<String> {
    let files: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(p, t)| (PathBuf::from(p), t.to_string()))
        .collect();
    match load_texts(&files) {
        Ok(_) => Vec::new(),
        Err(d) => d.0.iter().map(ToString::to_string).collect(),
    }
}

const SERVICES: &str = "apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata:
  name: v1
spec:
  service: backend
  command: app
---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata:
  name: v2
spec:
  service: backend
  command: app
";

#[test]
fn bad_weight_names_file_line_field_and_expectation() {
    let routes = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: r
spec:
  parentRefs:
    - kind: Service
      name: backend
  rules:
    - backendRefs:
        - name: backend
          weight: 1
        - name: backend
          weight: ten
";
    assert_eq!(
        errors(&[("services.yaml", SERVICES), ("routes.yaml", routes)]),
        ["routes.yaml:14: spec.rules[0].backendRefs[1].weight: expected a non-negative integer, got \"ten\""]
    );
}

#[test]
fn unknown_fields_are_rejected_by_name() {
    let routes = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{kind: Service, name: backend}]
  rules:
    - backendRefs: [{name: backend}]
      sessionPersistence: {type: Cookie}
";
    let errs = errors(&[("s.yaml", SERVICES), ("r.yaml", routes)]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with(
            "r.yaml:8: spec.rules[0].sessionPersistence: unknown or unsupported field"
        ),
        "{errs:?}"
    );
}

#[test]
fn cross_object_references_are_checked() {
    let routes = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs:
    - name: nowhere
    - kind: Service
      name: ghost
  rules:
    - backendRefs:
        - name: missing
        - group: meshwork.dev
          kind: Workload
          name: v3
";
    let errs = errors(&[("s.yaml", SERVICES), ("r.yaml", routes)]);
    let joined = errs.join("\n");
    assert!(
        joined.contains("r.yaml:6: spec.parentRefs[0].name: unknown Gateway \"nowhere\""),
        "{joined}"
    );
    assert!(
        joined.contains("r.yaml:7: spec.parentRefs[1].name: unknown mesh service \"ghost\""),
        "{joined}"
    );
    assert!(
        joined.contains("r.yaml:11: spec.rules[0].backendRefs[0].name: unknown mesh service"),
        "{joined}"
    );
    assert!(
        joined.contains("r.yaml:12: spec.rules[0].backendRefs[1].name: unknown Workload"),
        "{joined}"
    );
}

#[test]
fn field_level_errors() {
    let bad = "apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {name: Bad_Name}
spec: {service: x, command: app}
---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {name: both}
spec: {service: x, command: app, endpoints: ['1.2.3.4:80']}
---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {name: ep}
spec: {service: y, endpoints: ['not-an-address'], protocol: spdy}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: g}
spec: {listeners: [{name: a, port: 70000}, {name: b, port: 80, protocol: HTTPS}]}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: c}
";
    let errs = errors(&[("bad.yaml", bad)]);
    let joined = errs.join("\n");
    for want in [
        "bad.yaml:3: metadata.name: expected a DNS-1123 name",
        "bad.yaml:9: spec: expected either `command`",
        "bad.yaml:14: spec.protocol: expected one of http, http2, grpc, got \"spdy\"",
        "bad.yaml:14: spec.endpoints[0]: expected an IP:port address",
        "bad.yaml:19: spec.listeners[0].port: expected an integer from 1 to 65535, got \"70000\"",
        "bad.yaml:19: spec.listeners[1].tls: required for protocol HTTPS: expected {mode: Terminate, certificateRefs: [...]}",
        "bad.yaml:22: kind: unsupported apiVersion/kind v1 ConfigMap",
    ] {
        assert!(joined.contains(want), "missing {want:?} in:\n{joined}");
    }
}

#[test]
fn yaml_syntax_errors_have_a_line() {
    let errs = errors(&[("broken.yaml", "kind: Workload\nspec: [1, 2\nx: 3\n")]);
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("broken.yaml:"), "{errs:?}");
    assert!(errs[0].contains("invalid YAML"), "{errs:?}");
}

#[test]
fn gateway_port_clash_and_regex() {
    let text = "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: a}
spec: {listeners: [{name: x, port: 8080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: b}
spec: {listeners: [{name: y, port: 8080}]}
";
    let route = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{name: a}]
  rules:
    - matches: [{path: {type: RegularExpression, value: '/(unclosed'}}]
";
    // Cross-object checks run once every object parses (otherwise they would report follow-on noise).
    let joined = errors(&[("g.yaml", text)]).join("\n");
    assert!(joined.contains("g.yaml:9: spec.listeners[0].port: port 8080 is already used by listener \"x\" of Gateway default/a"), "{joined}");
    let joined = errors(&[("g.yaml", text), ("r.yaml", route)]).join("\n");
    assert!(
        joined.contains(
            "r.yaml:7: spec.rules[0].matches[0].path.value: expected a regular expression"
        ),
        "{joined}"
    );
    assert!(!joined.contains("already used"), "{joined}");
}

fn yamlish() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        "apiVersion: gateway.networking.k8s.io/v1\n",
        "apiVersion: meshwork.dev/v1alpha1\n",
        "kind: HTTPRoute\n",
        "kind: Workload\n",
        "kind: Gateway\n",
        "metadata: {name: a}\n",
        "metadata:\n  name: b\n",
        "spec:\n",
        "  rules:\n",
        "    - backendRefs: [{name: a, weight: 3}]\n",
        "  parentRefs: [{name: a}]\n",
        "  service: s\n",
        "  command: x\n",
        "  listeners: [{name: l, port: 1}]\n",
        "---\n",
        "  weight: -1\n",
        "  - [\n",
        ": :\n",
        "  matches: [{path: {type: RegularExpression, value: '('}}]\n",
        "&a x: *a\n",
        "\t\n",
    ]);
    prop::collection::vec(atoms, 0..24).prop_map(|v| v.concat())
}

proptest! {
    #[test]
    fn never_panics_and_every_error_has_a_position(text in yamlish()) {
        let files = vec![(PathBuf::from("p.yaml"), text)];
        if let Err(d) = load_texts(&files) {
            for diag in d.0 {
                prop_assert_eq!(diag.file.to_str(), Some("p.yaml"));
                prop_assert!(diag.line >= 1, "no line in {}", diag);
            }
        }
    }
}

#[test]
fn traffic_policy_errors_name_file_line_and_field() {
    let policy = "apiVersion: meshwork.dev/v1alpha1
kind: TrafficPolicy
metadata:
  name: p
spec:
  targetRef: {kind: Service, name: backend}
  timeouts: {request: soon}
  retry:
    attempts: 3
    on: [5xx, sometimes]
    budget: {ratio: -1}
  circuitBreaker: {openFor: 1s}
  rateLimit: {requestsPerSecond: 10, onLimit: queue}
  loadBalancer: {policy: consistent-hash}
  faultInjection:
    abort: {percent: 150, status: 503}
  bulkhead: {maxPending: 3}
";
    let mut errs = errors(&[("services.yaml", SERVICES), ("policy.yaml", policy)]);
    errs.sort_by_key(|e| e.split(':').nth(1).and_then(|l| l.parse::<u32>().ok()));
    assert_eq!(
        errs,
        [
            "policy.yaml:7: spec.timeouts.request: expected a duration like \"250ms\" or \"1m30s\", got \"soon\" (expected a number)",
            "policy.yaml:10: spec.retry.on[1]: expected one of connect-failure, refused-stream, reset, 5xx, gateway-error, retriable-status-codes, cancelled, deadline-exceeded, resource-exhausted, unavailable, got \"sometimes\"",
            "policy.yaml:11: spec.retry.budget.ratio: expected a number from 0 to 1000, got \"-1\"",
            "policy.yaml:12: spec.circuitBreaker: expected consecutiveFailures or failureRate (what opens the circuit)",
            "policy.yaml:13: spec.rateLimit.maxDelay: required with onLimit: queue: expected the longest a request may wait, such as 500ms",
            "policy.yaml:14: spec.loadBalancer.hashOn: required with consistent-hash: expected header: NAME, cookie: NAME or sourceIP",
            "policy.yaml:16: spec.faultInjection.abort.percent: expected a number from 0 to 100, got \"150\"",
            "policy.yaml:17: spec.bulkhead.maxConcurrentRequests: required field is missing: expected the most requests in flight, such as 100",
        ]
    );
    let dangling = "apiVersion: meshwork.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: a}
spec:
  targetRef: {kind: Service, name: nowhere}
---
apiVersion: meshwork.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: b}
spec:
  targetRef: {kind: Service, name: backend}
---
apiVersion: meshwork.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: c}
spec:
  targetRef: {kind: Service, name: backend}
";
    let errs = errors(&[("services.yaml", SERVICES), ("policy.yaml", dangling)]);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].starts_with("policy.yaml:5: spec.targetRef.name: unknown Service"),
        "{errs:?}"
    );
    assert!(
        errs[1].contains(
            "policy.yaml:17: spec.targetRef: \"backend\" is already targeted by TrafficPolicy b"
        ),
        "{errs:?}"
    );
}

/// `spec.build` must name a crate; a missing module says how to build it.
#[test]
fn wasm_plugin_build_names_a_crate_and_the_missing_module_says_how_to_build_it() {
    let dir = tempfile::tempdir().unwrap();
    let krate = dir.path().join("filter");
    std::fs::create_dir_all(&krate).unwrap();
    std::fs::write(krate.join("Cargo.toml"), "[package]\nname = \"f\"\n").unwrap();
    let manifest = dir.path().join("plugins.yaml");
    let plugin = |build: &str| {
        format!(
            "apiVersion: meshwork.dev/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: f\nspec:\n  url: out/f.wasm\n  build: {build}\n  targetRefs: [{{kind: Gateway, name: edge}}]\n"
        )
    };
    let path = manifest.to_string_lossy().to_string();
    let errs = errors(&[(&path, &plugin("nowhere"))]);
    assert!(
        errs.iter()
            .any(|e| e
                .contains("plugins.yaml:7: spec.build: expected a Rust filter crate directory")),
        "{errs:?}"
    );
    let errs = errors(&[(&path, &plugin("filter"))]);
    assert!(
        errs.iter()
            .any(|e| e.contains("spec.url: cannot read the module")
                && e.contains("meshwork plugin build")),
        "{errs:?}"
    );
}

/// `meshwork up` finds what to build before the manifests can load.
#[test]
fn declared_builds_are_found_before_loading() {
    let text = "apiVersion: meshwork.dev/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: a\nspec:\n  url: ../target/a.wasm\n  build: ../a\n---\nkind: WasmPlugin\nmetadata: {name: b}\nspec: {url: b.wasm}\n---\nkind: HTTPRoute\nspec: {build: x, url: y}\n";
    let found =
        crate::model::wasm::declared_builds(&[(PathBuf::from("/m/dir/p.yaml"), text.into())]);
    assert_eq!(
        found,
        vec![crate::model::wasm::DeclaredBuild {
            plugin: "a".into(),
            crate_dir: PathBuf::from("/m/dir/../a"),
            module: PathBuf::from("/m/dir/../target/a.wasm"),
        }]
    );
}

/// A module over the push-size budget is refused by name at validation, not discovered by a proxy that cannot
/// take the push (issue 11, item 10); one at the limit is fine.
#[test]
fn a_wasm_module_over_16_mib_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("plugins.yaml");
    let path = manifest.to_string_lossy().to_string();
    let text = "apiVersion: meshwork.dev/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: f\nspec:\n  url: big.wasm\n  targetRefs: [{kind: Gateway, name: edge}]\n";
    let module = dir.path().join("big.wasm");
    let file = std::fs::File::create(&module).unwrap();
    file.set_len(crate::model::wasm::MAX_MODULE_BYTES + 1)
        .unwrap();
    let errs = errors(&[(&path, text)]);
    assert!(
        errs.iter()
            .any(|e| e.contains("plugins.yaml:6: spec.url: the module")
                && e.contains("is 16777217 bytes: expected at most 16 MiB")),
        "{errs:?}"
    );
    file.set_len(crate::model::wasm::MAX_MODULE_BYTES).unwrap();
    let errs = errors(&[(&path, text)]);
    assert!(!errs.iter().any(|e| e.contains("spec.url")), "{errs:?}");
}

/// A module path naming something other than a regular file is refused unopened: a FIFO blocked the loader for
/// good, and /dev/zero was read until memory ran out (the FIFO goes first, so without the fix this test fails on
/// its timeout rather than by exhausting memory).
#[test]
fn a_wasm_module_that_is_not_a_regular_file_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.wasm");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo");
    for url in [fifo.to_string_lossy().into_owned(), "/dev/zero".into()] {
        let text = format!("apiVersion: meshwork.dev/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: f\nspec:\n  url: {url}\n  targetRefs: [{{kind: Gateway, name: edge}}]\n");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(errors(&[("plugins.yaml", &text)])));
        let errs = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("loading a manifest naming {url} did not return"));
        let expected = format!("plugins.yaml:6: spec.url: {url} is not a regular file");
        assert!(errs.iter().any(|e| e.starts_with(&expected)), "{errs:?}");
    }
}

/// A certificate and key for `shop.test` in `dir` (`tls.crt`, `tls.key`), and a key of another certificate
/// (`other.key`).
fn cert_files(dir: &std::path::Path) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["shop.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(dir.join("other.key"), other.serialize_pem()).unwrap();
}

/// The errors of a manifest `m.yaml` in a directory holding `cert_files`, with `gateway_listener` as the only
/// listener of a Gateway and `certificate_spec` as the spec of TLSCertificate `shop`.
fn tls_errors(certificate_spec: &str, gateway_listener: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    cert_files(dir.path());
    let m = dir.path().join("m.yaml");
    let text = format!(
        "apiVersion: meshwork.dev/v1alpha1
kind: TLSCertificate
metadata: {{name: shop}}
spec: {certificate_spec}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  listeners:
    - {gateway_listener}
"
    );
    match load_texts(&[(m.clone(), text)]) {
        Ok(_) => Vec::new(),
        Err(d) => {
            d.0.iter()
                .map(|e| {
                    e.to_string()
                        .replace(&format!("{}/", dir.path().display()), "")
                })
                .collect()
        }
    }
}

const GOOD_CERT: &str = "{certFile: tls.crt, keyFile: tls.key}";
const REF: &str = "{kind: TLSCertificate, group: meshwork.dev, name: shop}";

#[test]
fn an_https_listener_with_a_good_certificate_loads() {
    let listener = format!("{{name: https, port: 8443, protocol: HTTPS, hostname: shop.test, tls: {{mode: Terminate, certificateRefs: [{REF}]}}}}");
    assert_eq!(tls_errors(GOOD_CERT, &listener), Vec::<String>::new());
}

#[test]
fn a_key_of_another_certificate_names_key_file() {
    let listener =
        format!("{{name: https, port: 8443, protocol: HTTPS, tls: {{certificateRefs: [{REF}]}}}}");
    let errors = tls_errors("{certFile: tls.crt, keyFile: other.key}", &listener);
    assert_eq!(
        errors,
        ["m.yaml:4: spec.keyFile: the private key in other.key does not belong to the certificate in tls.crt"]
    );
}

#[test]
fn a_missing_certificate_file_names_cert_file() {
    let listener =
        format!("{{name: https, port: 8443, protocol: HTTPS, tls: {{certificateRefs: [{REF}]}}}}");
    let errors = tls_errors("{certFile: absent.crt, keyFile: tls.key}", &listener);
    assert!(
        errors[0].starts_with("m.yaml:4: spec.certFile: absent.crt: cannot read:"),
        "{errors:?}"
    );
}

#[test]
fn https_listener_mistakes_are_named() {
    let cases = [
        (
            "{name: https, port: 8443, protocol: HTTPS}".to_string(),
            "m.yaml:11: spec.listeners[0].tls: required for protocol HTTPS",
        ),
        (
            format!("{{name: h, port: 8080, tls: {{certificateRefs: [{REF}]}}}}"),
            "m.yaml:11: spec.listeners[0].tls: only HTTPS listeners take tls",
        ),
        (
            format!("{{name: h, port: 8443, protocol: HTTPS, tls: {{mode: Passthrough, certificateRefs: [{REF}]}}}}"),
            "m.yaml:11: spec.listeners[0].tls.mode: expected Terminate, got \"Passthrough\"",
        ),
        (
            "{name: h, port: 8443, protocol: HTTPS, tls: {certificateRefs: [{name: shop}]}}".to_string(),
            "m.yaml:11: spec.listeners[0].tls.certificateRefs[0].kind: expected kind: TLSCertificate with group: meshwork.dev",
        ),
        (
            "{name: h, port: 8443, protocol: HTTPS, tls: {certificateRefs: [{kind: TLSCertificate, group: meshwork.dev, name: nope}]}}".to_string(),
            "m.yaml:11: spec.listeners[0].tls.certificateRefs[0]: unknown TLSCertificate \"nope\" in namespace default",
        ),
        (
            "{name: h, port: 8443, protocol: HTTPS, tls: {certificateRefs: [{kind: TLSCertificate, group: meshwork.dev, name: shop, namespace: certs}]}}".to_string(),
            "m.yaml:11: spec.listeners[0].tls.certificateRefs[0]: unknown TLSCertificate \"shop\" in namespace certs",
        ),
        (
            format!("{{name: h, port: 8443, protocol: HTTPS, hostname: 'Shop_Test', tls: {{certificateRefs: [{REF}]}}}}"),
            "m.yaml:11: spec.listeners[0].hostname: expected a host name",
        ),
        (
            "{name: h, port: 8443, protocol: TLS}".to_string(),
            "m.yaml:11: spec.listeners[0].protocol:",
        ),
    ];
    for (listener, expected) in cases {
        let errors = tls_errors(GOOD_CERT, &listener);
        assert!(
            errors.iter().any(|e| e.starts_with(expected)),
            "{listener}: expected {expected:?}, got {errors:?}"
        );
    }
}

#[test]
fn a_certificate_of_another_namespace_needs_a_reference_grant() {
    let dir = tempfile::tempdir().unwrap();
    cert_files(dir.path());
    let text = |grant: &str| {
        format!(
            "apiVersion: meshwork.dev/v1alpha1
kind: TLSCertificate
metadata: {{name: shop, namespace: certs}}
spec: {GOOD_CERT}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: web}}
spec:
  listeners:
    - {{name: h, port: 8443, protocol: HTTPS, tls: {{certificateRefs: [{{kind: TLSCertificate, group: meshwork.dev, name: shop, namespace: certs}}]}}}}
{grant}"
        )
    };
    let load = |t: String| load_texts(&[(dir.path().join("m.yaml"), t)]);
    let err = load(text("")).unwrap_err().to_string();
    assert!(
        err.contains("spec.listeners[0].tls.certificateRefs[0]: TLSCertificate certs/shop is in another namespace: expected a ReferenceGrant in certs from Gateway in web"),
        "{err}"
    );
    let grant = "---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: web-gateways, namespace: certs}
spec:
  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: web}]
  to: [{group: meshwork.dev, kind: TLSCertificate, name: shop}]
";
    assert!(load(text(grant)).is_ok());
}

#[test]
fn workload_tls_origination_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    cert_files(dir.path());
    let load = |tls: &str| {
        let text = format!(
            "apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {{name: legacy}}
spec:
  service: legacy
  endpoints: ['127.0.0.1:9443']
  tls: {tls}
"
        );
        load_texts(&[(dir.path().join("m.yaml"), text)])
            .map(|s| s.workloads[0].run.clone())
            .map_err(|d| {
                d.to_string()
                    .replace(&format!("{}/", dir.path().display()), "")
            })
    };
    match load("{sni: legacy.example, caCertificates: tls.crt}").unwrap() {
        crate::model::Run::External { tls: Some(t), .. } => {
            assert_eq!(t.sni, "legacy.example");
            assert_eq!(t.ca_file, Some(dir.path().join("tls.crt")));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        load("{mode: SIMPLE, sni: legacy.example}").unwrap(),
        crate::model::Run::External {
            tls: Some(crate::model::tls::OriginateTls { ca_file: None, .. }),
            ..
        }
    ));
    for (tls, expected) in [
        (
            "{caCertificates: tls.crt}",
            "m.yaml:7: spec.tls.sni: required field is missing",
        ),
        (
            "{sni: '*.example'}",
            "m.yaml:7: spec.tls.sni: expected a DNS name",
        ),
        (
            "{mode: MUTUAL, sni: legacy.example}",
            "m.yaml:7: spec.tls.mode: expected SIMPLE",
        ),
        (
            "{sni: legacy.example, caCertificates: absent.pem}",
            "m.yaml:7: spec.tls.caCertificates: absent.pem: cannot read",
        ),
        (
            "{sni: legacy.example, caCertificates: tls.key}",
            "m.yaml:7: spec.tls.caCertificates: tls.key: expected PEM `CERTIFICATE` blocks",
        ),
    ] {
        let err = load(tls).unwrap_err();
        assert!(
            err.contains(expected),
            "{tls}: expected {expected:?} in {err}"
        );
    }
    let sidecar = "apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {name: app}
spec: {service: app, command: app, tls: {sni: app.example}}
";
    let err = load_texts(&[(PathBuf::from("s.yaml"), sidecar.to_string())])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("spec.tls: only meaningful with spec.endpoints"),
        "{err}"
    );
}
