//! The control API's request and response bodies (JSON), shared by the
//! daemon and the CLI. Documented in docs/control-api.md.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// `POST /v1/revoke`: by id, or every open grant of a user (on a target).
pub use crate::access::RevokeAsk as RevokeRequest;
/// `GET /v1/why`: the caller's last refused connection, and who can grant.
pub use crate::access::{Refusal, Why as WhyView};

use crate::{
    access::{EndKind, Grant, GrantAsk, GrantState, Principal, Subject},
    audit,
    time::{timestamp, UnixMs},
};

/// Largest request body the daemon reads.
pub const MAX_BODY: usize = 64 * 1024;

/// `POST /v1/grants`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    /// `alice`, `1001` (a uid), or `group:sre` / `group:1234`.
    pub who: String,
    /// Target name from the daemon's config.
    pub target: String,
    /// Start of the window; default now.
    #[serde(default)]
    pub starts_at: Option<Timestamp>,
    /// End of the window. Exactly one of `ends_at` and `duration_secs`.
    #[serde(default)]
    pub ends_at: Option<Timestamp>,
    #[serde(default)]
    pub duration_secs: Option<u64>,
    /// Why: a ticket or a sentence. Required.
    pub reason: String,
}

impl From<GrantRequest> for GrantAsk {
    fn from(r: GrantRequest) -> Self {
        Self {
            who: r.who,
            target: r.target,
            starts_at: r.starts_at.map(|t| t.as_millisecond()),
            ends_at: r.ends_at.map(|t| t.as_millisecond()),
            duration_secs: r.duration_secs,
            reason: r.reason,
        }
    }
}

/// `POST /v1/drop`: give the caller's own access back (on one target, or all).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropRequest {
    #[serde(default)]
    pub target: Option<String>,
}

/// A grant as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrantView {
    pub id: i64,
    /// `user:alice`, `user:1001`, `group:sre`.
    pub who: String,
    pub subject: Subject,
    pub target: String,
    pub starts_at: Timestamp,
    pub ends_at: Timestamp,
    pub reason: String,
    pub granted_by: Principal,
    pub created_at: Timestamp,
    pub state: GrantState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<Principal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_kind: Option<EndKind>,
}

impl GrantView {
    pub fn new(grant: &Grant, now: UnixMs) -> Self {
        let who = match (grant.subject, &grant.subject_name) {
            (Subject::User(_), Some(name)) => format!("user:{name}"),
            (Subject::User(uid), None) => format!("user:{uid}"),
            (Subject::Group(_), Some(name)) => format!("group:{name}"),
            (Subject::Group(gid), None) => format!("group:{gid}"),
        };
        Self {
            id: grant.id,
            who,
            subject: grant.subject,
            target: grant.target.clone(),
            starts_at: timestamp(grant.starts_at),
            ends_at: timestamp(grant.ends_at),
            reason: grant.reason.clone(),
            granted_by: grant.granted_by.clone(),
            created_at: timestamp(grant.created_at),
            state: grant.state(now),
            ended_at: grant.ended.as_ref().map(|e| timestamp(e.at)),
            ended_by: grant.ended.as_ref().and_then(|e| e.by.clone()),
            end_kind: grant.ended.as_ref().map(|e| e.kind),
        }
    }
}

/// `GET /v1/grants` and the answers of revoke and drop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrantList {
    pub grants: Vec<GrantView>,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    pub version: String,
    pub pid: u32,
    pub cgroup: String,
    pub pins: String,
    pub listen_port: u16,
    pub started_at: Timestamp,
    pub targets: Vec<TargetStatus>,
    pub live: Vec<LiveConnections>,
    pub open_grants: usize,
    pub audit: AuditStatus,
    /// What the kernel programs counted since they were loaded.
    #[serde(default)]
    pub kernel: KernelCounters,
}

/// The kernel programs' counters (summed over CPUs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelCounters {
    /// Connects to targets sent to the proxy.
    pub redirected: u64,
    /// UDP sends and connects to targets refused.
    pub udp_refused: u64,
    /// Connects refused because the record map was full.
    pub map_full: u64,
    /// The proxy's own upstream connects, let through by their mark.
    pub exempt: u64,
    /// Connects refused because their uid held its most live records.
    #[serde(default)]
    pub uid_full: u64,
    /// Connects and sends to `0.0.0.0` or `::`, matched as the address the
    /// kernel would use.
    #[serde(default)]
    pub unspecified: u64,
    /// MPTCP connects to a target, refused.
    #[serde(default)]
    pub mptcp_refused: u64,
    /// Entries in the record maps now: connections, and their 4-tuples.
    #[serde(default)]
    pub records: u64,
    #[serde(default)]
    pub tuples: u64,
    /// Live records per uid, `[uid, records]` (each uid may hold at most
    /// `max_records_per_uid`).
    #[serde(default)]
    pub records_by_uid: Vec<(u32, u64)>,
    #[serde(default)]
    pub max_records_per_uid: u32,
}

/// The audit log's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditStatus {
    pub dir: String,
    /// Why the log cannot be written; while set, connections are refused.
    pub failure: Option<String>,
    pub records_written: u64,
    /// Records lost because the disk refused them for too long.
    pub records_dropped: u64,
    /// Records the syslog collector (if any) did not get.
    #[serde(default)]
    pub syslog_dropped: u64,
}

/// `POST /v1/audit/query` and `/v1/audit/summary` answer with these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecords {
    pub records: Vec<audit::Record>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditSummary {
    pub users: Vec<audit::query::UserSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetStatus {
    pub name: String,
    pub hosts: Vec<String>,
    /// Addresses in the kernel map now, as `address/prefix port`.
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveConnections {
    pub uid: u32,
    pub user: Option<String>,
    pub target: String,
    pub connections: u32,
}

/// Every error body: what went wrong, and what to do next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}
