//! The control plane's listener over TLS: each accepted connection is handshaken in its own task (bounded in time
//! and in number, so slow or silent clients hold up nobody), and what the handshake proved (the peer's SPIFFE ID,
//! when it presented a certificate) travels with the connection to the gRPC handlers (`PeerInfo`).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use meshwork_identity::spiffe::{SpiffeId, TrustDomain};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::Connected;

/// Handshakes at once; a connection arriving beyond that is closed at once (the accept loop never waits, so
/// silent clients cannot keep proxies out by filling the slots: each is held at most `HANDSHAKE_TIMEOUT`).
const MAX_HANDSHAKES: usize = 256;
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// What the control plane knows of a connection's peer.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    /// The SPIFFE ID of the client certificate it presented (verified); `None`: it presented none.
    pub identity: Option<SpiffeId>,
    /// That certificate's notAfter.
    pub not_after: Option<std::time::SystemTime>,
}

/// One TLS connection from a proxy (or the operator's CLI).
pub struct TlsConn {
    stream: TlsStream<TcpStream>,
    info: PeerInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

/// Accepts connections on `listener` and hands the handshaken ones to the returned channel.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    trust_domain: TrustDomain,
) -> mpsc::Receiver<std::io::Result<TlsConn>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(5);
        loop {
            let (tcp, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "control plane: accept failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            backoff = Duration::from_millis(5);
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::debug!(%remote, "control plane: too many handshakes at once; connection closed");
                continue;
            };
            let (acceptor, tx, td) = (acceptor.clone(), tx.clone(), trust_domain.clone());
            tokio::spawn(async move {
                let _slot = slot;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let conn = stream.get_ref().1;
                        let identity = meshwork_identity::tls::peer_identity(conn, &td);
                        let not_after = conn
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|leaf| meshwork_identity::svid::not_after(leaf));
                        let info = PeerInfo {
                            remote,
                            identity,
                            not_after,
                        };
                        let _ = tx.send(Ok(TlsConn { stream, info })).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%remote, error = %e, "control plane: TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(%remote, "control plane: TLS handshake timed out"),
                }
            });
        }
    });
    rx
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
