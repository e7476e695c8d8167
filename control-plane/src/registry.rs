//! Live proxy registrations: the service registry (sidecar inbound addresses become endpoints) and the per-proxy
//! push state that `meshwork status` reports.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::watch;

use meshwork_manifest::translate::{Instance, ProxyRole};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub conn_id: u64,
    pub node_id: String,
    pub service: String,
    pub namespace: String,
    pub role: ProxyRole,
    pub labels: BTreeMap<String, String>,
    pub inbound_addr: String,
    /// The address the proxy connected from (None when the transport does not say).
    pub peer_ip: Option<std::net::IpAddr>,
    pub connected_unix_ms: u64,
    pub sent_version: u64,
    pub acked_version: u64,
    pub last_nack: Option<(u64, String)>,
    /// Latest manifest generation this proxy's session has translated (and pushed, if it changed).
    pub synced_generation: u64,
    /// The identity it proved (a bootstrap token or its client certificate), and its certificate's expiry and
    /// issue time (0: none issued on this connection yet).
    pub spiffe_id: String,
    pub cert_not_after_unix_ms: u64,
    pub cert_issued_unix_ms: u64,
}

#[derive(Debug)]
pub struct Registry {
    proxies: Mutex<BTreeMap<String, Registration>>,
    next_conn: AtomicU64,
    /// Bumped whenever the set of endpoints may have changed.
    endpoints_changed: watch::Sender<u64>,
    /// Bumped on any change (including ACK/NACK), for `up` and tests to wait on.
    any_changed: watch::Sender<u64>,
}

/// A registration refused because its node id belongs to another live proxy.
#[derive(Debug, thiserror::Error)]
#[error("node id {node_id:?} is registered by a live proxy (service {service}, endpoint {inbound_addr:?}); a node id cannot be taken over: give this proxy its own --node-id")]
pub struct Takeover {
    pub node_id: String,
    pub service: String,
    pub inbound_addr: String,
}

/// The same proxy reconnecting (its old stream not yet seen closed), not another one with the same node id.
fn same_proxy(live: &Registration, new: &Registration) -> bool {
    live.role == new.role
        && live.spiffe_id == new.spiffe_id
        && live.service == new.service
        && live.namespace == new.namespace
        && live.inbound_addr == new.inbound_addr
        && live.peer_ip == new.peer_ip
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            proxies: Mutex::new(BTreeMap::new()),
            next_conn: AtomicU64::new(1),
            endpoints_changed: watch::channel(0).0,
            any_changed: watch::channel(0).0,
        }
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Registration>> {
        self.proxies.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(tx: &watch::Sender<u64>) {
        tx.send_modify(|v| *v += 1);
    }

    /// Registers a proxy. A newer connection with the same node id replaces the older one only if it is the same
    /// proxy coming back (same role, service, namespace, endpoint and peer address); a different one is refused,
    /// so a node id cannot be taken over while its registration lives. Returns the connection id to pass to
    /// `deregister`.
    pub fn register(&self, mut reg: Registration) -> Result<u64, Takeover> {
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        reg.conn_id = conn_id;
        {
            let mut map = self.lock();
            if let Some(live) = map.get(&reg.node_id) {
                if !same_proxy(live, &reg) {
                    return Err(Takeover {
                        node_id: reg.node_id,
                        service: live.service.clone(),
                        inbound_addr: live.inbound_addr.clone(),
                    });
                }
            }
            map.insert(reg.node_id.clone(), reg);
        }
        Self::bump(&self.endpoints_changed);
        Self::bump(&self.any_changed);
        Ok(conn_id)
    }

    /// Removes the proxy if `conn_id` is still its current connection.
    pub fn deregister(&self, node_id: &str, conn_id: u64) {
        let removed = {
            let mut map = self.lock();
            if map.get(node_id).is_some_and(|r| r.conn_id == conn_id) {
                map.remove(node_id);
                true
            } else {
                false
            }
        };
        if removed {
            Self::bump(&self.endpoints_changed);
            Self::bump(&self.any_changed);
        }
    }

    pub fn update(&self, node_id: &str, conn_id: u64, f: impl FnOnce(&mut Registration)) {
        if let Some(r) = self
            .lock()
            .get_mut(node_id)
            .filter(|r| r.conn_id == conn_id)
        {
            f(r);
        }
        Self::bump(&self.any_changed);
    }

    pub fn instances(&self) -> Vec<Instance> {
        self.lock()
            .values()
            .filter(|r| r.role == ProxyRole::Sidecar && !r.inbound_addr.is_empty())
            .map(|r| Instance {
                node_id: r.node_id.clone(),
                namespace: r.namespace.clone(),
                service: r.service.clone(),
                labels: r.labels.clone(),
                addr: r.inbound_addr.clone(),
            })
            .collect()
    }

    pub fn list(&self) -> Vec<Registration> {
        self.lock().values().cloned().collect()
    }

    pub fn subscribe_endpoints(&self) -> watch::Receiver<u64> {
        self.endpoints_changed.subscribe()
    }

    pub fn subscribe_any(&self) -> watch::Receiver<u64> {
        self.any_changed.subscribe()
    }
}
