//! The `meshwork.v1.Discovery` gRPC service, over TLS (`tls.rs`): one session per proxy stream (who the proxy is,
//! its certificate, versions, nonces, ACK/NACK, push only when that proxy's snapshot changed), and the Status RPC
//! (for the operator's identity only).

pub mod metrics;
pub mod tls;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::Stream;
use meshwork_manifest::model::ManifestSet;
use meshwork_manifest::translate::{modules_for, snapshot_for, ProxyKey, ProxyRole};
use meshwork_proto as pb;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use meshwork_identity::csr::WorkloadKey;
use meshwork_identity::spiffe::SpiffeId;
use meshwork_identity::tls::RotatingIdentity;

use crate::identity::token::Grant;
use crate::identity::Identities;
use crate::registry::{Registration, Registry};
use tls::PeerInfo;

/// The manifest set being served.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    pub set: ManifestSet,
    pub generation: u64,
    /// Errors of the last rejected change, cleared by the next accepted one.
    pub rejected: Vec<String>,
}

#[derive(Clone)]
pub struct ControlPlane {
    pub desired: watch::Sender<Arc<Desired>>,
    pub registry: Arc<Registry>,
    /// Until then, proxies that already serve a configuration are not pushed: after a control-plane restart the
    /// registry is empty until every sidecar has reconnected, and pushing before that would take endpoints away
    /// from working proxies. New proxies (nothing applied yet) are pushed at once.
    warm_until: tokio::time::Instant,
    /// Set when the server shuts down: sessions end their streams (a discovery stream never ends by itself, and a
    /// graceful server shutdown would otherwise wait for it forever).
    closing: watch::Sender<bool>,
    /// Pushed to sidecars: proves `x-meshwork-source` between them (proto `Snapshot.mesh_key`). New per process.
    mesh_key: Vec<u8>,
    /// The mesh CA and the bootstrap tokens.
    pub identities: Arc<Identities>,
    /// What the control plane reports about itself (`/metrics`).
    pub metrics: Arc<metrics::CpMetrics>,
}

impl ControlPlane {
    pub fn new(set: ManifestSet, identities: Arc<Identities>) -> Self {
        Self::with_warmup(set, Duration::ZERO, identities)
    }

    /// `warmup` should exceed the proxies' longest reconnect backoff (5 s), so every proxy that was connected to a
    /// previous instance is back before anyone's endpoints are recomputed.
    pub fn with_warmup(set: ManifestSet, warmup: Duration, identities: Arc<Identities>) -> Self {
        let desired = Desired {
            set,
            generation: 1,
            rejected: Vec::new(),
        };
        ControlPlane {
            desired: watch::channel(Arc::new(desired)).0,
            registry: Arc::new(Registry::default()),
            warm_until: tokio::time::Instant::now() + warmup,
            closing: watch::channel(false).0,
            mesh_key: mesh_key(),
            identities,
            metrics: Arc::default(),
        }
    }

    /// Replaces the served manifest set; every proxy whose snapshot changes gets a push.
    pub fn apply(&self, set: ManifestSet) {
        self.desired.send_modify(|d| {
            *d = Arc::new(Desired {
                set,
                generation: d.generation + 1,
                rejected: Vec::new(),
            });
        });
        self.metrics.changed(self.desired.borrow().generation);
    }

    /// The control plane's families in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        metrics::text(&self.metrics.registry(self.registry.clone()))
    }

    /// Whether this running control plane can apply `set`: a new trust domain needs a new CA, so a change of the
    /// Mesh's `spec.trustDomain` is refused (restart with another state directory to move to it).
    pub fn admissible(&self, set: &ManifestSet) -> Result<(), String> {
        let wanted = crate::identity::trust_domain_of(set).map_err(|e| e.to_string())?;
        let serving = self.identities.trust_domain();
        if &wanted != serving {
            return Err(format!(
                "Mesh spec.trustDomain: the mesh's identities are in {serving}; moving to {wanted} needs a new CA (restart the control plane with another --state-dir)"
            ));
        }
        Ok(())
    }

    /// Records a rejected change; the last good set keeps serving.
    pub fn reject(&self, errors: Vec<String>) {
        self.desired.send_modify(|d| {
            let mut next = (**d).clone();
            next.rejected = errors;
            *d = Arc::new(next);
        });
    }

    pub fn service(&self) -> pb::discovery_server::DiscoveryServer<Self> {
        pb::discovery_server::DiscoveryServer::new(self.clone())
    }

    /// The control plane's own certificate and TLS config (fails early, before anything listens, if the CA
    /// cannot issue it).
    pub fn tls(&self) -> anyhow::Result<ServingTls> {
        let ids = &self.identities;
        let own = RotatingIdentity::new(serving_key(ids)?);
        let config = meshwork_identity::tls::control_server_config(
            own.clone(),
            ids.authority().trust_bundle(),
            ids.trust_domain(),
        )?;
        Ok(ServingTls {
            config: Arc::new(config),
            own,
        })
    }

    /// Serves the gRPC API over TLS on an already-bound listener until `shutdown` resolves, renewing the control
    /// plane's own certificate at half its lifetime.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        tls: ServingTls,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let ids = self.identities.clone();
        let renewal = tokio::spawn(renew_serving_key(ids.clone(), tls.own));
        let incoming = ReceiverStream::new(tls::incoming(
            listener,
            tls.config,
            ids.trust_domain().clone(),
        ));
        let closing = self.closing.clone();
        let shutdown = async move {
            shutdown.await;
            closing.send_replace(true);
        };
        // grpc.health.v1 beside the discovery service: SERVING for "" and for meshwork.v1.Discovery while up.
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_serving::<pb::discovery_server::DiscoveryServer<ControlPlane>>()
            .await;
        let served = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
            .add_service(health)
            .add_service(self.service())
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        renewal.abort();
        Ok(served?)
    }

    /// Who the proxy saying `hello` on a connection that proved `peer` is: its client certificate's identity, or
    /// (without one) the identity its bootstrap token grants, which the token is spent for. Anything else is
    /// refused before the proxy is registered or sent anything.
    /// With a token, also its grant: it is spent by the caller once the proxy is certified and registered.
    fn authenticate(
        &self,
        hello: &pb::Hello,
        reg: &Registration,
        peer: Option<&SpiffeId>,
    ) -> Result<(SpiffeId, Option<Grant>), Status> {
        let claimed = self
            .identities
            .identity_of(reg.role, &reg.namespace, &reg.service)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if let Some(proved) = peer {
            if *proved != claimed {
                return Err(Status::permission_denied(format!(
                    "the client certificate proves {proved}, but this Hello claims {claimed}"
                )));
            }
            return Ok((claimed, None));
        }
        let grant = self
            .identities
            .check_token(
                &hello.bootstrap_token,
                reg.role,
                &reg.namespace,
                &reg.service,
                &reg.node_id,
            )
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        if hello.csr.is_empty() {
            return Err(Status::invalid_argument(
                "hello.csr: expected a certificate signing request with the bootstrap token",
            ));
        }
        Ok((claimed, Some(grant)))
    }

    /// A certificate for `id` from the proxy's CSR, as pushed, or `None` without a CSR.
    fn certify(&self, id: &SpiffeId, csr: &[u8]) -> Result<Option<pb::Identity>, Status> {
        if csr.is_empty() {
            return Ok(None);
        }
        let issued = self
            .identities
            .issue(id, csr)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Some(self.identities.message(&issued)))
    }
}

/// The shortest time between two renewals on one stream.
const MIN_RENEWAL_INTERVAL: Duration = Duration::from_secs(5);

/// How long a new discovery stream has to send its Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// What the control plane presents: its TLS config and its own (renewed) certificate.
pub struct ServingTls {
    config: Arc<rustls::ServerConfig>,
    own: Arc<RotatingIdentity>,
}

/// The operator's identity: the only one the Status RPC answers (`meshwork status` mints it from the state
/// directory, which only the operator can read).
pub fn operator_id(ids: &Identities) -> Result<SpiffeId, meshwork_identity::SpiffeIdError> {
    meshwork_identity::operator::operator_id(ids.trust_domain())
}

/// A fresh key and certificate for the control plane itself, with the root after it (a proxy bootstrapping with
/// a pinned root finds it there).
fn serving_key(ids: &Identities) -> anyhow::Result<Arc<rustls::sign::CertifiedKey>> {
    let key = WorkloadKey::generate()?;
    let id = ids.control_plane_id()?;
    let issued = ids.issue(&id, key.csr_der(&id)?.as_ref())?;
    let mut chain = issued.chain;
    chain.extend(ids.authority().trust_bundle().roots().first().cloned());
    Ok(key.certified_key(chain)?)
}

/// Renews the control plane's own certificate at half its lifetime (new connections get the new one).
async fn renew_serving_key(ids: Arc<Identities>, own: Arc<RotatingIdentity>) {
    loop {
        tokio::time::sleep(ids.lifetime() / 2).await;
        match serving_key(&ids) {
            Ok(key) => own.rotate(key),
            Err(e) => {
                tracing::error!(error = %e, "could not renew the control plane's certificate")
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A sidecar's endpoint: its inbound address, which must be on the host it connects from (loopback counts as
/// loopback; an unspecified IP becomes the peer's). Only checkable when the transport gives the peer address.
fn endpoint(inbound: &str, remote: Option<SocketAddr>) -> Result<String, Status> {
    let addr: SocketAddr = inbound.parse().map_err(|_| {
        Status::invalid_argument(format!(
            "hello.inbound_addr: expected IP:port, got {inbound:?}"
        ))
    })?;
    let Some(peer) = remote.map(|r| r.ip().to_canonical()) else {
        return Ok(addr.to_string());
    };
    let ip = addr.ip().to_canonical();
    if ip.is_unspecified() {
        return Ok(SocketAddr::new(peer, addr.port()).to_string());
    }
    if ip == peer || (ip.is_loopback() && peer.is_loopback()) {
        return Ok(addr.to_string());
    }
    Err(Status::permission_denied(format!(
        "hello.inbound_addr: {ip} is not an address of this peer ({peer}); a proxy registers its own endpoint only"
    )))
}

fn registration(hello: &pb::Hello, remote: Option<SocketAddr>) -> Result<Registration, Status> {
    if hello.node_id.is_empty() {
        return Err(Status::invalid_argument(
            "hello.node_id: expected a non-empty node id",
        ));
    }
    let role = match pb::Role::try_from(hello.role) {
        Ok(pb::Role::Sidecar) => ProxyRole::Sidecar,
        Ok(pb::Role::Gateway) => ProxyRole::Gateway,
        _ => {
            return Err(Status::invalid_argument(
                "hello.role: expected ROLE_SIDECAR or ROLE_GATEWAY",
            ))
        }
    };
    if hello.service.is_empty() {
        return Err(Status::invalid_argument(
            "hello.service: expected the mesh service or Gateway name",
        ));
    }
    let inbound_addr = if role == ProxyRole::Sidecar {
        endpoint(&hello.inbound_addr, remote)?
    } else {
        hello.inbound_addr.clone()
    };
    tracing::debug!(node = %hello.node_id, ?remote, "proxy connected");
    Ok(Registration {
        conn_id: 0,
        node_id: hello.node_id.clone(),
        service: hello.service.clone(),
        namespace: if hello.namespace.is_empty() {
            "default".into()
        } else {
            hello.namespace.clone()
        },
        role,
        labels: hello.labels.clone().into_iter().collect(),
        inbound_addr,
        peer_ip: remote.map(|r| r.ip().to_canonical()),
        connected_unix_ms: now_ms(),
        sent_version: 0,
        acked_version: 0,
        last_nack: None,
        synced_generation: 0,
        spiffe_id: String::new(),
        cert_not_after_unix_ms: 0,
        cert_issued_unix_ms: 0,
    })
}

type PushStream = Pin<Box<dyn Stream<Item = Result<pb::Push, Status>> + Send>>;

/// 32 bytes from the OS CSPRNG; without one the control plane cannot vouch for anything, so it stops.
fn mesh_key() -> Vec<u8> {
    let mut key = vec![0u8; 32];
    if let Err(e) = getrandom::fill(&mut key) {
        panic!("no OS random source for the mesh key: {e}");
    }
    key
}

#[tonic::async_trait]
impl pb::discovery_server::Discovery for ControlPlane {
    type StreamStream = PushStream;

    async fn stream(
        &self,
        req: Request<Streaming<pb::ProxyMessage>>,
    ) -> Result<Response<PushStream>, Status> {
        let peer = req.extensions().get::<PeerInfo>().cloned();
        let remote = peer.as_ref().map(|p| p.remote);
        let mut inbound = req.into_inner();
        // A stream that says nothing holds nothing for long.
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 5 s"))?;
        let hello = match first? {
            Some(pb::ProxyMessage {
                msg: Some(pb::proxy_message::Msg::Hello(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message on the stream must be a Hello",
                ))
            }
        };
        let mut reg = registration(&hello, remote)?;
        let (id, grant) = self
            .authenticate(&hello, &reg, peer.as_ref().and_then(|p| p.identity.as_ref()))
            .inspect_err(|e| tracing::warn!(node = %reg.node_id, ?remote, error = %e.message(), "proxy refused"))?;
        // Without a CSR (a proxy proving itself with its certificate), the trust bundle alone: a root added for
        // a CA rotation reaches every proxy as soon as it reconnects.
        let identity = match self.certify(&id, &hello.csr)? {
            Some(issued) => Some(issued),
            None => Some(self.identities.bundle_message(&id)),
        };
        reg.spiffe_id = id.to_string();
        match identity.as_ref().filter(|i| !i.chain.is_empty()) {
            Some(i) => {
                reg.cert_not_after_unix_ms = i.not_after_unix_ms;
                reg.cert_issued_unix_ms = now_ms();
            }
            // Proved by the certificate it holds: its expiry is that certificate's.
            None => {
                reg.cert_not_after_unix_ms = peer
                    .as_ref()
                    .and_then(|p| p.not_after)
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            }
        }
        let node = reg.node_id.clone();
        let conn_id = self.registry.register(reg.clone()).map_err(|e| {
            tracing::warn!(error = %e, ?remote, "registration refused");
            Status::already_exists(e.to_string())
        })?;
        let guard = Deregister(self.registry.clone(), node, conn_id);
        // Spent only now that the proxy is certified and registered (two proxies racing with one token: the second
        // is refused here, and dropping `guard` deregisters it).
        if let Some(grant) = grant {
            self.identities
                .spend(&grant)
                .map_err(|e| Status::unauthenticated(e.to_string()))?;
        }
        let (tx, rx) = mpsc::channel(4);
        let cached = hello.cached_modules.iter().cloned().collect();
        tokio::spawn(session(
            self.clone(),
            reg,
            guard,
            Start {
                applied_version: hello.applied_version,
                cached,
                identity,
                id,
            },
            inbound,
            tx,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let operator =
            operator_id(&self.identities).map_err(|e| Status::internal(e.to_string()))?;
        let caller = req
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.identity.clone());
        if caller.as_ref() != Some(&operator) {
            return Err(Status::permission_denied(format!(
                "status is for the operator ({operator}; `meshwork status` on the control plane's host), not {}",
                caller.map_or("a caller without a certificate".to_string(), |c| c.to_string())
            )));
        }
        let desired = self.desired.borrow().clone();
        let proxies = self
            .registry
            .list()
            .into_iter()
            .map(|r| pb::ProxyStatus {
                node_id: r.node_id,
                service: r.service,
                role: match r.role {
                    ProxyRole::Sidecar => pb::Role::Sidecar,
                    ProxyRole::Gateway => pb::Role::Gateway,
                } as i32,
                inbound_addr: r.inbound_addr,
                sent_version: r.sent_version,
                acked_version: r.acked_version,
                last_nack: r
                    .last_nack
                    .as_ref()
                    .map(|n| n.1.clone())
                    .unwrap_or_default(),
                last_nack_version: r.last_nack.as_ref().map_or(0, |n| n.0),
                connected_unix_ms: r.connected_unix_ms,
                spiffe_id: r.spiffe_id,
                cert_not_after_unix_ms: r.cert_not_after_unix_ms,
                cert_issued_unix_ms: r.cert_issued_unix_ms,
            })
            .collect();
        Ok(Response::new(pb::StatusResponse {
            proxies,
            manifest_generation: desired.generation,
            rejected_errors: desired.rejected.clone(),
        }))
    }
}

/// Removes the registration when the session ends, however it ends.
struct Deregister(Arc<Registry>, String, u64);

impl Drop for Deregister {
    fn drop(&mut self) {
        self.0.deregister(&self.1, self.2);
    }
}

/// What a session starts from.
struct Start {
    /// The version the proxy already serves (0: none).
    applied_version: u64,
    /// The Wasm modules it already has.
    cached: std::collections::HashSet<String>,
    /// Its new certificate, if its Hello asked for one (sent with the first push).
    identity: Option<pb::Identity>,
    /// Who it proved to be.
    id: SpiffeId,
}

async fn session(
    cp: ControlPlane,
    reg: Registration,
    registered: Deregister,
    start: Start,
    mut inbound: Streaming<pb::ProxyMessage>,
    tx: mpsc::Sender<Result<pb::Push, Status>>,
) {
    let Start {
        applied_version,
        cached: mut has_modules,
        identity: mut new_identity,
        id,
    } = start;
    let node = reg.node_id.clone();
    let key = ProxyKey {
        role: reg.role,
        name: reg.service.clone(),
        namespace: reg.namespace.clone(),
    };
    let conn_id = registered.2;
    let _guard = registered;
    let mut desired_rx = cp.desired.subscribe();
    let mut endpoints_rx = cp.registry.subscribe_endpoints();
    // Continue the proxy's numbering so versions only grow, across control-plane restarts too.
    let mut version = applied_version;
    let mut last_sent: Option<pb::Snapshot> = None;
    let mut pending_nonce = String::new();
    let mut pending_modules: Vec<String> = Vec::new();
    let mut closing = cp.closing.subscribe();
    let mut last_renewal: Option<tokio::time::Instant> = None;
    if applied_version > 0 {
        // Keep answering the stream (so the proxy sees a live control plane) while the registry refills.
        let warm = tokio::time::sleep_until(cp.warm_until);
        tokio::pin!(warm);
        loop {
            tokio::select! {
                _ = &mut warm => break,
                _ = closing.wait_for(|c| *c) => return,
                msg = inbound.message() => match msg {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return,
                },
            }
        }
    }
    loop {
        desired_rx.borrow_and_update();
        endpoints_rx.borrow_and_update();
        let set = desired_rx.borrow().clone();
        let mut snapshot = snapshot_for(&set.set, &cp.registry.instances(), &key);
        if key.role == ProxyRole::Sidecar {
            snapshot.mesh_key = cp.mesh_key.clone();
        }
        if last_sent.as_ref() != Some(&snapshot) {
            version += 1;
            pending_nonce = format!("{conn_id:x}-{version}");
            // Module bytes go until the proxy has ACKed a push that carried them (a reconnecting proxy says which
            // it has); a push it rejected, or never answered, proves nothing, so they go again with the next.
            let modules: Vec<pb::WasmModule> = modules_for(&set.set, &snapshot)
                .into_iter()
                .filter(|m| !has_modules.contains(&m.digest))
                .collect();
            pending_modules = modules.iter().map(|m| m.digest.clone()).collect();
            let push = pb::Push {
                version,
                nonce: pending_nonce.clone(),
                snapshot: Some(snapshot.clone()),
                modules,
                identity: new_identity.take(),
            };
            if tx.send(Ok(push)).await.is_err() {
                break;
            }
            cp.registry
                .update(&node, conn_id, |r| r.sent_version = version);
            let pushes = match key.role {
                ProxyRole::Sidecar => &cp.metrics.pushes_sidecar,
                ProxyRole::Gateway => &cp.metrics.pushes_gateway,
            };
            pushes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(%node, version, "pushed snapshot");
            last_sent = Some(snapshot);
        }
        let generation = set.generation;
        cp.registry
            .update(&node, conn_id, |r| r.synced_generation = generation);
        cp.metrics.check_converged(&cp.registry);
        tokio::select! {
            // Mapped to (): the guard `wait_for` returns is not Send, and the select's output lives across awaits.
            _ = async { closing.wait_for(|c| *c).await.map(|_| ()) } => break,
            r = desired_rx.changed() => if r.is_err() { break },
            r = endpoints_rx.changed() => if r.is_err() { break },
            msg = inbound.message() => match msg {
                Ok(Some(pb::ProxyMessage { msg: Some(pb::proxy_message::Msg::Renew(renew)) })) => {
                    // One signature per interval at most: a proxy renews at 50-70% of a lifetime of 10 s or more.
                    if last_renewal.is_some_and(|t| t.elapsed() < MIN_RENEWAL_INTERVAL) {
                        tracing::warn!(%node, "renewals too frequent; stream closed");
                        let _ = tx.send(Err(Status::resource_exhausted("renewals too frequent: at most one per 5 s"))).await;
                        break;
                    }
                    last_renewal = Some(tokio::time::Instant::now());
                    if !renew_identity(&cp, &node, conn_id, &id, &renew.csr, version, &tx).await {
                        break;
                    }
                }
                Ok(Some(pb::ProxyMessage { msg: Some(m) })) => {
                    if handle_reply(&cp, &node, conn_id, &pending_nonce, m) {
                        has_modules.extend(pending_modules.drain(..));
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            },
        }
    }
    tracing::info!(%node, "proxy disconnected");
}

/// Answers a proxy's Renew with a certificate for its new key (a push with only the identity, not ACKed). A CSR
/// the CA refuses ends the stream with the reason; false when the stream is over.
async fn renew_identity(
    cp: &ControlPlane,
    node: &str,
    conn_id: u64,
    id: &SpiffeId,
    csr: &[u8],
    version: u64,
    tx: &mpsc::Sender<Result<pb::Push, Status>>,
) -> bool {
    let identity = match cp.certify(id, csr) {
        Ok(Some(identity)) => Ok(identity),
        Ok(None) => Err(Status::invalid_argument(
            "renew.csr: expected a certificate signing request",
        )),
        Err(e) => Err(e),
    }
    .inspect_err(|e| tracing::warn!(%node, error = %e.message(), "certificate renewal refused"));
    let identity = match identity {
        Ok(i) => i,
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            return false;
        }
    };
    let not_after = identity.not_after_unix_ms;
    cp.registry.update(node, conn_id, |r| {
        r.cert_not_after_unix_ms = not_after;
        r.cert_issued_unix_ms = now_ms();
    });
    tracing::info!(%node, %id, "certificate renewed");
    let push = pb::Push {
        version,
        nonce: String::new(),
        snapshot: None,
        modules: Vec::new(),
        identity: Some(identity),
    };
    tx.send(Ok(push)).await.is_ok()
}

/// Records an ACK or NACK of the pending push; true when it is that push's ACK.
fn handle_reply(
    cp: &ControlPlane,
    node: &str,
    conn_id: u64,
    pending_nonce: &str,
    msg: pb::proxy_message::Msg,
) -> bool {
    use pb::proxy_message::Msg;
    match msg {
        // A reply to an older push (its nonce is stale) says nothing about the current one.
        Msg::Ack(ack) if ack.nonce == pending_nonce => {
            cp.registry
                .update(node, conn_id, |r| r.acked_version = ack.version);
            cp.metrics
                .acks
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            cp.metrics.check_converged(&cp.registry);
            return true;
        }
        Msg::Nack(nack) if nack.nonce == pending_nonce => {
            cp.metrics
                .nacks
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(%node, version = nack.version, reason = %nack.reason, "proxy rejected snapshot (NACK)");
            cp.registry.update(node, conn_id, |r| {
                r.last_nack = Some((nack.version, nack.reason.clone()))
            });
        }
        Msg::Ack(_) | Msg::Nack(_) => {}
        Msg::Hello(_) => tracing::warn!(%node, "ignoring a second Hello on the same stream"),
        Msg::Renew(_) => {}
    }
    false
}
