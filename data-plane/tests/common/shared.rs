//! A fixture several tests of one test binary share (a mesh that takes seconds to start): started by the first of
//! them to ask, dropped as soon as the last of a known list has finished, passed or failed. Its values must stop
//! their processes when dropped ([`super::Mesh`] does) and, since a static is never dropped, also when the process
//! exits while some are still alive (a name filter ran only some of the tests; the process was killed): the
//! [`super::Watchdog`] of a [`super::Mesh`] covers that.

use std::collections::BTreeSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures_util::FutureExt;

/// Declared as a `static`, with the names of the tests that use it.
pub struct SharedFixture<T: 'static> {
    tests: &'static [&'static str],
    state: Mutex<State<T>>,
    /// Held by the test starting the value, so that only one does.
    starting: tokio::sync::Mutex<()>,
}

struct State<T> {
    value: Option<Arc<T>>,
    /// Why it could not start: the tests after the first fail at once with the same reason.
    failed: Option<String>,
    holding: usize,
    finished: BTreeSet<&'static str>,
}

impl<T: Send + Sync + 'static> SharedFixture<T> {
    /// A fixture for `tests` (test function names). It is dropped once all of them have finished, so every test
    /// that uses it must be listed ([`SharedFixture::acquire`] checks).
    pub const fn new(tests: &'static [&'static str]) -> Self {
        SharedFixture {
            tests,
            state: Mutex::new(State {
                value: None,
                failed: None,
                holding: 0,
                finished: BTreeSet::new(),
            }),
            starting: tokio::sync::Mutex::const_new(()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State<T>> {
        // Nothing panics holding the lock, but a poisoned lock must not fail the other tests.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The shared value for `test`, made by `start` if this is the first test to ask. Hold the lease for the whole
    /// test: dropping it (also when the test panics) counts the test as finished.
    pub async fn acquire<F, Fut>(&'static self, test: &'static str, start: F) -> Lease<T>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        assert!(
            self.tests.contains(&test),
            "{test} is not in the fixture's list of tests: add it, or the fixture may stop while it runs"
        );
        let _starting = self.starting.lock().await;
        {
            let mut s = self.state();
            assert!(!s.finished.contains(test), "{test} asked twice");
            if let Some(e) = &s.failed {
                panic!("the shared fixture did not start: {e}");
            }
            if let Some(value) = s.value.clone() {
                s.holding += 1;
                return Lease {
                    fixture: self,
                    value: Some(value),
                    test,
                };
            }
        }
        match AssertUnwindSafe(start()).catch_unwind().await {
            Ok(value) => {
                let value = Arc::new(value);
                let mut s = self.state();
                s.value = Some(value.clone());
                s.holding += 1;
                Lease {
                    fixture: self,
                    value: Some(value),
                    test,
                }
            }
            Err(panic) => {
                let e = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                    .unwrap_or_default();
                self.state().failed = Some(e);
                std::panic::resume_unwind(panic)
            }
        }
    }
}

/// One test's hold on a [`SharedFixture`]'s value.
pub struct Lease<T: 'static> {
    fixture: &'static SharedFixture<T>,
    value: Option<Arc<T>>,
    test: &'static str,
}

impl<T> std::ops::Deref for Lease<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.value.as_ref().unwrap()
    }
}

impl<T> Drop for Lease<T> {
    /// Runs when the test ends, passed or panicked. The last one drops the value (and waits for that).
    fn drop(&mut self) {
        drop(self.value.take());
        let last = {
            let mut s = self
                .fixture
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            s.holding -= 1;
            s.finished.insert(self.test);
            if s.holding == 0 && s.finished.len() == self.fixture.tests.len() {
                s.value.take()
            } else {
                None
            }
        };
        drop(last);
    }
}
