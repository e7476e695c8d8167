//! Property tests of the manifest reader, where untrusted YAML enters: arbitrary text, and generated manifests
//! (every kind, fields and values drawn from what the reader knows and from garbage, random nesting, block and
//! flow style, anchors and aliases) go through `load_texts`, which must never panic and must name one of the files
//! and a line inside it in every error.
//!
//! Bounded for CI (`cargo test` runs them): each property has a case count that takes a few seconds on a small
//! machine; the `PROPTEST_CASES` environment variable overrides it for longer runs (`proptest!` reads it).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::files::load_texts;
use super::yaml::{parse_documents, Kind, Node};
use crate::model::MtlsMode;

/// A YAML value to write out. Map keys are values too: a mapping used as a key is YAML the reader must refuse.
#[derive(Debug, Clone)]
enum Y {
    /// Written as is: numbers, booleans, words (and whatever else a test puts there).
    Plain(String),
    /// Written double-quoted, escaped: any text.
    Quoted(String),
    Seq(Vec<Y>, Flow),
    Map(Vec<(Y, Y)>, Flow),
    /// `&aN value`.
    Anchor(u8, Box<Y>),
    /// `*aN`, defined earlier or not.
    Alias(u8),
}

/// Whether a collection is written in flow style (`[a, b]`, `{k: v}`) rather than block style.
type Flow = bool;

fn quote(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
}

/// `y` on one line.
fn flow(y: &Y, out: &mut String) {
    match y {
        Y::Plain(s) => out.push_str(s),
        Y::Quoted(s) => quote(s, out),
        // The space ends the alias's name, which could otherwise run on into a `:` after it.
        Y::Alias(a) => {
            let _ = write!(out, "*a{a} ");
        }
        Y::Anchor(a, v) => {
            let _ = write!(out, "&a{a} ");
            flow(v, out);
        }
        Y::Seq(items, _) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                out.push_str(if i > 0 { ", " } else { "" });
                flow(item, out);
            }
            out.push(']');
        }
        Y::Map(entries, _) => {
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                out.push_str(if i > 0 { ", " } else { "" });
                flow(k, out);
                out.push_str(": ");
                flow(v, out);
            }
            out.push('}');
        }
    }
}

fn is_block(y: &Y) -> bool {
    match y {
        Y::Seq(items, false) => !items.is_empty(),
        Y::Map(entries, false) => !entries.is_empty(),
        _ => false,
    }
}

/// `y` as the value after `key:` or `-` (the line so far has no newline); its block children at `indent`.
fn value(y: &Y, indent: usize, out: &mut String) {
    match y {
        Y::Map(entries, false) if !entries.is_empty() => {
            out.push('\n');
            map_lines(entries, indent, out);
        }
        Y::Seq(items, false) if !items.is_empty() => {
            out.push('\n');
            for item in items {
                out.push_str(&" ".repeat(indent));
                out.push('-');
                value(item, indent + 2, out);
            }
        }
        Y::Anchor(a, inner) if is_block(inner) => {
            let _ = write!(out, " &a{a}");
            value(inner, indent, out);
        }
        _ => {
            out.push(' ');
            flow(y, out);
            out.push('\n');
        }
    }
}

fn map_lines(entries: &[(Y, Y)], indent: usize, out: &mut String) {
    for (k, v) in entries {
        out.push_str(&" ".repeat(indent));
        flow(k, out);
        out.push(':');
        value(v, indent + 2, out);
    }
}

/// One document: a block mapping at the root, anything else on one line.
fn document(y: &Y, out: &mut String) {
    match y {
        Y::Map(entries, false) => map_lines(entries, 0, out),
        _ => {
            flow(y, out);
            out.push('\n');
        }
    }
}

fn from_node(n: &Node) -> Y {
    match &n.kind {
        Kind::Null => Y::Plain("~".into()),
        Kind::Scalar {
            value,
            quoted: false,
        } => Y::Plain(value.clone()),
        Kind::Scalar {
            value,
            quoted: true,
        } => Y::Quoted(value.clone()),
        Kind::Seq(items) => Y::Seq(items.iter().map(from_node).collect(), false),
        Kind::Map(entries) => Y::Map(
            entries
                .iter()
                .map(|(k, v)| (from_node(k), from_node(v)))
                .collect(),
            false,
        ),
    }
}

/// The module file every WasmPlugin template names; replaced by a real file's path when the text is loaded.
const MODULE: &str = "MODULE_PATH";

/// One valid manifest set using every kind and most fields; the documents refer to each other (services, the
/// gateway, the route), so mutating one of them also exercises the cross-object checks.
const TEMPLATES: &str = r#"apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {name: backend-v1, namespace: default, labels: {team: a}}
spec:
  service: backend
  labels: {version: v1}
  replicas: 2
  protocol: http
  command: ["app", "--port", "9000"]
  env: {MODE: fast}
  mtls: {mode: STRICT}
---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {name: backend-v2}
spec: {service: backend, labels: {version: v2}, protocol: http, command: app serve}
---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {name: origin}
spec: {service: origin, endpoints: ['127.0.0.1:9', '[::1]:80']}
---
apiVersion: meshwork.dev/v1alpha1
kind: Mesh
metadata: {name: mesh}
spec:
  trustDomain: prod.example.org
  mtls: {mode: PERMISSIVE}
  identity: {certificateLifetime: 24h}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  gatewayClassName: meshwork
  listeners:
    - {name: http, port: 18080, protocol: HTTP}
    - {name: admin, port: 18081}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop}
spec:
  parentRefs: [{name: edge, sectionName: http}]
  hostnames: [shop.example.com, '*.example.com']
  rules:
    - name: api
      matches:
        - path: {type: PathPrefix, value: /api}
          headers: [{name: x-user, value: beta}, {type: RegularExpression, name: x-id, value: '[0-9]+'}]
          queryParams: [{name: debug, value: '1'}]
          method: GET
        - path: {type: RegularExpression, value: '/v[12]/.*'}
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier: {set: [{name: x-a, value: b}], add: [{name: x-c, value: d}], remove: [x-e]}
        - type: ResponseHeaderModifier
          responseHeaderModifier: {set: [{name: x-served-by, value: meshwork}]}
        - type: URLRewrite
          urlRewrite: {hostname: internal, path: {type: ReplaceFullPath, replaceFullPath: /v2}}
        - type: RequestMirror
          requestMirror: {backendRef: {name: origin}, percent: 10}
      backendRefs:
        - {group: meshwork.dev, kind: Workload, name: backend-v1, weight: 90}
        - {name: backend, port: 80, weight: 10}
      timeouts: {request: 2s}
    - matches: [{path: {type: Exact, value: /old}}]
      filters:
        - type: RequestRedirect
          requestRedirect:
            scheme: https
            hostname: new.example.com
            port: 443
            statusCode: 301
            path: {type: ReplaceFullPath, replaceFullPath: /new}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: rpc}
spec:
  parentRefs: [{kind: Service, name: backend}]
  rules:
    - matches: [{method: {service: shop.Cart, method: Add}}, {method: {type: RegularExpression, service: 'shop\..*'}}]
      backendRefs: [{name: backend}]
---
apiVersion: meshwork.dev/v1alpha1
kind: WasmPlugin
metadata: {name: filter}
spec:
  url: MODULE_PATH
  pluginName: root
  phase: AUTHN
  priority: 10
  failStrategy: FAIL_OPEN
  pluginConfig: {header: x-api-key, keys: {demo: user}, n: 1.5, on: true}
  vmConfig: {env: [{name: GREETING, value: hi}]}
  targetRefs: [{kind: Gateway, name: edge}, {kind: Service, name: backend}]
  limits: {memory: 32Mi, cpuPerCall: 50ms, bodyBuffer: 64Ki}
---
apiVersion: meshwork.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: backend}
spec:
  targetRef: {kind: Service, name: backend}
  timeouts: {request: 2s, perTry: 500ms, connect: 1s, idle: 60s}
  retry:
    attempts: 3
    on: [5xx, connect-failure, unavailable, retriable-status-codes]
    statusCodes: [503]
    backoff: {base: 25ms, max: 250ms}
    budget: {ratio: 0.2, minPerSecond: 10}
  circuitBreaker:
    consecutiveFailures: 5
    failureRate: {threshold: 0.5, minRequests: 20, window: 10s}
    openFor: 5s
    maxOpenFor: 60s
    halfOpenProbes: 1
    fallback: {status: 503, headers: {retry-after: "5"}, body: "resting"}
  outlierDetection: {consecutive5xx: 5, baseEjectionTime: 30s, maxEjectionPercent: 50}
  rateLimit: {requestsPerSecond: 100, burst: 20, key: {header: x-user}, onLimit: reject}
  bulkhead: {maxConcurrentRequests: 100, maxPending: 20}
  loadBalancer: {policy: consistent-hash, hashOn: {header: x-user}}
  healthCheck: {path: /healthz, interval: 5s, timeout: 1s, healthyThreshold: 2, unhealthyThreshold: 3}
  faultInjection:
    delay: {percent: 10, fixed: 200ms}
    abort: {percent: 5, status: 503}
    header: {name: x-chaos}
---
apiVersion: meshwork.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: shop}
spec:
  targetRef: {kind: HTTPRoute, name: shop}
  timeouts: {request: 1s}
  rateLimit: {requestsPerSecond: 5, onLimit: queue, maxDelay: 500ms, side: server}
"#;

fn templates() -> Vec<Y> {
    parse_documents(TEMPLATES)
        .expect("the templates are valid YAML")
        .iter()
        .map(from_node)
        .collect()
}

/// Plain scalars, separated by spaces: what fields expect, at and beyond their limits.
const WORDS: &str = "\
    0 1 -1 2 3 64 65 100 101 399 503 65535 65536 4294967296 9223372036854775808 0.5 1.5 1e309 .inf -.inf .nan NaN \
    0x10 true false ~ null 1s 0s 0ms 250ms 1m30s 99999h 100000h 1h1m1s1ms 1s1s1s1s1s 1d 16Mi 1Ki 1Gi 0Mi \
    99999999999Gi Service HTTPRoute Gateway Workload Exact PathPrefix RegularExpression ReplaceFullPath \
    ReplacePrefixMatch RequestHeaderModifier ResponseHeaderModifier URLRewrite RequestRedirect RequestMirror GET \
    POST http https http2 grpc HTTP backend backend-v1 backend-v2 edge shop origin default mesh Bad_Name FAIL_OPEN \
    FAIL_CLOSE AUTHN STATS queue reject server client consistent-hash round-robin peak-ewma sourceIP 5xx \
    connect-failure meshwork.dev meshwork.dev/v1alpha1 gateway.networking.k8s.io/v1 / /api x-user MODULE_PATH \
    STRICT PERMISSIVE DISABLED strict 59s 1m 24h 2160h 2161h cluster.local Example.COM";

/// Quoted scalars: text a plain scalar cannot carry, and hostile values.
const TEXTS: &[&str] = &[
    "",
    " ",
    "(",
    ")",
    "a{1000}{1000}",
    "[[:alpha:]]",
    ".*",
    "x{9999}",
    "a b",
    "Héllo",
    "\u{0}",
    "\u{feff}",
    "*.example.com",
    "*",
    "*.",
    "-x",
    "x-",
    ":path",
    ":authority",
    "bad header",
    "x\ny",
    "127.0.0.1:9",
    "[::1]:0",
    "localhost:80",
    "256.0.0.1:1",
    "file:///nonexistent/f.wasm",
    "http://x/f.wasm",
    "oci://x/y",
    "/dev/zero",
    "/dev/null",
    "/",
    "//",
    "../..",
    "1s",
    "12",
    MODULE,
];

/// Field names the reader knows (at every level), and a few it does not; separated by spaces.
const KEYS: &str = "\
    apiVersion kind metadata spec name namespace labels annotations service replicas protocol command env \
    endpoints gatewayClassName listeners port sectionName parentRefs hostnames rules matches filters backendRefs \
    timeouts path type value headers queryParams method group weight requestHeaderModifier responseHeaderModifier \
    urlRewrite requestRedirect requestMirror set add remove hostname scheme statusCode replaceFullPath \
    replacePrefixMatch backendRef percent request url sha256 pluginConfig pluginName phase priority failStrategy \
    vmConfig targetRefs targetRef limits memory cpuPerCall bodyBuffer build retry attempts on statusCodes backoff \
    base max budget ratio minPerSecond circuitBreaker consecutiveFailures failureRate threshold minRequests window \
    openFor maxOpenFor halfOpenProbes fallback status body outlierDetection consecutive5xx baseEjectionTime \
    maxEjectionPercent rateLimit requestsPerSecond burst key header onLimit maxDelay side bulkhead \
    maxConcurrentRequests maxPending loadBalancer policy hashOn cookie healthCheck interval timeout \
    healthyThreshold unhealthyThreshold faultInjection delay fixed abort perTry connect idle grpcStatus \
    trustDomain mtls mode identity certificateLifetime unknownField <<";

const KINDS: &str = "\
    Workload Mesh WasmPlugin TrafficPolicy Gateway HTTPRoute GRPCRoute Service";

fn words(list: &'static str) -> Vec<&'static str> {
    list.split_whitespace().collect()
}

fn plain(s: &str) -> Y {
    Y::Plain(s.to_string())
}

fn scalar() -> impl Strategy<Value = Y> {
    prop_oneof![
        6 => prop::sample::select(words(WORDS)).prop_map(plain),
        4 => prop::sample::select(TEXTS).prop_map(|t| Y::Quoted(t.to_string())),
        1 => any::<String>().prop_map(Y::Quoted),
        1 => "[a-z0-9.:/*&!|>#%@-]{0,12}".prop_map(Y::Plain),
        1 => any::<i64>().prop_map(|n| Y::Plain(n.to_string())),
        1 => (0u8..4).prop_map(Y::Alias),
    ]
}

fn key() -> impl Strategy<Value = Y> {
    prop_oneof![
        8 => prop::sample::select(words(KEYS)).prop_map(plain),
        1 => scalar(),
    ]
}

/// Any value: scalars, lists and mappings nested up to four deep, anchored or not.
fn any_y() -> impl Strategy<Value = Y> {
    scalar().prop_recursive(4, 40, 5, |inner| {
        prop_oneof![
            (prop::collection::vec(inner.clone(), 0..5), any::<bool>())
                .prop_map(|(items, f)| Y::Seq(items, f)),
            (
                prop::collection::vec((key(), inner.clone()), 0..5),
                any::<bool>()
            )
                .prop_map(|(entries, f)| Y::Map(entries, f)),
            // A mapping as a key: valid YAML, never a valid manifest.
            (inner.clone(), inner.clone()).prop_map(|(k, v)| Y::Map(vec![(k, v)], true)),
            (0u8..4, inner).prop_map(|(a, v)| Y::Anchor(a, Box::new(v))),
        ]
    })
}

/// A document of any kind with a random spec.
fn random_doc() -> impl Strategy<Value = Y> {
    let api = prop::sample::select(
        &[
            "meshwork.dev/v1alpha1",
            "gateway.networking.k8s.io/v1",
            "v1",
        ][..],
    );
    let name = prop::sample::select(&["backend", "edge", "shop", "origin", "Bad_Name", ""][..]);
    let spec = prop::collection::vec((key(), any_y()), 0..6);
    (api, prop::sample::select(words(KINDS)), name, spec).prop_map(|(api, kind, name, spec)| {
        let meta = Y::Map(vec![(plain("name"), Y::Quoted(name.into()))], true);
        Y::Map(
            vec![
                (plain("apiVersion"), plain(api)),
                (plain("kind"), plain(kind)),
                (plain("metadata"), meta),
                (plain("spec"), Y::Map(spec, false)),
            ],
            false,
        )
    })
}

/// A change to a template document; node indexes count in pre-order (keys included), modulo the node count.
#[derive(Debug, Clone)]
enum Edit {
    Replace(usize, Y),
    /// Drops a child of a list or mapping.
    Remove(usize, usize),
    /// Adds an entry to a mapping, an item to a list.
    Insert(usize, Y, Y),
    Anchor(usize, u8),
    Alias(usize, u8),
    /// Writes a list or mapping in the other style.
    Restyle(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let at = any::<usize>();
    prop_oneof![
        3 => (at, any_y()).prop_map(|(i, v)| Edit::Replace(i, v)),
        2 => (at, any::<usize>()).prop_map(|(i, c)| Edit::Remove(i, c)),
        2 => (at, key(), any_y()).prop_map(|(i, k, v)| Edit::Insert(i, k, v)),
        1 => (at, 0u8..4).prop_map(|(i, a)| Edit::Anchor(i, a)),
        1 => (at, 0u8..4).prop_map(|(i, a)| Edit::Alias(i, a)),
        1 => at.prop_map(Edit::Restyle),
    ]
}

fn count(y: &Y) -> usize {
    1 + match y {
        Y::Seq(items, _) => items.iter().map(count).sum(),
        Y::Map(entries, _) => entries.iter().map(|(k, v)| count(k) + count(v)).sum(),
        Y::Anchor(_, v) => count(v),
        _ => 0,
    }
}

fn nth<'a>(y: &'a mut Y, n: &mut usize) -> Option<&'a mut Y> {
    if *n == 0 {
        return Some(y);
    }
    *n -= 1;
    match y {
        Y::Seq(items, _) => items.iter_mut().find_map(|i| nth(i, n)),
        Y::Map(entries, _) => entries
            .iter_mut()
            .find_map(|(k, v)| nth(k, n).or_else(|| nth(v, n))),
        Y::Anchor(_, v) => nth(v, n),
        _ => None,
    }
}

fn apply(mut y: Y, edits: &[Edit]) -> Y {
    for e in edits {
        let total = count(&y);
        let at = |i: &usize| i % total;
        let node = match e {
            Edit::Replace(i, _)
            | Edit::Remove(i, _)
            | Edit::Insert(i, _, _)
            | Edit::Anchor(i, _)
            | Edit::Alias(i, _)
            | Edit::Restyle(i) => nth(&mut y, &mut at(i)),
        };
        let Some(node) = node else { continue };
        match (e, node) {
            (Edit::Replace(_, v), node) => *node = v.clone(),
            (Edit::Remove(_, c), Y::Seq(items, _)) if !items.is_empty() => {
                items.remove(c % items.len());
            }
            (Edit::Remove(_, c), Y::Map(entries, _)) if !entries.is_empty() => {
                entries.remove(c % entries.len());
            }
            (Edit::Insert(_, _, v), Y::Seq(items, _)) => items.push(v.clone()),
            (Edit::Insert(_, k, v), Y::Map(entries, _)) => entries.push((k.clone(), v.clone())),
            (Edit::Anchor(_, a), node) => {
                let inner = std::mem::replace(node, Y::Alias(0));
                *node = Y::Anchor(*a, Box::new(inner));
            }
            (Edit::Alias(_, a), node) => *node = Y::Alias(*a),
            (Edit::Restyle(_), Y::Seq(_, f) | Y::Map(_, f)) => *f = !*f,
            _ => {}
        }
    }
    y
}

/// A document: a template, changed, or one made up.
#[derive(Debug, Clone)]
enum Doc {
    Template(usize, Vec<Edit>),
    Random(Y),
}

fn doc() -> impl Strategy<Value = Doc> {
    prop_oneof![
        6 => (any::<usize>(), prop::collection::vec(edit(), 0..4))
            .prop_map(|(t, e)| Doc::Template(t, e)),
        3 => random_doc().prop_map(Doc::Random),
        1 => any_y().prop_map(Doc::Random),
    ]
}

/// Files of documents: a few random ones, or the whole template set with a few edits (so that references
/// between documents resolve and the cross-object checks run).
fn manifest_files() -> impl Strategy<Value = Vec<Vec<Doc>>> {
    let whole = prop::collection::vec((any::<usize>(), edit()), 0..4).prop_map(|edits| {
        let n = TEMPLATES.matches("\n---\n").count() + 1;
        let docs = (0..n)
            .map(|t| {
                let mine = edits.iter().filter(|(d, _)| d % n == t);
                Doc::Template(t, mine.map(|(_, e)| e.clone()).collect())
            })
            .collect();
        vec![docs]
    });
    prop_oneof![
        2 => prop::collection::vec(prop::collection::vec(doc(), 1..6), 1..3),
        1 => whole,
    ]
}

fn render(docs: &[Doc], templates: &[Y], module: &str) -> String {
    let mut out = String::new();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        match d {
            Doc::Template(t, edits) => {
                let y = apply(templates[t % templates.len()].clone(), edits);
                document(&y, &mut out);
            }
            Doc::Random(y) => document(y, &mut out),
        }
    }
    out.replace(MODULE, module)
}

/// Lines as YAML counts them: a line break is LF, CR LF or a lone CR.
fn yaml_lines(text: &str) -> usize {
    1 + text.replace("\r\n", "\n").matches(['\r', '\n']).count()
}

/// The property every input must have: `load_texts` returns (no panic), and every error names one of the files
/// and a line inside it (the line after the last one for an error at the end).
fn check(files: &[(PathBuf, String)]) -> Result<(), TestCaseError> {
    let Err(diags) = load_texts(files) else {
        return Ok(());
    };
    prop_assert!(!diags.0.is_empty(), "an error without a diagnostic");
    for d in &diags.0 {
        let text = files.iter().find(|(p, _)| **p == *d.file).map(|(_, t)| t);
        prop_assert!(text.is_some(), "{}: not one of the files", d);
        let lines = text.map_or(0, |t| yaml_lines(t));
        prop_assert!(
            d.line >= 1 && d.line <= lines + 1,
            "{}: no line of the file ({} lines)",
            d,
            lines
        );
    }
    Ok(())
}

/// A module file for the WasmPlugin documents to name (the reader hashes it).
fn module_file() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("filter.wasm");
    std::fs::write(&path, b"\0asm\x01\0\0\0").unwrap();
    let path = path.to_string_lossy().into_owned();
    (dir, path)
}

fn named(texts: Vec<String>) -> Vec<(PathBuf, String)> {
    texts
        .into_iter()
        .enumerate()
        .map(|(i, t)| (Path::new("manifests").join(format!("m{i}.yaml")), t))
        .collect()
}

#[test]
fn the_templates_load_without_errors() {
    let (_dir, module) = module_file();
    let templates = templates();
    let docs: Vec<Doc> = (0..templates.len())
        .map(|t| Doc::Template(t, Vec::new()))
        .collect();
    let files = named(vec![render(&docs, &templates, &module)]);
    let set = load_texts(&files).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(
        (set.workloads.len(), set.routes.len(), set.policies.len()),
        (3, 2, 2)
    );
    assert_eq!(
        (set.wasm_plugins.len(), set.gateways.len(), set.meshes.len()),
        (1, 1, 1)
    );
    // The identity and mTLS fields are read, so edits to them reach the reader's checks.
    let mesh = &set.meshes[0];
    assert_eq!(mesh.trust_domain.as_deref(), Some("prod.example.org"));
    assert_eq!(
        (mesh.mtls, set.workloads[0].mtls),
        (MtlsMode::Permissive, Some(MtlsMode::Strict))
    );
}

#[test]
fn generated_manifests_never_panic_and_errors_have_positions() {
    let (_dir, module) = module_file();
    let templates = templates();
    proptest!(ProptestConfig::with_cases(1024), |(files in manifest_files())| {
        let texts = files.iter().map(|docs| render(docs, &templates, &module)).collect();
        check(&named(texts))?;
    });
}

/// `text` with `len` bytes at `at` replaced by `with` (both taken modulo the text; ASCII stays ASCII).
fn splice(text: &str, at: usize, len: usize, with: &str) -> String {
    let at = at % (text.len() + 1);
    let end = (at + len % 16).min(text.len());
    if !text.is_char_boundary(at) || !text.is_char_boundary(end) {
        return text.to_string();
    }
    format!("{}{with}{}", &text[..at], &text[end..])
}

/// Arbitrary text: bytes (made UTF-8 lossily), Unicode, YAML punctuation soup, and the templates with a few
/// splices of punctuation (text that is almost a valid manifest).
fn any_text() -> impl Strategy<Value = String> {
    let punct = "[-:{}\\[\\],&*!|>'\"%@`#?\n\t a-z0-9]{0,8}";
    let splices = prop::collection::vec((any::<usize>(), any::<usize>(), punct), 1..5);
    prop_oneof![
        any::<Vec<u8>>().prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        any::<String>(),
        "[-:{}\\[\\],&*!|>'\"%@`#?\n\t a-z0-9]{0,300}",
        splices.prop_map(|s| {
            s.iter().fold(TEMPLATES.to_string(), |t, (at, len, with)| {
                splice(&t, *at, *len, with)
            })
        }),
    ]
}

#[test]
fn arbitrary_text_never_panics_and_errors_have_positions() {
    let (_dir, module) = module_file();
    proptest!(ProptestConfig::with_cases(2048), |(texts in prop::collection::vec(any_text(), 1..3))| {
        let texts = texts.into_iter().map(|t| t.replace(MODULE, &module)).collect();
        check(&named(texts))?;
    });
}
