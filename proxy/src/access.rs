//! The grant service: creates, ends and lists grants for the control API,
//! checks who may do what, keeps the in-memory [`GrantIndex`] in step with
//! the store, records refusals for `jitproxy why`, and writes a record when a
//! grant expires.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    audit::{
        kind,
        log::AuditLog,
        query::{self, Filter, UserSummary},
        Event, Record, UserInfo,
    },
    config::{Approver, Config},
    control::{
        proto::{DropRequest, GrantRequest, Refusal, RevokeRequest, WhyView},
        ApiError, Peer,
    },
    grants::{
        now_ms,
        store::{NewGrant, Store, StoreError},
        EndKind, Grant, GrantIndex, Subject, UnixMs,
    },
    users,
};

/// How often the expiry task wakes even when no grant is due (catches clock
/// jumps).
const EXPIRY_TICK: Duration = Duration::from_secs(5);

/// Grants, their index, and recent refusals.
pub struct Access {
    config: Arc<Config>,
    store: Arc<Mutex<Store>>,
    index: watch::Sender<Arc<GrantIndex>>,
    refusals: Mutex<HashMap<u32, Refusal>>,
    audit: AuditLog,
}

impl Access {
    /// Opens the grant database in the config's state directory and builds
    /// the index from it. Grants that ended while the daemon was down are not
    /// indexed, so they are not honoured.
    pub fn open(config: Arc<Config>, audit: AuditLog) -> Result<Arc<Self>, StoreError> {
        create_private_dir(&config.state_dir).map_err(|source| StoreError::Dir {
            path: config.state_dir.display().to_string(),
            source,
        })?;
        let store = Store::open(&config.state_dir.join("grants.db"))?;
        Self::from_store(config, store, audit)
    }

    /// An access service over a given store (tests use an in-memory one).
    pub fn from_store(
        config: Arc<Config>,
        store: Store,
        audit: AuditLog,
    ) -> Result<Arc<Self>, StoreError> {
        let now = now_ms();
        let index = build_index(&config, &store.open_grants(now)?, now);
        let (tx, _) = watch::channel(Arc::new(index));
        Ok(Arc::new(Self {
            config,
            store: Arc::new(Mutex::new(store)),
            index: tx,
            refusals: Mutex::new(HashMap::new()),
            audit,
        }))
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

    /// `POST /v1/grants`.
    pub async fn grant(&self, peer: &Peer, req: GrantRequest) -> Result<Grant, ApiError> {
        self.require_approver(peer).await?;
        let reason = req.reason.trim().to_owned();
        if reason.is_empty() {
            return Err(ApiError::bad_request(
                "a reason is required",
                "give a ticket or a sentence, e.g. --reason INC-1234",
            ));
        }
        if reason.len() > 1024 {
            return Err(ApiError::bad_request(
                "the reason is longer than 1024 bytes",
                "shorten it",
            ));
        }
        let Some(target) = self.config.targets.iter().find(|t| t.name == req.target) else {
            return Err(ApiError::not_found(
                format!("no target named `{}`", req.target),
                format!("targets: {}", self.target_names()),
            ));
        };
        let now = now_ms();
        let starts_at = req.starts_at.map_or(now, |t| t.as_millisecond()).max(now);
        let ends_at = match (req.ends_at, req.duration_secs) {
            (Some(end), None) => end.as_millisecond(),
            (None, Some(secs)) => {
                let ms = i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
                starts_at.saturating_add(ms)
            }
            _ => {
                return Err(ApiError::bad_request(
                    "give exactly one of a duration and an end time",
                    "use --for 2h or --until 18:00",
                ))
            }
        };
        if ends_at <= starts_at {
            return Err(ApiError::bad_request(
                "the window ends before it starts (or is empty)",
                "use an end time in the future, after --from",
            ));
        }
        let max_ms = i64::try_from(target.max_grant.as_millis()).unwrap_or(i64::MAX);
        if ends_at - starts_at > max_ms {
            return Err(ApiError::bad_request(
                format!(
                    "the window is longer than target `{}` allows ({})",
                    target.name,
                    humantime::format_duration(target.max_grant)
                ),
                "grant a shorter window; the maximum binds everyone, root included",
            ));
        }
        let (subject, subject_name) = resolve_subject(&req.who).await?;
        let new = NewGrant {
            subject,
            subject_name,
            target: target.name.clone(),
            starts_at,
            ends_at,
            reason,
            granted_by: peer.principal(),
            scopes: Vec::new(),
        };
        let grant = self
            .with_store(move |store| store.insert(&new, now))
            .await?;
        self.audit
            .record(grant_event(kind::GRANT_CREATED, &grant, peer));
        tracing::info!(
            target: "jitproxy::audit",
            event = "grant.created",
            grant_id = grant.id,
            who = ?grant.subject,
            who_name = grant.subject_name.as_deref().unwrap_or(""),
            target_name = %grant.target,
            starts_at = grant.starts_at,
            ends_at = grant.ends_at,
            reason = %grant.reason,
            by_uid = grant.granted_by.uid,
            by_login_uid = grant.granted_by.login_uid.map_or(-1, i64::from),
            "grant {} created for {} on {}",
            grant.id,
            grant.subject_name.as_deref().unwrap_or("?"),
            grant.target
        );
        self.rebuild().await?;
        Ok(grant)
    }

    /// `POST /v1/revoke`: approvers end anyone's grants.
    pub async fn revoke(&self, peer: &Peer, req: RevokeRequest) -> Result<Vec<Grant>, ApiError> {
        self.require_approver(peer).await?;
        let now = now_ms();
        let open = self.with_store(move |s| s.open_grants(now)).await?;
        let ids: Vec<i64> = match (&req.id, &req.who) {
            (Some(id), None) => {
                if !open.iter().any(|g| g.id == *id) {
                    return Err(ApiError::not_found(
                        format!("no open grant with id {id}"),
                        "list them with `jitproxy grants --all`",
                    ));
                }
                vec![*id]
            }
            (None, Some(who)) => {
                let (subject, _) = resolve_subject(who).await?;
                open.iter()
                    .filter(|g| {
                        g.subject == subject && req.target.as_ref().is_none_or(|t| &g.target == t)
                    })
                    .map(|g| g.id)
                    .collect()
            }
            _ => {
                return Err(ApiError::bad_request(
                    "give a grant id, or a user (and optionally a target)",
                    "jitproxy revoke 17, or jitproxy revoke --user alice --target payments-api",
                ))
            }
        };
        self.end(peer, ids, EndKind::Revoked).await
    }

    /// `POST /v1/drop`: anyone gives back their own user grants.
    pub async fn drop_own(&self, peer: &Peer, req: DropRequest) -> Result<Vec<Grant>, ApiError> {
        let me = Subject::User(peer.human_uid());
        let now = now_ms();
        let open = self.with_store(move |s| s.open_grants(now)).await?;
        let ids = open
            .iter()
            .filter(|g| g.subject == me && req.target.as_ref().is_none_or(|t| &g.target == t))
            .map(|g| g.id)
            .collect();
        self.end(peer, ids, EndKind::Dropped).await
    }

    async fn end(&self, peer: &Peer, ids: Vec<i64>, kind: EndKind) -> Result<Vec<Grant>, ApiError> {
        let by = peer.principal();
        let now = now_ms();
        let ended = self
            .with_store(move |s| s.end(&ids, &by, kind, now))
            .await?;
        for grant in &ended {
            let code = if kind == EndKind::Revoked {
                kind::GRANT_REVOKED
            } else {
                kind::GRANT_DROPPED
            };
            self.audit.record(grant_event(code, grant, peer));
            tracing::info!(
                target: "jitproxy::audit",
                event = if kind == EndKind::Revoked { "grant.revoked" } else { "grant.dropped" },
                grant_id = grant.id,
                who = ?grant.subject,
                target_name = %grant.target,
                reason = %grant.reason,
                by_uid = peer.uid,
                by_login_uid = peer.login_uid.map_or(-1, i64::from),
                "grant {} {}",
                grant.id,
                if kind == EndKind::Revoked { "revoked" } else { "dropped" }
            );
        }
        self.rebuild().await?;
        Ok(ended)
    }

    /// `GET /v1/grants`: your own grants; everyone's with `all` for approvers.
    pub async fn list(&self, peer: &Peer, all: bool) -> Result<Vec<Grant>, ApiError> {
        let approver = self.is_approver(peer).await;
        if all && !approver {
            return Err(ApiError::forbidden(
                "only root and approvers may list everyone's grants",
                "run `jitproxy grants` without --all to see yours",
            ));
        }
        let me = peer.human_uid();
        let my_groups = if approver {
            Vec::new()
        } else {
            groups_of(me).await
        };
        let grants = self.with_store(|s| s.all(10_000)).await?;
        let now = now_ms();
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
        let mut refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        refusals.insert(refusal.uid, refusal);
    }

    /// `GET /v1/why`.
    pub fn why(&self, peer: &Peer) -> WhyView {
        let refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        let last_refusal = [Some(peer.human_uid()), Some(peer.uid)]
            .into_iter()
            .flatten()
            .filter_map(|uid| refusals.get(&uid))
            .max_by_key(|r| r.at)
            .cloned();
        WhyView {
            last_refusal,
            approvers: self
                .config
                .approvers
                .iter()
                .map(ToString::to_string)
                .collect(),
        }
    }

    /// Runs until shutdown: records each grant's expiry when it happens and
    /// rebuilds the index so expired grants leave it.
    pub async fn run_expiry(self: Arc<Self>, shutdown: CancellationToken) {
        let mut due: HashMap<i64, UnixMs> = HashMap::new();
        loop {
            let now = now_ms();
            match self.with_store(move |s| s.open_grants(now)).await {
                Ok(open) => {
                    for g in &open {
                        due.insert(g.id, g.ends_at);
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot read grants for expiry"),
            }
            let now = now_ms();
            let expired: Vec<i64> = due
                .iter()
                .filter(|(_, &end)| end <= now)
                .map(|(&id, _)| id)
                .collect();
            for id in &expired {
                due.remove(id);
                tracing::info!(target: "jitproxy::audit", event = "grant.expired", grant_id = *id, "grant {id} expired");
                let id = *id;
                if let Ok(Some(grant)) = self.with_store(move |s| s.get(id)).await {
                    let mut event = Event::new(kind::GRANT_EXPIRED);
                    event.grant_id = Some(grant.id);
                    event.target = Some(grant.target.clone());
                    event.reason = Some(grant.reason.clone());
                    event.user = subject_user(&grant);
                    event.detail = Some(
                        serde_json::json!({ "ends_at": crate::control::proto::ts(grant.ends_at) }),
                    );
                    self.audit.record(event);
                }
            }
            if !expired.is_empty() {
                if let Err(e) = self.rebuild().await {
                    tracing::error!(error = %e.error, "cannot rebuild the grant index");
                }
            }
            let next = due.values().min().copied().map_or(EXPIRY_TICK, |end| {
                Duration::from_millis(u64::try_from(end - now).unwrap_or(0)).min(EXPIRY_TICK)
            });
            let mut changed = self.index.subscribe();
            tokio::select! {
                () = tokio::time::sleep(next) => {}
                _ = changed.changed() => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Rebuilds the index from the store and publishes it.
    async fn rebuild(&self) -> Result<(), ApiError> {
        let now = now_ms();
        let open = self.with_store(move |s| s.open_grants(now)).await?;
        let index = build_index(&self.config, &open, now);
        self.index.send_replace(Arc::new(index));
        Ok(())
    }

    async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || {
            let mut store = store.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut store)
        })
        .await
        .map_err(|e| ApiError::internal(format!("grant store task failed: {e}")))?
        .map_err(|e| ApiError::internal(e.to_string()))
    }

    /// `POST /v1/audit/query`: root and auditors read the log.
    pub async fn audit_query(&self, peer: &Peer, filter: Filter) -> Result<Vec<Record>, ApiError> {
        self.require_auditor(peer).await?;
        let dir = self.config.audit_dir();
        tokio::task::spawn_blocking(move || query::read(&dir, &filter))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::internal(format!("cannot read the audit log: {e}")))
    }

    /// `POST /v1/audit/summary`: per-user totals over the filtered records.
    pub async fn audit_summary(
        &self,
        peer: &Peer,
        filter: Filter,
    ) -> Result<Vec<UserSummary>, ApiError> {
        let records = self.audit_query(peer, filter).await?;
        Ok(query::summarize(&records))
    }

    async fn require_auditor(&self, peer: &Peer) -> Result<(), ApiError> {
        if is_member(peer, &self.config.audit.auditors).await {
            return Ok(());
        }
        Err(ApiError::forbidden(
            format!("uid {} may not read the audit log", peer.uid),
            "only root and the configured auditors (`[audit] auditors`) may",
        ))
    }

    async fn is_approver(&self, peer: &Peer) -> bool {
        is_member(peer, &self.config.approvers).await
    }

    async fn require_approver(&self, peer: &Peer) -> Result<(), ApiError> {
        if self.is_approver(peer).await {
            return Ok(());
        }
        let approvers: Vec<String> = self
            .config
            .approvers
            .iter()
            .map(ToString::to_string)
            .collect();
        Err(ApiError::forbidden(
            format!("uid {} may not grant or revoke access", peer.uid),
            if approvers.is_empty() {
                "only root may; ask an administrator".to_owned()
            } else {
                format!("ask one of: root, {}", approvers.join(", "))
            },
        ))
    }

    fn target_names(&self) -> String {
        self.config
            .targets
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Whether `peer` is root or in `list` (by user name, uid, or group).
async fn is_member(peer: &Peer, list: &[Approver]) -> bool {
    if peer.uid == 0 {
        return true;
    }
    let uid = peer.uid;
    let list = list.to_vec();
    tokio::task::spawn_blocking(move || {
        let name = users::user_name(uid);
        let groups = users::groups_of(uid);
        list.iter().any(|a| match a {
            Approver::User(u) => name.as_deref() == Some(u) || u.parse::<u32>().ok() == Some(uid),
            Approver::Group(g) => {
                users::resolve_group(g).is_ok_and(|(gid, _)| groups.contains(&gid))
            }
        })
    })
    .await
    .unwrap_or(false)
}

/// The audit event of a grant change made by `peer`.
fn grant_event(code: &str, grant: &Grant, peer: &Peer) -> Event {
    let mut event = Event::new(code);
    event.grant_id = Some(grant.id);
    event.target = Some(grant.target.clone());
    event.reason = Some(grant.reason.clone());
    event.user = subject_user(grant);
    let by = peer.principal();
    event.detail = Some(serde_json::json!({
        "who": match grant.subject { Subject::User(_) => "user", Subject::Group(_) => "group" },
        "subject_id": match grant.subject { Subject::User(id) | Subject::Group(id) => id },
        "starts_at": crate::control::proto::ts(grant.starts_at),
        "ends_at": crate::control::proto::ts(grant.ends_at),
        "by": by,
    }));
    event
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

fn build_index(config: &Config, grants: &[Grant], now: UnixMs) -> GrantIndex {
    GrantIndex::build(grants, now, |name| config.target_id(name))
}

async fn resolve_subject(who: &str) -> Result<(Subject, Option<String>), ApiError> {
    let who = who.to_owned();
    tokio::task::spawn_blocking(move || match who.strip_prefix("group:") {
        Some(group) => users::resolve_group(group).map(|(gid, name)| (Subject::Group(gid), name)),
        None => users::resolve_user(who.strip_prefix("user:").unwrap_or(&who))
            .map(|(uid, name)| (Subject::User(uid), name)),
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| {
        ApiError::not_found(
            e,
            "check the name with `getent passwd NAME` or `getent group NAME`",
        )
    })
}

async fn groups_of(uid: u32) -> Vec<u32> {
    tokio::task::spawn_blocking(move || users::groups_of(uid))
        .await
        .unwrap_or_default()
}

fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}
