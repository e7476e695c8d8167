//! Time for the resilience state machines: `tokio::time::Instant` (so tests run on paused time), and a compact
//! form for atomics (nanoseconds since the first use in this process).

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since the process epoch (never 0, so 0 can mean "unset").
pub fn nanos(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_nanos() as u64 + 1
}

pub fn now_nanos() -> u64 {
    nanos(Instant::now())
}

pub fn from_nanos(n: u64) -> Instant {
    epoch() + Duration::from_nanos(n.saturating_sub(1))
}
