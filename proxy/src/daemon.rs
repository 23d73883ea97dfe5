//! `jitproxy run`: wires the parts together and runs until told to stop.
//!
//! Order matters for failing closed: the listeners are bound before the
//! programs are (re)attached, and on exit the pinned programs stay attached,
//! so targets are unreachable (not direct) while the daemon is down.

use std::{
    fs::File,
    io::{self, Read as _, Seek as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use nix::fcntl::{Flock, FlockArg};
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

use crate::{
    access::Access,
    audit::{kind, log::AuditLog, Event},
    cgroup::{self, CgroupError},
    config::Config,
    control::{
        self,
        proto::{ts, AuditStatus, LiveConnections, StatusView, TargetStatus},
    },
    decision::Policy,
    ebpf::{self, Kernel, KernelError, LoadOptions},
    grants::{now_ms, store::StoreError},
    proxy::{Proxy, ProxySettings},
    targets::{self, Resolved, SystemLookup},
    users,
};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("cannot create {path}: {source}; jitproxy needs root")]
    StateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("another jitproxy daemon{pid} already watches cgroup {cgroup}; stop it first (lock: {lock})")]
    AlreadyRunning {
        cgroup: PathBuf,
        lock: PathBuf,
        pid: String,
    },
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
    #[error("cannot listen on {addr}: {source}; is another daemon using listen_port?")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// Options from the command line that override the config.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    pub cgroup: Option<PathBuf>,
}

/// Holds the per-cgroup lock for the daemon's lifetime.
#[derive(Debug)]
pub struct DaemonLock {
    _lock: Flock<File>,
    path: PathBuf,
}

impl DaemonLock {
    /// Removes the lock file (after `uninstall`: the cgroup is no longer
    /// watched, so nothing needs to find it).
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Where the per-cgroup locks live. Fixed, not configurable: two daemons
/// with different configs must still find each other's lock.
pub const RUN_DIR: &str = "/run/jitproxy";

/// Takes the lock that makes one daemon per cgroup.
pub fn lock(cgroup: &Path) -> Result<DaemonLock, DaemonError> {
    let run_dir = Path::new(RUN_DIR);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(run_dir)
        .map_err(|source| DaemonError::StateDir {
            path: run_dir.to_owned(),
            source,
        })?;
    let id = ebpf::cgroup_id(cgroup)?;
    let path = run_dir.join(format!("cgroup-{id}.lock"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|source| DaemonError::StateDir {
            path: path.clone(),
            source,
        })?;
    let mut lock =
        Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(mut file, _)| {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            DaemonError::AlreadyRunning {
                cgroup: cgroup.to_owned(),
                lock: path.clone(),
                pid: match pid.trim() {
                    "" => String::new(),
                    pid => format!(" (pid {pid})"),
                },
            }
        })?;
    // Best effort: the pid only makes the "already running" message nicer.
    let _ = lock.set_len(0);
    let _ = lock.rewind();
    let _ = writeln!(lock, "{}", std::process::id());
    Ok(DaemonLock { _lock: lock, path })
}

/// Runs the daemon until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    options: RunOptions,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    cgroup::check_no_v1_net_controllers()?;
    let cgroup = cgroup::resolve(options.cgroup.as_deref().or(config.cgroup.as_deref()))?;
    let _lock = lock(&cgroup)?;
    let config = Arc::new(config);

    // The audit log first: nothing may pass without its record. Then grants:
    // the proxy must know them before the first connection.
    let audit = AuditLog::open(config.audit_settings()).map_err(|source| DaemonError::Audit {
        path: config.audit_dir(),
        source,
    })?;
    let mut started = Event::new(kind::DAEMON_STARTED);
    started.detail = Some(serde_json::json!({
        "pid": std::process::id(),
        "version": env!("CARGO_PKG_VERSION"),
        "cgroup": cgroup.display().to_string(),
    }));
    audit.record(started);
    let mut loaded = Event::new(kind::CONFIG_LOADED);
    loaded.detail = Some(serde_json::json!({
        "source": config.source,
        "targets": config.targets.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
        "approvers": config.approvers.iter().map(ToString::to_string).collect::<Vec<_>>(),
    }));
    audit.record(loaded);
    let access = Access::open(Arc::clone(&config), audit.clone())?;
    let control_listener =
        control::server::bind(&config.control_socket).map_err(|source| DaemonError::Control {
            path: config.control_socket.clone(),
            source,
        })?;
    let listeners = bind(config.listen_port)?;
    let kernel = Arc::new(Kernel::install(&LoadOptions {
        cgroup: &cgroup,
        bpffs: &config.bpffs,
        proxy_port: config.listen_port,
        upstream_mark: config.upstream_mark,
    })?);
    let (resolved, warnings) =
        targets::resolve(&SystemLookup, &config.targets, &Resolved::default()).await;
    report_warnings(&warnings);
    kernel.set_targets(&resolved.entries)?;
    for (id, target) in config.targets.iter().enumerate() {
        let addrs: Vec<String> = resolved
            .addresses(u32::try_from(id).unwrap_or(u32::MAX))
            .iter()
            .map(|(port, net)| format!("{net} port {port}"))
            .collect();
        tracing::info!(target_name = %target.name, addresses = %addrs.join(", "), "watching target");
    }
    let resolved = Arc::new(std::sync::RwLock::new(resolved));

    let policy = Policy::for_config(access.index(), &config);
    let status = status_fn(&config, &cgroup, &kernel, &resolved, &policy);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(control::server::serve(
        control_listener,
        Arc::clone(&access),
        status,
        shutdown.clone(),
    ));
    tasks.spawn(Arc::clone(&access).run_expiry(shutdown.clone()));
    tasks.spawn(re_resolve(
        Arc::clone(&config),
        Arc::clone(&kernel),
        resolved,
        shutdown.clone(),
    ));
    tracing::info!(
        target: "jitproxy::audit",
        event = "daemon.started",
        cgroup = %cgroup.display(),
        config = %config.source,
        listen_port = config.listen_port,
        control_socket = %config.control_socket.display(),
        open_grants = access.open_grants(),
        pins = %kernel.pins().root().display(),
        "jitproxy is running"
    );

    let proxy = Proxy::new(
        Arc::clone(&kernel) as Arc<dyn crate::proxy::OriginSource>,
        policy,
        Arc::clone(&access),
        ProxySettings::from_config(&config),
        shutdown.clone(),
    );
    proxy.serve(listeners).await;
    tasks.shutdown().await;
    audit.record(Event::new(kind::DAEMON_STOPPED));
    // Writes what is queued and a final checkpoint.
    let _ = tokio::task::spawn_blocking(move || audit.close()).await;
    let _ = std::fs::remove_file(&config.control_socket);
    tracing::info!(
        target: "jitproxy::audit",
        event = "daemon.stopped",
        cgroup = %cgroup.display(),
        "jitproxy stopped; targets stay closed until it runs again (or `jitproxy uninstall`)"
    );
    Ok(())
}

/// What `jitproxy status` shows, computed on request.
fn status_fn(
    config: &Arc<Config>,
    cgroup: &Path,
    kernel: &Arc<Kernel>,
    resolved: &Arc<std::sync::RwLock<Resolved>>,
    policy: &Policy,
) -> control::server::StatusFn {
    let started_at = ts(now_ms());
    let (config, kernel, resolved, policy) = (
        Arc::clone(config),
        Arc::clone(kernel),
        Arc::clone(resolved),
        policy.clone(),
    );
    let cgroup = cgroup.display().to_string();
    Arc::new(move |access: &Access| {
        let resolved = resolved.read().unwrap_or_else(|p| p.into_inner());
        let targets = config
            .targets
            .iter()
            .enumerate()
            .map(|(id, t)| TargetStatus {
                name: t.name.clone(),
                hosts: t.hosts.iter().map(ToString::to_string).collect(),
                addresses: resolved
                    .addresses(u32::try_from(id).unwrap_or(u32::MAX))
                    .iter()
                    .map(|(port, net)| format!("{net} {port}"))
                    .collect(),
            })
            .collect();
        let live = policy
            .live()
            .into_iter()
            .map(|(uid, target, connections)| LiveConnections {
                uid,
                user: users::user_name(uid),
                target: config
                    .target(target)
                    .map(|t| t.name.clone())
                    .unwrap_or_default(),
                connections,
            })
            .collect();
        StatusView {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            cgroup: cgroup.clone(),
            pins: kernel.pins().root().display().to_string(),
            listen_port: config.listen_port,
            started_at,
            targets,
            live,
            open_grants: access.open_grants(),
            audit: AuditStatus {
                dir: config.audit_dir().display().to_string(),
                failure: access.audit().failure(),
                records_written: access.audit().written(),
                records_dropped: access.audit().dropped(),
                syslog_dropped: access.audit().syslog_dropped(),
            },
        }
    })
}

/// Binds the loopback listeners, IPv4 and IPv6.
fn bind(port: u16) -> Result<Vec<TcpListener>, DaemonError> {
    let addrs = [
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
    ];
    addrs
        .into_iter()
        .map(|addr| listen(addr).map_err(|source| DaemonError::Listen { addr, source }))
        .collect()
}

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

async fn re_resolve(
    config: Arc<Config>,
    kernel: Arc<Kernel>,
    shared: Arc<std::sync::RwLock<Resolved>>,
    shutdown: CancellationToken,
) {
    let mut current = shared.read().unwrap_or_else(|p| p.into_inner()).clone();
    let mut ticker = tokio::time::interval(config.resolve_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let (resolved, warnings) = targets::resolve(&SystemLookup, &config.targets, &current).await;
        report_warnings(&warnings);
        if resolved.entries != current.entries {
            match kernel.set_targets(&resolved.entries) {
                Ok(()) => tracing::info!(
                    entries = resolved.entries.len(),
                    "target addresses changed; kernel map updated"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "cannot update the target map; keeping the old addresses")
                }
            }
        }
        current = resolved.clone();
        *shared.write().unwrap_or_else(|p| p.into_inner()) = resolved;
    }
}

fn report_warnings(warnings: &[targets::ResolveWarning]) {
    for w in warnings {
        tracing::warn!(
            target_name = %w.target,
            host = %w.host,
            error = %w.error,
            kept_addresses = w.kept,
            "cannot resolve host; it is not watched until it resolves (earlier addresses, if any, are kept)"
        );
    }
}
