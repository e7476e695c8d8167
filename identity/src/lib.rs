//! Meshwork workload identity: who a workload is and how two workloads prove it to each other.
//!
//! 1. [`spiffe`]: [`TrustDomain`] and [`SpiffeId`] (`spiffe://<td>/ns/<ns>/sa/<sa>`).
//! 2. [`ca`]: the control plane's [`Authority`]: its root (or operator CA) and the X.509-SVIDs it
//!    issues from workload CSRs.
//! 3. [`bundle`]: the [`TrustBundle`] of roots workloads trust (several during a CA rotation).
//! 4. [`csr`]: the proxy's [`WorkloadKey`]: key pair, CSR, and the issued chain as rustls wants it.
//! 5. [`svid`]: [`check_svid`], the accept-side rules for any peer's leaf certificate.
//! 6. [`tls`]: rustls server/client configs for mesh mTLS, the swappable [`RotatingIdentity`]
//!    and [`peer_identity`].
//! 7. [`serving`]: server certificates from the operator's files (gateway HTTPS listeners).

pub mod bundle;
pub mod ca;
pub mod channel;
pub mod csr;
pub mod operator;
pub mod serving;
pub mod spiffe;
pub mod svid;
pub mod tls;

pub use bundle::{BundleError, TrustBundle};
pub use ca::{Authority, AuthorityError, IssueError, Issued};
pub use csr::{CsrError, WorkloadKey};
pub use spiffe::{SpiffeId, SpiffeIdError, TrustDomain, DEFAULT_TRUST_DOMAIN};
pub use svid::{check_svid, SvidError};
pub use tls::{
    client_config, peer_identity, server_config, PeerRejected, RotatingIdentity, TlsConfigError,
};
