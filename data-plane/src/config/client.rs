//! The control-plane stream, over TLS: Hello (with a bootstrap token and a CSR the first time, with the
//! certificate issued then on later connections), then for every Push apply-and-ACK or NACK, installing any
//! certificate it carries, and a Renew (a CSR for a new key) at 50-70% of the certificate's lifetime. Reconnects
//! with jittered exponential backoff forever; while disconnected the proxy keeps serving its last snapshot.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshwork_identity::spiffe::{SpiffeId, TrustDomain};
use meshwork_identity::tls::{control_client_config, ControlTrust};
use meshwork_proto as pb;
use pb::proxy_message::Msg;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Apply, Received};
use crate::identity::{pinned_root, Issued, MeshIdentity};

/// Who this proxy is, as it introduces itself to the control plane.
pub struct Introduction {
    pub node_id: String,
    pub service: String,
    pub namespace: String,
    pub gateway: bool,
    pub labels: Vec<(String, String)>,
    /// A sidecar's inbound address (its endpoint in the mesh).
    pub inbound: Option<std::net::SocketAddr>,
}

impl Introduction {
    fn hello(&self) -> pb::Hello {
        pb::Hello {
            node_id: self.node_id.clone(),
            service: self.service.clone(),
            namespace: self.namespace.clone(),
            role: if self.gateway {
                pb::Role::Gateway
            } else {
                pb::Role::Sidecar
            } as i32,
            labels: self.labels.iter().cloned().collect(),
            inbound_addr: self.inbound.map(|a| a.to_string()).unwrap_or_default(),
            applied_version: 0,
            cached_modules: Vec::new(),
            bootstrap_token: String::new(),
            csr: Vec::new(),
        }
    }

    /// The SPIFFE ID this proxy asks to be certified as (the control plane decides; this only fills the CSR).
    fn spiffe_id(&self, td: &TrustDomain) -> Option<SpiffeId> {
        let kind = if self.gateway { "gateway" } else { "sa" };
        let uri = format!(
            "spiffe://{}/ns/{}/{kind}/{}",
            td.as_str(),
            self.namespace,
            self.service
        );
        SpiffeId::parse(&uri).ok()
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs until `leaving` turns true (the proxy is shutting down): then the stream is closed, which deregisters this
/// proxy, so peers stop sending to it while it drains. `token` is spent by the first connection that gets a
/// certificate; later ones prove the identity with that certificate.
pub async fn run(
    url: String,
    intro: Introduction,
    mut token: Option<String>,
    mesh: Arc<MeshIdentity>,
    applier: Arc<dyn Apply>,
    mut leaving: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let mut link = Link {
            url: &url,
            intro: &intro,
            token: &mut token,
            mesh: &mesh,
            applier: &*applier,
            backoff: &mut backoff,
        };
        let result = tokio::select! {
            r = link.session() => r,
            _ = leaving.wait_for(|l| *l) => {
                tracing::info!("leaving the mesh: closed the control-plane stream");
                return;
            }
        };
        match result {
            Ok(()) => tracing::warn!(%url, "control plane closed the stream; reconnecting"),
            Err(e) => {
                tracing::warn!(%url, error = %e, "control plane unreachable or refused this proxy; serving the last configuration")
            }
        }
        // Full jitter: many proxies losing the same control plane must not reconnect in lockstep.
        let wait = backoff.mul_f64(0.5 + fastrand::f64() / 2.0);
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection's worth of the client's state.
struct Link<'a> {
    url: &'a str,
    intro: &'a Introduction,
    token: &'a mut Option<String>,
    mesh: &'a MeshIdentity,
    applier: &'a dyn Apply,
    backoff: &'a mut Duration,
}

impl Link<'_> {
    /// The TLS config for this connection and the Hello to send on it.
    fn prepare(&self) -> Result<(rustls::ClientConfig, pb::Hello), BoxError> {
        let mut hello = self.intro.hello();
        hello.applied_version = self.applier.applied_version();
        hello.cached_modules = self.applier.cached_modules();
        let (trust, resolver, td) = match self.mesh.current() {
            Some(c) => (
                ControlTrust::Bundle(c.bundle.clone()),
                Some(c.resolver.clone()),
                c.trust_domain.clone(),
            ),
            None => {
                let token = self.token.as_deref().ok_or(
                    "no certificate and no bootstrap token left (it was spent): restart the proxy with a new token",
                )?;
                let (pin, td) = pinned_root(token).ok_or(
                    "the bootstrap token is malformed: expected one printed by `meshwork token create`",
                )?;
                hello.bootstrap_token = token.to_string();
                (ControlTrust::Pinned(pin), None, td)
            }
        };
        let own = self
            .intro
            .spiffe_id(&td)
            .ok_or("--service/--namespace cannot form a SPIFFE ID")?;
        let renew_due = self
            .mesh
            .current()
            .is_none_or(|c| c.renew_at() <= SystemTime::now());
        if renew_due {
            hello.csr = self.mesh.new_csr(&own)?;
        }
        let control_plane = SpiffeId::parse(&format!(
            "spiffe://{}/ns/meshwork-system/sa/control-plane",
            td.as_str()
        ))?;
        let config = control_client_config(resolver, trust, &td, control_plane)?;
        Ok((config, hello))
    }

    async fn session(&mut self) -> Result<(), BoxError> {
        let (config, hello) = self.prepare()?;
        let channel =
            meshwork_identity::channel::connect(self.url, Arc::new(config), Duration::from_secs(2))
                .await?;
        let mut client = pb::discovery_client::DiscoveryClient::new(channel)
            .max_decoding_message_size(pb::MAX_PUSH_BYTES);
        let (tx, rx) = mpsc::channel(4);
        let td = hello.bootstrap_token.is_empty();
        tx.send(pb::ProxyMessage {
            msg: Some(Msg::Hello(hello)),
        })
        .await?;
        let mut pushes = client
            .stream(ReceiverStream::new(rx))
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
            .into_inner();
        tracing::info!(url = %self.url, with_certificate = td, "connected to the control plane");
        let mut renew_at = self.mesh.current().map(|c| c.renew_at());
        loop {
            let wait = renew_at.map_or(Duration::from_secs(3600), |at| {
                at.duration_since(SystemTime::now()).unwrap_or_default()
            });
            let push = tokio::select! {
                p = pushes.message() => p.map_err(|s| format!("{:?}: {}", s.code(), s.message()))?,
                _ = tokio::time::sleep(wait), if renew_at.is_some() => {
                    self.renew(&tx).await?;
                    renew_at = None;
                    continue;
                }
            };
            let Some(push) = push else { return Ok(()) };
            *self.backoff = BACKOFF_MIN;
            if let Some(identity) = &push.identity {
                renew_at = self.install(identity).or(renew_at);
            }
            if let Some(reply) = self.apply(push) {
                tx.send(pb::ProxyMessage { msg: Some(reply) }).await?;
            }
        }
    }

    /// Installs a certificate; the time to renew it, or `None` if it could not be installed (logged).
    fn install(&mut self, identity: &pb::Identity) -> Option<SystemTime> {
        let ms = |t: u64| std::time::UNIX_EPOCH + Duration::from_millis(t);
        let issued = Issued {
            spiffe_id: identity.spiffe_id.clone(),
            chain: identity.chain.clone(),
            trust_bundle: identity.trust_bundle.clone(),
            not_before: ms(identity.not_before_unix_ms),
            not_after: ms(identity.not_after_unix_ms),
        };
        if issued.chain.is_empty() {
            // The trust bundle only: the certificate (and when to renew it) stays.
            if let Err(e) = self.mesh.install(&issued) {
                tracing::warn!(error = %e, "could not take the trust bundle the control plane sent");
            }
            return None;
        }
        match self.mesh.install(&issued) {
            Ok(c) => {
                // Spent: from now on the certificate proves who this proxy is.
                *self.token = None;
                tracing::info!(id = %c.id, not_after = ?c.not_after, "installed a certificate from the control plane");
                Some(c.renew_at())
            }
            Err(e) => {
                tracing::error!(error = %e, "could not install the certificate the control plane sent");
                None
            }
        }
    }

    /// Asks for a certificate for a new key.
    async fn renew(&self, tx: &mpsc::Sender<pb::ProxyMessage>) -> Result<(), BoxError> {
        let current = self.mesh.current().ok_or("renewal without a certificate")?;
        let csr = self.mesh.new_csr(&current.id)?;
        tracing::info!(id = %current.id, "renewing the certificate");
        tx.send(pb::ProxyMessage {
            msg: Some(Msg::Renew(pb::Renew { csr })),
        })
        .await?;
        Ok(())
    }

    /// Applies a push's snapshot: the ACK or NACK to send (none for a push that only carries a certificate).
    fn apply(&self, push: pb::Push) -> Option<Msg> {
        let snapshot = push.snapshot?;
        let received = Received::new(push.version, snapshot, push.modules);
        Some(match self.applier.apply(received) {
            Ok(()) => Msg::Ack(pb::Ack {
                version: push.version,
                nonce: push.nonce,
            }),
            Err(reason) => {
                tracing::warn!(version = push.version, %reason, "rejected snapshot (NACK); keeping the previous one");
                Msg::Nack(pb::Nack {
                    version: push.version,
                    nonce: push.nonce,
                    reason,
                })
            }
        })
    }
}
