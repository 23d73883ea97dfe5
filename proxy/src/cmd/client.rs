//! The client commands (grant, revoke, grants, drop, why, status, audit):
//! parse human input, call the control API, print tables for people and
//! JSON for scripts. Times are local in tables and RFC 3339 in JSON.
//! Everything the daemon sends is escaped ([`Escaped`]) in what people read,
//! and exact in JSON.

use std::{path::Path, time::Duration};

use jiff::{civil, tz::TimeZone, Timestamp, Zoned};

use super::{
    escape::Escaped,
    render::{print_json, print_table, print_table_opt},
    CmdError, Exit,
};
use crate::{
    access::GrantState,
    audit::{query::Filter, EventKind, Record},
    control::{
        client::Client,
        proto::{
            AuditRecords, AuditSummary, DropRequest, GrantList, GrantRequest, GrantView,
            RevokeRequest, StatusView, WhyView,
        },
    },
    time::local_minute as local,
};

/// Runs a client command on a small runtime of its own.
pub(super) fn block_on(
    command: impl std::future::Future<Output = Result<(), CmdError>>,
) -> Result<Exit, CmdError> {
    block_on_exit(async { command.await.map(|()| Exit::Success) })
}

/// [`block_on`] for a command that picks its own exit code.
pub(super) fn block_on_exit(
    command: impl std::future::Future<Output = Result<Exit, CmdError>>,
) -> Result<Exit, CmdError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CmdError::failure(format!("cannot start the async runtime: {e}")))?
        .block_on(command)
}

/// The window of a new grant, as typed on the command line.
#[derive(Debug, Clone, Default)]
pub(super) struct WindowArgs {
    pub duration: Option<String>,
    pub until: Option<String>,
    pub from: Option<String>,
}

pub(super) async fn grant(
    socket: &Path,
    who: String,
    target: String,
    window: WindowArgs,
    reason: String,
    allow: Vec<String>,
    json: bool,
) -> Result<(), CmdError> {
    for rule in &allow {
        if let Err(e) = rule.parse::<crate::access::scope::Rule>() {
            return Err(CmdError::usage(e.to_string()));
        }
    }
    let tz = TimeZone::system();
    let now = Zoned::now().with_time_zone(tz.clone());
    let starts_at = window
        .from
        .as_deref()
        .map(|s| parse_time(s, &now))
        .transpose()?;
    let (ends_at, duration_secs) = match (&window.duration, &window.until) {
        (Some(d), None) => (None, Some(parse_duration(d)?.as_secs())),
        (None, Some(u)) => (Some(parse_time(u, &now)?), None),
        _ => {
            return Err(CmdError::usage(
                "give the window with exactly one of --for DURATION (e.g. 2h) and --until TIME (e.g. 18:00)".to_owned(),
            ))
        }
    };
    let request = GrantRequest {
        who,
        target,
        starts_at,
        ends_at,
        duration_secs,
        reason,
        allow,
    };
    let grant: GrantView = Client::new(socket).post("/v1/grants", &request).await?;
    if json {
        print_json(&grant);
    } else {
        println!(
            "granted #{}: {} on {} from {} until {} ({})",
            grant.id,
            Escaped(&grant.who),
            Escaped(&grant.target),
            local(grant.starts_at),
            local(grant.ends_at),
            Escaped(&grant.reason)
        );
        if !grant.allow.is_empty() {
            let rules: Vec<String> = grant.allow.iter().map(|r| Escaped(r).to_string()).collect();
            println!("  only: {}", rules.join(", "));
        }
    }
    Ok(())
}

pub(super) async fn revoke(
    socket: &Path,
    id: Option<i64>,
    who: Option<String>,
    target: Option<String>,
    json: bool,
) -> Result<(), CmdError> {
    let list: GrantList = Client::new(socket)
        .post("/v1/revoke", &RevokeRequest { id, who, target })
        .await?;
    report_ended(&list, "revoked", json);
    Ok(())
}

pub(super) async fn drop_access(
    socket: &Path,
    target: Option<String>,
    json: bool,
) -> Result<(), CmdError> {
    let list: GrantList = Client::new(socket)
        .post("/v1/drop", &DropRequest { target })
        .await?;
    report_ended(&list, "dropped", json);
    Ok(())
}

fn report_ended(list: &GrantList, verb: &str, json: bool) {
    if json {
        print_json(list);
    } else if list.grants.is_empty() {
        println!("no open grant matched; nothing {verb}");
    } else {
        for g in &list.grants {
            println!(
                "{verb} #{}: {} on {} ({}); its connections are closed",
                g.id,
                Escaped(&g.who),
                Escaped(&g.target),
                Escaped(&g.reason)
            );
        }
    }
}

pub(super) async fn grants(socket: &Path, all: bool, json: bool) -> Result<(), CmdError> {
    let path = if all {
        "/v1/grants?all=true"
    } else {
        "/v1/grants"
    };
    let list: GrantList = Client::new(socket).get(path).await?;
    if json {
        for g in &list.grants {
            println!("{}", serde_json::to_string(g).unwrap_or_default());
        }
        return Ok(());
    }
    if list.grants.is_empty() {
        println!(
            "no grants{}",
            if all {
                ""
            } else {
                " for you (use --all as an approver to see everyone's)"
            }
        );
        return Ok(());
    }
    let now = Timestamp::now();
    let rows: Vec<[String; 7]> = list
        .grants
        .iter()
        .map(|g| {
            [
                format!("#{}", g.id),
                g.who.clone(),
                g.target.clone(),
                format!("{} → {}", local(g.starts_at), local(g.ends_at)),
                time_left(g, now),
                g.reason.clone(),
                g.granted_by
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("uid {}", g.granted_by.uid)),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "WHO",
            "TARGET",
            "WINDOW",
            "LEFT",
            "REASON",
            "GRANTED BY",
        ],
        &rows,
    );
    Ok(())
}

pub(super) async fn why(socket: &Path, json: bool) -> Result<(), CmdError> {
    let why: WhyView = Client::new(socket).get("/v1/why").await?;
    if json {
        print_json(&why);
        return Ok(());
    }
    let Some(r) = &why.last_refusal else {
        println!("jitproxy has not refused any of your connections since it started");
        return Ok(());
    };
    println!(
        "{}: {} to {} ({}) was refused: {}",
        local(r.at),
        Escaped(&r.process),
        Escaped(&r.destination),
        Escaped(&r.target),
        Escaped(&r.reason)
    );
    let who = r.user.clone().unwrap_or_else(|| r.uid.to_string());
    match r.code.as_str() {
        "no_grant" => {
            let approvers = why.approvers.join(", ");
            if why.can_request {
                println!("to get access, ask for it:");
                println!(
                    "  jitproxy request {} --for 1h --reason \"<ticket or why>\"",
                    Escaped(&r.target)
                );
                println!("who can approve it: {}", Escaped(&approvers));
            } else {
                println!(
                    "you may not request access to {}; an approver ({}) can grant it:",
                    Escaped(&r.target),
                    Escaped(&approvers)
                );
                println!(
                    "  jitproxy grant {} {} --for 1h --reason \"<ticket or why>\"",
                    Escaped(who),
                    Escaped(&r.target)
                );
            }
            if why.can_break_glass {
                println!(
                    "in an emergency: jitproxy break-glass {} --reason \"<incident>\" (flagged, and approvers are told)",
                    Escaped(&r.target)
                );
            }
        }
        "rate_limited" | "too_many_connections" => {
            println!("you have access, but opened connections too fast or too many at once; slow down or reuse connections");
        }
        _ => {}
    }
    Ok(())
}

pub(super) async fn status(socket: &Path, json: bool) -> Result<(), CmdError> {
    let s: StatusView = Client::new(socket).get("/v1/status").await?;
    if json {
        print_json(&s);
        return Ok(());
    }
    println!(
        "jitproxy {} running (pid {}) since {}",
        Escaped(&s.version),
        s.pid,
        local(s.started_at)
    );
    println!(
        "watching cgroup {}; programs pinned at {}",
        Escaped(&s.cgroup),
        Escaped(&s.pins)
    );
    println!(
        "proxy listening on 127.0.0.1:{0} and [::1]:{0}; {1} open grant(s)",
        s.listen_port, s.open_grants
    );
    println!("\ntargets:");
    for t in &s.targets {
        println!(
            "  {}  hosts: {}",
            Escaped(&t.name),
            Escaped(t.hosts.join(", "))
        );
        if t.addresses.is_empty() {
            println!("      (no resolved addresses: not watched)");
        }
        for a in &t.addresses {
            println!("      {}", Escaped(a));
        }
    }
    match &s.audit.failure {
        None => println!(
            "audit log: {} ({} records written{})",
            Escaped(&s.audit.dir),
            s.audit.records_written,
            if s.audit.syslog_dropped > 0 {
                format!(
                    "; {} not delivered to the syslog collector",
                    s.audit.syslog_dropped
                )
            } else {
                String::new()
            }
        ),
        Some(why) => println!(
            "AUDIT LOG FAILING: {}\n  connections to targets are refused until it can be written",
            Escaped(why)
        ),
    }
    if !s.notify.webhooks.is_empty() {
        println!(
            "webhooks: {} ({} notice(s) not delivered yet)",
            Escaped(s.notify.webhooks.join(", ")),
            s.notify.undelivered
        );
    }
    let k = &s.kernel;
    println!(
        "kernel: {} redirected, {} UDP refused, {} MPTCP refused, {} refused with the record map full, \
         {} refused at the per-uid cap ({}), {} to an unspecified address, {} exempt (the proxy's own)",
        k.redirected,
        k.udp_refused,
        k.mptcp_refused,
        k.map_full,
        k.uid_full,
        k.max_records_per_uid,
        k.unspecified,
        k.exempt
    );
    println!(
        "records: {} connection(s), {} tuple(s){}",
        k.records,
        k.tuples,
        k.records_by_uid
            .iter()
            .map(|(uid, n)| format!("; uid {uid}: {n}"))
            .collect::<String>()
    );
    println!("\nlive connections:");
    if s.live.is_empty() {
        println!("  none");
    }
    for l in &s.live {
        println!(
            "  {} (uid {}) on {}: {}",
            Escaped(l.user.as_deref().unwrap_or("?")),
            l.uid,
            Escaped(&l.target),
            l.connections
        );
    }
    Ok(())
}

/// `2h`, `90m`, `1h30m`.
pub(super) fn parse_duration(s: &str) -> Result<Duration, CmdError> {
    let d = humantime::parse_duration(s).map_err(|e| {
        CmdError::usage(format!(
            "`{s}` is not a duration ({e}); write e.g. 30m, 2h or 1h30m"
        ))
    })?;
    if d.is_zero() {
        return Err(CmdError::usage(
            "the duration must be longer than zero".to_owned(),
        ));
    }
    Ok(d)
}

/// `18:00` (today, local), `2026-11-28 18:00` (local), or RFC 3339.
fn parse_time(s: &str, now: &Zoned) -> Result<Timestamp, CmdError> {
    if let Ok(ts) = s.parse::<Timestamp>() {
        return Ok(ts);
    }
    let usage = || {
        CmdError::usage(format!(
            "`{s}` is not a time; write 18:00 (today), \"2026-11-28 18:00\" (local) or an RFC 3339 time"
        ))
    };
    let civil = if let Ok(dt) = s.parse::<civil::DateTime>() {
        dt
    } else {
        let time: civil::Time = s.parse().map_err(|_| usage())?;
        let dt = now.date().to_datetime(time);
        if dt < now.datetime() {
            return Err(CmdError::usage(format!(
                "{s} today has already passed; give a date, e.g. \"{} {s}\"",
                now.date()
                    .tomorrow()
                    .map_or_else(|_| now.date().to_string(), |d| d.to_string())
            )));
        }
        dt
    };
    civil
        .to_zoned(now.time_zone().clone())
        .map(|z| z.timestamp())
        .map_err(|_| usage())
}

fn time_left(g: &GrantView, now: Timestamp) -> String {
    match g.state {
        GrantState::Active => {
            let secs = g.ends_at.as_second().saturating_sub(now.as_second()).max(0);
            let secs = u64::try_from(secs).unwrap_or(0);
            humantime::format_duration(Duration::from_secs(secs)).to_string()
        }
        other => other.to_string(),
    }
}

/// Filters of `jitproxy audit`, as typed.
#[derive(Debug, Clone, Default)]
pub(super) struct AuditArgs {
    pub user: Option<String>,
    pub target: Option<String>,
    pub grant: Option<i64>,
    pub since: Option<String>,
    pub until: Option<String>,
}

impl AuditArgs {
    fn filter(&self) -> Result<Filter, CmdError> {
        let now = Zoned::now();
        let since = self
            .since
            .as_deref()
            .map(|s| parse_since(s, &now))
            .transpose()?;
        let until = self
            .until
            .as_deref()
            .map(|s| parse_since(s, &now))
            .transpose()?;
        Ok(Filter {
            user: self.user.clone(),
            target: self.target.clone(),
            grant: self.grant,
            since,
            until,
            after_seq: None,
            limit: None,
        })
    }
}

/// `2h` (that long ago) or a time (as for --until).
fn parse_since(s: &str, now: &Zoned) -> Result<Timestamp, CmdError> {
    if let Ok(d) = humantime::parse_duration(s) {
        let back = jiff::SignedDuration::try_from(d).map_err(|e| CmdError::usage(e.to_string()))?;
        return now
            .timestamp()
            .checked_sub(back)
            .map_err(|e| CmdError::usage(format!("`{s}`: {e}")));
    }
    if let Ok(ts) = s.parse::<Timestamp>() {
        return Ok(ts);
    }
    let dt = s
        .parse::<civil::DateTime>()
        .or_else(|_| s.parse::<civil::Time>().map(|t| now.date().to_datetime(t)))
        .map_err(|_| {
            CmdError::usage(format!(
                "`{s}` is neither a duration (2h, 7d) nor a time (18:00, \"2026-11-28 09:00\")"
            ))
        })?;
    dt.to_zoned(now.time_zone().clone())
        .map(|z| z.timestamp())
        .map_err(|e| CmdError::usage(e.to_string()))
}

/// `jitproxy audit`: records as a table or JSON Lines; `--follow` keeps going.
pub(super) async fn audit(
    socket: &Path,
    args: AuditArgs,
    json: bool,
    follow: bool,
) -> Result<(), CmdError> {
    let client = Client::new(socket);
    let mut filter = args.filter()?;
    let mut header = !json;
    loop {
        let page: AuditRecords = client.post("/v1/audit/query", &filter).await?;
        if let Some(last) = page.records.last() {
            filter.after_seq = Some(last.seq);
        }
        if json {
            for r in &page.records {
                println!("{}", serde_json::to_string(r).unwrap_or_default());
            }
        } else if !page.records.is_empty() || header {
            let rows: Vec<[String; 7]> = page.records.iter().map(audit_row).collect();
            print_table_opt(
                &[
                    "TIME", "USER", "PROCESS", "TARGET", "EVENT", "OUTCOME", "BYTES",
                ],
                &rows,
                header,
            );
            header = false;
        }
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// An inspected request's line: `GET /v1/payments/7`, then its status, or
/// the refusal's code (`403 scope`), and the rule that let it through.
fn http_outcome(e: &crate::audit::Event) -> String {
    let detail = e.detail.as_ref();
    let field = |k: &str| {
        detail
            .and_then(|d| d.get(k))
            .and_then(|v| v.as_str())
            .unwrap_or("")
    };
    let mut out = format!("{} {}", field("method"), field("path"));
    if let Some(status) = detail
        .and_then(|d| d.get("status"))
        .and_then(serde_json::Value::as_u64)
    {
        out.push_str(&format!(" → {status}"));
    }
    if let Some(code) = &e.code {
        out.push_str(&format!(" {code}"));
    }
    let rule = field("rule");
    if !rule.is_empty() {
        out.push_str(&format!(" ({rule})"));
    }
    Escaped(&out).to_string()
}

fn audit_row(r: &Record) -> [String; 7] {
    let e = &r.event;
    let user = e.user.as_ref().map_or_else(String::new, |u| {
        let name = u.name.clone().unwrap_or_else(|| u.uid.to_string());
        match u.login_uid {
            Some(l) if l != u.uid => format!("{name} (login {l})"),
            _ => name,
        }
    });
    let process = e
        .process
        .as_ref()
        .map_or_else(String::new, |p| format!("{} ({})", p.comm, p.pid));
    let outcome = match e.kind {
        EventKind::ConnectionAllowed => format!("grant #{}", e.grant_id.unwrap_or_default()),
        EventKind::ConnectionClosed => {
            format!("ended by {}", e.ended_by.as_deref().unwrap_or("?"))
        }
        EventKind::RequestCreated
        | EventKind::RequestApproved
        | EventKind::RequestDenied
        | EventKind::RequestExpired
        | EventKind::BreakGlassUsed => request_outcome(e),
        EventKind::HttpAllowed
        | EventKind::HttpDenied
        | EventKind::HttpRateLimited
        | EventKind::HttpCompleted => http_outcome(e),
        _ => e
            .code
            .clone()
            .or_else(|| e.grant_id.map(|g| format!("grant #{g}")))
            .unwrap_or_default(),
    };
    let bytes = match (e.bytes_up, e.bytes_down) {
        (Some(up), Some(down)) => format!("{up}↑ {down}↓"),
        _ => String::new(),
    };
    [
        local(r.time),
        user,
        process,
        e.target.clone().unwrap_or_default(),
        e.kind.to_string(),
        outcome,
        bytes,
    ]
}

/// The OUTCOME cell of a request's record: which request, how far, and the
/// grant it led to.
fn request_outcome(e: &crate::audit::Event) -> String {
    let detail = e.detail.as_ref();
    let field = |k: &str| detail.and_then(|d| d.get(k));
    let mut out = format!(
        "request #{}",
        field("request_id")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0)
    );
    if e.kind == EventKind::RequestApproved {
        out.push_str(&format!(
            " ({} of {})",
            field("approvals")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0),
            field("needed")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0)
        ));
    }
    // Who decided: by name, else by uid (the requester is the USER column).
    let by = field("by").and_then(|b| match b.get("name").and_then(|n| n.as_str()) {
        Some(name) => Some(name.to_owned()),
        None => b.get("uid").map(|uid| format!("uid {uid}")),
    });
    if let Some(by) = by {
        if e.kind != EventKind::RequestCreated && e.kind != EventKind::BreakGlassUsed {
            out.push_str(&format!(" by {by}"));
        }
    }
    if let Some(g) = e.grant_id {
        out.push_str(&format!(" → grant #{g}"));
    }
    out
}

/// `jitproxy audit summary`.
pub(super) async fn audit_summary(
    socket: &Path,
    args: AuditArgs,
    json: bool,
) -> Result<(), CmdError> {
    let summary: AuditSummary = Client::new(socket)
        .post("/v1/audit/summary", &args.filter()?)
        .await?;
    if json {
        print_json(&summary);
        return Ok(());
    }
    if !summary.break_glass.is_empty() {
        println!("BREAK-GLASS USED:");
        let rows: Vec<[String; 5]> = summary
            .break_glass
            .iter()
            .map(|b| {
                [
                    local(b.time),
                    b.user.clone(),
                    b.target.clone(),
                    b.grant_id
                        .map_or_else(String::new, |g| format!("grant #{g}")),
                    b.reason.clone(),
                ]
            })
            .collect();
        print_table(&["TIME", "USER", "TARGET", "GRANT", "REASON"], &rows);
        println!();
    }
    let rows: Vec<[String; 11]> = summary
        .users
        .iter()
        .map(|u| {
            [
                u.user.clone(),
                u.break_glass.to_string(),
                u.requests.to_string(),
                u.grants.to_string(),
                u.connections.to_string(),
                u.denials.to_string(),
                u.http_requests.to_string(),
                u.http_refused.to_string(),
                u.bytes_up.to_string(),
                u.bytes_down.to_string(),
                u.targets.iter().cloned().collect::<Vec<_>>().join(", "),
            ]
        })
        .collect();
    print_table(
        &[
            "USER",
            "BREAK-GLASS",
            "REQUESTS",
            "GRANTS",
            "CONNECTIONS",
            "DENIALS",
            "HTTP",
            "HTTP REFUSED",
            "BYTES UP",
            "BYTES DOWN",
            "TARGETS",
        ],
        &rows,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noon() -> Zoned {
        "2026-11-28T12:00:00+00:00[UTC]".parse().unwrap()
    }

    #[test]
    fn times_parse_as_local_or_absolute() {
        let now = noon();
        assert_eq!(
            parse_time("18:00", &now).unwrap().to_string(),
            "2026-11-28T18:00:00Z"
        );
        assert_eq!(
            parse_time("2026-11-29 09:30", &now).unwrap().to_string(),
            "2026-11-29T09:30:00Z"
        );
        assert_eq!(
            parse_time("2026-11-29T09:30:00Z", &now)
                .unwrap()
                .to_string(),
            "2026-11-29T09:30:00Z"
        );
        assert!(
            matches!(parse_time("09:00", &now), Err(e) if e.to_string().contains("already passed"))
        );
        assert!(parse_time("tomorrow-ish", &now).is_err());
    }

    #[test]
    fn durations_are_humantime() {
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("2 fortnights").is_err());
    }
}
