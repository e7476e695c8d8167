//! A push bigger than tonic's default 4 MiB message limit (issue 11, item 10): a WasmPlugin whose module is 6 MiB
//! (a real filter with a 6 MiB custom section) reaches the gateway, which applies it; before, the gateway's
//! stream failed on every push and it reconnected forever without a NACK.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;

/// `module` with a custom section of `size` zero bytes appended (still a valid module: custom sections are
/// ignored by the engine).
fn padded(module: &[u8], size: usize) -> Vec<u8> {
    let name = b"padding";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.resize(payload.len() + size, 0);
    let mut out = module.to_vec();
    out.push(0); // custom section id
    let mut len = payload.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(&payload);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_6_mib_module_is_pushed_and_applied() {
    let plugins = plugins_dir();
    let module = std::fs::read(plugins.join("meshwork_filter_header_policy.wasm")).unwrap();
    let big = tempfile::tempdir().unwrap();
    let path = big.path().join("big.wasm");
    std::fs::write(&path, padded(&module, 6 << 20)).unwrap();
    let mesh = Mesh::start(|gw| {
        let mesh = gateway_to_backend(gw);
        format!(
            r#"{mesh}---
apiVersion: meshwork.dev/v1alpha1
kind: WasmPlugin
metadata: {{name: big}}
spec:
  url: file://{p}
  targetRefs: [{{kind: Gateway, name: edge}}]
  pluginConfig: {{request: {{set: {{x-big-filter: "ran"}}}}}}
"#,
            p = path.display()
        )
    })
    .await;
    let c = client();
    let r = wait_serving(
        &c,
        &format!("{}/echo", mesh.base()),
        std::time::Duration::from_secs(30),
        "the gateway with the 6 MiB filter",
    )
    .await;
    assert_eq!(
        r.json()["headers"]["x-big-filter"],
        "ran",
        "the filter from the big module ran"
    );
}
