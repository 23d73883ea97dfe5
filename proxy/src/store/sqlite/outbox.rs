//! The webhooks' outbox in SQLite: notices queued by the changes they tell
//! of, taken off once delivered. Delivered ones are kept a week, then
//! removed.

use rusqlite::{params, OptionalExtension as _};

use super::SqliteStore;
use crate::{
    access::{Delivery, Outbox, Route, StoreError},
    time::UnixMs,
};

/// Delivered notices are removed after this long.
const KEEP_DELIVERED_MS: i64 = 7 * 24 * 3600 * 1000;
/// A notice that does not parse is tried again after this long.
const PARKED_MS: i64 = 3600 * 1000;

impl Outbox for SqliteStore {
    fn set_routes(&mut self, routes: Vec<Route>) {
        self.routes = routes;
    }

    fn due(&self, now: UnixMs, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, route, body, attempts FROM outbox
             WHERE delivered_at IS NULL AND next_attempt_at <= ?1
             ORDER BY priority DESC, id LIMIT ?2",
        )?;
        let rows = stmt
            .query_map(
                params![now, i64::try_from(limit).unwrap_or(i64::MAX)],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, u32>(3)?,
                    ))
                },
            )?
            .collect::<Result<Vec<_>, _>>()?;
        let mut due = Vec::with_capacity(rows.len());
        for (id, route, body, attempts) in rows {
            match serde_json::from_str(&body) {
                Ok(notice) => due.push(Delivery {
                    id,
                    route,
                    key: format!("{}-{id}", self.database_id),
                    notice,
                    attempts,
                }),
                // Written by this code, so never expected (a downgrade, a
                // damaged file): kept, not lost, and set aside for an hour
                // so that it cannot keep the delivery loop busy.
                Err(e) => {
                    tracing::error!(id, error = %e, "an outbox notice does not parse; left queued");
                    self.conn.execute(
                        "UPDATE outbox SET next_attempt_at = ?2, last_error = 'does not parse' WHERE id = ?1",
                        params![id, now + PARKED_MS],
                    )?;
                }
            }
        }
        Ok(due)
    }

    fn next_due(&self) -> Result<Option<UnixMs>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT MIN(next_attempt_at) FROM outbox WHERE delivered_at IS NULL",
                [],
                |r| r.get::<_, Option<i64>>(0),
            )
            .optional()?
            .flatten())
    }

    fn delivered(&mut self, id: i64, now: UnixMs) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE outbox SET delivered_at = ?2, attempts = attempts + 1, last_error = NULL WHERE id = ?1",
            params![id, now],
        )?;
        self.conn.execute(
            "DELETE FROM outbox WHERE delivered_at IS NOT NULL AND delivered_at < ?1",
            [now - KEEP_DELIVERED_MS],
        )?;
        Ok(())
    }

    fn failed(&mut self, id: i64, retry_at: UnixMs, error: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?2, last_error = ?3 WHERE id = ?1",
            params![id, retry_at, error],
        )?;
        Ok(())
    }

    fn undelivered(&self) -> Result<u64, StoreError> {
        let count: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL",
            [],
            |r| r.get(0),
        )?;
        Ok(u64::try_from(count).unwrap_or(0))
    }
}
