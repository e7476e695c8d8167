//! Mutual TLS between proxies, what both sides share: the rustls configs made from the proxy's identity
//! ([`MeshIdentity`]: its certificate, trust bundle and trust domain), each cached until a certificate is
//! installed; the verified peer an inbound connection carries; and the handshake counters `/metrics` shows.
//!
//! The sides themselves: the sidecar inbound listener sniffs each connection and terminates mTLS
//! (`listener/tls.rs`); the upstream connector originates it to endpoints that have an identity
//! (`upstream/tls.rs`). Before the proxy holds a certificate (or in standalone mode) both stay plaintext.
//! Gateway HTTPS listeners terminate TLS with the operator's certificates (`serving.rs`).

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use http::header::{HeaderName, HeaderValue};
use meshwork_identity::tls::TlsConfigError;
use meshwork_identity::SpiffeId;
use rustls::{ClientConfig, ServerConfig};

use crate::config::snapshot::{MtlsMode, Protocol};
use crate::config::ConfigStore;
use crate::identity::{Certified, MeshIdentity};

pub mod metrics;
pub mod serving;
#[cfg(test)]
mod tests;

pub use metrics::{Side, TlsMetrics};

/// Envoy's header for the verified client certificate: `By=<this proxy's ID>;URI=<the peer's ID>`.
pub const XFCC_HEADER: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// ALPN the inbound side offers: HTTP/2 first, then HTTP/1.1 (hyper detects which one the client speaks anyway).
const SERVER_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// A caller proven by an mTLS handshake on an inbound connection, with what the request path forwards for it,
/// made once per connection.
#[derive(Debug)]
pub struct VerifiedPeer {
    pub id: SpiffeId,
    /// The identity this proxy presented on the connection.
    pub local: SpiffeId,
    /// `x-forwarded-client-cert` for the app: `By=<own ID>;URI=<peer ID>`.
    pub xfcc: HeaderValue,
    /// `x-meshwork-source` as the peer's identity says it (`service.namespace` of a workload ID); `None` for
    /// identities that name no service (gateways).
    pub source: Option<HeaderValue>,
}

impl VerifiedPeer {
    pub fn new(own: &SpiffeId, peer: SpiffeId) -> Self {
        // SPIFFE IDs hold only URI-safe characters: nothing here needs quoting in Envoy's format.
        let xfcc = HeaderValue::from_str(&format!("By={own};URI={peer}"))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        let source = peer
            .namespace_and_service_account()
            .and_then(|(ns, sa)| HeaderValue::from_str(&format!("{sa}.{ns}")).ok());
        VerifiedPeer {
            id: peer,
            local: own.clone(),
            xfcc,
            source,
        }
    }
}

/// A config built for one installed certificate (one `Certified`), reused until the next one is installed. A
/// renewal installs a new `Certified`, so the config (and its session cache: a resumed session would keep the
/// identity of its first handshake) starts afresh; open connections and pools are not touched.
pub(crate) struct Slot<C>(ArcSwapOption<(Arc<Certified>, Arc<C>)>);

impl<C> Default for Slot<C> {
    fn default() -> Self {
        Slot(ArcSwapOption::empty())
    }
}

impl<C> Slot<C> {
    pub(crate) fn get(
        &self,
        current: &Arc<Certified>,
        build: impl FnOnce(&Certified) -> Result<C, TlsConfigError>,
    ) -> Result<Arc<C>, TlsConfigError> {
        if let Some(built) = &*self.0.load() {
            if Arc::ptr_eq(&built.0, current) {
                return Ok(built.1.clone());
            }
        }
        let config = Arc::new(build(current)?);
        self.0
            .store(Some(Arc::new((current.clone(), config.clone()))));
        Ok(config)
    }
}

/// What a sidecar's inbound listener needs for mTLS: the proxy's identity, the snapshot (which says the mode) and
/// the counters.
pub struct Inbound {
    pub identity: Arc<MeshIdentity>,
    pub store: Arc<ConfigStore>,
    pub metrics: Arc<TlsMetrics>,
    server: Slot<ServerConfig>,
}

/// How an inbound connection is taken, decided when it is accepted.
pub enum Admission {
    /// Served as plaintext without looking (DISABLED, or PERMISSIVE before the proxy has a certificate).
    Plaintext,
    /// Sniffed: a TLS ClientHello gets the handshake (with this config, for this identity; `None`: no
    /// certificate to present, so the handshake is refused); anything else is served as plaintext unless
    /// `strict`.
    Sniff {
        server: Option<(Arc<Certified>, Arc<ServerConfig>)>,
        strict: bool,
    },
}

impl Inbound {
    pub fn new(
        identity: Arc<MeshIdentity>,
        store: Arc<ConfigStore>,
        metrics: Arc<TlsMetrics>,
    ) -> Self {
        Inbound {
            identity,
            store,
            metrics,
            server: Slot::default(),
        }
    }

    /// The current mode and certificate decide how a new connection is taken.
    pub fn admission(&self) -> Admission {
        let mode = self.store.load().inbound_mtls;
        if mode == MtlsMode::Disabled {
            return Admission::Plaintext;
        }
        let server = self.server_config();
        match (mode, server) {
            (MtlsMode::Strict, server) => Admission::Sniff {
                server,
                strict: true,
            },
            (_, None) => Admission::Plaintext,
            (_, server) => Admission::Sniff {
                server,
                strict: false,
            },
        }
    }

    fn server_config(&self) -> Option<(Arc<Certified>, Arc<ServerConfig>)> {
        let current = self.identity.current()?;
        match self.server.get(&current, |c| {
            meshwork_identity::server_config(
                c.resolver.clone(),
                &c.bundle,
                &c.trust_domain,
                SERVER_ALPN,
            )
        }) {
            Ok(config) => Some((current, config)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot build the inbound mTLS config; taking no TLS connections");
                None
            }
        }
    }
}

/// The client config for endpoints proving `peer`, for the proxy's certificate `c`: ALPN `h2` for HTTP/2
/// clusters, `http/1.1` otherwise, and rustls' default session cache (resumption).
pub(crate) fn client_config(
    c: &Certified,
    peer: &SpiffeId,
    protocol: Protocol,
) -> Result<ClientConfig, TlsConfigError> {
    let alpn: &[&[u8]] = match protocol {
        Protocol::Http2 => &[b"h2"],
        Protocol::Http1 => &[b"http/1.1"],
    };
    meshwork_identity::client_config(
        c.resolver.clone(),
        &c.bundle,
        &c.trust_domain,
        std::slice::from_ref(peer),
        alpn,
    )
}
