//! Grants end by themselves: a task that records each grant's expiry when
//! it happens and rebuilds the index so expired grants leave it (live
//! connections watch the index and are cut).

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use super::{subject_user, Access};
use crate::{
    audit::{Event, EventKind},
    time::{self, now_ms, UnixMs},
};

/// How often the expiry task wakes even when no grant is due (catches clock
/// jumps).
const EXPIRY_TICK: Duration = Duration::from_secs(5);

impl Access {
    /// Runs until shutdown.
    pub async fn run_expiry(self: Arc<Self>, shutdown: CancellationToken) {
        let mut due: HashMap<i64, UnixMs> = HashMap::new();
        loop {
            let now = now_ms();
            match self.with_store(move |s| s.open_grants(now)).await {
                Ok(open) => {
                    for g in &open {
                        due.insert(g.id, g.ends_at);
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot read grants for expiry"),
            }
            let now = now_ms();
            let expired: Vec<i64> = due
                .iter()
                .filter(|(_, &end)| end <= now)
                .map(|(&id, _)| id)
                .collect();
            for &id in &expired {
                due.remove(&id);
                self.record_expiry(id).await;
            }
            if !expired.is_empty() {
                if let Err(e) = self.rebuild().await {
                    tracing::error!(error = %e, "cannot rebuild the grant index");
                }
            }
            let next = due.values().min().copied().map_or(EXPIRY_TICK, |end| {
                Duration::from_millis(u64::try_from(end - now).unwrap_or(0)).min(EXPIRY_TICK)
            });
            let mut changed = self.index.subscribe();
            tokio::select! {
                () = tokio::time::sleep(next) => {}
                _ = changed.changed() => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    async fn record_expiry(&self, id: i64) {
        let grant = match self.with_store(move |s| s.get(id)).await {
            // Revoked or dropped meanwhile: its end is already recorded.
            Ok(Some(grant)) if grant.ended.is_some() => return,
            Ok(Some(grant)) => grant,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(grant_id = id, error = %e, "cannot read an expired grant; its expiry is not recorded");
                return;
            }
        };
        let mut event = Event::new(EventKind::GrantExpired);
        event.grant_id = Some(grant.id);
        event.target = Some(grant.target.clone());
        event.reason = Some(grant.reason.clone());
        event.user = subject_user(&grant);
        event.detail = Some(serde_json::json!({ "ends_at": time::timestamp(grant.ends_at) }));
        self.audit.record(event);
    }
}
