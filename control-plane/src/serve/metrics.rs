//! What the control plane reports about itself, as Prometheus families (prometheus-client): the proxies
//! connected and the instances registered (read from the registry at scrape time), the pushes it made, the ACKs
//! and NACKs it got, and how long each accepted manifest change took to be ACKed by every connected proxy. Served
//! on `meshwork control --metrics` and on the `meshwork up` dashboard's `/metrics`. The sessions write here;
//! nothing here calls them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tokio::time::Instant;

use crate::registry::Registry as ProxyRegistry;

/// Buckets of the change-to-converged histogram, in seconds.
const CONVERGE_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Debug)]
pub struct CpMetrics {
    pub pushes_sidecar: AtomicU64,
    pub pushes_gateway: AtomicU64,
    pub acks: AtomicU64,
    pub nacks: AtomicU64,
    converged: Histogram,
    /// The accepted change not yet ACKed by everyone: its generation and when it was accepted.
    pending: Mutex<Option<(u64, Instant)>>,
}

impl Default for CpMetrics {
    fn default() -> Self {
        CpMetrics {
            pushes_sidecar: AtomicU64::new(0),
            pushes_gateway: AtomicU64::new(0),
            acks: AtomicU64::new(0),
            nacks: AtomicU64::new(0),
            converged: Histogram::new(CONVERGE_BUCKETS),
            pending: Mutex::new(None),
        }
    }
}

impl CpMetrics {
    /// A change was accepted as `generation` (a newer one replaces a change still converging).
    pub fn changed(&self, generation: u64) {
        *self.pending.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((generation, Instant::now()));
    }

    /// Called when a proxy ACKs or has nothing new to be sent: once every connected proxy has computed the
    /// pending generation and ACKed all it was sent, the time since the change is observed (once).
    pub fn check_converged(&self, registry: &ProxyRegistry) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((generation, since)) = *pending else {
            return;
        };
        let all = registry.list();
        let done = all
            .iter()
            .all(|r| r.synced_generation >= generation && r.acked_version == r.sent_version);
        if done {
            self.converged.observe(since.elapsed().as_secs_f64());
            *pending = None;
        }
    }

    /// A registry of the control plane's families.
    pub fn registry(self: &Arc<Self>, proxies: Arc<ProxyRegistry>) -> Registry {
        let mut r = Registry::default();
        r.register_collector(Box::new(Families {
            metrics: self.clone(),
            proxies,
        }));
        r
    }
}

#[derive(Debug)]
struct Families {
    metrics: Arc<CpMetrics>,
    proxies: Arc<ProxyRegistry>,
}

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.metrics;
        let listed = self.proxies.list();
        let f = encoder.encode_descriptor(
            "meshwork_control_connected_proxies",
            "Proxies with a live discovery stream",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(listed.len() as i64).encode(f)?;
        let f = encoder.encode_descriptor(
            "meshwork_control_registered_instances",
            "Service instances in the registry (sidecars with an inbound address)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.proxies.instances().len() as i64).encode(f)?;
        let mut f = encoder.encode_descriptor(
            "meshwork_control_pushes",
            "Configuration snapshots pushed to proxies, by proxy role",
            None,
            MetricType::Counter,
        )?;
        for (role, n) in [
            ("sidecar", &m.pushes_sidecar),
            ("gateway", &m.pushes_gateway),
        ] {
            ConstCounter::new(n.load(Relaxed)).encode(f.encode_family(&[("role", role)])?)?;
        }
        let mut f = encoder.encode_descriptor(
            "meshwork_control_replies",
            "Proxies' answers to pushes: ack (applied) or nack (rejected, with a reason)",
            None,
            MetricType::Counter,
        )?;
        for (result, n) in [("ack", &m.acks), ("nack", &m.nacks)] {
            ConstCounter::new(n.load(Relaxed)).encode(f.encode_family(&[("result", result)])?)?;
        }
        let f = encoder.encode_descriptor(
            "meshwork_control_change_converged",
            "From an accepted manifest change to every connected proxy having ACKed what it was sent for it",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        m.converged.encode(f)?;
        Ok(())
    }
}

/// The families in the Prometheus text format (0.0.4: counters' TYPE lines named as their samples).
pub fn text(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        return String::new();
    }
    out.replace(
        "# TYPE meshwork_control_pushes counter",
        "# TYPE meshwork_control_pushes_total counter",
    )
    .replace(
        "# HELP meshwork_control_pushes ",
        "# HELP meshwork_control_pushes_total ",
    )
    .replace(
        "# TYPE meshwork_control_replies counter",
        "# TYPE meshwork_control_replies_total counter",
    )
    .replace(
        "# HELP meshwork_control_replies ",
        "# HELP meshwork_control_replies_total ",
    )
    .replace("# EOF\n", "")
}

/// Serves `GET /metrics` (anything else: 404) on `listener` for `meshwork control --metrics`, each connection
/// with a header deadline and a lifetime, at most 16 at once.
pub async fn serve_http(listener: tokio::net::TcpListener, cp: super::ControlPlane) {
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::rt::{TokioIo, TokioTimer};
    let slots = Arc::new(tokio::sync::Semaphore::new(16));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let cp = cp.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let found = req.method() == http::Method::GET && req.uri().path() == "/metrics";
                    let (status, body) = match found {
                        true => (http::StatusCode::OK, cp.metrics_text()),
                        false => (
                            http::StatusCode::NOT_FOUND,
                            "not found: try /metrics\n".to_string(),
                        ),
                    };
                    let resp = http::Response::builder()
                        .status(status)
                        .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")
                        .body(Full::new(Bytes::from(body)))
                        .unwrap_or_default();
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(60), conn).await;
            drop(permit);
        });
    }
}
