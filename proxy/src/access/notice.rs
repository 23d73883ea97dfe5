//! What the webhooks are told: one [`Notice`] per event (a request made,
//! approved, denied or expired; break-glass used; a grant created or
//! ended), built from the request or grant it is about. The store keeps
//! each in its outbox in the same transaction as the change, so a notice
//! exists exactly when its change does. Notices carry names, windows and
//! reasons, never a secret.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::model::{AccessRequest, EndKind, Grant, Principal, RequestKind, RequestState, Subject};
use crate::time::{timestamp, UnixMs};

/// One event, as the generic JSON webhook body has it (plus its
/// idempotency `key`, added at delivery).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// `request.created`, `request.approved`, `request.denied`,
    /// `request.expired`, `break_glass.used`, `grant.created`, `grant.ended`.
    pub event: String,
    pub at: Timestamp,
    pub target: String,
    /// Who the access is for: `user:alice`, `user:1001`, `group:sre`.
    pub who: String,
    /// Who acted (requested, approved, denied, granted, ended); none for
    /// what the clock did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Principal>,
    /// The request's or grant's reason.
    pub reason: String,
    /// What the approver or denier said (a denial always says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestNotice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<GrantNotice>,
    /// What an approver runs to decide a pending request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
}

/// The request a notice is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestNotice {
    pub id: i64,
    pub kind: RequestKind,
    pub state: RequestState,
    pub duration_secs: i64,
    pub expires_at: Timestamp,
    pub approvals: usize,
    pub needed: u32,
}

/// The grant a notice is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantNotice {
    pub id: i64,
    pub starts_at: Timestamp,
    pub ends_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_kind: Option<EndKind>,
}

/// A principal for people: its name (else `uid N`), and the login uid
/// behind it when it differs (root after `sudo`: `root (login 1001)`).
pub fn principal_label(p: &Principal) -> String {
    let who = p.name.clone().unwrap_or_else(|| format!("uid {}", p.uid));
    match p.login_uid {
        Some(login) => format!("{who} (login {login})"),
        None => who,
    }
}

/// `user:NAME` (or `user:UID`), `group:NAME` (or `group:GID`).
pub fn subject_label(subject: Subject, name: Option<&str>) -> String {
    let (kind, id) = subject.parts();
    name.map_or_else(|| format!("{kind}:{id}"), |n| format!("{kind}:{n}"))
}

impl Notice {
    /// `event` about `request` at `at`, done by `by`, who said
    /// `decision_reason` (an approval's or a denial's).
    pub fn of_request(
        event: &str,
        request: &AccessRequest,
        by: Option<&Principal>,
        decision_reason: Option<&str>,
        at: UnixMs,
    ) -> Self {
        let human = request.human_uid();
        // The human's name, looked up when the request was made (behind
        // sudo the requester is root; the access is the human's).
        let name = request.human_name.as_deref();
        let state = request.state(at);
        let commands = if event == "request.created" && state == RequestState::Pending {
            vec![
                format!("jitproxy approve {}", request.id),
                format!("jitproxy deny {} --reason \"...\"", request.id),
            ]
        } else {
            Vec::new()
        };
        Self {
            event: event.to_owned(),
            at: timestamp(at),
            target: request.target.clone(),
            who: subject_label(Subject::User(human), name),
            by: by.cloned(),
            reason: request.reason.clone(),
            decision_reason: decision_reason.map(str::to_owned),
            request: Some(RequestNotice {
                id: request.id,
                kind: request.kind,
                state,
                duration_secs: request.duration_ms / 1000,
                expires_at: timestamp(request.expires_at),
                approvals: request.approvals.len(),
                needed: request.needed,
            }),
            grant: None,
            commands,
        }
    }

    /// `event` about `grant` at `at`, done by `by`.
    pub fn of_grant(event: &str, grant: &Grant, by: Option<&Principal>, at: UnixMs) -> Self {
        Self {
            event: event.to_owned(),
            at: timestamp(at),
            target: grant.target.clone(),
            who: subject_label(grant.subject, grant.subject_name.as_deref()),
            by: by.cloned(),
            reason: grant.reason.clone(),
            decision_reason: None,
            request: None,
            grant: Some(GrantNotice {
                id: grant.id,
                starts_at: timestamp(grant.starts_at),
                ends_at: timestamp(grant.effective_end()),
                request_id: grant.request_id,
                end_kind: grant.ended.as_ref().map(|e| e.kind),
            }),
            commands: Vec::new(),
        }
    }

    /// The same notice, also naming the grant it led to.
    #[must_use]
    pub fn with_grant(mut self, grant: &Grant) -> Self {
        self.grant = Self::of_grant("", grant, None, 0).grant;
        self
    }

    /// One line for people (the Slack `text`).
    pub fn text(&self) -> String {
        let by = self
            .by
            .as_ref()
            .map_or_else(String::new, |p| format!(" by {}", principal_label(p)));
        let request = self.request.as_ref();
        let id = request.map_or(0, |r| r.id);
        let window = self.grant.as_ref().map_or_else(String::new, |g| {
            format!(" from {} until {}", g.starts_at, g.ends_at)
        });
        let mut text = match self.event.as_str() {
            "request.created" => format!(
                "{} asks for {} on `{}` (request #{id}): {}",
                self.who,
                humantime::format_duration(std::time::Duration::from_secs(
                    request.map_or(0, |r| u64::try_from(r.duration_secs).unwrap_or(0))
                )),
                self.target,
                self.reason
            ),
            "request.approved" => format!(
                "request #{id} of {} on `{}` approved{by} ({} of {} approvals){window}",
                self.who,
                self.target,
                request.map_or(0, |r| r.approvals),
                request.map_or(0, |r| r.needed)
            ),
            "request.denied" => format!(
                "request #{id} of {} on `{}` denied{by}: {}",
                self.who,
                self.target,
                self.decision_reason.as_deref().unwrap_or("")
            ),
            "request.expired" => format!(
                "request #{id} of {} on `{}` expired undecided",
                self.who, self.target
            ),
            "break_glass.used" => format!(
                ":rotating_light: BREAK-GLASS: {} took access to `{}`{window}: {}",
                self.who, self.target, self.reason
            ),
            "grant.created" => format!(
                "{} was granted `{}`{by}{window}: {}",
                self.who, self.target, self.reason
            ),
            "grant.ended" => format!(
                "access of {} to `{}` ended ({}){by}",
                self.who,
                self.target,
                self.grant
                    .as_ref()
                    .and_then(|g| g.end_kind)
                    .map_or("ended", EndKind::as_str)
            ),
            other => format!("{other}: {} on `{}`", self.who, self.target),
        };
        for command in &self.commands {
            text.push_str(&format!("\n`{command}`"));
        }
        text
    }
}
