//! Handshake counters (by side, result and reason), plaintext taken or refused by the inbound listener, and the
//! expiry of the proxy's own certificate, in Prometheus text form. Touched once per handshake, never per request.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::SystemTime;

use meshwork_identity::PeerRejected;
use rustls::{AlertDescription, CertificateError, Error};

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::identity::Certified;

/// Which end of the connection this proxy was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Side {
    /// The server: a peer connected to this proxy's inbound listener.
    Inbound,
    /// The client: this proxy connected to an upstream endpoint.
    Outbound,
    /// The server of a gateway HTTPS listener (TLS from any client, no client certificate).
    Https,
    /// The client: TLS originated to an endpoint outside the mesh.
    Egress,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Inbound => "inbound",
            Side::Outbound => "outbound",
            Side::Https => "https",
            Side::Egress => "egress",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Default)]
pub struct TlsMetrics {
    full: [AtomicU64; 4],
    resumed: [AtomicU64; 4],
    failed: Mutex<BTreeMap<(Side, &'static str), u64>>,
    plaintext_refused: AtomicU64,
    plaintext_served: AtomicU64,
}

impl TlsMetrics {
    pub fn handshake_ok(&self, side: Side, resumed: bool) {
        let by_side = if resumed { &self.resumed } else { &self.full };
        by_side[side.index()].fetch_add(1, Relaxed);
    }

    pub fn handshake_failed(&self, side: Side, reason: &'static str) {
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        *failed.entry((side, reason)).or_default() += 1;
    }

    pub fn plaintext_refused(&self) {
        self.plaintext_refused.fetch_add(1, Relaxed);
    }

    pub fn plaintext_served(&self) {
        self.plaintext_served.fetch_add(1, Relaxed);
    }

    /// Completed handshakes on `side` (full ones, or resumed ones).
    pub fn handshakes(&self, side: Side, resumed: bool) -> u64 {
        let by_side = if resumed { &self.resumed } else { &self.full };
        by_side[side.index()].load(Relaxed)
    }

    /// Failed handshakes on `side` for `reason`.
    pub fn failures(&self, side: Side, reason: &str) -> u64 {
        let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        failed
            .iter()
            .filter(|((s, r), _)| *s == side && *r == reason)
            .map(|(_, n)| *n)
            .sum()
    }

    /// Every failed handshake on `side`, whatever the reason.
    pub fn all_failures(&self, side: Side) -> u64 {
        let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        failed
            .iter()
            .filter(|((s, _), _)| *s == side)
            .map(|(_, n)| *n)
            .sum()
    }

    pub fn plaintext_refused_count(&self) -> u64 {
        self.plaintext_refused.load(Relaxed)
    }

    pub fn plaintext_served_count(&self) -> u64 {
        self.plaintext_served.load(Relaxed)
    }

    /// Encodes the families into the metrics registry's output; `own` is the proxy's certificate, if it has one.
    pub fn encode(&self, encoder: &mut DescriptorEncoder, own: Option<&Certified>) -> fmt::Result {
        let mut family = encoder.encode_descriptor(
            "meshwork_tls_handshakes",
            "TLS handshakes, by side (inbound: mTLS from a mesh peer; outbound: mTLS to one; https: a gateway HTTPS listener; egress: TLS originated to a system outside the mesh) and result (ok, resumed, or error with a reason).",
            None,
            MetricType::Counter,
        )?;
        for side in [Side::Inbound, Side::Outbound, Side::Https, Side::Egress] {
            for (result, n) in [
                ("ok", self.handshakes(side, false)),
                ("resumed", self.handshakes(side, true)),
            ] {
                let labels = [("side", side.label()), ("result", result), ("reason", "")];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        let failed = self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for ((side, reason), n) in failed {
            let labels = [
                ("side", side.label()),
                ("result", "error"),
                ("reason", reason),
            ];
            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
        }
        ConstCounter::new(self.plaintext_refused_count()).encode(encoder.encode_descriptor(
            "meshwork_tls_plaintext_refused",
            "Plaintext connections closed by a STRICT inbound listener.",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(self.plaintext_served_count()).encode(encoder.encode_descriptor(
            "meshwork_tls_plaintext_accepted",
            "Plaintext connections a PERMISSIVE inbound listener took after sniffing.",
            None,
            MetricType::Counter,
        )?)?;
        if let Some(own) = own {
            let mut family = encoder.encode_descriptor(
                "meshwork_tls_certificate_expiry_seconds",
                "Seconds until this proxy's certificate expires (negative: expired).",
                None,
                MetricType::Gauge,
            )?;
            let id = own.id.to_string();
            let left = seconds_left(own.not_after);
            ConstGauge::new(left).encode(family.encode_family(&[("spiffe_id", id.as_str())])?)?;
        }
        Ok(())
    }
}

/// Whole seconds until `t` (negative once past).
pub fn seconds_left(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::now()) {
        Ok(d) => d.as_secs_f64().round() as i64,
        Err(e) => -(e.duration().as_secs_f64().round() as i64),
    }
}

/// A short, stable label for why a handshake failed (tokio-rustls reports rustls' error inside an `io::Error`).
pub fn io_reason(err: &io::Error) -> &'static str {
    if let Some(tls) = err.get_ref().and_then(|e| e.downcast_ref::<Error>()) {
        return reason(tls);
    }
    match err.kind() {
        io::ErrorKind::UnexpectedEof => "eof",
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => "reset",
        io::ErrorKind::TimedOut => "timeout",
        _ => "io",
    }
}

/// A short, stable label for a rustls handshake error: the identity crate's reason when the peer's certificate
/// verified but was refused by the SVID rules or the allowed set, else the certificate problem or the alert.
pub fn reason(err: &Error) -> &'static str {
    if let Some(rejected) = PeerRejected::from_rustls(err) {
        return rejected.reason();
    }
    match err {
        Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "cert_expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "cert_not_yet_valid"
            }
            CertificateError::UnknownIssuer => "unknown_issuer",
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "name_mismatch"
            }
            CertificateError::BadSignature => "bad_signature",
            CertificateError::BadEncoding => "bad_encoding",
            CertificateError::Revoked => "revoked",
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "invalid_purpose"
            }
            _ => "invalid_certificate",
        },
        Error::NoCertificatesPresented => "no_peer_certificate",
        Error::AlertReceived(alert) => alert_reason(*alert),
        Error::PeerIncompatible(_) => "peer_incompatible",
        Error::PeerMisbehaved(_) => "peer_misbehaved",
        Error::InvalidMessage(_) => "invalid_message",
        Error::InappropriateMessage { .. } | Error::InappropriateHandshakeMessage { .. } => {
            "unexpected_message"
        }
        Error::NoApplicationProtocol => "no_application_protocol",
        Error::DecryptError => "decrypt_error",
        _ => "other",
    }
}

fn alert_reason(alert: AlertDescription) -> &'static str {
    match alert {
        AlertDescription::BadCertificate => "alert_bad_certificate",
        AlertDescription::UnknownCA => "alert_unknown_ca",
        AlertDescription::CertificateExpired => "alert_certificate_expired",
        AlertDescription::CertificateRequired => "alert_certificate_required",
        AlertDescription::CertificateUnknown => "alert_certificate_unknown",
        AlertDescription::AccessDenied => "alert_access_denied",
        AlertDescription::HandshakeFailure => "alert_handshake_failure",
        AlertDescription::ProtocolVersion => "alert_protocol_version",
        AlertDescription::NoApplicationProtocol => "alert_no_application_protocol",
        AlertDescription::DecryptError => "alert_decrypt_error",
        _ => "alert_other",
    }
}
