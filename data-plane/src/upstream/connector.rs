//! The upstream connector: hyper-util's `HttpConnector`, minus the `HttpInfo` it attaches to every response's
//! extensions (measured at three allocations per proxied request: the extensions map, its table and the boxed
//! value) which nothing in the proxy reads.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

#[derive(Clone)]
pub struct Connector(pub HttpConnector);

/// A connected upstream stream as hyper's client wants it: I/O passed through to `T`; what it reports of itself
/// (`Connection`) is per `T` (here plaintext TCP, which reports nothing beyond being connected; TLS in `tls.rs`).
pub struct Stream<T>(pub(super) TokioIo<T>);

/// A plaintext upstream connection.
pub type Plain = Stream<TcpStream>;

type Connecting = Pin<Box<dyn Future<Output = Result<Plain, BoxError>> + Send>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for Connector {
    type Response = Plain;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Connecting {
        let connecting = self.0.call(dst);
        Box::pin(async move { Ok(Stream(connecting.await?)) })
    }
}

impl Connection for Plain {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Read for Stream<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Write for Stream<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
}
