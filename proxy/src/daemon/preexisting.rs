//! At start, end what is already open: connections from the watched cgroup
//! to targets that were opened before the programs were attached never
//! passed the redirect, so they are destroyed (TCP aborted, connected UDP
//! disconnected) and recorded. A grant is needed from the moment the daemon
//! runs.

use std::path::Path;

use super::targets::Resolved;
use crate::{
    audit::{AuditLog, Event, EventKind, UserInfo},
    config::Config,
    host::{
        cgroup,
        sockdiag::{self, Socket, IPPROTO_TCP, IPPROTO_UDP},
        users,
    },
};

/// Ends every connection from `cgroup` (and below) to a target in
/// `resolved`; returns how many it ended. Failures are logged and recorded,
/// never fatal: the programs already hold every new connection.
pub(super) fn end(cgroup: &Path, config: &Config, resolved: &Resolved, audit: &AuditLog) -> usize {
    let watched = match cgroup::ids_under(cgroup) {
        Ok(ids) => ids,
        Err(e) => {
            tracing::error!(error = %e, "cannot list the watched cgroups; connections opened before start are not ended");
            return 0;
        }
    };
    let mut ended = 0;
    for protocol in [IPPROTO_TCP, IPPROTO_UDP] {
        let sockets = match sockdiag::list(protocol) {
            Ok(sockets) => sockets,
            Err(e) => {
                tracing::error!(error = %e, protocol, "cannot list sockets (sock_diag); connections opened before start are not ended");
                continue;
            }
        };
        for socket in sockets {
            let ours = socket.mark == Some(config.upstream_mark);
            let watched = socket.cgroup_id.is_some_and(|id| watched.contains(&id));
            if ours || !watched || !socket.is_connection() {
                continue;
            }
            let Some(target) = resolved.target_of(socket.dst) else {
                continue;
            };
            let result = sockdiag::destroy(&socket);
            ended += usize::from(result.is_ok());
            audit.record(event(&socket, config, target, result.err()));
        }
    }
    ended
}

fn event(socket: &Socket, config: &Config, target: u32, error: Option<std::io::Error>) -> Event {
    let mut event = Event::new(EventKind::ConnectionDestroyed);
    event.user = Some(UserInfo {
        name: users::user_name(socket.uid),
        uid: socket.uid,
        login_uid: None,
    });
    event.dst = Some(socket.dst.to_string());
    event.client = Some(socket.src.to_string());
    event.target = config.target(target).map(|t| t.name.clone());
    match error {
        None => {
            event.reason = Some(
                "opened before jitproxy watched this cgroup, so it never passed the redirect; \
                 ended at start"
                    .to_owned(),
            );
            event.code = Some("opened_before_start".to_owned());
        }
        Some(e) => {
            event.reason = Some(format!("opened before start, and could not be ended: {e}"));
            event.code = Some("destroy_failed".to_owned());
        }
    }
    event.detail = Some(serde_json::json!({
        "protocol": if socket.protocol == IPPROTO_TCP { "tcp" } else { "udp" },
        "inode": socket.inode,
    }));
    event
}
