//! TLS termination on gateway HTTPS listeners, as runtime state beside the snapshot: the certificates of every
//! listener's TLSCertificates loaded from their files, one rustls server config per listener (SNI picks among
//! its certificates; the first serves a ClientHello that names none of them), and the files followed for changes.
//!
//! A snapshot's certificates are loaded before it is published (`prepare`; a file that cannot be loaded is a
//! NACK and the last good state stays); `commit` then serves them. `poll` re-reads files whose size, time or
//! inode changed (an editor's save, `cp`, a Kubernetes-style symlink swap): a good pair replaces the served one
//! for every handshake from then on (open connections keep theirs), a bad one is logged and counted and the last
//! good certificate stays.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use meshwork_identity::serving::{self, dns_name_covers, ServingCert};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::config::snapshot::{ServingFiles, Snapshot};

/// ALPN an HTTPS listener offers: HTTP/2 first, then HTTP/1.1.
const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// How often certificate files are checked for changes (a `stat` of two files per certificate).
pub const RELOAD_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// What an HTTPS listener terminates TLS with.
pub struct HttpsListener {
    pub config: Arc<ServerConfig>,
    /// The listener's `hostname` (lowercase): a ClientHello whose SNI it does not cover is refused.
    pub hostname: Option<Arc<str>>,
    files: Vec<ServingFiles>,
}

/// One TLSCertificate's files, what was last loaded from them, and when they last changed.
struct Watched {
    files: ServingFiles,
    current: ArcSwap<ServingCert>,
    stamp: Mutex<Option<Stamp>>,
    reloaded: AtomicU64,
    reload_failed: AtomicU64,
}

/// Size, modification time, inode and device of both files (following symlinks).
type Stamp = [(u64, i64, i64, u64, u64); 2];

fn stamp(files: &ServingFiles) -> Option<Stamp> {
    let one = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.len(), m.mtime(), m.mtime_nsec(), m.ino(), m.dev()))
    };
    Some([one(&files.cert)?, one(&files.key)?])
}

impl Watched {
    fn load(files: &ServingFiles) -> Result<Arc<Watched>, String> {
        let seen = stamp(files);
        let cert = serving::load(&files.cert, &files.key)
            .map_err(|e| format!("certificate {}: {e}", files.name))?;
        Ok(Arc::new(Watched {
            files: files.clone(),
            current: ArcSwap::from_pointee(cert),
            stamp: Mutex::new(seen),
            reloaded: AtomicU64::new(0),
            reload_failed: AtomicU64::new(0),
        }))
    }

    /// Re-reads the files if they changed since the last look.
    fn poll(&self) {
        let seen = stamp(&self.files);
        {
            let mut last = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
            if *last == seen {
                return;
            }
            *last = seen;
        }
        let loaded = serving::load(&self.files.cert, &self.files.key).and_then(|cert| {
            // A replacement that expired (a rolled-back file, say) would be worse than the certificate served.
            if cert.not_after < SystemTime::now() {
                return Err(serving::ServingCertError::BadCertificate {
                    path: self.files.cert.clone(),
                    reason: "it has expired".into(),
                });
            }
            Ok(cert)
        });
        match loaded {
            Ok(cert) => {
                tracing::info!(certificate = %self.files.name, names = ?cert.names, "certificate files changed: reloaded");
                self.current.store(Arc::new(cert));
                self.reloaded.fetch_add(1, Relaxed);
            }
            Err(e) => {
                tracing::warn!(certificate = %self.files.name, error = %e, "certificate files changed but cannot be loaded: still serving the previous certificate");
                self.reload_failed.fetch_add(1, Relaxed);
            }
        }
    }
}

/// SNI selection among a listener's certificates: an exact DNS name first, then a wildcard, else the first.
#[derive(Debug)]
struct SniResolver(Vec<Arc<Watched>>);

impl std::fmt::Debug for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("name", &self.files.name)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // Each certificate read once: a reload in between cannot pair one certificate's names with another's key.
        let certs: Vec<Arc<ServingCert>> = self.0.iter().map(|w| w.current.load_full()).collect();
        let first = certs.first()?;
        let chosen = hello
            .server_name()
            .map(str::to_ascii_lowercase)
            .and_then(|sni| {
                let exact = certs.iter().find(|c| c.names.contains(&sni));
                exact.or_else(|| {
                    certs
                        .iter()
                        .find(|c| c.names.iter().any(|n| dns_name_covers(n, &sni)))
                })
            })
            .unwrap_or(first);
        Some(chosen.key.clone())
    }
}

/// Does a Gateway API listener `hostname` (exact, or `*.suffix` covering any number of labels) cover `sni`?
pub fn hostname_covers(hostname: &str, sni: &str) -> bool {
    match hostname.strip_prefix('*') {
        Some(suffix) => sni.len() > suffix.len() && sni.ends_with(suffix),
        None => hostname == sni,
    }
}

/// What a snapshot's HTTPS listeners need, loaded and not yet served.
pub struct Prepared {
    watched: HashMap<ServingFiles, Arc<Watched>>,
    listeners: HashMap<Arc<str>, Arc<HttpsListener>>,
}

/// Every HTTPS listener's certificates and server config, by listener name.
#[derive(Default)]
pub struct ServingCerts {
    watched: Mutex<HashMap<ServingFiles, Arc<Watched>>>,
    listeners: ArcSwap<HashMap<Arc<str>, Arc<HttpsListener>>>,
}

impl ServingCerts {
    /// Loads what `snap`'s HTTPS listeners need (files already loaded are reused, and a listener whose
    /// certificates did not change keeps its config and session cache). An error names the listener, the
    /// TLSCertificate and the file.
    pub fn prepare(&self, snap: &Snapshot) -> Result<Prepared, String> {
        let known = self
            .watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let current = self.listeners.load();
        let mut watched: HashMap<ServingFiles, Arc<Watched>> = HashMap::new();
        let mut listeners = HashMap::new();
        for l in snap.listeners.values() {
            let Some(tls) = &l.tls else { continue };
            let mut certs = Vec::with_capacity(tls.len());
            for files in tls.iter() {
                let w = match watched.get(files).or_else(|| known.get(files)) {
                    Some(w) => w.clone(),
                    None => {
                        Watched::load(files).map_err(|e| format!("listener {}: {e}", l.name))?
                    }
                };
                watched.insert(files.clone(), w.clone());
                certs.push(w);
            }
            let unchanged = current
                .get(&l.name)
                .filter(|h| h.files == *tls.as_ref() && h.hostname == l.hostname)
                .filter(|_| tls.iter().all(|f| known.contains_key(f)));
            let https = match unchanged {
                Some(h) => h.clone(),
                None => Arc::new(HttpsListener {
                    config: server_config(certs)
                        .map_err(|e| format!("listener {}: tls: {e}", l.name))?,
                    hostname: l.hostname.clone(),
                    files: tls.to_vec(),
                }),
            };
            listeners.insert(l.name.clone(), https);
        }
        Ok(Prepared { watched, listeners })
    }

    /// Serves what `prepare` loaded; certificates no listener uses any more are dropped.
    pub fn commit(&self, p: Prepared) {
        *self.watched.lock().unwrap_or_else(|p| p.into_inner()) = p.watched;
        self.listeners.store(Arc::new(p.listeners));
    }

    /// The TLS an HTTPS listener terminates; `None` for a plaintext (HTTP) one.
    pub fn listener(&self, name: &str) -> Option<Arc<HttpsListener>> {
        self.listeners.load().get(name).cloned()
    }

    /// The certificates in use, by name (taken out of the lock: file I/O and formatting happen outside it).
    fn in_use(&self) -> Vec<Arc<Watched>> {
        let mut watched: Vec<Arc<Watched>> = self
            .watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        watched.sort_by(|a, b| a.files.name.cmp(&b.files.name));
        watched
    }

    /// Reloads every certificate whose files changed (blocking file I/O: call it off the request path).
    pub fn poll(&self) {
        for w in self.in_use() {
            w.poll();
        }
    }

    /// Encodes expiry and reload counts per certificate into the metrics registry's output.
    pub fn encode_metrics(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let watched = self.in_use();
        if watched.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "meshwork_tls_serving_certificate_expiry_seconds",
            "Seconds until a gateway listener's certificate (TLSCertificate) expires (negative: expired).",
            None,
            MetricType::Gauge,
        )?;
        for w in &watched {
            let left = super::metrics::seconds_left(w.current.load().not_after);
            let labels = [("certificate", &*w.files.name)];
            ConstGauge::new(left).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "meshwork_tls_serving_certificate_reloads",
            "Reloads of a TLSCertificate's files after they changed, by result (error: the previous certificate stayed).",
            None,
            MetricType::Counter,
        )?;
        for w in &watched {
            for (result, n) in [("ok", &w.reloaded), ("error", &w.reload_failed)] {
                let labels = [("certificate", &*w.files.name), ("result", result)];
                ConstCounter::new(n.load(Relaxed)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// TLS 1.2 and 1.3 (the clients of an edge listener are browsers and tools, not only mesh proxies), no client
/// certificate, ALPN h2 then http/1.1, rustls' session resumption defaults.
fn server_config(certs: Vec<Arc<Watched>>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(meshwork_identity::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver(certs)));
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::snapshot::{Listener, VirtualHosts};

    /// A self-signed certificate for `name` written to `dir/<file>.crt` and `.key`.
    fn files(dir: &Path, file: &str, name: &str) -> ServingFiles {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k): (PathBuf, PathBuf) = (
            dir.join(format!("{file}.crt")),
            dir.join(format!("{file}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        ServingFiles {
            name: Arc::from(format!("default/{file}")),
            cert: c,
            key: k,
        }
    }

    /// A listener for `snapshot`: name, hostname, certificates (`None`: HTTP).
    type Spec<'a> = (&'a str, Option<&'a str>, Option<Vec<ServingFiles>>);

    fn snapshot(listeners: &[Spec<'_>]) -> Snapshot {
        let mut snap = Snapshot::empty();
        for (name, hostname, tls) in listeners {
            let l = Listener {
                name: Arc::from(*name),
                port: 0,
                vhosts: VirtualHosts::default(),
                hostname: hostname.map(Arc::from),
                tls: tls.clone().map(Arc::from),
            };
            snap.listeners.insert(l.name.clone(), l);
        }
        snap
    }

    fn apply(certs: &ServingCerts, snap: &Snapshot) {
        let prepared = certs.prepare(snap).unwrap();
        certs.commit(prepared);
    }

    #[test]
    fn an_unchanged_listener_keeps_its_config_and_a_changed_one_gets_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let a = files(dir.path(), "a", "a.example.test");
        let certs = ServingCerts::default();
        apply(&certs, &snapshot(&[("https", None, Some(vec![a.clone()]))]));
        let first = certs.listener("https").unwrap();
        // The same certificates and hostname: the same config (and session cache).
        apply(&certs, &snapshot(&[("https", None, Some(vec![a.clone()]))]));
        assert!(Arc::ptr_eq(&first, &certs.listener("https").unwrap()));
        // Only the hostname changes: a new entry that carries it.
        apply(
            &certs,
            &snapshot(&[("https", Some("a.example.test"), Some(vec![a.clone()]))]),
        );
        let narrowed = certs.listener("https").unwrap();
        assert!(!Arc::ptr_eq(&first, &narrowed));
        assert_eq!(narrowed.hostname.as_deref(), Some("a.example.test"));
        // Another certificate: a new config.
        let b = files(dir.path(), "b", "b.example.test");
        apply(
            &certs,
            &snapshot(&[("https", Some("a.example.test"), Some(vec![b]))]),
        );
        assert!(!Arc::ptr_eq(&narrowed, &certs.listener("https").unwrap()));
    }

    #[test]
    fn https_to_http_and_back_on_one_listener() {
        let dir = tempfile::tempdir().unwrap();
        let a = files(dir.path(), "a", "a.example.test");
        let certs = ServingCerts::default();
        apply(&certs, &snapshot(&[("web", None, Some(vec![a.clone()]))]));
        assert!(certs.listener("web").is_some());
        // The same listener made HTTP: no TLS for its next connections, and its certificate is no longer followed.
        apply(&certs, &snapshot(&[("web", None, None)]));
        assert!(certs.listener("web").is_none());
        assert!(certs.in_use().is_empty());
        apply(&certs, &snapshot(&[("web", None, Some(vec![a]))]));
        assert!(certs.listener("web").is_some());
        assert_eq!(certs.in_use().len(), 1);
    }

    #[test]
    fn a_certificate_that_cannot_be_loaded_fails_the_snapshot_and_keeps_what_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let a = files(dir.path(), "a", "a.example.test");
        let certs = ServingCerts::default();
        apply(&certs, &snapshot(&[("https", None, Some(vec![a.clone()]))]));
        let served = certs.listener("https").unwrap();
        let missing = ServingFiles {
            name: Arc::from("default/missing"),
            cert: dir.path().join("missing.crt"),
            key: dir.path().join("missing.key"),
        };
        let err = certs
            .prepare(&snapshot(&[("https", None, Some(vec![missing]))]))
            .err()
            .unwrap();
        assert!(
            err.starts_with("listener https: certificate default/missing: "),
            "{err}"
        );
        assert!(Arc::ptr_eq(&served, &certs.listener("https").unwrap()));
    }

    #[test]
    fn a_symlink_swap_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let old = files(dir.path(), "old", "a.example.test");
        let new = files(dir.path(), "new", "a.example.test");
        let link = |f: &ServingFiles| {
            let (c, k) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
            for (target, l) in [(&f.cert, &c), (&f.key, &k)] {
                let tmp = l.with_extension("tmp");
                std::os::unix::fs::symlink(target, &tmp).unwrap();
                std::fs::rename(&tmp, l).unwrap();
            }
            ServingFiles {
                name: Arc::from("default/linked"),
                cert: c,
                key: k,
            }
        };
        let linked = link(&old);
        let certs = ServingCerts::default();
        apply(&certs, &snapshot(&[("https", None, Some(vec![linked]))]));
        let before = certs.in_use()[0].current.load_full();
        link(&new);
        certs.poll();
        let after = certs.in_use()[0].current.load_full();
        assert_ne!(before.key.cert[0], after.key.cert[0]);
        assert_eq!(certs.in_use()[0].reloaded.load(Relaxed), 1);
    }
}
