//! Token buckets for rate limits (`requestsPerSecond` sustained, `burst` at once), one per key.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

/// What a limited request gets: go now, wait (queue mode), or be rejected (with how long until a token).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Take {
    Now { remaining: u64 },
    After(Duration),
    Rejected { retry_after: Duration },
}

impl TokenBucket {
    pub fn new(rate: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// Takes a token now, or (with `max_delay`) reserves the next one if it comes within `max_delay`.
    pub fn take(&mut self, now: Instant, max_delay: Option<Duration>) -> Take {
        self.refill(now);
        // A hair of slack so refills summed from many small intervals still add up to whole tokens.
        if self.tokens >= 1.0 - 1e-9 {
            self.tokens -= 1.0;
            return Take::Now {
                remaining: self.tokens.max(0.0) as u64,
            };
        }
        let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.rate);
        match max_delay {
            Some(max) if wait <= max => {
                // Reserved: the bucket goes negative, so later callers queue behind this one.
                self.tokens -= 1.0;
                Take::After(wait)
            }
            _ => Take::Rejected { retry_after: wait },
        }
    }

    /// Seconds until the bucket is full again (the `RateLimit-Reset` header).
    pub fn reset_secs(&self) -> u64 {
        ((self.burst - self.tokens).max(0.0) / self.rate).ceil() as u64
    }

    fn is_full(&self, now: Instant) -> bool {
        self.tokens + now.saturating_duration_since(self.last).as_secs_f64() * self.rate
            >= self.burst
    }
}

/// Buckets by key (a client's IP, header value or service; "" for a global limit), in a bounded table: 16 shards
/// of at most `MAX_KEYS / 16` keys, each behind its own lock. A new key in a full shard first drops the shard's
/// keys whose bucket is full again (they have nothing to remember), else the key used least recently; so many
/// one-off clients can neither grow the table nor make a new key cost more than one scan of a shard. Keys longer
/// than `MAX_KEY_BYTES` are kept as a hash of themselves.
#[derive(Debug)]
pub struct KeyedLimiter {
    pub rate: f64,
    pub burst: u32,
    shards: [Mutex<Shard>; SHARDS],
}

/// One shard's buckets, each with the shard's use count when it was last used (a counter, not a clock: uses that
/// fall in one clock tick still have an order).
#[derive(Debug, Default)]
struct Shard {
    buckets: HashMap<Box<str>, (TokenBucket, u64)>,
    uses: u64,
}

/// At most this many keys are remembered per limit (documented in docs/resilience.md).
pub const MAX_KEYS: usize = 10_000;
const SHARDS: usize = 16;
const PER_SHARD: usize = MAX_KEYS / SHARDS;
/// Longer keys (a header value can be long) are remembered by their hash.
pub const MAX_KEY_BYTES: usize = 128;

impl KeyedLimiter {
    pub fn new(rate: f64, burst: u32) -> Self {
        KeyedLimiter {
            rate,
            burst,
            shards: std::array::from_fn(|_| Mutex::new(Shard::default())),
        }
    }

    /// Takes a token for `key`; returns the outcome and the seconds until that key's bucket is full.
    pub fn take(&self, key: &str, now: Instant, max_delay: Option<Duration>) -> (Take, u64) {
        let hash = super::balance::hash(key.as_bytes());
        let hashed;
        let key = if key.len() > MAX_KEY_BYTES {
            hashed = format!("#{hash:016x}");
            hashed.as_str()
        } else {
            key
        };
        let mut shard = self.shards[(hash % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        shard.uses += 1;
        let uses = shard.uses;
        if !shard.buckets.contains_key(key) {
            if shard.buckets.len() >= PER_SHARD {
                make_room(&mut shard.buckets, now);
            }
            let bucket = TokenBucket::new(self.rate, self.burst, now);
            shard.buckets.insert(key.into(), (bucket, uses));
        }
        match shard.buckets.get_mut(key) {
            Some((b, used)) => {
                *used = uses;
                let t = b.take(now, max_delay);
                (t, b.reset_secs())
            }
            None => (Take::Now { remaining: 0 }, 0),
        }
    }

    /// How many keys are remembered (tests, metrics).
    pub fn keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .buckets
                    .len()
            })
            .sum()
    }
}

/// Frees at least one place in a full shard: the keys whose bucket is full again, else the least recently used.
fn make_room(buckets: &mut HashMap<Box<str>, (TokenBucket, u64)>, now: Instant) {
    buckets.retain(|_, (b, _)| !b.is_full(now));
    if buckets.len() < PER_SHARD {
        return;
    }
    let oldest = buckets
        .iter()
        .min_by_key(|(_, (_, used))| *used)
        .map(|(k, _)| k.clone());
    if let Some(k) = oldest {
        buckets.remove(&k);
    }
}
