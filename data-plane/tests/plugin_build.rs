//! The quickstart's way of shipping a filter: a WasmPlugin that names its crate (`spec.build`) is built from
//! source by `meshwork up` before the manifests load, its module put where `spec.url` says (here a path inside the
//! test's own manifest directory, which no build writes to by itself), and then served like any other filter.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshwork_up_builds_the_filters_a_manifest_names() {
    prereqs::wasm_target();
    let krate = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/header-policy");
    let mesh = Mesh::start(|gw| {
        let mesh = gateway_to_backend(gw);
        format!(
            r#"{mesh}---
apiVersion: meshwork.dev/v1alpha1
kind: WasmPlugin
metadata: {{name: built}}
spec:
  url: built/policy.wasm
  build: {krate}
  targetRefs: [{{kind: Gateway, name: edge}}]
  pluginConfig: {{request: {{set: {{x-built: "from-source"}}}}}}
"#,
            krate = krate.display()
        )
    })
    .await;
    let r = get(&client(), &format!("{}/hello", mesh.base()), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["headers"]["x-built"], "from-source");
}
