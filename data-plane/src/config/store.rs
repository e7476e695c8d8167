//! The applied snapshot, swapped atomically. Requests load it once and finish on the snapshot they started with.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::snapshot::Snapshot;

pub struct ConfigStore {
    current: ArcSwap<Snapshot>,
    applied: watch::Sender<u64>,
}

impl Default for ConfigStore {
    fn default() -> Self {
        ConfigStore {
            current: ArcSwap::from_pointee(Snapshot::empty()),
            applied: watch::channel(0).0,
        }
    }
}

impl ConfigStore {
    /// Hot path: a reference-count bump.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn publish(&self, next: Snapshot) {
        let v = next.version;
        self.current.store(Arc::new(next));
        self.applied.send_replace(v);
    }

    pub fn version(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Admin and tests wait on this.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }
}
