//! Grants in SQLite (WAL, `synchronous=FULL`): a grant that the control API
//! acknowledged survives a crash or `kill -9` of the daemon. Only the daemon
//! opens the database; the CLI goes through the control API.
//!
//! Rows are read strictly: an unknown subject kind or end kind, or scopes
//! that do not parse, make the row corrupt, and a corrupt row grants nothing.
//!
//! Grants are here; access requests in [`requests`], the webhooks' outbox
//! in [`outbox`]. Every change queues its notices in the same transaction.

mod outbox;
mod requests;

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension as _, Row};

use crate::{
    access::{
        notice::Notice, EndKind, Ending, Grant, GrantStore, NewGrant, Principal, Route, Scope,
        StoreError, Subject,
    },
    time::UnixMs,
};

/// Schema migrations, applied in order; `PRAGMA user_version` is the number
/// applied so far.
const MIGRATIONS: &[&str] = &[
    r"
    CREATE TABLE grants (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        subject_kind    TEXT    NOT NULL CHECK (subject_kind IN ('user', 'group')),
        subject_id      INTEGER NOT NULL,
        subject_name    TEXT,
        target          TEXT    NOT NULL,
        starts_at       INTEGER NOT NULL,
        ends_at         INTEGER NOT NULL,
        reason          TEXT    NOT NULL,
        granted_by_uid  INTEGER NOT NULL,
        granted_by_name TEXT,
        granted_by_login_uid INTEGER,
        created_at      INTEGER NOT NULL,
        ended_at        INTEGER,
        ended_by_uid    INTEGER,
        ended_by_name   TEXT,
        ended_by_login_uid INTEGER,
        end_kind        TEXT CHECK (end_kind IN ('revoked', 'dropped')),
        scopes          TEXT NOT NULL DEFAULT '[]'
    );
    CREATE INDEX grants_open ON grants (ends_at) WHERE ended_at IS NULL;
    CREATE INDEX grants_subject ON grants (subject_kind, subject_id, target);
",
    // 2: an expiry is recorded too (`end_kind = 'expired'`, ended by no one),
    // so that each grant gets one `grant.expired` record, also when its
    // window closed while no daemon ran. SQLite cannot change a CHECK, so the
    // table is rebuilt (ids, and the next id, kept). Grants whose window had
    // closed before are marked expired as they are: a daemon that ran then
    // recorded them, and one that was down never did (as before).
    r"
    CREATE TABLE grants_v2 (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        subject_kind    TEXT    NOT NULL CHECK (subject_kind IN ('user', 'group')),
        subject_id      INTEGER NOT NULL,
        subject_name    TEXT,
        target          TEXT    NOT NULL,
        starts_at       INTEGER NOT NULL,
        ends_at         INTEGER NOT NULL,
        reason          TEXT    NOT NULL,
        granted_by_uid  INTEGER NOT NULL,
        granted_by_name TEXT,
        granted_by_login_uid INTEGER,
        created_at      INTEGER NOT NULL,
        ended_at        INTEGER,
        ended_by_uid    INTEGER,
        ended_by_name   TEXT,
        ended_by_login_uid INTEGER,
        end_kind        TEXT CHECK (end_kind IN ('revoked', 'dropped', 'expired')),
        scopes          TEXT NOT NULL DEFAULT '[]'
    );
    INSERT INTO grants_v2 SELECT * FROM grants;
    UPDATE sqlite_sequence SET seq = (SELECT seq FROM sqlite_sequence WHERE name = 'grants')
     WHERE name = 'grants_v2';
    DROP TABLE grants;
    ALTER TABLE grants_v2 RENAME TO grants;
    CREATE INDEX grants_open ON grants (ends_at) WHERE ended_at IS NULL;
    CREATE INDEX grants_subject ON grants (subject_kind, subject_id, target);
    UPDATE grants SET ended_at = ends_at, end_kind = 'expired'
     WHERE ended_at IS NULL AND ends_at <= CAST(strftime('%s', 'now') AS INTEGER) * 1000;
",
    // 3: access requests and their approvals; the webhooks' outbox; a grant
    // names the request it was given for.
    r"
    ALTER TABLE grants ADD COLUMN request_id INTEGER;
    CREATE TABLE requests (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        requester_uid   INTEGER NOT NULL,
        requester_name  TEXT,
        requester_login_uid INTEGER,
        human_uid       INTEGER NOT NULL,
        human_name      TEXT,
        target          TEXT    NOT NULL,
        duration_ms     INTEGER NOT NULL,
        reason          TEXT    NOT NULL,
        kind            TEXT    NOT NULL CHECK (kind IN ('asked', 'auto_approved', 'break_glass')),
        created_at      INTEGER NOT NULL,
        expires_at      INTEGER NOT NULL,
        needed          INTEGER NOT NULL,
        outcome         TEXT CHECK (outcome IN ('granted', 'denied', 'expired')),
        decided_at      INTEGER,
        grant_id        INTEGER REFERENCES grants (id),
        denied_by_uid   INTEGER,
        denied_by_name  TEXT,
        denied_by_login_uid INTEGER,
        deny_reason     TEXT
    );
    CREATE INDEX requests_pending ON requests (expires_at) WHERE outcome IS NULL;
    CREATE INDEX requests_human ON requests (human_uid, created_at);
    CREATE TABLE approvals (
        request_id      INTEGER NOT NULL REFERENCES requests (id),
        human_uid       INTEGER NOT NULL,
        by_uid          INTEGER NOT NULL,
        by_name         TEXT,
        by_login_uid    INTEGER,
        at              INTEGER NOT NULL,
        reason          TEXT,
        PRIMARY KEY (request_id, human_uid)
    );
    CREATE TABLE outbox (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        route           TEXT    NOT NULL,
        priority        INTEGER NOT NULL DEFAULT 0,
        body            TEXT    NOT NULL,
        created_at      INTEGER NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL,
        delivered_at    INTEGER,
        last_error      TEXT
    );
    CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE delivered_at IS NULL;
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    INSERT INTO meta (key, value) VALUES ('database_id', lower(hex(randomblob(8))));
",
];

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Backend(Box::new(e))
    }
}

/// The grant database.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    /// Which webhooks changes queue notices for.
    routes: Vec<Route>,
    /// Random, made with the database: the first part of every idempotency
    /// key, so keys of a new database never repeat an old one's.
    database_id: String,
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source: Box::new(source),
        })?;
        // Grants name users and reasons: readable by root only.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| StoreError::Dir {
                path: path.display().to_string(),
                source,
            },
        )?;
        Self::init(conn)
    }

    /// An in-memory database, for tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut store = Self {
            conn,
            routes: Vec::new(),
            database_id: String::new(),
        };
        store.migrate()?;
        store.database_id = store.conn.query_row(
            "SELECT value FROM meta WHERE key = 'database_id'",
            [],
            |r| r.get(0),
        )?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
        let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
        if version > known {
            return Err(StoreError::TooNew {
                found: version,
                known,
            });
        }
        let tx = self.conn.transaction()?;
        for (i, sql) in MIGRATIONS
            .iter()
            .enumerate()
            .skip(usize::try_from(version).unwrap_or(0))
        {
            tx.execute_batch(sql)?;
            tx.pragma_update(
                None,
                "user_version",
                i64::try_from(i + 1).unwrap_or(i64::MAX),
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}

impl GrantStore for SqliteStore {
    /// Stores a new grant and returns it with its id.
    fn insert(&mut self, new: &NewGrant, now: UnixMs) -> Result<Grant, StoreError> {
        let tx = self.conn.transaction()?;
        let grant = insert_grant(&tx, new, now)?;
        let notice = Notice::of_grant("grant.created", &grant, Some(&grant.granted_by), now);
        enqueue(&tx, &self.routes, &[notice], now)?;
        tx.commit()?;
        Ok(grant)
    }

    fn get(&self, id: i64) -> Result<Option<Grant>, StoreError> {
        grant_in(&self.conn, id)
    }

    /// Grants whose window has not closed by `now` and that were not ended.
    fn open_grants(&self, now: UnixMs) -> Result<Vec<Grant>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM grants WHERE ended_at IS NULL AND ends_at > ?1 ORDER BY id"
        ))?;
        let rows = stmt.query_map([now], read_row)?;
        usable(rows)
    }

    /// Every grant, newest first, at most `limit`.
    fn all(&self, limit: usize) -> Result<Vec<Grant>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM grants ORDER BY id DESC LIMIT ?1"
        ))?;
        let rows = stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], read_row)?;
        usable(rows)
    }

    /// Ends the open grants with these ids at `now`; returns those ended.
    fn end(&mut self, ids: &[i64], ending: &Ending) -> Result<Vec<Grant>, StoreError> {
        let Ending { at, by, kind } = ending;
        let tx = self.conn.transaction()?;
        let mut ended = Vec::new();
        for &id in ids {
            let changed = tx.execute(
                "UPDATE grants SET ended_at = ?2, ended_by_uid = ?3, ended_by_name = ?4,
                        ended_by_login_uid = ?5, end_kind = ?6
                 WHERE id = ?1 AND ended_at IS NULL AND ends_at > ?2",
                params![
                    id,
                    at,
                    by.as_ref().map(|b| b.uid),
                    by.as_ref().map(|b| b.name.clone()),
                    by.as_ref().map(|b| b.login_uid),
                    kind.as_str()
                ],
            )?;
            if changed == 1 {
                if let Some(grant) = grant_in(&tx, id)? {
                    ended.push(grant);
                }
            }
        }
        let notices: Vec<Notice> = ended
            .iter()
            .map(|g| Notice::of_grant("grant.ended", g, by.as_ref(), *at))
            .collect();
        enqueue(&tx, &self.routes, &notices, *at)?;
        tx.commit()?;
        Ok(ended)
    }

    /// Ends, as expired at their window's end, the grants whose window closed
    /// by `now` and whose end is not recorded, in one statement: a grant is
    /// updated, and so returned, once. A corrupt one is ended too (it never
    /// granted anything) and logged, once.
    fn expire(&mut self, now: UnixMs) -> Result<Vec<Grant>, StoreError> {
        let tx = self.conn.transaction()?;
        let mut expired = {
            let mut stmt = tx.prepare(&format!(
                "UPDATE grants SET ended_at = ends_at, end_kind = 'expired'
                 WHERE ended_at IS NULL AND ends_at <= ?1 RETURNING {COLUMNS}"
            ))?;
            let rows = stmt.query_map([now], read_row)?;
            usable(rows)?
        };
        expired.sort_by_key(|g| g.id);
        let notices: Vec<Notice> = expired
            .iter()
            .map(|g| Notice::of_grant("grant.ended", g, None, g.effective_end()))
            .collect();
        enqueue(&tx, &self.routes, &notices, now)?;
        tx.commit()?;
        Ok(expired)
    }
}

/// Inserts a grant row in `conn` (a transaction's) and reads it back.
fn insert_grant(conn: &Connection, new: &NewGrant, now: UnixMs) -> Result<Grant, StoreError> {
    let (kind, id) = new.subject.parts();
    let scopes: Vec<String> = new.scopes.iter().map(ToString::to_string).collect();
    conn.execute(
        "INSERT INTO grants (subject_kind, subject_id, subject_name, target, starts_at, ends_at, reason,
                             granted_by_uid, granted_by_name, granted_by_login_uid, created_at, scopes,
                             request_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        params![
            kind,
            id,
            new.subject_name,
            new.target,
            new.starts_at,
            new.ends_at,
            new.reason,
            new.granted_by.uid,
            new.granted_by.name,
            new.granted_by.login_uid,
            now,
            serde_json::to_string(&scopes).unwrap_or_else(|_| "[]".to_owned()),
            new.request_id,
        ],
    )?;
    grant_in(conn, conn.last_insert_rowid())?
        .ok_or_else(|| StoreError::from(rusqlite::Error::QueryReturnedNoRows))
}

/// Grant `id` as `conn` sees it.
fn grant_in(conn: &Connection, id: i64) -> Result<Option<Grant>, StoreError> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM grants WHERE id = ?1"),
        [id],
        read_row,
    )
    .optional()?
    .map(StoredRow::into_grant)
    .transpose()
}

/// Queues `notices` for every route that wants them, in `conn` (the
/// transaction of the change they tell of).
fn enqueue(
    conn: &Connection,
    routes: &[Route],
    notices: &[Notice],
    now: UnixMs,
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO outbox (route, priority, body, created_at, next_attempt_at)
         VALUES (?1, ?2, ?3, ?4, ?4)",
    )?;
    for notice in notices {
        let body = serde_json::to_string(notice).map_err(|e| StoreError::Backend(Box::new(e)))?;
        // Break-glass goes out before anything queued ahead of it.
        let priority = i64::from(notice.event == "break_glass.used");
        for route in routes.iter().filter(|r| r.wants(&notice.event)) {
            stmt.execute(params![route.name, priority, body, now])?;
        }
    }
    Ok(())
}

/// The columns of a grant row, in the order [`read_row`] reads them.
const COLUMNS: &str =
    "id, subject_kind, subject_id, subject_name, target, starts_at, ends_at, reason,
    granted_by_uid, granted_by_name, granted_by_login_uid, created_at,
    ended_at, ended_by_uid, ended_by_name, ended_by_login_uid, end_kind, scopes, request_id";

/// A row as stored, before it is checked.
struct StoredRow {
    id: i64,
    subject_kind: String,
    subject_id: u32,
    subject_name: Option<String>,
    target: String,
    starts_at: UnixMs,
    ends_at: UnixMs,
    reason: String,
    granted_by: Principal,
    created_at: UnixMs,
    ended_at: Option<UnixMs>,
    ended_by: Option<Principal>,
    end_kind: Option<String>,
    scopes: String,
    request_id: Option<i64>,
}

fn read_row(row: &Row<'_>) -> rusqlite::Result<StoredRow> {
    let ended_by = match row.get::<_, Option<u32>>(13)? {
        Some(uid) => Some(Principal {
            uid,
            name: row.get(14)?,
            login_uid: row.get(15)?,
        }),
        None => None,
    };
    Ok(StoredRow {
        id: row.get(0)?,
        subject_kind: row.get(1)?,
        subject_id: row.get(2)?,
        subject_name: row.get(3)?,
        target: row.get(4)?,
        starts_at: row.get(5)?,
        ends_at: row.get(6)?,
        reason: row.get(7)?,
        granted_by: Principal {
            uid: row.get(8)?,
            name: row.get(9)?,
            login_uid: row.get(10)?,
        },
        created_at: row.get(11)?,
        ended_at: row.get(12)?,
        ended_by,
        end_kind: row.get(16)?,
        scopes: row.get(17)?,
        request_id: row.get(18)?,
    })
}

impl StoredRow {
    /// The grant, or why the row is not one.
    fn into_grant(self) -> Result<Grant, StoreError> {
        let corrupt = |why: String| StoreError::Corrupt { id: self.id, why };
        let subject = Subject::from_parts(&self.subject_kind, self.subject_id).map_err(corrupt)?;
        let scopes: Vec<String> = serde_json::from_str(&self.scopes)
            .map_err(|e| corrupt(format!("scopes are not a JSON list of strings: {e}")))?;
        let scopes = scopes
            .iter()
            .map(|s| s.parse::<Scope>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(corrupt)?;
        let ended = match (self.ended_at, self.end_kind) {
            (None, None) if self.ended_by.is_none() => None,
            (Some(at), Some(kind)) => {
                let kind: EndKind = kind.parse().map_err(corrupt)?;
                // Someone ends a grant early; the clock ends it by no one.
                match (kind, self.ended_by) {
                    (EndKind::Expired, None) => Some(Ending { at, by: None, kind }),
                    (EndKind::Revoked | EndKind::Dropped, Some(by)) => Some(Ending {
                        at,
                        by: Some(by),
                        kind,
                    }),
                    (EndKind::Expired, Some(_)) => {
                        return Err(corrupt("an expiry names who ended it".to_owned()))
                    }
                    (EndKind::Revoked | EndKind::Dropped, None) => {
                        return Err(corrupt("an early end names no one who ended it".to_owned()))
                    }
                }
            }
            _ => return Err(corrupt("the end is partly recorded".to_owned())),
        };
        Ok(Grant {
            id: self.id,
            subject,
            subject_name: self.subject_name,
            target: self.target,
            starts_at: self.starts_at,
            ends_at: self.ends_at,
            reason: self.reason,
            granted_by: self.granted_by,
            created_at: self.created_at,
            ended,
            scopes,
            request_id: self.request_id,
        })
    }
}

/// The grants among `rows`; corrupt ones are logged and left out, so they
/// grant nothing.
fn usable(
    rows: impl Iterator<Item = rusqlite::Result<StoredRow>>,
) -> Result<Vec<Grant>, StoreError> {
    let mut grants = Vec::new();
    for row in rows {
        let row = match row {
            Ok(row) => row,
            // A value of the wrong type or range: that row is corrupt, the
            // others still count.
            Err(
                e @ (rusqlite::Error::FromSqlConversionFailure(..)
                | rusqlite::Error::IntegralValueOutOfRange(..)
                | rusqlite::Error::InvalidColumnType(..)),
            ) => {
                tracing::error!(error = %e, "skipping a corrupt grant row");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        match row.into_grant() {
            Ok(grant) => grants.push(grant),
            Err(e) => tracing::error!(error = %e, "skipping a corrupt grant"),
        }
    }
    Ok(grants)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> Principal {
        Principal {
            uid: 0,
            name: Some("root".into()),
            login_uid: None,
        }
    }

    fn ending(kind: EndKind, at: UnixMs) -> Ending {
        Ending {
            at,
            by: Some(root()),
            kind,
        }
    }

    fn new_grant(uid: u32, start: UnixMs, end: UnixMs) -> NewGrant {
        NewGrant {
            subject: Subject::User(uid),
            subject_name: Some("alice".into()),
            target: "api".into(),
            starts_at: start,
            ends_at: end,
            reason: "INC-1".into(),
            granted_by: root(),
            scopes: Vec::new(),
            request_id: None,
        }
    }

    #[test]
    fn insert_list_end() {
        let mut store = SqliteStore::in_memory().unwrap();
        let g = store.insert(&new_grant(1000, 0, 100), 0).unwrap();
        assert_eq!(g.subject, Subject::User(1000));
        assert_eq!(store.open_grants(50).unwrap().len(), 1);
        assert_eq!(
            store.open_grants(100).unwrap().len(),
            0,
            "expired at its end"
        );
        let ended = store.end(&[g.id], &ending(EndKind::Revoked, 60)).unwrap();
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].ended.as_ref().unwrap().kind, EndKind::Revoked);
        assert!(store.open_grants(61).unwrap().is_empty());
        // Ending twice changes nothing.
        assert!(store
            .end(&[g.id], &ending(EndKind::Dropped, 70))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn an_expiry_is_recorded_once_and_only_for_closed_unended_windows() {
        let mut store = SqliteStore::in_memory().unwrap();
        let closed = store.insert(&new_grant(1000, 0, 100), 0).unwrap().id;
        let open = store.insert(&new_grant(1000, 0, 500), 0).unwrap().id;
        let revoked = store.insert(&new_grant(1000, 0, 100), 0).unwrap().id;
        store
            .end(&[revoked], &ending(EndKind::Revoked, 50))
            .unwrap();

        let expired = store.expire(200).unwrap();
        assert_eq!(expired.iter().map(|g| g.id).collect::<Vec<_>>(), [closed]);
        let end = expired[0].ended.clone().expect("its end is recorded");
        assert_eq!(
            end,
            Ending {
                at: 100,
                by: None,
                kind: EndKind::Expired
            },
            "expired at its window's end, by no one"
        );
        assert_eq!(store.get(closed).unwrap().unwrap().ended, Some(end));
        assert!(store.expire(300).unwrap().is_empty(), "never twice");
        // The open one expires when its window closes, exactly then.
        assert!(store.expire(499).unwrap().is_empty());
        let later = store.expire(500).unwrap();
        assert_eq!(later.iter().map(|g| g.id).collect::<Vec<_>>(), [open]);
        // The revoked one kept its own end.
        let kept = store.get(revoked).unwrap().unwrap().ended.unwrap();
        assert_eq!((kept.kind, kept.at), (EndKind::Revoked, 50));
    }

    #[test]
    fn an_end_is_read_strictly_by_its_kind() {
        let mut store = SqliteStore::in_memory().unwrap();
        let by_someone = store.insert(&new_grant(1000, 0, 100), 0).unwrap().id;
        let revoked_by_no_one = store.insert(&new_grant(1000, 0, 100), 0).unwrap().id;
        store.expire(100).unwrap();
        store
            .conn
            .execute(
                "UPDATE grants SET ended_by_uid = 0 WHERE id = ?1",
                [by_someone],
            )
            .unwrap();
        store
            .conn
            .execute(
                "UPDATE grants SET end_kind = 'revoked' WHERE id = ?1",
                [revoked_by_no_one],
            )
            .unwrap();
        for id in [by_someone, revoked_by_no_one] {
            assert!(
                matches!(store.get(id), Err(StoreError::Corrupt { id: c, .. }) if c == id),
                "grant {id} read as {:?}",
                store.get(id)
            );
        }
    }

    #[test]
    fn migrating_from_schema_1_keeps_ids_and_marks_closed_windows_expired() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        let now = crate::time::now_ms();
        let insert = |ends_at: UnixMs, end_kind: Option<&str>| {
            conn.execute(
                "INSERT INTO grants (subject_kind, subject_id, target, starts_at, ends_at, reason,
                                     granted_by_uid, created_at, ended_at, ended_by_uid, end_kind)
                 VALUES ('user', 1000, 'api', 0, ?1, 'INC-1', 0, 0, ?2, ?3, ?4)",
                params![ends_at, end_kind.map(|_| 10), end_kind.map(|_| 0), end_kind],
            )
            .unwrap();
            conn.last_insert_rowid()
        };
        let closed = insert(now - 60_000, None);
        let open = insert(now + 3_600_000, None);
        let revoked = insert(now - 60_000, Some("revoked"));
        // The newest row was removed: its id is still never given again.
        let removed = insert(now + 3_600_000, None);
        conn.execute("DELETE FROM grants WHERE id = ?1", [removed])
            .unwrap();

        let mut store = SqliteStore::init(conn).unwrap();
        let version: i64 = store
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, i64::try_from(MIGRATIONS.len()).unwrap());
        // Recorded by the daemon that ran when it closed: not again.
        let ended = store.get(closed).unwrap().unwrap().ended.unwrap();
        assert_eq!((ended.kind, ended.at), (EndKind::Expired, now - 60_000));
        assert!(store.expire(now).unwrap().is_empty());
        assert!(store.get(open).unwrap().unwrap().ended.is_none());
        let kept = store.get(revoked).unwrap().unwrap().ended.unwrap();
        assert_eq!(
            (kept.kind, kept.by.map(|b| b.uid)),
            (EndKind::Revoked, Some(0))
        );
        let next = store.insert(&new_grant(7, 0, 100), 0).unwrap().id;
        assert_eq!(next, removed + 1, "ids go on after the migration");
        assert_eq!(
            store
                .open_grants(now)
                .unwrap()
                .iter()
                .map(|g| g.id)
                .collect::<Vec<_>>(),
            [open]
        );
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grants.db");
        let id = SqliteStore::open(&path)
            .unwrap()
            .insert(&new_grant(7, 0, 100), 0)
            .unwrap()
            .id;
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.get(id).unwrap().unwrap().subject, Subject::User(7));
    }

    #[test]
    fn corrupt_rows_grant_nothing() {
        let mut store = SqliteStore::in_memory().unwrap();
        let scopes = store.insert(&new_grant(1000, 0, 100), 0).unwrap().id;
        let kind = store.insert(&new_grant(1000, 0, 100), 0).unwrap().id;
        let fine = store.insert(&new_grant(2000, 0, 100), 0).unwrap().id;
        store
            .conn
            .execute(
                "UPDATE grants SET scopes = 'GET /*' WHERE id = ?1",
                [scopes],
            )
            .unwrap();
        // Written by something that ignored the schema's CHECK.
        store
            .conn
            .pragma_update(None, "ignore_check_constraints", true)
            .unwrap();
        store
            .conn
            .execute(
                "UPDATE grants SET subject_kind = 'role' WHERE id = ?1",
                [kind],
            )
            .unwrap();

        let open = store.open_grants(50).unwrap();
        assert_eq!(open.iter().map(|g| g.id).collect::<Vec<_>>(), [fine]);
        assert!(matches!(store.get(scopes), Err(StoreError::Corrupt { id, .. }) if id == scopes));
        assert!(matches!(store.get(kind), Err(StoreError::Corrupt { id, .. }) if id == kind));
        // Neither reaches the index, so uid 1000 is refused, not widened.
        let index = crate::access::GrantIndex::build(&open, 50, |_| Some(0));
        let alice = crate::access::Keys {
            uid: 1000,
            gids: Vec::new(),
        };
        assert_eq!(index.cover(&alice, 0, 50), None);
        assert_eq!(store.all(10).unwrap().len(), 1);
    }

    #[test]
    fn a_row_of_the_wrong_type_is_skipped_not_fatal() {
        let mut store = SqliteStore::in_memory().unwrap();
        let bad = store.insert(&new_grant(1000, 0, 100), 0).unwrap().id;
        let fine = store.insert(&new_grant(2000, 0, 100), 0).unwrap().id;
        // A subject id beyond u32.
        store
            .conn
            .execute(
                "UPDATE grants SET subject_id = 1099511627776 WHERE id = ?1",
                [bad],
            )
            .unwrap();
        let open = store.open_grants(50).expect("the other rows still read");
        assert_eq!(open.iter().map(|g| g.id).collect::<Vec<_>>(), [fine]);
    }
}
