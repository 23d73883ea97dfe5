//! Access requests and their approvals in SQLite. A decision (the last
//! approval and its grant, a denial, an expiry) is checked and written in
//! one transaction with its notices, so a request is decided once.

use rusqlite::{params, Connection, OptionalExtension as _, Row};

use super::{enqueue, insert_grant, SqliteStore};
use crate::{
    access::{
        notice::Notice, AccessRequest, Approval, Approved, Grant, Inserted, NewGrant, NewRequest,
        Outcome, Principal, RequestKind, RequestStore, StoreError,
    },
    time::UnixMs,
};

/// The columns of a request row, in the order [`read_request`] reads them.
const COLUMNS: &str = "id, requester_uid, requester_name, requester_login_uid, target,
    duration_ms, reason, kind, created_at, expires_at, needed, outcome, decided_at, grant_id,
    denied_by_uid, denied_by_name, denied_by_login_uid, deny_reason, human_uid, human_name";

impl RequestStore for SqliteStore {
    fn insert_request(
        &mut self,
        new: &NewRequest,
        grant: Option<&NewGrant>,
        now: UnixMs,
    ) -> Result<Inserted, StoreError> {
        let tx = self.conn.transaction()?;
        if new.kind == RequestKind::Asked {
            let pending: Option<i64> = tx
                .query_row(
                    "SELECT id FROM requests WHERE human_uid = ?1 AND target = ?2
                       AND outcome IS NULL AND expires_at > ?3 LIMIT 1",
                    params![new.human, new.target, now],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(id) = pending {
                let request = request_in(&tx, id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
                return Ok(Inserted::AlreadyPending(request));
            }
        }
        tx.execute(
            "INSERT INTO requests (requester_uid, requester_name, requester_login_uid, human_uid,
                                   human_name, target, duration_ms, reason, kind, created_at,
                                   expires_at, needed)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                new.requester.uid,
                new.requester.name,
                new.requester.login_uid,
                new.human,
                new.human_name,
                new.target,
                new.duration_ms,
                new.reason,
                new.kind.as_str(),
                now,
                new.expires_at,
                new.needed,
            ],
        )?;
        let id = tx.last_insert_rowid();
        let mut notices = Vec::new();
        let granted = grant
            .map(|grant| grant_request(&tx, id, grant, now))
            .transpose()?;
        let request = request_in(&tx, id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
        let event = match request.kind {
            RequestKind::BreakGlass => "break_glass.used",
            RequestKind::Asked | RequestKind::AutoApproved => "request.created",
        };
        let created = Notice::of_request(event, &request, Some(&request.requester), None, now);
        match &granted {
            Some(grant) => {
                notices.push(created.with_grant(grant));
                notices.push(Notice::of_grant(
                    "grant.created",
                    grant,
                    Some(&grant.granted_by),
                    now,
                ));
            }
            None => notices.push(created),
        }
        enqueue(&tx, &self.routes, &notices, now)?;
        tx.commit()?;
        Ok(Inserted::Stored(request, granted.map(Box::new)))
    }

    fn get_request(&self, id: i64) -> Result<Option<AccessRequest>, StoreError> {
        request_in(&self.conn, id)
    }

    fn pending_requests(&self, now: UnixMs) -> Result<Vec<AccessRequest>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM requests WHERE outcome IS NULL AND expires_at > ?1 ORDER BY id"
        ))?;
        let rows = stmt
            .query_map([now], read_request)?
            .collect::<Result<Vec<_>, _>>()?;
        self.checked(rows)
    }

    fn requests_of(
        &self,
        uid: u32,
        since: UnixMs,
        limit: usize,
    ) -> Result<Vec<AccessRequest>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM requests WHERE human_uid = ?1 AND created_at >= ?2
             ORDER BY id DESC LIMIT ?3"
        ))?;
        let rows = stmt
            .query_map(
                params![uid, since, i64::try_from(limit).unwrap_or(i64::MAX)],
                read_request,
            )?
            .collect::<Result<Vec<_>, _>>()?;
        self.checked(rows)
    }

    fn approve(
        &mut self,
        id: i64,
        approver_uid: u32,
        approval: &Approval,
        grant: &NewGrant,
        now: UnixMs,
    ) -> Result<Approved, StoreError> {
        let tx = self.conn.transaction()?;
        let Some(request) = request_in(&tx, id)? else {
            return Err(rusqlite::Error::QueryReturnedNoRows.into());
        };
        if request.outcome.is_some() || request.expires_at <= now {
            return Ok(Approved::NotPending(request));
        }
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO approvals (request_id, human_uid, by_uid, by_name, by_login_uid, at, reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                id,
                approver_uid,
                approval.by.uid,
                approval.by.name,
                approval.by.login_uid,
                approval.at,
                approval.reason,
            ],
        )?;
        if inserted == 0 {
            return Ok(Approved::AlreadyApproved(request));
        }
        let counted = request_in(&tx, id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
        let complete = counted.approvals.len() >= usize::try_from(counted.needed).unwrap_or(1);
        let approved = |r: &AccessRequest| {
            Notice::of_request(
                "request.approved",
                r,
                Some(&approval.by),
                approval.reason.as_deref(),
                now,
            )
        };
        let outcome = if complete {
            let grant = grant_request(&tx, id, grant, now)?;
            let decided = request_in(&tx, id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
            let notices = [
                approved(&decided).with_grant(&grant),
                Notice::of_grant("grant.created", &grant, Some(&approval.by), now),
            ];
            enqueue(&tx, &self.routes, &notices, now)?;
            Approved::Granted(decided, Box::new(grant))
        } else {
            enqueue(&tx, &self.routes, &[approved(&counted)], now)?;
            Approved::Counted(counted)
        };
        tx.commit()?;
        Ok(outcome)
    }

    fn deny(
        &mut self,
        id: i64,
        by: &Principal,
        reason: &str,
        now: UnixMs,
    ) -> Result<Option<AccessRequest>, StoreError> {
        let tx = self.conn.transaction()?;
        let changed = tx.execute(
            "UPDATE requests SET outcome = 'denied', decided_at = ?2, denied_by_uid = ?3,
                    denied_by_name = ?4, denied_by_login_uid = ?5, deny_reason = ?6
             WHERE id = ?1 AND outcome IS NULL AND expires_at > ?2",
            params![id, now, by.uid, by.name, by.login_uid, reason],
        )?;
        if changed == 0 {
            return Ok(None);
        }
        let denied = request_in(&tx, id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
        let notice = Notice::of_request("request.denied", &denied, Some(by), Some(reason), now);
        enqueue(&tx, &self.routes, &[notice], now)?;
        tx.commit()?;
        Ok(Some(denied))
    }

    fn expire_requests(&mut self, now: UnixMs) -> Result<Vec<AccessRequest>, StoreError> {
        let tx = self.conn.transaction()?;
        let ids: Vec<i64> = tx
            .prepare(
                "UPDATE requests SET outcome = 'expired', decided_at = expires_at
                 WHERE outcome IS NULL AND expires_at <= ?1 RETURNING id",
            )?
            .query_map([now], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut expired = Vec::with_capacity(ids.len());
        for id in ids {
            match request_in(&tx, id) {
                Ok(Some(request)) => expired.push(request),
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "a corrupt request expired"),
            }
        }
        expired.sort_by_key(|r| r.id);
        let notices: Vec<Notice> = expired
            .iter()
            .map(|r| Notice::of_request("request.expired", r, None, None, r.expires_at))
            .collect();
        enqueue(&tx, &self.routes, &notices, now)?;
        tx.commit()?;
        Ok(expired)
    }
}

impl SqliteStore {
    /// The requests among `rows`; corrupt ones are logged and left out.
    fn checked(&self, rows: Vec<StoredRequest>) -> Result<Vec<AccessRequest>, StoreError> {
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            match row.into_request(&self.conn) {
                Ok(request) => out.push(request),
                Err(e) => tracing::error!(error = %e, "skipping a corrupt request"),
            }
        }
        Ok(out)
    }
}

/// Decides request `id` by storing `grant` for it (linked both ways).
fn grant_request(
    conn: &Connection,
    id: i64,
    grant: &NewGrant,
    now: UnixMs,
) -> Result<Grant, StoreError> {
    let grant = insert_grant(
        conn,
        &NewGrant {
            request_id: Some(id),
            ..grant.clone()
        },
        now,
    )?;
    conn.execute(
        "UPDATE requests SET outcome = 'granted', decided_at = ?2, grant_id = ?3 WHERE id = ?1",
        params![id, now, grant.id],
    )?;
    Ok(grant)
}

/// Request `id` with its approvals, as `conn` sees it.
fn request_in(conn: &Connection, id: i64) -> Result<Option<AccessRequest>, StoreError> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM requests WHERE id = ?1"),
        [id],
        read_request,
    )
    .optional()?
    .map(|row| row.into_request(conn))
    .transpose()
}

/// A request row as stored, before it is checked.
struct StoredRequest {
    id: i64,
    requester: Principal,
    target: String,
    duration_ms: i64,
    reason: String,
    kind: String,
    created_at: UnixMs,
    expires_at: UnixMs,
    needed: u32,
    outcome: Option<String>,
    decided_at: Option<UnixMs>,
    grant_id: Option<i64>,
    denied_by: Option<Principal>,
    deny_reason: Option<String>,
    human: u32,
    human_name: Option<String>,
}

fn read_request(row: &Row<'_>) -> rusqlite::Result<StoredRequest> {
    let denied_by = match row.get::<_, Option<u32>>(14)? {
        Some(uid) => Some(Principal {
            uid,
            name: row.get(15)?,
            login_uid: row.get(16)?,
        }),
        None => None,
    };
    Ok(StoredRequest {
        id: row.get(0)?,
        requester: Principal {
            uid: row.get(1)?,
            name: row.get(2)?,
            login_uid: row.get(3)?,
        },
        target: row.get(4)?,
        duration_ms: row.get(5)?,
        reason: row.get(6)?,
        kind: row.get(7)?,
        created_at: row.get(8)?,
        expires_at: row.get(9)?,
        needed: row.get(10)?,
        outcome: row.get(11)?,
        decided_at: row.get(12)?,
        grant_id: row.get(13)?,
        denied_by,
        deny_reason: row.get(17)?,
        human: row.get(18)?,
        human_name: row.get(19)?,
    })
}

impl StoredRequest {
    /// The request with its approvals, or why the row is not one.
    fn into_request(self, conn: &Connection) -> Result<AccessRequest, StoreError> {
        let id = self.id;
        let corrupt = |why: &str| StoreError::CorruptRequest {
            id,
            why: why.to_owned(),
        };
        let kind: RequestKind = self.kind.parse().map_err(|e: String| corrupt(&e))?;
        let outcome = match (
            self.outcome.as_deref(),
            self.decided_at,
            self.grant_id,
            self.denied_by,
            self.deny_reason,
        ) {
            (None, None, None, None, None) => None,
            (Some("granted"), Some(at), Some(grant_id), None, None) => {
                Some(Outcome::Granted { at, grant_id })
            }
            (Some("denied"), Some(at), None, Some(by), Some(reason)) => {
                Some(Outcome::Denied { at, by, reason })
            }
            (Some("expired"), Some(at), None, None, None) => Some(Outcome::Expired { at }),
            _ => return Err(corrupt("its outcome is partly recorded")),
        };
        let mut stmt = conn.prepare_cached(
            "SELECT by_uid, by_name, by_login_uid, at, reason FROM approvals
             WHERE request_id = ?1 ORDER BY at, human_uid",
        )?;
        let approvals = stmt
            .query_map([id], |r| {
                Ok(Approval {
                    by: Principal {
                        uid: r.get(0)?,
                        name: r.get(1)?,
                        login_uid: r.get(2)?,
                    },
                    at: r.get(3)?,
                    reason: r.get(4)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AccessRequest {
            id,
            requester: self.requester,
            human: self.human,
            human_name: self.human_name,
            target: self.target,
            duration_ms: self.duration_ms,
            reason: self.reason,
            kind,
            created_at: self.created_at,
            expires_at: self.expires_at,
            needed: self.needed,
            approvals,
            outcome,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{Grant, GrantStore as _, Outbox as _, Route, Subject};

    fn person(uid: u32) -> Principal {
        Principal {
            uid,
            name: Some(format!("u{uid}")),
            login_uid: None,
        }
    }

    fn asked(uid: u32, needed: u32, expires_at: UnixMs) -> NewRequest {
        NewRequest {
            requester: person(uid),
            human: uid,
            human_name: None,
            target: "api".to_owned(),
            duration_ms: 3_600_000,
            reason: "INC-1".to_owned(),
            kind: RequestKind::Asked,
            expires_at,
            needed,
        }
    }

    fn grant_for(uid: u32, now: UnixMs) -> NewGrant {
        NewGrant {
            subject: Subject::User(uid),
            subject_name: None,
            target: "api".to_owned(),
            starts_at: now,
            ends_at: now + 3_600_000,
            reason: "INC-1".to_owned(),
            granted_by: person(0),
            scopes: Vec::new(),
            request_id: None,
        }
    }

    fn approval(uid: u32, at: UnixMs) -> Approval {
        Approval {
            by: person(uid),
            at,
            reason: None,
        }
    }

    /// Stores `new` (with `grant`); what was stored.
    fn insert(
        store: &mut SqliteStore,
        new: &NewRequest,
        grant: Option<&NewGrant>,
        now: UnixMs,
    ) -> (AccessRequest, Option<Box<Grant>>) {
        match store.insert_request(new, grant, now).unwrap() {
            Inserted::Stored(request, grant) => (request, grant),
            Inserted::AlreadyPending(r) => panic!("not stored: #{} is pending", r.id),
        }
    }

    fn store_with_route() -> SqliteStore {
        let mut store = SqliteStore::in_memory().unwrap();
        store.set_routes(vec![Route {
            name: "hook".to_owned(),
            events: Vec::new(),
        }]);
        store
    }

    fn queued_events(store: &SqliteStore) -> Vec<String> {
        store
            .due(i64::MAX, 100)
            .unwrap()
            .into_iter()
            .map(|d| d.notice.event)
            .collect()
    }

    #[test]
    fn two_distinct_approvals_make_one_grant() {
        let mut store = store_with_route();
        let (request, none) = insert(&mut store, &asked(1001, 2, 10_000), None, 1);
        assert!(none.is_none());
        let first = store
            .approve(request.id, 2001, &approval(2001, 2), &grant_for(1001, 2), 2)
            .unwrap();
        assert!(matches!(&first, Approved::Counted(r) if r.approvals.len() == 1));
        // The same human again counts for nothing.
        let again = store
            .approve(request.id, 2001, &approval(2001, 3), &grant_for(1001, 3), 3)
            .unwrap();
        assert!(matches!(again, Approved::AlreadyApproved(_)));
        let Approved::Granted(decided, grant) = store
            .approve(request.id, 2002, &approval(2002, 4), &grant_for(1001, 4), 4)
            .unwrap()
        else {
            panic!("the second approval made no grant");
        };
        assert_eq!(grant.request_id, Some(request.id));
        assert_eq!(decided.grant_id(), Some(grant.id));
        assert_eq!(store.open_grants(5).unwrap().len(), 1);
        // Decided: a third approval changes nothing.
        let late = store
            .approve(request.id, 2003, &approval(2003, 5), &grant_for(1001, 5), 5)
            .unwrap();
        assert!(matches!(late, Approved::NotPending(_)));
        assert_eq!(store.open_grants(5).unwrap().len(), 1);
        assert_eq!(
            queued_events(&store),
            [
                "request.created",
                "request.approved",
                "request.approved",
                "grant.created"
            ]
        );
    }

    #[test]
    fn an_expired_request_is_expired_once_and_cannot_be_decided() {
        let mut store = store_with_route();
        let (request, _) = insert(&mut store, &asked(1001, 1, 100), None, 1);
        // Past its expiry, before the expiry task ran: still refused.
        let late = store
            .approve(
                request.id,
                2001,
                &approval(2001, 150),
                &grant_for(1001, 150),
                150,
            )
            .unwrap();
        assert!(matches!(late, Approved::NotPending(_)));
        assert!(store
            .deny(request.id, &person(2001), "no", 150)
            .unwrap()
            .is_none());
        let expired = store.expire_requests(200).unwrap();
        assert_eq!(expired.len(), 1);
        assert!(matches!(
            expired[0].outcome,
            Some(Outcome::Expired { at: 100 })
        ));
        assert!(
            store.expire_requests(300).unwrap().is_empty(),
            "expired twice"
        );
        assert!(store.open_grants(300).unwrap().is_empty());
        assert_eq!(
            queued_events(&store),
            ["request.created", "request.expired"]
        );
    }

    #[test]
    fn a_denial_keeps_its_reason_and_ends_the_request() {
        let mut store = store_with_route();
        let (request, _) = insert(&mut store, &asked(1001, 1, 10_000), None, 1);
        let denied = store
            .deny(request.id, &person(2001), "use staging", 5)
            .unwrap()
            .unwrap();
        assert!(matches!(
            &denied.outcome,
            Some(Outcome::Denied { reason, by, .. }) if reason == "use staging" && by.uid == 2001
        ));
        assert!(store
            .deny(request.id, &person(2002), "again", 6)
            .unwrap()
            .is_none());
        let after = store
            .approve(request.id, 2002, &approval(2002, 7), &grant_for(1001, 7), 7)
            .unwrap();
        assert!(matches!(after, Approved::NotPending(_)));
    }

    #[test]
    fn one_pending_request_per_human_and_target() {
        let mut store = store_with_route();
        let (first, _) = insert(&mut store, &asked(1001, 1, 10_000), None, 1);
        let again = store
            .insert_request(&asked(1001, 1, 10_000), None, 2)
            .unwrap();
        assert!(matches!(again, Inserted::AlreadyPending(r) if r.id == first.id));
        // Another human, or the same one once the first expired: stored.
        insert(&mut store, &asked(1002, 1, 10_000), None, 3);
        insert(&mut store, &asked(1001, 1, 20_000), None, 10_000);
        assert_eq!(
            store.pending_requests(10_000).unwrap().len(),
            1,
            "1002's expired at 10 000"
        );
        assert_eq!(store.requests_of(1001, 0, 10).unwrap().len(), 2);
    }

    #[test]
    fn break_glass_goes_out_first() {
        let mut store = store_with_route();
        insert(&mut store, &asked(1001, 1, 10_000), None, 1);
        let glass = NewRequest {
            kind: RequestKind::BreakGlass,
            ..asked(1002, 0, 1)
        };
        insert(&mut store, &glass, Some(&grant_for(1002, 1)), 2);
        assert_eq!(
            queued_events(&store),
            ["break_glass.used", "request.created", "grant.created"]
        );
    }

    #[test]
    fn an_immediate_request_is_stored_with_its_grant() {
        let mut store = store_with_route();
        let new = NewRequest {
            kind: RequestKind::BreakGlass,
            ..asked(1001, 0, 1)
        };
        let (request, grant) = insert(&mut store, &new, Some(&grant_for(1001, 1)), 1);
        let grant = grant.unwrap();
        assert_eq!(request.grant_id(), Some(grant.id));
        assert_eq!(grant.request_id, Some(request.id));
        assert_eq!(queued_events(&store), ["break_glass.used", "grant.created"]);
    }

    #[test]
    fn a_delivery_keeps_its_key_until_it_is_delivered() {
        let mut store = store_with_route();
        store
            .insert_request(&asked(1001, 1, 10_000), None, 1)
            .unwrap();
        let first = store.due(10, 10).unwrap();
        assert_eq!(first.len(), 1);
        store
            .failed(first[0].id, 1_000, "the webhook answered 503")
            .unwrap();
        assert!(
            store.due(999, 10).unwrap().is_empty(),
            "due before its retry"
        );
        assert_eq!(store.next_due().unwrap(), Some(1_000));
        let retry = store.due(1_000, 10).unwrap();
        assert_eq!(
            (retry[0].key.as_str(), retry[0].attempts),
            (first[0].key.as_str(), 1)
        );
        store.delivered(retry[0].id, 1_001).unwrap();
        assert!(store.due(i64::MAX, 10).unwrap().is_empty());
        assert_eq!(store.undelivered().unwrap(), 0);
        // No route, no notice.
        store.set_routes(Vec::new());
        store
            .insert_request(&asked(1002, 1, 10_000), None, 2)
            .unwrap();
        assert_eq!(store.undelivered().unwrap(), 0);
    }
}
