//! The inspected requests' way out: connections to the target's original
//! destination, from the daemon's marked socket, with TLS verified against
//! the system roots or the target's `upstream_ca` (never jitproxy's own CA),
//! HTTP/2 when the target offers it, else HTTP/1.1.
//!
//! Connections are pooled per (destination, server name) and shared by every
//! client of the target: they carry no user's state (the credential is the
//! target's), so reuse saves a TCP and TLS handshake per client connection.
//! An HTTP/2 connection is shared by every request; an HTTP/1.1 one serves
//! one request at a time and goes back to the pool when its response ends.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hyper::{
    body::Incoming,
    client::conn::{http1, http2},
    Request, Response,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject as _, CertificateDer, ServerName},
    ClientConfig, RootCertStore,
};
use tokio_rustls::TlsConnector;

use super::body::OutBody;
use crate::host::socket::connect_marked;

/// Idle HTTP/1.1 connections kept per (destination, name), at most.
const MAX_IDLE: usize = 32;
/// An idle connection unused this long is not reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request could not be sent upstream: the target's fault, or its
/// certificate's.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot reach {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the target's certificate for {name} does not verify: {source}")]
    Certificate {
        name: String,
        source: std::io::Error,
    },
    #[error("TLS with {addr} failed: {source}")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP with {addr} failed: {source}")]
    Http {
        addr: SocketAddr,
        source: hyper::Error,
    },
}

impl UpstreamError {
    /// The audit code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "upstream_unreachable",
            Self::Certificate { .. } => "upstream_certificate",
            Self::Tls { .. } => "upstream_tls",
            Self::Http { .. } => "upstream_http",
        }
    }
}

/// The TLS config toward a target: its roots, ALPN h2 and http/1.1.
pub fn client_config(
    upstream_ca: Option<&Path>,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    match upstream_ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read upstream_ca {}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("upstream_ca {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("upstream_ca {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "upstream_ca {} holds no certificate",
                    path.display()
                ));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err("no system root certificates found; set upstream_ca".to_owned());
            }
        }
    }
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// How requests reach one target.
pub struct Upstream {
    tls: Option<TlsConnector>,
    /// The same, offering only HTTP/1.1: an upgrade (WebSocket) needs it.
    tls_h1: Option<TlsConnector>,
    mark: Option<u32>,
    connect_timeout: Duration,
    pools: Mutex<HashMap<(SocketAddr, Arc<str>), Pool>>,
}

#[derive(Default)]
struct Pool {
    h2: Option<http2::SendRequest<OutBody>>,
    idle: Vec<(http1::SendRequest<OutBody>, Instant)>,
}

/// A connection a request is sent on.
pub enum Sender {
    H1(http1::SendRequest<OutBody>),
    H2(http2::SendRequest<OutBody>),
}

impl Sender {
    /// Whether requests on it are HTTP/2 (absolute URIs, no `Host`).
    pub fn is_h2(&self) -> bool {
        matches!(self, Self::H2(_))
    }
}

impl Upstream {
    pub fn new(
        tls: Option<Arc<ClientConfig>>,
        mark: Option<u32>,
        connect_timeout: Duration,
    ) -> Self {
        let tls_h1 = tls.as_ref().map(|config| {
            let mut h1 = ClientConfig::clone(config);
            h1.alpn_protocols = vec![b"http/1.1".to_vec()];
            TlsConnector::from(Arc::new(h1))
        });
        Self {
            tls: tls.map(TlsConnector::from),
            tls_h1,
            mark,
            connect_timeout,
            pools: Mutex::new(HashMap::new()),
        }
    }

    fn pools(&self) -> std::sync::MutexGuard<'_, HashMap<(SocketAddr, Arc<str>), Pool>> {
        // Each use is one lookup and push or pop: a panic cannot leave a
        // pool half-changed, so a poisoned lock is used as is.
        self.pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A connection to `addr` for `name`: a pooled one, or a new one.
    /// `upgrade`: the request asks for a protocol upgrade, which needs an
    /// HTTP/1.1 connection of its own.
    pub async fn sender(
        &self,
        addr: SocketAddr,
        name: &Arc<str>,
        upgrade: bool,
    ) -> Result<Sender, UpstreamError> {
        if !upgrade {
            let key = (addr, Arc::clone(name));
            let mut pools = self.pools();
            if let Some(pool) = pools.get_mut(&key) {
                if let Some(h2) = pool.h2.as_ref().filter(|s| !s.is_closed()) {
                    return Ok(Sender::H2(h2.clone()));
                }
                pool.h2 = None;
                while let Some((sender, since)) = pool.idle.pop() {
                    if since.elapsed() < IDLE_TIMEOUT && sender.is_ready() {
                        return Ok(Sender::H1(sender));
                    }
                }
            }
        }
        self.connect(addr, name, upgrade).await
    }

    /// Puts an HTTP/1.1 connection back once its response has ended.
    pub fn give_back(
        &self,
        addr: SocketAddr,
        name: &Arc<str>,
        sender: http1::SendRequest<OutBody>,
    ) {
        if !sender.is_ready() {
            return;
        }
        let mut pools = self.pools();
        sweep(&mut pools);
        let pool = pools.entry((addr, Arc::clone(name))).or_default();
        if pool.idle.len() < MAX_IDLE {
            pool.idle.push((sender, Instant::now()));
        }
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        name: &Arc<str>,
        upgrade: bool,
    ) -> Result<Sender, UpstreamError> {
        let tcp = connect_marked(addr, self.mark, self.connect_timeout)
            .await
            .map_err(|source| UpstreamError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = (if upgrade { &self.tls_h1 } else { &self.tls }) else {
            return handshake_h1(TokioIo::new(tcp), addr, upgrade).await;
        };
        let server_name =
            ServerName::try_from(name.to_string()).map_err(|e| UpstreamError::Tls {
                addr,
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
            })?;
        let stream = tls.connect(server_name, tcp).await.map_err(|source| {
            let bad_cert = source
                .get_ref()
                .and_then(|e| e.downcast_ref::<rustls::Error>())
                .is_some_and(|e| matches!(e, rustls::Error::InvalidCertificate(_)));
            if bad_cert {
                UpstreamError::Certificate {
                    name: name.to_string(),
                    source,
                }
            } else {
                UpstreamError::Tls { addr, source }
            }
        })?;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        if h2 && !upgrade {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(|source| UpstreamError::Http { addr, source })?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut pools = self.pools();
            sweep(&mut pools);
            let pool = pools.entry((addr, Arc::clone(name))).or_default();
            pool.h2 = Some(sender.clone());
            return Ok(Sender::H2(sender));
        }
        handshake_h1(TokioIo::new(stream), addr, upgrade).await
    }
}

/// Pools kept at most: (destination, name) pairs come from the target's
/// addresses, which a range can make many of.
const MAX_POOLS: usize = 1024;

/// Before a pool is added: when there are many, drop closed and stale
/// connections, then the pools left empty.
fn sweep(pools: &mut HashMap<(SocketAddr, Arc<str>), Pool>) {
    if pools.len() < MAX_POOLS {
        return;
    }
    for pool in pools.values_mut() {
        pool.h2 = pool.h2.take().filter(|s| !s.is_closed());
        pool.idle
            .retain(|(s, since)| since.elapsed() < IDLE_TIMEOUT && s.is_ready());
    }
    pools.retain(|_, p| p.h2.is_some() || !p.idle.is_empty());
}

async fn handshake_h1<I>(io: I, addr: SocketAddr, upgrade: bool) -> Result<Sender, UpstreamError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http1::handshake(io)
        .await
        .map_err(|source| UpstreamError::Http { addr, source })?;
    if upgrade {
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
    } else {
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    Ok(Sender::H1(sender))
}

/// Sends `request` on `sender`.
pub async fn send(
    sender: &mut Sender,
    addr: SocketAddr,
    request: Request<OutBody>,
) -> Result<Response<Incoming>, UpstreamError> {
    let sent = match sender {
        Sender::H1(s) => {
            s.ready()
                .await
                .map_err(|source| UpstreamError::Http { addr, source })?;
            s.send_request(request).await
        }
        Sender::H2(s) => s.send_request(request).await,
    };
    sent.map_err(|source| UpstreamError::Http { addr, source })
}
