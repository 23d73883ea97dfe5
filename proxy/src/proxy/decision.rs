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

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::{
    limits::{Exceeded, Limits, LiveGuard},
    origin::Origin,
};
use crate::{
    access::{index::RequestCover, Cover, GrantIndex, Keys},
    config::{Config, Limit},
    host::users::Users,
    time::Clock,
};

/// How often a live connection re-checks its cover even when nothing
/// changed: bounds the effect of wall-clock jumps on "ends on time".
const RECHECK: Duration = Duration::from_secs(1);

/// How long a connection whose grant's window has closed waits for the
/// expiry to be recorded (the expiry task writes `grant.expired`, then
/// changes the index) before it is cut anyway: so the grant's end comes
/// before the connection's in the audit log, and the cut is still within
/// the promised second.
const END_GRACE: Duration = Duration::from_millis(500);

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
    /// An inspect target that could not be set up (its CA, upstream roots
    /// or credential): refused rather than passed through uninspected.
    InspectUnavailable(Arc<str>),
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
            Self::InspectUnavailable(_) => "inspect_unavailable",
        }
    }
}

/// Decides on connections from the current grants and limits.
#[derive(Debug, Clone)]
pub struct Policy {
    index: watch::Receiver<Arc<GrantIndex>>,
    users: Users,
    limits: Limits,
    /// Per target (by index): its name and connection limits; swapped
    /// whole when the config is reloaded.
    targets: Arc<ArcSwap<TargetTable>>,
    clock: Clock,
}

/// A target's name and connection limits.
pub type TargetEntry = (Arc<str>, Limit);

/// Each target's entry, by position (its number).
type TargetTable = Vec<TargetEntry>;

/// The target table of `config`.
fn targets_of(config: &Config) -> TargetTable {
    config
        .targets
        .iter()
        .map(|t| (Arc::from(t.name.as_str()), t.limits))
        .collect()
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
            targets: Arc::new(ArcSwap::from_pointee(
                targets
                    .iter()
                    .map(|(name, limit)| (Arc::from(name.as_str()), *limit))
                    .collect(),
            )),
            clock: Clock::Wall,
        }
    }

    /// Takes the targets of `config` (a reload). Their numbers are their
    /// positions, which a reload keeps for the targets it keeps.
    pub fn retarget(&self, config: &Config) {
        self.targets.store(Arc::new(targets_of(config)));
    }

    /// The same policy, reading the time from `clock`.
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// A policy over the grants in `index` and the targets of `config`.
    pub fn for_config(
        index: watch::Receiver<Arc<GrantIndex>>,
        users: Users,
        config: &Config,
    ) -> Self {
        Self {
            index,
            users,
            limits: Limits::new(),
            targets: Arc::new(ArcSwap::from_pointee(targets_of(config))),
            clock: Clock::Wall,
        }
    }

    /// The verdict on a `method` request for `raw_path` from `keys` on
    /// `target`: a live grant's scopes must allow it.
    pub fn request_verdict(
        &self,
        keys: &Keys,
        target: u32,
        method: &str,
        raw_path: &str,
    ) -> RequestCover {
        let now = self.clock.now_ms();
        self.index
            .borrow()
            .request_cover(keys, target, now, method, raw_path)
    }

    /// Target `id` of the running config: its name and limits (read once
    /// per connection, then passed to [`Policy::decide`]).
    pub fn target(&self, id: u32) -> Option<TargetEntry> {
        self.targets.load().get(id as usize).cloned()
    }

    /// The verdict on a connection from `origin` to its target, `entry`
    /// (from [`Policy::target`]).
    pub async fn decide(&self, origin: &Origin, entry: &TargetEntry) -> Verdict {
        let target = origin.target_id;
        let (target_name, limit) = entry;
        let uid = origin.caller.principal_uid();
        let index = Arc::clone(&self.index.borrow());
        let gids = if index.has_group_grants() {
            self.users.groups(uid).await.to_vec()
        } else {
            Vec::new()
        };
        let keys = Keys { uid, gids };
        let Some(cover) = index.cover(&keys, target, self.clock.now_ms()) else {
            return Verdict::Deny(DenyReason::NoGrant {
                uid,
                target: target_name.to_string(),
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

    /// Resolves when no grant covers `keys` on `target` any more: at once
    /// on a revoke or drop (the index changes), and when a window closes by
    /// time once its expiry is recorded, at most [`END_GRACE`] after the
    /// window's end (and [`RECHECK`] after a wall-clock jump).
    pub fn access_ends(
        &self,
        keys: Keys,
        target: u32,
    ) -> impl std::future::Future<Output = &'static str> + Send + 'static {
        let mut index = self.index.clone();
        let clock = self.clock;
        async move {
            loop {
                let now = clock.now_ms();
                let until = index
                    .borrow_and_update()
                    .cover(&keys, target, now)
                    .map(|c| c.until);
                let Some(until) = until else {
                    return "grant ended";
                };
                let wait =
                    Duration::from_millis(u64::try_from(until - now).unwrap_or(0)).min(RECHECK);
                let changed = tokio::select! {
                    () = tokio::time::sleep(wait) => {
                        if clock.now_ms() < until {
                            continue;
                        }
                        // The window closed: give the expiry task its
                        // moment to record it first.
                        match tokio::time::timeout(END_GRACE, index.changed()).await {
                            Ok(changed) => changed,
                            Err(_) => Ok(()),
                        }
                    }
                    changed = index.changed() => changed,
                };
                if changed.is_err() {
                    // The grant service is gone: the daemon is stopping.
                    return "daemon shutdown";
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
            Self::InspectUnavailable(why) => write!(
                f,
                "the target is inspected, and its inspection is not set up ({why}); the operator must fix the config"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    //! "Access ends on time", on Tokio's paused clock: time passes only when
    //! a test advances it, so these assert what happens when, not how fast
    //! a machine is.
    use std::pin::pin;

    use super::*;
    use crate::{
        access::{Grant, Principal, Subject},
        time::UnixMs,
    };

    const T0: UnixMs = 1_800_000_000_000;
    const ALICE: u32 = 1001;

    fn grant(id: i64, ends_at: UnixMs) -> Grant {
        Grant {
            id,
            subject: Subject::User(ALICE),
            subject_name: None,
            target: "api".into(),
            starts_at: T0 - 1000,
            ends_at,
            reason: "INC-1".into(),
            granted_by: Principal {
                uid: 0,
                name: None,
                login_uid: None,
            },
            created_at: T0 - 1000,
            ended: None,
            scopes: Vec::new(),
            request_id: None,
        }
    }

    fn index(grants: &[Grant]) -> Arc<GrantIndex> {
        Arc::new(GrantIndex::build(grants, T0, |t| (t == "api").then_some(0)))
    }

    /// A policy over `grants` whose clock reads [`T0`] now, and the sender
    /// the grant service would change the index with.
    fn policy(grants: &[Grant]) -> (watch::Sender<Arc<GrantIndex>>, Policy) {
        let (tx, rx) = watch::channel(index(grants));
        let targets: Arc<[(String, Limit)]> = Arc::from(vec![("api".to_owned(), Limit::default())]);
        let policy = Policy::new(rx, Users::new(), Limits::new(), targets)
            .with_clock(Clock::following_tokio(T0));
        (tx, policy)
    }

    fn alice() -> Keys {
        Keys {
            uid: ALICE,
            gids: Vec::new(),
        }
    }

    /// Polls `fut` once: its output if it is ready.
    async fn ready<F: std::future::Future + Unpin>(fut: &mut F) -> Option<F::Output> {
        tokio::select! {
            biased;
            out = fut => Some(out),
            () = std::future::ready(()) => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn access_ends_when_the_window_does_once_the_expiry_is_recorded() {
        let (tx, policy) = policy(&[grant(1, T0 + 5000)]);
        let mut ends = pin!(policy.access_ends(alice(), 0));
        tokio::time::advance(Duration::from_millis(4999)).await;
        assert_eq!(ready(&mut ends).await, None, "cut before the window closed");
        tokio::time::advance(Duration::from_millis(2)).await;
        assert_eq!(
            ready(&mut ends).await,
            None,
            "cut before the expiry was recorded"
        );
        // The expiry task records the end and takes the grant out.
        tx.send_replace(index(&[]));
        assert_eq!(ready(&mut ends).await, Some("grant ended"));
    }

    #[tokio::test(start_paused = true)]
    async fn access_ends_within_the_grace_if_the_expiry_is_never_recorded() {
        let (_tx, policy) = policy(&[grant(1, T0 + 5000)]);
        let mut ends = pin!(policy.access_ends(alice(), 0));
        assert_eq!(ready(&mut ends).await, None);
        tokio::time::advance(Duration::from_millis(5000)).await;
        assert_eq!(ready(&mut ends).await, None, "no grace for the expiry");
        tokio::time::advance(END_GRACE - Duration::from_millis(1)).await;
        assert_eq!(ready(&mut ends).await, None);
        tokio::time::advance(Duration::from_millis(2)).await;
        assert_eq!(ready(&mut ends).await, Some("grant ended"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_revoke_ends_access_at_once_and_a_later_grant_keeps_it() {
        let (tx, policy) = policy(&[grant(1, T0 + 5000), grant(2, T0 + 60_000)]);
        let mut ends = pin!(policy.access_ends(alice(), 0));
        // The first grant's window closes: the second still covers alice.
        tokio::time::advance(Duration::from_secs(6)).await;
        tx.send_replace(index(&[grant(2, T0 + 60_000)]));
        assert_eq!(ready(&mut ends).await, None, "the later grant was ignored");
        // Revoked: ends now, whatever its window says.
        tx.send_replace(index(&[]));
        assert_eq!(ready(&mut ends).await, Some("grant ended"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_grant_service_going_away_is_a_shutdown() {
        let (tx, policy) = policy(&[grant(1, T0 + 60_000)]);
        let mut ends = pin!(policy.access_ends(alice(), 0));
        assert_eq!(ready(&mut ends).await, None);
        drop(tx);
        assert_eq!(ready(&mut ends).await, Some("daemon shutdown"));
    }
}
