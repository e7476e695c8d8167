//! A gRPC channel to the control plane over TLS (the proxies' discovery stream, `meshwork status`): TCP, then a
//! rustls handshake with the caller's config (which decides what the control plane must prove and what the caller
//! presents), then HTTP/2. The URL's host and port say where to connect; its scheme is ignored.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

/// The name sent as SNI. Mesh verifiers check SPIFFE IDs, never DNS names, so it only has to be a valid name.
const SNI: &str = "control-plane.meshwork.internal";

/// Why the channel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("control-plane address {0:?}: expected a URL such as http://127.0.0.1:15010")]
    Url(String),
    #[error("cannot reach the control plane at {url}: {error}")]
    Connect { url: String, error: String },
}

/// Connects to `url` with `config`, waiting at most `timeout` for the TCP connection and the handshake.
pub async fn connect(
    url: &str,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<Channel, ChannelError> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|_| ChannelError::Url(url.to_string()))?
        .connect_timeout(timeout)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    let connector = tower::service_fn(move |uri: Uri| {
        let config = config.clone();
        async move {
            let host = uri
                .host()
                .unwrap_or("127.0.0.1")
                .trim_matches(['[', ']'])
                .to_string();
            let port = uri.port_u16().unwrap_or(15010);
            let handshake = async {
                let tcp = TcpStream::connect((host.as_str(), port)).await?;
                tcp.set_nodelay(true)?;
                let name = ServerName::try_from(SNI).map_err(std::io::Error::other)?;
                TlsConnector::from(config).connect(name, tcp).await
            };
            let tls = tokio::time::timeout(timeout, handshake)
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
                })??;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| ChannelError::Connect {
            url: url.to_string(),
            error: error_chain(&e),
        })
}

/// An error and its sources on one line (tonic's transport error alone says only "transport error").
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
