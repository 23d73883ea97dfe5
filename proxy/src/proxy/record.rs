//! The audit record of each connection: created when the connection is
//! accepted, completed stage by stage, and finished on every exit path
//! (denied, failed, closed). A record dropped without being finished is
//! written as an internal error, so no path can leave a connection without
//! its record.
//!
//! "allowed" is written durably (fsync) before the connection is forwarded.
//! The daemon log's line of each record is derived from the same event by the
//! audit log.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    decision::{Allowed, DenyReason},
    forward::{Bytes, Ended},
    origin::Origin,
};
use crate::{
    audit::{AuditError, AuditLog, Event, EventKind, ProcessInfo, UserInfo},
    time,
};

/// One connection's record, from accept to close.
#[derive(Debug)]
pub struct ConnectionRecord {
    id: u64,
    client: SocketAddr,
    started: Instant,
    origin: Option<Origin>,
    target: Option<Arc<str>>,
    finished: bool,
    upstream_local: Option<SocketAddr>,
    audit: AuditLog,
}

impl ConnectionRecord {
    /// Starts the record of connection `id` from `client`.
    pub fn start(id: u64, client: SocketAddr, audit: AuditLog) -> Self {
        Self {
            id,
            client,
            started: Instant::now(),
            origin: None,
            target: None,
            finished: false,
            upstream_local: None,
            audit,
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Where the connection was going and who opened it, once known.
    pub fn origin(&self) -> Option<&Origin> {
        self.origin.as_ref()
    }

    /// The proxy's end of the upstream connection (the address the target sees).
    pub fn set_upstream_local(&mut self, local: Option<SocketAddr>) {
        self.upstream_local = local;
    }

    /// Adds where the connection was going and who opened it, and the
    /// target's name when it has one.
    pub fn set_origin(&mut self, origin: Origin, target: Option<Arc<str>>) {
        self.origin = Some(origin);
        self.target = target;
    }

    /// The decision let the connection through: writes the "allowed" record;
    /// the future resolves once it is on disk. Forward only after it
    /// resolves to `Ok`.
    pub fn allowed(
        &self,
        allowed: &Allowed,
    ) -> impl std::future::Future<Output = Result<u64, AuditError>> + Send + 'static {
        let mut event = self.event(EventKind::ConnectionAllowed);
        event.grant_id = Some(allowed.cover.grant_id);
        event.reason = Some(allowed.cover.reason.to_string());
        event.detail = Some(serde_json::json!({
            "matched_uid": allowed.keys.uid,
            "access_until": time::timestamp(allowed.cover.until),
        }));
        self.audit.record_durable(event)
    }

    /// Refused: the client connection is reset and nothing reaches the target.
    pub fn denied(mut self, reason: &DenyReason) {
        let limited = matches!(
            reason,
            DenyReason::RateLimited | DenyReason::TooManyConnections(_)
        );
        let mut event = self.event(if limited {
            EventKind::ConnectionRateLimited
        } else {
            EventKind::ConnectionDenied
        });
        event.reason = Some(reason.to_string());
        event.code = Some(reason.code().to_owned());
        self.finish(event);
    }

    /// Allowed, but the upstream could not be reached.
    pub fn failed(mut self, error: &str) {
        let mut event = self.event(EventKind::ConnectionFailed);
        event.reason = Some(error.to_owned());
        event.code = Some("upstream_unreachable".to_owned());
        self.finish(event);
    }

    /// A forwarded connection ended.
    pub fn closed(mut self, bytes: &Bytes, ended: &Ended) {
        let (ended_by, error) = match ended {
            Ended::Closed => ("client".to_owned(), None),
            Ended::ClientError(e) => ("client".to_owned(), Some(e.to_string())),
            Ended::UpstreamError(e) => ("upstream".to_owned(), Some(e.to_string())),
            Ended::Cut(why) => (format!("daemon: {why}"), None),
        };
        let mut event = self.event(EventKind::ConnectionClosed);
        event.bytes_up = Some(bytes.up());
        event.bytes_down = Some(bytes.down());
        event.duration_ms = Some(duration_ms(self.started.elapsed()));
        event.ended_by = Some(ended_by);
        event.reason = error;
        let upstream_local = self
            .upstream_local
            .map(|a| a.to_string())
            .unwrap_or_default();
        event.detail = Some(serde_json::json!({ "upstream_local": upstream_local }));
        self.finish(event);
    }

    /// The start of each of an inspected connection's request records:
    /// this connection's user, process, destination and target.
    pub fn template(&self) -> Event {
        self.event(EventKind::HttpAllowed)
    }

    /// An inspected connection ended.
    pub fn served(mut self, served: &crate::proxy::http::Served) {
        let mut event = self.event(EventKind::ConnectionClosed);
        event.bytes_up = Some(served.bytes_up);
        event.bytes_down = Some(served.bytes_down);
        event.duration_ms = Some(duration_ms(self.started.elapsed()));
        event.ended_by = Some(served.ended_by.clone());
        event.reason = served.reason.clone();
        event.code = served.code.map(str::to_owned);
        event.detail = Some(serde_json::json!({
            "mode": "inspect",
            "requests": served.requests,
            "server_name": served.server_name.as_deref(),
        }));
        self.finish(event);
    }

    /// Writes the last record of this connection.
    fn finish(&mut self, event: Event) {
        self.finished = true;
        self.audit.record(event);
    }

    /// The audit event of this connection so far.
    fn event(&self, kind: EventKind) -> Event {
        let mut event = Event::new(kind);
        event.conn = Some(self.id);
        event.client = Some(self.client.to_string());
        if let Some(origin) = &self.origin {
            let c = &origin.caller;
            event.user = Some(UserInfo {
                name: c.user.as_deref().map(str::to_owned),
                uid: c.uid,
                login_uid: c.login_uid,
            });
            event.process = Some(ProcessInfo {
                pid: c.pid,
                tid: c.tid,
                comm: c.comm.to_string(),
                exe: c.exe.as_ref().map(|p| p.display().to_string()),
                exe_file: c.exe_file.map(|f| f.to_string()),
                exe_unverified: c.exe_unverified.as_ref().map(|p| p.display().to_string()),
                cgroup: c.cgroup.as_deref().map(str::to_owned),
                gid: c.gid,
            });
            event.dst = Some(origin.dst.to_string());
            event.target = self.target.as_deref().map(str::to_owned);
        }
        event
    }
}

impl Drop for ConnectionRecord {
    fn drop(&mut self) {
        if !self.finished {
            let mut event = self.event(EventKind::ConnectionClosed);
            event.ended_by = Some("internal error: record not finished".to_owned());
            self.finish(event);
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
