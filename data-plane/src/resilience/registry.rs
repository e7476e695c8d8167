//! Runtime state beside the snapshot. A snapshot is plain data; once one has been built (and so will be
//! published), `Registry::sync` binds each of its clusters to the state its policy needs: a `ClusterRuntime`
//! (breaker, budget, limiter, bulkhead, counters, per-endpoint state), kept while the policy is unchanged, and a
//! `Balancer` over the cluster's current endpoints. A rejected snapshot never gets here, so it changes nothing live.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;

use super::balance::{self, EndpointState, Ring};
use super::{health, ClusterRuntime};
use crate::config::policy::{Balancer as Kind, Policy};
use crate::config::snapshot::{Cluster, PolicyRef, Snapshot};
use crate::upstream::Upstreams;

/// A cluster of the applied snapshot with its runtime state: what a routed request is balanced over.
#[derive(Debug)]
pub struct Balancer {
    pub cluster: Arc<Cluster>,
    pub rt: Arc<ClusterRuntime>,
    /// Per-endpoint state (latency, in flight, ejection, health), parallel to `cluster.endpoints`.
    pub states: Vec<Arc<EndpointState>>,
    /// Consistent-hash ring (empty unless the policy asks for consistent hashing).
    ring: Ring,
    next: AtomicUsize,
}

impl Balancer {
    fn new(cluster: Arc<Cluster>, rt: Arc<ClusterRuntime>) -> Self {
        let states = cluster
            .endpoints
            .iter()
            .map(|e| rt.endpoint(e.addr))
            .collect();
        let ring = if rt.policy.balancer == Kind::ConsistentHash {
            let addrs: Vec<String> = cluster
                .endpoints
                .iter()
                .map(|e| e.addr.to_string())
                .collect();
            Ring::new(&addrs)
        } else {
            Ring::default()
        };
        Balancer {
            cluster,
            rt,
            states,
            ring,
            next: AtomicUsize::new(0),
        }
    }

    /// The balancer's pick by the cluster's policy (`key` for consistent hashing): an index into
    /// `cluster.endpoints` and `states`.
    pub fn choose(&self, key: Option<u64>) -> Option<usize> {
        let policy = self.rt.policy.balancer;
        balance::choose(policy, &self.states, &self.ring, &self.next, key)
    }
}

/// What requests read: the balancers of the applied snapshot's clusters and the runtime state of its route and
/// inbound policies, by name. Swapped whole, like the snapshot.
#[derive(Debug, Default)]
struct Bound {
    balancers: HashMap<Arc<str>, Arc<Balancer>>,
    policies: HashMap<Arc<str>, Arc<ClusterRuntime>>,
}

/// Every cluster's runtime state, by name, shared by all snapshots (and the admin endpoint).
#[derive(Default)]
pub struct Registry {
    runtimes: Mutex<HashMap<Arc<str>, Arc<ClusterRuntime>>>,
    bound: Arc<ArcSwap<Bound>>,
    /// Health checkers running, by cluster name (stopped when their runtime is replaced or dropped).
    checks: health::Checks,
}

impl Registry {
    /// Binds a snapshot that is about to be published: runtimes for its clusters and policies (kept where the
    /// policy is unchanged), balancers over its endpoints; forgets the state of what it no longer has, and runs
    /// the health checks its policies ask for.
    pub fn sync(&self, snap: &Snapshot, upstreams: &Upstreams) {
        let mut bound = Bound::default();
        for c in snap.clusters.values() {
            let rt = self.runtime(&c.name, &c.policy);
            // Endpoints that left take their state with them: the table stays as large as the cluster.
            rt.endpoints
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|addr, _| c.endpoints.iter().any(|e| e.addr == *addr));
            bound
                .balancers
                .insert(c.name.clone(), Arc::new(Balancer::new(c.clone(), rt)));
        }
        let route_policies = snap.listeners.values().flat_map(|l| &l.vhosts.hosts);
        let route_policies = route_policies
            .flat_map(|vh| &vh.routes)
            .filter_map(|r| r.policy.as_ref());
        for p in route_policies.chain(snap.inbound_limit.as_ref()) {
            bound
                .policies
                .insert(p.key.clone(), self.runtime(&p.key, &p.policy));
        }
        self.lock()
            .retain(|k, _| bound.balancers.contains_key(k) || bound.policies.contains_key(k));
        let bound = Arc::new(bound);
        self.bound.store(bound.clone());
        self.checks.retain(|n| bound.balancers.contains_key(n));
        for b in bound.balancers.values() {
            self.checks.ensure(&b.rt, &self.bound_handle(), upstreams);
        }
    }

    /// The balancer of `cluster`. A request still on an older snapshot may name a cluster that is gone meanwhile:
    /// it gets a balancer of its own with fresh state, so it is still served.
    pub fn balancer(&self, cluster: &Arc<Cluster>) -> Arc<Balancer> {
        if let Some(b) = self.bound.load().balancers.get(&cluster.name) {
            return b.clone();
        }
        let rt = ClusterRuntime::new(cluster.name.clone(), cluster.policy.clone(), Arc::default());
        Arc::new(Balancer::new(cluster.clone(), Arc::new(rt)))
    }

    /// The runtime state of a route's (or the inbound listener's) policy; likewise never missing.
    pub fn policy(&self, p: &PolicyRef) -> Arc<ClusterRuntime> {
        if let Some(rt) = self.bound.load().policies.get(&p.key) {
            return rt.clone();
        }
        Arc::new(ClusterRuntime::new(
            p.key.clone(),
            p.policy.clone(),
            Arc::default(),
        ))
    }

    /// The runtime for `name` with this policy: the existing one if the policy is unchanged, else a new one that
    /// keeps the endpoint state.
    fn runtime(&self, name: &Arc<str>, policy: &Arc<Policy>) -> Arc<ClusterRuntime> {
        let mut map = self.lock();
        if let Some(rt) = map.get(name).filter(|rt| *rt.policy == **policy) {
            return rt.clone();
        }
        let endpoints: Arc<Mutex<HashMap<SocketAddr, Arc<EndpointState>>>> = map
            .get(name)
            .map(|rt| rt.endpoints.clone())
            .unwrap_or_default();
        if policy.health.is_none() {
            // No health check any more: nothing would ever bring back an endpoint the last one took out.
            for state in endpoints
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
            {
                state
                    .unhealthy
                    .store(false, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let rt = Arc::new(ClusterRuntime::new(name.clone(), policy.clone(), endpoints));
        map.insert(name.clone(), rt.clone());
        rt
    }

    fn bound_handle(&self) -> health::Endpoints {
        let bound = self.bound.clone();
        Arc::new(move |name: &str| bound.load().balancers.get(name).map(|b| b.cluster.clone()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<ClusterRuntime>>> {
        self.runtimes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every runtime, sorted by name (admin `/metrics`).
    pub fn all(&self) -> Vec<Arc<ClusterRuntime>> {
        let mut v: Vec<_> = self.lock().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::*;
    use crate::config::policy::HealthConfig;
    use crate::config::snapshot::Endpoint;
    use crate::config::snapshot::Protocol;

    fn snapshot(ports: &[u16], policy: Policy) -> Snapshot {
        let endpoints = ports
            .iter()
            .map(|p| Endpoint::plain(SocketAddr::from(([127, 0, 0, 1], *p))))
            .collect();
        let mut cluster = Cluster::new(Arc::from("service/default/a"), Protocol::Http1, endpoints);
        cluster.policy = Arc::new(policy);
        let mut snap = Snapshot::empty();
        snap.clusters
            .insert(cluster.name.clone(), Arc::new(cluster));
        snap
    }

    fn balancer(r: &Registry, snap: &Snapshot) -> Arc<Balancer> {
        r.balancer(snap.clusters.values().next().unwrap())
    }

    fn health() -> Policy {
        Policy {
            health: Some(HealthConfig {
                path: "/".into(),
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
                healthy_threshold: 1,
                unhealthy_threshold: 1,
            }),
            ..Policy::default()
        }
    }

    #[test]
    fn an_unchanged_policy_keeps_the_runtime_and_a_changed_one_keeps_endpoint_state() {
        let (r, upstreams) = (Registry::default(), Upstreams::new(Duration::from_secs(1)));
        let first = snapshot(&[9001, 9002], Policy::default());
        r.sync(&first, &upstreams);
        let before = balancer(&r, &first);
        let again = snapshot(&[9001, 9002], Policy::default());
        r.sync(&again, &upstreams);
        assert!(Arc::ptr_eq(&before.rt, &balancer(&r, &again).rt));
        let changed = snapshot(&[9001, 9002], health());
        r.sync(&changed, &upstreams);
        let after = balancer(&r, &changed);
        assert!(
            !Arc::ptr_eq(&before.rt, &after.rt),
            "a new policy, a new runtime"
        );
        assert!(
            Arc::ptr_eq(&before.states[0], &after.states[0]),
            "endpoint state kept"
        );
    }

    #[test]
    fn endpoint_state_leaves_with_its_endpoint() {
        let (r, upstreams) = (Registry::default(), Upstreams::new(Duration::from_secs(1)));
        let ports: Vec<u16> = (9000..9100).collect();
        r.sync(&snapshot(&ports, Policy::default()), &upstreams);
        let one = snapshot(&[9000], Policy::default());
        r.sync(&one, &upstreams);
        let b = balancer(&r, &one);
        assert_eq!(
            b.rt.endpoints.lock().unwrap().len(),
            1,
            "the table follows the cluster"
        );
    }

    #[test]
    fn removing_the_health_check_brings_back_what_it_took_out() {
        let (r, upstreams) = (Registry::default(), Upstreams::new(Duration::from_secs(1)));
        let checked = snapshot(&[9001, 9002], health());
        r.sync(&checked, &upstreams);
        balancer(&r, &checked).states[0]
            .unhealthy
            .store(true, Ordering::Relaxed);
        let unchecked = snapshot(&[9001, 9002], Policy::default());
        r.sync(&unchecked, &upstreams);
        assert!(!balancer(&r, &unchecked).states[0]
            .unhealthy
            .load(Ordering::Relaxed));
    }
}
