//! Turning the config's targets into kernel map entries: addresses and
//! ranges as written, DNS names resolved at start and every
//! `resolve_interval` ([`keep_resolved`]). A name that stops resolving keeps
//! its last addresses (the host stays watched); a name that never resolved is
//! a warning.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::{Arc, RwLock},
};

use ipnet::IpNet;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{HostSpec, SharedConfig, Target},
    kernel::Kernel,
};

/// Kernel map entries: (port, address range) -> target index.
pub type Entries = BTreeMap<(u16, IpNet), u32>;

/// The resolved state of every target.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub entries: Entries,
    /// Last good addresses of each DNS name.
    pub names: HashMap<String, BTreeSet<IpAddr>>,
}

/// A DNS name that did not resolve this round.
#[derive(Debug, Clone)]
pub struct ResolveWarning {
    pub target: String,
    pub host: String,
    pub error: String,
    /// Whether earlier addresses are kept for it.
    pub kept: usize,
}

impl Resolved {
    /// The target `addr` belongs to, if any (IPv4-mapped as IPv4).
    pub fn target_of(&self, addr: SocketAddr) -> Option<u32> {
        let ip = addr.ip().to_canonical();
        self.entries
            .iter()
            .find(|((port, net), _)| *port == addr.port() && net.contains(&ip))
            .map(|(_, &id)| id)
    }

    /// Addresses of one target, for display.
    pub fn addresses(&self, target_id: u32) -> Vec<(u16, IpNet)> {
        self.entries
            .iter()
            .filter(|(_, &id)| id == target_id)
            .map(|(&k, _)| k)
            .collect()
    }
}

/// Looks up DNS names; the system resolver in the daemon, a table in tests.
pub trait Lookup {
    fn lookup(
        &self,
        name: &str,
    ) -> impl std::future::Future<Output = Result<BTreeSet<IpAddr>, String>> + Send;
}

/// The system resolver (getaddrinfo, off the runtime threads).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemLookup;

impl Lookup for SystemLookup {
    async fn lookup(&self, name: &str) -> Result<BTreeSet<IpAddr>, String> {
        tokio::net::lookup_host((name, 0))
            .await
            .map(|addrs| addrs.map(|a| a.ip().to_canonical()).collect())
            .map_err(|e| e.to_string())
    }
}

/// Resolves every target; `previous` supplies addresses for names that fail.
pub async fn resolve(
    dns: &impl Lookup,
    targets: &[Target],
    previous: &Resolved,
) -> (Resolved, Vec<ResolveWarning>) {
    let mut resolved = Resolved::default();
    let mut warnings = Vec::new();
    for (id, target) in targets.iter().enumerate() {
        let id = u32::try_from(id).unwrap_or(u32::MAX);
        let mut nets = BTreeSet::new();
        for host in &target.hosts {
            match host {
                HostSpec::Net(net) => {
                    nets.insert(*net);
                }
                HostSpec::Name(name) => {
                    let addrs = match dns.lookup(name).await {
                        Ok(addrs) if !addrs.is_empty() => addrs,
                        result => {
                            let kept = previous.names.get(name).cloned().unwrap_or_default();
                            warnings.push(ResolveWarning {
                                target: target.name.clone(),
                                host: name.clone(),
                                error: result.err().unwrap_or_else(|| "no addresses".to_owned()),
                                kept: kept.len(),
                            });
                            kept
                        }
                    };
                    nets.extend(addrs.iter().map(|&ip| IpNet::from(ip)));
                    if !addrs.is_empty() {
                        resolved.names.insert(name.clone(), addrs);
                    }
                }
            }
        }
        for net in nets {
            for &port in &target.ports {
                // Two targets resolving to the same address and port: the
                // first one in the config keeps it.
                resolved.entries.entry((port, net)).or_insert(id);
            }
        }
    }
    (resolved, warnings)
}

/// Re-resolves the targets every `resolve_interval` until shutdown and
/// keeps the kernel's target map and `shared` in step.
pub async fn keep_resolved(
    config: SharedConfig,
    kernel: Arc<Kernel>,
    shared: Arc<RwLock<Resolved>>,
    changed: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut current = shared.read().unwrap_or_else(|p| p.into_inner()).clone();
    let mut ticker = tokio::time::interval(config.load().resolve_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            // A reload: the new targets go into the kernel map now.
            () = changed.notified() => {}
            () = shutdown.cancelled() => return,
        }
        let targets = config.load_full();
        let (resolved, warnings) = resolve(&SystemLookup, &targets.targets, &current).await;
        report(&warnings);
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

/// Logs the names that did not resolve.
pub fn report(warnings: &[ResolveWarning]) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str, hosts: &[&str], ports: &[u16]) -> Target {
        Target {
            name: name.to_owned(),
            hosts: hosts.iter().map(|h| h.parse().unwrap()).collect(),
            ports: ports.to_vec(),
            max_grant: std::time::Duration::from_secs(3600),
            limits: crate::config::Limit::default(),
            access: crate::config::AccessPolicy::default(),
            retired: false,
            mode: crate::config::Mode::Passthrough,
        }
    }

    /// Resolves `localhost` only; every other name fails.
    struct Table;

    impl Lookup for Table {
        async fn lookup(&self, name: &str) -> Result<BTreeSet<IpAddr>, String> {
            match name {
                "localhost" => Ok(BTreeSet::from(["127.0.0.1".parse().unwrap()])),
                _ => Err("no such host".to_owned()),
            }
        }
    }

    #[tokio::test]
    async fn literal_hosts_and_names_resolve() {
        let targets = [
            target("a", &["127.0.0.2", "10.0.0.0/8"], &[80, 443]),
            target("b", &["localhost"], &[8080]),
        ];
        let (resolved, warnings) = resolve(&Table, &targets, &Resolved::default()).await;
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(resolved.entries[&(443, "10.0.0.0/8".parse().unwrap())], 0);
        assert_eq!(
            resolved.entries[&(8080, "127.0.0.1/32".parse().unwrap())],
            1
        );
        assert_eq!(resolved.addresses(0).len(), 4);
    }

    #[tokio::test]
    async fn failed_name_keeps_previous_addresses() {
        let targets = [target("a", &["no-such-host.invalid"], &[443])];
        let mut previous = Resolved::default();
        previous.names.insert(
            "no-such-host.invalid".into(),
            BTreeSet::from(["127.0.0.9".parse().unwrap()]),
        );
        let (resolved, warnings) = resolve(&Table, &targets, &previous).await;
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].kept, 1);
        assert!(resolved
            .entries
            .contains_key(&(443, "127.0.0.9/32".parse().unwrap())));
    }
}
