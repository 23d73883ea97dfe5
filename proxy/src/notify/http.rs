//! One webhook POST: resolve, connect from a marked socket, TLS for
//! `https://` (system roots), HTTP/1.1, 2xx or an error. Errors name what
//! failed, never the URL (it may be a secret).

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{header, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{
    rustls::{self, pki_types::ServerName, ClientConfig, RootCertStore},
    TlsConnector,
};

use crate::host::socket::connect_marked;

/// A whole delivery (connect, TLS, request, answer) may take this long.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connecting to one address may take this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Posts webhook bodies.
pub struct Client {
    mark: u32,
    /// Built at the first `https://` delivery.
    tls: std::sync::OnceLock<TlsConnector>,
}

impl Client {
    pub fn new(mark: u32) -> Self {
        Self {
            mark,
            tls: std::sync::OnceLock::new(),
        }
    }

    /// POSTs `body` (JSON) to `url` with idempotency key `key`.
    pub async fn post(&self, url: &str, key: &str, body: &[u8]) -> Result<(), String> {
        tokio::time::timeout(DELIVERY_TIMEOUT, self.post_inner(url, key, body))
            .await
            .map_err(|_| format!("no answer within {}s", DELIVERY_TIMEOUT.as_secs()))?
    }

    async fn post_inner(&self, url: &str, key: &str, body: &[u8]) -> Result<(), String> {
        let uri: Uri = url
            .parse()
            .map_err(|_| "the webhook URL does not parse".to_owned())?;
        let https = uri.scheme_str() == Some("https");
        let host = uri.host().ok_or("the webhook URL has no host")?.to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri
            .authority()
            .map_or_else(|| host.clone(), ToString::to_string);
        let path = uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), ToString::to_string);
        let stream = self.connect(&host, port).await?;
        let request = Request::post(path)
            .header(header::HOST, authority)
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("jitproxy/", env!("CARGO_PKG_VERSION")),
            )
            .header("idempotency-key", key)
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        if https {
            let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
                .map_err(|_| "the webhook host is not a valid TLS name".to_owned())?;
            let tls = self
                .tls()
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS with the webhook failed: {e}"))?;
            send(tls, request).await
        } else {
            send(stream, request).await
        }
    }

    /// A connection to `host:port` from a marked socket (the first address
    /// that answers).
    async fn connect(&self, host: &str, port: u16) -> Result<tokio::net::TcpStream, String> {
        let host = host.trim_matches(['[', ']']);
        let addrs = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("cannot resolve the webhook host: {e}"))?;
        let mut last = "the webhook host has no address".to_owned();
        for addr in addrs {
            match connect_marked(addr, Some(self.mark), CONNECT_TIMEOUT).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = format!("cannot connect to the webhook ({addr}): {e}"),
            }
        }
        Err(last)
    }

    fn tls(&self) -> &TlsConnector {
        self.tls.get_or_init(|| {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::warn!(%error, "cannot load a system root certificate");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            tracing::debug!(roots = added, "loaded system roots for https webhooks");
            let config = ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth());
            match config {
                Ok(config) => TlsConnector::from(Arc::new(config)),
                // The ring provider supports the default versions; never
                // expected. An empty root store fails every handshake.
                Err(e) => {
                    tracing::error!(error = %e, "cannot set up TLS for webhooks");
                    TlsConnector::from(Arc::new(
                        ClientConfig::builder()
                            .with_root_certificates(RootCertStore::empty())
                            .with_no_client_auth(),
                    ))
                }
            }
        })
    }
}

/// Sends `request` over `stream` and reads the answer: 2xx is delivered.
async fn send(
    stream: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    request: Request<Full<Bytes>>,
) -> Result<(), String> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP with the webhook failed: {e}"))?;
    let conn = tokio::spawn(conn);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("the webhook did not answer: {e}"))?;
    let status = response.status();
    // Read (and drop) the answer so the connection ends cleanly.
    let _ = response.into_body().collect().await;
    conn.abort();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the webhook answered {status}"))
    }
}
