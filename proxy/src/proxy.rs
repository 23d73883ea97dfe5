//! The proxy server: accepts redirected connections and walks each through
//! its stages, in order, in [`Proxy::handle`]:
//!
//! 1. origin: the kernel's record of where it was going and who opened it;
//! 2. decision: a [`Verdict`] with its reason (grant, limits);
//! 3. audit: the "allowed" record is on disk before anything reaches the target;
//! 4. connect to the original destination from a marked socket;
//! 5. forward until either side ends, the grant ends, or the daemon stops.
//!
//! Every exit path finishes the connection's record (denied, failed, closed).
//!
//! The server takes ready listeners and a shutdown token, so tests can give
//! their own; a semaphore bounds live connections and accept errors back off.

use std::{
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use proxy_common::ConnectRecord;
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    sync::Semaphore,
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

use crate::{
    access::Access,
    audit::ConnectionRecord,
    config::Config,
    control::proto::{ts, Refusal},
    decision::{DenyReason, Policy, Verdict},
    forward::{self, Bytes},
    grants::now_ms,
    identity::{Identities, Origin},
};

/// Where the proxy finds the kernel's record of a redirected connection.
/// The daemon uses the eBPF maps; unprivileged tests give a fake.
pub trait OriginSource: Send + Sync + 'static {
    /// The record for the connection whose client end is `client` and which
    /// arrived on the proxy's `local` address.
    fn find(&self, client: SocketAddr, local: SocketAddr) -> Option<ConnectRecord>;
}

impl OriginSource for crate::ebpf::Kernel {
    fn find(&self, client: SocketAddr, local: SocketAddr) -> Option<ConnectRecord> {
        self.find_origin(client, local)
    }
}

/// What the proxy needs from the config.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub connect_timeout: Duration,
    pub max_connections: usize,
    pub upstream_mark: Option<u32>,
}

impl ProxySettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            connect_timeout: config.connect_timeout,
            max_connections: config.max_connections,
            upstream_mark: Some(config.upstream_mark),
        }
    }
}

/// The proxy: shared by every connection task.
pub struct Proxy {
    origins: Arc<dyn OriginSource>,
    identities: Identities,
    policy: Policy,
    access: Arc<Access>,
    settings: ProxySettings,
    next_id: AtomicU64,
    shutdown: CancellationToken,
}

impl Proxy {
    pub fn new(
        origins: Arc<dyn OriginSource>,
        policy: Policy,
        access: Arc<Access>,
        settings: ProxySettings,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            origins,
            identities: Identities::new(),
            policy,
            access,
            settings,
            next_id: AtomicU64::new(1),
            shutdown,
        })
    }

    /// Accepts on every listener until shutdown, then cuts live connections
    /// and waits for their records to be finished.
    pub async fn serve(self: Arc<Self>, listeners: Vec<TcpListener>) {
        // Capped: tokio's semaphore refuses more permits (the config refuses
        // far fewer already).
        let limit = Arc::new(Semaphore::new(
            self.settings.max_connections.min(Semaphore::MAX_PERMITS),
        ));
        let mut acceptors = JoinSet::new();
        for listener in listeners {
            acceptors.spawn(Arc::clone(&self).accept_loop(listener, Arc::clone(&limit)));
        }
        while acceptors.join_next().await.is_some() {}
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener, limit: Arc<Semaphore>) {
        let mut connections = JoinSet::new();
        let mut backoff = Duration::from_millis(5);
        loop {
            let permit = tokio::select! {
                permit = Arc::clone(&limit).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                () = self.shutdown.cancelled() => break,
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = self.shutdown.cancelled() => break,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(5);
                    let proxy = Arc::clone(&self);
                    connections.spawn(async move {
                        proxy.handle(stream, peer).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    // EMFILE and friends: wait, then try again; the
                    // connection stays in the accept queue meanwhile.
                    tracing::warn!(error = %e, ?backoff, "accept failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
            // Reap finished tasks so the set does not grow.
            while connections.try_join_next().is_some() {}
        }
        // Shutdown: live connections see the token and finish their records.
        while connections.join_next().await.is_some() {}
    }

    /// One connection, top to bottom.
    async fn handle(&self, client: TcpStream, peer: SocketAddr) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut record = ConnectionRecord::start(id, peer, self.access.audit().clone());

        // 1. Origin: where it was going and who opened it.
        let Some(kernel_record) = client
            .local_addr()
            .ok()
            .and_then(|local| self.origins.find(peer, local))
        else {
            reset(client);
            record.denied(&DenyReason::NoRecord);
            return;
        };
        let origin = self.identities.origin(&kernel_record).await;
        let Some(target) = self.policy.target_name(origin.target_id) else {
            let reason = DenyReason::UnknownTarget(origin.target_id);
            record.set_origin(origin, "");
            reset(client);
            record.denied(&reason);
            return;
        };

        // 2. Decision.
        let verdict = self.policy.decide(&origin).await;
        let upstream_addr = origin.upstream_addr();
        let allowed = match verdict {
            Verdict::Allow(allowed) => allowed,
            Verdict::Deny(reason) => {
                reset(client);
                self.access.note_refusal(refusal(&origin, target, &reason));
                record.set_origin(origin, target);
                record.denied(&reason);
                return;
            }
        };
        record.set_origin(origin, target);

        // 3. Audit: the "allowed" record is on disk before anything reaches
        // the target. No record, no access.
        if let Err(e) = record.allowed(&allowed).await {
            reset(client);
            let reason = DenyReason::AuditUnavailable(e.to_string());
            if let Some(origin) = record.origin() {
                self.access.note_refusal(refusal(origin, target, &reason));
            }
            record.denied(&reason);
            return;
        }

        // 4. Connect to the original destination.
        let upstream = match self.connect_upstream(upstream_addr).await {
            Ok(upstream) => upstream,
            Err(e) => {
                reset(client);
                record.failed(&format!("cannot reach {upstream_addr}: {e}"));
                return;
            }
        };
        record.set_upstream_local(upstream.local_addr().ok());

        // 5. Forward until either side is done, the grant ends, or the
        // daemon stops.
        let _ = client.set_nodelay(true);
        let bytes = Bytes::default();
        let shutdown = self.shutdown.clone();
        let access_ends = self
            .policy
            .access_ends(allowed.keys.clone(), allowed.target);
        let ended = forward::forward(&client, &upstream, &bytes, async move {
            tokio::select! {
                () = shutdown.cancelled() => "daemon shutdown",
                why = access_ends => why,
            }
        })
        .await;
        drop(allowed.slot);
        if matches!(
            ended,
            forward::Ended::Cut(_)
                | forward::Ended::ClientError(_)
                | forward::Ended::UpstreamError(_)
        ) {
            reset(client);
            reset(upstream);
        }
        record.closed(&bytes, &ended);
    }

    /// Connects to the original destination from a socket carrying the
    /// daemon's mark, which the kernel programs let through.
    async fn connect_upstream(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(mark) = self.settings.upstream_mark {
            nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Mark, &mark)
                .map_err(io::Error::from)?;
        }
        socket.set_nodelay(true)?;
        tokio::time::timeout(self.settings.connect_timeout, socket.connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
    }
}

/// What `jitproxy why` tells the caller about a refusal.
fn refusal(origin: &Origin, target: &str, reason: &DenyReason) -> Refusal {
    let caller = &origin.caller;
    Refusal {
        at: ts(now_ms()),
        uid: caller.principal_uid(),
        user: caller.user.clone(),
        target: target.to_owned(),
        destination: origin.dst.to_string(),
        process: format!("{} (pid {})", caller.comm, caller.pid),
        reason: reason.to_string(),
        code: reason.code().to_owned(),
    }
}

/// Closes a socket with a reset (SO_LINGER 0), so the peer sees the refusal
/// at once instead of a clean end of stream.
fn reset(stream: TcpStream) {
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::Linger, &linger);
    drop(stream);
}
