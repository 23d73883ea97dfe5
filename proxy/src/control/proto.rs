//! The control API's request and response bodies (JSON), shared by the
//! daemon and the CLI. Documented in docs/control-api.md.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// `POST /v1/revoke`: by id, or every open grant of a user (on a target).
pub use crate::access::RevokeAsk as RevokeRequest;
/// `GET /v1/why`: the caller's last refused connection, and who can grant.
pub use crate::access::{Refusal, Why as WhyView};

use crate::{
    access::{
        notice::subject_label, AccessRequest, ApproveAsk, EndKind, Grant, GrantAsk, GrantState,
        Outcome, Principal, RequestAsk, RequestKind, RequestState, Subject,
    },
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
    /// Request rules (`METHOD PATH`) on an inspect target; none: every
    /// request.
    #[serde(default)]
    pub allow: Vec<String>,
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
            allow: r.allow,
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
    /// The access request it was given for (`jitproxy request`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<i64>,
    /// The requests it allows (`METHOD PATH`); empty: every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
}

impl GrantView {
    pub fn new(grant: &Grant, now: UnixMs) -> Self {
        Self {
            id: grant.id,
            who: subject_label(grant.subject, grant.subject_name.as_deref()),
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
            request_id: grant.request_id,
            allow: grant.scopes.iter().map(ToString::to_string).collect(),
        }
    }
}

/// `POST /v1/requests`: ask for access for yourself.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRequestBody {
    pub target: String,
    pub duration_secs: u64,
    /// Why: a ticket or a sentence. Required.
    pub reason: String,
}

impl From<NewRequestBody> for RequestAsk {
    fn from(r: NewRequestBody) -> Self {
        Self {
            target: r.target,
            duration_secs: r.duration_secs,
            reason: r.reason,
        }
    }
}

/// `POST /v1/requests/ID/approve`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveBody {
    /// A shorter window than asked for.
    #[serde(default)]
    pub duration_secs: Option<u64>,
    #[serde(default)]
    pub reason: Option<String>,
}

impl From<ApproveBody> for ApproveAsk {
    fn from(b: ApproveBody) -> Self {
        Self {
            duration_secs: b.duration_secs,
            reason: b.reason,
        }
    }
}

/// `POST /v1/requests/ID/deny`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyBody {
    /// Required: the requester sees it.
    pub reason: String,
}

/// `POST /v1/break-glass`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassBody {
    pub target: String,
    /// Default and at most: the target's `break_glass_max`.
    #[serde(default)]
    pub duration_secs: Option<u64>,
    pub reason: String,
}

/// A request as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestView {
    pub id: i64,
    /// Who the access is for: `user:alice`, `user:1001`.
    pub who: String,
    /// Who asked, as the kernel vouched (with their login uid behind sudo).
    pub requester: Principal,
    pub target: String,
    pub duration_secs: i64,
    pub reason: String,
    pub kind: RequestKind,
    pub state: RequestState,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub approvals: Vec<ApprovalView>,
    pub needed: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied_by: Option<Principal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denial_reason: Option<String>,
    /// The grant it led to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<GrantView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<i64>,
    /// Who can approve it: root and the target's approvers.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// The webhooks told of this step (break-glass: those that take
    /// `break_glass.used`), by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notified: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalView {
    pub by: Principal,
    pub at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl RequestView {
    pub fn new(
        request: &AccessRequest,
        grant: Option<&Grant>,
        approvers: Vec<String>,
        now: UnixMs,
    ) -> Self {
        let human = request.human_uid();
        // The human's name, looked up when the request was made (behind
        // sudo the requester is root; the access is the human's).
        let name = request.human_name.as_deref();
        let (decided_at, denied_by, denial_reason) = match &request.outcome {
            None => (None, None, None),
            Some(Outcome::Granted { at, .. } | Outcome::Expired { at }) => {
                (Some(timestamp(*at)), None, None)
            }
            Some(Outcome::Denied { at, by, reason }) => {
                (Some(timestamp(*at)), Some(by.clone()), Some(reason.clone()))
            }
        };
        Self {
            id: request.id,
            who: subject_label(Subject::User(human), name),
            requester: request.requester.clone(),
            target: request.target.clone(),
            duration_secs: request.duration_ms / 1000,
            reason: request.reason.clone(),
            kind: request.kind,
            state: request.state(now),
            created_at: timestamp(request.created_at),
            expires_at: timestamp(request.expires_at),
            approvals: request
                .approvals
                .iter()
                .map(|a| ApprovalView {
                    by: a.by.clone(),
                    at: timestamp(a.at),
                    reason: a.reason.clone(),
                })
                .collect(),
            needed: request.needed,
            decided_at,
            denied_by,
            denial_reason,
            grant: grant.map(|g| GrantView::new(g, now)),
            grant_id: request.grant_id(),
            approvers,
            notified: Vec::new(),
        }
    }
}

/// `GET /v1/requests`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestList {
    pub requests: Vec<RequestView>,
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
    /// The webhooks, by name (never their URLs), and notices waiting.
    #[serde(default)]
    pub notify: NotifyStatus,
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

/// The webhooks' state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyStatus {
    pub webhooks: Vec<String>,
    /// Notices not yet taken by their webhook.
    pub undelivered: u64,
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
    /// Records waiting for the writer.
    #[serde(default)]
    pub queued: u64,
}

/// `POST /v1/audit/query` and `/v1/audit/summary` answer with these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecords {
    pub records: Vec<audit::Record>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditSummary {
    /// Emergency access taken in the period, listed first.
    #[serde(default)]
    pub break_glass: Vec<audit::query::BreakGlassUse>,
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
