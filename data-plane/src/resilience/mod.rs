//! Stages 5-6, resilience: what TrafficPolicy asks of the calling proxies (and, for server-side rate limits, of
//! the target's own inbound proxies). `call` is the call to an upstream service, one function per layer in this
//! order:
//!
//! fault injection -> rate limit -> circuit breaker -> [ total timeout: retries ( bulkhead -> balancer ->
//! per-try timeout -> upstream -> outcome recorded: EWMA, outlier detection, breaker ) ] (the retry budget is
//! paid into before the first attempt and drawn on for each retry).
//!
//! The policies are config data (`config::policy`); the state each layer keeps lives here, beside the snapshot
//! (`registry`), so it outlives snapshots and a rejected snapshot touches none of it. Every layer counts what it
//! does (`Counters`, exported on the admin `/metrics`).

pub mod backoff;
pub mod balance;
pub mod breaker;
pub mod bucket;
pub mod budget;
pub mod call;
#[cfg(test)]
mod call_tests;
pub mod clock;
pub mod health;
pub mod registry;
pub mod retry;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::policy::{BulkheadConfig, Policy};
pub use call::{call, CallError, Request};
pub use registry::{Balancer, Registry};

/// What each layer did, per upstream service (or per inbound listener for server-side rate limits).
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub budget_exhausted: AtomicU64,
    pub breaker_rejected: AtomicU64,
    pub breaker_opened: AtomicU64,
    pub breaker_half_opened: AtomicU64,
    pub breaker_closed: AtomicU64,
    pub ejections: AtomicU64,
    pub rate_limited: AtomicU64,
    pub rate_queued: AtomicU64,
    pub bulkhead_rejected: AtomicU64,
    pub fault_delays: AtomicU64,
    pub fault_aborts: AtomicU64,
    pub timeouts: AtomicU64,
    pub health_check_failures: AtomicU64,
}

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Concurrency cap per upstream service: `max_concurrent` in flight, up to `max_pending` waiting for a slot,
/// the rest rejected at once.
#[derive(Debug)]
pub struct Bulkhead {
    pub cfg: BulkheadConfig,
    slots: Arc<Semaphore>,
    pending: AtomicU32,
}

impl Bulkhead {
    pub fn new(cfg: BulkheadConfig) -> Self {
        Bulkhead {
            cfg,
            slots: Arc::new(Semaphore::new(cfg.max_concurrent as usize)),
            pending: AtomicU32::new(0),
        }
    }

    /// A slot, or None when the bulkhead (and its queue) is full.
    pub async fn enter(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Some(p);
        }
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.cfg.max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        // Leaves the queue however the wait ends, including when the caller gives up (a timeout drops this
        // future mid-wait): a leaked count would shrink the queue for good.
        struct Waiting<'a>(&'a AtomicU32);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _waiting = Waiting(&self.pending);
        self.slots.clone().acquire_owned().await.ok()
    }

    pub fn in_flight(&self) -> usize {
        self.cfg.max_concurrent as usize - self.slots.available_permits()
    }
}

/// The state of one upstream service, kept across snapshots while its policy is unchanged (endpoint state is
/// kept even when the policy changes).
#[derive(Debug)]
pub struct ClusterRuntime {
    pub name: Arc<str>,
    pub policy: Arc<Policy>,
    pub breaker: Option<breaker::Breaker>,
    pub budget: budget::Budget,
    pub bulkhead: Option<Bulkhead>,
    pub limiter: Option<bucket::KeyedLimiter>,
    pub endpoints: Arc<Mutex<HashMap<SocketAddr, Arc<balance::EndpointState>>>>,
    pub counters: Counters,
    /// Upstream clients with this policy's connect/idle timeouts (when it sets them).
    pub clients: std::sync::OnceLock<crate::upstream::Upstreams>,
}

impl ClusterRuntime {
    pub fn new(
        name: Arc<str>,
        policy: Arc<Policy>,
        endpoints: Arc<Mutex<HashMap<SocketAddr, Arc<balance::EndpointState>>>>,
    ) -> Self {
        let retry = policy.request.retry.clone().unwrap_or_default();
        ClusterRuntime {
            breaker: policy.breaker.clone().map(breaker::Breaker::new),
            budget: budget::Budget::new(retry.budget),
            bulkhead: policy.bulkhead.map(Bulkhead::new),
            limiter: policy
                .request
                .rate_limit
                .as_ref()
                .map(|r| bucket::KeyedLimiter::new(r.rate, r.burst)),
            name,
            policy,
            endpoints,
            counters: Counters::default(),
            clients: std::sync::OnceLock::new(),
        }
    }

    /// The state of the endpoint at `addr` (created on first sight).
    pub fn endpoint(&self, addr: SocketAddr) -> Arc<balance::EndpointState> {
        self.endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(addr)
            .or_default()
            .clone()
    }

    /// Records a breaker transition in the counters (and the log).
    pub fn breaker_moved(&self, to: Option<breaker::State>) {
        let Some(to) = to else { return };
        let c = match to {
            breaker::State::Open => &self.counters.breaker_opened,
            breaker::State::HalfOpen => &self.counters.breaker_half_opened,
            breaker::State::Closed => &self.counters.breaker_closed,
        };
        inc(c);
        tracing::info!(cluster = %self.name, state = to.as_str(), "circuit breaker");
    }

    /// Outlier detection: counts a response (or failure) from an endpoint and ejects it when a streak reaches
    /// its threshold, unless `maxEjectionPercent` of the set is out already. Returns true if it was ejected.
    pub fn observe_outlier(
        &self,
        states: &[Arc<balance::EndpointState>],
        i: usize,
        status: Option<u16>,
    ) -> bool {
        let Some(cfg) = &self.policy.outlier else {
            return false;
        };
        let Some(ep) = states.get(i) else {
            return false;
        };
        let now = clock::now_nanos();
        let gateway = matches!(status, None | Some(502..=504));
        let server = matches!(status, None | Some(500..=599));
        if !server {
            ep.consecutive_5xx.store(0, Ordering::Relaxed);
            ep.consecutive_gateway.store(0, Ordering::Relaxed);
            // A long healthy stretch after the last ejection resets the growing ejection time.
            let until = ep.ejected_until.load(Ordering::Relaxed);
            if until != 0 && now > until.saturating_add(nanos(cfg.base_ejection)) {
                ep.ejections.store(0, Ordering::Relaxed);
                ep.ejected_until.store(0, Ordering::Relaxed);
            }
            return false;
        }
        let c5 = ep.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
        let cg = if gateway {
            ep.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            ep.consecutive_gateway.store(0, Ordering::Relaxed);
            0
        };
        let hit = (cfg.consecutive_5xx > 0 && c5 >= cfg.consecutive_5xx)
            || (cfg.consecutive_gateway > 0 && cg >= cfg.consecutive_gateway);
        if !hit || !ep.available(now) {
            return false;
        }
        let ejected = states
            .iter()
            .filter(|s| s.ejected_until.load(Ordering::Relaxed) > now)
            .count();
        let allowed = states.len() * cfg.max_percent as usize / 100;
        if ejected + 1 > allowed {
            return false;
        }
        let times = ep.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let duration = cfg.base_ejection.saturating_mul(times.min(10));
        ep.ejected_until
            .store(now.saturating_add(nanos(duration)), Ordering::Relaxed);
        ep.consecutive_5xx.store(0, Ordering::Relaxed);
        ep.consecutive_gateway.store(0, Ordering::Relaxed);
        inc(&self.counters.ejections);
        tracing::info!(cluster = %self.name, endpoint = i, for_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX), "outlier ejected");
        true
    }
}

/// A duration on the outlier clock (nanoseconds), saturating: a snapshot may carry any duration, even `u64::MAX`
/// seconds, and the sum with "now" must not overflow.
fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
