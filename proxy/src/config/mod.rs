//! The daemon's config: typed, parsed once ([`raw`]), validated once
//! ([`validate`]), with errors that name the file, line and key.

mod raw;
mod validate;

pub use validate::check_webhook_url;

use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The embedded default: safe on any host (loopback targets only).
pub const DEFAULT_CONFIG: &str = include_str!("../../../config/default.toml");
/// The most live connections a config may ask for (each costs descriptors).
pub const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;

/// The name under which the embedded default is reported in errors.
pub const DEFAULT_CONFIG_NAME: &str = "<embedded default>";
/// `listen_port` unless the config says otherwise: below 1024, so that on
/// a host with the kernel's default `ip_unprivileged_port_start` no
/// unprivileged user can bind it while the daemon is down.
pub const DEFAULT_LISTEN_PORT: u16 = 971;

/// The running config, shared by the daemon's parts and swapped whole on a
/// reload: each reader takes the current one ([`ArcSwap::load`]) when it
/// needs it, so a reload never changes a config under a reader.
pub type SharedConfig = std::sync::Arc<arc_swap::ArcSwap<Config>>;

/// `config` as the running config, to be shared.
pub fn share(config: std::sync::Arc<Config>) -> SharedConfig {
    std::sync::Arc::new(arc_swap::ArcSwap::new(config))
}

/// One target of a config, held with the config it is in (so it outlives
/// a reload that swaps the config).
#[derive(Debug, Clone)]
pub struct TargetRef {
    config: std::sync::Arc<Config>,
    index: usize,
}

impl TargetRef {
    /// Target `name` of `config`, unless it is absent or retired.
    pub fn find(config: std::sync::Arc<Config>, name: &str) -> Option<Self> {
        let index = config
            .targets
            .iter()
            .position(|t| t.name == name && !t.retired)?;
        Some(Self { config, index })
    }

    /// The config it is in.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

impl std::ops::Deref for TargetRef {
    type Target = Target;

    fn deref(&self) -> &Target {
        &self.config.targets[self.index]
    }
}

/// A validated config, ready to hand to the daemon.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from (a path, or [`DEFAULT_CONFIG_NAME`]).
    pub source: String,
    pub listen_port: u16,
    pub cgroup: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
    pub resolve_interval: Duration,
    pub connect_timeout: Duration,
    pub max_connections: usize,
    /// Live connection records one uid may hold in the kernel (connects
    /// beyond it get EPERM), so one user cannot fill the maps for everyone.
    pub max_records_per_uid: u32,
    pub upstream_mark: u32,
    /// Threads of the async runtime; `None`: one per CPU the daemon may use.
    pub worker_threads: Option<usize>,
    /// Unix socket of the control API.
    pub control_socket: PathBuf,
    /// Who may grant and revoke, besides root.
    pub approvers: Vec<Approver>,
    pub audit: AuditConfig,
    pub targets: Vec<Target>,
    /// Webhooks told of requests, decisions, break-glass use and grants.
    pub notify: Vec<Notify>,
    /// Where the Prometheus metrics endpoint listens; `None`: off.
    pub metrics: Option<MetricsAddr>,
}

/// Where the metrics endpoint listens: a loopback address, or a Unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsAddr {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

/// The `[audit]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// Directory of the log files, if set; see [`Config::audit_dir`].
    pub dir: Option<PathBuf>,
    /// A file is rotated when it reaches this size...
    pub rotate_bytes: u64,
    /// ...or when the UTC day changes. Files older than this are removed.
    pub retention: Duration,
    /// A signed checkpoint at least this often while records are written.
    pub checkpoint_interval: Duration,
    /// Who may read the log through the control API, besides root.
    pub auditors: Vec<Approver>,
    /// A syslog collector (`host:port`, RFC 5424 over TCP) that gets a copy
    /// of every record, so that the chain's head also lives off the host.
    pub syslog: Option<String>,
}

impl Config {
    /// The audit log's directory: `[audit] dir`, else `<state_dir>/audit`.
    pub fn audit_dir(&self) -> PathBuf {
        self.audit
            .dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("audit"))
    }
}

/// An entry of `approvers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approver {
    User(String),
    Group(String),
}

/// A production API: the addresses and ports that are redirected.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub name: String,
    pub hosts: Vec<HostSpec>,
    pub ports: Vec<u16>,
    /// Longest grant allowed on this target; binds everyone, root included.
    pub max_grant: Duration,
    /// Connection limits per (user, target).
    pub limits: Limit,
    /// Who may ask for access, who approves it, and how.
    pub access: AccessPolicy,
    /// Removed by a reload: kept in its place (targets are numbered by
    /// position, and the kernel's records name that number) but with no
    /// addresses, so nothing reaches it and nobody is given it.
    pub retired: bool,
    /// How its connections are forwarded.
    pub mode: Mode,
}

/// How a target's connections are forwarded.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Mode {
    /// Bytes relayed as they are (TLS stays end to end).
    #[default]
    Passthrough,
    /// TLS terminated with the local CA; each HTTP request decided, recorded
    /// and sent on with the target's credential.
    Inspect(Box<Inspect>),
}

impl Mode {
    /// The inspect settings, for an inspect target.
    pub fn inspect(&self) -> Option<&Inspect> {
        match self {
            Mode::Passthrough => None,
            Mode::Inspect(inspect) => Some(inspect),
        }
    }
}

/// An inspect target's settings (`mode = "inspect"`).
#[derive(Debug, Clone, PartialEq)]
pub struct Inspect {
    /// The names clients use (TLS server name and `Host`), lowercase: DNS
    /// names, or addresses written as text. Default: the target's hosts
    /// that are names or single addresses.
    pub server_names: Vec<String>,
    /// TLS toward the target (default on); off for a plain-HTTP API, whose
    /// clients then speak plain HTTP to the proxy too.
    pub upstream_tls: bool,
    /// The CA the target's certificate is verified against (PEM); `None`:
    /// the system roots. Never jitproxy's own CA.
    pub upstream_ca: Option<PathBuf>,
    /// Requests per second per (user, target), and the burst above it.
    pub requests_per_second: f64,
    pub requests_burst: u32,
    /// Whether audit records keep query values (default: names only).
    pub log_query: bool,
    /// The real credential added on the way out.
    pub credential: Option<Credential>,
}

/// A target's `[target.credential]`: where the secret is and how it is sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Credential {
    /// The header every request gets (`Authorization`); `None`: only
    /// placeholders are swapped.
    pub header: Option<String>,
    /// The header's value, with `{secret}` where the secret goes.
    pub value: String,
    pub secret: SecretRef,
    /// Query parameters whose placeholder value is swapped for the secret.
    pub placeholder_query: Vec<String>,
    /// Headers whose placeholders are swapped (lowercase); a placeholder in
    /// any other header is refused.
    pub placeholder_headers: Vec<String>,
}

/// Where a credential's secret is read from.
#[derive(Debug, Clone, PartialEq)]
pub enum SecretRef {
    /// A root-only file, read again when it changes.
    File(PathBuf),
    /// An environment variable of the daemon, read at start.
    Env(String),
}

/// How access to a target is asked for and given: `jitproxy request`,
/// `approve`, `deny` and `break-glass`.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessPolicy {
    /// Who may request access; `None`: everyone.
    pub requesters: Option<Vec<Approver>>,
    /// Who approves requests and grants access (besides root); `None`: the
    /// top-level `approvers`.
    pub approvers: Option<Vec<Approver>>,
    /// Distinct approvers, none of them the requester, before a grant exists.
    pub approvals: u32,
    /// A pending request expires this long after it was made.
    pub request_ttl: Duration,
    /// Requests granted at once, without an approver, recorded as such.
    pub auto_approve: Vec<AutoApprove>,
    /// Who may take immediate access in an emergency (`jitproxy break-glass`).
    pub break_glass: Vec<Approver>,
    /// Longest break-glass grant.
    pub break_glass_max: Duration,
}

impl Default for AccessPolicy {
    fn default() -> Self {
        Self {
            requesters: None,
            approvers: None,
            approvals: 1,
            request_ttl: Duration::from_secs(24 * 3600),
            auto_approve: Vec::new(),
            break_glass: Vec::new(),
            break_glass_max: Duration::from_secs(30 * 60),
        }
    }
}

/// An `auto_approve` rule: requests by `who` for at most `max` are granted
/// at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoApprove {
    pub who: Vec<Approver>,
    pub max: Duration,
}

/// A `[[notify]]` webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    /// Names it in logs and status (its URL may hold a secret, so it never
    /// appears there).
    pub name: String,
    pub url: NotifyUrl,
    pub format: NotifyFormat,
    /// Event codes it gets; empty: all.
    pub events: Vec<String>,
}

/// Where a webhook's URL is: in the config, or in a root-only file (a Slack
/// webhook URL is a secret).
#[derive(Clone, PartialEq, Eq)]
pub enum NotifyUrl {
    Inline(String),
    File(PathBuf),
}

impl fmt::Debug for NotifyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Never printed: it may carry the webhook's secret.
            Self::Inline(_) => f.write_str("Inline(..)"),
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

/// The body a webhook gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyFormat {
    /// Slack incoming-webhook JSON (`text`).
    Slack,
    /// jitproxy's own JSON: event, request, grant, who, target, window.
    Json,
}

/// Event codes a webhook can get.
pub const NOTIFY_EVENTS: &[&str] = &[
    "request.created",
    "request.approved",
    "request.denied",
    "request.expired",
    "break_glass.used",
    "grant.created",
    "grant.ended",
];

impl Config {
    /// Who approves requests for `target` (besides root).
    pub fn approvers_of<'a>(&'a self, target: &'a Target) -> &'a [Approver] {
        target
            .access
            .approvers
            .as_deref()
            .unwrap_or(&self.approvers)
    }
}

/// Connection limits of a target, per (user, target): new connections per
/// second with a burst (a token bucket), and live connections at most.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limit {
    /// Sustained new connections per second.
    pub connections_per_second: f64,
    /// New connections allowed at once before the rate applies.
    pub burst: u32,
    /// Live connections at most.
    pub max_concurrent: u32,
}

impl Default for Limit {
    fn default() -> Self {
        Self {
            connections_per_second: 50.0,
            burst: 100,
            max_concurrent: 256,
        }
    }
}

/// One entry of a target's `hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostSpec {
    /// An address or CIDR range, matched as is.
    Net(IpNet),
    /// A DNS name, resolved at start and every `resolve_interval`.
    Name(String),
}

/// A config that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {key}: {message}")]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        /// Dotted path of the offending key, e.g. `target[1].ports[0]`.
        key: String,
        message: String,
    },
}

/// Which ports any user may bind on the host a config is checked for: those
/// from `start` up (`net.ipv4.ip_unprivileged_port_start`; 0: every port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnprivilegedPorts {
    pub start: u16,
    /// Why `start` is assumed rather than read from the host, if it is;
    /// said only in a refusal that depends on it.
    pub assumed: Option<String>,
}

impl UnprivilegedPorts {
    /// The kernel's default: ports from 1024 up.
    pub const KERNEL_DEFAULT: Self = Self {
        start: 1024,
        assumed: None,
    };
}

/// Why a listen port is refused: any user could bind it while the daemon is
/// down, and would then receive every connection the kernel redirects to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExposedListenPort {
    /// The port is at or above the host's first unprivileged port.
    Unprivileged { start: u16 },
    /// Every port the proxy could listen on is unprivileged on this host
    /// (`ip_unprivileged_port_start` is 0 or 1).
    NoPrivilegedPort,
}

/// Whether `port` is safe as the proxy's listen port on a host where ports
/// from `unprivileged_start` up may be bound by anyone: only a port below it
/// is, since nobody else can take it while the daemon is down.
pub fn check_listen_port(port: u16, unprivileged_start: u16) -> Result<(), ExposedListenPort> {
    match unprivileged_start {
        // Port 0 is no port to listen on, so a start of 1 leaves none either.
        0 | 1 => Err(ExposedListenPort::NoPrivilegedPort),
        start if port >= start => Err(ExposedListenPort::Unprivileged { start }),
        _ => Ok(()),
    }
}

impl ExposedListenPort {
    /// What is wrong with listen port `port`, and what to do instead.
    pub fn message(self, port: u16) -> String {
        match self {
            Self::Unprivileged { start } => {
                let example = if DEFAULT_LISTEN_PORT < start && port != DEFAULT_LISTEN_PORT {
                    format!(", such as the default {DEFAULT_LISTEN_PORT}")
                } else {
                    String::new()
                };
                format!(
                    "port {port} can be bound by any user (ports from {start} up are \
                     unprivileged), who would then receive every redirected connection while \
                     jitproxy is down; pick a port below {start} (ip_unprivileged_port_start){example}"
                )
            }
            Self::NoPrivilegedPort => format!(
                "this host lets any user bind any port (net.ipv4.ip_unprivileged_port_start \
                 is 0 or 1), so whoever binds port {port} while jitproxy is down receives every \
                 redirected connection; raise the sysctl (e.g. \
                 `sysctl -w net.ipv4.ip_unprivileged_port_start=1024`) and keep listen_port below it"
            ),
        }
    }
}

impl Config {
    /// Reads the config at `path` and validates it for a host where
    /// `unprivileged` ports may be bound by anyone (the commands pass this
    /// host's, `host::net::unprivileged_ports`).
    pub fn load(path: &Path, unprivileged: &UnprivilegedPorts) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse_for(&text, &path.display().to_string(), unprivileged)
    }

    /// The embedded default config, validated for a host where
    /// `unprivileged` ports may be bound by anyone.
    pub fn embedded_default(unprivileged: &UnprivilegedPorts) -> Result<Self, ConfigError> {
        Self::parse_for(DEFAULT_CONFIG, DEFAULT_CONFIG_NAME, unprivileged)
    }

    /// Parses and validates config text for a host with the kernel's
    /// default unprivileged ports ([`UnprivilegedPorts::KERNEL_DEFAULT`]);
    /// `file` names it in errors. Reads nothing from the host.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        Self::parse_for(text, file, &UnprivilegedPorts::KERNEL_DEFAULT)
    }

    /// Parses and validates config text for a host where `unprivileged`
    /// ports may be bound by anyone; `file` names it in errors.
    pub fn parse_for(
        text: &str,
        file: &str,
        unprivileged: &UnprivilegedPorts,
    ) -> Result<Self, ConfigError> {
        let raw = raw::parse(text, file)?;
        validate::validate(raw, text, file, unprivileged)
    }

    /// Target by its index (the `target_id` the kernel records).
    pub fn target(&self, id: u32) -> Option<&Target> {
        self.targets.get(usize::try_from(id).ok()?)
    }

    /// Index of the target named `name`.
    pub fn target_id(&self, name: &str) -> Option<u32> {
        self.targets
            .iter()
            .position(|t| t.name == name)
            .and_then(|i| u32::try_from(i).ok())
    }
}

impl Config {
    /// Targets that name an address of this host (`local`: its interface
    /// addresses) but not every address a service on it could be reached
    /// through: a service listening on every address (`0.0.0.0`, `::`)
    /// answers on the whole loopback range and every local address, so
    /// listing one of them leaves the others open. One message per target,
    /// saying what to list instead.
    pub fn local_target_warnings(&self, local: &[IpAddr]) -> Vec<String> {
        let loopback4 = IpNet::new_assert(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 0)), 8);
        let mut reachable: Vec<IpNet> = vec![loopback4];
        reachable.extend(
            local
                .iter()
                .filter(|ip| !loopback4.contains(*ip))
                .map(|&ip| IpNet::from(ip)),
        );
        self.targets
            .iter()
            .filter_map(|target| {
                let nets: Vec<&IpNet> = target
                    .hosts
                    .iter()
                    .filter_map(|h| match h {
                        HostSpec::Net(net) => Some(net),
                        HostSpec::Name(_) => None,
                    })
                    .collect();
                let of_this_host = nets
                    .iter()
                    .any(|net| reachable.iter().any(|r| r.contains(*net) || net.contains(r)));
                if !of_this_host {
                    return None;
                }
                let open: Vec<String> = reachable
                    .iter()
                    .filter(|r| !nets.iter().any(|net| net.contains(*r)))
                    .map(|r| HostSpec::Net(*r).to_string())
                    .collect();
                (!open.is_empty()).then(|| {
                    format!(
                        "target `{}` is an address of this host: a service there that listens on every \
                         address (0.0.0.0 or ::) is also reached through {} on ports {}, which are not \
                         watched; add them to its `hosts`, or make the service listen on the target's \
                         address only",
                        target.name,
                        open.join(", "),
                        target
                            .ports
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
            })
            .collect()
    }
}

impl fmt::Display for Approver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::User(name) => write!(f, "user:{name}"),
            Self::Group(name) => write!(f, "group:{name}"),
        }
    }
}

impl fmt::Display for HostSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Net(net) if net.prefix_len() == net.max_prefix_len() => net.addr().fmt(f),
            Self::Net(net) => net.fmt(f),
            Self::Name(name) => name.fmt(f),
        }
    }
}

impl FromStr for HostSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Self::Net(canonical(IpNet::from(ip))));
        }
        if s.contains('/') {
            let net: IpNet = s
                .parse()
                .map_err(|_| format!("`{s}` is not a valid CIDR range (e.g. 10.0.0.0/24)"))?;
            if net.trunc() != net {
                return Err(format!(
                    "`{s}` has host bits set; did you mean `{}`?",
                    net.trunc()
                ));
            }
            return Ok(Self::Net(canonical(net)));
        }
        if is_dns_name(s) {
            return Ok(Self::Name(s.to_ascii_lowercase()));
        }
        Err(format!(
            "`{s}` is neither an IP address, a CIDR range nor a DNS name"
        ))
    }
}

/// IPv4-mapped ranges (`::ffff:a.b.c.d/104`) as the IPv4 ranges they are:
/// the kernel matches both forms with one key, so checks must see one form.
fn canonical(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        _ => net,
    }
}

/// RFC 1123 host name: dot-separated labels of letters, digits and hyphens.
pub(super) fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_port_below_the_unprivileged_start_is_safe() {
        use ExposedListenPort::{NoPrivilegedPort, Unprivileged};
        let cases = [
            // (port, ip_unprivileged_port_start, verdict)
            (971, 1024, Ok(())),
            (1023, 1024, Ok(())),
            (1024, 1024, Err(Unprivileged { start: 1024 })),
            (40_000, 1024, Err(Unprivileged { start: 1024 })),
            (971, 900, Err(Unprivileged { start: 900 })),
            (80, 900, Ok(())),
            (40_000, 50_000, Ok(())),
            (65_535, 65_535, Err(Unprivileged { start: 65_535 })),
            (1, 2, Ok(())),
            // No port is privileged, so none is safe.
            (971, 0, Err(NoPrivilegedPort)),
            (1, 1, Err(NoPrivilegedPort)),
        ];
        for (port, start, verdict) in cases {
            assert_eq!(
                check_listen_port(port, start),
                verdict,
                "port {port} with ip_unprivileged_port_start {start}"
            );
        }
    }

    #[test]
    fn a_refusal_says_what_to_pick_instead() {
        let above = ExposedListenPort::Unprivileged { start: 1024 }.message(40_000);
        assert!(
            above.contains("any user")
                && above.contains("pick a port below 1024 (ip_unprivileged_port_start)")
                && above.contains("such as the default 971"),
            "{above}"
        );
        // The default is no example where it is unsafe itself.
        let low = ExposedListenPort::Unprivileged { start: 900 }.message(971);
        assert!(low.contains("pick a port below 900"), "{low}");
        assert!(!low.contains("the default 971"), "{low}");
        let none = ExposedListenPort::NoPrivilegedPort.message(971);
        assert!(
            none.contains("raise the sysctl") && none.contains("ip_unprivileged_port_start=1024"),
            "{none}"
        );
    }
}
