//! `jitproxy run`: wires the parts together and runs until told to stop.
//!
//! Order matters for failing closed: the audit log opens first (nothing may
//! pass without its record), the listeners are bound before the programs are
//! (re)attached, and on exit the pinned programs stay attached, so targets
//! are unreachable (not direct) while the daemon is down.

pub mod lock;
mod metrics;
mod preexisting;
pub mod reload;
mod status;
mod systemd;
pub mod targets;

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use lock::{lock, lock_id, DaemonLock, LockError};

use crate::{
    access::{Access, StoreError},
    audit::{AuditLog, AuditSettings, Event, EventKind},
    config::{Config, SharedConfig},
    control,
    host::{
        cgroup::{self, CgroupError},
        net, rlimit, socket,
        users::Users,
    },
    kernel::{Kernel, KernelError, LoadOptions},
    proxy::{
        http::{Inspectors, Installed},
        OriginSource, Policy, Proxy, ProxySettings,
    },
    store::SqliteStore,
    time::now_ms,
};
use status::Status;
use targets::{Resolved, SystemLookup};

/// Backlog of each proxy listener.
const LISTEN_BACKLOG: u32 = 4096;
/// Descriptors kept out of the proxy's share: root's control connections,
/// the audit log, the grant database, the listeners and the kernel maps.
const RESERVED_FDS: u64 = 256;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot open the audit log in {path}: {source}")]
    Audit {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot bind the control socket {path}: {source}")]
    Control {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("inspect mode: {0}")]
    Inspect(#[from] crate::proxy::http::InspectError),
    #[error("cannot listen on {addr}: {source}; is another daemon using listen_port?")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen for metrics on {addr}: {source}; change `metrics` in the config")]
    Metrics {
        addr: String,
        #[source]
        source: io::Error,
    },
}

/// Options from the command line that override the config.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    pub cgroup: Option<PathBuf>,
}

/// Runs the daemon until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    options: RunOptions,
    reread: reload::Reader,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    // Inspect targets' secrets live in this process: no core dump of it,
    // and no ptrace or /proc/PID/mem by anyone but root (PR_SET_DUMPABLE).
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "cannot mark the daemon non-dumpable; a core dump could hold secrets");
    }
    cgroup::check_no_v1_net_controllers()?;
    let cgroup = cgroup::resolve(options.cgroup.as_deref().or(config.cgroup.as_deref()))?;
    let _lock = lock(&cgroup)?;
    let config = Arc::new(config);
    let shared: SharedConfig = crate::config::share(Arc::clone(&config));
    let started_at = now_ms();

    // The audit log first: nothing may pass without its record. Then grants:
    // the proxy must know them before the first connection.
    let audit = AuditLog::open(AuditSettings::for_config(&config)).map_err(|source| {
        DaemonError::Audit {
            path: config.audit_dir(),
            source,
        }
    })?;
    audit.record(started_event(&cgroup));
    audit.record(config_event(&config));
    let users = Users::new();
    let access = Access::new(
        Arc::clone(&shared),
        open_store(&config.state_dir)?,
        audit.clone(),
        users.clone(),
    )?;
    // Grants whose window closed while no daemon ran get their end and
    // their `grant.expired` record now (late, and said so), before anything
    // else happens; the expiry task does the same step from here on.
    access.record_expiries().await;
    let control_listener =
        control::server::bind(&config.control_socket).map_err(|source| DaemonError::Control {
            path: config.control_socket.clone(),
            source,
        })?;
    let listeners = bind(config.listen_port)?;
    let metrics_listener = match &config.metrics {
        Some(addr) => Some(
            metrics::bind(addr)
                .await
                .map_err(|source| DaemonError::Metrics {
                    addr: format!("{addr:?}"),
                    source,
                })?,
        ),
        None => None,
    };
    let kernel = Arc::new(Kernel::install(&LoadOptions {
        cgroup: &cgroup,
        bpffs: &config.bpffs,
        proxy_port: config.listen_port,
        upstream_mark: config.upstream_mark,
        records_per_uid: config.max_records_per_uid,
    })?);
    let (resolved, warnings) =
        targets::resolve(&SystemLookup, &config.targets, &Resolved::default()).await;
    targets::report(&warnings);
    kernel.set_targets(&resolved.entries)?;
    for (id, target) in config.targets.iter().enumerate() {
        let addrs: Vec<String> = resolved
            .addresses(u32::try_from(id).unwrap_or(u32::MAX))
            .iter()
            .map(|(port, net)| format!("{net} port {port}"))
            .collect();
        tracing::info!(target_name = %target.name, addresses = %addrs.join(", "), "watching target");
    }
    for warning in config.local_target_warnings(&net::local_addresses()) {
        tracing::warn!("{warning}");
    }
    // Every new connection now meets the programs; end those that did not.
    let ended = preexisting::end(&cgroup, &config, &resolved, &audit);
    if ended > 0 {
        tracing::warn!(
            ended,
            "ended connections to targets opened before jitproxy started"
        );
    }
    let resolved = Arc::new(RwLock::new(resolved));

    // Inspect targets: the local CA, their TLS, upstream roots and
    // credentials. At start, any failure stops the daemon (the operator is
    // there to see it); on reload, a broken target's connections are refused.
    let inspectors = Inspectors::default();
    let mut installed = inspectors.install(&config, Some(config.upstream_mark));
    report_inspect(&installed, &config);
    if !installed.errors.is_empty() {
        return Err(installed.errors.swap_remove(0).into());
    }

    let policy = Policy::for_config(access.index(), users.clone(), &config);
    let status = Status {
        config: Arc::clone(&shared),
        cgroup: cgroup.clone(),
        kernel: Arc::clone(&kernel),
        resolved: Arc::clone(&resolved),
        policy: policy.clone(),
        access: Arc::clone(&access),
        users: users.clone(),
        started_at,
    };
    let mut tasks = tokio::task::JoinSet::new();
    let status = status.into_fn();
    if let Some(listener) = metrics_listener {
        tasks.spawn(metrics::serve(
            listener,
            Arc::clone(&status),
            shutdown.clone(),
        ));
    }
    tasks.spawn(control::server::serve(
        control_listener,
        Arc::clone(&access),
        status,
        shutdown.clone(),
    ));
    tasks.spawn(Arc::clone(&access).run_expiry(shutdown.clone()));
    tasks.spawn(crate::notify::run(
        Arc::clone(&access),
        Arc::clone(&shared),
        shutdown.clone(),
    ));
    let targets_changed = Arc::new(Notify::new());
    tasks.spawn(reload::on_sighup(
        reread,
        reload::Parts {
            config: Arc::clone(&shared),
            access: Arc::clone(&access),
            policy: policy.clone(),
            targets_changed: Arc::clone(&targets_changed),
            inspectors: inspectors.clone(),
        },
        shutdown.clone(),
    ));
    if let Some(logs) = kernel.take_logs() {
        tasks.spawn(logs.forward(shutdown.clone()));
    }
    tasks.spawn(targets::keep_resolved(
        Arc::clone(&shared),
        Arc::clone(&kernel),
        resolved,
        targets_changed,
        shutdown.clone(),
    ));
    tracing::info!(
        cgroup = %cgroup.display(),
        config = %config.source,
        listen_port = config.listen_port,
        control_socket = %config.control_socket.display(),
        open_grants = access.open_grants(),
        pins = %kernel.pins().root().display(),
        "jitproxy is running"
    );
    systemd::ready();
    tasks.spawn(systemd::watchdog(shutdown.clone()));

    let proxy = Proxy::new(
        Arc::clone(&kernel) as Arc<dyn OriginSource>,
        policy,
        Arc::clone(&access),
        users,
        proxy_settings(&config, open_files()),
        inspectors,
        shutdown.clone(),
    );
    proxy.serve(listeners).await;
    systemd::stopping();
    tasks.shutdown().await;
    audit.record(Event::new(EventKind::DaemonStopped));
    // Writes what is queued and a final checkpoint.
    let _ = tokio::task::spawn_blocking(move || audit.close()).await;
    let _ = std::fs::remove_file(&config.control_socket);
    tracing::info!(
        cgroup = %cgroup.display(),
        "jitproxy stopped; targets stay closed until it runs again (or `jitproxy uninstall`)"
    );
    Ok(())
}

fn started_event(cgroup: &Path) -> Event {
    let mut event = Event::new(EventKind::DaemonStarted);
    event.detail = Some(serde_json::json!({
        "pid": std::process::id(),
        "version": env!("CARGO_PKG_VERSION"),
        "cgroup": cgroup.display().to_string(),
    }));
    event
}

fn config_event(config: &Config) -> Event {
    let mut event = Event::new(EventKind::ConfigLoaded);
    event.detail = Some(serde_json::json!({
        "source": config.source,
        "targets": config.targets.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
        "approvers": config.approvers.iter().map(ToString::to_string).collect::<Vec<_>>(),
    }));
    event
}

/// The open-file limit, raised to the hard limit first.
fn open_files() -> u64 {
    rlimit::raise_open_files().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read the open-file limit; assuming 1024");
        1024
    })
}

/// The proxy's settings, with live connections bounded by `open_files`: each
/// takes two descriptors, and the control socket and the daemon's own files
/// keep a reserve, so neither can starve the other.
fn proxy_settings(config: &Config, open_files: u64) -> ProxySettings {
    let mut settings = ProxySettings::from_config(config);
    let reserve = RESERVED_FDS + control::server::NON_ROOT_TOTAL as u64;
    let fit = usize::try_from(open_files.saturating_sub(reserve) / 2).unwrap_or(usize::MAX);
    if fit < settings.max_connections {
        tracing::warn!(
            max_connections = settings.max_connections,
            open_files,
            using = fit,
            "max_connections does not fit the open-file limit; raise the limit (LimitNOFILE) to use it"
        );
        settings.max_connections = fit.max(1);
    }
    settings
}

/// The grant database in `state_dir` (created 0700: grants name users).
fn open_store(state_dir: &Path) -> Result<SqliteStore, StoreError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(|source| StoreError::Dir {
            path: state_dir.display().to_string(),
            source,
        })?;
    SqliteStore::open(&state_dir.join("grants.db"))
}

/// Binds the loopback listeners, IPv4 and IPv6.
fn bind(port: u16) -> Result<Vec<TcpListener>, DaemonError> {
    [
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
    ]
    .into_iter()
    .map(|addr| {
        socket::listen(addr, LISTEN_BACKLOG).map_err(|source| DaemonError::Listen { addr, source })
    })
    .collect()
}

/// Says what setting up the inspect targets found: a new CA, names it does
/// not cover, targets that could not be set up.
pub fn report_inspect(installed: &Installed, config: &Config) {
    if let Some(ca) = &installed.ca {
        tracing::info!(
            fingerprint = ca.fingerprint(),
            path = %crate::proxy::http::ca::cert_path(&config.state_dir).display(),
            "local CA for inspect targets"
        );
    }
    if !installed.uncovered.is_empty() {
        tracing::warn!(
            names = %installed.uncovered.join(", "),
            "the local CA's name constraints do not cover these server names, so their \
             connections are refused; run `jitproxy ca rotate`, restart, then `jitproxy ca install`"
        );
    }
    for e in &installed.errors {
        tracing::error!(error = %e, "an inspect target is not set up; its connections are refused");
    }
}
