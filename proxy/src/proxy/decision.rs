//! Whether a redirected connection may pass: a [`Verdict`] with a reason that
//! is shown to the user (`jitproxy why`) and written to the audit record.
//!
//! A connection passes when a live grant covers its caller on its target and
//! the caller is within the target's connection limits. While it lives,
//! [`Policy::access_ends`] watches the grants and resolves when none covers the
//! caller any more, so the connection is cut on time.

use std::{
    fmt,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::watch;

use super::{
    limits::{Exceeded, Limits, LiveGuard},
    origin::Origin,
};
use crate::{
    access::{Cover, GrantIndex, Keys},
    config::{Config, Limit},
    host::users::Users,
    time::now_ms,
};

/// How often a live connection re-checks its cover even when nothing
/// changed: bounds the effect of wall-clock jumps on "ends on time".
const RECHECK: Duration = Duration::from_secs(1);

/// The decision on one connection.
#[derive(Debug)]
pub enum Verdict {
    Allow(Allowed),
    Deny(DenyReason),
}

/// A connection that may pass, and what let it.
#[derive(Debug)]
pub struct Allowed {
    /// The grant that covers the caller and reaches furthest.
    pub cover: Cover,
    /// The identities the caller was matched by.
    pub keys: Keys,
    pub target: u32,
    /// The caller's live-connection slot; freed when the connection ends.
    pub slot: LiveGuard,
}

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// The kernel has no record of this connection: it did not come through
    /// the redirect (or its client is already gone). Never forwarded blind.
    NoRecord,
    /// The record names a target the running config does not have.
    UnknownTarget(u32),
    /// No live grant covers the caller on the target.
    NoGrant { uid: u32, target: String },
    /// More new connections per second than the target allows.
    RateLimited,
    /// Too many live connections to the target.
    TooManyConnections(u32),
    /// The "allowed" record could not be written: no record, no access.
    AuditUnavailable(String),
}

impl DenyReason {
    /// Stable code for records and `jitproxy why`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoRecord => "no_record",
            Self::UnknownTarget(_) => "unknown_target",
            Self::NoGrant { .. } => "no_grant",
            Self::RateLimited => "rate_limited",
            Self::TooManyConnections(_) => "too_many_connections",
            Self::AuditUnavailable(_) => "audit_unavailable",
        }
    }
}

/// Decides on connections from the current grants and limits.
#[derive(Debug, Clone)]
pub struct Policy {
    index: watch::Receiver<Arc<GrantIndex>>,
    users: Users,
    limits: Limits,
    /// Per target (by index): its name and connection limits.
    targets: Arc<[(String, Limit)]>,
}

impl Policy {
    pub fn new(
        index: watch::Receiver<Arc<GrantIndex>>,
        users: Users,
        limits: Limits,
        targets: Arc<[(String, Limit)]>,
    ) -> Self {
        Self {
            index,
            users,
            limits,
            targets,
        }
    }

    /// A policy over the grants in `index` and the targets of `config`.
    pub fn for_config(
        index: watch::Receiver<Arc<GrantIndex>>,
        users: Users,
        config: &Config,
    ) -> Self {
        Self::new(
            index,
            users,
            Limits::new(),
            config
                .targets
                .iter()
                .map(|t| (t.name.clone(), t.limits))
                .collect(),
        )
    }

    /// The name of target `id` in the running config.
    pub fn target_name(&self, id: u32) -> Option<&str> {
        self.targets.get(id as usize).map(|(name, _)| name.as_str())
    }

    /// The verdict on a connection from `origin`.
    pub async fn decide(&self, origin: &Origin) -> Verdict {
        let target = origin.target_id;
        let Some((target_name, limit)) = self.targets.get(target as usize) else {
            return Verdict::Deny(DenyReason::UnknownTarget(target));
        };
        let uid = origin.caller.principal_uid();
        let index = Arc::clone(&self.index.borrow());
        let gids = if index.has_group_grants() {
            self.users.groups(uid).await.to_vec()
        } else {
            Vec::new()
        };
        let keys = Keys { uid, gids };
        let Some(cover) = index.cover(&keys, target, now_ms()) else {
            return Verdict::Deny(DenyReason::NoGrant {
                uid,
                target: target_name.clone(),
            });
        };
        match self.limits.acquire(uid, target, limit, Instant::now()) {
            Ok(slot) => Verdict::Allow(Allowed {
                cover,
                keys,
                target,
                slot,
            }),
            Err(Exceeded::Rate) => Verdict::Deny(DenyReason::RateLimited),
            Err(Exceeded::Concurrency(max)) => Verdict::Deny(DenyReason::TooManyConnections(max)),
        }
    }

    /// Resolves when no grant covers `keys` on `target` any more (expiry,
    /// revoke, drop), at most [`RECHECK`] late.
    pub fn access_ends(
        &self,
        keys: Keys,
        target: u32,
    ) -> impl std::future::Future<Output = &'static str> + Send + 'static {
        let mut index = self.index.clone();
        async move {
            loop {
                let now = now_ms();
                let until = index
                    .borrow_and_update()
                    .cover(&keys, target, now)
                    .map(|c| c.until);
                let Some(until) = until else {
                    return "grant ended";
                };
                let wait =
                    Duration::from_millis(u64::try_from(until - now).unwrap_or(0)).min(RECHECK);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    changed = index.changed() => {
                        if changed.is_err() {
                            // The grant service is gone: the daemon is stopping.
                            return "daemon shutdown";
                        }
                    }
                }
            }
        }
    }

    /// Live connections per (uid, target index).
    pub fn live(&self) -> Vec<(u32, u32, u32)> {
        self.limits.live()
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoRecord => f.write_str(
                "no kernel record for this connection: it did not come through the redirect, or its client closed before the proxy accepted it",
            ),
            Self::UnknownTarget(id) => write!(f, "target #{id} is not in the running config"),
            Self::NoGrant { uid, target } => {
                write!(f, "no live grant for uid {uid} on target `{target}`")
            }
            Self::RateLimited => f.write_str("rate limited: too many new connections per second"),
            Self::TooManyConnections(max) => write!(f, "too many live connections (at most {max})"),
            Self::AuditUnavailable(why) => write!(
                f,
                "the audit log cannot be written, so access is refused ({why})"
            ),
        }
    }
}
