//! The `meshwork` binary as a user runs it.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::process::Command;

fn meshwork() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meshwork"))
}

#[test]
fn validate_accepts_the_quickstart() {
    // The quickstart's WasmPlugins point at the filters built from plugins/.
    for filter in ["api-key", "header-policy"] {
        let crate_dir = format!("{}/../plugins/{filter}", env!("CARGO_MANIFEST_DIR"));
        // Built where the manifests expect them (plugins/target), even when this test run has a CARGO_TARGET_DIR.
        let out = meshwork()
            .args(["plugin", "build", &crate_dir])
            .env_remove("CARGO_TARGET_DIR")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/local/quickstart");
    let out = meshwork().args(["validate", dir]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("ok: 5 workloads, 1 gateways, 2 routes")
    );
}

#[test]
fn validate_reports_errors_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("nested")).unwrap();
    std::fs::write(
        dir.path().join("nested/route.yml"),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{name: gw}]\n",
    )
    .unwrap();
    let out = meshwork().arg("validate").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nested/route.yml:5: spec.parentRefs[0].name: unknown Gateway \"gw\""),
        "{err}"
    );
    assert!(err.contains("1 error"), "{err}");
}

#[test]
fn validate_rejects_an_empty_or_missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = meshwork().arg("validate").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no *.yaml or *.yml files found"));
    let out = meshwork()
        .args(["validate", "/nonexistent/meshwork"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn status_without_a_control_plane_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = meshwork()
        .args(["status", "--control-plane", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no control plane of this user is recorded at"),
        "{err}"
    );
}

#[test]
fn plugin_build_prints_the_module_digest() {
    let crate_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/header-policy");
    let out = meshwork()
        .args(["plugin", "build", crate_dir])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let wasm = stdout
        .lines()
        .find_map(|l| l.strip_prefix("built "))
        .expect("a built line");
    let digest = stdout
        .lines()
        .find_map(|l| l.strip_prefix("sha256 "))
        .expect("a sha256 line");
    let bytes = std::fs::read(wasm).unwrap();
    assert_eq!(&bytes[..4], b"\0asm");
    let want: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    assert_eq!(digest, want);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("building"),
        "progress is shown"
    );

    let out = meshwork()
        .args(["plugin", "build", "/nonexistent/filter"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no Cargo.toml here"));
}

#[test]
fn token_create_needs_a_control_plane_state() {
    let dir = tempfile::tempdir().unwrap();
    let out = meshwork()
        .args(["token", "create", "--service", "web", "--manifests"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no mesh CA there"), "{err}");
}

#[test]
fn token_create_prints_a_token_the_control_plane_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join(".meshwork");
    // What a control plane makes on its first start.
    let td = meshwork_identity::TrustDomain::default();
    let ca = meshwork_identity::Authority::load_or_create(&state, &td).unwrap();
    let tokens = meshwork_control::identity::token::Tokens::load_or_create(&state).unwrap();
    let out = meshwork()
        .args([
            "token",
            "create",
            "--service",
            "web",
            "--node",
            "web-7",
            "--ttl",
            "2m",
            "--state-dir",
        ])
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let ids = meshwork_control::identity::Identities::with(
        ca,
        tokens,
        std::time::Duration::from_secs(60),
    );
    ids.redeem(
        token.trim(),
        meshwork_manifest::translate::ProxyRole::Sidecar,
        "default",
        "web",
        "web-7",
    )
    .unwrap();
    let again = ids
        .redeem(
            token.trim(),
            meshwork_manifest::translate::ProxyRole::Sidecar,
            "default",
            "web",
            "web-7",
        )
        .unwrap_err();
    assert!(again.to_string().contains("already been used"), "{again}");
}
