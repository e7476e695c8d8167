//! Retry backoff with full jitter: attempt n waits a uniformly random time in [0, min(max, base * 2^n)).

use std::time::Duration;

pub fn full_jitter(base: Duration, max: Duration, retry: u32, unit_random: f64) -> Duration {
    let cap = base.saturating_mul(1u32 << retry.min(20)).min(max);
    cap.mul_f64(unit_random.clamp(0.0, 1.0))
}

/// The longest `Retry-After` a retry waits for: an upstream cannot park the proxy's requests for longer.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// `Retry-After` as delay-seconds, at most `MAX_RETRY_AFTER` (an HTTP date is not honoured; it is rare on
/// retriable answers).
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
}
