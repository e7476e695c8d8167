//! Load balancing over a cluster's endpoints, skipping ejected (outlier detection) and unhealthy (health checks)
//! ones unless none is left. Per-endpoint state lives as long as the endpoint (across snapshots), in atomics.
//!
//! - round-robin, random;
//! - least-request: the less busy of two random endpoints (power of two choices);
//! - peak-ewma (default): the cheaper of two random endpoints by latency EWMA x (in flight + 1), where the EWMA
//!   jumps to any higher sample (peak-sensitive), decays over 10 s, and a 429/503 answer counts as a slow one;
//! - consistent-hash: a hash ring (100 points per endpoint), so a key stays on one endpoint and only about 1/N of
//!   the keys move when an endpoint leaves.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use super::clock;
use crate::config::policy::Balancer as Policy;

const DECAY: Duration = Duration::from_secs(10);
/// What a 429/503 answer (or a failure) counts as, in latency.
pub const PENALTY: Duration = Duration::from_millis(500);

#[derive(Debug, Default)]
pub struct EndpointState {
    pub in_flight: AtomicU32,
    /// f64 bits, nanoseconds.
    ewma: AtomicU64,
    ewma_at: AtomicU64,
    /// Outlier detection: until when (clock nanos; 0 = not ejected), how often, and the current streaks.
    pub ejected_until: AtomicU64,
    pub ejections: AtomicU32,
    pub consecutive_5xx: AtomicU32,
    pub consecutive_gateway: AtomicU32,
    /// Active health checks: false once `unhealthyThreshold` checks failed in a row.
    pub unhealthy: AtomicBool,
    pub check_streak: AtomicU32,
}

impl EndpointState {
    pub fn available(&self, now: u64) -> bool {
        !self.unhealthy.load(Ordering::Relaxed) && self.ejected_until.load(Ordering::Relaxed) <= now
    }

    pub fn ewma_nanos(&self, now: u64) -> f64 {
        let v = f64::from_bits(self.ewma.load(Ordering::Relaxed));
        let at = self.ewma_at.load(Ordering::Relaxed);
        let elapsed = now.saturating_sub(at) as f64;
        v * (-elapsed / DECAY.as_nanos() as f64).exp()
    }

    /// Records a response time (peak-sensitive: a slower sample replaces the average at once).
    pub fn observe(&self, rtt: Duration, now: u64) {
        let sample = rtt.as_nanos() as f64;
        let current = f64::from_bits(self.ewma.load(Ordering::Relaxed));
        let at = self.ewma_at.load(Ordering::Relaxed);
        let next = if sample > current || at == 0 {
            sample
        } else {
            let elapsed = now.saturating_sub(at) as f64;
            let w = (-elapsed / DECAY.as_nanos() as f64).exp();
            current * w + sample * (1.0 - w)
        };
        self.ewma.store(next.to_bits(), Ordering::Relaxed);
        self.ewma_at.store(now, Ordering::Relaxed);
    }

    fn cost(&self, now: u64) -> f64 {
        (self.ewma_nanos(now) + 1_000.0) * f64::from(self.in_flight.load(Ordering::Relaxed) + 1)
    }
}

/// One request in flight to an endpoint, for as long as this lives.
pub struct InFlight<'a>(&'a EndpointState);

impl<'a> InFlight<'a> {
    pub fn new(state: &'a EndpointState) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(state)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A consistent-hash ring over endpoint indices.
#[derive(Debug, Default)]
pub struct Ring {
    points: Vec<(u64, usize)>,
}

const POINTS_PER_ENDPOINT: usize = 100;

pub fn hash(bytes: &[u8]) -> u64 {
    // FNV-1a then a 64-bit finaliser (murmur3's): stable across processes, cheap, well spread.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

impl Ring {
    /// Points depend only on each endpoint's address, so removing one endpoint moves only its keys.
    pub fn new(addrs: &[String]) -> Ring {
        let mut points = Vec::with_capacity(addrs.len() * POINTS_PER_ENDPOINT);
        for (i, a) in addrs.iter().enumerate() {
            for p in 0..POINTS_PER_ENDPOINT {
                points.push((hash(format!("{a}#{p}").as_bytes()), i));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// Endpoints in ring order from `key`'s point (the first acceptable one is the pick).
    pub fn walk(&self, key: u64) -> impl Iterator<Item = usize> + '_ {
        let start = self.points.partition_point(|(h, _)| *h < key);
        self.points[start..]
            .iter()
            .chain(&self.points[..start])
            .map(|(_, i)| *i)
    }
}

/// Chooses an endpoint index among `states` (parallel to the cluster's endpoints).
pub fn choose(
    policy: Policy,
    states: &[std::sync::Arc<EndpointState>],
    ring: &Ring,
    rr: &std::sync::atomic::AtomicUsize,
    key: Option<u64>,
) -> Option<usize> {
    let n = states.len();
    if n == 0 {
        return None;
    }
    if n == 1 {
        return Some(0);
    }
    let now = clock::now_nanos();
    let ok = |i: usize| states[i].available(now);
    let any_ok = (0..n).any(ok);
    // With nothing available, balance over everything (better than failing every request; Envoy's panic mode).
    let usable = |i: usize| !any_ok || ok(i);
    let random_usable = || {
        for _ in 0..4 {
            let i = fastrand::usize(..n);
            if usable(i) {
                return i;
            }
        }
        let start = fastrand::usize(..n);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|i| usable(*i))
            .unwrap_or(start)
    };
    match policy {
        Policy::RoundRobin => {
            let start = rr.fetch_add(1, Ordering::Relaxed);
            (0..n).map(|k| (start + k) % n).find(|i| usable(*i))
        }
        Policy::Random => Some(random_usable()),
        Policy::ConsistentHash => match key {
            Some(k) => ring.walk(k).find(|i| usable(*i)),
            None => Some(random_usable()),
        },
        Policy::LeastRequest | Policy::PeakEwma => {
            let a = random_usable();
            let mut b = random_usable();
            if a == b {
                b = (0..n)
                    .map(|k| (a + 1 + k) % n)
                    .find(|i| usable(*i))
                    .unwrap_or(a);
            }
            let cost = |i: usize| match policy {
                Policy::LeastRequest => f64::from(states[i].in_flight.load(Ordering::Relaxed)),
                _ => states[i].cost(now),
            };
            Some(if cost(b) < cost(a) { b } else { a })
        }
    }
}
