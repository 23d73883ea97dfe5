//! Reading the audit log for review: filters for `jitproxy audit` and the
//! per-user summary of `jitproxy audit summary`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{self, BufRead as _},
    path::Path,
};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{log::log_files, EventKind, Record};

/// Which records to return. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// A user name or uid; matches the record's user, uid or login uid.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub grant: Option<i64>,
    #[serde(default)]
    pub since: Option<Timestamp>,
    #[serde(default)]
    pub until: Option<Timestamp>,
    /// Only records after this sequence number (`--follow`).
    #[serde(default)]
    pub after_seq: Option<u64>,
    /// At most this many (the newest).
    #[serde(default)]
    pub limit: Option<usize>,
}

impl Filter {
    pub fn matches(&self, r: &Record) -> bool {
        let e = &r.event;
        self.after_seq.is_none_or(|s| r.seq > s)
            && self.since.is_none_or(|t| r.time >= t)
            && self.until.is_none_or(|t| r.time <= t)
            && self.grant.is_none_or(|g| e.grant_id == Some(g))
            && self
                .target
                .as_ref()
                .is_none_or(|t| e.target.as_ref() == Some(t))
            && self.user.as_ref().is_none_or(|u| {
                e.user.as_ref().is_some_and(|info| {
                    info.name.as_ref() == Some(u)
                        || u.parse::<u32>()
                            .ok()
                            .is_some_and(|uid| info.uid == uid || info.login_uid == Some(uid))
                })
            })
    }
}

/// Records in `dir` that match, oldest first. Lines that do not parse are
/// skipped here (`audit verify` reports them).
pub fn read(dir: &Path, filter: &Filter) -> io::Result<Vec<Record>> {
    let mut out = Vec::new();
    for name in log_files(dir)? {
        let file = fs::File::open(dir.join(&name))?;
        // Bytes, not text: a line that is not UTF-8 is skipped like any other.
        for line in io::BufReader::new(file).split(b'\n') {
            let line = line?;
            if let Ok(record) = serde_json::from_slice::<Record>(&line) {
                if filter.matches(&record) {
                    out.push(record);
                }
            }
        }
    }
    if let Some(limit) = filter.limit {
        let skip = out.len().saturating_sub(limit);
        out.drain(..skip);
    }
    Ok(out)
}

/// One user's activity in a period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSummary {
    pub user: String,
    /// Emergency grants taken (`break_glass.used`); users with any come
    /// first.
    #[serde(default)]
    pub break_glass: u64,
    #[serde(default)]
    pub requests: u64,
    pub grants: u64,
    pub connections: u64,
    pub denials: u64,
    /// Inspected HTTP requests let through, and refused (403, 429).
    #[serde(default)]
    pub http_requests: u64,
    #[serde(default)]
    pub http_refused: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub targets: BTreeSet<String>,
}

/// One use of break-glass, for the top of `audit summary`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakGlassUse {
    pub time: Timestamp,
    pub user: String,
    pub target: String,
    pub reason: String,
    pub grant_id: Option<i64>,
}

/// Every break-glass use in `records`, oldest first.
pub fn break_glass_uses(records: &[Record]) -> Vec<BreakGlassUse> {
    records
        .iter()
        .filter(|r| r.event.kind == EventKind::BreakGlassUsed)
        .map(|r| BreakGlassUse {
            time: r.time,
            user: r.event.user.as_ref().map_or_else(String::new, |u| {
                u.name.clone().unwrap_or_else(|| u.uid.to_string())
            }),
            target: r.event.target.clone().unwrap_or_default(),
            reason: r.event.reason.clone().unwrap_or_default(),
            grant_id: r.event.grant_id,
        })
        .collect()
}

/// Per-user totals over `records`; users who broke glass first.
pub fn summarize(records: &[Record]) -> Vec<UserSummary> {
    let mut by_user: BTreeMap<String, UserSummary> = BTreeMap::new();
    for r in records {
        let e = &r.event;
        let Some(user) = &e.user else { continue };
        let key = user.name.clone().unwrap_or_else(|| user.uid.to_string());
        let s = by_user.entry(key.clone()).or_insert_with(|| UserSummary {
            user: key,
            ..UserSummary::default()
        });
        match e.kind {
            EventKind::BreakGlassUsed => s.break_glass += 1,
            EventKind::RequestCreated => s.requests += 1,
            EventKind::GrantCreated => s.grants += 1,
            EventKind::ConnectionAllowed => s.connections += 1,
            EventKind::ConnectionDenied | EventKind::ConnectionRateLimited => s.denials += 1,
            EventKind::HttpAllowed => s.http_requests += 1,
            EventKind::HttpDenied | EventKind::HttpRateLimited => s.http_refused += 1,
            EventKind::ConnectionClosed => {
                // Saturating: a record's counts are whatever the file says.
                s.bytes_up = s.bytes_up.saturating_add(e.bytes_up.unwrap_or(0));
                s.bytes_down = s.bytes_down.saturating_add(e.bytes_down.unwrap_or(0));
            }
            _ => {}
        }
        if let Some(t) = &e.target {
            if e.kind.is_connection() {
                s.targets.insert(t.clone());
            }
        }
    }
    let mut users: Vec<UserSummary> = by_user.into_values().collect();
    // Stable: by name within each half.
    users.sort_by_key(|u| u.break_glass == 0);
    users
}
