//! Durable grants in SQLite (WAL, `synchronous=FULL`): a grant that the
//! control API acknowledged survives a crash or `kill -9` of the daemon.
//! Only the daemon opens the database; the CLI goes through the control API.
//!
//! Calls block on disk; the daemon runs them on the blocking pool, never on
//! the data path.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension as _, Row};

use super::{EndKind, Ending, Grant, Principal, Subject, UnixMs};

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
        source: rusqlite::Error,
    },
    #[error("grant database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("grant database was written by a newer jitproxy (schema {found}, this one knows {known}); upgrade jitproxy")]
    TooNew { found: i64, known: i64 },
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
    pub scopes: Vec<String>,
}

/// The grant database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
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

    /// Stores a new grant and returns it with its id.
    pub fn insert(&mut self, new: &NewGrant, now: UnixMs) -> Result<Grant, StoreError> {
        let (kind, id) = subject_parts(new.subject);
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
                serde_json::to_string(&new.scopes).unwrap_or_else(|_| "[]".to_owned()),
            ],
        )?;
        let id = self.conn.last_insert_rowid();
        self.get(id)?
            .ok_or(StoreError::Sql(rusqlite::Error::QueryReturnedNoRows))
    }

    pub fn get(&self, id: i64) -> Result<Option<Grant>, StoreError> {
        Ok(self
            .conn
            .query_row(&format!("{SELECT} WHERE id = ?1"), [id], grant_from_row)
            .optional()?)
    }

    /// Grants whose window has not closed by `now` and that were not ended.
    pub fn open_grants(&self, now: UnixMs) -> Result<Vec<Grant>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "{SELECT} WHERE ended_at IS NULL AND ends_at > ?1 ORDER BY id"
        ))?;
        let rows = stmt.query_map([now], grant_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every grant, newest first, at most `limit`.
    pub fn all(&self, limit: usize) -> Result<Vec<Grant>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("{SELECT} ORDER BY id DESC LIMIT ?1"))?;
        let rows = stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], grant_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Ends the open grants with these ids at `now`; returns those ended.
    pub fn end(
        &mut self,
        ids: &[i64],
        by: &Principal,
        kind: EndKind,
        now: UnixMs,
    ) -> Result<Vec<Grant>, StoreError> {
        let tx = self.conn.transaction()?;
        let kind_text = match kind {
            EndKind::Revoked => "revoked",
            EndKind::Dropped => "dropped",
        };
        let mut ended = Vec::new();
        for &id in ids {
            let changed = tx.execute(
                "UPDATE grants SET ended_at = ?2, ended_by_uid = ?3, ended_by_name = ?4,
                        ended_by_login_uid = ?5, end_kind = ?6
                 WHERE id = ?1 AND ended_at IS NULL AND ends_at > ?2",
                params![id, now, by.uid, by.name, by.login_uid, kind_text],
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

fn subject_parts(subject: Subject) -> (&'static str, u32) {
    match subject {
        Subject::User(uid) => ("user", uid),
        Subject::Group(gid) => ("group", gid),
    }
}

fn grant_from_row(row: &Row<'_>) -> rusqlite::Result<Grant> {
    let kind: String = row.get(1)?;
    let subject_id: u32 = row.get(2)?;
    let subject = if kind == "group" {
        Subject::Group(subject_id)
    } else {
        Subject::User(subject_id)
    };
    let ended_at: Option<UnixMs> = row.get(12)?;
    let end_kind: Option<String> = row.get(16)?;
    let ended = match (ended_at, row.get::<_, Option<u32>>(13)?) {
        (Some(at), Some(uid)) => Some(Ending {
            at,
            by: Principal {
                uid,
                name: row.get(14)?,
                login_uid: row.get(15)?,
            },
            kind: if end_kind.as_deref() == Some("dropped") {
                EndKind::Dropped
            } else {
                EndKind::Revoked
            },
        }),
        _ => None,
    };
    let scopes: String = row.get(17)?;
    Ok(Grant {
        id: row.get(0)?,
        subject,
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
        ended,
        scopes: serde_json::from_str(&scopes).unwrap_or_default(),
    })
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
        let mut store = Store::in_memory().unwrap();
        let g = store.insert(&new_grant(1000, 0, 100), 0).unwrap();
        assert_eq!(g.subject, Subject::User(1000));
        assert_eq!(store.open_grants(50).unwrap().len(), 1);
        assert_eq!(
            store.open_grants(100).unwrap().len(),
            0,
            "expired at its end"
        );
        let ended = store.end(&[g.id], &root(), EndKind::Revoked, 60).unwrap();
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].ended.as_ref().unwrap().kind, EndKind::Revoked);
        assert!(store.open_grants(61).unwrap().is_empty());
        // Ending twice changes nothing.
        assert!(store
            .end(&[g.id], &root(), EndKind::Dropped, 70)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grants.db");
        let id = Store::open(&path)
            .unwrap()
            .insert(&new_grant(7, 0, 100), 0)
            .unwrap()
            .id;
        let store = Store::open(&path).unwrap();
        assert_eq!(store.get(id).unwrap().unwrap().subject, Subject::User(7));
    }
}
