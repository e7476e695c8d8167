//! HTTPRoute and GRPCRoute, in the Gateway API shape (the fields Meshwork supports; everything else is rejected
//! by name). GRPCRoute method matches are turned into path matches here, so the proxy sees one route model.

use std::time::Duration;

use super::read::{index, join, Obj, Reader};
use super::Meta;
use crate::source::yaml::Node;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteKind {
    Http,
    Grpc,
}

impl RouteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParentKind {
    Gateway,
    /// East-west (GAMMA): the route applies to calls to this mesh service from every sidecar.
    Service,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentRef {
    pub kind: ParentKind,
    pub name: String,
    pub namespace: String,
    pub section_name: Option<String>,
    /// A Gateway parent: the listener port it attaches to (None: any).
    pub port: Option<u16>,
    pub line: usize,
    pub field: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueMatch {
    pub name: String,
    pub regex: bool,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    pub path: PathMatch,
    pub headers: Vec<ValueMatch>,
    pub query: Vec<ValueMatch>,
    pub method: Option<String>,
}

impl Default for Match {
    fn default() -> Self {
        Match {
            path: PathMatch::Prefix("/".into()),
            headers: vec![],
            query: vec![],
            method: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Every instance of a mesh service.
    Service,
    /// The instances of one Workload (`group: meshwork.dev`, `kind: Workload`): a version subset for splits.
    Workload,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendRef {
    pub kind: BackendKind,
    pub name: String,
    pub namespace: String,
    pub weight: u32,
    pub line: usize,
    pub field: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderMod {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathModifier {
    Full(String),
    Prefix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    RequestHeaders(HeaderMod),
    ResponseHeaders(HeaderMod),
    Rewrite {
        hostname: Option<String>,
        path: Option<PathModifier>,
    },
    Redirect {
        scheme: Option<String>,
        hostname: Option<String>,
        path: Option<PathModifier>,
        port: Option<u16>,
        status: u16,
    },
    Mirror {
        backend: BackendRef,
        percent: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub line: usize,
    pub matches: Vec<Match>,
    pub filters: Vec<Filter>,
    pub backends: Vec<BackendRef>,
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub meta: Meta,
    pub kind: RouteKind,
    pub parent_refs: Vec<ParentRef>,
    pub hostnames: Vec<String>,
    pub rules: Vec<Rule>,
}

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

pub(super) fn parse_route(
    r: &mut Reader<'_>,
    meta: Meta,
    spec: &Node,
    kind: RouteKind,
) -> Option<Route> {
    let s = r.obj(spec, "spec", &["parentRefs", "hostnames", "rules"])?;
    let mut parent_refs = Vec::new();
    match s.get("parentRefs") {
        Some(n) => {
            for (i, p) in r
                .list(n, "spec.parentRefs")
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                if let Some(p) = parse_parent(r, p, &index("spec.parentRefs", i), &meta.namespace) {
                    parent_refs.push(p);
                }
            }
        }
        None => r.error(
            s.line,
            "spec.parentRefs",
            "required field is missing: expected a list of Gateway or Service references",
        ),
    }
    let hostnames = match s.get("hostnames") {
        Some(n) => {
            let names = r.string_list(n, "spec.hostnames");
            for (i, h) in names.iter().enumerate() {
                if !valid_hostname(h) {
                    r.error(n.line, index("spec.hostnames", i), format!("expected a host name such as \"shop.example.com\" or \"*.example.com\", got {h:?}"));
                }
            }
            names
        }
        None => Vec::new(),
    };
    let mut rules = Vec::new();
    match s.get("rules") {
        Some(n) => {
            for (i, rule) in r
                .list(n, "spec.rules")
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                if let Some(rule) =
                    parse_rule(r, rule, &index("spec.rules", i), kind, &meta.namespace)
                {
                    rules.push(rule);
                }
            }
        }
        None => rules.push(Rule {
            line: s.line,
            matches: vec![Match::default()],
            filters: vec![],
            backends: vec![],
            timeout: None,
        }),
    }
    Some(Route {
        meta,
        kind,
        parent_refs,
        hostnames,
        rules,
    })
}

fn parse_parent(r: &mut Reader<'_>, node: &Node, path: &str, ns: &str) -> Option<ParentRef> {
    let p = r.obj(
        node,
        path,
        &["group", "kind", "name", "namespace", "sectionName", "port"],
    )?;
    let kind_name = r.opt_string(&p, "kind").unwrap_or_else(|| "Gateway".into());
    let group = r.opt_string(&p, "group");
    let kind = match kind_name.as_str() {
        "Gateway" => ParentKind::Gateway,
        "Service" => ParentKind::Service,
        other => {
            r.error(
                p.line,
                p.field("kind"),
                format!("expected Gateway or Service, got {other:?}"),
            );
            return None;
        }
    };
    let group_ok = match (kind, group.as_deref()) {
        (_, None) => true,
        (ParentKind::Gateway, Some(g)) => g == "gateway.networking.k8s.io",
        (ParentKind::Service, Some(g)) => g.is_empty() || g == "core",
    };
    if !group_ok {
        r.error(p.line, p.field("group"), format!("expected the API group of a {kind_name} (\"gateway.networking.k8s.io\" for Gateway, \"\" for Service)"));
    }
    // A Gateway parent: the listener port; a Service parent: mesh services expose one port, so it only selects it.
    let port = p
        .get("port")
        .and_then(|n| r.int(n, &p.field("port"), 1, 65535))
        .map(|v| v as u16)
        .filter(|_| kind == ParentKind::Gateway);
    let name = r.req_string(&p, "name", "the name of the Gateway or mesh Service")?;
    let namespace = r
        .opt_string(&p, "namespace")
        .unwrap_or_else(|| ns.to_string());
    let section_name = r.opt_string(&p, "sectionName");
    if kind == ParentKind::Service && section_name.is_some() {
        r.error(
            p.line,
            p.field("sectionName"),
            "only meaningful for a Gateway parent (a listener name)",
        );
    }
    Some(ParentRef {
        kind,
        name,
        namespace,
        section_name,
        port,
        line: p.line,
        field: path.to_string(),
    })
}

fn parse_rule(
    r: &mut Reader<'_>,
    node: &Node,
    path: &str,
    kind: RouteKind,
    ns: &str,
) -> Option<Rule> {
    let rule = r.obj(
        node,
        path,
        &["name", "matches", "filters", "backendRefs", "timeouts"],
    )?;
    if let Some(n) = rule.get("name") {
        r.string(n, &rule.field("name"));
    }
    let mut matches = Vec::new();
    if let Some(n) = rule.get("matches") {
        for (i, m) in r
            .list(n, &rule.field("matches"))
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let mpath = index(&rule.field("matches"), i);
            let parsed = match kind {
                RouteKind::Http => parse_http_match(r, m, &mpath),
                RouteKind::Grpc => parse_grpc_match(r, m, &mpath),
            };
            matches.extend(parsed);
        }
    }
    if matches.is_empty() {
        matches.push(Match::default());
    }
    let mut filters = Vec::new();
    if let Some(n) = rule.get("filters") {
        for (i, f) in r
            .list(n, &rule.field("filters"))
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            filters.extend(parse_filter(
                r,
                f,
                &index(&rule.field("filters"), i),
                kind,
                ns,
            ));
        }
    }
    let mut backends = Vec::new();
    if let Some(n) = rule.get("backendRefs") {
        for (i, b) in r
            .list(n, &rule.field("backendRefs"))
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            backends.extend(parse_backend(
                r,
                b,
                &index(&rule.field("backendRefs"), i),
                ns,
                true,
            ));
        }
    }
    let timeout = match rule.get("timeouts") {
        Some(n) => {
            let t = r.obj(n, &rule.field("timeouts"), &["request"])?;
            t.get("request")
                .and_then(|d| r.duration(d, &t.field("request")))
                .filter(|d| !d.is_zero())
        }
        None => None,
    };
    // Cross-field checks the Gateway API spec states for a rule.
    let redirect = filters.iter().any(|f| matches!(f, Filter::Redirect { .. }));
    let rewrite = filters.iter().any(|f| matches!(f, Filter::Rewrite { .. }));
    if redirect && rewrite {
        r.error(
            rule.line,
            rule.field("filters"),
            "RequestRedirect and URLRewrite cannot be used in the same rule",
        );
    }
    if redirect && !backends.is_empty() {
        r.error(
            rule.line,
            rule.field("backendRefs"),
            "a rule with a RequestRedirect filter answers itself: expected no backendRefs",
        );
    }
    let prefix_rewrite = filters.iter().any(|f| match f {
        Filter::Rewrite { path, .. } | Filter::Redirect { path, .. } => {
            matches!(path, Some(PathModifier::Prefix(_)))
        }
        _ => false,
    });
    if prefix_rewrite
        && !matches
            .iter()
            .all(|m| matches!(m.path, PathMatch::Prefix(_)))
    {
        r.error(
            rule.line,
            rule.field("filters"),
            "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match",
        );
    }
    let mut seen = std::collections::HashSet::new();
    for f in &filters {
        let key = std::mem::discriminant(f);
        if !matches!(f, Filter::Mirror { .. }) && !seen.insert(key) {
            r.error(
                rule.line,
                rule.field("filters"),
                "each filter type may appear once per rule (RequestMirror excepted)",
            );
        }
    }
    Some(Rule {
        line: rule.line,
        matches,
        filters,
        backends,
        timeout,
    })
}

fn parse_value_matches(r: &mut Reader<'_>, node: &Node, path: &str, what: &str) -> Vec<ValueMatch> {
    let mut out = Vec::new();
    for (i, h) in r.list(node, path).unwrap_or_default().iter().enumerate() {
        let hpath = index(path, i);
        let Some(o) = r.obj(h, &hpath, &["type", "name", "value"]) else {
            continue;
        };
        let regex = match o.get("type") {
            Some(t) => {
                r.choice(t, &o.field("type"), &["Exact", "RegularExpression"])
                    .as_deref()
                    == Some("RegularExpression")
            }
            None => false,
        };
        let name = r.req_string(&o, "name", &format!("a {what} name"));
        let value = r.req_string(&o, "value", &format!("the {what} value to match"));
        let (Some(name), Some(value)) = (name, value) else {
            continue;
        };
        if what == "header" && !valid_header_name(&name) {
            r.error(
                o.line,
                o.field("name"),
                format!("expected an HTTP header name, got {name:?}"),
            );
            continue;
        }
        if regex && !check_regex(r, &value, o.line, &o.field("value")) {
            continue;
        }
        out.push(ValueMatch {
            name: if what == "header" {
                name.to_ascii_lowercase()
            } else {
                name
            },
            regex,
            value,
        });
    }
    out
}

fn check_regex(r: &mut Reader<'_>, pattern: &str, line: usize, field: &str) -> bool {
    match regex::Regex::new(pattern) {
        Ok(_) => true,
        Err(e) => {
            let why = e
                .to_string()
                .lines()
                .last()
                .unwrap_or("invalid")
                .trim()
                .to_string();
            r.error(
                line,
                field,
                format!("expected a regular expression (RE2 syntax), got {pattern:?}: {why}"),
            );
            false
        }
    }
}

fn parse_http_match(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<Match> {
    let m = r.obj(node, path, &["path", "headers", "queryParams", "method"])?;
    let mut out = Match::default();
    if let Some(n) = m.get("path") {
        let p = r.obj(n, &m.field("path"), &["type", "value"])?;
        let ty = match p.get("type") {
            Some(t) => r.choice(
                t,
                &p.field("type"),
                &["Exact", "PathPrefix", "RegularExpression"],
            )?,
            None => "PathPrefix".into(),
        };
        let value = r.opt_string(&p, "value").unwrap_or_else(|| "/".into());
        out.path = match ty.as_str() {
            "RegularExpression" => {
                if !check_regex(r, &value, p.line, &p.field("value")) {
                    return None;
                }
                PathMatch::Regex(value)
            }
            _ if !value.starts_with('/') => {
                r.error(
                    p.line,
                    p.field("value"),
                    format!("expected an absolute path starting with '/', got {value:?}"),
                );
                return None;
            }
            "Exact" => PathMatch::Exact(value),
            _ => PathMatch::Prefix(value),
        };
    }
    if let Some(n) = m.get("headers") {
        out.headers = parse_value_matches(r, n, &m.field("headers"), "header");
    }
    if let Some(n) = m.get("queryParams") {
        out.query = parse_value_matches(r, n, &m.field("queryParams"), "query parameter");
    }
    if let Some(n) = m.get("method") {
        out.method = Some(r.choice(n, &m.field("method"), METHODS)?);
    }
    Some(out)
}

fn parse_grpc_match(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<Match> {
    let m = r.obj(node, path, &["method", "headers"])?;
    let mut out = Match {
        method: Some("POST".into()),
        ..Match::default()
    };
    if let Some(n) = m.get("method") {
        let g = r.obj(n, &m.field("method"), &["type", "service", "method"])?;
        let regex = match g.get("type") {
            Some(t) => {
                r.choice(t, &g.field("type"), &["Exact", "RegularExpression"])?
                    .as_str()
                    == "RegularExpression"
            }
            None => false,
        };
        let service = r.opt_string(&g, "service");
        let method = r.opt_string(&g, "method");
        out.path = match (regex, service, method) {
            (_, None, None) => {
                r.error(
                    g.line,
                    g.field("service"),
                    "expected `service`, `method` or both",
                );
                return None;
            }
            (false, Some(s), Some(me)) => PathMatch::Exact(format!("/{s}/{me}")),
            (false, Some(s), None) => PathMatch::Prefix(format!("/{s}/")),
            (false, None, Some(me)) => PathMatch::Regex(format!("/[^/]+/{}", regex::escape(&me))),
            (true, s, me) => {
                let s = s.unwrap_or_else(|| "[^/]+".into());
                let me = me.unwrap_or_else(|| "[^/]+".into());
                let pattern = format!("/(?:{s})/(?:{me})");
                if !check_regex(r, &pattern, g.line, &g.field("service")) {
                    return None;
                }
                PathMatch::Regex(pattern)
            }
        };
    }
    if let Some(n) = m.get("headers") {
        out.headers = parse_value_matches(r, n, &m.field("headers"), "header");
    }
    Some(out)
}

fn parse_backend(
    r: &mut Reader<'_>,
    node: &Node,
    path: &str,
    ns: &str,
    weighted: bool,
) -> Option<BackendRef> {
    let allowed: &[&str] = if weighted {
        &["group", "kind", "name", "namespace", "port", "weight"]
    } else {
        &["group", "kind", "name", "namespace", "port"]
    };
    let b = r.obj(node, path, allowed)?;
    let kind_name = r.opt_string(&b, "kind").unwrap_or_else(|| "Service".into());
    let group = r.opt_string(&b, "group").unwrap_or_default();
    let kind = match (group.as_str(), kind_name.as_str()) {
        ("" | "core", "Service") => BackendKind::Service,
        ("meshwork.dev", "Workload") => BackendKind::Workload,
        _ => {
            r.error(b.line, b.field("kind"), format!("expected a core Service, or group meshwork.dev kind Workload, got group {group:?} kind {kind_name:?}"));
            return None;
        }
    };
    if let Some(n) = b.get("port") {
        r.int(n, &b.field("port"), 1, 65535);
    }
    let weight = match b.get("weight") {
        Some(n) => r.int(n, &b.field("weight"), 0, 1_000_000)? as u32,
        None => 1,
    };
    let name = r.req_string(&b, "name", "the name of a mesh Service (or Workload)")?;
    let namespace = r
        .opt_string(&b, "namespace")
        .unwrap_or_else(|| ns.to_string());
    Some(BackendRef {
        kind,
        name,
        namespace,
        weight,
        line: b.line,
        field: path.to_string(),
    })
}

fn parse_header_mod(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<HeaderMod> {
    let o = r.obj(node, path, &["set", "add", "remove"])?;
    let mut out = HeaderMod::default();
    for (key, dest) in [("set", &mut out.set), ("add", &mut out.add)] {
        let Some(n) = o.get(key) else { continue };
        for (i, h) in r
            .list(n, &o.field(key))
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let hpath = index(&o.field(key), i);
            let Some(h) = r.obj(h, &hpath, &["name", "value"]) else {
                continue;
            };
            let name = r.req_string(&h, "name", "a header name");
            let value = r.req_string(&h, "value", "a header value");
            let (Some(name), Some(value)) = (name, value) else {
                continue;
            };
            if !valid_header_name(&name) {
                r.error(
                    h.line,
                    h.field("name"),
                    format!("expected an HTTP header name, got {name:?}"),
                );
            } else if value.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
                r.error(
                    h.line,
                    h.field("value"),
                    "expected a header value without control characters",
                );
            } else {
                dest.push((name.to_ascii_lowercase(), value));
            }
        }
    }
    if let Some(n) = o.get("remove") {
        for (i, name) in r.string_list(n, &o.field("remove")).into_iter().enumerate() {
            if valid_header_name(&name) {
                out.remove.push(name.to_ascii_lowercase());
            } else {
                r.error(
                    n.line,
                    index(&o.field("remove"), i),
                    format!("expected an HTTP header name, got {name:?}"),
                );
            }
        }
    }
    Some(out)
}

fn parse_path_modifier(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<PathModifier> {
    let o = r.obj(
        node,
        path,
        &["type", "replaceFullPath", "replacePrefixMatch"],
    )?;
    let ty = r.required(&o, "type", "ReplaceFullPath or ReplacePrefixMatch")?;
    let ty = r.choice(
        ty,
        &o.field("type"),
        &["ReplaceFullPath", "ReplacePrefixMatch"],
    )?;
    let (key, other) = if ty == "ReplaceFullPath" {
        ("replaceFullPath", "replacePrefixMatch")
    } else {
        ("replacePrefixMatch", "replaceFullPath")
    };
    if o.has(other) {
        r.error(
            o.line,
            o.field(other),
            format!("does not go with type {ty} (use `{key}`)"),
        );
    }
    let value = r.req_string(&o, key, "a path starting with '/'")?;
    if !value.starts_with('/') {
        r.error(
            o.line,
            o.field(key),
            format!("expected a path starting with '/', got {value:?}"),
        );
        return None;
    }
    Some(if ty == "ReplaceFullPath" {
        PathModifier::Full(value)
    } else {
        PathModifier::Prefix(value)
    })
}

fn parse_filter(
    r: &mut Reader<'_>,
    node: &Node,
    path: &str,
    kind: RouteKind,
    ns: &str,
) -> Option<Filter> {
    let configs = [
        ("RequestHeaderModifier", "requestHeaderModifier"),
        ("ResponseHeaderModifier", "responseHeaderModifier"),
        ("URLRewrite", "urlRewrite"),
        ("RequestRedirect", "requestRedirect"),
        ("RequestMirror", "requestMirror"),
    ];
    let types: Vec<&str> = match kind {
        RouteKind::Http => configs.iter().map(|c| c.0).collect(),
        RouteKind::Grpc => vec![
            "RequestHeaderModifier",
            "ResponseHeaderModifier",
            "RequestMirror",
        ],
    };
    let mut allowed = vec!["type"];
    allowed.extend(configs.iter().filter(|c| types.contains(&c.0)).map(|c| c.1));
    let f = r.obj(node, path, &allowed)?;
    let ty_node = r.required(&f, "type", &format!("one of {}", types.join(", ")))?;
    let ty = r.choice(ty_node, &f.field("type"), &types)?;
    let key = configs.iter().find(|c| c.0 == ty).map(|c| c.1)?;
    for (_, other) in configs.iter().filter(|c| c.1 != key) {
        if f.has(other) {
            r.error(
                f.line,
                f.field(other),
                format!("does not go with type {ty} (use `{key}`)"),
            );
        }
    }
    let cfg = r.required(&f, key, &format!("the {ty} configuration"))?;
    let cpath = f.field(key);
    match ty.as_str() {
        "RequestHeaderModifier" => parse_header_mod(r, cfg, &cpath).map(Filter::RequestHeaders),
        "ResponseHeaderModifier" => parse_header_mod(r, cfg, &cpath).map(Filter::ResponseHeaders),
        "URLRewrite" => {
            let o = r.obj(cfg, &cpath, &["hostname", "path"])?;
            let hostname = r.opt_string(&o, "hostname");
            let path = o
                .get("path")
                .and_then(|p| parse_path_modifier(r, p, &o.field("path")));
            Some(Filter::Rewrite { hostname, path })
        }
        "RequestRedirect" => parse_redirect(r, cfg, &cpath),
        "RequestMirror" => {
            let o = r.obj(cfg, &cpath, &["backendRef", "percent"])?;
            let b = r.required(&o, "backendRef", "the mesh Service to mirror to")?;
            let backend = parse_backend(r, b, &o.field("backendRef"), ns, false)?;
            let percent = match o.get("percent") {
                Some(p) => r.int(p, &o.field("percent"), 0, 100)? as u32,
                None => 100,
            };
            Some(Filter::Mirror { backend, percent })
        }
        _ => None,
    }
}

fn parse_redirect(r: &mut Reader<'_>, cfg: &Node, cpath: &str) -> Option<Filter> {
    let o: Obj<'_> = r.obj(
        cfg,
        cpath,
        &["scheme", "hostname", "path", "port", "statusCode"],
    )?;
    let scheme = match o.get("scheme") {
        Some(n) => Some(r.choice(n, &o.field("scheme"), &["http", "https"])?),
        None => None,
    };
    let hostname = r.opt_string(&o, "hostname");
    let path = o
        .get("path")
        .and_then(|p| parse_path_modifier(r, p, &join(cpath, "path")));
    let port = match o.get("port") {
        Some(n) => Some(r.int(n, &o.field("port"), 1, 65535)? as u16),
        None => None,
    };
    let status = match o.get("statusCode") {
        Some(n) => {
            let code = r.int(n, &o.field("statusCode"), 300, 399)? as u16;
            if ![301, 302, 303, 307, 308].contains(&code) {
                r.error(
                    n.line,
                    o.field("statusCode"),
                    format!("expected 301, 302, 303, 307 or 308, got {code}"),
                );
                return None;
            }
            code
        }
        None => 302,
    };
    Some(Filter::Redirect {
        scheme,
        hostname,
        path,
        port,
        status,
    })
}

pub fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

pub fn valid_hostname(h: &str) -> bool {
    let rest = h.strip_prefix("*.").unwrap_or(h);
    !rest.is_empty()
        && h.len() <= 253
        && rest.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}
