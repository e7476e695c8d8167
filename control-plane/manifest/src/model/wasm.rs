//! `meshwork.dev/v1alpha1` WasmPlugin, with Istio's field names where they exist. The module file is read and
//! verified here, so a missing file or a wrong sha256 is a manifest error with its line.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::read::{index, parse_bytes, Reader};
use super::Meta;
use crate::source::yaml::{Kind, Node};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasmTargetKind {
    Gateway,
    Service,
    HttpRoute,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmTarget {
    pub kind: WasmTargetKind,
    pub name: String,
    pub line: usize,
    pub field: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmPlugin {
    pub meta: Meta,
    pub digest: String,
    pub code: Arc<Vec<u8>>,
    pub root_id: String,
    pub config: Vec<u8>,
    /// AUTHN 0, AUTHZ 1, STATS 2, UNSPECIFIED_PHASE 3: the order filters run in, then higher priority first.
    pub phase: u8,
    pub priority: i64,
    pub fail_open: bool,
    pub env: Vec<(String, String)>,
    pub targets: Vec<WasmTarget>,
    pub memory_limit: u64,
    pub cpu_per_call: Duration,
    pub body_buffer: u64,
    /// `spec.build` (a Meshwork extension): the Rust filter crate this module is built from. `meshwork up` builds
    /// it (for wasm32-wasip1, release) and puts the module where `url` says before it loads the manifests.
    pub build: Option<PathBuf>,
}

pub const DEFAULT_MEMORY: u64 = 64 << 20;
pub const DEFAULT_CPU_PER_CALL: Duration = Duration::from_millis(100);
pub const DEFAULT_BODY_BUFFER: u64 = 1 << 20;

/// YAML -> JSON for `pluginConfig`: plain scalars keep their YAML type (numbers, booleans, null), quoted ones are
/// strings.
fn to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value;
    match &node.kind {
        Kind::Null => Value::Null,
        Kind::Scalar {
            value,
            quoted: true,
        } => Value::String(value.clone()),
        Kind::Scalar {
            value,
            quoted: false,
        } => match value.as_str() {
            "true" | "True" | "TRUE" => Value::Bool(true),
            "false" | "False" | "FALSE" => Value::Bool(false),
            v => v
                .parse::<i64>()
                .map(Value::from)
                .or_else(|_| v.parse::<f64>().map(Value::from))
                .unwrap_or_else(|_| Value::String(value.clone())),
        },
        Kind::Seq(items) => Value::Array(items.iter().map(to_json).collect()),
        Kind::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| (k.as_scalar().unwrap_or("").to_string(), to_json(v)))
                .collect(),
        ),
    }
}

/// The largest Wasm module a WasmPlugin may use: every push must fit the proxies' message limit
/// (`meshwork_proto::MAX_PUSH_BYTES`) with the modules it carries.
pub const MAX_MODULE_BYTES: u64 = 16 << 20;

pub(super) fn parse(r: &mut Reader<'_>, meta: Meta, spec: &Node) -> Option<WasmPlugin> {
    let s = r.obj(
        spec,
        "spec",
        &[
            "url",
            "sha256",
            "pluginConfig",
            "pluginName",
            "phase",
            "priority",
            "failStrategy",
            "vmConfig",
            "targetRefs",
            "limits",
            "build",
        ],
    )?;
    let build = build_crate(r, &s);
    let url = r.req_string(
        &s,
        "url",
        "the module: a path relative to this manifest, or file:///absolute/path.wasm",
    )?;
    let url_line = s.get("url").map_or(s.line, |n| n.line);
    if url.starts_with("http://") || url.starts_with("https://") || url.starts_with("oci://") {
        r.error(
            url_line,
            "spec.url",
            "remote modules are not supported yet: expected a file path or file:// URL",
        );
        return None;
    }
    let path = module_path(&r.sink.file, &url);
    let code = module_code(r, &path, url_line, build.as_deref())?;
    let digest: String = Sha256::digest(&code)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if let Some(want) = r.opt_string(&s, "sha256") {
        if want.to_ascii_lowercase() != digest {
            r.error(
                s.get("sha256").map_or(s.line, |n| n.line),
                "spec.sha256",
                format!(
                    "expected the module's sha256 {want}, but {} has {digest}",
                    path.display()
                ),
            );
            return None;
        }
    }
    let config = match s.get("pluginConfig") {
        Some(n) => match &n.kind {
            Kind::Scalar { value, .. } => value.clone().into_bytes(),
            _ => to_json(n).to_string().into_bytes(),
        },
        None => Vec::new(),
    };
    let root_id = r.opt_string(&s, "pluginName").unwrap_or_default();
    let phase = match s.get("phase") {
        Some(n) => match r
            .choice(
                n,
                "spec.phase",
                &["AUTHN", "AUTHZ", "STATS", "UNSPECIFIED_PHASE"],
            )?
            .as_str()
        {
            "AUTHN" => 0,
            "AUTHZ" => 1,
            "STATS" => 2,
            _ => 3,
        },
        None => 3,
    };
    let priority = match s.get("priority") {
        Some(n) => r.int(n, "spec.priority", -1_000_000, 1_000_000)?,
        None => 0,
    };
    let fail_open = match s.get("failStrategy") {
        Some(n) => r.choice(n, "spec.failStrategy", &["FAIL_CLOSE", "FAIL_OPEN"])? == "FAIL_OPEN",
        None => false,
    };
    let mut env = Vec::new();
    if let Some(n) = s.get("vmConfig") {
        let vm = r.obj(n, "spec.vmConfig", &["env"])?;
        if let Some(list) = vm.get("env") {
            for (i, e) in r
                .list(list, "spec.vmConfig.env")
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                let path = index("spec.vmConfig.env", i);
                let Some(o) = r.obj(e, &path, &["name", "value"]) else {
                    continue;
                };
                if let (Some(k), Some(v)) = (
                    r.req_string(&o, "name", "a variable name"),
                    r.req_string(&o, "value", "its value"),
                ) {
                    env.push((k, v));
                }
            }
        }
    }
    let mut targets = Vec::new();
    match s.get("targetRefs") {
        Some(n) => {
            for (i, t) in r.list(n, "spec.targetRefs").unwrap_or_default().iter().enumerate() {
                let path = index("spec.targetRefs", i);
                let Some(o) = r.obj(t, &path, &["group", "kind", "name"]) else { continue };
                if let Some(g) = o.get("group") {
                    r.string(g, &o.field("group"));
                }
                let kind = match r.required(&o, "kind", "Gateway, Service or HTTPRoute").and_then(|k| r.choice(k, &o.field("kind"), &["Gateway", "Service", "HTTPRoute"])) {
                    Some(k) if k == "Gateway" => WasmTargetKind::Gateway,
                    Some(k) if k == "Service" => WasmTargetKind::Service,
                    Some(_) => WasmTargetKind::HttpRoute,
                    None => continue,
                };
                if let Some(name) = r.req_string(&o, "name", "the target's name") {
                    targets.push(WasmTarget { kind, name, line: o.line, field: path });
                }
            }
        }
        None => r.error(s.line, "spec.targetRefs", "required field is missing: expected a list of Gateway, Service or HTTPRoute references"),
    }
    let (mut memory_limit, mut cpu_per_call, mut body_buffer) =
        (DEFAULT_MEMORY, DEFAULT_CPU_PER_CALL, DEFAULT_BODY_BUFFER);
    if let Some(n) = s.get("limits") {
        let l = r.obj(n, "spec.limits", &["memory", "cpuPerCall", "bodyBuffer"])?;
        if let Some(m) = l.get("memory") {
            let text = r.string(m, "spec.limits.memory")?;
            match parse_bytes(&text) {
                Some(b) if b >= 1 << 20 => memory_limit = b,
                _ => r.error(
                    m.line,
                    "spec.limits.memory",
                    format!("expected a size of at least 1Mi such as \"32Mi\", got {text:?}"),
                ),
            }
        }
        if let Some(b) = l.get("bodyBuffer") {
            let text = r.string(b, "spec.limits.bodyBuffer")?;
            match parse_bytes(&text) {
                Some(v) => body_buffer = v,
                None => r.error(
                    b.line,
                    "spec.limits.bodyBuffer",
                    format!("expected a size such as \"64Ki\" or \"1Mi\", got {text:?}"),
                ),
            }
        }
        if let Some(c) = l.get("cpuPerCall") {
            cpu_per_call = r
                .duration(c, "spec.limits.cpuPerCall")
                .filter(|d| !d.is_zero())?;
        }
    }
    Some(WasmPlugin {
        meta,
        digest,
        code: Arc::new(code),
        root_id,
        config,
        phase,
        priority,
        fail_open,
        env,
        targets,
        memory_limit,
        cpu_per_call,
        body_buffer,
        build,
    })
}

/// Why a module file could not be read.
enum ReadError {
    TooLarge(u64),
    NotAFile,
    Io(std::io::Error),
}

/// Reads a module file: only a regular file (a device such as /dev/zero never ends, a FIFO blocks whoever opens
/// it), and at most [`MAX_MODULE_BYTES`] of it, even if it grows while it is read.
fn read_module(path: &Path) -> Result<Vec<u8>, ReadError> {
    let meta = std::fs::metadata(path).map_err(ReadError::Io)?;
    if !meta.is_file() {
        return Err(ReadError::NotAFile);
    }
    if meta.len() > MAX_MODULE_BYTES {
        return Err(ReadError::TooLarge(meta.len()));
    }
    let mut code = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_MODULE_BYTES + 1).read_to_end(&mut code))
        .map_err(ReadError::Io)?;
    match code.len() as u64 {
        len if len > MAX_MODULE_BYTES => Err(ReadError::TooLarge(len)),
        _ => Ok(code),
    }
}

/// The module `spec.url` names, or an error on its line.
fn module_code(
    r: &mut Reader<'_>,
    path: &Path,
    url_line: usize,
    build: Option<&Path>,
) -> Option<Vec<u8>> {
    let message = match read_module(path) {
        Ok(code) => return Some(code),
        Err(ReadError::TooLarge(len)) => format!(
            "the module {} is {len} bytes: expected at most {} MiB",
            path.display(),
            MAX_MODULE_BYTES >> 20
        ),
        Err(ReadError::NotAFile) => format!(
            "{} is not a regular file: expected a .wasm module file",
            path.display()
        ),
        Err(ReadError::Io(e)) => {
            let hint = match build {
                Some(b) => format!(
                    " (build it: `meshwork plugin build {}`; `meshwork up` does it itself)",
                    b.display()
                ),
                None => String::new(),
            };
            format!("cannot read the module {}: {e}{hint}", path.display())
        }
    };
    r.error(url_line, "spec.url", message);
    None
}

/// A module path as `spec.url` gives it (relative to the manifest file, or `file://`), made absolute.
fn module_path(manifest: &Path, url: &str) -> PathBuf {
    let path = Path::new(url.strip_prefix("file://").unwrap_or(url));
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        manifest.parent().unwrap_or(Path::new(".")).join(path)
    }
}

/// `spec.build`: a crate directory (relative to the manifest file) holding a Cargo.toml.
fn build_crate(r: &mut Reader<'_>, s: &super::read::Obj<'_>) -> Option<PathBuf> {
    let dir = r.opt_string(s, "build")?;
    let path = module_path(&r.sink.file, &dir);
    if !path.join("Cargo.toml").is_file() {
        r.error(
            s.get("build").map_or(s.line, |n| n.line),
            "spec.build",
            format!(
                "expected a Rust filter crate directory, but {} has no Cargo.toml",
                path.display()
            ),
        );
        return None;
    }
    Some(path)
}

/// A WasmPlugin whose module is built from source (`spec.build`): the crate, and where the module must end up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredBuild {
    pub plugin: String,
    pub crate_dir: PathBuf,
    pub module: PathBuf,
}

/// Every `spec.build` in these manifest files, read before the manifests are loaded (loading needs the modules).
/// Documents that are not WasmPlugins, or are malformed, are skipped here: loading reports them.
pub fn declared_builds(files: &[(PathBuf, String)]) -> Vec<DeclaredBuild> {
    let mut out = Vec::new();
    for_each_spec(files, |file, doc, spec| {
        let (Some(build), Some(url)) = (scalar(spec, "build"), scalar(spec, "url")) else {
            return;
        };
        let name = field(doc, "metadata").and_then(|m| scalar(m, "name"));
        out.push(DeclaredBuild {
            plugin: name.unwrap_or_default().to_string(),
            crate_dir: module_path(file, build),
            module: module_path(file, url),
        });
    });
    out
}

/// The module files these manifests reference (`spec.url` of every WasmPlugin), sorted, each once: what a
/// directory watcher must follow besides the manifests, since a module rebuilt in place changes no manifest.
/// Malformed documents are skipped here: loading reports them.
pub fn module_files(files: &[(PathBuf, String)]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for_each_spec(files, |file, _, spec| {
        if let Some(url) = scalar(spec, "url") {
            out.push(module_path(file, url));
        }
    });
    out.sort();
    out.dedup();
    out
}

/// Calls `f` with the file, the document and the `spec` of every WasmPlugin document that parses.
fn for_each_spec(files: &[(PathBuf, String)], f: impl FnMut(&Path, &Node, &Node)) {
    for_each_spec_of(files, "WasmPlugin", f)
}

/// Calls `f` with the file, the document and the `spec` of every document of `kind` that parses.
pub(crate) fn for_each_spec_of(
    files: &[(PathBuf, String)],
    kind: &str,
    mut f: impl FnMut(&Path, &Node, &Node),
) {
    for (file, text) in files {
        let Ok(docs) = crate::source::yaml::parse_documents(text) else {
            continue;
        };
        for doc in &docs {
            if field(doc, "kind").and_then(Node::as_scalar) != Some(kind) {
                continue;
            }
            if let Some(spec) = field(doc, "spec") {
                f(file, doc, spec);
            }
        }
    }
}

pub(crate) fn field<'n>(n: &'n Node, k: &str) -> Option<&'n Node> {
    match &n.kind {
        Kind::Map(entries) => entries
            .iter()
            .find(|(key, _)| key.as_scalar() == Some(k))
            .map(|(_, v)| v),
        _ => None,
    }
}

pub(crate) fn scalar<'n>(n: &'n Node, k: &str) -> Option<&'n str> {
    field(n, k).and_then(Node::as_scalar)
}
