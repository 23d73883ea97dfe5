//! The data path. [`Proxy::serve`] accepts redirected connections (a
//! semaphore bounds live ones, accept errors back off, shutdown drains) and
//! [`connection`] walks each one through its stages, in order:
//!
//! 1. [`origin`]: the kernel's record of where it was going and who opened it;
//! 2. [`decision`]: a [`Verdict`] with its reason (grant, [`limits`]);
//! 3. [`record`]: the "allowed" record is on disk before anything reaches the
//!    target;
//! 4. connect to the original destination from a marked socket;
//! 5. [`forward`] until either side ends, the grant ends, or the daemon stops.
//!
//! Every exit path finishes the connection's record (denied, failed, closed).
//! The server takes ready listeners and a shutdown token, so tests can give
//! their own. An inspect target's connections take [`http`] instead of
//! stage 4 and 5: TLS terminated with the local CA, and each HTTP request
//! decided, recorded and sent on with the target's credential.

mod connection;
pub mod decision;
pub mod forward;
pub mod http;
pub mod limits;
pub mod origin;
pub mod record;

use std::{
    sync::{atomic::AtomicU64, Arc},
    time::Duration,
};

use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use decision::{Policy, Verdict};
pub use origin::OriginSource;

use crate::{access::Access, config::Config, host::users::Users};
use origin::Identities;

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
    /// Inspect targets' TLS, upstreams and credentials, by target number.
    inspectors: http::Inspectors,
    next_id: AtomicU64,
    shutdown: CancellationToken,
}

impl Proxy {
    pub fn new(
        origins: Arc<dyn OriginSource>,
        policy: Policy,
        access: Arc<Access>,
        users: Users,
        settings: ProxySettings,
        inspectors: http::Inspectors,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            origins,
            identities: Identities::new(users),
            policy,
            access,
            settings,
            inspectors,
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
        // A listener on one address accepts every connection on exactly
        // that address: no need to ask each connection (getsockname).
        let local = listener
            .local_addr()
            .ok()
            .filter(|addr| !addr.ip().is_unspecified());
        // Counts live connections without a per-connection entry (a JoinSet
        // keeps one per task).
        let connections = TaskTracker::new();
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
                    // Detached: the tracker waits for it at shutdown.
                    drop(connections.spawn(async move {
                        proxy.handle(stream, peer, local).await;
                        drop(permit);
                    }));
                }
                Err(e) => {
                    // EMFILE and friends: wait, then try again; the
                    // connection stays in the accept queue meanwhile.
                    tracing::warn!(error = %e, ?backoff, "accept failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
        // Shutdown: live connections see the token and finish their records.
        connections.close();
        connections.wait().await;
    }
}
