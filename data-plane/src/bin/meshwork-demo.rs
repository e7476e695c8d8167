//! Demo and test app for the quickstart and the end-to-end tests. Not part of the proxy.
//!
//! `meshwork-demo echo`     HTTP/1.1 + h2c server answering JSON about the request and who served it.
//!                          `/status/NNN` answers NNN, `/delay/MS` waits first, `/flaky/P` fails with 503 exactly P% of
//!                          these requests, evenly spread, `/healthz` answers 200 (503 while failing), `/_demo/count` returns the
//!                          number of other requests served so far, `/_demo/mode?fail=1&slow=MS` makes every
//!                          request fail with 503 (`fail=0` to stop) or wait MS first.
//! `meshwork-demo frontend` calls `http://<upstream><path>` through HTTP_PROXY (absolute-form, like any
//!                          unmodified app using a forward proxy) and wraps the answer; `/legacy/...` goes to the
//!                          `legacy` service.
//! `meshwork-demo grpc`     a gRPC `meshwork.demo.v1.Echo` server.
//! The port comes from `--port` or the PORT environment variable; identity from MESHWORK_* variables.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshwork_proto::demo;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
    /// Port to listen on (default: $PORT).
    #[arg(long, global = true)]
    port: Option<u16>,
    /// Also serve on this address (echo only): stands in for a system outside the mesh at a fixed address.
    #[arg(long, global = true)]
    also_listen: Option<SocketAddr>,
}

#[derive(Subcommand)]
enum Cmd {
    Echo,
    Frontend {
        /// Service called for every path but /legacy/...
        #[arg(long, default_value = "backend")]
        upstream: String,
    },
    Grpc,
}

struct Identity {
    service: String,
    workload: String,
    node: String,
    version: String,
}

impl Identity {
    fn from_env() -> Self {
        let labels = std::env::var("MESHWORK_LABELS").unwrap_or_default();
        let version = labels
            .split(',')
            .find_map(|kv| kv.strip_prefix("version="))
            .unwrap_or("")
            .to_string();
        Identity {
            service: std::env::var("MESHWORK_SERVICE").unwrap_or_else(|_| "demo".into()),
            workload: std::env::var("MESHWORK_WORKLOAD").unwrap_or_else(|_| "demo".into()),
            node: std::env::var("MESHWORK_NODE_ID").unwrap_or_default(),
            version,
        }
    }
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string() + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Failure modes the tests switch on and off (`/_demo/mode`).
static FAILING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static SLOW_MS: AtomicU64 = AtomicU64::new(0);

async fn echo(
    id: Arc<Identity>,
    count: Arc<AtomicU64>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if path == "/_demo/count" {
        return json(
            StatusCode::OK,
            &serde_json::json!({ "requests": count.load(Ordering::Relaxed) }),
        );
    }
    if path == "/_demo/mode" {
        for pair in req.uri().query().unwrap_or("").split('&') {
            match pair.split_once('=') {
                Some(("fail", v)) => FAILING.store(v == "1", Ordering::Relaxed),
                Some(("slow", v)) => SLOW_MS.store(v.parse().unwrap_or(0), Ordering::Relaxed),
                _ => {}
            }
        }
        return json(
            StatusCode::OK,
            &serde_json::json!({ "fail": FAILING.load(Ordering::Relaxed), "slow": SLOW_MS.load(Ordering::Relaxed) }),
        );
    }
    let failing = FAILING.load(Ordering::Relaxed);
    if path == "/healthz" {
        let status = if failing {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        return json(status, &serde_json::json!({ "healthy": !failing }));
    }
    count.fetch_add(1, Ordering::Relaxed);
    let slow = SLOW_MS.load(Ordering::Relaxed);
    if slow > 0 {
        tokio::time::sleep(Duration::from_millis(slow)).await;
    }
    if failing {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "error": "failing on purpose", "workload": id.workload, "node": id.node }),
        );
    }
    let mut status = StatusCode::OK;
    if let Some(p) = path
        .strip_prefix("/flaky/")
        .and_then(|c| c.parse::<u32>().ok())
    {
        // Exactly P% of these requests fail, spread evenly (request n fails when n*P mod 100 < P), so a test
        // sees the rate it asked for without sampling noise.
        static FLAKY: AtomicU64 = AtomicU64::new(0);
        let n = FLAKY.fetch_add(1, Ordering::Relaxed);
        if (n * u64::from(p.min(100))) % 100 < u64::from(p) {
            status = StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    if let Some(code) = path
        .strip_prefix("/status/")
        .and_then(|c| c.parse::<u16>().ok())
    {
        status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
    }
    if let Some(ms) = path
        .strip_prefix("/delay/")
        .and_then(|c| c.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into()),
            )
        })
        .collect();
    let method = req.method().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let version = format!("{:?}", req.version());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    json(
        status,
        &serde_json::json!({
            "service": id.service, "workload": id.workload, "node": id.node, "version": id.version,
            "method": method, "path": path, "query": query, "http": version,
            "headers": headers, "body_bytes": body.len(),
            "body": if body.len() <= 4096 { String::from_utf8_lossy(&body).into_owned() } else { String::new() },
        }),
    )
}

/// One request through the forward proxy in HTTP_PROXY, absolute-form, as curl or any HTTP library would send it.
async fn call_via_proxy(
    proxy: SocketAddr,
    url: &str,
    headers: &http::HeaderMap,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let stream = tokio::net::TcpStream::connect(proxy)
        .await
        .with_context(|| format!("connect to HTTP_PROXY {proxy}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = Request::get(url).body(http_body_util::Empty::<Bytes>::new())?;
    for (k, v) in headers {
        // Propagate the request's own context (ids, user) as apps in a mesh are expected to, and its trace
        // context as an instrumented app does (W3C, B3 in both forms, baggage): this app makes no span of its
        // own, so its call continues from the span its inbound sidecar made for the request.
        let trace_context = matches!(k.as_str(), "traceparent" | "tracestate" | "b3" | "baggage");
        if trace_context
            || (k.as_str().starts_with("x-") && k != "x-forwarded-for" && k != "x-forwarded-proto")
        {
            req.headers_mut().append(k.clone(), v.clone());
        }
    }
    let host = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or("")
        .to_string();
    req.headers_mut()
        .insert(http::header::HOST, http::HeaderValue::from_str(&host)?);
    let resp = send.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

async fn frontend(
    id: Arc<Identity>,
    upstream: Arc<str>,
    proxy: Option<SocketAddr>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let Some(proxy) = proxy else {
        return json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &serde_json::json!({"error": "HTTP_PROXY is not set"}),
        );
    };
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let url = match pq.strip_prefix("/legacy") {
        Some(rest) => format!("http://legacy{}", if rest.is_empty() { "/" } else { rest }),
        None => format!("http://{upstream}{pq}"),
    };
    match call_via_proxy(proxy, &url, req.headers()).await {
        Ok((status, body)) => {
            let inner: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&body).into())
            });
            json(
                status,
                &serde_json::json!({ "frontend": id.workload, "called": url, "status": status.as_u16(), "response": inner }),
            )
        }
        Err(e) => json(
            StatusCode::BAD_GATEWAY,
            &serde_json::json!({ "frontend": id.workload, "called": url, "error": format!("{e:#}") }),
        ),
    }
}

struct EchoGrpc(Arc<Identity>);

#[tonic::async_trait]
impl demo::echo_server::Echo for EchoGrpc {
    async fn say(
        &self,
        req: tonic::Request<demo::EchoRequest>,
    ) -> Result<tonic::Response<demo::EchoReply>, tonic::Status> {
        let served_by = format!("{}/{}", self.0.service, self.0.version);
        Ok(tonic::Response::new(demo::EchoReply {
            message: req.into_inner().message,
            served_by,
        }))
    }

    type RepeatStream =
        tokio_stream::Iter<std::vec::IntoIter<Result<demo::EchoReply, tonic::Status>>>;

    async fn repeat(
        &self,
        req: tonic::Request<demo::EchoRequest>,
    ) -> Result<tonic::Response<Self::RepeatStream>, tonic::Status> {
        let r = req.into_inner();
        if r.count > 10_000 {
            return Err(tonic::Status::invalid_argument("count: at most 10000"));
        }
        let served_by = format!("{}/{}", self.0.service, self.0.version);
        let items: Vec<_> = (0..r.count)
            .map(|i| {
                Ok(demo::EchoReply {
                    message: format!("{} {i}", r.message),
                    served_by: served_by.clone(),
                })
            })
            .collect();
        Ok(tonic::Response::new(tokio_stream::iter(items)))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let port = match args.port {
        Some(p) => p,
        None => std::env::var("PORT")
            .context("set PORT or pass --port")?
            .parse()
            .context("PORT")?,
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let id = Arc::new(Identity::from_env());
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind {addr}"))?;
    eprintln!(
        "meshwork-demo listening on {addr} as {}/{}",
        id.service, id.workload
    );
    match args.cmd {
        Cmd::Grpc => {
            tonic::transport::Server::builder()
                .add_service(demo::echo_server::EchoServer::new(EchoGrpc(id)))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await?;
            Ok(())
        }
        Cmd::Echo => {
            let count = Arc::new(AtomicU64::new(0));
            let handler = move |req| echo(id.clone(), count.clone(), req);
            if let Some(extra) = args.also_listen {
                let extra = tokio::net::TcpListener::bind(extra)
                    .await
                    .with_context(|| format!("bind {extra}"))?;
                tokio::spawn(serve(extra, handler.clone()));
            }
            serve(listener, handler).await
        }
        Cmd::Frontend { upstream } => {
            let proxy = std::env::var("HTTP_PROXY").ok().and_then(|p| {
                p.trim_start_matches("http://")
                    .trim_end_matches('/')
                    .parse::<SocketAddr>()
                    .ok()
            });
            let upstream: Arc<str> = Arc::from(upstream);
            serve(listener, move |req| {
                frontend(id.clone(), upstream.clone(), proxy, req)
            })
            .await
        }
    }
}

async fn serve<F, Fut>(listener: tokio::net::TcpListener, handler: F) -> anyhow::Result<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    loop {
        let (stream, _) = listener.accept().await?;
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let fut = handler(req);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
