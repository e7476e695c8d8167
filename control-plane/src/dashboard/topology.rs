//! The dashboard's live topology: every few seconds it reads each proxy's `/metrics` (the golden metrics the
//! proxies keep, `http_server_request_duration_seconds`), adds replicas up, and keeps a short window of samples
//! from which each edge (caller -> destination service) gets its request rate, error rate and p50/p99 latency.
//! The callers are the gateways and the sidecars' outbound listeners; a sidecar's inbound listener is the
//! service's own view (its row in the services table).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokio::time::Instant;

/// One proxy the dashboard reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub node: String,
    /// The sidecar's service, or the gateway's name.
    pub service: String,
    pub gateway: bool,
    pub admin: SocketAddr,
}

/// Who called whom (`to` is a service name; `from` a service or a gateway's name; `inbound` rows have `from`
/// empty: the service's own listener).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Edge {
    pub from: String,
    pub to: String,
}

/// Cumulative counts of one edge at one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub count: f64,
    pub errors: f64,
    /// (upper bound in seconds, cumulative count), in bucket order.
    pub buckets: Vec<(f64, f64)>,
}

/// What the page shows for an edge over the window.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeStats {
    pub edge: Edge,
    /// Requests since the proxies started (the metrics' own count).
    pub total: u64,
    pub rate: f64,
    pub error_ratio: f64,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

/// The window the rates and percentiles cover.
pub const WINDOW: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct Topology {
    nodes: RwLock<Vec<Node>>,
    samples: Mutex<VecDeque<(Instant, BTreeMap<Edge, Sample>)>>,
}

impl Topology {
    pub fn set_nodes(&self, nodes: Vec<Node>) {
        *self.nodes.write().unwrap_or_else(PoisonError::into_inner) = nodes;
    }

    pub fn nodes(&self) -> Vec<Node> {
        self.nodes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records one scrape: the metrics text of each node.
    pub fn record(&self, at: Instant, scraped: &[(Node, String)]) {
        let mut all: BTreeMap<Edge, Sample> = BTreeMap::new();
        for (node, text) in scraped {
            for (edge, sample) in parse(node, text) {
                let into = all.entry(edge).or_default();
                into.count += sample.count;
                into.errors += sample.errors;
                if into.buckets.is_empty() {
                    into.buckets = sample.buckets;
                } else {
                    for (b, s) in into.buckets.iter_mut().zip(sample.buckets) {
                        b.1 += s.1;
                    }
                }
            }
        }
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        samples.push_back((at, all));
        while samples.len() > 2 && samples.front().is_some_and(|(t, _)| at - *t > WINDOW) {
            samples.pop_front();
        }
    }

    /// Every edge over the window (newest scrape against the oldest one kept), sorted.
    pub fn edges(&self) -> Vec<EdgeStats> {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((newest_at, newest)) = samples.back() else {
            return Vec::new();
        };
        let oldest = samples.front().filter(|_| samples.len() > 1);
        newest
            .iter()
            .map(|(edge, now)| {
                let (before, secs) = match oldest {
                    Some((at, old)) => (
                        old.get(edge).cloned().unwrap_or_default(),
                        (*newest_at - *at).as_secs_f64(),
                    ),
                    None => (Sample::default(), 0.0),
                };
                stats(edge, now, &before, secs)
            })
            .collect()
    }
}

fn stats(edge: &Edge, now: &Sample, before: &Sample, secs: f64) -> EdgeStats {
    let count = (now.count - before.count).max(0.0);
    let errors = (now.errors - before.errors).max(0.0);
    let buckets: Vec<(f64, f64)> = now
        .buckets
        .iter()
        .enumerate()
        .map(|(i, (le, c))| (*le, c - before.buckets.get(i).map_or(0.0, |b| b.1)))
        .collect();
    EdgeStats {
        edge: edge.clone(),
        total: now.count as u64,
        rate: if secs > 0.0 { count / secs } else { 0.0 },
        error_ratio: if count > 0.0 { errors / count } else { 0.0 },
        p50: quantile(&buckets, count, 0.5),
        p99: quantile(&buckets, count, 0.99),
    }
}

/// The quantile from cumulative histogram buckets, interpolated linearly inside its bucket (as Prometheus'
/// `histogram_quantile`); None without observations.
pub fn quantile(buckets: &[(f64, f64)], count: f64, q: f64) -> Option<f64> {
    if count <= 0.0 {
        return None;
    }
    let rank = q * count;
    let mut lower = (0.0, 0.0);
    for &(le, cum) in buckets {
        if cum >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let width = cum - lower.1;
            let into = if width > 0.0 {
                (rank - lower.1) / width
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * into);
        }
        lower = (le, cum);
    }
    Some(lower.0)
}

/// The edges one proxy's metrics describe, with their cumulative counts.
pub fn parse(node: &Node, text: &str) -> BTreeMap<Edge, Sample> {
    let mut out: BTreeMap<Edge, Sample> = BTreeMap::new();
    for line in text.lines() {
        let Some((name, labels, value)) = sample_line(line) else {
            continue;
        };
        let Some(kind) = name.strip_prefix("http_server_request_duration_seconds_") else {
            continue;
        };
        let label = |k: &str| labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let Some(edge) = edge_of(node, label("listener"), label("destination_service")) else {
            continue;
        };
        let s = out.entry(edge).or_default();
        match kind {
            "count" => {
                s.count += value;
                if label("http_response_status_code")
                    .is_some_and(|c| c.starts_with('5') || c == "0")
                {
                    s.errors += value;
                }
            }
            "bucket" => {
                let le = match label("le") {
                    Some("+Inf") => f64::INFINITY,
                    Some(v) => match v.parse() {
                        Ok(le) => le,
                        Err(_) => continue,
                    },
                    None => continue,
                };
                match s.buckets.iter_mut().find(|(b, _)| *b == le) {
                    Some(b) => b.1 += value,
                    None => {
                        s.buckets.push((le, value));
                        s.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Caller and callee of a label set at `node`: a gateway's listeners and a sidecar's outbound listener call the
/// destination service; a sidecar's inbound listener is its own service serving (`from` empty).
fn edge_of(node: &Node, listener: Option<&str>, destination: Option<&str>) -> Option<Edge> {
    let to = service_name(destination?);
    match (node.gateway, listener?) {
        (true, _) | (false, "outbound") => Some(Edge {
            from: node.service.clone(),
            to,
        }),
        (false, "inbound") => Some(Edge {
            from: String::new(),
            to: node.service.clone(),
        }),
        _ => None,
    }
}

/// `service/default/backend` -> `backend`; another namespace's keeps it: `shop/backend`.
pub fn service_name(label: &str) -> String {
    match label
        .strip_prefix("service/")
        .and_then(|r| r.split_once('/'))
    {
        Some(("default", name)) => name.to_string(),
        Some((ns, name)) => format!("{ns}/{name}"),
        None => label.to_string(),
    }
}

/// A sample's labels, in order.
type Labels = Vec<(String, String)>;

/// `name{k="v",...} value` (Prometheus text format, escaped quotes and backslashes in values), read byte by
/// byte (label names are ASCII; values are kept as UTF-8, anything else replaced).
fn sample_line(line: &str) -> Option<(&str, Labels, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let (name, rest) = line.split_once('{')?;
    let b = rest.as_bytes();
    let mut labels = Vec::new();
    let mut i = 0;
    loop {
        let eq = i + b.get(i..)?.iter().position(|c| *c == b'=')?;
        let key = std::str::from_utf8(b.get(i..eq)?).ok()?.to_string();
        if b.get(eq + 1) != Some(&b'"') {
            return None;
        }
        i = eq + 2;
        let mut value = Vec::new();
        loop {
            match *b.get(i)? {
                b'\\' => {
                    value.push(match *b.get(i + 1)? {
                        b'n' => b'\n',
                        other => other,
                    });
                    i += 2;
                }
                b'"' => {
                    i += 1;
                    break;
                }
                c => {
                    value.push(c);
                    i += 1;
                }
            }
        }
        labels.push((key, String::from_utf8_lossy(&value).into_owned()));
        match *b.get(i)? {
            b'}' => {
                let v = std::str::from_utf8(b.get(i + 1..)?)
                    .ok()?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()?;
                return Some((name, labels, v));
            }
            b',' => i += 1,
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(service: &str, gateway: bool) -> Node {
        Node {
            node: format!("{service}-0"),
            service: service.into(),
            gateway,
            admin: SocketAddr::from(([127, 0, 0, 1], 1)),
        }
    }

    const GW: &str = r#"# TYPE http_server_request_duration_seconds histogram
http_server_request_duration_seconds_sum{listener="http",route="r",destination_service="service/default/frontend",http_request_method="GET",http_response_status_code="200"} 0.3
http_server_request_duration_seconds_count{listener="http",route="r",destination_service="service/default/frontend",http_request_method="GET",http_response_status_code="200"} 8
http_server_request_duration_seconds_count{listener="http",route="r",destination_service="service/default/frontend",http_request_method="GET",http_response_status_code="503"} 2
http_server_request_duration_seconds_bucket{le="0.01",listener="http",route="r",destination_service="service/default/frontend",http_request_method="GET",http_response_status_code="200"} 4
http_server_request_duration_seconds_bucket{le="0.1",listener="http",route="r",destination_service="service/default/frontend",http_request_method="GET",http_response_status_code="200"} 8
http_server_request_duration_seconds_bucket{le="+Inf",listener="http",route="r",destination_service="service/default/frontend",http_request_method="GET",http_response_status_code="200"} 8
http_server_request_duration_seconds_bucket{le="0.01",listener="http",route="r",destination_service="service/default/frontend",http_request_method="GET",http_response_status_code="503"} 2
http_server_request_duration_seconds_bucket{le="0.1",listener="http",route="r",destination_service="service/default/frontend",http_request_method="GET",http_response_status_code="503"} 2
http_server_request_duration_seconds_bucket{le="+Inf",listener="http",route="r",destination_service="service/default/frontend",http_request_method="GET",http_response_status_code="503"} 2
http_server_request_duration_seconds_count{listener="http",route="",destination_service="",http_request_method="GET",http_response_status_code="404"} 5
"#;

    #[test]
    fn a_gateways_metrics_become_its_edges() {
        let edges = parse(&node("edge", true), GW);
        let e = Edge {
            from: "edge".into(),
            to: "frontend".into(),
        };
        let s = edges.get(&e).cloned().unwrap_or_default();
        assert_eq!((s.count, s.errors), (10.0, 2.0));
        assert_eq!(
            s.buckets,
            vec![(0.01, 6.0), (0.1, 10.0), (f64::INFINITY, 10.0)]
        );
        assert_eq!(
            edges.len(),
            2,
            "the unrouted requests go to an empty destination: {edges:?}"
        );
    }

    #[test]
    fn rates_and_percentiles_come_from_the_window() {
        let t = Topology::default();
        let at = Instant::now();
        t.record(at, &[(node("edge", true), String::new())]);
        t.record(
            at + Duration::from_secs(10),
            &[(node("edge", true), GW.into())],
        );
        let stats = t.edges();
        let e = stats.iter().find(|s| s.edge.to == "frontend").cloned();
        let e = e.unwrap_or_else(|| panic!("{stats:?}"));
        assert_eq!(e.total, 10);
        assert!((e.rate - 1.0).abs() < 1e-9);
        assert!((e.error_ratio - 0.2).abs() < 1e-9);
        // 6 of 10 under 10 ms: the median interpolates inside the first bucket.
        assert!(e.p50.is_some_and(|p| p > 0.0 && p <= 0.01), "{e:?}");
        assert!(e.p99.is_some_and(|p| p > 0.01 && p <= 0.1), "{e:?}");
    }

    #[test]
    fn replicas_add_up_and_sidecars_name_their_callers() {
        let text = r#"http_server_request_duration_seconds_count{listener="outbound",route="x",destination_service="service/default/backend",http_request_method="GET",http_response_status_code="200"} 3
http_server_request_duration_seconds_count{listener="inbound",destination_service="service/default/frontend",http_request_method="GET",http_response_status_code="200"} 4
"#;
        let t = Topology::default();
        let fe = node("frontend", false);
        t.record(
            Instant::now(),
            &[(fe.clone(), text.into()), (fe, text.into())],
        );
        let edges = t.edges();
        let out = edges.iter().find(|e| {
            e.edge
                == Edge {
                    from: "frontend".into(),
                    to: "backend".into(),
                }
        });
        assert_eq!(out.map(|e| e.total), Some(6));
        let own = edges.iter().find(|e| e.edge.from.is_empty());
        assert_eq!(
            own.map(|e| (e.edge.to.as_str(), e.total)),
            Some(("frontend", 8))
        );
    }

    #[test]
    fn lines_that_are_not_samples_are_skipped() {
        for bad in [
            "",
            "# HELP x",
            "x{le=\"1\"",
            "x{le=\"1\"} nope",
            "x{le} 1",
            "x{a=\"b\"c=\"d\"} 1",
        ] {
            assert!(sample_line(bad).is_none(), "{bad}");
        }
        let escaped = sample_line(r#"x{a="q\"uote",b="back\\slash",é="ü"} 2"#);
        assert_eq!(
            escaped.map(|(_, l, v)| (l, v)),
            Some((
                vec![
                    ("a".into(), "q\"uote".into()),
                    ("b".into(), "back\\slash".into()),
                    ("é".into(), "ü".into())
                ],
                2.0
            ))
        );
    }

    #[test]
    fn quantiles() {
        let b = [(0.1, 50.0), (1.0, 100.0), (f64::INFINITY, 100.0)];
        assert_eq!(quantile(&b, 100.0, 0.5), Some(0.1));
        assert!(quantile(&b, 100.0, 0.75).is_some_and(|q| (q - 0.55).abs() < 1e-9));
        assert_eq!(quantile(&b, 0.0, 0.5), None);
    }
}
