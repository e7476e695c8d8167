//! Active health checks: every `interval`, a GET of `path` to each endpoint of the cluster (2xx within `timeout`
//! passes). `unhealthyThreshold` failures in a row take an endpoint out of the balancer's set;
//! `healthyThreshold` passes in a row bring it back. One task per cluster with a health check, stopped when the
//! cluster's policy changes or the cluster goes away.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use http::Request;

use super::balance::EndpointState;
use super::{inc, ClusterRuntime};
use crate::config::policy::HealthConfig;
use crate::config::snapshot::Cluster;
use crate::upstream::body::RequestBody;
use crate::upstream::{self, Upstreams};

/// The applied snapshot's cluster of a name (its current endpoints), as the registry has it bound.
pub type Endpoints = Arc<dyn Fn(&str) -> Option<Arc<Cluster>> + Send + Sync>;

type Running = HashMap<Arc<str>, (Weak<ClusterRuntime>, tokio::task::AbortHandle)>;

#[derive(Default)]
pub struct Checks {
    running: Mutex<Running>,
}

/// One check result into an endpoint's state; returns true when the endpoint changed state.
pub fn record(state: &EndpointState, cfg: &HealthConfig, passed: bool) -> bool {
    let unhealthy = state.unhealthy.load(Ordering::Relaxed);
    if passed != unhealthy {
        state.check_streak.store(0, Ordering::Relaxed);
        return false;
    }
    let streak = state.check_streak.fetch_add(1, Ordering::Relaxed) + 1;
    let threshold = if unhealthy {
        cfg.healthy_threshold
    } else {
        cfg.unhealthy_threshold
    };
    if streak >= threshold {
        state.unhealthy.store(!unhealthy, Ordering::Relaxed);
        state.check_streak.store(0, Ordering::Relaxed);
        return true;
    }
    false
}

impl Checks {
    /// Starts (or restarts) the checker for `rt` if its policy has a health check; stops a stale one.
    pub fn ensure(&self, rt: &Arc<ClusterRuntime>, endpoints: &Endpoints, upstreams: &Upstreams) {
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((weak, handle)) = running.get(&rt.name) {
            if weak.as_ptr() == Arc::as_ptr(rt) && rt.policy.health.is_some() {
                return;
            }
            handle.abort();
            running.remove(&rt.name);
        }
        let Some(cfg) = rt.policy.health.clone() else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(rt);
        let (endpoints, upstreams) = (endpoints.clone(), upstreams.clone());
        let task = handle.spawn(check_loop(weak.clone(), cfg, endpoints, upstreams));
        running.insert(rt.name.clone(), (weak, task.abort_handle()));
    }

    /// Stops checkers of clusters that are gone.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|name, (_, handle)| {
                let k = keep(name);
                if !k {
                    handle.abort();
                }
                k
            });
    }
}

async fn check_loop(
    rt: Weak<ClusterRuntime>,
    cfg: HealthConfig,
    endpoints: Endpoints,
    upstreams: Upstreams,
) {
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(runtime) = rt.upgrade() else { return };
        let Some(cluster) = endpoints(&runtime.name) else {
            continue;
        };
        let checks = cluster.endpoints.iter().map(|e| {
            let uri = upstream::uri(e.authority.clone(), cfg.path.parse().ok().as_ref());
            let endpoint = e.clone();
            let upstreams = upstreams.clone();
            let protocol = cluster.protocol;
            let timeout = cfg.timeout;
            async move {
                let Some(uri) = uri else { return false };
                let mut req = Request::new(RequestBody::Empty);
                *req.uri_mut() = uri;
                *req.version_mut() = upstream::version(protocol);
                match tokio::time::timeout(timeout, upstreams.request(protocol, &endpoint, req))
                    .await
                {
                    Ok(Ok(resp)) => {
                        let ok = resp.status().is_success();
                        upstream::drain(resp).await;
                        ok
                    }
                    _ => false,
                }
            }
        });
        let results = futures_util::future::join_all(checks).await;
        for (e, passed) in cluster.endpoints.iter().zip(results) {
            if !passed {
                inc(&runtime.counters.health_check_failures);
            }
            let state = runtime.endpoint(e.addr);
            if record(&state, &cfg, passed) {
                tracing::info!(
                    cluster = %runtime.name,
                    endpoint = %e.addr,
                    healthy = !state.unhealthy.load(Ordering::Relaxed),
                    "health check changed the endpoint's state"
                );
            }
        }
    }
}
