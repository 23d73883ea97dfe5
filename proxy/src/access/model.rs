//! Time-limited grants as values: who may reach which target, from when
//! until when, why, and (for inspected targets) which requests.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::time::UnixMs;

/// Who a grant is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "lowercase")]
pub enum Subject {
    /// A user, by uid.
    User(u32),
    /// Every member of a group, by gid.
    Group(u32),
}

/// A local identity as recorded on a grant: uid plus the name at the time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub uid: u32,
    pub name: Option<String>,
    /// The login uid of the process, when set and different from `uid`
    /// (someone behind `sudo`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_uid: Option<u32>,
}

/// How a grant ended: early, by someone, or by time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndKind {
    /// Ended by an approver.
    Revoked,
    /// Given back by its holder.
    Dropped,
    /// Its window closed; recorded once, when the daemon first saw it closed
    /// (at once, or at its next start if it was down).
    Expired,
}

/// One grant, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub id: i64,
    pub subject: Subject,
    /// The subject's name (user or group) when the grant was made.
    pub subject_name: Option<String>,
    /// Target name from the config.
    pub target: String,
    pub starts_at: UnixMs,
    pub ends_at: UnixMs,
    pub reason: String,
    pub granted_by: Principal,
    pub created_at: UnixMs,
    /// Set when it ended: revoked or dropped early, or expired (set once
    /// its expiry is recorded; the window's end decides access either way).
    pub ended: Option<Ending>,
    /// Per-request scopes (HTTP methods and paths); none means every
    /// request. Not enforced yet.
    pub scopes: Vec<Scope>,
    /// The access request it was given for, if any (else `jitproxy grant`).
    pub request_id: Option<i64>,
}

/// A recorded end: when, by whom, how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    pub at: UnixMs,
    /// Who ended it; `None` for an expiry (the clock did).
    pub by: Option<Principal>,
    pub kind: EndKind,
}

impl Grant {
    /// Whether the grant covers instant `now`.
    pub fn is_live(&self, now: UnixMs) -> bool {
        self.effective_end() > now && self.starts_at <= now
    }

    /// When access actually ends: the window's end, or an earlier revoke/drop.
    pub fn effective_end(&self) -> UnixMs {
        self.ended
            .as_ref()
            .map_or(self.ends_at, |e| e.at.min(self.ends_at))
    }

    /// The grant's state at `now`, for display.
    pub fn state(&self, now: UnixMs) -> GrantState {
        match &self.ended {
            Some(e) if e.at <= now => match e.kind {
                EndKind::Revoked => GrantState::Revoked,
                EndKind::Dropped => GrantState::Dropped,
                EndKind::Expired => GrantState::Expired,
            },
            _ if self.ends_at <= now => GrantState::Expired,
            _ if self.starts_at > now => GrantState::Pending,
            _ => GrantState::Active,
        }
    }
}

/// Where a grant stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GrantState {
    Pending,
    Active,
    Expired,
    Revoked,
    Dropped,
}

impl fmt::Display for GrantState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
            Self::Dropped => "dropped",
        })
    }
}

impl EndKind {
    /// The stable code, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Revoked => "revoked",
            Self::Dropped => "dropped",
            Self::Expired => "expired",
        }
    }
}

impl FromStr for EndKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "revoked" => Ok(Self::Revoked),
            "dropped" => Ok(Self::Dropped),
            "expired" => Ok(Self::Expired),
            other => Err(format!("unknown end kind `{other}`")),
        }
    }
}

impl Subject {
    /// The stored kind (`user`, `group`) and id.
    pub fn parts(self) -> (&'static str, u32) {
        match self {
            Self::User(uid) => ("user", uid),
            Self::Group(gid) => ("group", gid),
        }
    }

    /// The subject of a stored kind and id; an unknown kind is an error,
    /// never a guess (a guessed user could be given a group's access).
    pub fn from_parts(kind: &str, id: u32) -> Result<Self, String> {
        match kind {
            "user" => Ok(Self::User(id)),
            "group" => Ok(Self::Group(id)),
            other => Err(format!("unknown subject kind `{other}`")),
        }
    }
}

/// One request rule of a grant: an HTTP method (or `*`) and a path pattern
/// (`/v1/payments/*`). Written and stored as `METHOD PATH`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    /// Upper-case method, or `None` for any (`*`).
    pub method: Option<String>,
    /// Starts with `/`; `*` matches within one path segment, a trailing
    /// `/**` everything below.
    pub path: String,
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (method, path) = s
            .trim()
            .split_once(' ')
            .ok_or_else(|| format!("scope `{s}` is not `METHOD PATH` (e.g. `GET /v1/items/*`)"))?;
        let method = match method {
            "*" => None,
            m if !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic()) => {
                Some(m.to_ascii_uppercase())
            }
            m => return Err(format!("scope `{s}`: `{m}` is not an HTTP method or `*`")),
        };
        let path = path.trim();
        if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(format!(
                "scope `{s}`: the path must start with `/` and hold no spaces"
            ));
        }
        Ok(Self {
            method,
            path: path.to_owned(),
        })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method.as_deref().unwrap_or("*"), self.path)
    }
}

/// A request for access (`jitproxy request`), or the record of an
/// immediate grant that went the same way (auto-approved, break-glass).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRequest {
    pub id: i64,
    /// Who asked, as the kernel vouched for them.
    pub requester: Principal,
    /// The human the access is for ([`crate::access::principal_uid`] of the
    /// requester: the login uid behind `sudo`), and their name then.
    pub human: u32,
    pub human_name: Option<String>,
    pub target: String,
    /// How long the grant should last, from when it is given.
    pub duration_ms: i64,
    pub reason: String,
    pub kind: RequestKind,
    pub created_at: UnixMs,
    /// A request still pending then expires.
    pub expires_at: UnixMs,
    /// Distinct approvals needed before the grant exists.
    pub needed: u32,
    /// Approvals so far, oldest first.
    pub approvals: Vec<Approval>,
    /// How it was decided, once it was.
    pub outcome: Option<Outcome>,
}

/// One approver's yes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub by: Principal,
    pub at: UnixMs,
    pub reason: Option<String>,
}

/// How a request came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// Asked for, and approved by people.
    Asked,
    /// Granted at once by an `auto_approve` rule.
    AutoApproved,
    /// Taken at once in an emergency (`jitproxy break-glass`).
    BreakGlass,
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Its grant exists.
    Granted { at: UnixMs, grant_id: i64 },
    Denied {
        at: UnixMs,
        by: Principal,
        reason: String,
    },
    /// Nobody decided it in time.
    Expired { at: UnixMs },
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestState {
    Pending,
    Approved,
    Denied,
    Expired,
}

impl AccessRequest {
    /// The human the access is for.
    pub fn human_uid(&self) -> u32 {
        self.human
    }

    /// Its state at `now`: a pending request past its expiry is expired even
    /// before the expiry task records it.
    pub fn state(&self, now: UnixMs) -> RequestState {
        match &self.outcome {
            Some(Outcome::Granted { .. }) => RequestState::Approved,
            Some(Outcome::Denied { .. }) => RequestState::Denied,
            Some(Outcome::Expired { .. }) => RequestState::Expired,
            None if self.expires_at <= now => RequestState::Expired,
            None => RequestState::Pending,
        }
    }

    /// The grant it led to.
    pub fn grant_id(&self) -> Option<i64> {
        match self.outcome {
            Some(Outcome::Granted { grant_id, .. }) => Some(grant_id),
            _ => None,
        }
    }
}

impl fmt::Display for RequestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Expired => "expired",
        })
    }
}

impl RequestKind {
    /// The stable code, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Asked => "asked",
            Self::AutoApproved => "auto_approved",
            Self::BreakGlass => "break_glass",
        }
    }
}

impl FromStr for RequestKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "asked" => Ok(Self::Asked),
            "auto_approved" => Ok(Self::AutoApproved),
            "break_glass" => Ok(Self::BreakGlass),
            other => Err(format!("unknown request kind `{other}`")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_or_refuse() {
        let scope: Scope = "get /v1/payments/*".parse().unwrap();
        assert_eq!(scope.method.as_deref(), Some("GET"));
        assert_eq!(scope.to_string(), "GET /v1/payments/*");
        assert_eq!("* /".parse::<Scope>().unwrap().method, None);
        for bad in ["", "GET", "GET v1", "G3T /x", "GET /a b"] {
            assert!(bad.parse::<Scope>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn unknown_stored_kinds_are_errors() {
        assert_eq!(Subject::from_parts("group", 5), Ok(Subject::Group(5)));
        assert!(Subject::from_parts("role", 5).is_err());
        assert!("paused".parse::<EndKind>().is_err());
    }
}
