//! The Mesh kind (mesh-wide identity, mTLS, access log and tracing settings) and the `mtls` block a Workload may
//! override it with. The tracing block is read in `mesh/tracing.rs`.

mod tracing;

use std::time::Duration;

pub use self::tracing::{Propagator, Tracing, TracingProtocol};
use super::read::{Obj, Reader};
use super::Meta;
use crate::source::yaml::Node;

/// The trust domain when the Mesh names none (or there is no Mesh).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// `spec.identity.certificateLifetime` when left out.
pub const DEFAULT_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The shortest certificate lifetime a Mesh may ask for (proxies renew at 50-70% of it).
pub const MIN_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(60);
/// The longest: 90 days, as public CAs cap leaf certificates.
pub const MAX_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

/// What a sidecar's inbound listener accepts, and so whether callers reach it with mutual TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MtlsMode {
    /// Mutual TLS from the mesh, plaintext also accepted from callers outside it.
    #[default]
    Permissive,
    /// Mutual TLS only: plaintext is refused.
    Strict,
    /// No TLS: callers use plaintext.
    Disabled,
}

impl MtlsMode {
    pub const NAMES: [&'static str; 3] = ["STRICT", "PERMISSIVE", "DISABLED"];

    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Strict => "STRICT",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Disabled => "DISABLED",
        }
    }

    fn from_name(name: &str) -> Option<MtlsMode> {
        match name {
            "STRICT" => Some(MtlsMode::Strict),
            "PERMISSIVE" => Some(MtlsMode::Permissive),
            "DISABLED" => Some(MtlsMode::Disabled),
            _ => None,
        }
    }

    /// Orders modes by what they refuse: DISABLED < PERMISSIVE < STRICT.
    pub fn strictness(self) -> u8 {
        match self {
            MtlsMode::Disabled => 0,
            MtlsMode::Permissive => 1,
            MtlsMode::Strict => 2,
        }
    }

    /// The stricter of two modes.
    pub fn stricter(self, other: MtlsMode) -> MtlsMode {
        if other.strictness() > self.strictness() {
            other
        } else {
            self
        }
    }
}

/// Mesh-wide settings (at most one Mesh).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mesh {
    pub meta: Meta,
    /// `spec.trustDomain`: the SPIFFE trust domain of every identity (default `cluster.local`).
    pub trust_domain: Option<String>,
    /// `spec.mtls.mode` (default PERMISSIVE); a Workload's `spec.mtls.mode` overrides it for its instances.
    pub mtls: MtlsMode,
    /// `spec.identity.certificateLifetime` (default 24h, from 1m to 90 days): the lifetime of proxy certificates.
    pub certificate_lifetime: Duration,
    /// `spec.accessLog` (default: none).
    pub access_log: Option<AccessLog>,
    /// `spec.tracing`. None (no block): each proxy's OTEL_* environment decides alone; a block with
    /// `enabled: false` turns tracing off for every proxy, whatever its environment says.
    pub tracing: Option<Tracing>,
}

/// `spec.accessLog`: one line per request from every proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLog {
    /// `format: json` (default) or `text`.
    pub json: bool,
    /// `path`: `stdout` (default), `stderr` or an absolute file path.
    pub path: String,
    /// `sampling`: the share of requests logged (0 to 1, default 1), in parts per million.
    pub sampling_ppm: u32,
}

impl Mesh {
    /// A Mesh with every setting at its default (`spec: {}` or no spec).
    pub fn with_defaults(meta: Meta) -> Mesh {
        Mesh {
            meta,
            trust_domain: None,
            mtls: MtlsMode::default(),
            certificate_lifetime: DEFAULT_CERTIFICATE_LIFETIME,
            access_log: None,
            tracing: None,
        }
    }
}

pub(super) fn parse_mesh(r: &mut Reader<'_>, meta: Meta, spec: &Node) -> Option<Mesh> {
    let obj = r.obj(
        spec,
        "spec",
        &["trustDomain", "mtls", "identity", "accessLog", "tracing"],
    )?;
    let mut mesh = Mesh::with_defaults(meta);
    let mut ok = true;
    mesh.trust_domain = r.opt_string(&obj, "trustDomain");
    if let Some(td) = &mesh.trust_domain {
        let valid = !td.is_empty()
            && td.len() <= 255
            && td
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
        if !valid {
            let line = obj.get("trustDomain").map_or(obj.line, |n| n.line);
            r.error(
                line,
                "spec.trustDomain",
                format!("expected a SPIFFE trust domain (lowercase letters, digits, '.', '-', '_'), such as cluster.local; got {td:?}"),
            );
            ok = false;
        }
    }
    if let Some(node) = obj.get("mtls") {
        match parse_mtls(r, node, &obj.field("mtls")) {
            Some(mode) => mesh.mtls = mode,
            None => ok = false,
        }
    }
    if let Some(node) = obj.get("identity") {
        match parse_identity(r, node, &obj.field("identity")) {
            Some(lifetime) => mesh.certificate_lifetime = lifetime,
            None => ok = false,
        }
    }
    if let Some(node) = obj.get("accessLog") {
        match parse_access_log(r, node, &obj.field("accessLog")) {
            Some(log) => mesh.access_log = log,
            None => ok = false,
        }
    }
    if let Some(node) = obj.get("tracing") {
        match tracing::parse_tracing(r, node, &obj.field("tracing")) {
            Some(t) => mesh.tracing = Some(t),
            None => ok = false,
        }
    }
    ok.then_some(mesh)
}

/// The Mesh's `accessLog` block: `{enabled, format: json | text, path: stdout | stderr | /absolute/file,
/// sampling: 0..1}`. `Some(None)`: valid and off.
fn parse_access_log(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<Option<AccessLog>> {
    let obj = r.obj(node, path, &["enabled", "format", "path", "sampling"])?;
    let mut ok = true;
    let enabled = enabled(r, &obj).unwrap_or_else(|| {
        ok = false;
        true
    });
    let json = match obj.get("format") {
        None => true,
        Some(n) => match r.choice(n, &obj.field("format"), &["json", "text"]) {
            Some(f) => f == "json",
            None => {
                ok = false;
                true
            }
        },
    };
    let file = r
        .opt_string(&obj, "path")
        .unwrap_or_else(|| "stdout".to_string());
    if !matches!(file.as_str(), "stdout" | "stderr") && !std::path::Path::new(&file).is_absolute() {
        let line = obj.get("path").map_or(obj.line, |n| n.line);
        r.error(
            line,
            obj.field("path"),
            format!("expected stdout, stderr or an absolute file path, got {file:?}"),
        );
        ok = false;
    }
    let sampling_ppm = match share(r, &obj, "sampling", "requests") {
        Some(ppm) => ppm.unwrap_or(1_000_000),
        None => {
            ok = false;
            0
        }
    };
    ok.then(|| {
        enabled.then_some(AccessLog {
            json,
            path: file,
            sampling_ppm,
        })
    })
}

/// A block's `enabled: true | false` (default true); None (reported) when it is neither.
fn enabled(r: &mut Reader<'_>, obj: &Obj<'_>) -> Option<bool> {
    let Some(n) = obj.get("enabled") else {
        return Some(true);
    };
    match n.as_scalar() {
        Some("true") => Some(true),
        Some("false") => Some(false),
        _ => {
            r.error(
                n.line,
                obj.field("enabled"),
                format!("expected true or false, got {}", n.describe()),
            );
            None
        }
    }
}

/// `key`: a share of `what` from 0 to 1, in parts per million. `Some(None)`: left out; None: invalid (reported).
fn share(r: &mut Reader<'_>, obj: &Obj<'_>, key: &str, what: &str) -> Option<Option<u32>> {
    let Some(n) = obj.get(key) else {
        return Some(None);
    };
    match n.as_scalar().and_then(|v| v.parse::<f64>().ok()) {
        Some(v) if (0.0..=1.0).contains(&v) => Some(Some((v * 1_000_000.0).round() as u32)),
        _ => {
            r.error(
                n.line,
                obj.field(key),
                format!(
                    "expected a share of {what} from 0 to 1, such as 0.1, got {}",
                    n.describe()
                ),
            );
            None
        }
    }
}

/// An `mtls` block (Mesh or Workload): `{mode: STRICT | PERMISSIVE | DISABLED}`.
pub(super) fn parse_mtls(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<MtlsMode> {
    let obj = r.obj(node, path, &["mode"])?;
    let mode = r.required(&obj, "mode", "STRICT, PERMISSIVE or DISABLED")?;
    let name = r.choice(mode, &obj.field("mode"), &MtlsMode::NAMES)?;
    MtlsMode::from_name(&name)
}

/// The Mesh's `identity` block: `{certificateLifetime: <duration>}`.
fn parse_identity(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<Duration> {
    let obj: Obj<'_> = r.obj(node, path, &["certificateLifetime"])?;
    let Some(n) = obj.get("certificateLifetime") else {
        return Some(DEFAULT_CERTIFICATE_LIFETIME);
    };
    let field = obj.field("certificateLifetime");
    let lifetime = r.duration(n, &field)?;
    if !(MIN_CERTIFICATE_LIFETIME..=MAX_CERTIFICATE_LIFETIME).contains(&lifetime) {
        r.error(
            n.line,
            field,
            format!(
                "expected a certificate lifetime from 1m to 2160h (90 days), got {}",
                n.describe()
            ),
        );
        return None;
    }
    Some(lifetime)
}

#[cfg(test)]
mod tests;
