//! TLS before any HTTP: a gateway HTTPS listener's termination with the operator's certificates (`accept_https`),
//! and the inbound side of mesh mTLS, where one port takes both. The first byte of a connection says which
//! it is (a TLS record starts with 0x16, which no HTTP/1.1 method or HTTP/2 preface does); a ClientHello gets a
//! TLS 1.3 handshake that requires a client certificate of the mesh, and the connection is then served like a
//! plaintext one, carrying the verified peer. Sniffing and the handshake share the connection's first deadline
//! (`header_timeout` from accept); they run on the connection's own task, so a slow or failing handshake delays
//! no one else.

use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::{LazyConfigAcceptor, TlsAcceptor};

use super::Termination;
use crate::tls::serving::{hostname_covers, ServingCerts};
use crate::tls::{metrics, Admission, Inbound, Side, TlsMetrics, VerifiedPeer};

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// What an inbound connection turned out to be.
pub(super) enum Accepted {
    Plaintext(TcpStream),
    /// Mesh mTLS, with the peer it proved.
    Mesh(Box<TlsStream<TcpStream>>, Arc<VerifiedPeer>),
    /// TLS on a gateway HTTPS listener.
    Https(Box<TlsStream<TcpStream>>),
}

/// Takes a new connection as the listener's termination says; `None`: it was closed (a failed or late handshake,
/// plaintext where TLS is required, a peer that went away). Every TLS outcome is counted.
pub(super) async fn accept(
    tls: &Termination,
    stream: TcpStream,
    deadline: Instant,
) -> Option<Accepted> {
    match tls {
        Termination::Mesh(inbound) => accept_mesh(inbound, stream, deadline).await,
        Termination::Https {
            certs,
            listener,
            metrics,
        } => accept_https(certs, listener, metrics, stream, deadline).await,
    }
}

/// A gateway listener's connection: plaintext while the snapshot makes the listener HTTP; on HTTPS, a TLS
/// handshake within the deadline whose SNI the listener's `hostname` (if any) covers.
async fn accept_https(
    certs: &ServingCerts,
    listener: &str,
    metrics: &TlsMetrics,
    stream: TcpStream,
    deadline: Instant,
) -> Option<Accepted> {
    let Some(https) = certs.listener(listener) else {
        return Some(Accepted::Plaintext(stream));
    };
    let failed = |reason: &'static str| {
        metrics.handshake_failed(Side::Https, reason);
        tracing::debug!(listener, reason, "TLS handshake failed");
        None
    };
    let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
    let start = match tokio::time::timeout_at(deadline, acceptor).await {
        Err(_) => return failed("timeout"),
        Ok(Err(e)) => return failed(metrics::io_reason(&e)),
        Ok(Ok(start)) => start,
    };
    if let Some(hostname) = &https.hostname {
        let sni = start
            .client_hello()
            .server_name()
            .map(str::to_ascii_lowercase);
        if !sni.is_some_and(|sni| hostname_covers(hostname, &sni)) {
            return failed("sni_mismatch");
        }
    }
    let stream =
        match tokio::time::timeout_at(deadline, start.into_stream(https.config.clone())).await {
            Err(_) => return failed("timeout"),
            Ok(Err(e)) => return failed(metrics::io_reason(&e)),
            Ok(Ok(s)) => s,
        };
    let resumed = stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    metrics.handshake_ok(Side::Https, resumed);
    Some(Accepted::Https(Box::new(stream)))
}

/// Takes a new connection per the inbound mode; `None`: it was closed (plaintext under STRICT, a failed or late
/// handshake, a peer that went away). Every outcome is counted.
async fn accept_mesh(tls: &Inbound, stream: TcpStream, deadline: Instant) -> Option<Accepted> {
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
    Some(Accepted::Mesh(Box::new(stream), peer))
}
