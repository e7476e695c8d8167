//! What the proxy records about its calls upstream: each attempt's duration by destination service, method and
//! status (`http_client_request_duration_seconds`, OpenTelemetry's `http.client.request.duration`). The upstream
//! clients write here; nothing here calls them.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use http::Method;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;
use rustc_hash::FxBuildHasher;
use tokio::time::Instant;

use super::metrics::{method_label, DURATION_BUCKETS};

/// The label set of one attempt upstream.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    destination_service: Arc<str>,
    http_request_method: &'static str,
    /// 0 when no response came.
    http_response_status_code: u16,
    /// Why no response came (OpenTelemetry's `error.type`): `connect`, `failed` (the exchange broke), `cancelled`
    /// (the attempt was given up: its timeout, the deadline, the client left); empty with a response.
    error_type: &'static str,
}

/// Attempt durations by label set (one FxHash lookup per attempt; labels come from the config or bounded sets).
#[derive(Debug, Default)]
pub struct CallMetrics(RwLock<HashMap<CallLabels, Histogram, FxBuildHasher>>);

impl CallMetrics {
    /// An attempt is starting: it is recorded when the returned timer ends (or is dropped: cancelled).
    pub fn start(self: &Arc<Self>, service: &Arc<str>, method: &Method) -> CallTimer {
        CallTimer {
            metrics: self.clone(),
            labels: Some(CallLabels {
                destination_service: service.clone(),
                http_request_method: method_label(method),
                http_response_status_code: 0,
                error_type: "cancelled",
            }),
            start: Instant::now(),
        }
    }

    fn record(&self, labels: &CallLabels, seconds: f64) {
        if let Some(h) = self
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(labels)
        {
            return h.observe(seconds);
        }
        let mut all = self.0.write().unwrap_or_else(PoisonError::into_inner);
        all.entry(labels.clone())
            .or_insert_with(|| Histogram::new(DURATION_BUCKETS))
            .observe(seconds);
    }
}

impl Collector for CallMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let all = self.0.read().unwrap_or_else(PoisonError::into_inner);
        let mut family = encoder.encode_descriptor(
            "http_client_request_duration",
            "Duration of each attempt upstream, until its response headers (or its failure)",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (labels, histogram) in all.iter() {
            histogram.encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }
}

/// One attempt being timed.
pub struct CallTimer {
    metrics: Arc<CallMetrics>,
    labels: Option<CallLabels>,
    start: Instant,
}

impl CallTimer {
    /// The attempt got a response with `status`.
    pub fn answered(mut self, status: u16) {
        if let Some(l) = self.labels.as_mut() {
            l.http_response_status_code = status;
            l.error_type = "";
        }
    }

    /// The attempt failed without a response: `connect` or `failed`.
    pub fn failed(mut self, error_type: &'static str) {
        if let Some(l) = self.labels.as_mut() {
            l.error_type = error_type;
        }
    }
}

impl Drop for CallTimer {
    fn drop(&mut self) {
        if let Some(labels) = self.labels.take() {
            self.metrics
                .record(&labels, self.start.elapsed().as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn attempts_are_timed_by_outcome() {
        let m = Arc::new(CallMetrics::default());
        let svc: Arc<str> = Arc::from("service/default/api");
        let t = m.start(&svc, &Method::GET);
        tokio::time::advance(std::time::Duration::from_millis(3)).await;
        t.answered(200);
        m.start(&svc, &Method::POST).failed("connect");
        drop(m.start(&svc, &Method::GET));
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(m.clone()));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap_or_default();
        let count = |labels: &str| {
            format!("http_client_request_duration_seconds_count{{destination_service=\"service/default/api\",{labels}}} 1")
        };
        assert!(
            text.contains(&count(
                "http_request_method=\"GET\",http_response_status_code=\"200\",error_type=\"\""
            )),
            "{text}"
        );
        assert!(text.contains(&count("http_request_method=\"POST\",http_response_status_code=\"0\",error_type=\"connect\"")), "{text}");
        assert!(text.contains(&count("http_request_method=\"GET\",http_response_status_code=\"0\",error_type=\"cancelled\"")), "{text}");
        assert!(text.contains("http_client_request_duration_seconds_bucket{le=\"0.005\",destination_service=\"service/default/api\",http_request_method=\"GET\",http_response_status_code=\"200\",error_type=\"\"} 1"), "{text}");
    }
}
