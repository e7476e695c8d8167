//! Where Wasm filters' HTTP callouts (`proxy_http_call`) go: dispatched into the mesh, where the upstream names a cluster of the
//! current snapshot, or a mesh service as a host name (`echo`, `echo.default`, `echo.default.svc.cluster.local`,
//! Envoy's `outbound|80||echo.default.svc.cluster.local`). Answers are read whole, up to `MAX_RESPONSE` bytes.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request};
use http_body_util::{BodyExt, Limited};

use crate::config::snapshot::Cluster;
use crate::config::ConfigStore;
use crate::filter::wasm::callout::{CallFuture, CallResponse, Callout, Callouts};
use crate::filter::wasm::stream::get;
use crate::upstream::body::RequestBody;
use crate::upstream::{self, Upstreams};

/// The largest callout response body a filter is handed.
pub const MAX_RESPONSE: usize = 4 << 20;

pub struct MeshCallouts {
    pub store: Arc<ConfigStore>,
    pub upstreams: Upstreams,
}

/// The cluster `upstream` names in `clusters`: an exact cluster name, or a service host name.
pub fn resolve<'a>(
    clusters: impl Iterator<Item = (&'a Arc<str>, &'a Arc<Cluster>)> + Clone,
    upstream: &str,
) -> Option<Arc<Cluster>> {
    if let Some((_, c)) = clusters.clone().find(|(k, _)| &***k == upstream) {
        return Some(c.clone());
    }
    // Envoy's `outbound|PORT|SUBSET|HOST`: the host is the last field.
    let host = upstream.rsplit('|').next().unwrap_or(upstream);
    let host = host.split(':').next().unwrap_or(host);
    let mut labels = host.split('.');
    let name = labels.next().filter(|n| !n.is_empty())?;
    let namespace = labels.next();
    let mut found = clusters.filter(|(k, _)| {
        let mut parts = k.splitn(3, '/');
        parts.next() == Some("service")
            && namespace.is_none_or(|ns| parts.next() == Some(ns))
            && k.rsplit('/').next() == Some(name)
    });
    let first = found.next()?;
    // A bare name that several namespaces define is ambiguous.
    if namespace.is_none() && found.next().is_some() {
        return None;
    }
    Some(first.1.clone())
}

impl MeshCallouts {
    fn cluster(&self, upstream: &str) -> Option<Arc<Cluster>> {
        let snapshot = self.store.load();
        resolve(snapshot.clusters.iter(), upstream)
    }
}

impl Callouts for MeshCallouts {
    fn knows(&self, upstream: &str) -> bool {
        self.cluster(upstream).is_some()
    }

    fn send(&self, call: Callout) -> CallFuture {
        let cluster = self.cluster(&call.upstream);
        let upstreams = self.upstreams.clone();
        Box::pin(async move {
            let cluster = cluster.ok_or_else(|| format!("unknown upstream {:?}", call.upstream))?;
            let endpoint = cluster
                .any_endpoint()
                .ok_or_else(|| format!("{} has no endpoint", cluster.name))?;
            let endpoint = endpoint.clone();
            let method = get(&call.headers, ":method")
                .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
                .ok_or("bad :method")?;
            let path = get(&call.headers, ":path")
                .and_then(|p| p.parse::<http::uri::PathAndQuery>().ok())
                .ok_or("bad :path")?;
            let uri =
                upstream::uri(endpoint.authority.clone(), Some(&path)).ok_or("bad upstream URI")?;
            let body = if call.body.is_empty() {
                RequestBody::Empty
            } else {
                RequestBody::Full(Some(Bytes::from(call.body)))
            };
            let mut req = Request::new(body);
            *req.method_mut() = method;
            *req.uri_mut() = uri;
            *req.version_mut() = upstream::version(cluster.protocol);
            for (k, v) in &call.headers {
                let name = if k == ":authority" {
                    http::header::HOST
                } else if k.starts_with(':') {
                    continue;
                } else {
                    HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("header {k}: {e}"))?
                };
                let value = HeaderValue::from_str(v).map_err(|e| format!("header {k}: {e}"))?;
                req.headers_mut().append(name, value);
            }
            let exchange = async {
                let resp = upstreams
                    .request(cluster.protocol, &endpoint, req)
                    .await
                    .map_err(|e| upstream::error::chain(&e))?;
                let (parts, body) = resp.into_parts();
                let collected = Limited::new(body, MAX_RESPONSE)
                    .collect()
                    .await
                    .map_err(|e| format!("reading the answer: {e}"))?;
                let trailers = collected
                    .trailers()
                    .map(|t| crate::filter::wasm::stream::header_pairs(t, &[]))
                    .unwrap_or_default();
                let headers = crate::filter::wasm::stream::header_pairs(
                    &parts.headers,
                    &[(":status", parts.status.as_str())],
                );
                Ok::<_, String>(CallResponse {
                    headers,
                    body: collected.to_bytes().to_vec(),
                    trailers,
                })
            };
            tokio::time::timeout(call.timeout, exchange)
                .await
                .map_err(|_| format!("no answer within {:?}", call.timeout))?
        })
    }
}
