//! The control plane as the mesh's certificate authority: who a proxy is (a bootstrap token on its first
//! connection, the certificate issued then on later ones), and the X.509-SVIDs it issues for the keys proxies make
//! themselves (no private key ever crosses the wire).
//!
//! Identities: a sidecar of service S in namespace N is `spiffe://<trust-domain>/ns/N/sa/S`; a gateway G is
//! `spiffe://<trust-domain>/ns/N/gateway/G` (its own, so a Gateway never holds a service's identity); the control
//! plane itself is `spiffe://<trust-domain>/ns/meshwork-system/sa/control-plane`.

pub mod state;
pub mod token;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshwork_identity::ca::{Authority, Issued};
use meshwork_identity::spiffe::{SpiffeId, TrustDomain};
use meshwork_manifest::translate::ProxyRole;
use meshwork_proto as pb;
use sha2::{Digest, Sha256};

use token::{MintError, TokenError, Tokens};

/// The Mesh's `spec.trustDomain`, or `cluster.local`.
pub fn trust_domain_of(set: &meshwork_manifest::model::ManifestSet) -> anyhow::Result<TrustDomain> {
    let name = set
        .meshes
        .first()
        .and_then(|m| m.trust_domain.clone())
        .unwrap_or_else(|| meshwork_identity::DEFAULT_TRUST_DOMAIN.to_string());
    TrustDomain::new(&name).map_err(|e| anyhow::anyhow!("Mesh spec.trustDomain {name:?}: {e}"))
}

/// The namespace of the control plane's and the operator's own identities: no proxy and no manifest object may
/// be in it, so no token or certificate can ever name them.
pub const RESERVED_NAMESPACE: &str = "meshwork-system";

/// What a token binds: the service of a sidecar, `gateway:<name>` for a gateway.
fn bound(role: ProxyRole, service: &str) -> String {
    match role {
        ProxyRole::Sidecar => service.to_string(),
        ProxyRole::Gateway => format!("gateway:{service}"),
    }
}

/// Default lifetime of a proxy's certificate (Linkerd's and Istio's: 24 h).
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The mesh CA, the bootstrap tokens, and the lifetime of what is issued.
pub struct Identities {
    ca: Authority,
    tokens: Tokens,
    lifetime: Duration,
    ca_sha256: String,
}

/// Why a proxy gets no certificate.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("hello.csr: expected a PKCS#10 certificate signing request for the proxy's own key")]
    NoCsr,
    #[error("{0}")]
    Issue(String),
    #[error("{field}: {value:?} cannot be part of a SPIFFE ID ({error})")]
    Name {
        field: &'static str,
        value: String,
        error: String,
    },
}

impl Identities {
    /// The CA (the one in the state directory, or the operator's), the bootstrap tokens, and the lifetime of the
    /// certificates it issues.
    pub fn with(ca: Authority, tokens: Tokens, lifetime: Duration) -> Identities {
        let ca_sha256 = ca
            .trust_bundle()
            .roots()
            .first()
            .map(|root| token::hex(&Sha256::digest(root.as_ref())))
            .unwrap_or_default();
        Identities {
            ca,
            tokens,
            lifetime,
            ca_sha256,
        }
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        self.ca.trust_domain()
    }

    /// Lower-case hex sha256 of the root certificate a token pins.
    pub fn ca_sha256(&self) -> &str {
        &self.ca_sha256
    }

    /// A bootstrap token for a proxy of `role` serving `namespace/service` (a gateway: the Gateway's name), bound to
    /// `node` if given. The role is part of what the token names, so a sidecar's token cannot make a gateway
    /// identity nor a gateway's a service's.
    pub fn mint(
        &self,
        role: ProxyRole,
        namespace: &str,
        service: &str,
        node: Option<&str>,
        ttl: Duration,
    ) -> Result<String, MintError> {
        if namespace == RESERVED_NAMESPACE {
            return Err(MintError::BadField {
                field: "--namespace",
                value: namespace.to_string(),
            });
        }
        let td = self.trust_domain().as_str();
        self.tokens.mint(
            namespace,
            &bound(role, service),
            node,
            ttl,
            &self.ca_sha256,
            td,
        )
    }

    /// The identity a proxy of `role` named `name` in `namespace` holds.
    pub fn identity_of(
        &self,
        role: ProxyRole,
        namespace: &str,
        name: &str,
    ) -> Result<SpiffeId, IdentityError> {
        if namespace == RESERVED_NAMESPACE {
            return Err(IdentityError::Name {
                field: "hello.namespace",
                value: namespace.to_string(),
                error: "reserved for the control plane's and the operator's identities".into(),
            });
        }
        let td = self.trust_domain().as_str();
        let uri = match role {
            ProxyRole::Sidecar => format!("spiffe://{td}/ns/{namespace}/sa/{name}"),
            ProxyRole::Gateway => format!("spiffe://{td}/ns/{namespace}/gateway/{name}"),
        };
        SpiffeId::parse(&uri).map_err(|e| IdentityError::Name {
            field: "hello.service",
            value: name.to_string(),
            error: e.to_string(),
        })
    }

    /// The control plane's own identity (what proxies check when they connect).
    pub fn control_plane_id(&self) -> Result<SpiffeId, meshwork_identity::SpiffeIdError> {
        meshwork_identity::operator::control_plane_id(self.trust_domain())
    }

    /// Spends `token` for `node`, a proxy of `role` serving `namespace/service`.
    pub fn redeem(
        &self,
        token: &str,
        role: ProxyRole,
        namespace: &str,
        service: &str,
        node: &str,
    ) -> Result<(), IdentityError> {
        let grant = self.check_token(token, role, namespace, service, node)?;
        self.spend(&grant)
    }

    /// Checks `token` as `redeem` does without spending it.
    pub fn check_token(
        &self,
        token: &str,
        role: ProxyRole,
        namespace: &str,
        service: &str,
        node: &str,
    ) -> Result<token::Grant, IdentityError> {
        Ok(self
            .tokens
            .check(token, namespace, &bound(role, service), node)?)
    }

    /// Spends a checked token.
    pub fn spend(&self, grant: &token::Grant) -> Result<(), IdentityError> {
        Ok(self.tokens.spend(grant)?)
    }

    /// A certificate for `id` with the public key of `csr` (DER).
    pub fn issue(&self, id: &SpiffeId, csr: &[u8]) -> Result<Issued, IdentityError> {
        if csr.is_empty() {
            return Err(IdentityError::NoCsr);
        }
        self.ca
            .issue(csr, id, self.lifetime)
            .map_err(|e| IdentityError::Issue(format!("hello.csr: {e}")))
    }

    /// What a proxy is sent: its chain and every root the mesh trusts.
    pub fn message(&self, issued: &Issued) -> pb::Identity {
        let ms = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        };
        pb::Identity {
            spiffe_id: issued.id.to_string(),
            chain: issued.chain.iter().map(|c| c.as_ref().to_vec()).collect(),
            trust_bundle: self
                .ca
                .trust_bundle()
                .roots()
                .iter()
                .map(|r| r.as_ref().to_vec())
                .collect(),
            not_after_unix_ms: ms(issued.not_after),
            not_before_unix_ms: ms(SystemTime::now()),
        }
    }

    /// How long issued certificates live.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The trust bundle alone, for a proxy whose certificate stays (no chain).
    pub fn bundle_message(&self, id: &SpiffeId) -> pb::Identity {
        pb::Identity {
            spiffe_id: id.to_string(),
            chain: Vec::new(),
            trust_bundle: self
                .ca
                .trust_bundle()
                .roots()
                .iter()
                .map(|r| r.as_ref().to_vec())
                .collect(),
            not_after_unix_ms: 0,
            not_before_unix_ms: 0,
        }
    }

    /// The authority itself (the control plane issues its own serving certificate with it).
    pub fn authority(&self) -> &Authority {
        &self.ca
    }
}
