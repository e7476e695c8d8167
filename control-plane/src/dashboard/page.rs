//! The dashboard's pages, rendered on the server (readable before any script runs, no CDN): the overview (the
//! topology with each edge's rate, errors and latency, the services, the recent traces with a search, the
//! proxies and their configuration state) and one trace as a waterfall with its events (filter timings,
//! resilience decisions). A few lines of script refresh the overview in place. Everything a proxy or a client
//! could have put in a span is escaped.

use std::fmt::Write as _;

use super::topology::{EdgeStats, Node};
use super::traces::{Span, Trace};

/// What the overview shows about one proxy (from the control plane's registry).
pub struct ProxyRow {
    pub node: String,
    pub service: String,
    pub role: &'static str,
    pub admin: String,
    pub acked: u64,
    pub sent: u64,
    pub last_nack: String,
    /// Seconds until its certificate expires (None: it has none).
    pub cert_expires_in: Option<i64>,
}

pub struct Overview<'a> {
    pub generation: u64,
    pub edges: &'a [EdgeStats],
    pub nodes: &'a [Node],
    pub proxies: &'a [ProxyRow],
    pub traces: &'a [Trace],
    pub query: &'a str,
    pub spans: (u64, usize),
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}h1{font-size:1.3em}\
h2{font-size:1.1em;margin-top:1.6em}table{border-collapse:collapse}td,th{padding:.25em .7em;border-bottom:1px solid #ddd;\
text-align:left;vertical-align:top}th{background:#f4f4f4}.num{text-align:right;font-variant-numeric:tabular-nums}\
.err{color:#b00}.bar{position:relative;height:14px;background:#eef}.bar span{position:absolute;top:0;height:14px;\
background:#48c}.bar span.error{background:#c44}.ev{color:#555;font-size:12px}code{font-size:12px}svg text{font-size:12px}";

/// A little script: the overview re-fetches itself every 2 s and swaps its main part in place.
const REFRESH: &str = "setInterval(async()=>{try{const r=await fetch(location.href,{headers:{'x-dashboard-refresh':'1'}});\
if(!r.ok)return;const d=new DOMParser().parseFromString(await r.text(),'text/html');const m=d.querySelector('main');\
if(m)document.querySelector('main').replaceWith(m);}catch(e){}},2000);";

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(title: &str, main: &str, script: bool) -> String {
    let script = if script {
        format!("<script>{REFRESH}</script>")
    } else {
        String::new()
    };
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>{}</title><style>{STYLE}</style></head>\
         <body><h1>{}</h1><main>{main}</main>{script}</body></html>",
        escape(title),
        escape(title)
    )
}

fn ms(seconds: Option<f64>) -> String {
    match seconds {
        Some(s) => format!("{:.2} ms", s * 1000.0),
        None => "–".to_string(),
    }
}

pub fn overview(o: &Overview<'_>) -> String {
    let mut m = String::new();
    let _ = write!(
        m,
        "<p>manifest generation <b id=generation>{}</b> · spans received {} (held {})</p>",
        o.generation, o.spans.0, o.spans.1
    );
    m.push_str("<h2>Topology</h2>");
    m.push_str(&topology_svg(o.edges, o.nodes));
    m.push_str(&edges_table(o.edges));
    m.push_str(&traces_table(o.traces, o.query));
    m.push_str(&proxies_table(o.proxies));
    page("Meshwork dashboard", &m, true)
}

/// Callers and services as boxes in columns (gateways first, then by call depth), edges as lines labelled with
/// their rate.
fn topology_svg(edges: &[EdgeStats], nodes: &[Node]) -> String {
    let calls: Vec<&EdgeStats> = edges.iter().filter(|e| !e.edge.from.is_empty()).collect();
    let mut names: Vec<(String, usize)> = Vec::new();
    let depth = |name: &str, d: usize, names: &mut Vec<(String, usize)>| match names
        .iter_mut()
        .find(|(n, _)| n == name)
    {
        Some(entry) => entry.1 = entry.1.max(d),
        None => names.push((name.to_string(), d)),
    };
    for n in nodes {
        depth(&n.service, usize::from(!n.gateway), &mut names);
    }
    // Depth: a callee sits one column right of its caller (bounded, so a cycle cannot loop).
    for _ in 0..8 {
        for e in &calls {
            let from = names
                .iter()
                .find(|(n, _)| *n == e.edge.from)
                .map_or(0, |x| x.1);
            depth(&e.edge.to, from + 1, &mut names);
        }
    }
    names.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    let mut rows_at = std::collections::HashMap::new();
    let mut pos = std::collections::HashMap::new();
    for (name, d) in &names {
        let row: &mut usize = rows_at.entry(*d).or_default();
        pos.insert(name.clone(), (20 + d * 220, 20 + *row * 60));
        *row += 1;
    }
    let height = 40 + rows_at.values().max().copied().unwrap_or(1) * 60;
    let width = 40 + names.iter().map(|(_, d)| *d).max().unwrap_or(0) * 220 + 160;
    let mut svg =
        format!("<svg id=topology width={width} height={height} role=img aria-label=topology>");
    for e in &calls {
        let (Some(a), Some(b)) = (pos.get(&e.edge.from), pos.get(&e.edge.to)) else {
            continue;
        };
        let _ = write!(
            svg,
            "<line x1={} y1={} x2={} y2={} stroke=#888 /><text x={} y={}>{:.1}/s</text>",
            a.0 + 150,
            a.1 + 15,
            b.0,
            b.1 + 15,
            (a.0 + 150 + b.0) / 2 - 15,
            (a.1 + b.1) / 2 + 10,
            e.rate
        );
    }
    for (name, (x, y)) in &pos {
        let _ = write!(
            svg,
            "<rect x={x} y={y} width=150 height=30 rx=4 fill=#eef stroke=#48c /><text x={} y={}>{}</text>",
            x + 8,
            y + 19,
            escape(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn edges_table(edges: &[EdgeStats]) -> String {
    let mut t = String::from(
        "<table id=edges><tr><th>caller</th><th>service</th><th class=num>requests</th><th class=num>req/s</th>\
         <th class=num>errors</th><th class=num>p50</th><th class=num>p99</th></tr>",
    );
    for e in edges {
        let from = if e.edge.from.is_empty() {
            "(served, any caller)".to_string()
        } else {
            e.edge.from.clone()
        };
        let class = if e.error_ratio > 0.0 { " err" } else { "" };
        let _ = write!(
            t,
            "<tr data-from=\"{}\" data-to=\"{}\"><td>{}</td><td>{}</td><td class=\"num total\">{}</td><td class=num>{:.2}</td>\
             <td class=\"num{class}\">{:.1}%</td><td class=num>{}</td><td class=num>{}</td></tr>",
            escape(&e.edge.from),
            escape(&e.edge.to),
            escape(&from),
            escape(&e.edge.to),
            e.total,
            e.rate,
            e.error_ratio * 100.0,
            ms(e.p50),
            ms(e.p99)
        );
    }
    t.push_str("</table><p class=ev>Rates, errors (5xx, and requests the client left) and percentiles over the last 30 s, \
                from each proxy's <code>http_server_request_duration_seconds</code>; requests: since the proxies started.</p>");
    t
}

fn traces_table(traces: &[Trace], query: &str) -> String {
    let mut t = format!(
        "<h2>Recent traces</h2><form method=get><input name=q value=\"{}\" placeholder=\"trace id, request id, status or text\" size=40> \
         <button>search</button></form><table id=traces><tr><th>trace</th><th>request</th><th>root span</th><th>status</th>\
         <th class=num>spans</th><th class=num>duration</th></tr>",
        escape(query)
    );
    for tr in traces {
        let root = tr.root();
        let duration = (tr.end_ns() - tr.start_ns()) as f64 / 1e9;
        let status = tr.status().unwrap_or("");
        let class = if tr.error() { " class=err" } else { "" };
        let _ = write!(
            t,
            "<tr{class}><td><a href=\"/trace/{}\"><code>{}</code></a></td><td>{}</td><td>{} {}</td><td>{}</td>\
             <td class=num>{}</td><td class=num>{}</td></tr>",
            escape(&tr.id),
            escape(&tr.id),
            escape(tr.request_id().unwrap_or("")),
            escape(root.map_or("", |r| r.service.as_str())),
            escape(root.map_or("", |r| r.name.as_str())),
            escape(status),
            tr.spans.len(),
            ms(Some(duration))
        );
    }
    t.push_str("</table>");
    t
}

fn proxies_table(proxies: &[ProxyRow]) -> String {
    let mut t = String::from(
        "<h2>Proxies</h2><table id=proxies><tr><th>node</th><th>service</th><th>role</th><th>admin</th>\
         <th class=num>config ACKed / sent</th><th>last NACK</th><th class=num>certificate expires in</th></tr>",
    );
    for p in proxies {
        let state = if p.acked == p.sent { "" } else { " class=err" };
        let cert = p.cert_expires_in.map_or("–".to_string(), |s| {
            format!("{}h {:02}m", s / 3600, (s % 3600) / 60)
        });
        let _ = write!(
            t,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=num{state}>{} / {}</td><td class=err>{}</td><td class=num>{}</td></tr>",
            escape(&p.node),
            escape(&p.service),
            p.role,
            escape(&p.admin),
            p.acked,
            p.sent,
            escape(&p.last_nack),
            cert
        );
    }
    t.push_str("</table>");
    t
}

/// One trace: its spans in start order, each indented under its parent, a bar for its time within the trace, and
/// its events (filter callbacks and their time, retries, ejections...).
pub fn trace(t: &Trace) -> String {
    let (start, end) = (t.start_ns(), t.end_ns().max(t.start_ns().saturating_add(1)));
    let total = ((end - start) as f64).max(1.0);
    let mut m = format!(
        "<p><a href=\"/\">← overview</a> · trace <code id=trace-id>{}</code> · {} spans · {}</p>\
         <table id=waterfall><tr><th>span</th><th>proxy</th><th class=num>duration</th><th style=width:40%>time</th></tr>",
        escape(&t.id),
        t.spans.len(),
        ms(Some(total / 1e9))
    );
    for (span, depth) in ordered(&t.spans) {
        let left = (span.start_ns.saturating_sub(start)) as f64 / total * 100.0;
        let width = ((span.end_ns - span.start_ns) as f64 / total * 100.0).max(0.3);
        let class = if span.error { " class=error" } else { "" };
        let _ = write!(
            m,
            "<tr class=span data-span=\"{}\" data-kind=\"{}\"><td style=\"padding-left:{}em\">{} <b>{}</b><div class=ev>{}</div>{}</td>\
             <td>{}</td><td class=num>{}</td><td><div class=bar><span{class} style=\"left:{left:.2}%;width:{width:.2}%\"></span></div></td></tr>",
            escape(&span.span_id),
            span.kind,
            0.7 + depth as f64 * 1.5,
            span.kind,
            escape(&span.name),
            attributes(span),
            events(span),
            escape(&span.service),
            ms(Some((span.end_ns - span.start_ns) as f64 / 1e9))
        );
    }
    m.push_str("</table>");
    page("Meshwork trace", &m, false)
}

fn attributes(span: &Span) -> String {
    let keys = [
        "http.response.status_code",
        "http.route",
        "server.address",
        "meshwork.attempt",
        "meshwork.destination_service",
        "meshwork.response_flags",
        "error.type",
    ];
    keys.iter()
        .filter_map(|k| span.attr(k).map(|v| format!("{k}={}", escape(v))))
        .collect::<Vec<_>>()
        .join(" · ")
}

fn events(span: &Span) -> String {
    let mut out = String::new();
    for e in &span.events {
        let offset = e.time_ns.saturating_sub(span.start_ns) as f64 / 1e6;
        let detail: Vec<String> = e
            .attributes
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    escape(k.trim_start_matches("meshwork.")),
                    escape(v)
                )
            })
            .collect();
        let _ = write!(
            out,
            "<div class=\"ev event\" data-event=\"{}\">+{offset:.3} ms {} {}</div>",
            escape(&e.name),
            escape(&e.name),
            detail.join(" ")
        );
    }
    out
}

/// Spans depth-first from the roots (a span whose parent is not in the trace), children by start time.
fn ordered(spans: &[Span]) -> Vec<(&Span, usize)> {
    let ids: Vec<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut roots: Vec<&Span> = spans
        .iter()
        .filter(|s| !ids.contains(&s.parent.as_str()))
        .collect();
    roots.sort_by_key(|s| s.start_ns);
    let mut out = Vec::new();
    let mut stack: Vec<(&Span, usize)> = roots.into_iter().rev().map(|s| (s, 0)).collect();
    while let Some((s, d)) = stack.pop() {
        if out.len() >= spans.len() {
            break;
        }
        out.push((s, d));
        let mut children: Vec<&Span> = spans.iter().filter(|c| c.parent == s.span_id).collect();
        children.sort_by_key(|c| std::cmp::Reverse(c.start_ns));
        stack.extend(children.into_iter().map(|c| (c, d + 1)));
    }
    out
}

pub fn not_found(what: &str) -> String {
    page(
        "Meshwork dashboard",
        &format!("<p>{}</p><p><a href=\"/\">overview</a></p>", escape(what)),
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_span_carries_is_escaped() {
        let span = Span {
            span_id: "01".repeat(8),
            parent: String::new(),
            service: "<script>alert(1)</script>".into(),
            kind: "server",
            name: "GET \"/x\"".into(),
            start_ns: 1,
            end_ns: 2,
            attributes: vec![("http.route".into(), "<b>".into())],
            events: Vec::new(),
            error: false,
        };
        let html = trace(&Trace {
            id: "ab".into(),
            spans: vec![span],
        });
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(
            html.contains("&lt;script&gt;") && html.contains("http.route=&lt;b&gt;"),
            "{html}"
        );
    }
}
