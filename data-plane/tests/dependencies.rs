//! Keeps the architecture rule "the proxy does not link the control-plane crate": what both need lives in
//! `meshwork-manifest`. Reads the workspace's declared dependencies with `cargo metadata` and fails if
//! `meshwork-proxy` reaches `meshwork-control`, directly (normal, dev or build) or through another workspace crate.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

const PROXY: &str = "meshwork-proxy";
const FORBIDDEN: &str = "meshwork-control";

/// Workspace packages by name, each with its declared dependencies as (package name, kind).
fn workspace_dependencies() -> HashMap<String, Vec<(String, String)>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    // --no-deps: the workspace's own manifests are enough (the control-plane crate can only be reached through a
    // path dependency) and need neither the network nor the registry index.
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let packages = meta["packages"].as_array().expect("metadata has packages");
    packages
        .iter()
        .map(|p| {
            let name = p["name"].as_str().expect("package name").to_string();
            let deps = p["dependencies"]
                .as_array()
                .expect("package dependencies")
                .iter()
                .map(|d| {
                    (
                        d["name"].as_str().expect("dependency name").to_string(),
                        d["kind"].as_str().unwrap_or("normal").to_string(),
                    )
                })
                .collect();
            (name, deps)
        })
        .collect()
}

/// The chain of workspace crates from `meshwork-proxy` to `meshwork-control`, if there is one. Every kind of
/// dependency of the proxy counts; below it, dev-dependencies do not (they are not built for the proxy).
fn path_to_forbidden(deps: &HashMap<String, Vec<(String, String)>>) -> Option<Vec<String>> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![vec![PROXY.to_string()]];
    while let Some(path) = stack.pop() {
        let here = path.last().expect("paths are never empty");
        if !seen.insert(here.clone()) {
            continue;
        }
        let is_root = path.len() == 1;
        for (dep, kind) in deps.get(here).into_iter().flatten() {
            if !is_root && kind == "dev" {
                continue;
            }
            let mut next = path.clone();
            next.push(format!("{dep} ({kind})"));
            if dep == FORBIDDEN {
                return Some(next);
            }
            if deps.contains_key(dep) {
                next.pop();
                next.push(dep.clone());
                stack.push(next);
            }
        }
    }
    None
}

#[test]
fn proxy_does_not_depend_on_the_control_plane() {
    let deps = workspace_dependencies();
    assert!(deps.contains_key(PROXY), "{PROXY} is not in the workspace");
    assert!(
        deps.contains_key(FORBIDDEN),
        "{FORBIDDEN} is not in the workspace; update this test"
    );
    if let Some(path) = path_to_forbidden(&deps) {
        panic!(
            "{PROXY} depends on {FORBIDDEN}: {}. Put what both need in meshwork-manifest instead.",
            path.join(" -> ")
        );
    }
}

/// The walk itself, on made-up graphs, so that it is known to find what the first test looks for.
#[test]
fn the_check_finds_the_dependency_directly_or_through_a_shared_crate() {
    let graph = |edges: &[(&str, &str, &str)]| {
        let mut g: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for name in [PROXY, FORBIDDEN, "meshwork-manifest", "meshwork-proto"] {
            g.insert(name.to_string(), Vec::new());
        }
        for (from, to, kind) in edges {
            g.entry(from.to_string())
                .or_default()
                .push((to.to_string(), kind.to_string()));
        }
        g
    };
    let clean = graph(&[
        (PROXY, "meshwork-manifest", "normal"),
        ("meshwork-manifest", "meshwork-proto", "normal"),
        (PROXY, "tokio", "normal"),
    ]);
    assert_eq!(path_to_forbidden(&clean), None);

    for kind in ["normal", "dev", "build"] {
        let direct = graph(&[(PROXY, FORBIDDEN, kind)]);
        assert!(path_to_forbidden(&direct).is_some(), "{kind}");
    }

    let through = graph(&[
        (PROXY, "meshwork-manifest", "normal"),
        ("meshwork-manifest", FORBIDDEN, "normal"),
    ]);
    assert_eq!(
        path_to_forbidden(&through),
        Some(vec![
            PROXY.to_string(),
            "meshwork-manifest".to_string(),
            format!("{FORBIDDEN} (normal)"),
        ])
    );

    // A shared crate's own tests may use the control plane: that is not built into the proxy.
    let dev_below = graph(&[
        (PROXY, "meshwork-manifest", "normal"),
        ("meshwork-manifest", FORBIDDEN, "dev"),
    ]);
    assert_eq!(path_to_forbidden(&dev_below), None);
}
