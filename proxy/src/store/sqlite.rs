//! Grants in SQLite (WAL, `synchronous=FULL`): a grant that the control API
//! acknowledged survives a crash or `kill -9` of the daemon. Only the daemon
//! opens the database; the CLI goes through the control API.
//!
//! Rows are read strictly: an unknown subject kind or end kind, or scopes
//! that do not parse, make the row corrupt, and a corrupt row grants nothing.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension as _, Row};

use crate::{
    access::{Ending, Grant, GrantStore, NewGrant, Principal, Scope, StoreError, Subject},
    time::UnixMs,
};

/// Schema migrations, applied in order; `PRAGMA user_version` is the number
/// applied so far.
const MIGRATIONS: &[&str] = &[r"
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
"];

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Backend(Box::new(e))
    }
}

/// The grant database.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
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
        let mut store = Self { conn };
        store.migrate()?;
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
        let (kind, id) = new.subject.parts();
        let scopes: Vec<String> = new.scopes.iter().map(ToString::to_string).collect();
        self.conn.execute(
            "INSERT INTO grants (subject_kind, subject_id, subject_name, target, starts_at, ends_at, reason,
                                 granted_by_uid, granted_by_name, granted_by_login_uid, created_at, scopes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
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
            ],
        )?;
        let id = self.conn.last_insert_rowid();
        self.get(id)?
            .ok_or_else(|| StoreError::from(rusqlite::Error::QueryReturnedNoRows))
    }

    fn get(&self, id: i64) -> Result<Option<Grant>, StoreError> {
        self.conn
            .query_row(&format!("{SELECT} WHERE id = ?1"), [id], read_row)
            .optional()?
            .map(StoredRow::into_grant)
            .transpose()
    }

    /// Grants whose window has not closed by `now` and that were not ended.
    fn open_grants(&self, now: UnixMs) -> Result<Vec<Grant>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "{SELECT} WHERE ended_at IS NULL AND ends_at > ?1 ORDER BY id"
        ))?;
        let rows = stmt.query_map([now], read_row)?;
        usable(rows)
    }

    /// Every grant, newest first, at most `limit`.
    fn all(&self, limit: usize) -> Result<Vec<Grant>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("{SELECT} ORDER BY id DESC LIMIT ?1"))?;
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
                params![id, at, by.uid, by.name, by.login_uid, kind.as_str()],
            )?;
            if changed == 1 {
                ended.push(id);
            }
        }
        tx.commit()?;
        ended
            .into_iter()
            .filter_map(|id| self.get(id).transpose())
            .collect()
    }
}

const SELECT: &str =
    "SELECT id, subject_kind, subject_id, subject_name, target, starts_at, ends_at, reason,
        granted_by_uid, granted_by_name, granted_by_login_uid, created_at,
        ended_at, ended_by_uid, ended_by_name, ended_by_login_uid, end_kind, scopes FROM grants";

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
        let ended = match (self.ended_at, self.ended_by, self.end_kind) {
            (None, None, None) => None,
            (Some(at), Some(by), Some(kind)) => Some(Ending {
                at,
                by,
                kind: kind.parse().map_err(corrupt)?,
            }),
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
    use crate::access::EndKind;

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
            by: root(),
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
