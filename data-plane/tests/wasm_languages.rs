//! Filters from other languages' proxy-wasm SDKs run unchanged: a C filter (clang, wasm32-wasi, plugin-sdk/c) and
//! an AssemblyScript filter (@solo-io/proxy-runtime from npm, ABI 0.2.0, root context chosen by `pluginName`),
//! both built from source in the repo and run by a gateway started with `meshwork up`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_and_assemblyscript_filters() {
    let (c, asm) = (c_filter(), as_filter());
    let mesh = Mesh::start(|gw| {
        let mesh = gateway_to_backend(gw);
        format!(
            r#"{mesh}---
apiVersion: meshwork.dev/v1alpha1
kind: WasmPlugin
metadata: {{name: c-tag}}
spec:
  url: file://{c}
  phase: AUTHZ
  targetRefs: [{{kind: Gateway, name: edge}}]
  pluginConfig: from-c
---
apiVersion: meshwork.dev/v1alpha1
kind: WasmPlugin
metadata: {{name: as-tag}}
spec:
  url: file://{asm}
  pluginName: meshwork_as
  phase: STATS
  targetRefs: [{{kind: Gateway, name: edge}}]
  pluginConfig: from-as
"#,
            c = c.display(),
            asm = asm.display()
        )
    })
    .await;
    let base = mesh.base();
    let client = client();

    let r = get(&client, &format!("{base}/hello"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["headers"]["x-c-filter"], "from-c");
    assert_eq!(j["headers"]["x-as-filter"], "from-as");
    assert_eq!(r.headers.get("x-as-response").unwrap(), "1");

    let r = get(&client, &format!("{base}/hello"), &[("x-block", "1")]).await;
    assert_eq!(
        (r.status, r.text()),
        (403, "blocked by the C filter\n".to_string())
    );
    let r = get(&client, &format!("{base}/hello"), &[("x-as-block", "1")]).await;
    assert_eq!(
        (r.status, r.text()),
        (401, "blocked by the AssemblyScript filter\n".to_string())
    );
}
