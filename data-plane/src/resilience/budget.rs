//! Retry budget, as Linkerd's: over a 10-second window, retries may add at most `ratio` of the original requests
//! plus `minPerSecond` per second, so an upstream that fails never gets a retry storm.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::policy::BudgetConfig;

const WINDOW: Duration = Duration::from_secs(10);
const BUCKETS: usize = 10;

/// One second of the window: which second it holds, and its counts. Updated with atomics only: the budget is on
/// every request's path (it is on by default), so it must not be a lock the workers contend on. A bucket reset
/// racing an increment may lose that one count, which a budget can afford.
#[derive(Debug, Default)]
struct Bucket {
    second: AtomicU64,
    requests: AtomicU32,
    retries: AtomicU32,
}

#[derive(Debug)]
pub struct Budget {
    pub cfg: Option<BudgetConfig>,
    buckets: [Bucket; BUCKETS],
}

fn second(now: Instant) -> u64 {
    // +1 so that 0 means "never used".
    super::clock::nanos(now) / 1_000_000_000 + 1
}

impl Budget {
    /// `None`: no budget (every retry the policy allows is sent).
    pub fn new(cfg: Option<BudgetConfig>) -> Self {
        Budget {
            cfg,
            buckets: Default::default(),
        }
    }

    /// The bucket for `sec`, reset first if it still holds an older second.
    fn bucket(&self, sec: u64) -> &Bucket {
        let b = &self.buckets[(sec % BUCKETS as u64) as usize];
        let held = b.second.load(Ordering::Acquire);
        if held != sec
            && b.second
                .compare_exchange(held, sec, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            b.requests.store(0, Ordering::Release);
            b.retries.store(0, Ordering::Release);
        }
        b
    }

    /// An original request (not a retry) was sent.
    pub fn deposit(&self, now: Instant) {
        if self.cfg.is_none() {
            return;
        }
        self.bucket(second(now))
            .requests
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let Some(cfg) = self.cfg else { return true };
        let sec = second(now);
        let current = self.bucket(sec);
        let oldest = sec.saturating_sub(BUCKETS as u64 - 1);
        let (reqs, retries) = self
            .buckets
            .iter()
            .filter(|b| {
                let s = b.second.load(Ordering::Acquire);
                s != 0 && s >= oldest && s <= sec
            })
            .fold((0u64, 0u64), |(r, t), b| {
                (
                    r + u64::from(b.requests.load(Ordering::Relaxed)),
                    t + u64::from(b.retries.load(Ordering::Relaxed)),
                )
            });
        let allowed =
            f64::from(cfg.min_per_second) * WINDOW.as_secs_f64() + cfg.ratio * reqs as f64;
        if (retries as f64) < allowed.floor() {
            current.retries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}
