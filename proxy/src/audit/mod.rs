//! The audit trail: every access to a target and every grant change, as
//! append-only JSON Lines with a SHA-256 hash chain and signed checkpoints.
//!
//! - [`record`]: the per-connection record builder used by the data path;
//! - [`log`]: the writer (group commit, fsync, rotation, checkpoints);
//! - [`verify`]: checks a log directory's chain and checkpoints;
//! - [`query`]: filters and summaries for `jitproxy audit`;
//! - [`syslog`]: a copy of every record to a remote collector.

pub mod bench;
pub mod log;
pub mod query;
pub mod record;
pub mod syslog;
pub mod verify;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use record::ConnectionRecord;

/// Stable event type codes.
pub mod kind {
    pub const GRANT_CREATED: &str = "grant.created";
    pub const GRANT_REVOKED: &str = "grant.revoked";
    pub const GRANT_DROPPED: &str = "grant.dropped";
    pub const GRANT_EXPIRED: &str = "grant.expired";
    pub const CONNECTION_ALLOWED: &str = "connection.allowed";
    pub const CONNECTION_DENIED: &str = "connection.denied";
    pub const CONNECTION_RATE_LIMITED: &str = "connection.rate_limited";
    pub const CONNECTION_FAILED: &str = "connection.failed";
    pub const CONNECTION_CLOSED: &str = "connection.closed";
    pub const DAEMON_STARTED: &str = "daemon.started";
    pub const DAEMON_STOPPED: &str = "daemon.stopped";
    pub const CONFIG_LOADED: &str = "config.loaded";
    pub const LOG_ROTATED: &str = "log.rotated";
    pub const LOG_RECOVERED: &str = "log.recovered";
}

/// One audit event. Fields that do not apply to an event type are absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Event type, one of [`kind`].
    #[serde(rename = "type")]
    pub kind: String,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
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
    pub fn new(kind: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            ..Self::default()
        }
    }
}
