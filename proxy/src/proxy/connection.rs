//! One redirected connection, top to bottom: origin, decision, durable
//! audit record, upstream connect ([`Proxy::admit`]); then forward. Every exit
//! finishes the record.
//!
//! Admission and forwarding are two futures, so what a connection holds
//! while it forwards (most of its life, often idle) is only what forwarding
//! needs, not admission's intermediate values; and what passes from one to
//! the other is boxed, so that neither future keeps a copy of it.

use std::{
    net::SocketAddr,
    pin::pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use tokio::net::TcpStream;

use tokio_util::sync::CancellationToken;

use super::{
    decision::{Allowed, DenyReason, Verdict},
    forward::{self, Bytes},
    http::{ConnContext, Inspector},
    origin::Origin,
    record::ConnectionRecord,
    Proxy,
};
use crate::{
    access::Refusal,
    host::socket::{connect_marked, reset},
};

/// A connection let through: what forwarding needs.
struct Admitted {
    client: TcpStream,
    upstream: Upstream,
    allowed: Allowed,
    record: ConnectionRecord,
}

/// Where an admitted connection goes on to.
enum Upstream {
    /// Passthrough: connected to the original destination.
    Connected(TcpStream),
    /// An inspect target: each request finds its own way upstream.
    Inspect(Arc<Inspector>),
}

impl Proxy {
    /// One connection, top to bottom, from `peer` to the proxy's `local`
    /// address (`None`: ask the socket).
    pub(super) async fn handle(
        self: &Arc<Self>,
        client: TcpStream,
        peer: SocketAddr,
        local: Option<SocketAddr>,
    ) {
        if let Some(admitted) = self.admit(client, peer, local).await {
            self.forward(admitted).await;
        }
    }

    /// Stages 1 to 4. `None` when the connection was refused or its
    /// upstream could not be reached: the client is then reset and the
    /// record finished.
    async fn admit(
        &self,
        client: TcpStream,
        peer: SocketAddr,
        local: Option<SocketAddr>,
    ) -> Option<Box<Admitted>> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut record = ConnectionRecord::start(id, peer, self.access.audit().clone());

        // 1. Origin: where it was going and who opened it.
        let Some(kernel_record) = local
            .or_else(|| client.local_addr().ok())
            .and_then(|local| self.origins.find(peer, local))
        else {
            reset(client);
            record.denied(&DenyReason::NoRecord);
            return None;
        };
        let origin = self.identities.origin(&kernel_record).await;
        let Some(entry) = self.policy.target(origin.target_id) else {
            let reason = DenyReason::UnknownTarget(origin.target_id);
            record.set_origin(origin, None);
            reset(client);
            record.denied(&reason);
            return None;
        };

        let target = &*entry.0;

        // 2. Decision.
        let verdict = self.policy.decide(&origin, &entry).await;
        let upstream_addr = origin.upstream_addr();
        let allowed = match verdict {
            Verdict::Allow(allowed) => allowed,
            Verdict::Deny(reason) => {
                reset(client);
                self.access.note_refusal(refusal(&origin, target, &reason));
                record.set_origin(origin, Some(Arc::clone(&entry.0)));
                record.denied(&reason);
                return None;
            }
        };
        record.set_origin(origin, Some(Arc::clone(&entry.0)));

        // 3. Audit: the "allowed" record is on disk before anything reaches
        // the target. No record, no access.
        if let Err(e) = record.allowed(&allowed).await {
            reset(client);
            let reason = DenyReason::AuditUnavailable(e.to_string());
            if let Some(origin) = record.origin() {
                self.access.note_refusal(refusal(origin, target, &reason));
            }
            record.denied(&reason);
            return None;
        }

        // An inspect target: TLS and HTTP instead of stage 4 and 5's bytes.
        if let Some(inspector) = self.inspectors.get(allowed.target) {
            let inspector = match inspector {
                Ok(inspector) => inspector,
                Err(why) => {
                    reset(client);
                    let reason = DenyReason::InspectUnavailable(why);
                    if let Some(origin) = record.origin() {
                        self.access.note_refusal(refusal(origin, target, &reason));
                    }
                    record.denied(&reason);
                    return None;
                }
            };
            return Some(Box::new(Admitted {
                client,
                upstream: Upstream::Inspect(inspector),
                allowed,
                record,
            }));
        }

        // 4. Connect to the original destination.
        // From a socket carrying the daemon's mark, which the kernel
        // programs let through.
        let upstream = match connect_marked(
            upstream_addr,
            self.settings.upstream_mark,
            self.settings.connect_timeout,
        )
        .await
        {
            Ok(upstream) => upstream,
            Err(e) => {
                reset(client);
                record.failed(&format!("cannot reach {upstream_addr}: {e}"));
                return None;
            }
        };
        record.set_upstream_local(upstream.local_addr().ok());
        Some(Box::new(Admitted {
            client,
            upstream: Upstream::Connected(upstream),
            allowed,
            record,
        }))
    }

    /// Stage 5: forward until either side is done, the grant ends, or the
    /// daemon stops; then finish the record.
    async fn forward(self: &Arc<Self>, mut admitted: Box<Admitted>) {
        let _ = admitted.client.set_nodelay(true);
        let bytes = Bytes::default();
        let shutdown = pin!(self.shutdown.cancelled());
        // An inspected connection's requests need the keys too.
        let keys = if matches!(admitted.upstream, Upstream::Inspect(_)) {
            admitted.allowed.keys.clone()
        } else {
            std::mem::take(&mut admitted.allowed.keys)
        };
        let access_ends = pin!(self.policy.access_ends(keys, admitted.allowed.target));
        let cut = pin!(async {
            tokio::select! {
                () = shutdown => "daemon shutdown",
                why = access_ends => why,
            }
        });
        let Upstream::Connected(upstream) = &admitted.upstream else {
            // Boxed: an inspected connection's TLS and HTTP state is large,
            // and a passthrough connection's task must not carry room for it.
            return Box::pin(self.inspect(admitted, cut)).await;
        };
        let ended = forward::forward(&admitted.client, upstream, &bytes, cut).await;
        let Admitted {
            client,
            upstream,
            allowed,
            record,
        } = *admitted;
        let Upstream::Connected(upstream) = upstream else {
            unreachable!("matched above")
        };
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
}

impl Proxy {
    /// Stage 5 of an inspect target: TLS and HTTP ([`Inspector::serve`]).
    async fn inspect<C>(self: &Arc<Self>, admitted: Box<Admitted>, cut: std::pin::Pin<&mut C>)
    where
        C: std::future::Future<Output = &'static str>,
    {
        let Admitted {
            client,
            upstream,
            allowed,
            record,
        } = *admitted;
        let Upstream::Inspect(inspector) = upstream else {
            return;
        };
        let Some(origin) = record.origin() else {
            return;
        };
        let context = ConnContext {
            id: record.id(),
            dst: origin.upstream_addr(),
            proxy: Arc::clone(self),
            inspector: Arc::clone(&inspector),
            keys: allowed.keys.clone(),
            template: record.template(),
            caller: refusal(origin, inspector.target(), &DenyReason::NoRecord),
            server_name: Arc::clone(inspector.target()),
            requests: AtomicU64::new(0),
            bytes_up: Arc::default(),
            bytes_down: Arc::default(),
            cut: CancellationToken::new(),
            relays: tokio_util::task::TaskTracker::new(),
        };
        let served = inspector.serve(client, context, cut).await;
        drop(allowed.slot);
        record.served(&served);
    }
}

/// What `jitproxy why` tells the caller about a refusal.
fn refusal(origin: &Origin, target: &str, reason: &DenyReason) -> Refusal {
    let caller = &origin.caller;
    Refusal {
        at: jiff::Timestamp::now(),
        uid: caller.principal_uid(),
        user: caller.user.as_deref().map(str::to_owned),
        target: target.to_owned(),
        destination: origin.dst.to_string(),
        process: format!("{} (pid {})", caller.comm, caller.pid),
        reason: reason.to_string(),
        code: reason.code().to_owned(),
    }
}
