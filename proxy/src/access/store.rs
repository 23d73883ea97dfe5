//! The seam between the grant service and where grants are kept: the
//! [`GrantStore`] trait, defined here beside its one user so that backends
//! (`crate::store::sqlite` today, PostgreSQL later) depend on the service's
//! model and not the other way round.

use std::error::Error as StdError;

use super::model::{Ending, Grant, Principal, Scope, Subject};
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
