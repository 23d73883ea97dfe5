//! The request commands: `request` (and `--wait`), `requests`, `approve`,
//! `deny`, `break-glass`. Tables and sentences for people (escaped), JSON
//! for scripts.

use std::{path::Path, time::Duration};

use super::{
    client::parse_duration,
    escape::Escaped,
    render::{print_json, print_table},
    CmdError, Exit,
};
use crate::{
    access::{RequestKind, RequestState},
    control::{
        client::Client,
        proto::{
            ApproveBody, BreakGlassBody, DenyBody, GrantList, GrantView, NewRequestBody,
            RequestList, RequestView,
        },
    },
    time::local_minute as local,
};

/// How often `request --wait` asks whether its request was decided.
const WAIT_POLL: Duration = Duration::from_secs(1);

pub(super) async fn request(
    socket: &Path,
    target: String,
    duration: &str,
    reason: String,
    wait: bool,
    json: bool,
) -> Result<Exit, CmdError> {
    let body = NewRequestBody {
        target,
        duration_secs: parse_duration(duration)?.as_secs(),
        reason,
    };
    let client = Client::new(socket);
    let mut view: RequestView = client.post("/v1/requests", &body).await?;
    if !json {
        print_created(&view);
    }
    if wait && view.state == RequestState::Pending {
        if !json {
            println!("waiting for a decision (Ctrl-C stops waiting; the request stays)...");
        }
        while view.state == RequestState::Pending {
            tokio::time::sleep(WAIT_POLL).await;
            view = client.get(&format!("/v1/requests/{}", view.id)).await?;
        }
        if view.grant.is_none() {
            if let Some(id) = view.grant_id {
                let mine: GrantList = client.get("/v1/grants").await?;
                view.grant = mine.grants.into_iter().find(|g| g.id == id);
            }
        }
        if !json {
            print_decided(&view);
        }
    }
    if json {
        print_json(&view);
    }
    Ok(match view.state {
        RequestState::Denied | RequestState::Expired if wait => Exit::Refused,
        _ => Exit::Success,
    })
}

fn print_created(v: &RequestView) {
    match (&v.grant, v.kind) {
        (Some(g), RequestKind::AutoApproved) => println!(
            "request #{} approved at once by an auto_approve rule: {}",
            v.id,
            granted(g)
        ),
        (Some(g), _) => println!("request #{}: {}", v.id, granted(g)),
        (None, _) => {
            println!(
                "request #{}: {} on {} for {} ({}) is pending; it needs {} approval{} by {}",
                v.id,
                Escaped(&v.who),
                Escaped(&v.target),
                secs(v.duration_secs),
                Escaped(&v.reason),
                v.needed,
                if v.needed == 1 { "" } else { "s" },
                local(v.expires_at)
            );
            println!(
                "who can approve it: {} (they run `jitproxy approve {}`)",
                Escaped(v.approvers.join(", ")),
                v.id
            );
        }
    }
}

fn print_decided(v: &RequestView) {
    match v.state {
        RequestState::Approved => match &v.grant {
            Some(g) => println!("approved: {}", granted(g)),
            None => println!(
                "approved: grant #{}",
                v.grant_id.map_or_else(String::new, |g| g.to_string())
            ),
        },
        RequestState::Denied => println!(
            "denied by {}: {}",
            Escaped(
                v.denied_by
                    .as_ref()
                    .map_or_else(|| "?".to_owned(), principal_name)
            ),
            Escaped(v.denial_reason.as_deref().unwrap_or(""))
        ),
        RequestState::Expired => println!(
            "expired at {} without a decision; ask again with `jitproxy request`",
            local(v.expires_at)
        ),
        RequestState::Pending => {}
    }
}

fn granted(g: &GrantView) -> String {
    format!(
        "granted #{}: {} on {} from {} until {}",
        g.id,
        Escaped(&g.who),
        Escaped(&g.target),
        local(g.starts_at),
        local(g.ends_at)
    )
}

fn principal_name(p: &crate::access::Principal) -> String {
    p.name.clone().unwrap_or_else(|| format!("uid {}", p.uid))
}

fn secs(s: i64) -> String {
    humantime::format_duration(Duration::from_secs(u64::try_from(s).unwrap_or(0))).to_string()
}

pub(super) async fn requests(socket: &Path, mine: bool, json: bool) -> Result<(), CmdError> {
    let path = if mine {
        "/v1/requests?mine=true"
    } else {
        "/v1/requests"
    };
    let list: RequestList = Client::new(socket).get(path).await?;
    if json {
        for r in &list.requests {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
        }
        return Ok(());
    }
    if list.requests.is_empty() {
        println!(
            "{}",
            if mine {
                "you made no request in the last 7 days"
            } else {
                "no pending request you may decide"
            }
        );
        return Ok(());
    }
    if mine {
        let rows: Vec<[String; 6]> = list
            .requests
            .iter()
            .map(|r| {
                [
                    format!("#{}", r.id),
                    r.target.clone(),
                    secs(r.duration_secs),
                    r.reason.clone(),
                    r.state.to_string(),
                    outcome(r),
                ]
            })
            .collect();
        print_table(
            &["ID", "TARGET", "FOR", "REASON", "STATE", "OUTCOME"],
            &rows,
        );
    } else {
        let rows: Vec<[String; 7]> = list
            .requests
            .iter()
            .map(|r| {
                [
                    format!("#{}", r.id),
                    r.who.clone(),
                    r.target.clone(),
                    secs(r.duration_secs),
                    r.reason.clone(),
                    format!("{} of {}", r.approvals.len(), r.needed),
                    local(r.expires_at),
                ]
            })
            .collect();
        print_table(
            &[
                "ID",
                "WHO",
                "TARGET",
                "FOR",
                "REASON",
                "APPROVALS",
                "EXPIRES",
            ],
            &rows,
        );
        println!("decide with `jitproxy approve ID` or `jitproxy deny ID --reason \"...\"`");
    }
    Ok(())
}

/// What came of a request, in a few words.
fn outcome(r: &RequestView) -> String {
    match r.state {
        RequestState::Pending => format!("{} of {} approvals", r.approvals.len(), r.needed),
        RequestState::Approved => match r.kind {
            RequestKind::BreakGlass => format!("break-glass, grant #{}", r.grant_id.unwrap_or(0)),
            RequestKind::AutoApproved => {
                format!("auto-approved, grant #{}", r.grant_id.unwrap_or(0))
            }
            RequestKind::Asked => format!("grant #{}", r.grant_id.unwrap_or(0)),
        },
        RequestState::Denied => format!(
            "denied by {}: {}",
            r.denied_by
                .as_ref()
                .map_or_else(|| "?".to_owned(), principal_name),
            r.denial_reason.as_deref().unwrap_or("")
        ),
        RequestState::Expired => "expired undecided".to_owned(),
    }
}

pub(super) async fn approve(
    socket: &Path,
    id: i64,
    duration: Option<&str>,
    reason: Option<String>,
    json: bool,
) -> Result<(), CmdError> {
    let body = ApproveBody {
        duration_secs: duration
            .map(parse_duration)
            .transpose()?
            .map(|d| d.as_secs()),
        reason,
    };
    let v: RequestView = Client::new(socket)
        .post(&format!("/v1/requests/{id}/approve"), &body)
        .await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    match &v.grant {
        Some(g) => println!("approved request #{}: {}", v.id, granted(g)),
        None => println!(
            "approved request #{} ({} of {} approvals); it needs {} more from: {}",
            v.id,
            v.approvals.len(),
            v.needed,
            usize::try_from(v.needed)
                .unwrap_or(0)
                .saturating_sub(v.approvals.len()),
            Escaped(v.approvers.join(", "))
        ),
    }
    Ok(())
}

pub(super) async fn deny(
    socket: &Path,
    id: i64,
    reason: String,
    json: bool,
) -> Result<(), CmdError> {
    let v: RequestView = Client::new(socket)
        .post(&format!("/v1/requests/{id}/deny"), &DenyBody { reason })
        .await?;
    if json {
        print_json(&v);
    } else {
        println!(
            "denied request #{} of {} on {}: {}",
            v.id,
            Escaped(&v.who),
            Escaped(&v.target),
            Escaped(v.denial_reason.as_deref().unwrap_or(""))
        );
    }
    Ok(())
}

pub(super) async fn break_glass(
    socket: &Path,
    target: String,
    duration: Option<&str>,
    reason: String,
    json: bool,
) -> Result<(), CmdError> {
    let body = BreakGlassBody {
        target,
        duration_secs: duration
            .map(parse_duration)
            .transpose()?
            .map(|d| d.as_secs()),
        reason,
    };
    let v: RequestView = Client::new(socket).post("/v1/break-glass", &body).await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    if let Some(g) = &v.grant {
        println!("BREAK-GLASS: {}", granted(g));
    }
    if v.notified.is_empty() {
        println!(
            "this is flagged in the audit log; no webhook takes break-glass alerts, so tell your approvers yourself"
        );
    } else {
        println!(
            "this is flagged in the audit log and sent to: {}",
            Escaped(v.notified.join(", "))
        );
    }
    Ok(())
}
