//! A benchmark of durable audit appends, run by `jitproxy debug bench-audit`
//! (and `cargo xtask bench`): how many "allowed" records per second reach the
//! disk with group commit, and what one durable append costs alone (the
//! latency it adds to a new connection).

use std::{fmt, path::Path, sync::Arc, time::Instant};

use crate::audit::{AuditLog, AuditSettings, Event, EventKind, ProcessInfo, UserInfo};

/// What one run measured.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    pub events: u32,
    pub concurrency: u32,
    pub events_per_sec: f64,
    pub single_p50_us: f64,
    pub single_p99_us: f64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "durable audit appends: {:.0} events/s with {} concurrent writers (group commit); \
             one writer alone: p50 {:.0} us, p99 {:.0} us per append (fsync included)",
            self.events_per_sec, self.concurrency, self.single_p50_us, self.single_p99_us
        )
    }
}

fn sample_event() -> Event {
    let mut e = Event::new(EventKind::ConnectionAllowed);
    e.conn = Some(1);
    e.user = Some(UserInfo {
        name: Some("alice".into()),
        uid: 1001,
        login_uid: Some(1001),
    });
    e.process = Some(ProcessInfo {
        pid: 4242,
        tid: 4242,
        comm: "curl".into(),
        exe: Some("/usr/bin/curl".into()),
        exe_file: Some("8:1 inode 1234567".into()),
        exe_unverified: None,
        cgroup: Some("/user.slice/user-1001.slice/session-3.scope".into()),
        gid: 1001,
    });
    e.target = Some("payments-api".into());
    e.dst = Some("10.20.0.5:443".into());
    e.client = Some("127.0.0.1:51234".into());
    e.grant_id = Some(17);
    e.reason = Some("INC-1234".into());
    e
}

/// Writes `events` durable records from `concurrency` tasks into a log in
/// `dir`, then times 500 lone appends.
pub async fn run(dir: &Path, events: u32, concurrency: u32) -> std::io::Result<Report> {
    let log = AuditLog::open(AuditSettings {
        dir: dir.join("audit"),
        key: dir.join("audit-signing.key"),
        checkpoints: dir.join("checkpoints.jsonl"),
        rotate_bytes: 1 << 30,
        retention: std::time::Duration::from_secs(3600),
        checkpoint_interval: std::time::Duration::from_secs(60),
        syslog: None,
    })?;
    let log = Arc::new(log);
    let per_task = events / concurrency.max(1);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let log = Arc::clone(&log);
        tasks.spawn(async move {
            for _ in 0..per_task {
                let _ = log.record_durable(sample_event()).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let events_per_sec = f64::from(per_task * concurrency.max(1)) / started.elapsed().as_secs_f64();

    let mut lone: Vec<f64> = Vec::with_capacity(500);
    for _ in 0..500 {
        let t = Instant::now();
        let _ = log.record_durable(sample_event()).await;
        lone.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lone.sort_by(f64::total_cmp);
    let log = Arc::try_unwrap(log).ok();
    if let Some(log) = log {
        let _ = tokio::task::spawn_blocking(move || log.close()).await;
    }
    Ok(Report {
        events,
        concurrency,
        events_per_sec,
        single_p50_us: lone[lone.len() / 2],
        single_p99_us: lone[lone.len() * 99 / 100],
    })
}
