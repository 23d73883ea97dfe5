//! Grants end by themselves: a task that records each grant's expiry when
//! its window closes (in the store, then a `grant.expired` record) and
//! rebuilds the index so expired grants leave it (live connections watch the
//! index and are cut). The daemon runs the same step once at start, so a
//! grant whose window closed while no daemon ran gets its record then, late.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use super::{end_event, grant_event, Access, EndKind, Grant};
use crate::{
    audit::Event,
    time::{self, UnixMs},
};

/// How often the expiry task wakes even when no grant is due (catches clock
/// jumps).
const EXPIRY_TICK: Duration = Duration::from_secs(5);

/// When a grant's expiry is recorded, against when it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recorded {
    /// By the daemon that ran when the window closed.
    OnTime,
    /// By a later one: the window closed before this daemon started, while
    /// none ran (or the one before stopped first).
    Late,
}

impl Recorded {
    /// For a grant that ended at `ended_at`, seen by a daemon that started
    /// at `started_at`.
    fn of(ended_at: UnixMs, started_at: UnixMs) -> Self {
        if ended_at < started_at {
            Self::Late
        } else {
            Self::OnTime
        }
    }
}

impl Access {
    /// Runs until shutdown.
    pub async fn run_expiry(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            self.record_expiries().await;
            self.record_request_expiries().await;
            let next = self.until_next_expiry().await;
            let mut changed = self.index.subscribe();
            tokio::select! {
                () = tokio::time::sleep(next) => {}
                _ = changed.changed() => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Records the end of every grant whose window has closed and whose end
    /// is not recorded yet: in the store (kind `expired`), then one
    /// `grant.expired` record each, with when it ended (`ended_at`) and
    /// whether that is written late; then rebuilds the index. The store hands
    /// out each grant once, so however often this runs (every wake of the
    /// expiry task, and at start for grants that ended while no daemon ran)
    /// a grant gets one record. Returns how many it recorded.
    ///
    /// The store is written first: a crash between the two loses the record
    /// rather than writing it twice.
    pub async fn record_expiries(&self) -> usize {
        let now = self.clock.now_ms();
        let expired = match self.change(move |s| s.expire(now)).await {
            Ok(expired) => expired,
            Err(e) => {
                tracing::error!(error = %e, "cannot record grant expiries; trying again at the next wake");
                return 0;
            }
        };
        for grant in &expired {
            let recorded = Recorded::of(grant.effective_end(), self.started_at);
            if recorded == Recorded::Late {
                tracing::info!(
                    grant_id = grant.id,
                    ended_at = %time::timestamp(grant.effective_end()),
                    "grant expired while jitproxy was not running; its grant.expired record is written now, late"
                );
            }
            self.audit.record(expiry_event(grant, recorded));
        }
        if !expired.is_empty() {
            if let Err(e) = self.rebuild().await {
                tracing::error!(error = %e, "cannot rebuild the grant index");
            }
        }
        expired.len()
    }

    /// How long until the next open grant's window closes, at most
    /// [`EXPIRY_TICK`].
    async fn until_next_expiry(&self) -> Duration {
        let now = self.clock.now_ms();
        let next_end = match self.with_store(move |s| s.open_grants(now)).await {
            Ok(open) => open.iter().map(|g| g.ends_at).min(),
            Err(e) => {
                tracing::error!(error = %e, "cannot read grants for expiry");
                None
            }
        };
        next_end.map_or(EXPIRY_TICK, |end| {
            Duration::from_millis(u64::try_from(end - now).unwrap_or(0)).min(EXPIRY_TICK)
        })
    }
}

/// The `grant.expired` record of `grant`: the grant as on its other records,
/// when it ended, and whether that is recorded late.
fn expiry_event(grant: &Grant, recorded: Recorded) -> Event {
    let mut event = grant_event(end_event(EndKind::Expired), grant, None);
    if let Some(detail) = event.detail.as_mut() {
        detail["ended_at"] = serde_json::json!(time::timestamp(grant.effective_end()));
        detail["recorded_late"] = serde_json::json!(recorded == Recorded::Late);
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        access::{Ending, Principal, Subject},
        audit::EventKind,
    };

    fn expired_grant(ends_at: UnixMs) -> Grant {
        Grant {
            id: 7,
            subject: Subject::User(1001),
            subject_name: Some("alice".into()),
            target: "api".into(),
            starts_at: ends_at - 2000,
            ends_at,
            reason: "INC-1".into(),
            granted_by: Principal {
                uid: 0,
                name: Some("root".into()),
                login_uid: None,
            },
            created_at: ends_at - 2000,
            ended: Some(Ending {
                at: ends_at,
                by: None,
                kind: EndKind::Expired,
            }),
            scopes: Vec::new(),
            request_id: None,
        }
    }

    #[test]
    fn an_expiry_before_the_daemon_started_is_recorded_late() {
        assert_eq!(Recorded::of(1_000, 5_000), Recorded::Late);
        assert_eq!(Recorded::of(5_000, 5_000), Recorded::OnTime);
        assert_eq!(Recorded::of(9_000, 5_000), Recorded::OnTime);
    }

    #[test]
    fn the_expiry_record_says_when_the_grant_ended_and_whether_late() {
        // 2026-11-28 12:03:00 UTC.
        let grant = expired_grant(1_795_867_380_000);
        let event = expiry_event(&grant, Recorded::Late);
        assert_eq!(event.kind, EventKind::GrantExpired);
        assert_eq!(event.grant_id, Some(7));
        assert_eq!(event.target.as_deref(), Some("api"));
        assert_eq!(event.user.as_ref().map(|u| u.uid), Some(1001));
        let detail = event.detail.expect("detail");
        assert_eq!(detail["ended_at"], "2026-11-28T12:03:00Z", "{detail}");
        assert_eq!(detail["ends_at"], detail["ended_at"], "{detail}");
        assert_eq!(detail["recorded_late"], true, "{detail}");
        assert!(detail.get("by").is_none(), "no one ended it: {detail}");

        let on_time = expiry_event(&grant, Recorded::OnTime)
            .detail
            .expect("detail");
        assert_eq!(on_time["recorded_late"], false, "{on_time}");
    }
}
