//! The daemon-log line of an audit event (tracing target `jitproxy::audit`),
//! derived from the very value that goes to the audit log, so the two never
//! disagree and no caller writes an event out twice.
//!
//! Fields are flat for `--log-format json`: `event`, `conn`, `client`,
//! `dst`, `target_name`, `uid`, `gid`, `user`, `login_uid`, `pid`, `tid`,
//! `comm`, `exe`, `exe_file`, `exe_unverified`, `cgroup`, `grant_id`, `reason`, `code`, `bytes_up`,
//! `bytes_down`, `duration_ms`, `ended_by`, and `detail` (JSON).

use std::fmt::{self, Write as _};

use super::{Event, EventKind};

/// How loud an event is in the daemon log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loudness {
    Info,
    Warn,
    Error,
}

/// Logs `event` to the daemon log, and counts it for the metrics.
pub(super) fn daemon_log(event: &Event) {
    crate::metrics::METRICS.event(
        event.kind.as_str(),
        event.target.as_deref(),
        event.code.as_deref(),
    );
    let user = event.user.as_ref();
    let process = event.process.as_ref();
    // Formatted only when the line is written (not at all below its level).
    let detail = event.detail.as_ref().map(tracing::field::display);
    let summary = Summary(event);
    macro_rules! log_at {
        ($level:expr) => {
            tracing::event!(
                target: "jitproxy::audit",
                $level,
                event = event.kind.as_str(),
                conn = event.conn,
                client = event.client.as_deref(),
                dst = event.dst.as_deref(),
                target_name = event.target.as_deref(),
                uid = user.map(|u| u.uid),
                user = user.and_then(|u| u.name.as_deref()),
                login_uid = user.and_then(|u| u.login_uid),
                gid = process.map(|p| p.gid),
                pid = process.map(|p| p.pid),
                tid = process.map(|p| p.tid),
                comm = process.map(|p| p.comm.as_str()),
                exe = process.and_then(|p| p.exe.as_deref()),
                exe_file = process.and_then(|p| p.exe_file.as_deref()),
                exe_unverified = process.and_then(|p| p.exe_unverified.as_deref()),
                cgroup = process.and_then(|p| p.cgroup.as_deref()),
                grant_id = event.grant_id,
                reason = event.reason.as_deref(),
                code = event.code.as_deref(),
                bytes_up = event.bytes_up,
                bytes_down = event.bytes_down,
                duration_ms = event.duration_ms,
                ended_by = event.ended_by.as_deref(),
                detail = detail,
                "{summary}"
            )
        };
    }
    match loudness(event) {
        Loudness::Info => log_at!(tracing::Level::INFO),
        Loudness::Warn => log_at!(tracing::Level::WARN),
        Loudness::Error => log_at!(tracing::Level::ERROR),
    }
}

/// Logs an event that the audit log could not keep (the disk refused it for
/// too long): the daemon log is then its only trace.
pub(super) fn lost(event: &Event) {
    let detail = serde_json::to_string(event).unwrap_or_default();
    tracing::error!(
        target: "jitproxy::audit",
        event = event.kind.as_str(),
        lost = true,
        record = %detail,
        "NOT WRITTEN to the audit log (disk refused it too long): {}",
        Summary(event)
    );
}

fn loudness(event: &Event) -> Loudness {
    match event.kind {
        EventKind::ConnectionDenied
        | EventKind::ConnectionRateLimited
        | EventKind::ConnectionFailed
        | EventKind::ConnectionDestroyed
        | EventKind::LogRecovered
        | EventKind::BreakGlassUsed => Loudness::Warn,
        EventKind::ConnectionClosed
            if event
                .ended_by
                .as_deref()
                .is_some_and(|e| e.starts_with("internal error")) =>
        {
            Loudness::Error
        }
        _ => Loudness::Info,
    }
}

/// The human message: what happened, to whom, where.
struct Summary<'a>(&'a Event);

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.0;
        f.write_str(e.kind.as_str())?;
        if let Some(u) = &e.user {
            match &u.name {
                Some(name) => write!(f, " {name} (uid {})", u.uid)?,
                None => write!(f, " uid {}", u.uid)?,
            }
        }
        if let Some(p) = &e.process {
            write!(f, " pid {} {}", p.pid, p.comm)?;
        }
        if e.kind.is_connection() {
            if let Some(dst) = &e.dst {
                write!(f, " -> {dst}")?;
            }
        }
        if let Some(target) = &e.target {
            write!(f, " ({target})")?;
        }
        if let Some(id) = e.grant_id {
            write!(f, " grant {id}")?;
        }
        if let (Some(up), Some(down)) = (e.bytes_up, e.bytes_down) {
            write!(f, ": {up} bytes up, {down} down")?;
        }
        if let Some(by) = &e.ended_by {
            write!(f, ", ended by {by}")?;
        }
        if let Some(reason) = &e.reason {
            f.write_str(": ")?;
            // One line whatever the reason holds.
            for c in reason.chars() {
                f.write_char(if c.is_control() { ' ' } else { c })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{ProcessInfo, UserInfo};

    #[test]
    fn summary_names_who_where_and_why() {
        let mut e = Event::new(EventKind::ConnectionDenied);
        e.user = Some(UserInfo {
            name: Some("alice".into()),
            uid: 1001,
            login_uid: None,
        });
        e.process = Some(ProcessInfo {
            pid: 42,
            tid: 42,
            comm: "curl".into(),
            gid: 1001,
            ..ProcessInfo::default()
        });
        e.dst = Some("127.0.0.2:8080".into());
        e.target = Some("demo-api".into());
        e.reason = Some("no live grant\nfor uid 1001".into());
        assert_eq!(
            Summary(&e).to_string(),
            "connection.denied alice (uid 1001) pid 42 curl -> 127.0.0.2:8080 (demo-api): no live grant for uid 1001"
        );
        assert_eq!(loudness(&e), Loudness::Warn);
    }
}
