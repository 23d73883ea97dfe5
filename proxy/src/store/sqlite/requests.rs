//! Access requests and their approvals in SQLite. A decision (the last
//! approval and its grant, a denial, an expiry) is checked and written in
//! one transaction with its notices, so a request is decided once.

use rusqlite::{params, Connection, OptionalExtension as _, Row};

use super::{enqueue, insert_grant, SqliteStore};
use crate::{
    access::{
        notice::Notice, AccessRequest, Approval, Approved, Grant, NewGrant, NewRequest, Outcome,
        Principal, RequestKind, RequestStore, StoreError,
    },
    time::UnixMs,
};

/// The columns of a request row, in the order [`read_request`] reads them.
const COLUMNS: &str = "id, requester_uid, requester_name, requester_login_uid, target,
    duration_ms, reason, kind, created_at, expires_at, needed, outcome, decided_at, grant_id,
    denied_by_uid, denied_by_name, denied_by_login_uid, deny_reason";

impl RequestStore for SqliteStore {
    fn insert_request(
        &mut self,
        new: &NewRequest,
        grant: Option<&NewGrant>,
        now: UnixMs,
    ) -> Result<(AccessRequest, Option<Grant>), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO requests (requester_uid, requester_name, requester_login_uid, target,
                                   duration_ms, reason, kind, created_at, expires_at, needed)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                new.requester.uid,
                new.requester.name,
                new.requester.login_uid,
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
        let granted = match grant {
            Some(grant) => {
                let grant = insert_grant(
                    &tx,
                    &NewGrant {
                        request_id: Some(id),
                        ..grant.clone()
                    },
                    now,
                )?;
                tx.execute(
                    "UPDATE requests SET outcome = 'granted', decided_at = ?2, grant_id = ?3 WHERE id = ?1",
                    params![id, now, grant.id],
                )?;
                Some(grant)
            }
            None => None,
        };
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
        Ok((request, granted))
    }

    fn get_request(&self, id: i64) -> Result<Option<AccessRequest>, StoreError> {
        request_in(&self.conn, id)
    }

    fn requests(&self, since: UnixMs, limit: usize) -> Result<Vec<AccessRequest>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM requests WHERE created_at >= ?1 ORDER BY id DESC LIMIT ?2"
        ))?;
        let rows = stmt
            .query_map(
                params![since, i64::try_from(limit).unwrap_or(i64::MAX)],
                read_request,
            )?
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            match row.into_request(&self.conn) {
                Ok(request) => out.push(request),
                Err(e) => tracing::error!(error = %e, "skipping a corrupt request"),
            }
        }
        Ok(out)
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
            let grant = insert_grant(
                &tx,
                &NewGrant {
                    request_id: Some(id),
                    ..grant.clone()
                },
                now,
            )?;
            tx.execute(
                "UPDATE requests SET outcome = 'granted', decided_at = ?2, grant_id = ?3 WHERE id = ?1",
                params![id, now, grant.id],
            )?;
            let decided = request_in(&tx, id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
            let notices = [
                approved(&decided).with_grant(&grant),
                Notice::of_grant("grant.created", &grant, Some(&approval.by), now),
            ];
            enqueue(&tx, &self.routes, &notices, now)?;
            Approved::Granted(decided, grant)
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
