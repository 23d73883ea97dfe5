//! The in-memory grant index: answers "is this caller covered right now,
//! and until when" in a hash lookup. Built from the store on every change and
//! swapped in whole.
//!
//! Overlapping grants combine as a union: a connection stays allowed until the
//! last of the overlapping (or back-to-back) grants that cover it ends.

use std::{collections::HashMap, sync::Arc};

use super::{
    model::{Grant, Subject},
    scope::{Decision, Scope},
};
use crate::time::UnixMs;

/// One window of the index.
#[derive(Debug, Clone)]
struct Window {
    id: i64,
    starts_at: UnixMs,
    ends_at: UnixMs,
    reason: Arc<str>,
    /// What requests it allows (inspect targets); `None`: its stored rules
    /// no longer parse, and it allows no request (fail closed).
    scope: Option<Arc<Scope>>,
}

/// What the grants covering a caller say about one HTTP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestCover {
    /// A live grant allows it: with no rules, or by `rule`.
    Allowed { grant_id: i64, rule: Option<String> },
    /// No live grant covers the caller.
    NoGrant,
    /// Live grants cover the caller, but none of their rules match.
    NoRule { grant_id: i64, rules: Vec<String> },
    /// The path is one jitproxy refuses whatever the grant.
    BadPath(String),
}

/// What covers a caller now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cover {
    /// The live grant that reaches furthest.
    pub grant_id: i64,
    pub reason: Arc<str>,
    /// When access ends: the end of the union of live and overlapping or
    /// back-to-back grants.
    pub until: UnixMs,
}

/// The identities a caller matches grants by: its user and its groups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keys {
    pub uid: u32,
    pub gids: Vec<u32>,
}

impl Keys {
    fn subjects(&self) -> impl Iterator<Item = Subject> + '_ {
        std::iter::once(Subject::User(self.uid)).chain(self.gids.iter().map(|&g| Subject::Group(g)))
    }
}

/// Grants that are live or pending, indexed by (subject, target index).
/// Built from the store on every change and swapped in whole.
#[derive(Debug, Default)]
pub struct GrantIndex {
    windows: HashMap<(Subject, u32), Vec<Window>>,
    has_group_grants: bool,
    len: usize,
}

impl GrantIndex {
    /// Indexes `grants` that have not ended by `now`; `target_id` maps a
    /// target name to its index in the running config (grants for targets
    /// no longer configured are left out).
    pub fn build<'a>(
        grants: impl IntoIterator<Item = &'a Grant>,
        now: UnixMs,
        target_id: impl Fn(&str) -> Option<u32>,
    ) -> Self {
        let mut index = Self::default();
        for grant in grants {
            let end = grant.effective_end();
            if end <= now {
                continue;
            }
            let Some(target) = target_id(&grant.target) else {
                continue;
            };
            index.has_group_grants |= matches!(grant.subject, Subject::Group(_));
            index
                .windows
                .entry((grant.subject, target))
                .or_default()
                .push(Window {
                    id: grant.id,
                    starts_at: grant.starts_at,
                    ends_at: end,
                    reason: Arc::from(grant.reason.as_str()),
                    scope: Scope::parse(
                        &grant
                            .scopes
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>(),
                    )
                    .map(Arc::new)
                    .ok(),
                });
            index.len += 1;
        }
        index
    }

    /// Number of indexed grants.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether any group grant exists (only then do callers' groups matter).
    pub fn has_group_grants(&self) -> bool {
        self.has_group_grants
    }

    /// Whether a grant covering `keys` on `target` at `now` allows a
    /// `method` request for `raw_path` (as the client sent it).
    pub fn request_cover(
        &self,
        keys: &Keys,
        target: u32,
        now: UnixMs,
        method: &str,
        raw_path: &str,
    ) -> RequestCover {
        let mut refused: Option<(i64, Vec<String>)> = None;
        for subject in keys.subjects() {
            for w in self.windows.get(&(subject, target)).into_iter().flatten() {
                if !(w.starts_at <= now && now < w.ends_at) {
                    continue;
                }
                let (grant_id, rules) = refused.get_or_insert_with(|| (w.id, Vec::new()));
                let Some(scope) = &w.scope else {
                    rules.push(format!("(grant {}: rules that no longer parse)", w.id));
                    continue;
                };
                match scope.check(method, raw_path) {
                    Decision::Everything => {
                        return RequestCover::Allowed {
                            grant_id: w.id,
                            rule: None,
                        }
                    }
                    Decision::Rule(rule) => {
                        return RequestCover::Allowed {
                            grant_id: w.id,
                            rule: Some(rule.to_owned()),
                        }
                    }
                    Decision::BadPath(why) => return RequestCover::BadPath(why.to_string()),
                    Decision::NoRule => {
                        *grant_id = (*grant_id).max(w.id);
                        rules.extend(scope.rules().map(str::to_owned));
                    }
                }
            }
        }
        match refused {
            None => RequestCover::NoGrant,
            Some((grant_id, rules)) => RequestCover::NoRule { grant_id, rules },
        }
    }

    /// What covers `keys` on `target` at `now`, if anything.
    pub fn cover(&self, keys: &Keys, target: u32, now: UnixMs) -> Option<Cover> {
        let mut best: Option<&Window> = None;
        for subject in keys.subjects() {
            for w in self.windows.get(&(subject, target)).into_iter().flatten() {
                if w.starts_at <= now
                    && now < w.ends_at
                    && best.is_none_or(|b| w.ends_at > b.ends_at)
                {
                    best = Some(w);
                }
            }
        }
        let best = best?;
        // Extend through grants that start before (or exactly when) the
        // current end: the union of back-to-back and overlapping windows.
        let mut until = best.ends_at;
        loop {
            let mut extended = false;
            for subject in keys.subjects() {
                for w in self.windows.get(&(subject, target)).into_iter().flatten() {
                    if w.starts_at <= until && w.ends_at > until {
                        until = w.ends_at;
                        extended = true;
                    }
                }
            }
            if !extended {
                break;
            }
        }
        Some(Cover {
            grant_id: best.id,
            reason: Arc::clone(&best.reason),
            until,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::model::{EndKind, Ending, Principal};

    fn grant(id: i64, subject: Subject, start: UnixMs, end: UnixMs) -> Grant {
        Grant {
            id,
            subject,
            subject_name: None,
            target: "api".into(),
            starts_at: start,
            ends_at: end,
            reason: format!("r{id}"),
            granted_by: Principal {
                uid: 0,
                name: None,
                login_uid: None,
            },
            created_at: 0,
            ended: None,
            scopes: Vec::new(),
            request_id: None,
        }
    }

    fn index(grants: &[Grant], now: UnixMs) -> GrantIndex {
        GrantIndex::build(grants, now, |t| (t == "api").then_some(0))
    }

    fn alice() -> Keys {
        Keys {
            uid: 1000,
            gids: vec![50],
        }
    }

    #[test]
    fn no_grant_no_cover() {
        let idx = index(&[grant(1, Subject::User(1001), 0, 100)], 10);
        assert_eq!(idx.cover(&alice(), 0, 10), None);
    }

    #[test]
    fn window_bounds_are_half_open() {
        let idx = index(&[grant(1, Subject::User(1000), 10, 20)], 0);
        assert!(idx.cover(&alice(), 0, 9).is_none());
        assert_eq!(idx.cover(&alice(), 0, 10).map(|c| c.until), Some(20));
        assert!(idx.cover(&alice(), 0, 20).is_none());
    }

    #[test]
    fn overlapping_and_back_to_back_grants_are_a_union() {
        let grants = [
            grant(1, Subject::User(1000), 0, 100),
            grant(2, Subject::Group(50), 50, 200),
            grant(3, Subject::User(1000), 200, 300),
            grant(4, Subject::User(1000), 400, 500),
        ];
        let idx = index(&grants, 10);
        let cover = idx.cover(&alice(), 0, 10).unwrap();
        assert_eq!(cover.grant_id, 1);
        assert_eq!(cover.until, 300, "gap at 300..400 ends the union");
        let cover = idx.cover(&alice(), 0, 150).unwrap();
        assert_eq!(cover.grant_id, 2);
    }

    #[test]
    fn ended_grants_are_left_out() {
        let mut revoked = grant(1, Subject::User(1000), 0, 100);
        revoked.ended = Some(Ending {
            at: 5,
            by: Some(revoked.granted_by.clone()),
            kind: EndKind::Revoked,
        });
        let idx = index(&[revoked, grant(2, Subject::User(1000), 0, 8)], 10);
        assert!(idx.is_empty());
    }

    #[test]
    fn other_targets_do_not_count() {
        let mut g = grant(1, Subject::User(1000), 0, 100);
        g.target = "other".into();
        let idx = index(&[g], 10);
        assert!(idx.is_empty());
    }
}
