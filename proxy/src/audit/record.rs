//! The record of each connection: created when the connection is accepted,
//! completed stage by stage, and finished on every exit path (denied, failed,
//! closed). A record dropped without being finished is reported as an internal
//! error, so no path can leave a connection without its record.
//!
//! Each record goes to the audit log ([`AuditLog`]); "allowed" is written
//! durably (fsync) before the connection is forwarded. Each is also logged as
//! a structured `tracing` event (target `jitproxy::audit`) for operators.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use super::{
    kind,
    log::{AuditError, AuditLog},
    Event, ProcessInfo, UserInfo,
};
use crate::{
    decision::{Allowed, DenyReason},
    forward::{Bytes, Ended},
    identity::Origin,
};

/// One connection's record, from accept to close.
#[derive(Debug)]
pub struct ConnectionRecord {
    id: u64,
    client: SocketAddr,
    started: Instant,
    origin: Option<Origin>,
    target: String,
    finished: bool,
    upstream_local: Option<SocketAddr>,
    audit: AuditLog,
}

/// Who or what ended a forwarded connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndedBy {
    Client,
    Upstream,
    /// Cut by the daemon (shutdown, or later a grant's end).
    Daemon(&'static str),
}

impl ConnectionRecord {
    /// Starts the record of connection `id` from `client`.
    pub fn start(id: u64, client: SocketAddr, audit: AuditLog) -> Self {
        Self {
            id,
            client,
            started: Instant::now(),
            origin: None,
            target: String::new(),
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

    /// Adds where the connection was going and who opened it.
    pub fn set_origin(&mut self, origin: Origin, target: &str) {
        self.origin = Some(origin);
        target.clone_into(&mut self.target);
    }

    /// The decision let the connection through: writes the "allowed" record
    /// and waits until it is on disk. Forward only after this returns `Ok`.
    pub async fn allowed(&self, allowed: &Allowed) -> Result<u64, AuditError> {
        let mut event = self.event(kind::CONNECTION_ALLOWED);
        event.grant_id = Some(allowed.cover.grant_id);
        event.reason = Some(allowed.cover.reason.to_string());
        event.detail = Some(serde_json::json!({
            "matched_uid": allowed.keys.uid,
            "access_until": crate::control::proto::ts(allowed.cover.until),
        }));
        let seq = self.audit.record_durable(event).await?;
        let cover = &allowed.cover;
        self.emit("connection.allowed", &cover.reason, |r| {
            tracing::info!(
                target: "jitproxy::audit",
                event = "connection.allowed",
                conn = r.conn, client = %r.client, dst = %r.dst, target_name = r.target,
                uid = r.uid, gid = r.gid, pid = r.pid, tid = r.tid, comm = r.comm,
                user = r.user, login_uid = r.login_uid, exe = r.exe, cgroup = r.cgroup,
                matched_uid = allowed.keys.uid, grant_id = cover.grant_id, reason = r.reason,
                until = cover.until, audit_seq = seq,
                "allowed {} -> {} ({}) by grant {}", r.who, r.dst, r.target, cover.grant_id
            );
        });
        Ok(seq)
    }

    /// Refused: the client connection is reset and nothing reaches the target.
    pub fn denied(mut self, reason: &DenyReason) {
        self.finished = true;
        let limited = matches!(
            reason,
            DenyReason::RateLimited | DenyReason::TooManyConnections(_)
        );
        let mut event = self.event(if limited {
            kind::CONNECTION_RATE_LIMITED
        } else {
            kind::CONNECTION_DENIED
        });
        event.reason = Some(reason.to_string());
        event.code = Some(reason.code().to_owned());
        self.audit.record(event);
        self.emit("connection.denied", &reason.to_string(), |r| {
            tracing::warn!(
                target: "jitproxy::audit",
                event = "connection.denied",
                conn = r.conn, client = %r.client, dst = %r.dst, target_name = r.target,
                uid = r.uid, gid = r.gid, pid = r.pid, tid = r.tid, comm = r.comm,
                user = r.user, login_uid = r.login_uid, exe = r.exe, cgroup = r.cgroup,
                reason = r.reason, code = reason.code(),
                "denied {} -> {}: {}", r.who, r.dst, r.reason
            );
        });
    }

    /// Allowed, but the upstream could not be reached.
    pub fn failed(mut self, error: &str) {
        self.finished = true;
        let mut event = self.event(kind::CONNECTION_FAILED);
        event.reason = Some(error.to_owned());
        event.code = Some("upstream_unreachable".to_owned());
        self.audit.record(event);
        self.emit("connection.failed", error, |r| {
            tracing::warn!(
                target: "jitproxy::audit",
                event = "connection.failed",
                conn = r.conn, client = %r.client, dst = %r.dst, target_name = r.target,
                uid = r.uid, pid = r.pid, comm = r.comm, user = r.user,
                reason = r.reason,
                "failed {} -> {}: {}", r.who, r.dst, r.reason
            );
        });
    }

    /// A forwarded connection ended.
    pub fn closed(mut self, bytes: &Bytes, ended: &Ended) {
        self.finished = true;
        let (ended_by, detail) = match ended {
            Ended::Closed => (EndedBy::Client, String::new()),
            Ended::ClientError(e) => (EndedBy::Client, e.to_string()),
            Ended::UpstreamError(e) => (EndedBy::Upstream, e.to_string()),
            Ended::Cut(why) => (EndedBy::Daemon(why), String::new()),
        };
        let ended_by = match ended_by {
            EndedBy::Client => "client".to_owned(),
            EndedBy::Upstream => "upstream".to_owned(),
            EndedBy::Daemon(why) => format!("daemon: {why}"),
        };
        let duration = self.started.elapsed();
        let mut event = self.event(kind::CONNECTION_CLOSED);
        event.bytes_up = Some(bytes.up());
        event.bytes_down = Some(bytes.down());
        event.duration_ms = Some(duration_ms(duration));
        event.ended_by = Some(ended_by.clone());
        if !detail.is_empty() {
            event.reason = Some(detail.clone());
        }
        let upstream_local = self
            .upstream_local
            .map(|a| a.to_string())
            .unwrap_or_default();
        event.detail = Some(serde_json::json!({ "upstream_local": upstream_local }));
        self.audit.record(event);
        self.emit("connection.closed", &detail, |r| {
            tracing::info!(
                target: "jitproxy::audit",
                event = "connection.closed",
                conn = r.conn, client = %r.client, dst = %r.dst, target_name = r.target,
                uid = r.uid, pid = r.pid, comm = r.comm, user = r.user,
                bytes_up = bytes.up(), bytes_down = bytes.down(),
                duration_ms = duration_ms(duration), ended_by = ended_by, error = r.reason,
                upstream_local = upstream_local,
                "closed {} -> {}: {} bytes up, {} down, ended by {}",
                r.who, r.dst, bytes.up(), bytes.down(), ended_by
            );
        });
    }

    /// The audit event of this connection so far.
    fn event(&self, kind: &str) -> Event {
        let mut event = Event::new(kind);
        event.conn = Some(self.id);
        event.client = Some(self.client.to_string());
        if let Some(origin) = &self.origin {
            let c = &origin.caller;
            event.user = Some(UserInfo {
                name: c.user.clone(),
                uid: c.uid,
                login_uid: c.login_uid,
            });
            event.process = Some(ProcessInfo {
                pid: c.pid,
                tid: c.tid,
                comm: c.comm.clone(),
                exe: c.exe.as_ref().map(|p| p.display().to_string()),
                cgroup: c.cgroup.clone(),
                gid: c.gid,
            });
            event.dst = Some(origin.dst.to_string());
            event.target = (!self.target.is_empty()).then(|| self.target.clone());
        }
        event
    }

    fn emit(&self, _event: &str, reason: &str, f: impl FnOnce(&Fields<'_>)) {
        let origin = self.origin.as_ref();
        let caller = origin.map(|o| &o.caller);
        let fields = Fields {
            conn: self.id,
            client: self.client,
            dst: origin.map_or_else(String::new, |o| o.dst.to_string()),
            target: &self.target,
            uid: caller.map_or(-1, |c| i64::from(c.uid)),
            gid: caller.map_or(-1, |c| i64::from(c.gid)),
            pid: caller.map_or(-1, |c| i64::from(c.pid)),
            tid: caller.map_or(-1, |c| i64::from(c.tid)),
            comm: caller.map_or("", |c| c.comm.as_str()),
            user: caller.and_then(|c| c.user.as_deref()).unwrap_or(""),
            login_uid: caller.and_then(|c| c.login_uid).map_or(-1, i64::from),
            exe: caller
                .and_then(|c| c.exe.as_ref())
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            cgroup: caller.and_then(|c| c.cgroup.as_deref()).unwrap_or(""),
            who: caller.map_or_else(|| self.client.to_string(), ToString::to_string),
            reason,
        };
        f(&fields);
    }
}

impl Drop for ConnectionRecord {
    fn drop(&mut self) {
        if !self.finished {
            let mut event = self.event(kind::CONNECTION_CLOSED);
            event.ended_by = Some("internal error: record not finished".to_owned());
            self.audit.record(event);
            tracing::error!(
                target: "jitproxy::audit",
                event = "connection.unfinished",
                conn = self.id,
                client = %self.client,
                "internal error: connection {} ended without its record being finished",
                self.id
            );
        }
    }
}

/// Flattened fields of a record, for the tracing macros.
struct Fields<'a> {
    conn: u64,
    client: SocketAddr,
    dst: String,
    target: &'a str,
    uid: i64,
    gid: i64,
    pid: i64,
    tid: i64,
    comm: &'a str,
    user: &'a str,
    login_uid: i64,
    exe: String,
    cgroup: &'a str,
    who: String,
    reason: &'a str,
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
