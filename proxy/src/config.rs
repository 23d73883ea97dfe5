//! The daemon's config: typed, parsed once, validated once, with errors that
//! name the file, line and key.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::limits::Limit;

/// The embedded default: safe on any host (loopback targets only).
pub const DEFAULT_CONFIG: &str = include_str!("../../config/default.toml");
/// The most live connections a config may ask for (each costs descriptors).
pub const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;

/// The name under which the embedded default is reported in errors.
pub const DEFAULT_CONFIG_NAME: &str = "<embedded default>";

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
    pub upstream_mark: u32,
    /// Threads of the async runtime; `None`: one per CPU the daemon may use.
    pub worker_threads: Option<usize>,
    /// Unix socket of the control API.
    pub control_socket: PathBuf,
    /// Who may grant and revoke, besides root.
    pub approvers: Vec<Approver>,
    pub audit: AuditConfig,
    pub targets: Vec<Target>,
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

    /// The audit log writer's settings: log in `audit.dir`, key and
    /// checkpoints in `state_dir` (apart from the log).
    pub fn audit_settings(&self) -> crate::audit::log::AuditSettings {
        crate::audit::log::AuditSettings {
            dir: self.audit_dir(),
            key: self.state_dir.join("audit-signing.key"),
            checkpoints: self.state_dir.join("checkpoints.jsonl"),
            rotate_bytes: self.audit.rotate_bytes,
            retention: self.audit.retention,
            checkpoint_interval: self.audit.checkpoint_interval,
            syslog: self.audit.syslog.clone(),
        }
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

impl Config {
    /// Reads and validates the config at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The embedded default config.
    pub fn embedded_default() -> Result<Self, ConfigError> {
        Self::parse(DEFAULT_CONFIG, DEFAULT_CONFIG_NAME)
    }

    /// Parses and validates config text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let raw = parse_raw(text, file)?;
        raw.validate(text, file)
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

/// Whether `net` covers one of the proxy's own listener addresses
/// (127.0.0.1 or ::1; IPv4-mapped ranges are already IPv4 here).
fn covers_listener(net: &IpNet) -> bool {
    net.contains(&IpAddr::from([127, 0, 0, 1]))
        || net.contains(&IpAddr::from(std::net::Ipv6Addr::LOCALHOST))
}

/// RFC 1123 host name: dot-separated labels of letters, digits and hyphens.
fn is_dns_name(s: &str) -> bool {
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

// ---- raw, as written in the file ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "defaults::listen_port")]
    listen_port: Spanned<u16>,
    #[serde(default)]
    cgroup: Option<PathBuf>,
    #[serde(default = "defaults::state_dir")]
    state_dir: PathBuf,
    #[serde(default = "defaults::bpffs")]
    bpffs: PathBuf,
    #[serde(default = "defaults::resolve_interval")]
    resolve_interval: Spanned<String>,
    #[serde(default = "defaults::connect_timeout")]
    connect_timeout: Spanned<String>,
    #[serde(default = "defaults::max_connections")]
    max_connections: Spanned<usize>,
    #[serde(default = "defaults::upstream_mark")]
    upstream_mark: Spanned<u32>,
    #[serde(default)]
    worker_threads: Option<Spanned<usize>>,
    #[serde(default = "defaults::control_socket")]
    control_socket: PathBuf,
    #[serde(default)]
    approvers: Vec<Spanned<String>>,
    #[serde(default = "defaults::max_grant")]
    max_grant: Spanned<String>,
    #[serde(default)]
    limits: Option<Spanned<Limit>>,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default, rename = "target")]
    targets: Vec<RawTarget>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    #[serde(default)]
    dir: Option<PathBuf>,
    #[serde(default)]
    rotate_bytes: Option<Spanned<u64>>,
    #[serde(default)]
    retention: Option<Spanned<String>>,
    #[serde(default)]
    checkpoint_interval: Option<Spanned<String>>,
    #[serde(default)]
    auditors: Vec<Spanned<String>>,
    #[serde(default)]
    syslog: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    name: Spanned<String>,
    hosts: Spanned<Vec<Spanned<String>>>,
    ports: Spanned<Vec<Spanned<u16>>>,
    #[serde(default)]
    max_grant: Option<Spanned<String>>,
    #[serde(default)]
    limits: Option<Spanned<Limit>>,
}

mod defaults {
    use std::path::PathBuf;

    use toml::Spanned;

    fn unspanned<T>(v: T) -> Spanned<T> {
        Spanned::new(0..0, v)
    }
    pub(super) fn listen_port() -> Spanned<u16> {
        unspanned(971)
    }
    pub(super) fn state_dir() -> PathBuf {
        PathBuf::from("/var/lib/jitproxy")
    }
    pub(super) fn bpffs() -> PathBuf {
        PathBuf::from("/sys/fs/bpf")
    }
    pub(super) fn resolve_interval() -> Spanned<String> {
        unspanned("30s".to_owned())
    }
    pub(super) fn connect_timeout() -> Spanned<String> {
        unspanned("5s".to_owned())
    }
    pub(super) fn max_connections() -> Spanned<usize> {
        unspanned(10_000)
    }
    pub(super) fn upstream_mark() -> Spanned<u32> {
        unspanned(proxy_common::DEFAULT_UPSTREAM_MARK)
    }
    pub(super) fn control_socket() -> PathBuf {
        PathBuf::from("/run/jitproxy/control.sock")
    }
    pub(super) fn max_grant() -> Spanned<String> {
        unspanned("8h".to_owned())
    }
}

fn parse_raw(text: &str, file: &str) -> Result<RawConfig, ConfigError> {
    let deserializer = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        // Values read with their position (`Spanned`) add serde's private
        // field name to the path; the key as written has none.
        let key = err
            .path()
            .to_string()
            .replace(".$__serde_spanned_private_value", "")
            .replace("$__serde_spanned_private_value", "");
        let inner = err.into_inner();
        let (line, column) = inner
            .span()
            .map(|span| line_col(text, span.start))
            .unwrap_or((1, 1));
        ConfigError::Invalid {
            file: file.to_owned(),
            line,
            column,
            key: if key == "." {
                "(top level)".to_owned()
            } else {
                key
            },
            message: inner.message().to_owned(),
        }
    })
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

struct Errors<'a> {
    text: &'a str,
    file: &'a str,
}

impl Errors<'_> {
    fn at<T>(
        &self,
        spanned: &Spanned<T>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = line_col(self.text, spanned.span().start);
        ConfigError::Invalid {
            file: self.file.to_owned(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        }
    }
}

fn parse_duration(
    errors: &Errors<'_>,
    value: &Spanned<String>,
    key: &str,
) -> Result<Duration, ConfigError> {
    let duration = humantime::parse_duration(value.get_ref()).map_err(|e| {
        errors.at(
            value,
            key,
            format!(
                "`{}` is not a duration ({e}); write e.g. \"30s\" or \"5m\"",
                value.get_ref()
            ),
        )
    })?;
    if duration.is_zero() {
        return Err(errors.at(value, key, "must be greater than zero"));
    }
    Ok(duration)
}

/// `user:NAME` / `group:NAME` entries (approvers, auditors).
fn parse_principals(
    errors: &Errors<'_>,
    list: &[Spanned<String>],
    key: &str,
) -> Result<Vec<Approver>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, a)| match a.get_ref().split_once(':') {
            Some(("user", name)) if !name.is_empty() => Ok(Approver::User(name.to_owned())),
            Some(("group", name)) if !name.is_empty() => Ok(Approver::Group(name.to_owned())),
            _ => Err(errors.at(
                a,
                format!("{key}[{i}]"),
                format!("`{}` must be `user:NAME` or `group:NAME`", a.get_ref()),
            )),
        })
        .collect()
}

fn validate_limit(
    errors: &Errors<'_>,
    limit: &Spanned<Limit>,
    key: &str,
) -> Result<Limit, ConfigError> {
    let l = limit.get_ref();
    if !(l.connections_per_second.is_finite() && l.connections_per_second > 0.0) {
        return Err(errors.at(
            limit,
            format!("{key}.connections_per_second"),
            "must be a number greater than 0",
        ));
    }
    if l.burst == 0 {
        return Err(errors.at(limit, format!("{key}.burst"), "must be at least 1"));
    }
    if l.max_concurrent == 0 {
        return Err(errors.at(limit, format!("{key}.max_concurrent"), "must be at least 1"));
    }
    Ok(*l)
}

impl RawConfig {
    fn validate(self, text: &str, file: &str) -> Result<Config, ConfigError> {
        let errors = Errors { text, file };
        if *self.listen_port.get_ref() == 0 {
            return Err(errors.at(
                &self.listen_port,
                "listen_port",
                "must be a port from 1 to 65535",
            ));
        }
        if !(1..=MAX_CONNECTIONS_LIMIT).contains(self.max_connections.get_ref()) {
            return Err(errors.at(
                &self.max_connections,
                "max_connections",
                format!("must be from 1 to {MAX_CONNECTIONS_LIMIT}"),
            ));
        }
        if *self.upstream_mark.get_ref() == 0 {
            return Err(errors.at(
                &self.upstream_mark,
                "upstream_mark",
                "must not be 0 (0 means no mark)",
            ));
        }
        let resolve_interval = parse_duration(&errors, &self.resolve_interval, "resolve_interval")?;
        let connect_timeout = parse_duration(&errors, &self.connect_timeout, "connect_timeout")?;
        let max_grant = parse_duration(&errors, &self.max_grant, "max_grant")?;
        let limits = match &self.limits {
            Some(l) => validate_limit(&errors, l, "limits")?,
            None => Limit::default(),
        };
        if let Some(threads) = &self.worker_threads {
            if !(1..=256).contains(threads.get_ref()) {
                return Err(errors.at(threads, "worker_threads", "must be from 1 to 256"));
            }
        }
        let approvers = parse_principals(&errors, &self.approvers, "approvers")?;
        let audit = AuditConfig {
            dir: self.audit.dir.clone(),
            rotate_bytes: match &self.audit.rotate_bytes {
                Some(b) if *b.get_ref() < 4096 => {
                    return Err(errors.at(b, "audit.rotate_bytes", "must be at least 4096"))
                }
                Some(b) => *b.get_ref(),
                None => 64 << 20,
            },
            retention: match &self.audit.retention {
                Some(d) => parse_duration(&errors, d, "audit.retention")?,
                None => Duration::from_secs(90 * 24 * 3600),
            },
            checkpoint_interval: match &self.audit.checkpoint_interval {
                Some(d) => parse_duration(&errors, d, "audit.checkpoint_interval")?,
                None => Duration::from_secs(60),
            },
            auditors: parse_principals(&errors, &self.audit.auditors, "audit.auditors")?,
            syslog: match &self.audit.syslog {
                Some(addr)
                    if addr.get_ref().rsplit_once(':').is_some_and(|(h, p)| {
                        !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0)
                    }) =>
                {
                    Some(addr.get_ref().clone())
                }
                Some(addr) => {
                    return Err(errors.at(
                        addr,
                        "audit.syslog",
                        format!("`{}` is not HOST:PORT", addr.get_ref()),
                    ))
                }
                None => None,
            },
        };

        let mut names = HashSet::new();
        let mut literal = HashMap::new();
        let mut targets = Vec::with_capacity(self.targets.len());
        for (i, raw) in self.targets.into_iter().enumerate() {
            let name = raw.name.get_ref();
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            {
                return Err(errors.at(
                    &raw.name,
                    format!("target[{i}].name"),
                    format!(
                        "`{name}` is not a valid target name; use letters, digits, '-', '_' or '.'"
                    ),
                ));
            }
            if !names.insert(name.clone()) {
                return Err(errors.at(
                    &raw.name,
                    format!("target[{i}].name"),
                    format!("duplicate target name `{name}`"),
                ));
            }
            if raw.hosts.get_ref().is_empty() {
                return Err(errors.at(
                    &raw.hosts,
                    format!("target[{i}].hosts"),
                    "needs at least one host",
                ));
            }
            if raw.ports.get_ref().is_empty() {
                return Err(errors.at(
                    &raw.ports,
                    format!("target[{i}].ports"),
                    "needs at least one port",
                ));
            }
            let mut ports = Vec::new();
            for (j, port) in raw.ports.get_ref().iter().enumerate() {
                let key = format!("target[{i}].ports[{j}]");
                if *port.get_ref() == 0 {
                    return Err(errors.at(port, key, "must be a port from 1 to 65535"));
                }
                if ports.contains(port.get_ref()) {
                    return Err(errors.at(
                        port,
                        key,
                        format!("port {} is listed twice", port.get_ref()),
                    ));
                }
                ports.push(*port.get_ref());
            }
            let mut hosts = Vec::new();
            for (j, host) in raw.hosts.get_ref().iter().enumerate() {
                let key = format!("target[{i}].hosts[{j}]");
                let spec: HostSpec = host
                    .get_ref()
                    .parse()
                    .map_err(|m: String| errors.at(host, &key, m))?;
                if let HostSpec::Net(net) = spec {
                    if covers_listener(&net) && ports.contains(self.listen_port.get_ref()) {
                        return Err(errors.at(host, &key, format!(
                            "covers the proxy's own listener (127.0.0.1 or [::1] port {}); change listen_port or the target",
                            self.listen_port.get_ref()
                        )));
                    }
                    for port in &ports {
                        if let Some(other) = literal.insert((net, *port), name.clone()) {
                            return Err(errors.at(
                                host,
                                &key,
                                format!("{net} port {port} is already in target `{other}`"),
                            ));
                        }
                    }
                }
                hosts.push(spec);
            }
            let target_max_grant = match &raw.max_grant {
                Some(d) => parse_duration(&errors, d, &format!("target[{i}].max_grant"))?,
                None => max_grant,
            };
            let target_limits = match &raw.limits {
                Some(l) => validate_limit(&errors, l, &format!("target[{i}].limits"))?,
                None => limits,
            };
            targets.push(Target {
                name: name.clone(),
                hosts,
                ports,
                max_grant: target_max_grant,
                limits: target_limits,
            });
        }
        Ok(Config {
            source: file.to_owned(),
            listen_port: self.listen_port.into_inner(),
            cgroup: self.cgroup,
            state_dir: self.state_dir,
            bpffs: self.bpffs,
            resolve_interval,
            connect_timeout,
            max_connections: self.max_connections.into_inner(),
            upstream_mark: self.upstream_mark.into_inner(),
            worker_threads: self.worker_threads.map(Spanned::into_inner),
            control_socket: self.control_socket,
            approvers,
            audit,
            targets,
        })
    }
}
