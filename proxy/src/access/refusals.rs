//! Refused connections, remembered per uid for `jitproxy why` (since the
//! daemon started).

use std::{collections::HashMap, sync::Mutex};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// One refused connection, as `jitproxy why` shows it (the control API sends
/// it as is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub at: Timestamp,
    /// The uid grants were matched against.
    pub uid: u32,
    pub user: Option<String>,
    pub target: String,
    pub destination: String,
    /// `comm (pid N)`.
    pub process: String,
    pub reason: String,
    /// The refusal kind: `no_grant`, `rate_limited`, `too_many_connections`.
    pub code: String,
}

/// What `why` tells a requester (the control API's `GET /v1/why` answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Why {
    pub last_refusal: Option<Refusal>,
    /// Who can approve access to the refused target (root, and the
    /// configured approvers), for the hint.
    pub approvers: Vec<String>,
    /// Whether the requester may ask for access to it (`jitproxy request`).
    #[serde(default)]
    pub can_request: bool,
    /// Whether the requester may take it in an emergency (`break-glass`).
    #[serde(default)]
    pub can_break_glass: bool,
}

/// The last refusal of each uid.
#[derive(Debug, Default)]
pub(super) struct Refusals(Mutex<HashMap<u32, Refusal>>);

impl Refusals {
    pub(super) fn note(&self, refusal: Refusal) {
        let mut refusals = self.0.lock().unwrap_or_else(|p| p.into_inner());
        refusals.insert(refusal.uid, refusal);
    }

    /// The newest refusal of any of `uids`.
    pub(super) fn last_of(&self, uids: &[u32]) -> Option<Refusal> {
        let refusals = self.0.lock().unwrap_or_else(|p| p.into_inner());
        uids.iter()
            .filter_map(|uid| refusals.get(uid))
            .max_by_key(|r| r.at)
            .cloned()
    }
}
