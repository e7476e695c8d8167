//! The inbound side of mesh mTLS, before any HTTP: one port takes both. The first byte of a connection says which
//! it is (a TLS record starts with 0x16, which no HTTP/1.1 method or HTTP/2 preface does); a ClientHello gets a
//! TLS 1.3 handshake that requires a client certificate of the mesh, and the connection is then served like a
//! plaintext one, carrying the verified peer. Sniffing and the handshake share the connection's first deadline
//! (`header_timeout` from accept); they run on the connection's own task, so a slow or failing handshake delays
//! no one else.

use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::tls::{metrics, Admission, Inbound, Side, VerifiedPeer};

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// What an inbound connection turned out to be.
pub(super) enum Accepted {
    Plaintext(TcpStream),
    Tls(Box<TlsStream<TcpStream>>, Arc<VerifiedPeer>),
}

/// Takes a new connection per the inbound mode; `None`: it was closed (plaintext under STRICT, a failed or late
/// handshake, a peer that went away). Every outcome is counted.
pub(super) async fn accept(
    tls: &Inbound,
    stream: TcpStream,
    deadline: Instant,
) -> Option<Accepted> {
    let (server, strict) = match tls.admission() {
        Admission::Plaintext => return Some(Accepted::Plaintext(stream)),
        Admission::Sniff { server, strict } => (server, strict),
    };
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Ok(Ok(1..)) => {}
        // Closed, failed, or silent until the deadline: nothing was offered.
        _ => return None,
    }
    if first[0] != TLS_HANDSHAKE {
        if strict {
            tls.metrics.plaintext_refused();
            tracing::debug!(peer = ?stream.peer_addr().ok(), "plaintext connection refused (mTLS STRICT)");
            return None;
        }
        tls.metrics.plaintext_served();
        return Some(Accepted::Plaintext(stream));
    }
    let Some((own, config)) = server else {
        tls.metrics
            .handshake_failed(Side::Inbound, "no_certificate");
        return None;
    };
    let failed = |reason: &'static str| {
        tls.metrics.handshake_failed(Side::Inbound, reason);
        tracing::debug!(reason, "inbound mTLS handshake failed");
        None
    };
    let stream =
        match tokio::time::timeout_at(deadline, TlsAcceptor::from(config).accept(stream)).await {
            Err(_) => return failed("timeout"),
            Ok(Err(e)) => return failed(metrics::io_reason(&e)),
            Ok(Ok(s)) => s,
        };
    let conn = stream.get_ref().1;
    // The verifier required and checked the client's SVID; reading its ID again cannot fail unless the chain is
    // gone, which would be a bug: refuse rather than serve an unknown caller.
    let Some(peer) = meshwork_identity::peer_identity(conn, &own.trust_domain) else {
        return failed("no_peer_identity");
    };
    let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    tls.metrics.handshake_ok(Side::Inbound, resumed);
    let peer = Arc::new(VerifiedPeer::new(&own.id, peer));
    Some(Accepted::Tls(Box::new(stream), peer))
}
