//! Stage 7: upstream connections. One HTTP/1.1 and one HTTP/2 (h2c, prior knowledge) client per proxy, each with a
//! keep-alive connection pool keyed by endpoint address, shared by every snapshot so a config change never drops
//! pooled connections.

use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::RequestBody;
use crate::config::snapshot::Protocol;

#[derive(Clone)]
pub struct Upstreams {
    h1: Client<HttpConnector, RequestBody>,
    h2: Client<HttpConnector, RequestBody>,
}

impl Upstreams {
    pub fn new(connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.enforce_http(true);
        let h1 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(usize::MAX)
            .build(connector.clone());
        let h2 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .http2_only(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .build(connector);
        Upstreams { h1, h2 }
    }

    pub fn request(&self, protocol: Protocol, req: Request<RequestBody>) -> ResponseFuture {
        match protocol {
            Protocol::Http1 => self.h1.request(req),
            Protocol::Http2 => self.h2.request(req),
        }
    }
}

/// For callers that only need the status (mirrors): reads and drops the body so the connection returns to the pool.
pub async fn drain(resp: Response<Incoming>) {
    use http_body_util::BodyExt;
    let mut body = resp.into_body();
    while let Some(Ok(_)) = body.frame().await {}
}
