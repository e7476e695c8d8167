//! One-way streets (docs/architecture.md): every stage of the request path uses only the ones after it and
//! `config/`, and protobuf stays at the config boundary. This reads every `.rs` file under `src/` and fails,
//! naming the file, line and rule, on a reference that goes the wrong way:
//!
//! - `above`: a file under `router/`, `filter/`, `resilience/`, `upstream/` or `config/` names `crate::stack`,
//!   `crate::app`, `crate::listener`, `crate::admin` or `crate::error` (error.rs owns the proxy's replies), however
//!   written: `use` (grouped or not), an inline path, or `super::super::...` reaching them;
//! - `order`: `upstream/` names `filter`, `resilience` or `router`; `resilience/` names `filter` or `router`;
//!   `router/` names `filter` or `resilience`; `filter/` names `resilience` or `router`; `config/` names none of the layers
//!   but `crate::filter::wasm` (the snapshot holds compiled Wasm plugins); these two rules hold for test code too;
//! - `proto`: `meshwork_proto` or `pb::` outside `config/`, `src/bin/` and test code (`tests.rs`,
//!   modules declared `#[cfg(test)] mod x;`, and items under `#[cfg(test)]`).
//!
//! Paths are read from tokens, so comments, doc comments and string literals never count; `self::` and `super::`
//! are resolved against the file's module (and inline `mod x { }` blocks) before the rules apply.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

#[test]
fn layers_only_use_the_stages_after_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let sources: Vec<(String, String)> = files
        .iter()
        .map(|f| {
            let rel = f
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            (rel, std::fs::read_to_string(f).unwrap())
        })
        .collect();
    let scans: Vec<(&str, Scan)> = sources
        .iter()
        .map(|(rel, text)| (rel.as_str(), scan(rel, text)))
        .collect();
    let test_modules: HashSet<Vec<String>> = scans
        .iter()
        .flat_map(|(_, s)| s.test_children.iter().cloned())
        .collect();

    // The check must have something to check: the walk found the layers, and their references.
    for expected in [
        "stack.rs",
        "resilience/call.rs",
        "config/snapshot.rs",
        "upstream/mod.rs",
    ] {
        assert!(
            scans.iter().any(|(rel, _)| *rel == expected),
            "src/{expected} not found"
        );
    }
    let layer_refs = scans
        .iter()
        .filter(|(rel, _)| layer_of(&module_of(rel)).is_some())
        .map(|(_, s)| s.paths.len())
        .sum::<usize>();
    assert!(
        layer_refs > 50,
        "only {layer_refs} paths read in the layers"
    );

    let violations: Vec<String> = scans
        .iter()
        .flat_map(|(rel, s)| check(rel, s, &test_modules))
        .map(|v| format!("data-plane/src/{v}"))
        .collect();
    assert!(
        violations.is_empty(),
        "one-way streets broken ({}):\n{}",
        violations.len(),
        violations.join("\n")
    );
}

/// The checker catches what it should, and only that: each line marked `// BAD <rule>` is reported with that
/// rule, and nothing else is.
#[test]
fn checker_catches_a_violating_snippet() {
    let cases = [
        (
            "resilience/call.rs",
            r##"
//! Docs may name crate::stack::handle, crate::error and pb::Route freely.
use std::sync::Arc;
use crate::stack::Mode; // BAD above
use crate::{config::policy, error::{self, reply}}; // BAD above
use crate::{
    upstream::Upstreams,
    listener, // BAD above
};
use super::super::admin::serve; // BAD above
use super::{balance, retry};
use crate::upstream::error::UpstreamError;
use crate::filter::chain::Chain; // BAD order
use crate::router as r; // BAD order
use meshwork_proto as pb; // BAD proto
/* use crate::app; /* nested */ crate::app::run(); */
fn f<'a>(x: &'a str, c: char) -> pb::Route { // BAD proto
    // crate::stack::handle(x);
    let _ = "crate::stack::handle";
    let _ = r#"super::super::app"#;
    let _ = ('"', '\'', b'x');
    let _ = crate::listener::serve(x); // BAD above
    let _ = super::super::app::run(); // BAD above
    let _ = Vec::<crate::error::ProxyError>::new(); // BAD above
    let _ = <crate::app::Runtime as Default>::default(); // BAD above
    let _ = ::meshwork_proto::Snapshot::default(); // BAD proto
    crate::stack::handle // BAD above
        (x)
}
mod inner {
    use super::super::retry::Kind;
    use super::super::super::error::reply; // BAD above
}
#[cfg(test)]
mod tests {
    use super::*;
    use meshwork_proto as pb;
    fn t(_: pb::Snapshot) {}
    use crate::stack::Mode; // BAD above
}
#[cfg(test)]
fn helper(_: meshwork_proto::Route) {}
#[cfg(test)]
mod call_tests;
"##,
        ),
        (
            "config/snapshot.rs",
            r#"
use meshwork_proto as pb;
use crate::filter::wasm::PluginHandle;
use crate::filter::{wasm::abi, chain::Chain}; // BAD order
use crate::filter; // BAD order
use crate::upstream::Upstreams; // BAD order
use crate::resilience::Registry; // BAD order
use super::super::router::find_route; // BAD order
pub struct S { pub source: pb::Snapshot }
"#,
        ),
        (
            "upstream/mod.rs",
            r#"
use crate::config::snapshot::Protocol;
use crate::resilience::call; // BAD order
use self::body::RequestBody;
use crate::{filter::body::FilteredBody, router}; // BAD order
"#,
        ),
        (
            "router/mod.rs",
            "use super::stack; // BAD above\nuse crate::filter::headers; // BAD order\n",
        ),
        (
            "router/tests.rs",
            "use meshwork_proto as pb;\nfn f(_: pb::Route) {}\n",
        ),
        (
            "filter/chain.rs",
            "use crate::resilience::inc; // BAD order\nuse crate::upstream::body::ResponseBody;\n",
        ),
        (
            "app.rs",
            "use meshwork_proto as pb; // BAD proto\nuse crate::stack;\n",
        ),
        ("bin/demo.rs", "use meshwork_proto as pb;\n"),
        (
            "stack.rs",
            "use crate::router;\nfn f(_: pb::Route) {} // BAD proto\n",
        ),
    ];
    for (rel, src) in cases {
        let mut expected: Vec<(usize, String)> = src
            .lines()
            .enumerate()
            .filter_map(|(i, l)| Some((i + 1, l.split_once("// BAD ")?.1.trim().to_string())))
            .collect();
        let mut found: Vec<(usize, String)> = check_source(rel, src, &HashSet::new())
            .into_iter()
            .map(|v| (v.line, v.rule.to_string()))
            .collect();
        expected.sort();
        found.sort();
        // A grouped import may break a rule twice on one line (`crate::{filter::x, router}`): one line, one rule.
        found.dedup();
        assert_eq!(found, expected, "{rel}");
    }
    // A module declared `#[cfg(test)] mod x;` is test code, wherever its file is.
    let s = scan(
        "resilience/mod.rs",
        "#[cfg(test)]\nmod call_tests;\nmod call;\n",
    );
    assert_eq!(s.test_children, [vec!["resilience", "call_tests"]]);
    let tests: HashSet<Vec<String>> = s.test_children.into_iter().collect();
    let proto = "use meshwork_proto as pb;\n";
    assert!(check_source("resilience/call_tests.rs", proto, &tests).is_empty());
    assert_eq!(check_source("resilience/call.rs", proto, &tests).len(), 1);
}

// ---- the rules ----

/// Stages above the layers (and error.rs, the top-level owner of replies): no layer names them.
const ABOVE: [&str; 5] = ["stack", "app", "listener", "admin", "error"];
/// The layers these rules govern, by their folder under src/.
const LAYERS: [&str; 5] = ["router", "filter", "resilience", "upstream", "config"];

#[derive(Debug)]
struct Violation {
    file: String,
    line: usize,
    rule: &'static str,
    message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: [{}] {}",
            self.file, self.line, self.rule, self.message
        )
    }
}

fn layer_of(module: &[String]) -> Option<&'static str> {
    let first = module.first()?;
    LAYERS.iter().copied().find(|l| *l == first.as_str())
}

/// What `layer` may not name among the layers (the first segment after `crate`), with the reason.
fn earlier(layer: &str, target: &[String]) -> Option<&'static str> {
    let first = target.first()?.as_str();
    let (banned, why): (&[&str], _) = match layer {
        "upstream" => (
            &["filter", "resilience", "router"],
            "stage 7 uses no stage before it",
        ),
        "resilience" => (&["filter", "router"], "stages 5-6 use no stage before them"),
        "router" => (
            &["filter", "resilience"],
            "the router only matches; the stack hands on",
        ),
        "filter" => (
            &["resilience", "router"],
            "filters do not call upstream services' layers, nor route",
        ),
        "config" => (
            &["filter", "resilience", "router", "upstream"],
            "config is plain data: of the layers it holds only compiled Wasm (crate::filter::wasm)",
        ),
        _ => return None,
    };
    if layer == "config" && first == "filter" && target.get(1).is_some_and(|s| s == "wasm") {
        return None;
    }
    banned.contains(&first).then_some(why)
}

fn check_source(rel: &str, src: &str, test_modules: &HashSet<Vec<String>>) -> Vec<Violation> {
    check(rel, &scan(rel, src), test_modules)
}

/// The rules, for the file `rel` (relative to src/); `test_modules`: modules declared `#[cfg(test)] mod x;`.
fn check(rel: &str, scan: &Scan, test_modules: &HashSet<Vec<String>>) -> Vec<Violation> {
    let module = module_of(rel);
    let mut out = Vec::new();
    let violation = |line, rule, message| Violation {
        file: rel.to_string(),
        line,
        rule,
        message,
    };
    if let (Some(layer), false) = (layer_of(&module), is_bin(rel)) {
        for p in &scan.paths {
            let Some(first) = p.resolved.first() else {
                continue;
            };
            let shown = format!("`{}` (crate::{})", p.written, p.resolved.join("::"));
            if ABOVE.contains(&first.as_str()) {
                let message = format!("{layer}/ must not refer to crate::{first}: {shown}");
                out.push(violation(p.line, "above", message));
            } else if let Some(why) = earlier(layer, &p.resolved) {
                let message = format!("{layer}/ must not refer to crate::{first} ({why}): {shown}");
                out.push(violation(p.line, "order", message));
            }
        }
    }
    let file_name = rel.rsplit('/').next().unwrap_or(rel);
    let exempt = module.first().is_some_and(|m| m == "config")
        || is_bin(rel)
        || file_name == "tests.rs"
        || (1..=module.len()).any(|n| test_modules.contains(&module[..n]));
    if !exempt {
        for (line, written) in &scan.proto {
            let message = format!("protobuf ({written}) outside config/, src/bin/ and tests");
            out.push(violation(*line, "proto", message));
        }
    }
    out
}

// ---- reading the sources ----

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Files of the binaries: `crate` there is the binary, not the library.
fn is_bin(rel: &str) -> bool {
    rel == "main.rs" || rel.starts_with("bin/")
}

/// The module a file under src/ is (segments after `crate`).
fn module_of(rel: &str) -> Vec<String> {
    if rel == "lib.rs" || is_bin(rel) {
        return Vec::new();
    }
    let mut segs: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(String::from)
        .collect();
    if segs.last().is_some_and(|s| s == "mod") {
        segs.pop();
    }
    segs
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Punct(char),
}

#[derive(Debug)]
struct Token {
    tok: Tok,
    line: usize,
}

impl Token {
    fn is(&self, c: char) -> bool {
        self.tok == Tok::Punct(c)
    }

    fn ident(&self) -> Option<&str> {
        match &self.tok {
            Tok::Ident(s) => Some(s),
            _ => None,
        }
    }
}

/// Identifiers, `::` and punctuation, with their lines; comments, strings and char literals dropped.
fn lex(src: &str) -> Vec<Token> {
    let c: Vec<char> = src.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let ident_char = |ch: char| ch == '_' || ch.is_alphanumeric();
    let (mut i, mut line, mut out) = (0, 1, Vec::new());
    let count = |from: usize, to: usize| {
        c[from..to.min(c.len())]
            .iter()
            .filter(|&&ch| ch == '\n')
            .count()
    };
    while i < c.len() {
        let ch = c[i];
        if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let (start, mut depth) = (i, 0);
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            line += count(start, i);
        } else if ch == '"' {
            let start = i;
            i = skip_string(&c, i);
            line += count(start, i);
        } else if ch == '\'' {
            // A char literal ('x', '\n', '\u{..}'), else a lifetime or label.
            if at(i + 1) == '\\' {
                i += 3;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1;
            }
        } else if ident_char(ch) && !ch.is_ascii_digit() {
            let start = i;
            while i < c.len() && ident_char(c[i]) {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let raw = matches!(word.as_str(), "r" | "br" | "cr");
            if raw && (at(i) == '"' || (at(i) == '#' && matches!(at(i + 1), '"' | '#'))) {
                let start = i;
                i = skip_raw_string(&c, i);
                line += count(start, i);
            } else if word == "r" && at(i) == '#' && ident_char(at(i + 1)) {
                let start = i + 1;
                i = start;
                while i < c.len() && ident_char(c[i]) {
                    i += 1;
                }
                let tok = Tok::Ident(c[start..i].iter().collect());
                out.push(Token { tok, line });
            } else if matches!(word.as_str(), "b" | "c") && at(i) == '"' {
                let start = i;
                i = skip_string(&c, i);
                line += count(start, i);
            } else {
                out.push(Token {
                    tok: Tok::Ident(word),
                    line,
                });
            }
        } else if ch.is_ascii_digit() {
            while i < c.len() && ident_char(c[i]) {
                i += 1;
            }
        } else if ch == ':' && at(i + 1) == ':' {
            out.push(Token {
                tok: Tok::PathSep,
                line,
            });
            i += 2;
        } else {
            if ch == '\n' {
                line += 1;
            } else if !ch.is_whitespace() {
                out.push(Token {
                    tok: Tok::Punct(ch),
                    line,
                });
            }
            i += 1;
        }
    }
    out
}

/// From an opening `"` to just past its closing one.
fn skip_string(c: &[char], mut i: usize) -> usize {
    i += 1;
    while i < c.len() && c[i] != '"' {
        i += if c[i] == '\\' { 2 } else { 1 };
    }
    i + 1
}

/// From the `#`s or `"` after `r` to just past the closing `"` and as many `#`s.
fn skip_raw_string(c: &[char], mut i: usize) -> usize {
    let mut hashes = 0;
    while i < c.len() && c[i] == '#' {
        hashes += 1;
        i += 1;
    }
    i += 1;
    while i < c.len() {
        if c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
            return i + 1 + hashes;
        }
        i += 1;
    }
    i
}

/// A path through `crate`, `self` or `super`, as written and resolved to segments after `crate`.
#[derive(Debug)]
struct PathRef {
    line: usize,
    written: String,
    resolved: Vec<String>,
}

#[derive(Debug, Default)]
struct Scan {
    paths: Vec<PathRef>,
    /// `meshwork_proto` or `pb::` outside `#[cfg(test)]` items: (line, as written).
    proto: Vec<(usize, String)>,
    /// Modules this file declares `#[cfg(test)] mod x;` (their files are test code).
    test_children: Vec<Vec<String>>,
}

fn scan(rel: &str, src: &str) -> Scan {
    let toks = lex(src);
    let in_test = test_items(&toks);
    let file_module = module_of(rel);
    let mut s = Scan::default();
    let ident = |i: usize| toks.get(i).and_then(Token::ident);
    let punct = |i: usize, ch: char| toks.get(i).is_some_and(|t| t.is(ch));
    let sep = |i: usize| toks.get(i).is_some_and(|t| t.tok == Tok::PathSep);

    for (i, t) in toks.iter().enumerate() {
        let proto = match t.ident() {
            Some("meshwork_proto") => Some("meshwork_proto"),
            Some("pb") if sep(i + 1) => Some("pb::"),
            _ => None,
        };
        if let (Some(p), false) = (proto, in_test[i]) {
            s.proto.push((t.line, p.to_string()));
        }
    }

    // Inline modules open at a brace depth; `super` counts them.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut pending_mod: Option<String> = None;
    let mut depth = 0;
    let module = |inline: &[(String, usize)]| {
        let mut m = file_module.clone();
        m.extend(inline.iter().map(|(n, _)| n.clone()));
        m
    };
    let mut i = 0;
    while i < toks.len() {
        let t = &toks[i];
        if t.is('{') {
            if let Some(name) = pending_mod.take() {
                inline.push((name, depth));
            }
            depth += 1;
        } else if t.is('}') {
            depth = depth.saturating_sub(1);
            if inline.last().is_some_and(|(_, d)| *d == depth) {
                inline.pop();
            }
        } else if t.ident() == Some("mod") {
            if let Some(name) = ident(i + 1) {
                if punct(i + 2, '{') {
                    pending_mod = Some(name.to_string());
                } else if punct(i + 2, ';') && in_test[i] {
                    let mut m = module(&inline);
                    m.push(name.to_string());
                    s.test_children.push(m);
                }
            }
        } else if t.ident() == Some("use") {
            let mut trees = Vec::new();
            i += 1;
            use_tree(&toks, &mut i, Vec::new(), &mut trees);
            let here = module(&inline);
            for (segs, line) in trees {
                push_path(&mut s.paths, &here, &segs, line);
            }
            while i < toks.len() && !toks[i].is(';') {
                i += 1;
            }
            continue;
        } else if let Some(first) = t.ident() {
            let starts = i == 0 || !(sep(i - 1) || punct(i - 1, '$'));
            if starts && sep(i + 1) && matches!(first, "crate" | "self" | "super") {
                let mut segs = vec![first.to_string()];
                let mut j = i + 1;
                while sep(j) {
                    match ident(j + 1) {
                        Some(next) => segs.push(next.to_string()),
                        None => break,
                    }
                    j += 2;
                }
                push_path(&mut s.paths, &module(&inline), &segs, t.line);
                i = j;
                continue;
            }
        }
        i += 1;
    }
    s
}

/// Expands one `use` tree (`a::b::{c, d::{self, e as f}, g::*}`) into its paths, each with the line of its
/// last segment.
fn use_tree(
    toks: &[Token],
    i: &mut usize,
    prefix: Vec<String>,
    out: &mut Vec<(Vec<String>, usize)>,
) {
    let mut path = prefix;
    let mut line = toks.get(*i).map_or(0, |t| t.line);
    if toks.get(*i).is_some_and(|t| t.tok == Tok::PathSep) {
        *i += 1;
    }
    while let Some(t) = toks.get(*i) {
        match &t.tok {
            Tok::Ident(s) if s == "self" && !path.is_empty() => *i += 1,
            Tok::Ident(s) => {
                path.push(s.clone());
                line = t.line;
                *i += 1;
            }
            Tok::Punct('*') => {
                *i += 1;
                break;
            }
            Tok::Punct('{') => {
                *i += 1;
                while toks.get(*i).is_some_and(|t| !t.is('}') && !t.is(';')) {
                    let before = *i;
                    use_tree(toks, i, path.clone(), out);
                    if toks.get(*i).is_some_and(|t| t.is(',')) {
                        *i += 1;
                    }
                    if *i == before {
                        *i += 1;
                    }
                }
                *i += 1;
                return;
            }
            _ => break,
        }
        if toks.get(*i).is_some_and(|t| t.tok == Tok::PathSep) {
            *i += 1;
            continue;
        }
        if toks.get(*i).and_then(Token::ident) == Some("as") {
            *i += 2;
        }
        break;
    }
    out.push((path, line));
}

/// Records `segs` if it goes through `crate`, `self` or `super` (resolved against `module`).
fn push_path(paths: &mut Vec<PathRef>, module: &[String], segs: &[String], line: usize) {
    let Some(first) = segs.first() else { return };
    let resolved = match first.as_str() {
        "crate" => segs[1..].to_vec(),
        "self" => module.iter().chain(&segs[1..]).cloned().collect(),
        "super" => {
            let ups = segs.iter().take_while(|s| *s == "super").count();
            let Some(keep) = module.len().checked_sub(ups) else {
                return;
            };
            module[..keep].iter().chain(&segs[ups..]).cloned().collect()
        }
        _ => return,
    };
    paths.push(PathRef {
        line,
        written: segs.join("::"),
        resolved,
    });
}

/// Which tokens belong to `#[cfg(test)]` items (or to a file under `#![cfg(test)]`).
fn test_items(toks: &[Token]) -> Vec<bool> {
    let mut marked = vec![false; toks.len()];
    let word = |i: usize, w: &str| toks.get(i).and_then(Token::ident) == Some(w);
    let punct = |i: usize, ch: char| toks.get(i).is_some_and(|t| t.is(ch));
    for k in 0..toks.len() {
        if !punct(k, '#') {
            continue;
        }
        let inner = punct(k + 1, '!');
        let a = k + 1 + usize::from(inner);
        let is_cfg_test = punct(a, '[')
            && word(a + 1, "cfg")
            && punct(a + 2, '(')
            && word(a + 3, "test")
            && punct(a + 4, ')')
            && punct(a + 5, ']');
        if !is_cfg_test {
            continue;
        }
        if inner {
            marked.iter_mut().for_each(|m| *m = true);
            break;
        }
        let end = item_end(toks, a + 6);
        marked[k..end.min(toks.len())]
            .iter_mut()
            .for_each(|m| *m = true);
    }
    marked
}

/// The token just past the item starting at `i` (after any further attributes): its `;`, or its first block's `}`.
fn item_end(toks: &[Token], mut i: usize) -> usize {
    let mut nesting = 0usize;
    while let Some(t) = toks.get(i) {
        match t.tok {
            Tok::Punct('(' | '[') => nesting += 1,
            Tok::Punct(')' | ']') => nesting = nesting.saturating_sub(1),
            Tok::Punct(';') if nesting == 0 => return i + 1,
            Tok::Punct('{') if nesting == 0 => {
                let mut braces = 0usize;
                while let Some(t) = toks.get(i) {
                    if t.is('{') {
                        braces += 1;
                    } else if t.is('}') {
                        braces -= 1;
                        if braces == 0 {
                            return i + 1;
                        }
                    }
                    i += 1;
                }
                return i;
            }
            _ => {}
        }
        i += 1;
    }
    i
}
