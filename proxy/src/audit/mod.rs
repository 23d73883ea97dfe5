//! The audit trail: every access to a target and every grant change, as
//! append-only JSON Lines with a SHA-256 hash chain and signed checkpoints.
//!
//! - [`log`]: the writer (group commit, fsync, rotation, checkpoints);
//! - [`emit`]: the daemon-log line of each event, derived from the same value;
//! - [`verify`]: checks a log directory's chain and checkpoints;
//! - [`query`]: filters and summaries for `jitproxy audit`;
//! - [`syslog`]: a copy of every record to a remote collector.

mod emit;
pub mod log;
pub mod query;
mod queue;
pub mod syslog;
pub mod verify;

use std::{fmt, str::FromStr};

use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use log::{AuditError, AuditLog, AuditSettings};

/// What an event records. Stored as its stable code (`connection.allowed`);
/// a code this version does not know (a newer daemon's) is kept as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventKind {
    GrantCreated,
    GrantRevoked,
    GrantDropped,
    GrantExpired,
    ConnectionAllowed,
    ConnectionDenied,
    ConnectionRateLimited,
    ConnectionFailed,
    ConnectionClosed,
    /// A connection opened before the programs were attached, ended at start.
    ConnectionDestroyed,
    DaemonStarted,
    DaemonStopped,
    ConfigLoaded,
    LogRotated,
    LogRecovered,
    /// A signed checkpoint was written: the log names it, so a checkpoint
    /// file that loses it shows.
    LogCheckpointed,
    /// Retention removed a log file: the log names its last record, so the
    /// chain's new start is accounted for.
    LogRemoved,
    /// Someone asked for access (`jitproxy request`).
    RequestCreated,
    /// An approver said yes (one of the approvals a target may need).
    RequestApproved,
    RequestDenied,
    /// A pending request nobody decided in time.
    RequestExpired,
    /// Immediate access taken in an emergency.
    BreakGlassUsed,
    /// An inspected HTTP request let through; on disk before it goes on.
    HttpAllowed,
    /// An inspected HTTP request refused (scope, host, placeholder, grant
    /// ended): it got a 403 and went nowhere.
    HttpDenied,
    /// An inspected HTTP request over its rate: it got a 429.
    HttpRateLimited,
    /// An HTTP request let through ended: status, bytes, duration.
    HttpCompleted,
    /// Written by another version; never produced by this one.
    Other(String),
}

impl EventKind {
    /// Every kind this version writes, for parsing.
    const KNOWN: [Self; 26] = [
        Self::GrantCreated,
        Self::GrantRevoked,
        Self::GrantDropped,
        Self::GrantExpired,
        Self::ConnectionAllowed,
        Self::ConnectionDenied,
        Self::ConnectionRateLimited,
        Self::ConnectionFailed,
        Self::ConnectionClosed,
        Self::ConnectionDestroyed,
        Self::DaemonStarted,
        Self::DaemonStopped,
        Self::ConfigLoaded,
        Self::LogRotated,
        Self::LogRecovered,
        Self::LogCheckpointed,
        Self::LogRemoved,
        Self::RequestCreated,
        Self::RequestApproved,
        Self::RequestDenied,
        Self::RequestExpired,
        Self::BreakGlassUsed,
        Self::HttpAllowed,
        Self::HttpDenied,
        Self::HttpRateLimited,
        Self::HttpCompleted,
    ];

    /// The stable code, as stored.
    pub fn as_str(&self) -> &str {
        match self {
            Self::GrantCreated => "grant.created",
            Self::GrantRevoked => "grant.revoked",
            Self::GrantDropped => "grant.dropped",
            Self::GrantExpired => "grant.expired",
            Self::ConnectionAllowed => "connection.allowed",
            Self::ConnectionDenied => "connection.denied",
            Self::ConnectionRateLimited => "connection.rate_limited",
            Self::ConnectionFailed => "connection.failed",
            Self::ConnectionClosed => "connection.closed",
            Self::ConnectionDestroyed => "connection.destroyed",
            Self::DaemonStarted => "daemon.started",
            Self::DaemonStopped => "daemon.stopped",
            Self::ConfigLoaded => "config.loaded",
            Self::LogRotated => "log.rotated",
            Self::LogRecovered => "log.recovered",
            Self::LogCheckpointed => "log.checkpointed",
            Self::LogRemoved => "log.removed",
            Self::RequestCreated => "request.created",
            Self::RequestApproved => "request.approved",
            Self::RequestDenied => "request.denied",
            Self::RequestExpired => "request.expired",
            Self::BreakGlassUsed => "break_glass.used",
            Self::HttpAllowed => "http.allowed",
            Self::HttpDenied => "http.denied",
            Self::HttpRateLimited => "http.rate_limited",
            Self::HttpCompleted => "http.completed",
            Self::Other(code) => code,
        }
    }

    /// Whether it records a connection (`connection.*`).
    pub fn is_connection(&self) -> bool {
        matches!(
            self,
            Self::ConnectionAllowed
                | Self::ConnectionDenied
                | Self::ConnectionRateLimited
                | Self::ConnectionFailed
                | Self::ConnectionClosed
                | Self::ConnectionDestroyed
        )
    }

    /// Whether it records an inspected HTTP request (`http.*`).
    pub fn is_http(&self) -> bool {
        matches!(
            self,
            Self::HttpAllowed | Self::HttpDenied | Self::HttpRateLimited | Self::HttpCompleted
        )
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::KNOWN
            .into_iter()
            .find(|k| k.as_str() == s)
            .unwrap_or_else(|| Self::Other(s.to_owned())))
    }
}

impl Serialize for EventKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        let Ok(kind) = code.parse();
        Ok(kind)
    }
}

/// One audit event. Fields that do not apply to an event type are absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// What it records.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// Connection id (unique per daemon run), for connection events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Original destination, as the client asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<i64>,
    /// The grant's reason (allowed, grant events) or the refusal's (denied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Machine-readable refusal or failure code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_up: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_down: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Who ended a connection: client, upstream, grant end, daemon shutdown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<String>,
    /// Event-specific details (grant windows, who acted, file names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

/// The user behind an event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub uid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_uid: Option<u32>,
}

/// The process behind a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    /// The executable's path, only when it names `exe_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// The executable at connect, as the kernel saw it: `major:minor inode N`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe_file: Option<String>,
    /// What /proc showed instead of a path naming `exe_file` (the caller
    /// exec'd another program after connecting): not the executable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe_unverified: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    pub gid: u32,
}

/// An event as stored: sequence number, time, the event, and the hash of the
/// record before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub time: Timestamp,
    #[serde(flatten)]
    pub event: Event,
    /// SHA-256 (hex) of the previous record's line; 64 zeros for the first.
    pub prev: String,
}

impl Event {
    /// An event of `kind` with no other field set.
    pub fn new(kind: EventKind) -> Self {
        Self {
            kind,
            conn: None,
            user: None,
            process: None,
            target: None,
            dst: None,
            client: None,
            grant_id: None,
            reason: None,
            code: None,
            bytes_up: None,
            bytes_down: None,
            duration_ms: None,
            ended_by: None,
            detail: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_unknown_ones_are_kept() {
        for kind in EventKind::KNOWN {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(serde_json::from_str::<EventKind>(&json).unwrap(), kind);
        }
        let newer: EventKind = serde_json::from_str("\"request.allowed\"").unwrap();
        assert_eq!(newer, EventKind::Other("request.allowed".into()));
        assert_eq!(
            serde_json::to_string(&newer).unwrap(),
            "\"request.allowed\""
        );
    }
}
