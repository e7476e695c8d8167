//! The proxy's own families in the metrics registry: the applied configuration's version, AuthorizationPolicy
//! decisions, what each resilience layer did per upstream service, mTLS handshakes and certificate expiry, gateway
//! certificates, the Wasm compile cache. Each is read from its owner's counters when `/metrics` is scraped
//! (prometheus-client's `Collector`), so nothing here is on the request path.

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::config::ConfigStore;
use crate::filter::wasm::LazyWasm;
use crate::identity::MeshIdentity;
use crate::resilience::{ClusterRuntime, Counters, Registry};
use crate::tls::serving::ServingCerts;
use crate::tls::TlsMetrics;

/// What the families are read from.
pub struct Families {
    pub store: Arc<ConfigStore>,
    pub wasm: Arc<LazyWasm>,
    pub resilience: Arc<Registry>,
    pub identity: Arc<MeshIdentity>,
    pub tls: Arc<TlsMetrics>,
    pub serving: Arc<ServingCerts>,
    pub authz: Arc<crate::authz::Stats>,
}

impl fmt::Debug for Families {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Families")
    }
}

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let version = self.store.load().version;
        ConstGauge::new(version as i64).encode(encoder.encode_descriptor(
            "meshwork_config_version",
            "Version of the applied configuration snapshot.",
            None,
            MetricType::Gauge,
        )?)?;
        let mut family = encoder.encode_descriptor(
            "meshwork_authz_decisions",
            "Requests an AuthorizationPolicy denied (deny) or audited (audit).",
            None,
            MetricType::Counter,
        )?;
        for (policy, outcome, n) in self.authz.snapshot() {
            let labels = [("policy", &*policy), ("outcome", outcome)];
            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
        }
        resilience(&mut encoder, &self.resilience.all())?;
        let own = self.identity.current();
        self.tls.encode(&mut encoder, own.as_deref())?;
        self.serving.encode_metrics(&mut encoder)?;
        if let Some(cache) = self.wasm.existing().and_then(|w| w.cache.as_ref()) {
            let mut family = encoder.encode_descriptor(
                "meshwork_wasm_compile_cache",
                "Module compilations served from the on-disk cache (hit) or compiled (miss).",
                None,
                MetricType::Counter,
            )?;
            for (result, n) in [("hit", cache.cache_hits()), ("miss", cache.cache_misses())] {
                ConstCounter::new(n as u64).encode(family.encode_family(&[("result", result)])?)?;
            }
        }
        Ok(())
    }
}

type Get = fn(&Counters) -> &std::sync::atomic::AtomicU64;

/// The resilience counters, per upstream service (`route/...` for a route's own policy, `inbound` for a
/// server-side rate limit): name (without `_total`), help, counter.
const COUNTERS: [(&str, &str, Get); 15] = [
    (
        "meshwork_upstream_requests",
        "Requests to the upstream service (before retries).",
        |c| &c.requests,
    ),
    ("meshwork_retries", "Retries sent.", |c| &c.retries),
    (
        "meshwork_retry_budget_exhausted",
        "Retries not sent because the retry budget was spent.",
        |c| &c.budget_exhausted,
    ),
    (
        "meshwork_circuit_breaker_rejected",
        "Requests answered by an open circuit.",
        |c| &c.breaker_rejected,
    ),
    (
        "meshwork_circuit_breaker_opened",
        "Transitions to open.",
        |c| &c.breaker_opened,
    ),
    (
        "meshwork_circuit_breaker_half_opened",
        "Transitions to half-open.",
        |c| &c.breaker_half_opened,
    ),
    (
        "meshwork_circuit_breaker_closed",
        "Transitions back to closed.",
        |c| &c.breaker_closed,
    ),
    (
        "meshwork_outlier_ejections",
        "Endpoints ejected by outlier detection.",
        |c| &c.ejections,
    ),
    (
        "meshwork_rate_limited",
        "Requests rejected by a rate limit (429).",
        |c| &c.rate_limited,
    ),
    (
        "meshwork_rate_limit_queued",
        "Requests delayed by a rate limit in queue mode.",
        |c| &c.rate_queued,
    ),
    (
        "meshwork_bulkhead_rejected",
        "Requests rejected by a full bulkhead.",
        |c| &c.bulkhead_rejected,
    ),
    ("meshwork_fault_delays", "Injected delays.", |c| {
        &c.fault_delays
    }),
    ("meshwork_fault_aborts", "Injected aborts.", |c| {
        &c.fault_aborts
    }),
    (
        "meshwork_upstream_timeouts",
        "Per-try or total timeouts.",
        |c| &c.timeouts,
    ),
    (
        "meshwork_health_check_failures",
        "Failed active health checks.",
        |c| &c.health_check_failures,
    ),
];

fn resilience(encoder: &mut DescriptorEncoder, all: &[Arc<ClusterRuntime>]) -> fmt::Result {
    for (name, help, get) in COUNTERS {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for rt in all {
            let n = get(&rt.counters).load(Relaxed);
            ConstCounter::new(n).encode(family.encode_family(&[("cluster", &*rt.name)])?)?;
        }
    }
    let mut family = encoder.encode_descriptor(
        "meshwork_circuit_breaker_state",
        "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
        None,
        MetricType::Gauge,
    )?;
    for rt in all {
        if let Some(b) = &rt.breaker {
            let state = i64::from(b.state().gauge());
            ConstGauge::new(state).encode(family.encode_family(&[("cluster", &*rt.name)])?)?;
        }
    }
    let mut family = encoder.encode_descriptor(
        "meshwork_endpoints_unavailable",
        "Endpoints currently ejected or failing health checks.",
        None,
        MetricType::Gauge,
    )?;
    let now = crate::resilience::clock::now_nanos();
    for rt in all {
        let out_of_set = rt
            .endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .filter(|e| !e.available(now))
            .count();
        ConstGauge::new(out_of_set as i64)
            .encode(family.encode_family(&[("cluster", &*rt.name)])?)?;
    }
    let mut family = encoder.encode_descriptor(
        "meshwork_bulkhead_in_flight",
        "Requests holding a bulkhead slot.",
        None,
        MetricType::Gauge,
    )?;
    for rt in all {
        if let Some(b) = &rt.bulkhead {
            let n = b.in_flight() as i64;
            ConstGauge::new(n).encode(family.encode_family(&[("cluster", &*rt.name)])?)?;
        }
    }
    Ok(())
}
