//! Retry budget, as Linkerd's: over a 10-second window, retries may add at most `ratio` of the original requests
//! plus `minPerSecond` per second, so an upstream that fails never gets a retry storm.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

const WINDOW: Duration = Duration::from_secs(10);
const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    pub ratio: f64,
    pub min_per_second: u32,
}

#[derive(Debug)]
pub struct Budget {
    pub cfg: Option<BudgetConfig>,
    /// Per one-second bucket: (second index, requests, retries).
    buckets: Mutex<[(u64, u32, u32); BUCKETS]>,
}

fn second(now: Instant) -> u64 {
    super::clock::nanos(now) / 1_000_000_000
}

impl Budget {
    /// `None`: no budget (every retry the policy allows is sent).
    pub fn new(cfg: Option<BudgetConfig>) -> Self {
        Budget {
            cfg,
            buckets: Mutex::new([(u64::MAX, 0, 0); BUCKETS]),
        }
    }

    fn with_bucket<T>(
        &self,
        now: Instant,
        f: impl FnOnce(&mut [(u64, u32, u32); BUCKETS], usize) -> T,
    ) -> T {
        let sec = second(now);
        let mut b = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let i = (sec % BUCKETS as u64) as usize;
        if b[i].0 != sec {
            b[i] = (sec, 0, 0);
        }
        f(&mut b, i)
    }

    /// An original request (not a retry) was sent.
    pub fn deposit(&self, now: Instant) {
        if self.cfg.is_none() {
            return;
        }
        self.with_bucket(now, |b, i| b[i].1 += 1);
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let Some(cfg) = self.cfg else { return true };
        let sec = second(now);
        self.with_bucket(now, |b, i| {
            let oldest = sec.saturating_sub(BUCKETS as u64 - 1);
            let (reqs, retries) = b
                .iter()
                .filter(|(s, _, _)| *s != u64::MAX && *s >= oldest && *s <= sec)
                .fold((0u64, 0u64), |(r, t), (_, br, bt)| {
                    (r + u64::from(*br), t + u64::from(*bt))
                });
            let allowed =
                f64::from(cfg.min_per_second) * WINDOW.as_secs_f64() + cfg.ratio * reqs as f64;
            if (retries as f64) < allowed.floor() {
                b[i].2 += 1;
                true
            } else {
                false
            }
        })
    }
}
