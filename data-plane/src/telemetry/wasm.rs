//! What the proxy reports about its Wasm filters, as typed families in the metrics registry: each plugin's
//! failures by kind (`meshwork_wasm_failures_total`), the time each of its calls took
//! (`meshwork_wasm_call_duration_seconds`), and every metric the filters defined with `proxy_define_metric`, one
//! family per metric named `meshwork_filter_<name>` (counters, gauges and histograms as such). Read at scrape
//! time from the current snapshot's plugins and the filters' shared state; nothing here calls them.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use crate::config::ConfigStore;
use crate::filter::wasm::host::metrics::Value;
use crate::filter::wasm::host::CrossPluginState;

pub struct WasmMetrics {
    pub store: Arc<ConfigStore>,
    pub shared: Arc<CrossPluginState>,
}

impl std::fmt::Debug for WasmMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WasmMetrics")
    }
}

impl Collector for WasmMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = self.store.load();
        let mut plugins: Vec<_> = snap.plugins.iter().collect();
        plugins.sort_by(|a, b| a.0.cmp(b.0));
        let mut family = encoder.encode_descriptor(
            "meshwork_wasm_failures",
            "Wasm filter calls that failed (the instance was discarded), by plugin and kind",
            None,
            MetricType::Counter,
        )?;
        for (name, p) in &plugins {
            let f = &p.failures;
            for (kind, v) in [
                ("trap", &f.trap),
                ("timeout", &f.timeout),
                ("oom", &f.oom),
                ("other", &f.other),
            ] {
                let labels = [("plugin", name.as_str()), ("kind", kind)];
                ConstCounter::new(v.load(Relaxed)).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "meshwork_wasm_call_duration",
            "Time each call into a Wasm filter took (one per callback: headers, body, trailers, callout answers...)",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (name, p) in &plugins {
            p.calls
                .encode(family.encode_family(&[("plugin", name.as_str())])?)?;
        }
        self.shared.with_metrics(|all| {
            let mut seen = HashSet::new();
            for d in all {
                let name = family_name(&d.name);
                // Two filter names that sanitise alike: the first defined is exported.
                if !seen.insert(name.clone()) {
                    continue;
                }
                let help = format!("Defined by a Wasm filter as {:?}", d.name);
                let ty = match d.value {
                    Value::Counter(_) => MetricType::Counter,
                    Value::Gauge(_) => MetricType::Gauge,
                    Value::Histogram(_) => MetricType::Histogram,
                };
                let metric = encoder.encode_descriptor(&name, &help, None, ty)?;
                match &d.value {
                    Value::Counter(v) => ConstCounter::new(*v as u64).encode(metric)?,
                    Value::Gauge(v) => ConstGauge::new(*v).encode(metric)?,
                    Value::Histogram(h) => h.encode(metric)?,
                }
            }
            Ok(())
        })
    }
}

/// `meshwork_filter_` + the filter's name with every character Prometheus does not allow in a name as `_`.
pub fn family_name(name: &str) -> String {
    // A counter is exported as `<family>_total`: a name that already says so is not said twice.
    let name = name.strip_suffix("_total").unwrap_or(name);
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(200)
        .collect();
    format!("meshwork_filter_{clean}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_names_become_valid_family_names() {
        assert_eq!(
            family_name("ext_authz.allowed"),
            "meshwork_filter_ext_authz_allowed"
        );
        assert_eq!(family_name("a b/c{d}\"e"), "meshwork_filter_a_b_c_d__e");
        assert_eq!(family_name("hits_total"), "meshwork_filter_hits");
    }
}
