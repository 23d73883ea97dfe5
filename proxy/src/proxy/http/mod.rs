//! Inspect mode: TLS terminated on the host with the local CA, each HTTP
//! request decided, recorded and sent on with the real credential.
//!
//! A connection to an inspect target has been let through by its grant
//! like any other (stages 1 to 3 of [`super::connection`]); instead of
//! connecting upstream and relaying bytes, [`Inspector::serve`]:
//!
//! 1. reads the TLS ClientHello: a missing server name, or one that is not
//!    the target's, is refused; a name the local CA does not cover too;
//! 2. completes TLS with a leaf from the [`ca`] (a client that rejects it,
//!    pinning or not trusting the CA, is closed and recorded, never passed
//!    to an uninspected tunnel);
//! 3. serves HTTP/1.1 or HTTP/2 (ALPN) with hyper; each request (each
//!    HTTP/2 stream) goes through [`exchange`];
//! 4. when the grant ends or the daemon stops, shuts the connection down
//!    (GOAWAY on HTTP/2), and closes it at most [`CUT_GRACE`] later;
//!    upgraded connections (WebSocket) are cut too.

pub mod body;
pub mod ca;
pub mod credential;
mod exchange;
pub mod upstream;

use std::{
    net::SocketAddr,
    pin::{pin, Pin},
    sync::{atomic::AtomicU64, Arc},
    time::Duration,
};

use arc_swap::ArcSwap;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use rustls::{
    crypto::CryptoProvider,
    server::{Acceptor, ClientHello, ResolvesServerCert, ServerSessionMemoryCache},
    sign::CertifiedKey,
    ServerConfig,
};
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::sync::CancellationToken;

use self::{ca::LocalCa, upstream::Upstream};
use super::limits::RequestLimits;
use crate::config::{Config, Inspect, SecretRef};

/// How long a connection may finish its responses once access ends.
pub const CUT_GRACE: Duration = Duration::from_millis(500);

/// The crypto provider of the whole binary (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// One inspect target's TLS, upstream, credential and request limits.
pub struct Inspector {
    target: Arc<str>,
    target_id: u32,
    names: Box<[Arc<str>]>,
    /// `None`: a plain-HTTP target, whose clients speak plain HTTP.
    tls: Option<Arc<ServerConfig>>,
    ca: Option<Arc<LocalCa>>,
    upstream: Upstream,
    credential: Option<credential::Credential>,
    requests: RequestLimits,
    log_query: bool,
}

/// Every target's inspector, by target number; swapped whole on reload.
#[derive(Clone, Default)]
pub struct Inspectors(Arc<ArcSwap<Vec<Slot>>>);

/// What a target number's connections take.
#[derive(Clone)]
enum Slot {
    Passthrough,
    Inspect(Arc<Inspector>),
    /// An inspect target that could not be set up: its connections are
    /// refused (never passed through uninspected).
    Broken(Arc<str>),
}

impl std::fmt::Debug for Inspectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inspectors")
    }
}

/// An inspect target could not be set up; the operator's to fix.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("the local CA: {0}")]
    Ca(#[from] ca::CaError),
    #[error("target `{target}`: {message}")]
    Target { target: String, message: String },
}

impl Inspectors {
    /// The inspector of target `id`: `None` for a passthrough target,
    /// `Some(Err(why))` for an inspect target that could not be set up.
    pub fn get(&self, id: u32) -> Option<Result<Arc<Inspector>, Arc<str>>> {
        match self.0.load().get(id as usize)? {
            Slot::Passthrough => None,
            Slot::Inspect(inspector) => Some(Ok(Arc::clone(inspector))),
            Slot::Broken(why) => Some(Err(Arc::clone(why))),
        }
    }

    /// Builds the inspectors of `config`'s inspect targets (opening or
    /// making the local CA when there is one) and puts them in place. A
    /// target that cannot be set up has its connections refused; its error
    /// is returned with the others. Also returns the server names the CA
    /// does not cover.
    pub fn install(&self, config: &Config, mark: Option<u32>) -> Installed {
        let mut installed = Installed::default();
        let table = match self.build(config, mark, &mut installed) {
            Ok(table) => table,
            Err(e) => {
                let why: Arc<str> = Arc::from(e.to_string());
                installed.errors.push(e);
                config
                    .targets
                    .iter()
                    .map(|t| match t.mode.inspect() {
                        Some(_) => Slot::Broken(Arc::clone(&why)),
                        None => Slot::Passthrough,
                    })
                    .collect()
            }
        };
        self.0.store(Arc::new(table));
        installed
    }

    fn build(
        &self,
        config: &Config,
        mark: Option<u32>,
        installed: &mut Installed,
    ) -> Result<Vec<Slot>, InspectError> {
        let provider = provider();
        let inspect: Vec<(&crate::config::Target, &Inspect)> = config
            .targets
            .iter()
            .filter(|t| !t.retired)
            .filter_map(|t| t.mode.inspect().map(|i| (t, i)))
            .collect();
        let tls_names: Vec<String> = inspect
            .iter()
            .filter(|(_, i)| i.upstream_tls)
            .flat_map(|(_, i)| i.server_names.iter().cloned())
            .collect();
        let ca = if tls_names.is_empty() {
            None
        } else {
            let (ca, opened) = LocalCa::open(&config.state_dir, &tls_names, Arc::clone(&provider))?;
            if opened == ca::Opened::Created {
                tracing::info!(
                    fingerprint = ca.fingerprint(),
                    path = %ca::cert_path(&config.state_dir).display(),
                    "made the local CA; run `jitproxy ca install` so clients trust it"
                );
            }
            Some(Arc::new(ca))
        };
        installed.uncovered = ca
            .as_ref()
            .map(|ca| {
                ca.uncovered(&tls_names)
                    .into_iter()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        installed.ca = ca.clone();
        let sessions: Arc<dyn rustls::server::StoresServerSessions> =
            ServerSessionMemoryCache::new(4096);
        let mut table = Vec::with_capacity(config.targets.len());
        for (id, target) in config.targets.iter().enumerate() {
            let Some(inspect) = target.mode.inspect().filter(|_| !target.retired) else {
                table.push(Slot::Passthrough);
                continue;
            };
            match self.inspector(
                config,
                id,
                target,
                inspect,
                ca.as_ref(),
                &provider,
                &sessions,
                mark,
            ) {
                Ok(inspector) => table.push(Slot::Inspect(Arc::new(inspector))),
                Err(e) => {
                    table.push(Slot::Broken(Arc::from(e.to_string())));
                    installed.errors.push(e);
                }
            }
        }
        Ok(table)
    }

    #[allow(clippy::too_many_arguments)]
    fn inspector(
        &self,
        config: &Config,
        id: usize,
        target: &crate::config::Target,
        inspect: &Inspect,
        ca: Option<&Arc<LocalCa>>,
        provider: &Arc<CryptoProvider>,
        sessions: &Arc<dyn rustls::server::StoresServerSessions>,
        mark: Option<u32>,
    ) -> Result<Inspector, InspectError> {
        {
            let failed = |message: String| InspectError::Target {
                target: target.name.clone(),
                message,
            };
            let names: Box<[Arc<str>]> = inspect
                .server_names
                .iter()
                .map(|n| Arc::from(n.as_str()))
                .collect();
            let (tls, upstream_tls) = match (ca, inspect.upstream_tls) {
                (Some(ca), true) => {
                    let mut server = ServerConfig::builder_with_provider(Arc::clone(provider))
                        .with_safe_default_protocol_versions()
                        .map_err(|e| failed(e.to_string()))?
                        .with_no_client_auth()
                        .with_cert_resolver(Arc::new(Leaves {
                            ca: Arc::clone(ca),
                            names: names.clone(),
                        }));
                    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
                    server.session_storage = Arc::clone(sessions);
                    let client = upstream::client_config(
                        inspect.upstream_ca.as_deref(),
                        Arc::clone(provider),
                    )
                    .map_err(failed)?;
                    (Some(Arc::new(server)), Some(client))
                }
                _ => (None, None),
            };
            let credential = inspect
                .credential
                .as_ref()
                .map(|c| {
                    let source = match &c.secret {
                        SecretRef::File(path) => credential::SecretSource::File(path.clone()),
                        SecretRef::Env(name) => credential::SecretSource::Env(name.clone()),
                    };
                    let header = c
                        .header
                        .as_deref()
                        .map(|h| hyper::header::HeaderName::from_bytes(h.as_bytes()))
                        .transpose()
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>(
                        credential::Credential::new(
                            header,
                            credential::Template::parse(&c.value).map_err(|e| e.to_string())?,
                            credential::SecretCell::new(source).map_err(|e| e.to_string())?,
                            c.placeholder_query.clone(),
                        )
                        .with_placeholder_headers(
                            c.placeholder_headers
                                .iter()
                                .filter_map(|h| {
                                    hyper::header::HeaderName::from_bytes(h.as_bytes()).ok()
                                })
                                .collect(),
                        ),
                    )
                })
                .transpose()
                .map_err(failed)?;
            Ok(Inspector {
                target: Arc::from(target.name.as_str()),
                target_id: u32::try_from(id).unwrap_or(u32::MAX),
                names,
                tls,
                ca: ca.cloned(),
                upstream: Upstream::new(upstream_tls, mark, config.connect_timeout),
                credential,
                requests: RequestLimits::new(inspect.requests_per_second, inspect.requests_burst),
                log_query: inspect.log_query,
            })
        }
    }
}

/// What [`Inspectors::install`] did.
#[derive(Debug, Default)]
pub struct Installed {
    /// The local CA, when a target terminates TLS.
    pub ca: Option<Arc<LocalCa>>,
    /// Server names outside the CA's name constraints.
    pub uncovered: Vec<String>,
    /// Targets (or the CA) that could not be set up.
    pub errors: Vec<InspectError>,
}

/// Picks the leaf for the ClientHello's server name (already checked to be
/// one of the target's by [`Inspector::serve`]).
#[derive(Debug)]
struct Leaves {
    ca: Arc<LocalCa>,
    names: Box<[Arc<str>]>,
}

impl ResolvesServerCert for Leaves {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.to_ascii_lowercase();
        if !self.names.iter().any(|n| **n == *name) {
            return None;
        }
        match self.ca.leaf(&name) {
            Ok(leaf) => Some(leaf),
            Err(e) => {
                tracing::error!(error = %e, "cannot make a leaf certificate");
                None
            }
        }
    }
}

/// How an inspected connection ended, for its record.
#[derive(Debug)]
pub struct Served {
    pub requests: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Who ended it: client, daemon (grant end, shutdown), or a refusal.
    pub ended_by: String,
    /// Why, when it was not a plain close.
    pub reason: Option<String>,
    pub code: Option<&'static str>,
    /// The server name the client asked for.
    pub server_name: Option<Arc<str>>,
}

/// What an inspected connection's requests share.
pub struct ConnContext {
    pub id: u64,
    pub dst: SocketAddr,
    pub proxy: Arc<super::Proxy>,
    pub inspector: Arc<Inspector>,
    pub keys: crate::access::index::Keys,
    /// The connection's record so far (user, process, target), the start of
    /// each request's record.
    pub template: crate::audit::Event,
    pub caller: crate::access::Refusal,
    pub server_name: Arc<str>,
    pub requests: AtomicU64,
    pub bytes_up: Arc<AtomicU64>,
    pub bytes_down: Arc<AtomicU64>,
    /// Cancelled when access ends: upgraded connections watch it.
    pub cut: CancellationToken,
    /// The connection's upgraded relays.
    pub relays: tokio_util::task::TaskTracker,
}

impl Inspector {
    /// Serves one inspected client connection until it ends or `cut`
    /// resolves (access ended, daemon stopping).
    pub async fn serve<C>(
        self: Arc<Self>,
        client: TcpStream,
        mut context: ConnContext,
        cut: Pin<&mut C>,
    ) -> Served
    where
        C: std::future::Future<Output = &'static str>,
    {
        let mut cut = cut;
        let refused = |code: &'static str, reason: String, name: Option<Arc<str>>| Served {
            requests: 0,
            bytes_up: 0,
            bytes_down: 0,
            ended_by: "daemon: refused".to_owned(),
            reason: Some(reason),
            code: Some(code),
            server_name: name,
        };
        let Some(tls) = self.tls.clone() else {
            context.server_name = Arc::clone(&self.names[0]);
            let context = Arc::new(context);
            return Arc::clone(&self)
                .http(TokioIo::new(client), context, cut)
                .await;
        };

        // 1. The ClientHello's server name.
        let accept = LazyConfigAcceptor::new(Acceptor::default(), client);
        let start = tokio::select! {
            biased;
            why = cut.as_mut() => return refused("cut", format!("{why} during the TLS handshake"), None),
            start = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept) => match start {
                Ok(Ok(start)) => start,
                Ok(Err(e)) => return refused("client_tls", format!("the client's TLS hello is not valid: {e}"), None),
                Err(_) => return refused("client_tls", "no TLS hello within 10 s".to_owned(), None),
            },
        };
        let name = match self.choose_name(start.client_hello().server_name()) {
            Ok(name) => name,
            Err(no) => return refused(no.code, no.reason, no.name),
        };

        // 2. TLS with our leaf.
        let handshake = tokio::select! {
            biased;
            why = cut.as_mut() => return refused("cut", format!("{why} during the TLS handshake"), Some(name)),
            done = tokio::time::timeout(HANDSHAKE_TIMEOUT, start.into_stream(tls)) => done,
        };
        let stream = match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                let (code, reason) = client_tls_failure(&e);
                return refused(code, reason, Some(name));
            }
            Err(_) => {
                return refused(
                    "client_tls",
                    "the TLS handshake did not finish within 10 s".to_owned(),
                    Some(name),
                )
            }
        };
        context.server_name = name;
        let context = Arc::new(context);
        Arc::clone(&self)
            .http(TokioIo::new(stream), context, cut)
            .await
    }

    /// 3 and 4: HTTP on `io` until it ends or is cut.
    async fn http<I, C>(
        self: Arc<Self>,
        io: I,
        context: Arc<ConnContext>,
        mut cut: Pin<&mut C>,
    ) -> Served
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
        C: std::future::Future<Output = &'static str>,
    {
        let builder = auto::Builder::new(TokioExecutor::new());
        let service = {
            let context = Arc::clone(&context);
            hyper::service::service_fn(move |request| {
                exchange::exchange(Arc::clone(&context), request)
            })
        };
        let mut conn = pin!(builder.serve_connection_with_upgrades(io, service));
        let (mut ended_by, reason, was_cut) = tokio::select! {
            biased;
            why = cut.as_mut() => {
                context.cut.cancel();
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(CUT_GRACE, conn.as_mut()).await;
                (format!("daemon: {why}"), None, true)
            }
            done = conn.as_mut() => match done {
                Ok(()) => ("client".to_owned(), None, false),
                Err(e) => ("client".to_owned(), Some(e.to_string()), false),
            },
        };
        // Upgraded connections (WebSocket) outlive hyper's: they are still
        // this connection, so its record and slot wait for them, and the
        // end of access cuts them.
        context.relays.close();
        if !was_cut && !context.relays.is_empty() {
            tokio::select! {
                biased;
                why = cut.as_mut() => {
                    context.cut.cancel();
                    ended_by = format!("daemon: {why}");
                }
                () = context.relays.wait() => {}
            }
        }
        context.cut.cancel();
        context.relays.wait().await;
        Served {
            requests: context.requests.load(std::sync::atomic::Ordering::Relaxed),
            bytes_up: context.bytes_up.load(std::sync::atomic::Ordering::Relaxed),
            bytes_down: context
                .bytes_down
                .load(std::sync::atomic::Ordering::Relaxed),
            ended_by,
            reason,
            code: None,
            server_name: Some(Arc::clone(&context.server_name)),
        }
    }

    pub fn target(&self) -> &Arc<str> {
        &self.target
    }

    /// Which of the target's names a ClientHello's server name (SNI) is,
    /// or why the connection is refused: no name, another name, or one the
    /// local CA does not cover.
    pub fn choose_name(&self, sni: Option<&str>) -> Result<Arc<str>, NameRefused> {
        choose_name(&self.target, &self.names, self.ca.as_deref(), sni)
    }

    pub fn target_id(&self) -> u32 {
        self.target_id
    }
}

/// Why a ClientHello's server name was refused: the code, the reason, and
/// the name when it was one of the target's.
#[derive(Debug)]
pub struct NameRefused {
    pub code: &'static str,
    pub reason: String,
    pub name: Option<Arc<str>>,
}

/// [`Inspector::choose_name`], on its parts (for the fuzz target).
pub fn choose_name(
    target: &str,
    names: &[Arc<str>],
    ca: Option<&LocalCa>,
    sni: Option<&str>,
) -> Result<Arc<str>, NameRefused> {
    let Some(sni) = sni else {
        return Err(NameRefused {
            code: "missing_sni",
            reason: format!(
                "the client sent no TLS server name; connect by name ({})",
                names.join(", ")
            ),
            name: None,
        });
    };
    let Some(name) = names.iter().find(|n| n.eq_ignore_ascii_case(sni)).cloned() else {
        return Err(NameRefused {
            code: "foreign_sni",
            reason: format!(
                "TLS server name `{}` is not one of {target}'s names ({})",
                sni.escape_default(),
                names.join(", ")
            ),
            name: None,
        });
    };
    if ca.is_some_and(|ca| !ca.permitted().covers(&name)) {
        return Err(NameRefused {
            code: "ca_constraints",
            reason: format!(
                "the local CA does not cover `{name}`; run `jitproxy ca rotate`, then `jitproxy ca install`"
            ),
            name: Some(name),
        });
    }
    Ok(name)
}

/// How long a client has for its TLS hello and handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A failed TLS handshake with the client: whether the client rejected our
/// certificate (it does not trust the local CA, or pins the API's own).
fn client_tls_failure(e: &std::io::Error) -> (&'static str, String) {
    use rustls::AlertDescription as A;
    let rustls_error = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::AlertReceived(
            alert @ (A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::CertificateExpired
            | A::AccessDenied),
        )) => (
            "client_rejected_certificate",
            format!(
                "the client rejected jitproxy's certificate ({alert:?}): it does not trust the local CA \
                 (run `jitproxy ca install`) or pins the API's own certificate; nothing was forwarded"
            ),
        ),
        _ => ("client_tls", format!("TLS with the client failed: {e}")),
    }
}
