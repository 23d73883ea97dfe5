//! The seam between the grant service and where grants are kept: the
//! [`GrantStore`] trait, defined here beside its one user so that backends
//! (`crate::store::sqlite` today, PostgreSQL later) depend on the service's
//! model and not the other way round.

use std::error::Error as StdError;

use super::{
    model::{AccessRequest, Approval, Ending, Grant, Principal, RequestKind, Scope, Subject},
    notice::Notice,
};
use crate::time::UnixMs;

/// A backend's own error, boxed.
pub type BackendError = Box<dyn StdError + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create state directory {path}: {source}")]
    Dir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("grant database {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: BackendError,
    },
    #[error("grant database: {0}")]
    Backend(#[source] BackendError),
    #[error("grant database was written by a newer jitproxy (schema {found}, this one knows {known}); upgrade jitproxy")]
    TooNew { found: i64, known: i64 },
    /// A stored grant that does not read back as a grant. It is never
    /// honoured: access is refused rather than guessed.
    #[error("grant {id} in the grant database is corrupt ({why}); it is not honoured")]
    Corrupt { id: i64, why: String },
    /// A stored request that does not read back as one: it cannot be
    /// decided, and grants nothing.
    #[error("request {id} in the grant database is corrupt ({why})")]
    CorruptRequest { id: i64, why: String },
}

/// A grant to be created.
#[derive(Debug, Clone)]
pub struct NewGrant {
    pub subject: Subject,
    pub subject_name: Option<String>,
    pub target: String,
    pub starts_at: UnixMs,
    pub ends_at: UnixMs,
    pub reason: String,
    pub granted_by: Principal,
    pub scopes: Vec<Scope>,
    pub request_id: Option<i64>,
}

/// A request to be stored. `needed` approvals make its grant; an immediate
/// one (auto-approved, break-glass) is stored with its grant at once.
#[derive(Debug, Clone)]
pub struct NewRequest {
    pub requester: Principal,
    /// The human the access is for, and their name.
    pub human: u32,
    pub human_name: Option<String>,
    pub target: String,
    pub duration_ms: i64,
    pub reason: String,
    pub kind: RequestKind,
    pub expires_at: UnixMs,
    pub needed: u32,
}

/// What storing a request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// Stored; with its grant if it was decided at once.
    Stored(AccessRequest, Option<Box<Grant>>),
    /// Not stored: the same human already has this request pending on the
    /// target (checked in the same transaction, so two at once make one).
    AlreadyPending(AccessRequest),
}

/// What an approval did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approved {
    /// Counted; more approvals are needed.
    Counted(AccessRequest),
    /// The last approval needed: the grant exists (boxed: it is large).
    Granted(AccessRequest, Box<Grant>),
    /// The request was no longer pending (decided or expired meanwhile).
    NotPending(AccessRequest),
    /// This approver (the same human) had approved it already.
    AlreadyApproved(AccessRequest),
}

/// Which webhooks get which events: a [`Notice`] is queued once per route
/// whose `events` name it (empty: all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub name: String,
    pub events: Vec<String>,
}

impl Route {
    pub fn wants(&self, event: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == event)
    }
}

/// A queued notice for one webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: i64,
    pub route: String,
    /// Stable across retries: the receiver's idempotency key.
    pub key: String,
    pub notice: Notice,
    pub attempts: u32,
}

/// Where grants are kept, durably: an acknowledged grant survives a crash.
///
/// Calls block (disk, network); the grant service runs them on the
/// blocking pool, never on the data path. A stored grant that cannot be read
/// back whole (a corrupt row) is left out of lists and logged, so it grants
/// nothing.
pub trait GrantStore: Send {
    /// Stores a new grant and returns it with its id.
    fn insert(&mut self, new: &NewGrant, now: UnixMs) -> Result<Grant, StoreError>;

    /// One grant by id.
    fn get(&self, id: i64) -> Result<Option<Grant>, StoreError>;

    /// Grants whose window has not closed by `now` and that were not ended.
    fn open_grants(&self, now: UnixMs) -> Result<Vec<Grant>, StoreError>;

    /// Every grant, newest first, at most `limit`.
    fn all(&self, limit: usize) -> Result<Vec<Grant>, StoreError>;

    /// Ends the open grants with these ids as `ending` says; returns those
    /// ended.
    fn end(&mut self, ids: &[i64], ending: &Ending) -> Result<Vec<Grant>, StoreError>;

    /// Records the expiry of every grant whose window closed by `now` and
    /// whose end is not recorded (kind [`EndKind::Expired`](super::EndKind),
    /// at the window's end, by no one) and returns them, in id order. Each
    /// grant is returned by one call only, ever: this is what makes its
    /// `grant.expired` record one.
    fn expire(&mut self, now: UnixMs) -> Result<Vec<Grant>, StoreError>;
}

/// Where access requests and their approvals are kept, with the same
/// guarantees as grants. Each change queues its [`Notice`]s in the
/// [`Outbox`] in the same transaction.
pub trait RequestStore: Send {
    /// Stores a pending request, unless its human has one pending on the
    /// target already; with `grant`, the request is decided at once
    /// (auto-approved, break-glass) and the grant stored with it.
    fn insert_request(
        &mut self,
        new: &NewRequest,
        grant: Option<&NewGrant>,
        now: UnixMs,
    ) -> Result<Inserted, StoreError>;

    fn get_request(&self, id: i64) -> Result<Option<AccessRequest>, StoreError>;

    /// Every request pending at `now` (not decided, not past its expiry),
    /// oldest first.
    fn pending_requests(&self, now: UnixMs) -> Result<Vec<AccessRequest>, StoreError>;

    /// The requests of human `uid` made since `since`, newest first, at
    /// most `limit`.
    fn requests_of(
        &self,
        uid: u32,
        since: UnixMs,
        limit: usize,
    ) -> Result<Vec<AccessRequest>, StoreError>;

    /// Adds `approval` (by the human `approver_uid`) to pending request
    /// `id`; when it is the last one needed, stores `grant` (linked to the
    /// request). Checked and done in one transaction, so two approvers at
    /// once cannot both make the grant.
    fn approve(
        &mut self,
        id: i64,
        approver_uid: u32,
        approval: &Approval,
        grant: &NewGrant,
        now: UnixMs,
    ) -> Result<Approved, StoreError>;

    /// Denies pending request `id`; `None` if it is not pending.
    fn deny(
        &mut self,
        id: i64,
        by: &Principal,
        reason: &str,
        now: UnixMs,
    ) -> Result<Option<AccessRequest>, StoreError>;

    /// Marks every pending request whose expiry is past as expired and
    /// returns them; each is returned once, ever.
    fn expire_requests(&mut self, now: UnixMs) -> Result<Vec<AccessRequest>, StoreError>;
}

/// The durable queue of notices for the webhooks: a notice stays until its
/// webhook took it (at least once, with the same key every time).
pub trait Outbox: Send {
    /// Which webhooks future changes queue notices for.
    fn set_routes(&mut self, routes: Vec<Route>);

    /// Undelivered notices due by `now`, oldest first, at most `limit`.
    fn due(&self, now: UnixMs, limit: usize) -> Result<Vec<Delivery>, StoreError>;

    /// When the next undelivered notice is due, if any.
    fn next_due(&self) -> Result<Option<UnixMs>, StoreError>;

    /// Delivery `id` was taken.
    fn delivered(&mut self, id: i64, now: UnixMs) -> Result<(), StoreError>;

    /// Delivery `id` failed; try again at `retry_at`.
    fn failed(&mut self, id: i64, retry_at: UnixMs, error: &str) -> Result<(), StoreError>;

    /// Notices not delivered yet.
    fn undelivered(&self) -> Result<u64, StoreError>;
}

/// Everything the grant service keeps: grants, requests, and the outbox.
pub trait AccessStore: GrantStore + RequestStore + Outbox {}

impl<T: GrantStore + RequestStore + Outbox> AccessStore for T {}
