//! What `jitproxy status` shows, computed on request from the running parts.

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
};

use super::targets::Resolved;
use crate::{
    access::Access,
    config::SharedConfig,
    control::{
        proto::{
            AuditStatus, KernelCounters, LiveConnections, NotifyStatus, StatusView, TargetStatus,
        },
        server::StatusFn,
    },
    host::users::Users,
    kernel::Kernel,
    proxy::Policy,
    time::{timestamp, UnixMs},
};

/// The parts the status is read from.
pub(super) struct Status {
    pub(super) config: SharedConfig,
    pub(super) cgroup: PathBuf,
    pub(super) kernel: Arc<Kernel>,
    pub(super) resolved: Arc<RwLock<Resolved>>,
    pub(super) policy: Policy,
    pub(super) access: Arc<Access>,
    pub(super) users: Users,
    pub(super) started_at: UnixMs,
}

impl Status {
    /// The status as the control API answers it.
    pub(super) fn into_fn(self) -> StatusFn {
        let status = Arc::new(self);
        Arc::new(move || {
            let status = Arc::clone(&status);
            Box::pin(async move { status.view().await })
        })
    }

    async fn view(&self) -> StatusView {
        let config = self.config.load_full();
        let targets = {
            let resolved = self.resolved.read().unwrap_or_else(|p| p.into_inner());
            config
                .targets
                .iter()
                .enumerate()
                .filter(|(_, t)| !t.retired)
                .map(|(id, t)| TargetStatus {
                    name: t.name.clone(),
                    hosts: t.hosts.iter().map(ToString::to_string).collect(),
                    addresses: resolved
                        .addresses(u32::try_from(id).unwrap_or(u32::MAX))
                        .iter()
                        .map(|(port, net)| format!("{net} {port}"))
                        .collect(),
                })
                .collect()
        };
        let mut live = Vec::new();
        for (uid, target, connections) in self.policy.live() {
            live.push(LiveConnections {
                uid,
                user: self.users.name(uid).await,
                target: config
                    .target(target)
                    .map(|t| t.name.clone())
                    .unwrap_or_default(),
                connections,
            });
        }
        let audit = self.access.audit();
        let counters = self.kernel.counters();
        let (records, tuples) = self.kernel.record_counts();
        StatusView {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            cgroup: self.cgroup.display().to_string(),
            pins: self.kernel.pins().root().display().to_string(),
            listen_port: config.listen_port,
            started_at: timestamp(self.started_at),
            targets,
            live,
            open_grants: self.access.open_grants(),
            audit: AuditStatus {
                dir: config.audit_dir().display().to_string(),
                failure: audit.failure(),
                records_written: audit.written(),
                records_dropped: audit.dropped(),
                syslog_dropped: audit.syslog_dropped(),
                queued: audit.queued(),
            },
            notify: NotifyStatus {
                webhooks: config.notify.iter().map(|n| n.name.clone()).collect(),
                undelivered: self.access.outbox_undelivered().await.unwrap_or(0),
            },
            kernel: KernelCounters {
                redirected: counters.redirected,
                udp_refused: counters.udp_refused,
                map_full: counters.map_full,
                exempt: counters.exempt,
                uid_full: counters.uid_full,
                unspecified: counters.unspecified,
                mptcp_refused: counters.mptcp_refused,
                records: records as u64,
                tuples: tuples as u64,
                records_by_uid: self.kernel.records_by_uid(),
                max_records_per_uid: config.max_records_per_uid,
            },
        }
    }
}
