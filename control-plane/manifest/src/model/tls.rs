//! TLS at the gateway, as manifests say it: the `meshwork.dev/v1alpha1` TLSCertificate kind (a certificate chain
//! and key in files on the proxy's host, Secret-like but holding paths, never key material), and a Gateway
//! listener's `protocol: HTTPS` with `tls.mode: Terminate` and `certificateRefs` to TLSCertificates. The files are
//! read and checked here (a bad pair is an error naming the file and the field); the proxy reads them again
//! itself and follows them for changes. And TLS origination to endpoints outside the mesh (a Workload's `spec.tls`).

use std::path::{Path, PathBuf};

use super::read::{index, Obj, Reader};
use super::Meta;
use crate::source::yaml::Node;

pub const KIND: &str = "TLSCertificate";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsCertificate {
    pub meta: Meta,
    /// Absolute: a PEM chain, leaf first.
    pub cert_file: PathBuf,
    /// Absolute: the PEM private key of the leaf.
    pub key_file: PathBuf,
}

/// A listener's `tls`: terminate with the certificates referred to (in order; SNI chooses among them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    pub certificate_refs: Vec<CertificateRef>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRef {
    pub namespace: String,
    pub name: String,
    pub line: usize,
    /// `spec.listeners[i].tls.certificateRefs[j]`, for errors found later (an unknown name).
    pub field: String,
}

pub(super) fn parse_certificate(
    r: &mut Reader<'_>,
    meta: Meta,
    spec: &Node,
) -> Option<TlsCertificate> {
    let s = r.obj(spec, "spec", &["certFile", "keyFile"])?;
    let cert = r.req_string(
        &s,
        "certFile",
        "a PEM certificate chain file, leaf first (absolute, or relative to this manifest)",
    );
    let key = r.req_string(
        &s,
        "keyFile",
        "the PEM private key file of that certificate (absolute, or relative to this manifest)",
    );
    let (cert, key) = (cert?, key?);
    let cert_file = file_path(&r.sink.file, &cert);
    let key_file = file_path(&r.sink.file, &key);
    if let Err(e) = meshwork_identity::serving::load(&cert_file, &key_file) {
        let field = if e.path() == key_file {
            "keyFile"
        } else {
            "certFile"
        };
        let line = s.get(field).map_or(s.line, |n| n.line);
        r.error(line, format!("spec.{field}"), e.to_string());
        return None;
    }
    Some(TlsCertificate {
        meta,
        cert_file,
        key_file,
    })
}

/// The certificate, key and CA files the manifest texts name (TLSCertificate `spec.certFile`/`keyFile`, Workload
/// `spec.tls.caCertificates`), for the directory watcher: a file that appears or changes reloads the manifests,
/// as a rebuilt Wasm module does.
pub fn referenced_files(files: &[(PathBuf, String)]) -> Vec<PathBuf> {
    use super::wasm::{field, for_each_spec_of, scalar};
    let mut out = Vec::new();
    for_each_spec_of(files, KIND, |file, _, spec| {
        for key in ["certFile", "keyFile"] {
            if let Some(p) = scalar(spec, key) {
                out.push(file_path(file, p));
            }
        }
    });
    for_each_spec_of(files, "Workload", |file, _, spec| {
        if let Some(ca) = field(spec, "tls").and_then(|t| scalar(t, "caCertificates")) {
            out.push(file_path(file, ca));
        }
    });
    out
}

/// A path as a manifest gives it (relative to the manifest file), made absolute: the proxy reading it may run
/// in another directory.
fn file_path(manifest: &Path, given: &str) -> PathBuf {
    let path = Path::new(given);
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        manifest.parent().unwrap_or(Path::new(".")).join(path)
    };
    std::path::absolute(&joined).unwrap_or(joined)
}

/// A listener's `tls` stanza (`path` is `spec.listeners[i].tls`); `ns` is the Gateway's namespace.
pub(super) fn parse_listener_tls(
    r: &mut Reader<'_>,
    node: &Node,
    path: &str,
    ns: &str,
) -> Option<ListenerTls> {
    let t = r.obj(node, path, &["mode", "certificateRefs", "options"])?;
    if let Some(m) = t.get("mode") {
        let mode = r.string(m, &t.field("mode"))?;
        if mode != "Terminate" {
            r.error(
                m.line,
                t.field("mode"),
                format!("expected Terminate, got {mode:?} (Passthrough needs a TLS listener, which Meshwork does not have yet)"),
            );
            return None;
        }
    }
    if let Some(o) = t.get("options") {
        if !r.string_map(o, &t.field("options")).is_empty() {
            r.error(
                o.line,
                t.field("options"),
                "implementation-specific TLS options are not supported: expected none",
            );
            return None;
        }
    }
    let node = r.required(
        &t,
        "certificateRefs",
        "a list of references to TLSCertificates: {kind: TLSCertificate, group: meshwork.dev, name}",
    )?;
    let items = r.list(node, &t.field("certificateRefs"))?;
    if items.is_empty() {
        r.error(
            node.line,
            t.field("certificateRefs"),
            "expected at least one certificate reference",
        );
        return None;
    }
    let mut refs = Vec::new();
    for (i, n) in items.iter().enumerate() {
        let field = index(&t.field("certificateRefs"), i);
        if let Some(c) = r.obj(n, &field, &["group", "kind", "name", "namespace"]) {
            refs.push(certificate_ref(r, &c, field, ns)?);
        }
    }
    Some(ListenerTls {
        certificate_refs: refs,
    })
}

fn certificate_ref(
    r: &mut Reader<'_>,
    c: &Obj<'_>,
    field: String,
    ns: &str,
) -> Option<CertificateRef> {
    // The Gateway API's default is the core Secret; Meshwork reads certificates from files, so the kind is said.
    let kind = r.opt_string(c, "kind").unwrap_or_else(|| "Secret".into());
    let group = r.opt_string(c, "group").unwrap_or_default();
    if kind != KIND || group != "meshwork.dev" {
        r.error(
            c.line,
            format!("{field}.kind"),
            format!("expected kind: TLSCertificate with group: meshwork.dev (certificates are files named by a TLSCertificate), got kind {kind:?} group {group:?}"),
        );
        return None;
    }
    let name = r.req_string(c, "name", "the name of a TLSCertificate")?;
    let namespace = r.opt_string(c, "namespace").unwrap_or_else(|| ns.into());
    Some(CertificateRef {
        namespace,
        name,
        line: c.line,
        field,
    })
}

/// A Workload's `spec.tls` (endpoints outside the mesh): requests to them go over TLS, verifying the server for
/// `sni` against `ca_file` or, without one, the system's roots (Istio's DestinationRule `tls.mode: SIMPLE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginateTls {
    /// Sent as SNI and verified against the server's certificate.
    pub sni: String,
    /// Absolute: PEM CA certificates to verify the server with; `None`: the system's trust store.
    pub ca_file: Option<PathBuf>,
}

pub(super) fn parse_origination(
    r: &mut Reader<'_>,
    node: &Node,
    path: &str,
) -> Option<OriginateTls> {
    let t = r.obj(node, path, &["mode", "sni", "caCertificates"])?;
    if let Some(m) = t.get("mode") {
        let mode = r.string(m, &t.field("mode"))?;
        if mode != "SIMPLE" {
            r.error(
                m.line,
                t.field("mode"),
                format!("expected SIMPLE (TLS verifying the server), got {mode:?} (client certificates to systems outside the mesh are not supported yet)"),
            );
            return None;
        }
    }
    let sni = r.req_string(
        &t,
        "sni",
        "the server's DNS name: sent as SNI and verified against its certificate",
    )?;
    let sni_line = t.get("sni").map_or(t.line, |n| n.line);
    if !super::route::valid_hostname(&sni) || sni.starts_with("*.") {
        r.error(
            sni_line,
            t.field("sni"),
            format!("expected a DNS name such as \"legacy.example.com\", got {sni:?}"),
        );
        return None;
    }
    let ca_file = match t.get("caCertificates") {
        None => None,
        Some(n) => {
            let given = r.string(n, &t.field("caCertificates"))?;
            let file = file_path(&r.sink.file, &given);
            if let Err(e) = meshwork_identity::serving::load_roots(&file) {
                r.error(n.line, t.field("caCertificates"), e.to_string());
                return None;
            }
            Some(file)
        }
    };
    Some(OriginateTls { sni, ca_file })
}
