//! The server's TLS session cache for mesh mTLS, with an age limit: a resumed session keeps the identity its full
//! handshake proved, without checking the peer's certificate again, so a session older than `MAX_SESSION_AGE`
//! is not resumed (the peer makes a full handshake, and its certificate is checked, expiry included).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use rustls::server::StoresServerSessions;

/// The longest a session may be resumed after its full handshake.
pub const MAX_SESSION_AGE: Duration = Duration::from_secs(600);
/// Sessions kept at once (oldest dropped first).
pub const MAX_SESSIONS: usize = 256;

/// Stored sessions by id (with when each was stored), and the ids in the order they came.
type Store = (HashMap<Vec<u8>, (Instant, Vec<u8>)>, VecDeque<Vec<u8>>);

/// Sessions by id, each with when it was stored; bounded in number and in age.
pub struct AgedSessions {
    max_age: Duration,
    inner: Mutex<Store>,
}

impl AgedSessions {
    pub fn new(max_age: Duration) -> Arc<Self> {
        Arc::new(AgedSessions {
            max_age,
            inner: Mutex::new((HashMap::new(), VecDeque::new())),
        })
    }

    fn fresh(&self, key: &[u8], remove: bool) -> Option<Vec<u8>> {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (map, _) = &mut *guard;
        let young = map
            .get(key)
            .is_some_and(|(at, _)| at.elapsed() <= self.max_age);
        if !young {
            map.remove(key);
            return None;
        }
        if remove {
            map.remove(key).map(|(_, v)| v)
        } else {
            map.get(key).map(|(_, v)| v.clone())
        }
    }
}

impl StoresServerSessions for AgedSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (map, order) = &mut *guard;
        while map.len() >= MAX_SESSIONS {
            match order.pop_front() {
                Some(old) => {
                    map.remove(&old);
                }
                None => break,
            }
        }
        // The order list may hold keys already taken; keep it no longer than twice the cap.
        if order.len() >= 2 * MAX_SESSIONS {
            order.retain(|k| map.contains_key(k));
        }
        order.push_back(key.clone());
        map.insert(key, (Instant::now(), value));
        true
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.fresh(key, false)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.fresh(key, true)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

impl fmt::Debug for AgedSessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgedSessions")
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use super::*;

    #[test]
    fn an_old_session_is_not_resumed() {
        let s = AgedSessions::new(Duration::from_millis(30));
        s.put(b"a".to_vec(), b"state".to_vec());
        assert_eq!(s.get(b"a").as_deref(), Some(&b"state"[..]));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(s.get(b"a"), None);
        assert_eq!(s.take(b"a"), None);
    }

    #[test]
    fn the_cache_is_bounded() {
        let s = AgedSessions::new(Duration::from_secs(60));
        for i in 0..(3 * MAX_SESSIONS) {
            s.put(i.to_string().into_bytes(), vec![0; 8]);
        }
        let guard = s.inner.lock().unwrap();
        assert!(guard.0.len() <= MAX_SESSIONS);
        assert!(guard.1.len() <= 2 * MAX_SESSIONS);
        drop(guard);
        assert!(s.get(b"0").is_none(), "the oldest went first");
        assert!(s
            .get((3 * MAX_SESSIONS - 1).to_string().as_bytes())
            .is_some());
    }
}
