//! One redirected connection, top to bottom: origin, decision, durable
//! audit record, upstream connect, forward. Every exit finishes the record.

use std::{net::SocketAddr, pin::pin, sync::atomic::Ordering};

use tokio::net::TcpStream;

use super::{
    decision::{DenyReason, Verdict},
    forward::{self, Bytes},
    origin::Origin,
    record::ConnectionRecord,
    Proxy,
};
use crate::{
    access::Refusal,
    host::socket::{connect_marked, reset},
};

impl Proxy {
    /// One connection, top to bottom.
    pub(super) async fn handle(&self, client: TcpStream, peer: SocketAddr) {
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
        let Some(entry) = self.policy.target(origin.target_id) else {
            let reason = DenyReason::UnknownTarget(origin.target_id);
            record.set_origin(origin, "");
            reset(client);
            record.denied(&reason);
            return;
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
                return;
            }
        };
        record.set_upstream_local(upstream.local_addr().ok());

        // 5. Forward until either side is done, the grant ends, or the
        // daemon stops.
        let _ = client.set_nodelay(true);
        let bytes = Bytes::default();
        let shutdown = pin!(self.shutdown.cancelled());
        let access_ends = pin!(self
            .policy
            .access_ends(allowed.keys.clone(), allowed.target));
        let cut = pin!(async {
            tokio::select! {
                () = shutdown => "daemon shutdown",
                why = access_ends => why,
            }
        });
        let ended = forward::forward(&client, &upstream, &bytes, cut).await;
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

/// What `jitproxy why` tells the caller about a refusal.
fn refusal(origin: &Origin, target: &str, reason: &DenyReason) -> Refusal {
    let caller = &origin.caller;
    Refusal {
        at: jiff::Timestamp::now(),
        uid: caller.principal_uid(),
        user: caller.user.clone(),
        target: target.to_owned(),
        destination: origin.dst.to_string(),
        process: format!("{} (pid {})", caller.comm, caller.pid),
        reason: reason.to_string(),
        code: reason.code().to_owned(),
    }
}
