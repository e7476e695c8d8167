//! The applied configuration: immutable, validated, with everything the request path needs precomputed
//! (compiled regexes, parsed header names and values, routes pointing straight at their clusters).

use crate::telemetry::trace::{MeshTracing, TraceConfig};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::uri::Authority;
use http::Method;
use meshwork_identity::{SpiffeId, TrustDomain};
use meshwork_proto as pb;
use regex::Regex;

use super::policy::Policy;
use crate::filter::wasm::PluginHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http1,
    Http2,
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `addr` as a URI authority, so building the upstream URI does not re-parse it.
    pub authority: Authority,
    /// The SPIFFE ID this endpoint's proxy proves: requests to it go over mutual TLS (once this proxy has a
    /// certificate) to a server that must prove exactly this ID. `None`: plaintext (no sidecar there, or mTLS
    /// DISABLED for it).
    pub identity: Option<SpiffeId>,
    /// An endpoint outside the mesh that speaks TLS (a Workload's `spec.tls`): requests originate TLS to it.
    /// Never set together with `identity`.
    pub tls: Option<Arc<UpstreamTls>>,
    /// A mesh proxy registered this endpoint (it is not a static address outside the mesh): only such an
    /// endpoint is sent the caller's proof on a plaintext hop.
    pub mesh_peer: bool,
}

/// TLS originated to an endpoint outside the mesh: the server must present a certificate valid for `sni`, issued
/// by a CA of `ca_file` (PEM) or, without one, of the system's trust store. No client certificate.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    pub sni: Arc<str>,
    pub ca_file: Option<std::path::PathBuf>,
}

impl Endpoint {
    /// A plaintext endpoint (no identity).
    pub fn plain(addr: SocketAddr) -> Self {
        Endpoint {
            addr,
            authority: Authority::try_from(addr.to_string().as_str())
                .unwrap_or_else(|_| Authority::from_static("0.0.0.0:0")),
            identity: None,
            tls: None,
            mesh_peer: false,
        }
    }
}

/// What a sidecar's inbound listener accepts (Mesh `spec.mtls.mode`, or the Workload's override).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MtlsMode {
    /// Mutual TLS from mesh peers, plaintext from callers outside the mesh (sniffed per connection).
    #[default]
    Permissive,
    /// Mutual TLS only: a plaintext connection is closed (and counted).
    Strict,
    /// No TLS at all: every connection is served as plaintext.
    Disabled,
}

/// An upstream service as configured: its endpoints and its TrafficPolicy. The runtime state derived from it
/// (breaker, budget, limiter, per-endpoint latency and ejections) lives beside the snapshot in the resilience
/// registry (stage 5-6), keyed by name.
#[derive(Debug)]
pub struct Cluster {
    pub name: Arc<str>,
    pub protocol: Protocol,
    pub endpoints: Vec<Endpoint>,
    pub policy: Arc<Policy>,
}

impl Cluster {
    /// A cluster with the default policy (the sidecar's local app, tests).
    pub fn new(name: Arc<str>, protocol: Protocol, endpoints: Vec<Endpoint>) -> Self {
        Cluster {
            name,
            protocol,
            endpoints,
            policy: Arc::default(),
        }
    }

    /// Any endpoint, at random (mirrors, callouts and the sidecar's local app; routed requests go through the
    /// balancer in `resilience`).
    pub fn any_endpoint(&self) -> Option<&Endpoint> {
        match self.endpoints.as_slice() {
            [] => None,
            [only] => Some(only),
            many => many.get(fastrand::usize(..many.len())),
        }
    }
}

/// A TrafficPolicy attached to a route (or to the sidecar's inbound listener); `key` names its runtime state in
/// the resilience registry.
#[derive(Debug)]
pub struct PolicyRef {
    pub key: Arc<str>,
    pub policy: Arc<Policy>,
}

#[derive(Debug)]
pub enum StrMatch {
    Exact(String),
    Regex(Regex),
}

impl StrMatch {
    pub fn matches(&self, s: &str) -> bool {
        match self {
            StrMatch::Exact(v) => v == s,
            StrMatch::Regex(r) => r.is_match(s),
        }
    }
}

#[derive(Debug)]
pub enum PathMatch {
    Exact(String),
    /// Gateway API prefix semantics: `/foo` matches `/foo` and `/foo/bar`, not `/foobar`.
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub headers: Vec<(HeaderName, StrMatch)>,
    pub query: Vec<(String, StrMatch)>,
    pub method: Option<Method>,
}

#[derive(Debug, Default)]
pub struct HeaderMod {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

#[derive(Debug)]
pub enum PathRewrite {
    Full(String),
    Prefix(String),
}

#[derive(Debug)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathRewrite>,
    pub port: Option<u16>,
    pub status: http::StatusCode,
}

#[derive(Debug)]
pub struct Mirror {
    pub cluster: Arc<Cluster>,
    pub percent: u32,
}

#[derive(Debug, Default)]
pub struct Filters {
    pub request_headers: Option<HeaderMod>,
    pub response_headers: Option<HeaderMod>,
    pub rewrite_host: Option<HeaderValue>,
    pub rewrite_path: Option<PathRewrite>,
    pub redirect: Option<Redirect>,
    pub mirrors: Vec<Mirror>,
}

#[derive(Debug)]
pub struct WeightedCluster {
    /// None: a backendRef the route may not use (another namespace's Service that no ReferenceGrant opens to
    /// it): requests picked for it are answered 500, as the Gateway API says; the route's other backends work.
    pub cluster: Option<Arc<Cluster>>,
    /// Running total of weights up to and including this one.
    pub cumulative: u32,
}

#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub matcher: RouteMatch,
    pub filters: Filters,
    pub backends: Vec<WeightedCluster>,
    pub total_weight: u32,
    pub timeout: Option<Duration>,
    /// Wasm filters, in the order they run on the request.
    pub wasm: Vec<Arc<PluginHandle>>,
    /// A TrafficPolicy targeting this route: its per-request fields (and rate-limit state) override the
    /// backend service's.
    pub policy: Option<PolicyRef>,
}

impl Route {
    /// Weighted pick among the backends; `None` when every weight is zero (or there are none).
    pub fn pick_backend(&self) -> Option<&Arc<Cluster>> {
        match self.backends.as_slice() {
            [] => None,
            [only] if self.total_weight > 0 => only.cluster.as_ref(),
            _ if self.total_weight == 0 => None,
            many => {
                let x = fastrand::u32(0..self.total_weight);
                many.iter()
                    .find(|b| x < b.cumulative)
                    .and_then(|b| b.cluster.as_ref())
            }
        }
    }
}

#[derive(Debug)]
pub struct VirtualHost {
    pub name: String,
    pub routes: Vec<Route>,
}

/// Virtual hosts of a listener, indexed for lookup by host: exact names, then the longest `*.suffix`, then `*`.
#[derive(Debug, Default)]
pub struct VirtualHosts {
    pub hosts: Vec<VirtualHost>,
    pub exact: HashMap<String, usize>,
    /// (suffix including the leading dot, index), longest first.
    pub wildcards: Vec<(String, usize)>,
    pub any: Option<usize>,
}

#[derive(Debug)]
pub struct Listener {
    pub name: Arc<str>,
    pub port: u16,
    pub vhosts: VirtualHosts,
    /// Gateway API listener `hostname` (lowercase; exact or `*.suffix`): on HTTPS, the SNI it must cover.
    pub hostname: Option<Arc<str>>,
    /// HTTPS listeners: the certificates TLS is terminated with, in order (SNI picks; the first is the default).
    pub tls: Option<Arc<[ServingFiles]>>,
}

/// A TLSCertificate as the proxy reads it: two files on this host (the loaded state lives in `tls::serving`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServingFiles {
    /// `<namespace>/<name>` of the TLSCertificate.
    pub name: Arc<str>,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub listeners: HashMap<Arc<str>, Listener>,
    pub clusters: HashMap<Arc<str>, Arc<Cluster>>,
    /// Sidecars: Wasm filters on the inbound listener.
    pub inbound_wasm: Vec<Arc<PluginHandle>>,
    /// Sidecars: the server-side rate limit protecting the local app.
    pub inbound_limit: Option<PolicyRef>,
    /// Every Wasm plugin of this snapshot, by name (kept across snapshots while unchanged).
    pub plugins: HashMap<String, Arc<PluginHandle>>,
    /// Sidecars: the mesh key that proves `x-meshwork-source` (first: the current one, to sign with; then the
    /// previous control plane's, still accepted). Empty: no caller is vouched for.
    pub mesh_keys: Vec<bytes::Bytes>,
    /// The mesh's trust domain, as the control plane names it (`None`: not said, e.g. standalone mode).
    pub trust_domain: Option<TrustDomain>,
    /// Sidecars: what the inbound listener accepts.
    pub inbound_mtls: MtlsMode,
    /// AuthorizationPolicies this proxy enforces (sidecars: on the inbound listener; gateways: on every listener).
    pub authorization: Vec<crate::authz::Policy>,
    /// The Mesh's `spec.accessLog` (None: no access log).
    pub access_log: Option<Arc<AccessLogConfig>>,
    /// The Mesh's `spec.tracing`, as pushed (None: the Mesh says nothing; the environment decides).
    pub mesh_tracing: Option<MeshTracing>,
    /// The tracing this proxy does: the Mesh's settings over its OpenTelemetry environment (None: none). Set
    /// by the proxy when it applies the snapshot (`Applier`), not by the conversion from protobuf.
    pub tracing: Option<Arc<TraceConfig>>,
    /// What was received, for /config_dump.
    pub source: pb::Snapshot,
}

impl Snapshot {
    /// The configuration before the first push: nothing routes yet.
    pub fn empty() -> Self {
        Snapshot {
            version: 0,
            listeners: HashMap::new(),
            clusters: HashMap::new(),
            inbound_wasm: Vec::new(),
            inbound_limit: None,
            plugins: HashMap::new(),
            mesh_keys: Vec::new(),
            trust_domain: None,
            inbound_mtls: MtlsMode::default(),
            authorization: Vec::new(),
            access_log: None,
            mesh_tracing: None,
            tracing: None,
            source: pb::Snapshot::default(),
        }
    }
}

/// `spec.accessLog` of the Mesh, as the proxy applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    pub json: bool,
    /// `stdout`, `stderr`, or an absolute file path (appended to).
    pub path: Arc<str>,
    /// The share of requests logged, in parts per million.
    pub sampling_ppm: u32,
}

impl AccessLogConfig {
    /// Whether this request is one of the sampled ones.
    pub fn sampled(&self) -> bool {
        self.sampling_ppm >= 1_000_000 || fastrand::u32(..1_000_000) < self.sampling_ppm
    }
}
