//! The circuit breaker, per upstream service as each calling proxy sees it: closed -> open (after
//! `consecutiveFailures` in a row, or a failure rate over `minRequests` in the `window`) -> half-open after
//! `openFor` (doubling on each repeated trip, up to `maxOpenFor`) -> closed once `halfOpenProbes` probes in a row
//! succeed; a failed probe opens it again.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::policy::BreakerConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half-open",
        }
    }

    pub fn gauge(self) -> u8 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }
}

/// Whether a request may go to the upstream, and whether it is a half-open probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes { probe: bool },
    No,
}

const BUCKETS: usize = 10;

#[derive(Debug)]
struct Inner {
    state: State,
    open_until: Instant,
    probes_out: u32,
    probes_ok: u32,
    consecutive: u32,
    /// Trips since the breaker last closed normally: the open time doubles with each.
    trips: u32,
    /// (start of bucket, requests, failures), a ring over the window.
    buckets: [(Option<Instant>, u32, u32); BUCKETS],
}

#[derive(Debug)]
pub struct Breaker {
    pub cfg: BreakerConfig,
    inner: Mutex<Inner>,
}

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Self {
        Breaker {
            cfg,
            inner: Mutex::new(Inner {
                state: State::Closed,
                open_until: Instant::now(),
                probes_out: 0,
                probes_ok: 0,
                consecutive: 0,
                trips: 0,
                buckets: [(None, 0, 0); BUCKETS],
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn state(&self) -> State {
        self.lock().state
    }

    /// Asks to send a request; moves open -> half-open once `openFor` has passed. Returns the transition, if any.
    pub fn admit(&self, now: Instant) -> (Admit, Option<State>) {
        let mut s = self.lock();
        let mut moved = None;
        if s.state == State::Open {
            if now < s.open_until {
                return (Admit::No, None);
            }
            s.state = State::HalfOpen;
            s.probes_out = 0;
            s.probes_ok = 0;
            moved = Some(State::HalfOpen);
        }
        match s.state {
            State::Closed => (Admit::Yes { probe: false }, moved),
            State::HalfOpen if s.probes_out < self.cfg.half_open_probes.max(1) => {
                s.probes_out += 1;
                (Admit::Yes { probe: true }, moved)
            }
            _ => (Admit::No, moved),
        }
    }

    /// Records the outcome of an admitted request. Returns the transition, if any.
    pub fn record(&self, now: Instant, success: bool, probe: bool) -> Option<State> {
        let mut s = self.lock();
        match s.state {
            State::Closed => {
                let width = (self.cfg.window / BUCKETS as u32).max(Duration::from_millis(1));
                // Bucket by time: reuse the bucket for `now` if it is current, else reset it.
                let idx = bucket_index(now, width);
                let start = bucket_start(now, width);
                let b = &mut s.buckets[idx];
                if b.0 != Some(start) {
                    *b = (Some(start), 0, 0);
                }
                b.1 += 1;
                if !success {
                    b.2 += 1;
                }
                s.consecutive = if success { 0 } else { s.consecutive + 1 };
                let oldest = now.checked_sub(self.cfg.window).unwrap_or(now);
                let (reqs, fails) = s
                    .buckets
                    .iter()
                    .filter(|(t, _, _)| t.is_some_and(|t| t >= oldest))
                    .fold((0u32, 0u32), |(r, f), (_, br, bf)| (r + br, f + bf));
                let by_count = self.cfg.consecutive_failures > 0
                    && s.consecutive >= self.cfg.consecutive_failures;
                let by_rate = self.cfg.failure_rate > 0.0
                    && reqs >= self.cfg.min_requests.max(1)
                    && f64::from(fails) / f64::from(reqs) >= self.cfg.failure_rate;
                if !success && (by_count || by_rate) {
                    self.trip(&mut s, now);
                    return Some(State::Open);
                }
                None
            }
            State::HalfOpen if probe => {
                if success {
                    s.probes_ok += 1;
                    if s.probes_ok >= self.cfg.half_open_probes.max(1) {
                        s.state = State::Closed;
                        s.trips = 0;
                        s.consecutive = 0;
                        s.buckets = [(None, 0, 0); BUCKETS];
                        return Some(State::Closed);
                    }
                    None
                } else {
                    self.trip(&mut s, now);
                    Some(State::Open)
                }
            }
            _ => None,
        }
    }

    /// A probe admitted in half-open state that will never report: its slot is free again.
    pub fn abandon_probe(&self) {
        let mut s = self.lock();
        if s.state == State::HalfOpen {
            s.probes_out = s.probes_out.saturating_sub(1);
        }
    }

    fn trip(&self, s: &mut Inner, now: Instant) {
        let factor = 1u32 << s.trips.min(16);
        let open_for = self
            .cfg
            .open_for
            .saturating_mul(factor)
            .min(self.cfg.max_open_for.max(self.cfg.open_for));
        s.state = State::Open;
        s.open_until = now + open_for;
        s.trips += 1;
        s.consecutive = 0;
    }
}

fn bucket_start(now: Instant, width: Duration) -> Instant {
    let n = super::clock::nanos(now);
    let w = width.as_nanos().max(1) as u64;
    super::clock::from_nanos(n - n % w)
}

fn bucket_index(now: Instant, width: Duration) -> usize {
    let n = super::clock::nanos(now);
    ((n / width.as_nanos().max(1) as u64) % BUCKETS as u64) as usize
}

/// Holds a half-open probe's slot until its outcome is recorded; dropped unrecorded, it gives the slot back, so a
/// probe whose client went away cannot leave the breaker half-open with no probe allowed.
#[derive(Default)]
pub struct ProbeSlot<'a>(Option<&'a Breaker>);

impl<'a> ProbeSlot<'a> {
    pub fn arm(&mut self, breaker: Option<&'a Breaker>, probe: bool) {
        self.0 = breaker.filter(|_| probe);
    }

    pub fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for ProbeSlot<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            b.abandon_probe();
        }
    }
}
