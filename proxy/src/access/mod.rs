//! Access: the grant service. It creates, ends and lists grants, checks who
//! may do what ([`authz`]), keeps the in-memory [`GrantIndex`] in step with
//! the [`GrantStore`], remembers refusals for `jitproxy why` ([`refusals`]),
//! and records each grant's end ([`expiry`]).
//!
//! It knows nothing of HTTP: callers get an [`AccessError`] with a kind, a
//! message and a hint, and map it to their own protocol.

mod authz;
mod expiry;
pub mod index;
pub mod model;
pub mod notice;
mod refusals;
mod requests;
pub mod scope;
pub mod store;

use std::{
    fmt,
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use index::{Cover, GrantIndex, Keys};
pub use model::{
    AccessRequest, Approval, EndKind, Ending, Grant, GrantState, Outcome, Principal, RequestKind,
    RequestState, Scope, Subject,
};
pub use refusals::{Refusal, Why};
pub use requests::{ApproveAsk, Decided, RequestAsk};
pub use store::{
    AccessStore, Approved, Delivery, GrantStore, Inserted, NewGrant, NewRequest, Outbox,
    RequestStore, Route, StoreError,
};

use crate::{
    audit::{query, AuditLog, Event, EventKind, Record, UserInfo},
    config::{Config, SharedConfig, TargetRef},
    host::users::{self, Users},
    time::{self, Clock, UnixMs},
};
use refusals::Refusals;

/// The uid that grants are matched against, for a process of `uid` with
/// `login_uid`: the one rule for connections and control requests.
///
/// The login uid counts only for root (after `sudo` or `su`, the human who
/// logged in). A non-root process whose login uid is unset may set it once,
/// to any value, without privilege, so for it the login uid is a claim, not
/// an identity: it is recorded, never trusted.
pub fn principal_uid(uid: u32, login_uid: Option<u32>) -> u32 {
    match (uid, login_uid) {
        (0, Some(login)) => login,
        _ => uid,
    }
}

/// Who asks the grant service for something: the uid the kernel vouches for,
/// and the login uid of the asking process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requester {
    pub uid: u32,
    pub login_uid: Option<u32>,
}

impl Requester {
    /// The human behind the request ([`principal_uid`]): the same rule as
    /// for connections, so `drop` and `why` act on the grants that the
    /// caller's connections are matched against.
    pub fn human_uid(&self) -> u32 {
        principal_uid(self.uid, self.login_uid)
    }

    /// The requester as recorded on grants (granted by, ended by).
    async fn principal(&self, users: &Users) -> Principal {
        Principal {
            uid: self.uid,
            name: users.name(self.uid).await,
            login_uid: self.login_uid.filter(|&l| l != self.uid),
        }
    }
}

/// A new grant, as asked for.
#[derive(Debug, Clone)]
pub struct GrantAsk {
    /// `alice`, `1001`, `user:alice`, `group:sre`, `group:1234`.
    pub who: String,
    pub target: String,
    /// Default (and at the earliest) now.
    pub starts_at: Option<UnixMs>,
    /// Exactly one of `ends_at` and `duration_secs`.
    pub ends_at: Option<UnixMs>,
    pub duration_secs: Option<u64>,
    pub reason: String,
    /// Request rules (`METHOD PATH`), on an inspect target; none: every
    /// request.
    pub allow: Vec<String>,
}

/// Which grants to revoke: by id, or a user's (on a target). Also the
/// control API's `POST /v1/revoke` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeAsk {
    #[serde(default)]
    pub id: Option<i64>,
    #[serde(default)]
    pub who: Option<String>,
    #[serde(default)]
    pub target: Option<String>,
}

/// Why the grant service said no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or out of bounds (the caller's to fix).
    Invalid,
    /// The requester may not do this.
    Forbidden,
    /// It names a target, user, group or grant that does not exist.
    NotFound,
    /// The daemon's fault (a store or task failure).
    Internal,
}

/// A refused or failed request: what went wrong and what to do next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AccessError {
    pub kind: ErrorKind,
    pub message: String,
    pub hint: String,
}

impl AccessError {
    fn new(kind: ErrorKind, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            hint: hint.into(),
        }
    }

    fn invalid(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message, hint)
    }

    fn forbidden(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, message, hint)
    }

    fn not_found(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message, hint)
    }

    /// The daemon's fault; the caller sees the details too (nothing secret is
    /// in grant store errors).
    fn internal(message: impl fmt::Display) -> Self {
        Self::new(
            ErrorKind::Internal,
            message.to_string(),
            "this is a jitproxy bug or a disk problem; see the daemon's log",
        )
    }
}

impl From<StoreError> for AccessError {
    fn from(e: StoreError) -> Self {
        Self::internal(e)
    }
}

/// Grants, their index, and recent refusals.
pub struct Access {
    config: SharedConfig,
    /// When this service (and so this daemon) started: an expiry before it
    /// happened while no daemon ran, and its record is late.
    started_at: UnixMs,
    clock: Clock,
    store: Arc<Mutex<Box<dyn AccessStore>>>,
    index: watch::Sender<Arc<GrantIndex>>,
    refusals: Refusals,
    audit: AuditLog,
    users: Users,
    /// Woken when a change may have queued notices in the outbox.
    outbox_wake: tokio::sync::Notify,
    /// Per human: request tokens left, and when they were counted.
    request_rate: Mutex<std::collections::HashMap<u32, (f64, UnixMs)>>,
}

impl Access {
    /// The grant service over `store`. The index is built from it; grants
    /// that ended while the daemon was down are not indexed, so they are not
    /// honoured (their expiry is recorded by [`Access::record_expiries`]).
    pub fn new(
        config: SharedConfig,
        store: impl AccessStore + 'static,
        audit: AuditLog,
        users: Users,
    ) -> Result<Arc<Self>, StoreError> {
        Self::with_clock(config, store, audit, users, Clock::Wall)
    }

    /// [`Access::new`], reading the time from `clock` (tests: Tokio's
    /// paused clock).
    pub fn with_clock(
        config: SharedConfig,
        mut store: impl AccessStore + 'static,
        audit: AuditLog,
        users: Users,
        clock: Clock,
    ) -> Result<Arc<Self>, StoreError> {
        let now = clock.now_ms();
        store.set_routes(routes_of(&config.load()));
        let index = build_index(&config.load(), &store.open_grants(now)?, now);
        let (tx, _) = watch::channel(Arc::new(index));
        Ok(Arc::new(Self {
            config,
            started_at: now,
            clock,
            store: Arc::new(Mutex::new(Box::new(store))),
            index: tx,
            refusals: Refusals::default(),
            audit,
            users,
            outbox_wake: tokio::sync::Notify::new(),
            request_rate: Mutex::default(),
        }))
    }

    /// The running config.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Takes `config` as the running config (a reload): the webhook routes
    /// and the grant index follow it (grants are matched to targets by
    /// name).
    pub async fn reconfigure(&self, config: Arc<Config>) -> Result<(), AccessError> {
        let routes = routes_of(&config);
        self.config.store(config);
        self.with_store(move |s| {
            s.set_routes(routes);
            Ok(())
        })
        .await?;
        self.rebuild().await
    }

    /// The audit log every access and grant change is written to.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// A receiver of the current index, for the decision stage.
    pub fn index(&self) -> watch::Receiver<Arc<GrantIndex>> {
        self.index.subscribe()
    }

    /// Number of grants in the index (live or pending).
    pub fn open_grants(&self) -> usize {
        self.index.borrow().len()
    }

    /// Creates a grant (approvers of its target only), never for the
    /// approver themselves: the human behind the caller, or a group they are
    /// in. They ask with `request` or `break-glass` like everyone else.
    pub async fn grant(&self, by: &Requester, ask: GrantAsk) -> Result<Grant, AccessError> {
        let target = self.find_target(&ask.target)?;
        self.require_target_approver(by, &target).await?;
        let reason = requests::check_reason(&ask.reason)?;
        let now = self.clock.now_ms();
        let starts_at = ask.starts_at.unwrap_or(now).max(now);
        let ends_at = match (ask.ends_at, ask.duration_secs) {
            (Some(end), None) => end,
            (None, Some(secs)) => {
                let ms = i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
                starts_at.saturating_add(ms)
            }
            _ => {
                return Err(AccessError::invalid(
                    "give exactly one of a duration and an end time",
                    "use --for 2h or --until 18:00",
                ))
            }
        };
        if ends_at <= starts_at {
            return Err(AccessError::invalid(
                "the window ends before it starts (or is empty)",
                "use an end time in the future, after --from",
            ));
        }
        let max_ms = i64::try_from(target.max_grant.as_millis()).unwrap_or(i64::MAX);
        if ends_at - starts_at > max_ms {
            return Err(AccessError::invalid(
                format!(
                    "the window is longer than target `{}` allows ({})",
                    target.name,
                    humantime::format_duration(target.max_grant)
                ),
                "grant a shorter window; the maximum binds everyone, root included",
            ));
        }
        let scopes = scopes_of(&ask.allow, &target)?;
        let (subject, subject_name) = resolve_subject(&ask.who).await?;
        self.refuse_self_grant(by, subject, &target).await?;
        let granted_by = by.principal(&self.users).await;
        let new = NewGrant {
            subject,
            subject_name,
            target: target.name.clone(),
            starts_at,
            ends_at,
            reason,
            granted_by: granted_by.clone(),
            scopes,
            request_id: None,
        };
        let grant = self.change(move |store| store.insert(&new, now)).await?;
        self.audit.record(grant_event(
            EventKind::GrantCreated,
            &grant,
            Some(&granted_by),
        ));
        self.rebuild().await?;
        Ok(grant)
    }

    /// Refuses a grant whose `subject` is the human behind `by` or a group
    /// they are in.
    async fn refuse_self_grant(
        &self,
        by: &Requester,
        subject: Subject,
        target: &crate::config::Target,
    ) -> Result<(), AccessError> {
        let human = by.human_uid();
        let own = match subject {
            Subject::User(uid) => uid == human,
            Subject::Group(gid) => self.users.groups(human).await.contains(&gid),
        };
        if !own {
            return Ok(());
        }
        Err(AccessError::forbidden(
            match subject {
                Subject::User(uid) => {
                    format!("you (uid {uid}) may not grant access to yourself")
                }
                Subject::Group(gid) => format!(
                    "you (uid {human}) may not grant access to a group you belong to (gid {gid})"
                ),
            },
            format!(
                "ask for it: jitproxy request {0} --for 1h --reason \"...\" (approved by {1}), or in an emergency: jitproxy break-glass {0} --reason \"...\"",
                target.name,
                self.approvers_for(target).join(", ")
            ),
        ))
    }

    /// Approvers end anyone's grants.
    /// Approvers end grants on the targets they approve (top-level
    /// approvers and root: on every target).
    pub async fn revoke(&self, by: &Requester, ask: RevokeAsk) -> Result<Vec<Grant>, AccessError> {
        let mut theirs = std::collections::HashSet::new();
        let everywhere = self.is_approver(by).await;
        for target in &self.config().targets {
            if everywhere || authz::is_member(by, self.config().approvers_of(target)).await {
                theirs.insert(target.name.clone());
            }
        }
        if theirs.is_empty() {
            // Refused, unless root with no target configured: nothing to end.
            self.require_approver(by).await?;
            return Ok(Vec::new());
        }
        let may_end = |g: &Grant| everywhere || theirs.contains(&g.target);
        let now = self.clock.now_ms();
        let open = self.with_store(move |s| s.open_grants(now)).await?;
        let ids: Vec<i64> = match (&ask.id, &ask.who) {
            (Some(id), None) => {
                let Some(grant) = open.iter().find(|g| g.id == *id) else {
                    return Err(AccessError::not_found(
                        format!("no open grant with id {id}"),
                        "list them with `jitproxy grants --all`",
                    ));
                };
                if !may_end(grant) {
                    return Err(AccessError::forbidden(
                        format!("uid {} may not revoke grants on `{}`", by.uid, grant.target),
                        format!(
                            "ask one of: {}",
                            self.approvers_of_named(&grant.target).join(", ")
                        ),
                    ));
                }
                vec![*id]
            }
            (None, Some(who)) => {
                let (subject, _) = resolve_subject(who).await?;
                open.iter()
                    .filter(|g| {
                        g.subject == subject
                            && ask.target.as_ref().is_none_or(|t| &g.target == t)
                            && may_end(g)
                    })
                    .map(|g| g.id)
                    .collect()
            }
            _ => {
                return Err(AccessError::invalid(
                    "give a grant id, or a user (and optionally a target)",
                    "jitproxy revoke 17, or jitproxy revoke --user alice --target payments-api",
                ))
            }
        };
        self.end(by, ids, EndKind::Revoked).await
    }

    /// Anyone gives back their own user grants (on one target, or all).
    pub async fn drop_own(
        &self,
        by: &Requester,
        target: Option<String>,
    ) -> Result<Vec<Grant>, AccessError> {
        let me = Subject::User(by.human_uid());
        let now = self.clock.now_ms();
        let open = self.with_store(move |s| s.open_grants(now)).await?;
        let ids = open
            .iter()
            .filter(|g| g.subject == me && target.as_ref().is_none_or(|t| &g.target == t))
            .map(|g| g.id)
            .collect();
        self.end(by, ids, EndKind::Dropped).await
    }

    async fn end(
        &self,
        by: &Requester,
        ids: Vec<i64>,
        kind: EndKind,
    ) -> Result<Vec<Grant>, AccessError> {
        let by = by.principal(&self.users).await;
        let ending = Ending {
            at: self.clock.now_ms(),
            by: Some(by.clone()),
            kind,
        };
        let ended = self.change(move |s| s.end(&ids, &ending)).await?;
        for grant in &ended {
            self.audit
                .record(grant_event(end_event(kind), grant, Some(&by)));
        }
        self.rebuild().await?;
        Ok(ended)
    }

    /// Your own grants; everyone's with `all` for approvers.
    pub async fn list(&self, by: &Requester, all: bool) -> Result<Vec<Grant>, AccessError> {
        let approver = self.is_approver(by).await;
        if all && !approver {
            return Err(AccessError::forbidden(
                "only root and approvers may list everyone's grants",
                "run `jitproxy grants` without --all to see yours",
            ));
        }
        let me = by.human_uid();
        let my_groups = if approver {
            Arc::from([])
        } else {
            self.users.groups(me).await
        };
        let grants = self.with_store(|s| s.all(10_000)).await?;
        let now = self.clock.now_ms();
        Ok(grants
            .into_iter()
            .filter(|g| {
                let visible = all
                    || match g.subject {
                        Subject::User(uid) => uid == me,
                        Subject::Group(gid) => my_groups.contains(&gid),
                    };
                // Without --all, only grants that still matter.
                visible && (all || g.effective_end() > now - 24 * 3600 * 1000)
            })
            .collect())
    }

    /// Remembers a refused connection for `jitproxy why`.
    pub fn note_refusal(&self, refusal: Refusal) {
        self.refusals.note(refusal);
    }

    /// The requester's last refused connection, who can approve access to
    /// its target, and whether the requester may ask for it or break glass.
    pub async fn why(&self, by: &Requester) -> Why {
        let last_refusal = self.refusals.last_of(&[by.human_uid(), by.uid]);
        let target = last_refusal
            .as_ref()
            .and_then(|r| TargetRef::find(self.config(), &r.target));
        let Some(target) = target else {
            return Why {
                last_refusal,
                approvers: std::iter::once("root".to_owned())
                    .chain(self.config().approvers.iter().map(ToString::to_string))
                    .collect(),
                can_request: true,
                can_break_glass: false,
            };
        };
        let human = by.human_uid();
        Why {
            approvers: self.approvers_for(&target),
            can_request: match &target.access.requesters {
                None => true,
                Some(list) => human == 0 || authz::is_member_uid(human, list).await,
            },
            can_break_glass: human == 0
                || authz::is_member_uid(human, &target.access.break_glass).await,
            last_refusal,
        }
    }

    /// Root and auditors read the log.
    pub async fn audit_query(
        &self,
        by: &Requester,
        filter: query::Filter,
    ) -> Result<Vec<Record>, AccessError> {
        self.require_auditor(by).await?;
        let dir = self.config().audit_dir();
        tokio::task::spawn_blocking(move || query::read(&dir, &filter))
            .await
            .map_err(AccessError::internal)?
            .map_err(|e| AccessError::internal(format!("cannot read the audit log: {e}")))
    }

    /// Break-glass uses, and per-user totals, over the filtered records.
    pub async fn audit_summary(
        &self,
        by: &Requester,
        filter: query::Filter,
    ) -> Result<(Vec<query::BreakGlassUse>, Vec<query::UserSummary>), AccessError> {
        let records = self.audit_query(by, filter).await?;
        Ok((
            query::break_glass_uses(&records),
            query::summarize(&records),
        ))
    }

    /// Undelivered notices due now, oldest first (the webhook task).
    pub async fn outbox_due(&self, limit: usize) -> Result<Vec<Delivery>, AccessError> {
        let now = self.clock.now_ms();
        self.with_store(move |s| s.due(now, limit)).await
    }

    /// When the next undelivered notice is due.
    pub async fn outbox_next_due(&self) -> Result<Option<UnixMs>, AccessError> {
        self.with_store(|s| s.next_due()).await
    }

    pub async fn outbox_delivered(&self, id: i64) -> Result<(), AccessError> {
        let now = self.clock.now_ms();
        self.with_store(move |s| s.delivered(id, now)).await
    }

    pub async fn outbox_failed(
        &self,
        id: i64,
        retry_at: UnixMs,
        error: &str,
    ) -> Result<(), AccessError> {
        let error = error.to_owned();
        self.with_store(move |s| s.failed(id, retry_at, &error))
            .await
    }

    /// Notices not delivered yet (status).
    pub async fn outbox_undelivered(&self) -> Result<u64, AccessError> {
        self.with_store(|s| s.undelivered()).await
    }

    /// Resolves when a change may have queued notices.
    pub async fn outbox_changed(&self) {
        self.outbox_wake.notified().await;
    }

    /// Rebuilds the index from the store and publishes it.
    async fn rebuild(&self) -> Result<(), AccessError> {
        let now = self.clock.now_ms();
        let open = self.with_store(move |s| s.open_grants(now)).await?;
        let index = build_index(&self.config(), &open, now);
        self.index.send_replace(Arc::new(index));
        Ok(())
    }

    /// Runs the store change `f` (see [`Access::with_store`]) and wakes the
    /// webhook task: a change queues its notices in the same transaction,
    /// so every change goes through here.
    async fn change<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn AccessStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, AccessError> {
        let changed = self.with_store(f).await;
        self.outbox_wake.notify_one();
        changed
    }

    /// Runs `f` on the store, off the runtime (store calls block on disk).
    async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn AccessStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, AccessError> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || {
            let mut store = store.lock().unwrap_or_else(|p| p.into_inner());
            f(store.as_mut())
        })
        .await
        .map_err(|e| AccessError::internal(format!("grant store task failed: {e}")))?
        .map_err(AccessError::from)
    }

    fn target_names(&self) -> String {
        self.config()
            .targets
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The audit event of a grant change made by `by` (no one for an expiry).
/// A grant's `--allow` rules, checked; only an inspect target can enforce
/// them.
fn scopes_of(allow: &[String], target: &crate::config::Target) -> Result<Vec<Scope>, AccessError> {
    if allow.is_empty() {
        return Ok(Vec::new());
    }
    if target.mode.inspect().is_none() {
        return Err(AccessError::invalid(
            format!(
                "target `{}` is a passthrough target, which cannot see requests",
                target.name
            ),
            "grant without --allow, or make the target `mode = \"inspect\"`",
        ));
    }
    scope::Scope::parse(allow)
        .map_err(|e| AccessError::invalid(e.to_string(), "fix the --allow rule"))?
        .rules()
        .map(|rule| {
            rule.parse::<Scope>()
                .map_err(|e| AccessError::invalid(e, "fix the --allow rule"))
        })
        .collect()
}

fn grant_event(kind: EventKind, grant: &Grant, by: Option<&Principal>) -> Event {
    let mut event = Event::new(kind);
    event.grant_id = Some(grant.id);
    event.target = Some(grant.target.clone());
    event.reason = Some(grant.reason.clone());
    event.user = subject_user(grant);
    let (who, subject_id) = grant.subject.parts();
    let mut detail = serde_json::json!({
        "who": who,
        "subject_id": subject_id,
        "starts_at": time::timestamp(grant.starts_at),
        "ends_at": time::timestamp(grant.ends_at),
    });
    if let Some(by) = by {
        detail["by"] = serde_json::json!(by);
    }
    if let Some(request_id) = grant.request_id {
        detail["request_id"] = serde_json::json!(request_id);
    }
    if !grant.scopes.is_empty() {
        detail["allow"] = serde_json::json!(grant
            .scopes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>());
    }
    event.detail = Some(detail);
    event
}

/// The audit event kind of a grant's end.
fn end_event(kind: EndKind) -> EventKind {
    match kind {
        EndKind::Revoked => EventKind::GrantRevoked,
        EndKind::Dropped => EventKind::GrantDropped,
        EndKind::Expired => EventKind::GrantExpired,
    }
}

/// The user a grant is for (none for group grants).
fn subject_user(grant: &Grant) -> Option<UserInfo> {
    match grant.subject {
        Subject::User(uid) => Some(UserInfo {
            name: grant.subject_name.clone(),
            uid,
            login_uid: None,
        }),
        Subject::Group(_) => None,
    }
}

/// Which webhooks get which notices, as `config` says.
fn routes_of(config: &Config) -> Vec<Route> {
    config
        .notify
        .iter()
        .map(|n| Route {
            name: n.name.clone(),
            events: n.events.clone(),
        })
        .collect()
}

/// The index of `grants` on `config`'s targets. A grant with `--allow`
/// rules covers nothing on a target that cannot enforce them (one a reload
/// made passthrough): it would admit whole connections otherwise.
fn build_index(config: &Config, grants: &[Grant], now: UnixMs) -> GrantIndex {
    let enforceable = |g: &&Grant| {
        g.scopes.is_empty()
            || config
                .targets
                .iter()
                .any(|t| t.name == g.target && !t.retired && t.mode.inspect().is_some())
    };
    GrantIndex::build(grants.iter().filter(enforceable), now, |name| {
        config.target_id(name)
    })
}

async fn resolve_subject(who: &str) -> Result<(Subject, Option<String>), AccessError> {
    let who = who.to_owned();
    tokio::task::spawn_blocking(move || match who.strip_prefix("group:") {
        Some(group) => users::resolve_group(group).map(|(gid, name)| (Subject::Group(gid), name)),
        None => users::resolve_user(who.strip_prefix("user:").unwrap_or(&who))
            .map(|(uid, name)| (Subject::User(uid), name)),
    })
    .await
    .map_err(AccessError::internal)?
    .map_err(|e| {
        AccessError::not_found(
            e,
            "check the name with `getent passwd NAME` or `getent group NAME`",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_is_matched_by_its_login_uid() {
        // alice behind sudo: her own grant, not root's.
        assert_eq!(principal_uid(0, Some(1001)), 1001);
        assert_eq!(principal_uid(0, None), 0);
        // A non-root process may have set its own login uid: never trusted.
        assert_eq!(principal_uid(65534, Some(1001)), 65534);
        assert_eq!(principal_uid(1001, None), 1001);
    }
}
