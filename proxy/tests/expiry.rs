//! Grants end by themselves, and each end is recorded once: a grant whose
//! window closed while no daemon ran gets its `grant.expired` record at the
//! next start (late, with when it ended), the expiry task records the rest
//! as they happen, and no start after that writes one again. The real grant
//! store (an SQLite file) and audit log, as the daemon opens them; no
//! privileges.

use std::{path::Path, sync::Arc, time::Duration};

use jitproxy::{
    access::{Access, GrantStore as _, NewGrant, Principal, Subject},
    audit::{query, AuditLog, AuditSettings, EventKind, Record},
    config::Config,
    host::users::Users,
    store::SqliteStore,
    time::{now_ms, timestamp, Clock, UnixMs},
};
use tokio_util::sync::CancellationToken;

const TARGET: &str = "api";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_that_ended_while_no_daemon_ran_is_recorded_once_at_the_next_start() {
    let state = tempfile::tempdir().expect("temp state dir");
    let config = Arc::new(test_config(state.path()));
    let db = config.state_dir.join("grants.db");
    let now = now_ms();
    // Its window closed half a minute ago, while no daemon ran.
    let while_down = insert_grant(&db, now - 60_000, now - 30_000);
    // Its window closes while the daemon runs.
    let while_up = insert_grant(&db, now - 1_000, now + 300);

    // First start: the grant that ended while down is recorded at once.
    let (access, audit) = start(&config, &db);
    assert_eq!(access.record_expiries().await, 1);
    let shutdown = CancellationToken::new();
    let expiry = tokio::spawn(Arc::clone(&access).run_expiry(shutdown.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while expired_records(&config, while_up).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the expiry task did not record grant {while_up} within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    expiry.await.expect("the expiry task ends at shutdown");
    stop(audit).await;

    // Second start on the same state: nothing left to record.
    let (access, audit) = start(&config, &db);
    assert_eq!(access.record_expiries().await, 0, "recorded twice");
    stop(audit).await;

    let late = expired_records(&config, while_down);
    assert_eq!(late.len(), 1, "one record per grant: {late:?}");
    let detail = late[0].event.detail.clone().expect("detail");
    assert_eq!(
        detail["ended_at"],
        timestamp(now - 30_000).to_string(),
        "the time it really ended: {detail}"
    );
    assert_eq!(detail["recorded_late"], true, "{detail}");
    assert!(
        late[0].time.as_millisecond() >= now,
        "written at the start after, not when it ended"
    );

    let on_time = expired_records(&config, while_up);
    assert_eq!(on_time.len(), 1, "one record per grant: {on_time:?}");
    let detail = on_time[0].event.detail.clone().expect("detail");
    assert_eq!(detail["ended_at"], timestamp(now + 300).to_string());
    assert_eq!(detail["recorded_late"], false, "{detail}");
}

/// On Tokio's paused clock (time passes only as the test sleeps): the
/// expiry task takes a grant out when its window closes, not a virtual
/// second before, and records that once, on time.
#[tokio::test(start_paused = true)]
async fn the_expiry_task_ends_a_grant_when_its_window_closes_not_before() {
    const T0: UnixMs = 1_800_000_000_000;
    let state = tempfile::tempdir().expect("temp state dir");
    let config = Arc::new(test_config(state.path()));
    let db = config.state_dir.join("grants.db");
    let id = insert_grant(&db, T0 - 1_000, T0 + 60_000);
    let audit = AuditLog::open(AuditSettings::for_config(&config)).expect("open the audit log");
    let store = SqliteStore::open(&db).expect("open the grant store");
    let access = Access::with_clock(
        jitproxy::config::share(Arc::clone(&config)),
        store,
        audit.clone(),
        Users::new(),
        Clock::following_tokio(T0),
    )
    .expect("grant service");
    let index = access.index();
    let shutdown = CancellationToken::new();
    let expiry = tokio::spawn(Arc::clone(&access).run_expiry(shutdown.clone()));

    tokio::time::sleep(Duration::from_secs(59)).await;
    assert_eq!(
        index.borrow().len(),
        1,
        "taken out before its window closed"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Its end is recorded in the store, then the index is rebuilt: wait
    // for that (virtual time; bounded).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !index.borrow().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still in the index after its window closed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();
    expiry.await.expect("the expiry task ends at shutdown");
    stop(audit).await;
    let records = expired_records(&config, id);
    assert_eq!(records.len(), 1, "{records:?}");
    let detail = records[0].event.detail.clone().expect("detail");
    assert_eq!(detail["ended_at"], timestamp(T0 + 60_000).to_string());
    assert_eq!(detail["recorded_late"], false, "{detail}");
}

/// The grant store and audit log as the daemon opens them, and the grant
/// service over them.
fn start(config: &Arc<Config>, db: &Path) -> (Arc<Access>, AuditLog) {
    let audit = AuditLog::open(AuditSettings::for_config(config)).expect("open the audit log");
    let store = SqliteStore::open(db).expect("open the grant store");
    let access = Access::new(
        jitproxy::config::share(Arc::clone(config)),
        store,
        audit.clone(),
        Users::new(),
    )
    .expect("grant service");
    (access, audit)
}

/// Writes what is queued and stops the writer, as the daemon does at exit.
async fn stop(audit: AuditLog) {
    tokio::task::spawn_blocking(move || audit.close())
        .await
        .expect("closing the audit log panicked");
}

/// Stores a grant for uid 1001 on [`TARGET`] from `starts_at` to `ends_at`.
fn insert_grant(db: &Path, starts_at: UnixMs, ends_at: UnixMs) -> i64 {
    let mut store = SqliteStore::open(db).expect("open the grant store");
    let new = NewGrant {
        subject: Subject::User(1001),
        subject_name: Some("alice".to_owned()),
        target: TARGET.to_owned(),
        starts_at,
        ends_at,
        reason: "expiry integration test".to_owned(),
        granted_by: Principal {
            uid: 0,
            name: Some("root".to_owned()),
            login_uid: None,
        },
        scopes: Vec::new(),
        request_id: None,
    };
    store.insert(&new, starts_at).expect("store a grant").id
}

/// The `grant.expired` records of grant `id` written so far.
fn expired_records(config: &Config, id: i64) -> Vec<Record> {
    let filter = query::Filter {
        grant: Some(id),
        ..query::Filter::default()
    };
    query::read(&config.audit_dir(), &filter)
        .expect("read the audit log")
        .into_iter()
        .filter(|r| r.event.kind == EventKind::GrantExpired)
        .collect()
}

fn test_config(state: &Path) -> Config {
    let dir = state.display();
    let text = format!(
        "state_dir = '{dir}'\ncontrol_socket = '{dir}/control.sock'\n\n\
         [[target]]\nname = \"{TARGET}\"\nhosts = [\"127.0.0.2\"]\nports = [9]\n"
    );
    Config::parse(&text, "expiry-test.toml").unwrap_or_else(|e| panic!("test config: {e}"))
}
