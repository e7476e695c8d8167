//! Mesh and Workload identity/mTLS fields: every valid value is read, every invalid one is refused with the file,
//! the line, the field and what was expected, and unknown fields under `mtls` and `identity` are refused by name.

use std::path::PathBuf;
use std::time::Duration;

use crate::model::{ManifestSet, MtlsMode};
use crate::source::files::load_texts;

/// The set `text` loads to (as file `m.yaml`), or every error.
pub(super) fn load(text: &str) -> Result<ManifestSet, Vec<String>> {
    load_texts(&[(PathBuf::from("m.yaml"), text.to_string())])
        .map_err(|d| d.0.iter().map(ToString::to_string).collect())
}

pub(super) fn errors(text: &str) -> Vec<String> {
    match load(text) {
        Ok(_) => panic!("loaded without errors:\n{text}"),
        Err(e) => e,
    }
}

/// A Mesh with `spec` (flow style, on line 4).
pub(super) fn mesh(spec: &str) -> String {
    format!(
        "apiVersion: meshwork.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: mesh}}\nspec: {spec}\n"
    )
}

/// A Workload run behind a sidecar, with extra `spec` fields (flow style, on line 4).
fn workload(extra: &str) -> String {
    format!("apiVersion: meshwork.dev/v1alpha1\nkind: Workload\nmetadata: {{name: api}}\nspec: {{service: api, command: app{extra}}}\n")
}

fn lifetime(value: &str) -> Result<Duration, Vec<String>> {
    load(&mesh(&format!(
        "{{identity: {{certificateLifetime: {value}}}}}"
    )))
    .map(|s| s.meshes[0].certificate_lifetime)
}

#[test]
fn a_mesh_without_settings_has_the_defaults() {
    for text in [
        "apiVersion: meshwork.dev/v1alpha1\nkind: Mesh\nmetadata: {name: mesh}\n".to_string(),
        mesh("{}"),
        mesh("{identity: {}}"),
    ] {
        let set = load(&text).unwrap_or_else(|e| panic!("{e:?}"));
        let m = &set.meshes[0];
        assert_eq!(m.trust_domain, None);
        assert_eq!(m.mtls, MtlsMode::Permissive);
        assert_eq!(m.certificate_lifetime, Duration::from_secs(24 * 3600));
    }
}

#[test]
fn a_mesh_reads_trust_domain_mode_and_certificate_lifetime() {
    let set = load(&mesh(
        "{trustDomain: prod.example.org, mtls: {mode: STRICT}, identity: {certificateLifetime: 1h30m}}",
    ))
    .unwrap_or_else(|e| panic!("{e:?}"));
    let m = &set.meshes[0];
    assert_eq!(m.trust_domain.as_deref(), Some("prod.example.org"));
    assert_eq!(m.mtls, MtlsMode::Strict);
    assert_eq!(m.certificate_lifetime, Duration::from_secs(5400));
}

#[test]
fn every_mode_is_read_on_a_mesh_and_on_a_workload() {
    for (name, mode) in [
        ("STRICT", MtlsMode::Strict),
        ("PERMISSIVE", MtlsMode::Permissive),
        ("DISABLED", MtlsMode::Disabled),
    ] {
        let set = load(&mesh(&format!("{{mtls: {{mode: {name}}}}}"))).unwrap();
        assert_eq!(set.meshes[0].mtls, mode);
        let set = load(&workload(&format!(", mtls: {{mode: {name}}}"))).unwrap();
        assert_eq!(set.workloads[0].mtls, Some(mode));
        assert_eq!(mode.as_str(), name);
    }
    let set = load(&workload("")).unwrap();
    assert_eq!(set.workloads[0].mtls, None, "no override without spec.mtls");
}

#[test]
fn an_unknown_mode_is_refused_with_the_modes_expected() {
    assert_eq!(
        errors(&mesh("{mtls: {mode: strict}}")),
        ["m.yaml:4: spec.mtls.mode: expected one of STRICT, PERMISSIVE, DISABLED, got \"strict\""]
    );
    assert_eq!(
        errors(&workload(", mtls: {mode: ISTIO_MUTUAL}")),
        ["m.yaml:4: spec.mtls.mode: expected one of STRICT, PERMISSIVE, DISABLED, got \"ISTIO_MUTUAL\""]
    );
}

#[test]
fn mtls_without_a_mode_or_not_a_mapping_is_refused() {
    assert_eq!(
        errors(&mesh("{mtls: {}}")),
        ["m.yaml:4: spec.mtls.mode: required field is missing: expected STRICT, PERMISSIVE or DISABLED"]
    );
    assert_eq!(
        errors(&workload(", mtls: STRICT")),
        ["m.yaml:4: spec.mtls: expected a mapping, got \"STRICT\""]
    );
}

#[test]
fn unknown_fields_under_mtls_and_identity_are_refused_by_name() {
    assert_eq!(
        errors(&mesh("{mtls: {mode: STRICT, minVersion: TLSv1_3}}")),
        ["m.yaml:4: spec.mtls.minVersion: unknown or unsupported field (supported here: mode)"]
    );
    assert_eq!(
        errors(&workload(", mtls: {mode: STRICT, portLevelMtls: {}}")),
        ["m.yaml:4: spec.mtls.portLevelMtls: unknown or unsupported field (supported here: mode)"]
    );
    assert_eq!(
        errors(&mesh("{identity: {certificateLifetime: 1h, rootLifetime: 1h}}")),
        ["m.yaml:4: spec.identity.rootLifetime: unknown or unsupported field (supported here: certificateLifetime)"]
    );
    assert_eq!(
        errors(&mesh("{tls: {}}")),
        ["m.yaml:4: spec.tls: unknown or unsupported field (supported here: trustDomain, mtls, identity, accessLog, tracing)"]
    );
}

#[test]
fn certificate_lifetimes_from_a_minute_to_ninety_days_are_accepted() {
    assert_eq!(lifetime("1m"), Ok(Duration::from_secs(60)));
    assert_eq!(lifetime("30m"), Ok(Duration::from_secs(1800)));
    assert_eq!(lifetime("24h"), Ok(Duration::from_secs(86400)));
    assert_eq!(lifetime("2160h"), Ok(Duration::from_secs(90 * 86400)));
}

#[test]
fn a_certificate_lifetime_out_of_range_is_refused_with_the_range() {
    for (value, got) in [
        ("59s", "\"59s\""),
        ("0s", "\"0s\""),
        ("2160h1s", "\"2160h1s\""),
    ] {
        assert_eq!(
            lifetime(value),
            Err(vec![format!(
                "m.yaml:4: spec.identity.certificateLifetime: expected a certificate lifetime from 1m to 2160h (90 days), got {got}"
            )])
        );
    }
}

#[test]
fn a_certificate_lifetime_that_is_not_a_duration_is_refused() {
    assert_eq!(
        lifetime("1d"),
        Err(vec![
            "m.yaml:4: spec.identity.certificateLifetime: expected a duration like \"250ms\" or \"1m30s\", got \"1d\" (unknown unit (use h, m, s or ms))".to_string()
        ])
    );
    assert_eq!(
        lifetime("86400"),
        Err(vec![
            "m.yaml:4: spec.identity.certificateLifetime: expected a duration like \"250ms\" or \"1m30s\", got \"86400\" (missing unit (h, m, s or ms))".to_string()
        ])
    );
}

#[test]
fn an_invalid_trust_domain_is_refused() {
    assert_eq!(
        errors(&mesh("{trustDomain: Example.COM}")),
        ["m.yaml:4: spec.trustDomain: expected a SPIFFE trust domain (lowercase letters, digits, '.', '-', '_'), such as cluster.local; got \"Example.COM\""]
    );
    assert_eq!(errors(&mesh("{trustDomain: ''}")).len(), 1);
}

#[test]
fn mtls_on_a_workload_outside_the_mesh_is_refused() {
    let text = "apiVersion: meshwork.dev/v1alpha1\nkind: Workload\nmetadata: {name: legacy}\nspec: {service: legacy, endpoints: ['127.0.0.1:9'], mtls: {mode: STRICT}}\n";
    assert_eq!(
        errors(text),
        ["m.yaml:4: spec.mtls: only meaningful with spec.command: an app outside the mesh has no sidecar, so its endpoints are always reached in plaintext"]
    );
}

#[test]
fn a_second_mesh_is_refused_naming_the_first() {
    let text = format!(
        "{}---\n{}---\n{}",
        mesh("{}"),
        mesh("{}").replace("name: mesh", "name: other"),
        mesh("{}").replace("name: mesh", "name: third"),
    );
    assert_eq!(
        errors(&text),
        [
            "m.yaml:6: kind: only one Mesh object is allowed: Mesh default/mesh is already defined at m.yaml:1",
            "m.yaml:11: kind: only one Mesh object is allowed: Mesh default/mesh is already defined at m.yaml:1",
        ]
    );
}

#[test]
fn the_example_in_the_manifest_docs_loads() {
    let docs = include_str!("../../../../../docs/manifests.md");
    let section = &docs[docs
        .find("## `meshwork.dev/v1alpha1` Mesh")
        .expect("the Mesh section")..];
    let start = section.find("```yaml\n").expect("a YAML example") + "```yaml\n".len();
    let example = &section[start..start + section[start..].find("```").expect("its end")];
    let set = load(example).unwrap_or_else(|e| panic!("{e:?}"));
    let m = &set.meshes[0];
    assert_eq!(m.trust_domain.as_deref(), Some("prod.example.org"));
    assert_eq!(
        (m.mtls, m.certificate_lifetime),
        (MtlsMode::Strict, Duration::from_secs(12 * 3600))
    );
    assert_eq!(set.workloads[0].mtls, Some(MtlsMode::Permissive));
}

#[test]
fn access_log_settings_are_read_with_their_defaults() {
    let read = |spec: &str| load(&mesh(spec)).map(|s| s.meshes[0].access_log.clone());
    assert_eq!(read("{}").unwrap(), None, "off unless asked for");
    let on = read("{accessLog: {}}").unwrap().unwrap();
    assert!(on.json);
    assert_eq!((on.path.as_str(), on.sampling_ppm), ("stdout", 1_000_000));
    let text = read("{accessLog: {format: text, path: /var/log/mesh.log, sampling: 0.25}}")
        .unwrap()
        .unwrap();
    assert!(!text.json);
    assert_eq!(
        (text.path.as_str(), text.sampling_ppm),
        ("/var/log/mesh.log", 250_000)
    );
    assert_eq!(
        read("{accessLog: {enabled: false, format: text}}").unwrap(),
        None
    );
}

#[test]
fn bad_access_log_settings_are_refused_naming_the_field() {
    for (spec, field, expected) in [
        (
            "{accessLog: {format: yaml}}",
            "spec.accessLog.format",
            "json",
        ),
        (
            "{accessLog: {path: logs/access.log}}",
            "spec.accessLog.path",
            "absolute file path",
        ),
        (
            "{accessLog: {sampling: 1.5}}",
            "spec.accessLog.sampling",
            "from 0 to 1",
        ),
        (
            "{accessLog: {sampling: all}}",
            "spec.accessLog.sampling",
            "from 0 to 1",
        ),
        (
            "{accessLog: {enabled: yes}}",
            "spec.accessLog.enabled",
            "true or false",
        ),
        ("{accessLog: {level: info}}", "spec.accessLog", "level"),
    ] {
        let e = errors(&mesh(spec)).join("\n");
        assert!(
            e.contains("m.yaml:4") && e.contains(field) && e.contains(expected),
            "{spec}: {e}"
        );
    }
}
