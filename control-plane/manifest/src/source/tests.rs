//! Loading and following real manifest directories in temp dirs: emptied directories, hostile YAML, symlink loops,
//! modules rebuilt in place.

use std::path::Path;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::files::{load_dir, watch_dir, Follow};
use super::walk::{MAX_DIR_DEPTH, MAX_FILE_BYTES};

const GATEWAY: &str = "apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {name: origin}
spec: {service: origin, endpoints: ['127.0.0.1:9']}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec: {listeners: [{name: http, port: 18080}]}
";

const PLUGIN: &str = "---
apiVersion: meshwork.dev/v1alpha1
kind: WasmPlugin
metadata: {name: filter}
spec:
  url: filter.wasm
  targetRefs: [{kind: Gateway, name: edge}]
";

fn write(dir: &Path, name: &str, text: impl AsRef<[u8]>) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn err_text<T: std::fmt::Debug>(r: Result<T, crate::diag::Diagnostics>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn an_alias_bomb_file_is_refused_with_its_name_and_line() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "m.yaml", GATEWAY);
    write(
        dir.path(),
        "bomb.yaml",
        super::yaml::tests::alias_bomb(9, 9),
    );
    let started = tokio::time::Instant::now();
    let err = err_text(load_dir(dir.path()));
    assert!(started.elapsed() < Duration::from_secs(10));
    let file = dir.path().join("bomb.yaml");
    assert!(
        err.contains(&format!("{}:", file.display()))
            && err.contains(": invalid YAML: this file expands to more than 1000000 YAML nodes"),
        "{err}"
    );
}

#[test]
fn ordinary_aliases_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let text = "apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {name: a, labels: &l {tier: web}}
spec: {service: &s origin, labels: *l, endpoints: ['127.0.0.1:9']}
---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {name: b}
spec: {service: other, labels: {app: &s other}, endpoints: ['127.0.0.1:9']}
";
    write(dir.path(), "m.yaml", text);
    let set = load_dir(dir.path()).unwrap().set;
    assert_eq!(set.workloads.len(), 2);
    let labels: Vec<_> = set.workloads[0].labels.iter().collect();
    assert_eq!(labels, [(&"tier".to_string(), &"web".to_string())]);
}

#[test]
fn a_file_over_the_size_limit_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "m.yaml", GATEWAY);
    let big = format!("# {}\n", "x".repeat(MAX_FILE_BYTES as usize));
    write(dir.path(), "big.yaml", big);
    let err = err_text(load_dir(dir.path()));
    let file = dir.path().join("big.yaml");
    assert!(
        err.contains(&format!(
            "{}:0: file too large: expected a manifest file of at most 4 MiB",
            file.display()
        )),
        "{err}"
    );
}

#[cfg(unix)]
#[test]
fn a_directory_symlink_loop_is_read_once() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "m.yaml", GATEWAY);
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    write(&sub, "route.yaml", "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec: {parentRefs: [{name: edge}], rules: [{backendRefs: [{name: origin}]}]}\n");
    std::os::unix::fs::symlink("..", sub.join("loop")).unwrap();
    std::os::unix::fs::symlink(&sub, dir.path().join("also-sub")).unwrap();
    let set = load_dir(dir.path()).unwrap().set;
    assert_eq!((set.gateways.len(), set.routes.len()), (1, 1));
}

#[test]
fn directories_nest_at_most_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "m.yaml", GATEWAY);
    let mut deep = dir.path().to_path_buf();
    for i in 0..=MAX_DIR_DEPTH {
        deep.push(format!("d{i}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    let err = err_text(load_dir(dir.path()));
    assert!(
        err.contains(&format!("{}:0: directories nest too deep", deep.display())),
        "{err}"
    );
    std::fs::remove_dir(&deep).unwrap();
    assert!(load_dir(dir.path()).is_ok());
}

#[test]
fn an_emptied_directory_is_refused_once_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "m.yaml", GATEWAY);
    let good = load_dir(dir.path()).unwrap();
    let mut follow = Follow::new(dir.path().to_path_buf(), Some(good.digest));
    assert!(follow.poll().is_none(), "nothing changed");

    std::fs::rename(dir.path().join("m.yaml"), dir.path().join("m.yaml.moved")).unwrap();
    let err = err_text(follow.poll().expect("the change is reported"));
    assert!(
        err.starts_with(&format!("{}:", dir.path().display())),
        "{err}"
    );
    assert!(err.contains("no *.yaml or *.yml files found"), "{err}");
    assert!(follow.poll().is_none(), "the same refusal is reported once");

    std::fs::rename(dir.path().join("m.yaml.moved"), dir.path().join("m.yaml")).unwrap();
    let back = follow.poll().expect("the file is back").unwrap();
    assert_eq!(back.set, good.set);
}

#[test]
fn a_directory_without_documents_is_refused_at_startup_and_when_followed() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "m.yaml", GATEWAY);
    let good = load_dir(dir.path()).unwrap();
    let mut follow = Follow::new(dir.path().to_path_buf(), Some(good.digest));

    write(dir.path(), "m.yaml", "# emptied by a deploy tool\n---\n");
    let err = err_text(follow.poll().expect("the change is reported"));
    assert!(err.contains("no manifest documents"), "{err}");
    assert!(
        err.starts_with(&format!("{}:", dir.path().display())),
        "{err}"
    );
    let err = err_text(load_dir(dir.path()));
    assert!(err.contains("no manifest documents"), "{err}");
}

#[tokio::test]
async fn the_watcher_reports_an_emptied_directory() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "m.yaml", GATEWAY);
    let good = load_dir(dir.path()).unwrap();
    let mut changes = watch_dir(
        dir.path().to_path_buf(),
        Duration::from_millis(10),
        Some(good.digest),
    );
    std::fs::remove_file(dir.path().join("m.yaml")).unwrap();
    let change = tokio::time::timeout(Duration::from_secs(10), changes.recv())
        .await
        .expect("a report within 10 s")
        .expect("the watcher runs");
    assert!(err_text(change).contains("no *.yaml or *.yml files found"));
}

#[test]
fn a_module_rebuilt_in_place_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "m.yaml", format!("{GATEWAY}{PLUGIN}"));
    write(dir.path(), "filter.wasm", b"\0asm first build");
    let good = load_dir(dir.path()).unwrap();
    let mut follow = Follow::new(dir.path().to_path_buf(), Some(good.digest));
    assert!(follow.poll().is_none(), "nothing changed");

    let rebuilt = b"\0asm second build, longer";
    write(dir.path(), "filter.wasm", rebuilt);
    let next = follow
        .poll()
        .expect("the rebuilt module is a change")
        .unwrap();
    let plugin = &next.set.wasm_plugins[0];
    assert_eq!(
        (plugin.digest.as_str(), plugin.code.as_slice()),
        (hex(rebuilt).as_str(), &rebuilt[..])
    );
    assert!(follow.poll().is_none(), "applied once");
}

/// A settled module's digest is reused while its size and time stay; a rebuild of the same size changes its time.
#[test]
fn a_settled_module_rebuilt_to_the_same_size_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "m.yaml", format!("{GATEWAY}{PLUGIN}"));
    let module = dir.path().join("filter.wasm");
    let set_age = |secs: u64| {
        let t = SystemTime::now() - Duration::from_secs(secs);
        let f = std::fs::File::options().write(true).open(&module).unwrap();
        f.set_modified(t).unwrap();
    };
    write(dir.path(), "filter.wasm", b"\0asm build A");
    set_age(60);
    let good = load_dir(dir.path()).unwrap();
    let mut follow = Follow::new(dir.path().to_path_buf(), Some(good.digest));
    assert!(follow.poll().is_none());
    assert!(follow.poll().is_none(), "cached digest");

    write(dir.path(), "filter.wasm", b"\0asm build B");
    set_age(30);
    let next = follow.poll().expect("a new time is a change").unwrap();
    assert_eq!(next.set.wasm_plugins[0].digest, hex(b"\0asm build B"));
}

#[test]
fn a_missing_module_that_appears_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "m.yaml", GATEWAY);
    let good = load_dir(dir.path()).unwrap();
    let mut follow = Follow::new(dir.path().to_path_buf(), Some(good.digest));
    write(dir.path(), "m.yaml", format!("{GATEWAY}{PLUGIN}"));
    let err = err_text(follow.poll().expect("the edit is a change"));
    assert!(err.contains("spec.url: cannot read the module"), "{err}");
    assert!(follow.poll().is_none());
    write(dir.path(), "filter.wasm", b"\0asm built");
    let next = follow
        .poll()
        .expect("the module appearing is a change")
        .unwrap();
    assert_eq!(next.set.wasm_plugins.len(), 1);
}

/// A followed directory whose WasmPlugin names a FIFO: the poll reports the manifest error instead of blocking the
/// watcher for good on opening the FIFO to hash it.
#[test]
fn following_never_opens_a_module_that_is_not_a_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "m.yaml", GATEWAY);
    let made = std::process::Command::new("mkfifo")
        .arg(dir.path().join("filter.wasm"))
        .status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo");
    write(dir.path(), "p.yaml", PLUGIN);
    let mut follow = Follow::new(dir.path().to_path_buf(), None);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(follow.poll().map(err_text)));
    let err = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the poll returns");
    assert!(
        err.is_some_and(|e| e.contains("spec.url:") && e.contains("is not a regular file")),
        "expected the manifest error"
    );
}

/// A set refused for a missing certificate file is loaded once the file appears, with no manifest edit.
#[test]
fn a_missing_certificate_that_appears_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let certificate = "apiVersion: meshwork.dev/v1alpha1
kind: TLSCertificate
metadata: {name: shop}
spec: {certFile: shop.crt, keyFile: shop.key}
";
    write(dir.path(), "m.yaml", GATEWAY);
    let good = load_dir(dir.path()).unwrap();
    let mut follow = Follow::new(dir.path().to_path_buf(), Some(good.digest));
    write(dir.path(), "m.yaml", format!("{GATEWAY}---\n{certificate}"));
    let err = err_text(follow.poll().expect("the edit is a change"));
    assert!(err.contains("spec.certFile"), "{err}");
    assert!(follow.poll().is_none(), "the same error is reported once");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["shop.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    write(dir.path(), "shop.key", key.serialize_pem());
    write(dir.path(), "shop.crt", cert.pem());
    let next = follow
        .poll()
        .expect("the certificate appearing is a change")
        .unwrap();
    assert_eq!(next.set.tls_certificates.len(), 1);
}
