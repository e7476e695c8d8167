//! Identity and mutual TLS: the trust domain and certificate lifetime the control plane issues with, the mode each
//! sidecar's inbound enforces, and the SPIFFE ID callers expect from each endpoint.
//!
//! The mode is decided per service, because a sidecar's snapshot is per service ([`super::ProxyKey`]): each
//! sidecar Workload's mode is its `spec.mtls.mode` or the Mesh's, and a service whose Workloads disagree takes
//! the strictest (STRICT > PERMISSIVE > DISABLED). Every sidecar of the service enforces that mode, and callers
//! reach each of its instances accordingly, so a caller never sends plaintext to an inbound that refuses it.

use std::collections::BTreeMap;
use std::time::Duration;

use meshwork_proto as pb;

use crate::model::mesh::{DEFAULT_CERTIFICATE_LIFETIME, DEFAULT_TRUST_DOMAIN};
use crate::model::{ManifestSet, MtlsMode, Run};

/// The mesh's SPIFFE trust domain: the Mesh's `spec.trustDomain`, or `cluster.local`.
pub fn trust_domain(set: &ManifestSet) -> &str {
    set.meshes
        .first()
        .and_then(|m| m.trust_domain.as_deref())
        .unwrap_or(DEFAULT_TRUST_DOMAIN)
}

/// The lifetime of the certificates issued to proxies: the Mesh's `spec.identity.certificateLifetime`, or 24h.
pub fn certificate_lifetime(set: &ManifestSet) -> Duration {
    set.meshes
        .first()
        .map_or(DEFAULT_CERTIFICATE_LIFETIME, |m| m.certificate_lifetime)
}

/// The Mesh's `spec.mtls.mode` (PERMISSIVE without a Mesh).
pub fn mesh_mtls(set: &ManifestSet) -> MtlsMode {
    set.meshes.first().map_or(MtlsMode::default(), |m| m.mtls)
}

/// The mode the sidecars of `service` in `namespace` enforce: the strictest of its sidecar Workloads' modes
/// (each its own `spec.mtls.mode` or the Mesh's), or the Mesh's when no Workload runs the service behind a sidecar.
pub fn service_mtls(set: &ManifestSet, namespace: &str, service: &str) -> MtlsMode {
    workload_modes(set)
        .filter(|(key, _)| *key == (namespace, service))
        .map(|(_, mode)| mode)
        .reduce(MtlsMode::stricter)
        .unwrap_or_else(|| mesh_mtls(set))
}

/// ((namespace, service), mode) of every Workload that runs behind a sidecar (`command`, not `endpoints`).
fn workload_modes(set: &ManifestSet) -> impl Iterator<Item = ((&str, &str), MtlsMode)> {
    let mesh = mesh_mtls(set);
    set.workloads
        .iter()
        .filter(|w| matches!(w.run, Run::Command { .. }))
        .map(move |w| {
            let key = (w.meta.namespace.as_str(), w.service.as_str());
            (key, w.mtls.unwrap_or(mesh))
        })
}

/// The SPIFFE ID of a sidecar of `service` in `namespace`.
pub fn sidecar_identity(trust_domain: &str, namespace: &str, service: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service}")
}

pub fn proto_mtls(mode: MtlsMode) -> pb::MtlsMode {
    match mode {
        MtlsMode::Permissive => pb::MtlsMode::MtlsPermissive,
        MtlsMode::Strict => pb::MtlsMode::MtlsStrict,
        MtlsMode::Disabled => pb::MtlsMode::MtlsDisabled,
    }
}

/// What one snapshot needs to name endpoint identities, worked out once per snapshot.
pub(super) struct Identities<'a> {
    trust_domain: &'a str,
    mesh: MtlsMode,
    /// (namespace, service) -> mode, for services some sidecar Workload runs.
    services: BTreeMap<(&'a str, &'a str), MtlsMode>,
}

impl<'a> Identities<'a> {
    pub(super) fn new(set: &'a ManifestSet) -> Self {
        let mut services: BTreeMap<(&str, &str), MtlsMode> = BTreeMap::new();
        for (key, mode) in workload_modes(set) {
            services
                .entry(key)
                .and_modify(|m| *m = m.stricter(mode))
                .or_insert(mode);
        }
        Identities {
            trust_domain: trust_domain(set),
            mesh: mesh_mtls(set),
            services,
        }
    }

    /// The identity a registered sidecar instance of `service` proves, or empty when its service's mTLS is
    /// DISABLED (callers then use plaintext).
    pub(super) fn of_instance(&self, namespace: &str, service: &str) -> String {
        let mode = self
            .services
            .get(&(namespace, service))
            .copied()
            .unwrap_or(self.mesh);
        if mode == MtlsMode::Disabled {
            String::new()
        } else {
            sidecar_identity(self.trust_domain, namespace, service)
        }
    }
}

#[cfg(test)]
mod tests;
