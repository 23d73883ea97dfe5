//! The record of each connection: created when the connection is accepted,
//! completed stage by stage, and finished on every exit path (denied, failed,
//! closed). A record dropped without being finished is reported as an internal
//! error, so no path can leave a connection without its record.
//!
//! Records are structured `tracing` events (target `jitproxy::audit`); the
//! JSON log format writes them one per line. A durable, tamper-evident log
//! replaces this sink in a later issue; the builder stays.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
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
    pub fn start(id: u64, client: SocketAddr) -> Self {
        Self {
            id,
            client,
            started: Instant::now(),
            origin: None,
            target: String::new(),
            finished: false,
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Adds where the connection was going and who opened it.
    pub fn set_origin(&mut self, origin: Origin, target: &str) {
        self.origin = Some(origin);
        target.clone_into(&mut self.target);
    }

    /// The decision let the connection through; forwarding starts.
    pub fn allowed(&self, allowed: &Allowed, upstream_local: Option<SocketAddr>) {
        let upstream_local = upstream_local.map(|a| a.to_string()).unwrap_or_default();
        let cover = &allowed.cover;
        self.emit("connection.allowed", &cover.reason, |r| {
            tracing::info!(
                target: "jitproxy::audit",
                event = "connection.allowed",
                conn = r.conn, client = %r.client, dst = %r.dst, target_name = r.target,
                uid = r.uid, gid = r.gid, pid = r.pid, tid = r.tid, comm = r.comm,
                user = r.user, login_uid = r.login_uid, exe = r.exe, cgroup = r.cgroup,
                matched_uid = allowed.keys.uid, grant_id = cover.grant_id, reason = r.reason,
                until = cover.until, upstream_local = upstream_local,
                "allowed {} -> {} ({}) by grant {}", r.who, r.dst, r.target, cover.grant_id
            );
        });
    }

    /// Refused: the client connection is reset and nothing reaches the target.
    pub fn denied(mut self, reason: &DenyReason) {
        self.finished = true;
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
        self.emit("connection.closed", &detail, |r| {
            tracing::info!(
                target: "jitproxy::audit",
                event = "connection.closed",
                conn = r.conn, client = %r.client, dst = %r.dst, target_name = r.target,
                uid = r.uid, pid = r.pid, comm = r.comm, user = r.user,
                bytes_up = bytes.up(), bytes_down = bytes.down(),
                duration_ms = duration_ms(duration), ended_by = ended_by, error = r.reason,
                "closed {} -> {}: {} bytes up, {} down, ended by {}",
                r.who, r.dst, bytes.up(), bytes.down(), ended_by
            );
        });
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
