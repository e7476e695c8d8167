//! SPIFFE names: [`TrustDomain`] and [`SpiffeId`], parsed and printed per the SPIFFE ID standard
//! (<https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md>), plus the workload form
//! `spiffe://<td>/ns/<namespace>/sa/<service account>` and Istio's principal form of it.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// The trust domain a mesh uses when the operator names none (Istio's and Kubernetes' default).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// The longest SPIFFE ID the standard allows, in bytes, scheme included.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

const SCHEME: &str = "spiffe://";

/// Why a string is not a valid trust domain or SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("the SPIFFE ID is empty; expected spiffe://<trust domain>[/path]")]
    Empty,
    #[error("the SPIFFE ID is {len} bytes long; at most {MAX_SPIFFE_ID_LEN} are allowed")]
    TooLong { len: usize },
    #[error("the SPIFFE ID must start with the scheme `spiffe://` (lowercase)")]
    WrongScheme,
    #[error("the trust domain is empty; expected spiffe://<trust domain>")]
    MissingTrustDomain,
    #[error("the trust domain must not carry a port (`:`)")]
    Port,
    #[error("the trust domain must not carry user info (`@`)")]
    UserInfo,
    #[error("a SPIFFE ID must not have a query (`?`)")]
    Query,
    #[error("a SPIFFE ID must not have a fragment (`#`)")]
    Fragment,
    #[error(
        "the trust domain may contain only lowercase letters, digits, `.`, `-` and `_`; found {found:?}"
    )]
    TrustDomainChar { found: char },
    #[error("path segments may contain only letters, digits, `.`, `-` and `_`; found {found:?}")]
    PathChar { found: char },
    #[error("the path has an empty segment (`//`)")]
    EmptySegment,
    #[error("the path has a `.` or `..` segment")]
    DotSegment,
    #[error("the path must not end with `/`")]
    TrailingSlash,
}

/// A SPIFFE trust domain such as `cluster.local`: the name of one identity issuer (one mesh CA).
/// Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(Arc<str>);

impl TrustDomain {
    /// Parses a bare trust domain name (`cluster.local`, not `spiffe://cluster.local`).
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        check_trust_domain(name)?;
        Ok(Self(name.into()))
    }

    /// The name, e.g. `cluster.local`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID, `spiffe://<td>` (used as the URI SAN of CA certificates).
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            uri: format!("{SCHEME}{}", self.0).into(),
            trust_domain: self.clone(),
        }
    }
}

impl Default for TrustDomain {
    fn default() -> Self {
        Self(DEFAULT_TRUST_DOMAIN.into())
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

/// A validated SPIFFE ID, `spiffe://<trust domain><path>`. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: Arc<str>,
    trust_domain: TrustDomain,
}

impl SpiffeId {
    /// Parses a SPIFFE ID URI.
    pub fn parse(uri: &str) -> Result<Self, SpiffeIdError> {
        if uri.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if uri.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong { len: uri.len() });
        }
        if uri.contains('?') {
            return Err(SpiffeIdError::Query);
        }
        if uri.contains('#') {
            return Err(SpiffeIdError::Fragment);
        }
        let rest = uri.strip_prefix(SCHEME).ok_or(SpiffeIdError::WrongScheme)?;
        let (td, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        check_trust_domain(td)?;
        check_path(path)?;
        Ok(Self {
            uri: uri.into(),
            trust_domain: TrustDomain(td.into()),
        })
    }

    /// The workload ID `spiffe://<td>/ns/<namespace>/sa/<service_account>`.
    pub fn workload(
        trust_domain: &TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        for segment in [namespace, service_account] {
            check_segment(segment)?;
        }
        let uri = format!("{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}");
        if uri.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong { len: uri.len() });
        }
        Ok(Self {
            uri: uri.into(),
            trust_domain: trust_domain.clone(),
        })
    }

    /// The trust domain part.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path, `""` for a trust domain's own ID, else starting with `/`.
    pub fn path(&self) -> &str {
        &self.uri[SCHEME.len() + self.trust_domain.as_str().len()..]
    }

    /// `(namespace, service account)` when the path is exactly `/ns/<namespace>/sa/<sa>`.
    pub fn namespace_and_service_account(&self) -> Option<(&str, &str)> {
        let mut segments = self.path().strip_prefix('/')?.split('/');
        match (
            segments.next()?,
            segments.next()?,
            segments.next()?,
            segments.next()?,
        ) {
            ("ns", ns, "sa", sa) if segments.next().is_none() => Some((ns, sa)),
            _ => None,
        }
    }

    /// The full URI, e.g. `spiffe://cluster.local/ns/default/sa/frontend`.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// Istio's principal form: the URI without `spiffe://`, e.g. `cluster.local/ns/default/sa/frontend`.
    pub fn principal(&self) -> &str {
        &self.uri[SCHEME.len()..]
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.uri)
    }
}

fn check_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if td.contains('@') {
        return Err(SpiffeIdError::UserInfo);
    }
    if td.contains(':') {
        return Err(SpiffeIdError::Port);
    }
    match td.chars().find(|&c| !is_trust_domain_char(c)) {
        Some(found) => Err(SpiffeIdError::TrustDomainChar { found }),
        None => Ok(()),
    }
}

fn check_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    if path.ends_with('/') {
        return Err(SpiffeIdError::TrailingSlash);
    }
    // `path` starts with '/', so the first split item is the empty string before it.
    path.split('/').skip(1).try_for_each(check_segment)
}

fn check_segment(segment: &str) -> Result<(), SpiffeIdError> {
    match segment {
        "" => Err(SpiffeIdError::EmptySegment),
        "." | ".." => Err(SpiffeIdError::DotSegment),
        _ => match segment.chars().find(|&c| !is_path_char(c)) {
            Some(found) => Err(SpiffeIdError::PathChar { found }),
            None => Ok(()),
        },
    }
}

fn is_trust_domain_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}
