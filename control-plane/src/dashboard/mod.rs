//! The built-in dashboard of `meshwork up`: one local HTTP port that is both an OTLP/HTTP trace receiver (the
//! proxies `up` starts send their spans there unless a collector is configured) and the web page showing the
//! topology with live rates and latencies (read from the proxies' own metrics), recent traces as waterfalls, and
//! the proxies' configuration state. Every connection has a deadline, every body and table a bound.

pub mod page;
pub mod topology;
pub mod traces;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use meshwork_manifest::translate::ProxyRole;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tokio::sync::Semaphore;

use crate::serve::ControlPlane;
use topology::{Node, Topology};
use traces::TraceStore;

/// Largest OTLP export accepted (a proxy's batch of 512 spans is about 250 KiB), and how many are decoded at once
/// (a small export can decode into many objects).
const MAX_EXPORT_BYTES: usize = 2 * 1024 * 1024;
const DECODING_AT_ONCE: usize = 2;
/// How long a request's body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait for a slot.
const MAX_CONNECTIONS: usize = 64;
/// A connection's headers must arrive within this, and a connection lives at most `CONNECTION_LIFETIME`.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// How often the proxies' metrics are read, and how long one read may take.
const SCRAPE_EVERY: Duration = Duration::from_secs(2);
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);
/// Traces listed on the overview.
const LISTED: usize = 50;

#[derive(Clone)]
pub struct Dashboard {
    pub traces: Arc<TraceStore>,
    pub topology: Arc<Topology>,
    cp: ControlPlane,
    decoding: Arc<Semaphore>,
    /// The port it listens on: requests must name a loopback host with it (a page on another site, reached by DNS
    /// rebinding, names its own host).
    port: Arc<std::sync::OnceLock<u16>>,
}

impl Dashboard {
    pub fn new(cp: ControlPlane) -> Dashboard {
        Dashboard {
            traces: Arc::default(),
            topology: Arc::default(),
            cp,
            decoding: Arc::new(Semaphore::new(DECODING_AT_ONCE)),
            port: Arc::default(),
        }
    }

    /// Serves the page and the receiver on `listener`, and reads the proxies' metrics, until dropped (both run as
    /// tasks of the caller's runtime; they end with it).
    pub fn start(&self, listener: tokio::net::TcpListener) {
        if let Ok(addr) = listener.local_addr() {
            let _ = self.port.set(addr.port());
        }
        tokio::spawn(self.clone().accept(listener));
        tokio::spawn(self.clone().scrape());
    }

    async fn accept(self, listener: tokio::net::TcpListener) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let me = me.clone();
                    async move { Ok::<_, Infallible>(me.route(req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
                drop(permit);
            });
        }
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if !self.local_host(&req) {
            return plain(
                StatusCode::FORBIDDEN,
                "the dashboard answers requests for 127.0.0.1, localhost or [::1] only",
            );
        }
        let path = req.uri().path().to_string();
        match (req.method(), path.as_str()) {
            (&Method::POST, "/v1/traces") => self.receive(req).await,
            (&Method::GET, "/metrics") => Response::builder()
                .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
                .body(Full::new(Bytes::from(self.cp.metrics_text())))
                .unwrap_or_default(),
            (&Method::GET, "/") => {
                let query = query_param(req.uri().query().unwrap_or(""), "q");
                html(StatusCode::OK, self.overview(&query))
            }
            (&Method::GET, p) if p.starts_with("/trace/") => {
                let id = &p["/trace/".len()..];
                match self.traces.get(id) {
                    Some(t) => html(StatusCode::OK, page::trace(&t)),
                    None => html(
                        StatusCode::NOT_FOUND,
                        page::not_found(&format!("no trace {id} in the recent window")),
                    ),
                }
            }
            _ => html(StatusCode::NOT_FOUND, page::not_found("no such page")),
        }
    }

    /// The request's Host is a loopback name with the dashboard's port.
    fn local_host(&self, req: &Request<Incoming>) -> bool {
        let Some(port) = self.port.get() else {
            return true;
        };
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or(req.uri().authority().map(|a| a.as_str()))
            .unwrap_or("");
        ["127.0.0.1", "localhost", "[::1]"]
            .iter()
            .any(|name| host == format!("{name}:{port}"))
    }

    /// OTLP/HTTP with protobuf bodies, as the OpenTelemetry exporters send it (a form or a text body, which any web
    /// page could post here, is refused).
    async fn receive(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let protobuf = req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes() == b"application/x-protobuf");
        if !protobuf {
            return plain(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected content-type application/x-protobuf",
            );
        }
        let Ok(_slot) = self.decoding.acquire().await else {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
        };
        let limited = Limited::new(req.into_body(), MAX_EXPORT_BYTES).collect();
        let body = match tokio::time::timeout(BODY_TIMEOUT, limited).await {
            Ok(Ok(b)) => b.to_bytes(),
            // The rest of the body is not read, so the connection cannot carry another request: say so, or a
            // client would reuse it and lose its next request.
            Ok(Err(_)) => {
                return closing(plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "export too large or broken",
                ))
            }
            Err(_) => {
                return closing(plain(
                    StatusCode::REQUEST_TIMEOUT,
                    "the export's body came too slowly",
                ))
            }
        };
        match ExportTraceServiceRequest::decode(body) {
            Ok(export) => {
                self.traces.ingest(export);
                let answer = ExportTraceServiceResponse::default().encode_to_vec();
                Response::builder()
                    .header(header::CONTENT_TYPE, "application/x-protobuf")
                    .body(Full::new(Bytes::from(answer)))
                    .unwrap_or_default()
            }
            Err(_) => plain(
                StatusCode::BAD_REQUEST,
                "not an OTLP ExportTraceServiceRequest",
            ),
        }
    }

    fn overview(&self, query: &str) -> String {
        let edges = self.topology.edges();
        let nodes = self.topology.nodes();
        let proxies = self.proxies();
        let traces = self.traces.recent(query, LISTED);
        page::overview(&page::Overview {
            generation: self.cp.desired.borrow().generation,
            edges: &edges,
            nodes: &nodes,
            proxies: &proxies,
            traces: &traces,
            query,
            spans: self.traces.counts(),
        })
    }

    fn proxies(&self) -> Vec<page::ProxyRow> {
        let nodes = self.topology.nodes();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut rows: Vec<page::ProxyRow> = self
            .cp
            .registry
            .list()
            .into_iter()
            .map(|r| page::ProxyRow {
                admin: nodes
                    .iter()
                    .find(|n| n.node == r.node_id)
                    .map_or(String::new(), |n| n.admin.to_string()),
                node: r.node_id,
                service: r.service,
                role: match r.role {
                    ProxyRole::Gateway => "gateway",
                    ProxyRole::Sidecar => "sidecar",
                },
                acked: r.acked_version,
                sent: r.sent_version,
                last_nack: r.last_nack.map(|n| n.1).unwrap_or_default(),
                cert_expires_in: (r.cert_not_after_unix_ms > 0)
                    .then(|| (r.cert_not_after_unix_ms as i64 - now_ms) / 1000),
            })
            .collect();
        rows.sort_by(|a, b| a.node.cmp(&b.node));
        rows
    }

    /// Reads every proxy's `/metrics` every `SCRAPE_EVERY`.
    async fn scrape(self) {
        let mut tick = tokio::time::interval(SCRAPE_EVERY);
        loop {
            tick.tick().await;
            let nodes = self.topology.nodes();
            let reads = nodes.iter().map(|n| metrics_of(n.admin));
            let texts = futures_util::future::join_all(reads).await;
            let scraped: Vec<(Node, String)> = nodes
                .into_iter()
                .zip(texts)
                .filter_map(|(n, t)| Some((n, t?)))
                .collect();
            self.topology.record(tokio::time::Instant::now(), &scraped);
        }
    }
}

/// One proxy's metrics text, or None (no answer within `SCRAPE_TIMEOUT`, not 200, too large).
async fn metrics_of(admin: SocketAddr) -> Option<String> {
    let read = async {
        let stream = tokio::net::TcpStream::connect(admin).await.ok()?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        let req = Request::get("/metrics")
            .header(header::HOST, admin.to_string())
            .body(http_body_util::Empty::<Bytes>::new())
            .ok()?;
        let resp = send.send_request(req).await.ok()?;
        if resp.status() != StatusCode::OK {
            return None;
        }
        let body = Limited::new(resp.into_body(), 16 * 1024 * 1024)
            .collect()
            .await
            .ok()?;
        String::from_utf8(body.to_bytes().to_vec()).ok()
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, read)
        .await
        .ok()
        .flatten()
}

fn query_param(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_decode(&v.replace('+', " ")))
        .unwrap_or_default()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn html(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(
            "content-security-policy",
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
        )
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from_static(text.as_bytes())))
        .unwrap_or_default()
}

fn closing(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_terms_are_decoded() {
        assert_eq!(query_param("q=req%2D1+x&z=1", "q"), "req-1 x");
        assert_eq!(query_param("a=1", "q"), "");
        assert_eq!(query_param("q=%zz%4", "q"), "%zz%4");
    }
}
