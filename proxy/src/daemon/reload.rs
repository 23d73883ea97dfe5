//! Reloading the config on SIGHUP (`systemctl reload jitproxy`): the file is
//! read and checked again; a config with errors is refused, with the error
//! in the daemon log, and changes nothing. A good one replaces the running
//! config whole: targets (hosts, ports, limits, `max_grant`, request
//! policy), approvers, auditors and webhooks. Live connections and grants
//! are untouched: they carry their own decision, and grants name targets.
//!
//! What the running daemon cannot change without a restart (its listeners,
//! cgroup, state and audit files, kernel settings) must stay as it is, or
//! the reload is refused and says which keys differ.
//!
//! Targets are numbered by position (the kernel's records carry that
//! number), so a reload keeps each kept target where it was, retires a
//! removed one in its place (no addresses: nothing reaches it, nobody is
//! given it) and appends new ones; a restart numbers them afresh.

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::systemd;
use crate::{
    access::Access,
    audit::{Event, EventKind},
    config::{Config, SharedConfig, Target},
    proxy::Policy,
};

/// Reads the config again (from where it was read at start, with the same
/// command-line overrides).
pub type Reader = Box<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// What a reload changes.
pub struct Parts {
    pub config: SharedConfig,
    pub access: Arc<Access>,
    pub policy: Policy,
    /// Wakes the target resolver, to put the new targets in the kernel map.
    pub targets_changed: Arc<Notify>,
    pub inspectors: crate::proxy::http::Inspectors,
}

/// Reloads on every SIGHUP until shutdown.
pub async fn on_sighup(read: Reader, parts: Parts, shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler; reload by restarting");
        return;
    };
    loop {
        tokio::select! {
            _ = hangups.recv() => {}
            () = shutdown.cancelled() => return,
        }
        systemd::reloading();
        match read().and_then(|new| apply(&parts, new)) {
            Ok(config) => {
                tracing::info!(config = %config.source, targets = config.targets.iter().filter(|t| !t.retired).count(), "config reloaded");
            }
            Err(why) => {
                tracing::error!(error = %why, "config reload refused; the running config is kept");
            }
        }
        systemd::ready();
    }
}

/// Takes `new` as the running config, unless it changes what needs a
/// restart. Returns it (with the running targets' numbering).
fn apply(parts: &Parts, new: Config) -> Result<Arc<Config>, String> {
    let old = parts.config.load_full();
    let fixed = restart_only_changes(&old, &new);
    if !fixed.is_empty() {
        return Err(format!(
            "{} changed, which takes a restart (`systemctl restart jitproxy`); change it back, or restart",
            fixed.join(", ")
        ));
    }
    let mut new = new;
    new.targets = align_targets(&old.targets, new.targets);
    let new = Arc::new(new);
    // Inspectors first: a target number must never meet a connection
    // before its inspector (or its refusal) is in place.
    let installed = parts.inspectors.install(&new, Some(new.upstream_mark));
    super::report_inspect(&installed, &new);
    parts.config.store(Arc::clone(&new));
    parts.policy.retarget(&new);
    parts.targets_changed.notify_one();
    let access = Arc::clone(&parts.access);
    let for_access = Arc::clone(&new);
    tokio::spawn(async move {
        if let Err(e) = access.reconfigure(for_access).await {
            tracing::error!(error = %e, "cannot rebuild the grant index after a reload");
        }
    });
    let mut event = Event::new(EventKind::ConfigLoaded);
    event.detail = Some(serde_json::json!({
        "source": new.source,
        "reload": true,
        "targets": new.targets.iter().filter(|t| !t.retired).map(|t| &t.name).collect::<Vec<_>>(),
    }));
    parts.access.audit().record(event);
    Ok(new)
}

/// The keys whose change a running daemon cannot take.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |key: &'static str, same: bool| {
        if !same {
            changed.push(key);
        }
    };
    check("listen_port", old.listen_port == new.listen_port);
    check("cgroup", old.cgroup == new.cgroup);
    check("state_dir", old.state_dir == new.state_dir);
    check("bpffs", old.bpffs == new.bpffs);
    check("control_socket", old.control_socket == new.control_socket);
    check("upstream_mark", old.upstream_mark == new.upstream_mark);
    check(
        "max_records_per_uid",
        old.max_records_per_uid == new.max_records_per_uid,
    );
    check(
        "max_connections",
        old.max_connections == new.max_connections,
    );
    check("worker_threads", old.worker_threads == new.worker_threads);
    check(
        "connect_timeout",
        old.connect_timeout == new.connect_timeout,
    );
    check(
        "resolve_interval",
        old.resolve_interval == new.resolve_interval,
    );
    check("metrics", old.metrics == new.metrics);
    let (a, b) = (&old.audit, &new.audit);
    check(
        "[audit] (other than auditors)",
        a.dir == b.dir
            && a.rotate_bytes == b.rotate_bytes
            && a.retention == b.retention
            && a.checkpoint_interval == b.checkpoint_interval
            && a.syslog == b.syslog,
    );
    changed
}

/// `new`'s targets in the running numbering: each target `old` has keeps
/// its place (retired there if `new` dropped it), new ones come after.
fn align_targets(old: &[Target], new: Vec<Target>) -> Vec<Target> {
    let mut new: Vec<Option<Target>> = new.into_iter().map(Some).collect();
    let mut aligned: Vec<Target> = old
        .iter()
        .map(|was| {
            match new
                .iter_mut()
                .find(|t| t.as_ref().is_some_and(|t| t.name == was.name))
            {
                Some(slot) => slot.take().unwrap_or_else(|| retired(was)),
                None => retired(was),
            }
        })
        .collect();
    aligned.extend(new.into_iter().flatten());
    aligned
}

/// `target`, retired: no hosts, no ports.
fn retired(target: &Target) -> Target {
    Target {
        hosts: Vec::new(),
        ports: Vec::new(),
        retired: true,
        ..target.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str) -> Target {
        Target {
            name: name.to_owned(),
            hosts: vec!["10.0.0.1".parse().unwrap()],
            ports: vec![443],
            max_grant: std::time::Duration::from_secs(3600),
            limits: crate::config::Limit::default(),
            access: crate::config::AccessPolicy::default(),
            retired: false,
            mode: crate::config::Mode::Passthrough,
        }
    }

    #[test]
    fn kept_targets_keep_their_number_and_removed_ones_are_retired_in_place() {
        let old = vec![target("a"), target("b"), target("c")];
        let new = vec![target("c"), target("d"), target("a")];
        let aligned = align_targets(&old, new);
        let names: Vec<(&str, bool)> = aligned
            .iter()
            .map(|t| (t.name.as_str(), t.retired))
            .collect();
        assert_eq!(
            names,
            [("a", false), ("b", true), ("c", false), ("d", false)]
        );
        assert!(aligned[1].hosts.is_empty() && aligned[1].ports.is_empty());
    }

    #[test]
    fn a_change_that_needs_a_restart_is_named() {
        let old = Config::parse("listen_port = 971\n", "a.toml").unwrap();
        let mut new = old.clone();
        assert!(restart_only_changes(&old, &new).is_empty());
        new.listen_port = 972;
        new.approvers.clear();
        assert_eq!(restart_only_changes(&old, &new), ["listen_port"]);
    }
}
