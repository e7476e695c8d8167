//! The control-plane stream: Hello, then for every Push apply-and-ACK or NACK. Reconnects with jittered
//! exponential backoff forever; while disconnected the proxy keeps serving its last snapshot.

use std::sync::Arc;
use std::time::Duration;

use meshwork_proto as pb;
use pb::proxy_message::Msg;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Apply, Received};

/// Who this proxy is, as it introduces itself to the control plane.
pub struct Identity {
    pub node_id: String,
    pub service: String,
    pub namespace: String,
    pub gateway: bool,
    pub labels: Vec<(String, String)>,
    /// A sidecar's inbound address (its endpoint in the mesh).
    pub inbound: Option<std::net::SocketAddr>,
}

impl Identity {
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
        }
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Runs until `leaving` turns true (the proxy is shutting down): then the stream is closed, which deregisters this
/// proxy, so peers stop sending to it while it drains.
pub async fn run(
    url: String,
    identity: Identity,
    applier: Arc<dyn Apply>,
    mut leaving: tokio::sync::watch::Receiver<bool>,
) {
    let hello = identity.hello();
    let mut backoff = BACKOFF_MIN;
    loop {
        let result = tokio::select! {
            r = session(&url, &hello, &*applier, &mut backoff) => r,
            _ = leaving.wait_for(|l| *l) => {
                tracing::info!("leaving the mesh: closed the control-plane stream");
                return;
            }
        };
        match result {
            Ok(()) => tracing::warn!(%url, "control plane closed the stream; reconnecting"),
            Err(e) => {
                tracing::warn!(%url, error = %e, "control plane unreachable; serving the last configuration")
            }
        }
        // Full jitter: many proxies losing the same control plane must not reconnect in lockstep.
        let wait = backoff.mul_f64(0.5 + fastrand::f64() / 2.0);
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn session(
    url: &str,
    hello: &pb::Hello,
    applier: &dyn Apply,
    backoff: &mut Duration,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await?;
    let mut client = pb::discovery_client::DiscoveryClient::new(channel)
        .max_decoding_message_size(pb::MAX_PUSH_BYTES);
    let (tx, rx) = mpsc::channel(4);
    let mut hello = hello.clone();
    hello.applied_version = applier.applied_version();
    hello.cached_modules = applier.cached_modules();
    tx.send(pb::ProxyMessage {
        msg: Some(Msg::Hello(hello)),
    })
    .await?;
    let mut pushes = client.stream(ReceiverStream::new(rx)).await?.into_inner();
    tracing::info!(%url, "connected to the control plane");
    while let Some(push) = pushes.message().await? {
        *backoff = BACKOFF_MIN;
        let received = Received::new(
            push.version,
            push.snapshot.unwrap_or_default(),
            push.modules,
        );
        let reply = match applier.apply(received) {
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
        };
        tx.send(pb::ProxyMessage { msg: Some(reply) }).await?;
    }
    Ok(())
}
