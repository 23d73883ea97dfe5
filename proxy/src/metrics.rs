//! What the daemon counts for dashboards, as it happens: audit events by
//! kind, target and code (so connections allowed, denied and failed, and
//! requests), live connections per target, and the audit writer's fsync
//! latency. One registry for the process, filled where the events
//! happen; what is better read at scrape time (kernel counters, grants,
//! queues) is added by the metrics endpoint (`daemon/metrics.rs`).
//!
//! Label values are target names, event kinds and refusal codes: bounded by
//! the config and the code, never user names (cardinality) and never
//! secrets.

use std::{sync::LazyLock, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Labels of an audit event: its kind (`connection.allowed`), its target,
/// and its code (a refusal's or failure's), empty when they do not apply.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event: String,
    pub target: String,
    pub code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabel {
    pub target: String,
}

/// The process's counters.
#[derive(Debug)]
pub struct Metrics {
    /// Audit records written, by kind, target and code.
    pub events: Family<EventLabels, Counter>,
    /// Connections through the proxy now, by target.
    pub live: Family<TargetLabel, Gauge>,
    /// How long each audit group commit's fsync took.
    pub fsync_seconds: Histogram,
}

/// The one set of counters of this process.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    events: Family::default(),
    live: Family::default(),
    // 50 µs .. ~0.8 s, doubling.
    fsync_seconds: Histogram::new(std::iter::successors(Some(50e-6), |b| Some(b * 2.0)).take(15)),
});

impl Metrics {
    /// Registers these counters in `registry`, under the `jitproxy` prefix.
    pub fn register(&'static self, registry: &mut Registry) {
        registry.register(
            "audit_events",
            "Audit records written, by event kind, target and refusal or failure code",
            self.events.clone(),
        );
        registry.register(
            "connections_live",
            "Connections through the proxy now, by target",
            self.live.clone(),
        );
        registry.register(
            "audit_fsync_seconds",
            "Time of each audit group commit's fsync",
            self.fsync_seconds.clone(),
        );
    }

    /// Counts a written audit record of `event` on `target` with `code`,
    /// and keeps the live connection count (one `connection.allowed` and
    /// one `connection.closed` per proxied connection).
    pub fn event(&self, event: &str, target: Option<&str>, code: Option<&str>) {
        let target = target.unwrap_or("");
        self.events
            .get_or_create(&EventLabels {
                event: event.to_owned(),
                target: target.to_owned(),
                code: code.unwrap_or("").to_owned(),
            })
            .inc();
        let live = || {
            self.live.get_or_create(&TargetLabel {
                target: target.to_owned(),
            })
        };
        match event {
            "connection.allowed" => {
                live().inc();
            }
            "connection.closed" => {
                live().dec();
            }
            _ => {}
        }
    }

    /// A group commit's fsync took `fsync`.
    pub fn synced(&self, fsync: Duration) {
        self.fsync_seconds.observe(fsync.as_secs_f64());
    }
}
