//! Access requests: an engineer asks (`jitproxy request`), approvers decide
//! (`approve`, `deny`), and the grant exists once the target's `approvals`
//! distinct approvers said yes, none of them the requester. `auto_approve`
//! rules and break-glass give access at once, and say so. Who is who is the
//! human behind the caller ([`Requester::human_uid`]): the login uid for
//! root, the uid otherwise, as for connections.

use std::time::Duration;

use super::{
    authz::{is_member, is_member_uid},
    Access, AccessError, AccessRequest, Approval, Approved, Grant, Inserted, NewGrant, NewRequest,
    Outcome, Principal, RequestKind, RequestState, Requester, Subject,
};
use crate::{
    audit::{Event, EventKind, UserInfo},
    config::{Target, TargetRef},
    time::{self, UnixMs},
};

/// How far back `jitproxy requests --mine` looks.
const MINE_SINCE_MS: i64 = 7 * 24 * 3600 * 1000;
/// Most of one user's requests `--mine` lists.
const LIST_LIMIT: usize = 1000;
/// Requests (and break-glass uses) one human may make at once...
const REQUEST_BURST: f64 = 5.0;
/// ...and then one per this long.
const REQUEST_REFILL_MS: i64 = 120_000;

/// A request for access, as asked (`POST /v1/requests`).
#[derive(Debug, Clone)]
pub struct RequestAsk {
    pub target: String,
    pub duration_secs: u64,
    pub reason: String,
}

/// An approval, as given (`POST /v1/requests/ID/approve`).
#[derive(Debug, Clone, Default)]
pub struct ApproveAsk {
    /// A shorter window than asked for.
    pub duration_secs: Option<u64>,
    pub reason: Option<String>,
}

/// Where a request stands after a step: still waiting, or granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decided {
    Pending(AccessRequest),
    /// Boxed: a grant is large next to the pending case.
    Granted(AccessRequest, Box<Grant>),
}

impl Access {
    /// Anyone the target allows asks for access for themselves. An
    /// `auto_approve` rule that covers them and the window grants it at
    /// once; otherwise the request waits for approvers.
    pub async fn request(&self, by: &Requester, ask: RequestAsk) -> Result<Decided, AccessError> {
        let target = self.find_target(&ask.target)?;
        let human = by.human_uid();
        if let Some(requesters) = &target.access.requesters {
            if human != 0 && !is_member_uid(human, requesters).await {
                return Err(AccessError::forbidden(
                    format!("uid {human} may not request access to `{}`", target.name),
                    format!(
                        "the target allows requests from: {}",
                        list_of(requesters.iter().map(ToString::to_string))
                    ),
                ));
            }
        }
        let reason = check_reason(&ask.reason)?;
        let duration_ms = self.window_ms(&target, ask.duration_secs, target.max_grant)?;
        let auto = self.auto_rule(&target, human, duration_ms).await;
        let kind = if auto {
            RequestKind::AutoApproved
        } else {
            RequestKind::Asked
        };
        let (new, now) = self
            .new_request(by, &target, duration_ms, reason, kind)
            .await?;
        let requester = new.requester.clone();
        let grant = match auto {
            true => Some(self.new_grant_for(&new, now, duration_ms, &requester)),
            false => None,
        };
        let inserted = self
            .change(move |s| s.insert_request(&new, grant.as_ref(), now))
            .await?;
        let (request, grant) = match inserted {
            Inserted::Stored(request, grant) => (request, grant),
            Inserted::AlreadyPending(pending) => {
                return Err(AccessError::invalid(
                    format!(
                        "you already have a pending request for `{}` (#{})",
                        target.name, pending.id
                    ),
                    format!(
                        "wait for it (`jitproxy requests --mine`), or ask an approver ({}) to decide #{}",
                        self.approvers_for(&target).join(", "),
                        pending.id
                    ),
                ))
            }
        };
        self.audit.record(request_event(
            EventKind::RequestCreated,
            &request,
            Some(&requester),
        ));
        match grant {
            Some(grant) => {
                self.audit.record(super::grant_event(
                    EventKind::GrantCreated,
                    &grant,
                    Some(&grant.granted_by),
                ));
                self.rebuild().await?;
                Ok(Decided::Granted(request, grant))
            }
            None => Ok(Decided::Pending(request)),
        }
    }

    /// Immediate access in an emergency, for those the target allows: at
    /// most `break_glass_max`, flagged in the audit log, always notified.
    pub async fn break_glass(
        &self,
        by: &Requester,
        target: &str,
        duration_secs: Option<u64>,
        reason: &str,
    ) -> Result<(AccessRequest, Grant), AccessError> {
        let target = self.find_target(target)?;
        let human = by.human_uid();
        if human != 0 && !is_member_uid(human, &target.access.break_glass).await {
            return Err(AccessError::forbidden(
                format!("uid {human} may not break glass on `{}`", target.name),
                if target.access.break_glass.is_empty() {
                    format!(
                        "nobody may on this target; ask for access: jitproxy request {} --for 1h --reason \"...\"",
                        target.name
                    )
                } else {
                    format!(
                        "allowed: {}; or ask for access with `jitproxy request {}`",
                        list_of(target.access.break_glass.iter().map(ToString::to_string)),
                        target.name
                    )
                },
            ));
        }
        let reason = check_reason(reason)?;
        let max = target.access.break_glass_max;
        let secs = duration_secs.unwrap_or(max.as_secs());
        let duration_ms = self.window_ms(&target, secs, max)?;
        let (new, now) = self
            .new_request(by, &target, duration_ms, reason, RequestKind::BreakGlass)
            .await?;
        let requester = new.requester.clone();
        let grant = self.new_grant_for(&new, now, duration_ms, &requester);
        let inserted = self
            .change(move |s| s.insert_request(&new, Some(&grant), now))
            .await?;
        let Inserted::Stored(request, Some(grant)) = inserted else {
            return Err(AccessError::internal(
                "the break-glass grant was not stored",
            ));
        };
        let grant = *grant;
        if self.notified_of("break_glass.used").is_empty() {
            tracing::warn!(
                request_id = request.id,
                "break-glass used, and no [[notify]] webhook takes break_glass.used to tell anyone"
            );
        }
        tracing::warn!(request_id = request.id, grant_id = grant.id, uid = human, target = %request.target, "BREAK-GLASS access taken");
        let mut event = request_event(EventKind::BreakGlassUsed, &request, Some(&requester));
        event.grant_id = Some(grant.id);
        self.audit.record(event);
        self.audit.record(super::grant_event(
            EventKind::GrantCreated,
            &grant,
            Some(&grant.granted_by),
        ));
        self.rebuild().await?;
        Ok((request, grant))
    }

    /// An approver of the request's target says yes; the last approval
    /// needed creates the grant, from now, for the window asked (or the
    /// shorter one given).
    pub async fn approve(
        &self,
        by: &Requester,
        id: i64,
        ask: ApproveAsk,
    ) -> Result<Decided, AccessError> {
        let (request, target) = self.decidable(by, id).await?;
        let human = by.human_uid();
        if human == request.human_uid() {
            return Err(AccessError::forbidden(
                format!("request #{id} is your own; nobody approves their own request"),
                format!(
                    "ask another approver: {}",
                    self.approvers_for(&target).join(", ")
                ),
            ));
        }
        let reason = ask.reason.as_deref().map(check_reason).transpose()?;
        let duration_ms = match ask.duration_secs {
            Some(secs) => {
                let ms = self.window_ms(&target, secs, target.max_grant)?;
                if ms > request.duration_ms {
                    return Err(AccessError::invalid(
                        format!(
                            "--for is longer than the {} asked for",
                            humantime::format_duration(ms_to_duration(request.duration_ms))
                        ),
                        "an approver may shorten a request, not lengthen it",
                    ));
                }
                ms
            }
            None => self.window_ms(
                &target,
                u64::try_from(request.duration_ms / 1000).unwrap_or(0),
                target.max_grant,
            )?,
        };
        let now = self.clock.now_ms();
        let approver = self.principal_of(by).await;
        let approval = Approval {
            by: approver.clone(),
            at: now,
            reason,
        };
        let grant = new_grant(
            request.human,
            request.human_name.clone(),
            &request.target,
            &request.reason,
            now,
            duration_ms,
            &approver,
        );
        let approval_reason = approval.reason.clone();
        let approved = self
            .change(move |s| s.approve(id, human, &approval, &grant, now))
            .await?;
        let (request, grant) = match approved {
            Approved::Counted(request) => (request, None),
            Approved::Granted(request, grant) => (request, Some(*grant)),
            Approved::NotPending(request) => return Err(not_pending(&request, now)),
            Approved::AlreadyApproved(_) => {
                return Err(AccessError::invalid(
                    format!("you have already approved request #{id}"),
                    "it needs another approver",
                ))
            }
        };
        let mut event = request_event(EventKind::RequestApproved, &request, Some(&approver));
        if let (Some(d), Some(said)) = (event.detail.as_mut(), approval_reason) {
            d["approval_reason"] = serde_json::json!(said);
        }
        self.audit.record(event);
        match grant {
            Some(grant) => {
                self.audit.record(super::grant_event(
                    EventKind::GrantCreated,
                    &grant,
                    Some(&approver),
                ));
                self.rebuild().await?;
                Ok(Decided::Granted(request, Box::new(grant)))
            }
            None => Ok(Decided::Pending(request)),
        }
    }

    /// An approver of the request's target says no, with a reason the
    /// requester sees.
    pub async fn deny(
        &self,
        by: &Requester,
        id: i64,
        reason: &str,
    ) -> Result<AccessRequest, AccessError> {
        self.decidable(by, id).await?;
        let reason = check_reason(reason)?;
        let now = self.clock.now_ms();
        let denier = self.principal_of(by).await;
        let who = denier.clone();
        let denied = self.change(move |s| s.deny(id, &who, &reason, now)).await?;
        let Some(denied) = denied else {
            let current = self.get_any(id).await?;
            return Err(not_pending(&current, now));
        };
        self.audit.record(request_event(
            EventKind::RequestDenied,
            &denied,
            Some(&denier),
        ));
        Ok(denied)
    }

    /// `mine`: the caller's own requests of the last week. Otherwise, for
    /// approvers: the pending requests they may decide (not their own, not
    /// those they approved already).
    pub async fn requests(
        &self,
        by: &Requester,
        mine: bool,
    ) -> Result<Vec<AccessRequest>, AccessError> {
        let now = self.clock.now_ms();
        let human = by.human_uid();
        if mine {
            return self
                .with_store(move |s| s.requests_of(human, now - MINE_SINCE_MS, LIST_LIMIT))
                .await;
        }
        let mut decidable = Vec::new();
        for target in &self.config().targets {
            if is_member(by, self.config().approvers_of(target)).await {
                decidable.push(target.name.clone());
            }
        }
        if decidable.is_empty() {
            return Err(AccessError::forbidden(
                format!("uid {} approves no target", by.uid),
                "see your own requests with `jitproxy requests --mine`",
            ));
        }
        let all = self.with_store(move |s| s.pending_requests(now)).await?;
        Ok(all
            .into_iter()
            .filter(|r| {
                r.state(now) == RequestState::Pending
                    && decidable.contains(&r.target)
                    && r.human_uid() != human
                    && !r
                        .approvals
                        .iter()
                        .any(|a| super::principal_uid(a.by.uid, a.by.login_uid) == human)
            })
            .collect())
    }

    /// One request, for its requester and its target's approvers.
    pub async fn get_request(&self, by: &Requester, id: i64) -> Result<AccessRequest, AccessError> {
        let request = self.get_any(id).await?;
        let visible = request.human_uid() == by.human_uid()
            || match TargetRef::find(self.config(), &request.target) {
                Some(target) => is_member(by, target.config().approvers_of(&target)).await,
                None => by.uid == 0,
            };
        if !visible {
            return Err(unknown_request(id));
        }
        Ok(request)
    }

    /// Who approves requests for `target`, for hints: root and the
    /// configured approvers.
    pub fn approvers_for(&self, target: &Target) -> Vec<String> {
        std::iter::once("root".to_owned())
            .chain(
                self.config()
                    .approvers_of(target)
                    .iter()
                    .map(ToString::to_string),
            )
            .collect()
    }

    /// [`Access::approvers_for`] the target named `name` (just root for a
    /// target no longer in the config).
    pub fn approvers_of_named(&self, name: &str) -> Vec<String> {
        match TargetRef::find(self.config(), name) {
            Some(target) => self.approvers_for(&target),
            None => vec!["root".to_owned()],
        }
    }

    /// Records the expiry of every pending request past its `request_ttl`
    /// (in the store, then one `request.expired` record each).
    pub(super) async fn record_request_expiries(&self) -> usize {
        let now = self.clock.now_ms();
        let expired = match self.change(move |s| s.expire_requests(now)).await {
            Ok(expired) => expired,
            Err(e) => {
                tracing::error!(error = %e, "cannot record request expiries; trying again at the next wake");
                return 0;
            }
        };
        for request in &expired {
            self.audit
                .record(request_event(EventKind::RequestExpired, request, None));
        }
        expired.len()
    }

    /// Target `name` of the running config (not a retired one).
    pub(super) fn find_target(&self, name: &str) -> Result<TargetRef, AccessError> {
        TargetRef::find(self.config(), name).ok_or_else(|| {
            AccessError::not_found(
                format!("no target named `{name}`"),
                format!("targets: {}", self.target_names()),
            )
        })
    }

    /// A window of `secs`, at most `max` and the target's `max_grant`.
    fn window_ms(&self, target: &Target, secs: u64, max: Duration) -> Result<i64, AccessError> {
        if secs == 0 {
            return Err(AccessError::invalid(
                "the window must be longer than zero",
                "use e.g. --for 1h",
            ));
        }
        let max = max.min(target.max_grant);
        if Duration::from_secs(secs) > max {
            return Err(AccessError::invalid(
                format!(
                    "the window is longer than target `{}` allows ({})",
                    target.name,
                    humantime::format_duration(max)
                ),
                format!("ask for {} or less", humantime::format_duration(max)),
            ));
        }
        Ok(i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX))
    }

    async fn principal_of(&self, by: &Requester) -> Principal {
        by.principal(&self.users).await
    }

    /// Whether an `auto_approve` rule of `target` covers `human` asking for
    /// `duration_ms`.
    async fn auto_rule(&self, target: &Target, human: u32, duration_ms: i64) -> bool {
        for rule in &target.access.auto_approve {
            if duration_ms <= duration_to_ms(rule.max) && is_member_uid(human, &rule.who).await {
                return true;
            }
        }
        false
    }

    /// A request of `kind` by `by` for `target`, once the checks every kind
    /// shares have passed (no access held already, a request token left);
    /// with the time it is made. A break-glass request is decided at once,
    /// the others wait up to the target's `request_ttl`.
    async fn new_request(
        &self,
        by: &Requester,
        target: &Target,
        duration_ms: i64,
        reason: String,
        kind: RequestKind,
    ) -> Result<(NewRequest, UnixMs), AccessError> {
        let human = by.human_uid();
        self.refuse_if_covered(human, target).await?;
        self.take_request_token(human)?;
        let now = self.clock.now_ms();
        let (expires_at, needed) = match kind {
            RequestKind::BreakGlass => (now, 0),
            RequestKind::Asked | RequestKind::AutoApproved => (
                now.saturating_add(duration_to_ms(target.access.request_ttl)),
                target.access.approvals,
            ),
        };
        let new = NewRequest {
            requester: self.principal_of(by).await,
            human,
            human_name: self.users.name(human).await,
            target: target.name.clone(),
            duration_ms,
            reason,
            kind,
            expires_at,
            needed,
        };
        Ok((new, now))
    }

    /// The grant a request being stored leads to.
    fn new_grant_for(
        &self,
        request: &NewRequest,
        now: UnixMs,
        duration_ms: i64,
        granted_by: &Principal,
    ) -> NewGrant {
        new_grant(
            request.human,
            request.human_name.clone(),
            &request.target,
            &request.reason,
            now,
            duration_ms,
            granted_by,
        )
    }

    /// Request `id` and its target, if `by` may decide it and it is still
    /// pending. To anyone who may not decide it, it does not exist (its
    /// target, state and reasons are not theirs to learn), except to its
    /// requester, who is told that nobody approves their own request.
    async fn decidable(
        &self,
        by: &Requester,
        id: i64,
    ) -> Result<(AccessRequest, TargetRef), AccessError> {
        let request = self.get_any(id).await?;
        let target = self.find_target(&request.target)?;
        if !is_member(by, self.config().approvers_of(&target)).await {
            if request.human_uid() == by.human_uid() {
                return Err(AccessError::forbidden(
                    format!(
                        "request #{id} is your own; nobody approves or denies their own request"
                    ),
                    format!(
                        "ask an approver: {}",
                        self.approvers_for(&target).join(", ")
                    ),
                ));
            }
            return Err(unknown_request(id));
        }
        let now = self.clock.now_ms();
        if request.state(now) != RequestState::Pending {
            return Err(not_pending(&request, now));
        }
        Ok((request, target))
    }

    /// Refuses a request or break-glass by `human` who already holds a live
    /// grant of their own on `target`: there is nothing to ask for.
    async fn refuse_if_covered(&self, human: u32, target: &Target) -> Result<(), AccessError> {
        let now = self.clock.now_ms();
        let open = self.with_store(move |s| s.open_grants(now)).await?;
        let Some(grant) = open.iter().find(|g| {
            g.subject == Subject::User(human) && g.target == target.name && g.is_live(now)
        }) else {
            return Ok(());
        };
        Err(AccessError::invalid(
            format!(
                "you already have access to `{}` until {} (grant #{})",
                target.name,
                time::timestamp(grant.effective_end()),
                grant.id
            ),
            "ask again when it ends, or give it back first with `jitproxy drop`",
        ))
    }

    /// Takes one of `human`'s request tokens (requests and break-glass
    /// alike), or refuses: one user cannot flood approvers and webhooks.
    fn take_request_token(&self, human: u32) -> Result<(), AccessError> {
        let mut buckets = self.request_rate.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.clock.now_ms();
        let (tokens, at) = buckets.entry(human).or_insert((REQUEST_BURST, now));
        let refilled =
            f64::from(u32::try_from(now - *at).unwrap_or(u32::MAX)) / REQUEST_REFILL_MS as f64;
        *tokens = (*tokens + refilled).min(REQUEST_BURST);
        *at = now;
        if *tokens < 1.0 {
            return Err(AccessError::invalid(
                format!("you made {REQUEST_BURST} requests in a short time; wait a minute or two"),
                "see them with `jitproxy requests --mine`",
            ));
        }
        *tokens -= 1.0;
        Ok(())
    }

    /// The webhooks that take `event`, by name.
    pub fn notified_of(&self, event: &str) -> Vec<String> {
        self.config()
            .notify
            .iter()
            .filter(|n| n.events.is_empty() || n.events.iter().any(|e| e == event))
            .map(|n| n.name.clone())
            .collect()
    }

    async fn get_any(&self, id: i64) -> Result<AccessRequest, AccessError> {
        self.with_store(move |s| s.get_request(id))
            .await?
            .ok_or_else(|| unknown_request(id))
    }
}

/// The grant for `human` on `target`, from `now`, made by `granted_by`.
fn new_grant(
    human: u32,
    human_name: Option<String>,
    target: &str,
    reason: &str,
    now: UnixMs,
    duration_ms: i64,
    granted_by: &Principal,
) -> NewGrant {
    NewGrant {
        subject: Subject::User(human),
        subject_name: human_name,
        target: target.to_owned(),
        starts_at: now,
        ends_at: now.saturating_add(duration_ms),
        reason: reason.to_owned(),
        granted_by: granted_by.clone(),
        scopes: Vec::new(),
        request_id: None,
    }
}

/// A reason: required, trimmed, one line of at most 1024 bytes, no control
/// characters (it is shown to approvers, in tables and in chat, where a
/// newline could forge a second line).
pub(super) fn check_reason(reason: &str) -> Result<String, AccessError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(AccessError::invalid(
            "a reason is required",
            "give a ticket or a sentence, e.g. --reason INC-1234",
        ));
    }
    if reason.chars().any(char::is_control) {
        return Err(AccessError::invalid(
            "the reason holds a newline or another control character",
            "give it on one line",
        ));
    }
    if reason.len() > 1024 {
        return Err(AccessError::invalid(
            "the reason is longer than 1024 bytes",
            "shorten it",
        ));
    }
    Ok(reason.to_owned())
}

fn unknown_request(id: i64) -> AccessError {
    AccessError::not_found(
        format!("no request #{id}"),
        "list yours with `jitproxy requests --mine`, or the pending ones with `jitproxy requests`",
    )
}

/// Why a request that is no longer pending cannot be decided.
fn not_pending(request: &AccessRequest, now: UnixMs) -> AccessError {
    let id = request.id;
    let (what, hint) = match &request.outcome {
        Some(Outcome::Granted { grant_id, .. }) => (
            format!("request #{id} was already approved (grant #{grant_id})"),
            "nothing to do; end the grant with `jitproxy revoke` if needed".to_owned(),
        ),
        Some(Outcome::Denied { reason, .. }) => (
            format!("request #{id} was already denied ({reason})"),
            "the requester can ask again with `jitproxy request`".to_owned(),
        ),
        Some(Outcome::Expired { .. }) | None => (
            format!(
                "request #{id} expired at {} without a decision",
                time::timestamp(request.expires_at.min(now))
            ),
            "the requester can ask again with `jitproxy request`".to_owned(),
        ),
    };
    AccessError::invalid(what, hint)
}

fn duration_to_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn ms_to_duration(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn list_of(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    if items.is_empty() {
        "nobody".to_owned()
    } else {
        items.join(", ")
    }
}

/// The audit record of a step of `request`, done by `by` (none: the clock).
fn request_event(kind: EventKind, request: &AccessRequest, by: Option<&Principal>) -> Event {
    let mut event = Event::new(kind);
    event.target = Some(request.target.clone());
    event.reason = Some(request.reason.clone());
    event.grant_id = request.grant_id();
    event.user = Some(UserInfo {
        name: request.human_name.clone(),
        uid: request.human,
        login_uid: None,
    });
    let mut detail = serde_json::json!({
        "request_id": request.id,
        "kind": request.kind,
        "duration_secs": request.duration_ms / 1000,
        "approvals": request.approvals.len(),
        "needed": request.needed,
        "expires_at": time::timestamp(request.expires_at),
    });
    if let Some(by) = by {
        detail["by"] = serde_json::json!(by);
    }
    if let Some(Outcome::Denied { reason, .. }) = &request.outcome {
        detail["denial_reason"] = serde_json::json!(reason);
    }
    event.detail = Some(detail);
    event
}
