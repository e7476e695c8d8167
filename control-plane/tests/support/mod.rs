//! A control plane on 127.0.0.1 with a CA in a temporary state directory, and proxies' side of its TLS
//! discovery stream: bootstrap with a minted token (pinned root) or with a certificate the control plane issued.

#![allow(dead_code)] // each test binary uses part of this

use std::sync::Arc;
use std::time::Duration;

use meshwork_control::identity::token::Tokens;
use meshwork_control::identity::Identities;
use meshwork_control::serve::ControlPlane;
use meshwork_identity::ca::Authority;
use meshwork_identity::csr::WorkloadKey;
use meshwork_identity::spiffe::{SpiffeId, TrustDomain};
use meshwork_identity::tls::{control_client_config, ControlTrust, RotatingIdentity};
use meshwork_manifest::model::ManifestSet;
use meshwork_manifest::translate::ProxyRole;
use meshwork_proto as pb;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

pub struct Served {
    pub url: String,
    pub cp: ControlPlane,
    pub ids: Arc<Identities>,
    _state: tempfile::TempDir,
}

pub async fn control_plane() -> Served {
    let state = tempfile::tempdir().unwrap();
    let ca = Authority::load_or_create(state.path(), &TrustDomain::default()).unwrap();
    serve_with(ca, state).await
}

/// A control plane with the CA `ca` (its state directory `state` holds nothing else yet).
pub async fn serve_with(ca: Authority, state: tempfile::TempDir) -> Served {
    let mut key = vec![0; 32];
    getrandom::fill(&mut key).unwrap();
    let ids = Arc::new(Identities::with(
        ca,
        Tokens::in_memory(key),
        Duration::from_secs(3600),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cp = ControlPlane::new(ManifestSet::default(), ids.clone());
    let tls = cp.tls().unwrap();
    tokio::spawn(cp.clone().serve(listener, tls, std::future::pending()));
    Served {
        url,
        cp,
        ids,
        _state: state,
    }
}

pub fn hello(node: &str, inbound: &str) -> pb::Hello {
    pb::Hello {
        node_id: node.into(),
        service: "origin".into(),
        namespace: "default".into(),
        role: pb::Role::Sidecar as i32,
        inbound_addr: inbound.into(),
        ..Default::default()
    }
}

pub fn id(service: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://cluster.local/ns/default/sa/{service}")).unwrap()
}

pub fn control_plane_id() -> SpiffeId {
    SpiffeId::parse("spiffe://cluster.local/ns/meshwork-system/sa/control-plane").unwrap()
}

impl Served {
    /// A token for `node` of service `origin`.
    pub fn token(&self, service: &str, node: Option<&str>) -> String {
        self.ids
            .mint(
                ProxyRole::Sidecar,
                "default",
                service,
                node,
                Duration::from_secs(60),
            )
            .unwrap()
    }

    fn pin(&self) -> [u8; 32] {
        let root = &self.ids.authority().trust_bundle().roots()[0];
        Sha256::digest(root.as_ref()).into()
    }

    /// A channel trusting the control plane by the pinned root (a proxy before bootstrap), presenting `cert`.
    pub async fn channel(&self, cert: Option<Arc<RotatingIdentity>>) -> tonic::transport::Channel {
        let config = control_client_config(
            cert,
            ControlTrust::Pinned(self.pin()),
            &TrustDomain::default(),
            control_plane_id(),
        )
        .unwrap();
        self.connect(config).await
    }

    /// A channel trusting the control plane by `bundle` (a proxy after bootstrap), presenting `cert`; Err if the
    /// control plane's certificate does not verify.
    pub async fn channel_trusting(
        &self,
        bundle: meshwork_identity::TrustBundle,
        cert: Arc<RotatingIdentity>,
    ) -> Result<tonic::transport::Channel, meshwork_identity::channel::ChannelError> {
        let config = control_client_config(
            Some(cert),
            ControlTrust::Bundle(bundle),
            &TrustDomain::default(),
            control_plane_id(),
        )
        .unwrap();
        meshwork_identity::channel::connect(&self.url, Arc::new(config), Duration::from_secs(5))
            .await
    }

    /// The control plane's state directory.
    pub fn state_dir(&self) -> &std::path::Path {
        self._state.path()
    }

    async fn connect(&self, config: rustls::ClientConfig) -> tonic::transport::Channel {
        meshwork_identity::channel::connect(&self.url, Arc::new(config), Duration::from_secs(5))
            .await
            .unwrap()
    }

    /// A certificate for `id` straight from the CA (what an earlier bootstrap would have left a proxy with).
    pub fn certificate(&self, id: &SpiffeId) -> Arc<RotatingIdentity> {
        let key = WorkloadKey::generate().unwrap();
        let issued = self
            .ids
            .issue(id, key.csr_der(id).unwrap().as_ref())
            .unwrap();
        RotatingIdentity::new(key.certified_key(issued.chain).unwrap())
    }
}

/// A client config that trusts the control plane by the pinned root and presents nothing.
pub fn pinned_config(s: &Served) -> rustls::ClientConfig {
    control_client_config(
        None,
        ControlTrust::Pinned(s.pin()),
        &TrustDomain::default(),
        control_plane_id(),
    )
    .unwrap()
}

/// An open discovery stream: the sender that keeps it open, the pushes, and the key its CSR was made with.
pub struct Stream {
    pub tx: mpsc::Sender<pb::ProxyMessage>,
    pub pushes: tonic::Streaming<pb::Push>,
    pub key: WorkloadKey,
}

/// Opens a discovery stream on `channel` with `hello` plus a CSR for a fresh key.
pub async fn open(
    channel: tonic::transport::Channel,
    mut hello: pb::Hello,
) -> Result<Stream, tonic::Status> {
    let key = WorkloadKey::generate().unwrap();
    hello.csr = key.csr_der(&id(&hello.service)).unwrap().as_ref().to_vec();
    let mut client = pb::discovery_client::DiscoveryClient::new(channel);
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::ProxyMessage {
        msg: Some(pb::proxy_message::Msg::Hello(hello)),
    })
    .await
    .unwrap();
    let pushes = client.stream(ReceiverStream::new(rx)).await?.into_inner();
    Ok(Stream { tx, pushes, key })
}

pub async fn next_push(pushes: &mut tonic::Streaming<pb::Push>) -> Result<pb::Push, tonic::Status> {
    let next = tokio::time::timeout(Duration::from_secs(10), pushes.message());
    Ok(next.await.expect("a push within 10 s")?.expect("a push"))
}

/// Bootstraps `hello` with a token minted for it: the stream and its first push.
pub async fn bootstrap(
    s: &Served,
    mut hello: pb::Hello,
) -> Result<(Stream, pb::Push), tonic::Status> {
    hello.bootstrap_token = s.token(&hello.service.clone(), Some(&hello.node_id.clone()));
    let mut stream = open(s.channel(None).await, hello).await?;
    let first = next_push(&mut stream.pushes).await?;
    Ok((stream, first))
}
