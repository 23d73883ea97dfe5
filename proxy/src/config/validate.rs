//! From the raw config to a [`Config`]: every value checked once, section by
//! section (daemon settings, `[audit]`, each `[[target]]`), each error naming
//! the file, line and key.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    ops::Range,
    time::Duration,
};

use ipnet::IpNet;
use toml::Spanned;

use super::{
    check_listen_port, is_dns_name,
    raw::{line_col, RawAudit, RawConfig, RawCredential, RawNotify, RawTarget},
    AccessPolicy, Approver, AuditConfig, AutoApprove, Config, ConfigError, Credential, HostSpec,
    Inspect, Limit, MetricsAddr, Mode, Notify, NotifyFormat, NotifyUrl, Target, UnprivilegedPorts,
    MAX_CONNECTIONS_LIMIT, NOTIFY_EVENTS,
};

/// Validates a parsed config for a host where `unprivileged` ports may be
/// bound by anyone; `text` and `file` locate errors.
pub(super) fn validate(
    raw: RawConfig,
    text: &str,
    file: &str,
    unprivileged: &UnprivilegedPorts,
) -> Result<Config, ConfigError> {
    let errors = Errors { text, file };
    listen_port(&errors, &raw.listen_port, unprivileged)?;
    if !(1..=MAX_CONNECTIONS_LIMIT).contains(raw.max_connections.get_ref()) {
        return Err(errors.at(
            &raw.max_connections,
            "max_connections",
            format!("must be from 1 to {MAX_CONNECTIONS_LIMIT}"),
        ));
    }
    if !(1..=proxy_common::MAX_CONNECTIONS).contains(raw.max_records_per_uid.get_ref()) {
        return Err(errors.at(
            &raw.max_records_per_uid,
            "max_records_per_uid",
            format!("must be from 1 to {}", proxy_common::MAX_CONNECTIONS),
        ));
    }
    if *raw.upstream_mark.get_ref() == 0 {
        return Err(errors.at(
            &raw.upstream_mark,
            "upstream_mark",
            "must not be 0 (0 means no mark)",
        ));
    }
    let resolve_interval = errors.duration(&raw.resolve_interval, "resolve_interval")?;
    let connect_timeout = errors.duration(&raw.connect_timeout, "connect_timeout")?;
    let defaults = TargetDefaults {
        max_grant: errors.duration(&raw.max_grant, "max_grant")?,
        limits: match &raw.limits {
            Some(l) => errors.limit(l, "limits")?,
            None => Limit::default(),
        },
        listen_port: *raw.listen_port.get_ref(),
    };
    if let Some(threads) = &raw.worker_threads {
        if !(1..=256).contains(threads.get_ref()) {
            return Err(errors.at(threads, "worker_threads", "must be from 1 to 256"));
        }
    }
    let approvers = errors.principals(&raw.approvers, "approvers")?;
    let audit = audit(&errors, &raw.audit)?;
    let targets = targets(&errors, raw.targets, &defaults)?;
    let notify = notify(&errors, &raw.notify)?;
    let metrics = raw
        .metrics
        .as_ref()
        .map(|m| metrics_addr(m.get_ref()).map_err(|e| errors.at(m, "metrics", e)))
        .transpose()?;
    Ok(Config {
        source: file.to_owned(),
        listen_port: raw.listen_port.into_inner(),
        cgroup: raw.cgroup,
        state_dir: raw.state_dir,
        bpffs: raw.bpffs,
        resolve_interval,
        connect_timeout,
        max_connections: raw.max_connections.into_inner(),
        max_records_per_uid: raw.max_records_per_uid.into_inner(),
        upstream_mark: raw.upstream_mark.into_inner(),
        worker_threads: raw.worker_threads.map(Spanned::into_inner),
        control_socket: raw.control_socket,
        approvers,
        audit,
        targets,
        notify,
        metrics,
    })
}

/// `metrics`: `127.0.0.1:9971`, `[::1]:9971`, or `unix:/run/jitproxy/metrics.sock`.
/// Only loopback: the counters say which targets exist and how busy they are.
fn metrics_addr(value: &str) -> Result<MetricsAddr, String> {
    if let Some(path) = value.strip_prefix("unix:") {
        let path = std::path::PathBuf::from(path);
        if !path.is_absolute() {
            return Err(format!("`{value}`: the socket path must be absolute"));
        }
        return Ok(MetricsAddr::Unix(path));
    }
    let addr: std::net::SocketAddr = value.parse().map_err(|_| {
        format!("`{value}` is neither ADDRESS:PORT (e.g. \"127.0.0.1:9971\") nor unix:PATH")
    })?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "`{value}` is not a loopback address; use 127.0.0.1 or [::1] (or unix:PATH) and put a reverse proxy in front to expose it"
        ));
    }
    Ok(MetricsAddr::Tcp(addr))
}

/// Every `[[notify]]` webhook.
fn notify(errors: &Errors<'_>, raw: &[Spanned<RawNotify>]) -> Result<Vec<Notify>, ConfigError> {
    let mut names = HashSet::new();
    raw.iter()
        .enumerate()
        .map(|(i, spanned)| {
            let n = spanned.get_ref();
            let key = |k: &str| format!("notify[{i}].{k}");
            let name = n.name.get_ref();
            if !is_name(name) {
                return Err(errors.at(
                    &n.name,
                    key("name"),
                    format!("`{name}` is not a valid name; use letters, digits, '-', '_' or '.'"),
                ));
            }
            if !names.insert(name.clone()) {
                return Err(errors.at(&n.name, key("name"), format!("duplicate notify name `{name}`")));
            }
            let url = match (&n.url, &n.url_file) {
                (Some(url), None) => {
                    check_webhook_url(url.get_ref()).map_err(|m| errors.at(url, key("url"), m))?;
                    NotifyUrl::Inline(url.get_ref().clone())
                }
                (None, Some(path)) if path.get_ref().is_absolute() => {
                    NotifyUrl::File(path.get_ref().clone())
                }
                (None, Some(path)) => {
                    return Err(errors.at(path, key("url_file"), "must be an absolute path"))
                }
                _ => {
                    return Err(errors.at(
                        spanned,
                        key("url"),
                        "give exactly one of `url` and `url_file` (a root-only file holding the URL, for a URL that is a secret)",
                    ))
                }
            };
            let format = match n.format.as_ref().map(|f| f.get_ref().as_str()) {
                None | Some("json") => NotifyFormat::Json,
                Some("slack") => NotifyFormat::Slack,
                Some(other) => {
                    return Err(errors.at(
                        n.format.as_ref().unwrap_or(&n.name),
                        key("format"),
                        format!("`{other}` is not a format; use \"slack\" or \"json\""),
                    ))
                }
            };
            let mut events = Vec::new();
            for (j, event) in n.events.iter().enumerate() {
                if !NOTIFY_EVENTS.contains(&event.get_ref().as_str()) {
                    return Err(errors.at(
                        event,
                        format!("notify[{i}].events[{j}]"),
                        format!("`{}` is not an event; use one of {}", event.get_ref(), NOTIFY_EVENTS.join(", ")),
                    ));
                }
                events.push(event.get_ref().clone());
            }
            Ok(Notify {
                name: name.clone(),
                url,
                format,
                events,
            })
        })
        .collect()
}

/// A webhook URL: `http://` or `https://`, a host, nothing that could
/// smuggle another request. Also checked when read from a `url_file`.
pub fn check_webhook_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or("must start with http:// or https://")?;
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return Err("needs a host (and no user:password@)".to_owned());
    }
    if url.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err("must not hold spaces or control characters".to_owned());
    }
    Ok(())
}

/// Target and webhook names: letters, digits, `-`, `_`, `.`.
fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// `listen_port`: a port, and one that no unprivileged user can bind while
/// the daemon is down (the kernel keeps redirecting to it).
fn listen_port(
    errors: &Errors<'_>,
    port: &Spanned<u16>,
    unprivileged: &UnprivilegedPorts,
) -> Result<(), ConfigError> {
    if *port.get_ref() == 0 {
        return Err(errors.at(port, "listen_port", "must be a port from 1 to 65535"));
    }
    let Err(exposed) = check_listen_port(*port.get_ref(), unprivileged.start) else {
        return Ok(());
    };
    let mut message = exposed.message(*port.get_ref());
    if port.span().is_empty() {
        message.insert_str(0, "not set, and its default: ");
    }
    if let Some(why) = &unprivileged.assumed {
        message.push_str(&format!(
            " (note: {why}; assumed {}, the kernel's default)",
            unprivileged.start
        ));
    }
    Err(errors.at(port, "listen_port", message))
}

/// The `[audit]` table.
fn audit(errors: &Errors<'_>, raw: &RawAudit) -> Result<AuditConfig, ConfigError> {
    let rotate_bytes = match &raw.rotate_bytes {
        Some(b) if *b.get_ref() < 4096 => {
            return Err(errors.at(b, "audit.rotate_bytes", "must be at least 4096"))
        }
        Some(b) => *b.get_ref(),
        None => 64 << 20,
    };
    let retention = match &raw.retention {
        Some(d) => errors.duration(d, "audit.retention")?,
        None => Duration::from_secs(90 * 24 * 3600),
    };
    let checkpoint_interval = match &raw.checkpoint_interval {
        Some(d) => errors.duration(d, "audit.checkpoint_interval")?,
        None => Duration::from_secs(60),
    };
    let auditors = errors.principals(&raw.auditors, "audit.auditors")?;
    let syslog = match &raw.syslog {
        Some(addr) if is_host_port(addr.get_ref()) => Some(addr.get_ref().clone()),
        Some(addr) => {
            return Err(errors.at(
                addr,
                "audit.syslog",
                format!("`{}` is not HOST:PORT", addr.get_ref()),
            ))
        }
        None => None,
    };
    Ok(AuditConfig {
        dir: raw.dir.clone(),
        rotate_bytes,
        retention,
        checkpoint_interval,
        auditors,
        syslog,
    })
}

/// `host:port` with a non-empty host and a port from 1 to 65535.
fn is_host_port(addr: &str) -> bool {
    addr.rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
}

/// What a target takes from the top level unless it says otherwise.
struct TargetDefaults {
    max_grant: Duration,
    limits: Limit,
    listen_port: u16,
}

/// Every `[[target]]`, in order.
fn targets(
    errors: &Errors<'_>,
    raw: Vec<RawTarget>,
    defaults: &TargetDefaults,
) -> Result<Vec<Target>, ConfigError> {
    let mut seen = Seen::default();
    raw.iter()
        .enumerate()
        .map(|(i, raw)| target(errors, i, raw, defaults, &mut seen))
        .collect()
}

/// What earlier targets took: names must be unique, and a literal address
/// and port may be in one target only.
#[derive(Default)]
struct Seen {
    names: HashSet<String>,
    literal: HashMap<(IpNet, u16), String>,
}

/// One `[[target]]` (index `i`).
fn target(
    errors: &Errors<'_>,
    i: usize,
    raw: &RawTarget,
    defaults: &TargetDefaults,
    seen: &mut Seen,
) -> Result<Target, ConfigError> {
    let name = raw.name.get_ref();
    if !is_name(name) {
        return Err(errors.at(
            &raw.name,
            format!("target[{i}].name"),
            format!("`{name}` is not a valid target name; use letters, digits, '-', '_' or '.'"),
        ));
    }
    if !seen.names.insert(name.clone()) {
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
            if covers_listener(&net) && ports.contains(&defaults.listen_port) {
                return Err(errors.at(host, &key, format!(
                    "covers the proxy's own listener (127.0.0.1 or [::1] port {}); change listen_port or the target",
                    defaults.listen_port
                )));
            }
            for port in &ports {
                if let Some(other) = seen.literal.insert((net, *port), name.clone()) {
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
    let max_grant = match &raw.max_grant {
        Some(d) => errors.duration(d, &format!("target[{i}].max_grant"))?,
        None => defaults.max_grant,
    };
    let limits = match &raw.limits {
        Some(l) => errors.limit(l, &format!("target[{i}].limits"))?,
        None => defaults.limits,
    };
    let access = access_policy(errors, i, raw, max_grant)?;
    let mode = mode(errors, i, raw, &hosts)?;
    Ok(Target {
        name: name.clone(),
        hosts,
        ports,
        max_grant,
        limits,
        access,
        retired: false,
        mode,
    })
}

/// A target's `mode` and, for inspect, its TLS names, upstream TLS, request
/// limit and credential. The inspect-only keys are refused on a passthrough
/// target rather than ignored.
fn mode(
    errors: &Errors<'_>,
    i: usize,
    raw: &RawTarget,
    hosts: &[HostSpec],
) -> Result<Mode, ConfigError> {
    let key = |k: &str| format!("target[{i}].{k}");
    let inspect = match &raw.mode {
        None => false,
        Some(m) => match m.get_ref().as_str() {
            "passthrough" => false,
            "inspect" => true,
            other => {
                return Err(errors.at(
                    m,
                    key("mode"),
                    format!("`{other}` is not a mode; use \"passthrough\" or \"inspect\""),
                ))
            }
        },
    };
    if !inspect {
        let inspect_only: [(&str, Option<Range<usize>>); 7] = [
            ("server_names", raw.server_names.as_ref().map(Spanned::span)),
            ("upstream_tls", raw.upstream_tls.as_ref().map(Spanned::span)),
            ("upstream_ca", raw.upstream_ca.as_ref().map(Spanned::span)),
            (
                "requests_per_second",
                raw.requests_per_second.as_ref().map(Spanned::span),
            ),
            (
                "requests_burst",
                raw.requests_burst.as_ref().map(Spanned::span),
            ),
            ("log_query", raw.log_query.as_ref().map(Spanned::span)),
            ("credential", raw.credential.as_ref().map(Spanned::span)),
        ];
        if let Some((k, Some(span))) = inspect_only.into_iter().find(|(_, s)| s.is_some()) {
            return Err(errors.at(
                &Spanned::new(span, ()),
                key(k),
                "applies to inspect targets only; add `mode = \"inspect\"` or remove it",
            ));
        }
        return Ok(Mode::Passthrough);
    }

    let server_names = match &raw.server_names {
        Some(names) => {
            let mut out = Vec::new();
            for (j, name) in names.get_ref().iter().enumerate() {
                let text = name.get_ref().trim_end_matches('.').to_ascii_lowercase();
                if !is_server_name(&text) {
                    return Err(errors.at(
                        name,
                        key(&format!("server_names[{j}]")),
                        format!(
                            "`{}` is not a DNS name or address; write the name clients connect to, e.g. \"api.example.com\"",
                            name.get_ref()
                        ),
                    ));
                }
                if !out.contains(&text) {
                    out.push(text);
                }
            }
            out
        }
        None => hosts
            .iter()
            .filter_map(|h| match h {
                HostSpec::Name(name) => Some(name.trim_end_matches('.').to_ascii_lowercase()),
                HostSpec::Net(net) if net.prefix_len() == net.max_prefix_len() => {
                    Some(net.addr().to_string())
                }
                HostSpec::Net(_) => None,
            })
            .collect(),
    };
    if server_names.is_empty() {
        let at = raw
            .server_names
            .as_ref()
            .map_or(raw.hosts.span(), Spanned::span);
        return Err(errors.at(
            &Spanned::new(at, ()),
            key("server_names"),
            "an inspect target needs the names its clients use; list them in `server_names`",
        ));
    }
    let upstream_tls = raw.upstream_tls.as_ref().is_none_or(|t| *t.get_ref());
    if let (false, Some(ca)) = (upstream_tls, &raw.upstream_ca) {
        return Err(errors.at(
            ca,
            key("upstream_ca"),
            "is for upstream TLS, which `upstream_tls = false` turns off; remove one of them",
        ));
    }
    let requests_per_second = match &raw.requests_per_second {
        Some(r) if !(r.get_ref().is_finite() && *r.get_ref() > 0.0) => {
            return Err(errors.at(
                r,
                key("requests_per_second"),
                "must be a number greater than 0",
            ))
        }
        Some(r) => *r.get_ref(),
        None => DEFAULT_REQUESTS_PER_SECOND,
    };
    let requests_burst = match &raw.requests_burst {
        Some(b) if *b.get_ref() == 0 => {
            return Err(errors.at(b, key("requests_burst"), "must be at least 1"))
        }
        Some(b) => *b.get_ref(),
        None => DEFAULT_REQUESTS_BURST,
    };
    let credential = raw
        .credential
        .as_ref()
        .map(|c| credential(errors, i, c))
        .transpose()?;
    Ok(Mode::Inspect(Box::new(Inspect {
        server_names,
        upstream_tls,
        upstream_ca: raw.upstream_ca.as_ref().map(|c| c.get_ref().clone()),
        requests_per_second,
        requests_burst,
        log_query: raw.log_query.as_ref().is_some_and(|l| *l.get_ref()),
        credential,
    })))
}

/// Requests per second per (user, target) of an inspect target, and its
/// burst, unless the target says otherwise.
const DEFAULT_REQUESTS_PER_SECOND: f64 = 100.0;
const DEFAULT_REQUESTS_BURST: u32 = 200;

/// A `[target.credential]`.
fn credential(
    errors: &Errors<'_>,
    i: usize,
    raw: &Spanned<RawCredential>,
) -> Result<Credential, ConfigError> {
    let key = |k: &str| format!("target[{i}].credential.{k}");
    let c = raw.get_ref();
    let header = match &c.header {
        Some(h) if !is_header_name(h.get_ref()) => {
            return Err(errors.at(
                h,
                key("header"),
                format!(
                    "`{}` is not an HTTP header name; write e.g. \"Authorization\"",
                    h.get_ref()
                ),
            ))
        }
        Some(h) if is_hop_header(h.get_ref()) => {
            return Err(errors.at(
                h,
                key("header"),
                format!(
                    "`{}` is a connection header; a credential cannot go there",
                    h.get_ref()
                ),
            ))
        }
        Some(h) => Some(h.get_ref().to_ascii_lowercase()),
        None => None,
    };
    let value = match &c.value {
        Some(v) if v.get_ref().matches("{secret}").count() != 1 => return Err(errors.at(
            v,
            key("value"),
            "must hold `{secret}` exactly once, where the secret goes: e.g. \"Bearer {secret}\"",
        )),
        Some(v)
            if !v.get_ref().bytes().all(|b| (0x20..0x7f).contains(&b))
                || v.get_ref().replace("{secret}", "").contains(['{', '}'])
                || v.get_ref().trim() != v.get_ref() =>
        {
            return Err(errors.at(
                v,
                key("value"),
                "must be printable ASCII with no other braces and no space at either end",
            ))
        }
        Some(v) => v.get_ref().clone(),
        None => "{secret}".to_owned(),
    };
    let secret = match (&c.secret_file, &c.secret_env) {
        (Some(file), None) if file.get_ref().is_absolute() => {
            super::SecretRef::File(file.get_ref().clone())
        }
        (Some(file), None) => {
            return Err(errors.at(file, key("secret_file"), "must be an absolute path"))
        }
        (None, Some(env)) if !env.get_ref().is_empty() && !env.get_ref().contains('=') => {
            super::SecretRef::Env(env.get_ref().clone())
        }
        (None, Some(env)) => {
            return Err(errors.at(
                env,
                key("secret_env"),
                "must be an environment variable's name",
            ))
        }
        (Some(file), Some(_)) => {
            return Err(errors.at(
                file,
                key("secret_file"),
                "set one of `secret_file` and `secret_env`, not both",
            ))
        }
        (None, None) => return Err(errors.at(
            raw,
            key("secret_file"),
            "a credential needs its secret: set `secret_file` (a root-only file) or `secret_env`",
        )),
    };
    if header.is_none()
        && c.placeholder_query.is_empty()
        && c.placeholder_headers.is_empty()
        && c.value.is_some()
    {
        return Err(errors.at(
            raw,
            key("header"),
            "`value` is the header's value; set `header` too (e.g. \"Authorization\")",
        ));
    }
    let mut placeholder_query = Vec::new();
    for (j, q) in c.placeholder_query.iter().enumerate() {
        if q.get_ref().is_empty()
            || !q
                .get_ref()
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"&=#?%".contains(&b))
        {
            return Err(errors.at(
                q,
                key(&format!("placeholder_query[{j}]")),
                format!("`{}` is not a query parameter name", q.get_ref()),
            ));
        }
        placeholder_query.push(q.get_ref().clone());
    }
    let mut placeholder_headers = Vec::new();
    for (j, h) in c.placeholder_headers.iter().enumerate() {
        if !is_header_name(h.get_ref()) || is_hop_header(h.get_ref()) {
            return Err(errors.at(
                h,
                key(&format!("placeholder_headers[{j}]")),
                format!("`{}` is not a header a placeholder can go in", h.get_ref()),
            ));
        }
        placeholder_headers.push(h.get_ref().to_ascii_lowercase());
    }
    Ok(Credential {
        header,
        value,
        secret,
        placeholder_query,
        placeholder_headers,
    })
}

/// A DNS name or an IP address.
fn is_server_name(name: &str) -> bool {
    name.parse::<IpAddr>().is_ok() || is_dns_name(name)
}

/// An HTTP field name (RFC 9110 token).
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Headers that belong to one hop, which proxies remove.
fn is_hop_header(name: &str) -> bool {
    const HOP: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "host",
        "content-length",
    ];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// A target's request, approval and break-glass keys.
fn access_policy(
    errors: &Errors<'_>,
    i: usize,
    raw: &RawTarget,
    max_grant: Duration,
) -> Result<AccessPolicy, ConfigError> {
    let key = |k: &str| format!("target[{i}].{k}");
    let defaults = AccessPolicy::default();
    let at_most_max_grant = |d: &Spanned<String>, k: &str| -> Result<Duration, ConfigError> {
        let duration = errors.duration(d, &key(k))?;
        if duration > max_grant {
            return Err(errors.at(
                d,
                key(k),
                format!(
                    "is longer than the target's max_grant ({})",
                    humantime::format_duration(max_grant)
                ),
            ));
        }
        Ok(duration)
    };
    let requesters = raw
        .requesters
        .as_ref()
        .map(|list| errors.principals(list, &key("requesters")))
        .transpose()?;
    let approvers = raw
        .approvers
        .as_ref()
        .map(|list| errors.principals(list, &key("approvers")))
        .transpose()?;
    let approvals = match &raw.approvals {
        Some(n) if !(1..=10).contains(n.get_ref()) => {
            return Err(errors.at(n, key("approvals"), "must be from 1 to 10"))
        }
        Some(n) => *n.get_ref(),
        None => defaults.approvals,
    };
    let request_ttl = match &raw.request_ttl {
        Some(d) => errors.duration(d, &key("request_ttl"))?,
        None => defaults.request_ttl,
    };
    let mut auto_approve = Vec::new();
    for (j, rule) in raw.auto_approve.iter().enumerate() {
        let r = rule.get_ref();
        let rule_key = format!("auto_approve[{j}]");
        if r.who.is_empty() {
            return Err(errors.at(
                rule,
                key(&format!("{rule_key}.who")),
                "needs at least one `user:NAME` or `group:NAME`",
            ));
        }
        auto_approve.push(AutoApprove {
            who: errors.principals(&r.who, &key(&format!("{rule_key}.who")))?,
            max: at_most_max_grant(&r.max, &format!("{rule_key}.max"))?,
        });
    }
    let break_glass = errors.principals(&raw.break_glass, &key("break_glass"))?;
    let break_glass_max = match &raw.break_glass_max {
        Some(d) => at_most_max_grant(d, "break_glass_max")?,
        None => defaults.break_glass_max.min(max_grant),
    };
    Ok(AccessPolicy {
        requesters,
        approvers,
        approvals,
        request_ttl,
        auto_approve,
        break_glass,
        break_glass_max,
    })
}

/// Whether `net` covers one of the proxy's own listener addresses
/// (127.0.0.1 or ::1; IPv4-mapped ranges are already IPv4 here).
fn covers_listener(net: &IpNet) -> bool {
    net.contains(&IpAddr::from([127, 0, 0, 1]))
        || net.contains(&IpAddr::from(std::net::Ipv6Addr::LOCALHOST))
}

/// Builds errors located in one config text, and the value checks that
/// several sections share.
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

    /// A duration greater than zero (`30s`, `5m`).
    fn duration(&self, value: &Spanned<String>, key: &str) -> Result<Duration, ConfigError> {
        let duration = humantime::parse_duration(value.get_ref()).map_err(|e| {
            self.at(
                value,
                key,
                format!(
                    "`{}` is not a duration ({e}); write e.g. \"30s\" or \"5m\"",
                    value.get_ref()
                ),
            )
        })?;
        if duration.is_zero() {
            return Err(self.at(value, key, "must be greater than zero"));
        }
        Ok(duration)
    }

    /// `user:NAME` / `group:NAME` entries (approvers, auditors).
    fn principals(
        &self,
        list: &[Spanned<String>],
        key: &str,
    ) -> Result<Vec<Approver>, ConfigError> {
        list.iter()
            .enumerate()
            .map(|(i, a)| match a.get_ref().split_once(':') {
                Some(("user", name)) if !name.is_empty() => Ok(Approver::User(name.to_owned())),
                Some(("group", name)) if !name.is_empty() => Ok(Approver::Group(name.to_owned())),
                _ => Err(self.at(
                    a,
                    format!("{key}[{i}]"),
                    format!("`{}` must be `user:NAME` or `group:NAME`", a.get_ref()),
                )),
            })
            .collect()
    }

    fn limit(&self, limit: &Spanned<Limit>, key: &str) -> Result<Limit, ConfigError> {
        let l = limit.get_ref();
        if !(l.connections_per_second.is_finite() && l.connections_per_second > 0.0) {
            return Err(self.at(
                limit,
                format!("{key}.connections_per_second"),
                "must be a number greater than 0",
            ));
        }
        if l.burst == 0 {
            return Err(self.at(limit, format!("{key}.burst"), "must be at least 1"));
        }
        if l.max_concurrent == 0 {
            return Err(self.at(limit, format!("{key}.max_concurrent"), "must be at least 1"));
        }
        Ok(*l)
    }
}
