//! One inspected HTTP request, top to bottom:
//!
//! 1. the grant is still live (a request after it ended gets the 403);
//! 2. `Host` / `:authority` is one of the target's names;
//! 3. the grant's scopes allow the method and the normalized path;
//! 4. the user's request rate (429 with `Retry-After`);
//! 5. the credential: placeholders swapped, the client's own header of the
//!    credential's name replaced by the real one (an unresolved placeholder
//!    is refused, never sent as is);
//! 6. the "allowed" record is on disk;
//! 7. sent upstream; the response streams back, and its end (however it
//!    ends) finishes the request's record.
//!
//! Every refusal is a [`Refused`]: a status, a code and a reason, shown to
//! the client (403 or 429, JSON when it accepts JSON), written to the audit
//! log and kept for `jitproxy why`.

use std::{
    convert::Infallible,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use hyper::{
    body::Incoming,
    header::{self, HeaderMap, HeaderName, HeaderValue},
    http::{uri::PathAndQuery, Uri, Version},
    Request, Response, StatusCode,
};

use super::{
    body::{Finish, InBody, OutBody},
    credential,
    upstream::{self, Sender},
    ConnContext,
};
use crate::{
    access::index::RequestCover,
    audit::{AuditLog, Event, EventKind},
};

/// Why a request was refused: the client is told, and the record says.
#[derive(Debug)]
struct Refused {
    status: StatusCode,
    code: &'static str,
    reason: String,
    rule: Option<String>,
    retry_after: Option<Duration>,
}

impl Refused {
    fn forbidden(code: &'static str, reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            code,
            reason: reason.into(),
            rule: None,
            retry_after: None,
        }
    }
}

/// Request `request` of connection `ctx`.
pub(super) async fn exchange(
    ctx: Arc<ConnContext>,
    mut request: Request<Incoming>,
) -> Result<Response<InBody>, Infallible> {
    let number = ctx.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let mut record = RequestRecord::start(&ctx, number, &request);
    let inspector = &ctx.inspector;

    // 1. The user's request rate, first: refusals cost an audit record
    // too, so they count.
    if let Err(wait) = inspector.requests.take(ctx.keys.uid, Instant::now()) {
        let refused = Refused {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "rate_limited",
            reason: format!("more requests per second than {} allows", inspector.target),
            rule: None,
            retry_after: Some(wait),
        };
        return Ok(refuse(&ctx, record, &request, refused));
    }

    // 2. Methods that echo or tunnel, and headers that would make the
    // upstream act on another method or path than the one decided on.
    if let Some(refused) = refused_shape(&request) {
        return Ok(refuse(&ctx, record, &request, refused));
    }

    // 3. A live grant whose scopes allow this request.
    let verdict = ctx.proxy.policy.request_verdict(
        &ctx.keys,
        inspector.target_id,
        request.method().as_str(),
        request.uri().path(),
    );
    let (grant_id, rule) = match verdict {
        RequestCover::Allowed { grant_id, rule } => (grant_id, rule),
        RequestCover::NoGrant => {
            return Ok(refuse(
                &ctx,
                record,
                &request,
                Refused::forbidden(
                    "grant_ended",
                    format!("access to {} has ended", inspector.target),
                ),
            ))
        }
        RequestCover::NoRule { grant_id, rules } => {
            record.grant_id = Some(grant_id);
            let mut refused = Refused::forbidden(
                "scope",
                format!(
                    "grant {grant_id} allows only {}; {} {} is not among them",
                    rules.join(", "),
                    request.method(),
                    shown(request.uri().path())
                ),
            );
            refused.rule = Some(rules.join(", "));
            return Ok(refuse(&ctx, record, &request, refused));
        }
        RequestCover::BadPath(why) => {
            return Ok(refuse(
                &ctx,
                record,
                &request,
                Refused::forbidden("path", why),
            ))
        }
    };
    record.grant_id = Some(grant_id);
    record.rule = rule.clone();

    // 4. The name the client asked for is the target's, exactly: what goes
    // upstream is that configured name (and the client's port).
    let authority = match authority_of(&request) {
        Some((host, port)) => match inspector
            .names
            .iter()
            .find(|n| n.eq_ignore_ascii_case(host))
        {
            Some(name) => match port {
                Some(port) => format!("{name}:{port}"),
                None => name.to_string(),
            },
            None => {
                let reason = format!(
                    "Host `{}` is not one of {}'s names ({})",
                    shown(host),
                    inspector.target,
                    inspector.names.join(", ")
                );
                return Ok(refuse(
                    &ctx,
                    record,
                    &request,
                    Refused::forbidden("host", reason),
                ));
            }
        },
        None => {
            return Ok(refuse(
                &ctx,
                record,
                &request,
                Refused::forbidden(
                    "host",
                    "the request names no host, or one with user info (Host or :authority)",
                ),
            ))
        }
    };

    // 5. The credential.
    let upgrade = is_upgrade(&request);
    strip_hop_headers(request.headers_mut(), upgrade);
    for name in SPOOFABLE {
        request.headers_mut().remove(name);
    }
    let path_and_query = request
        .uri()
        .path_and_query()
        .map_or("/", PathAndQuery::as_str)
        .to_owned();
    let applied = match &inspector.credential {
        Some(credential) => credential
            .apply(&inspector.target, request.headers_mut(), &path_and_query)
            .map(|a| (a.injected.map(|h| h.as_str().to_owned()), a.path_and_query)),
        None => credential::refuse_placeholders(request.headers(), &path_and_query)
            .map(|()| (None, None)),
    };
    let (injected, rewritten) = match applied {
        Ok(applied) => applied,
        Err(unresolved) => {
            return Ok(refuse(
                &ctx,
                record,
                &request,
                Refused::forbidden("placeholder", unresolved.to_string()),
            ))
        }
    };
    record.credential = injected;
    let path_and_query = rewritten.unwrap_or(path_and_query);

    // 6. On disk before anything goes upstream.
    if let Err(e) = record.allowed().await {
        return Ok(refuse(
            &ctx,
            record,
            &request,
            Refused {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "audit_unavailable",
                reason: format!("the audit log cannot record this request ({e}); nothing was sent"),
                rule: None,
                retry_after: None,
            },
        ));
    }

    // 7. Upstream.
    let mut sender = match inspector
        .upstream
        .sender(ctx.dst, &ctx.server_name, upgrade)
        .await
    {
        Ok(sender) => sender,
        Err(e) => return Ok(record.failed(StatusCode::BAD_GATEWAY, e.code(), &e.to_string())),
    };
    // The fsync and the connect took time: a grant that ended meanwhile
    // stops the request here (nothing was sent yet).
    if !matches!(
        ctx.proxy.policy.request_verdict(
            &ctx.keys,
            inspector.target_id,
            request.method().as_str(),
            request.uri().path(),
        ),
        RequestCover::Allowed { .. }
    ) {
        return Ok(record.failed(
            StatusCode::FORBIDDEN,
            "grant_ended",
            &format!(
                "access to {} ended before the request was sent",
                inspector.target
            ),
        ));
    }
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    let uri = if sender.is_h2() {
        parts.headers.remove(header::HOST);
        Uri::builder()
            .scheme("https")
            .authority(authority.as_str())
            .path_and_query(path_and_query.as_str())
            .build()
    } else {
        if let Ok(host) = HeaderValue::from_str(&authority) {
            parts.headers.insert(header::HOST, host);
        }
        Uri::builder()
            .path_and_query(path_and_query.as_str())
            .build()
    };
    let Ok(uri) = uri else {
        return Ok(record.failed(
            StatusCode::BAD_REQUEST,
            "path",
            "the request's path cannot be sent on",
        ));
    };
    parts.uri = uri;
    parts.version = if sender.is_h2() {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let outgoing = Request::from_parts(parts, OutBody::new(body, Arc::clone(&record.bytes_up)));
    let mut response = match upstream::send(&mut sender, ctx.dst, outgoing).await {
        Ok(response) => response,
        Err(e) => return Ok(record.failed(StatusCode::BAD_GATEWAY, e.code(), &e.to_string())),
    };
    record.status = Some(response.status().as_u16());

    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            let (parts, _) = response.into_parts();
            ctx.relays.spawn(relay(
                Arc::clone(&ctx),
                client_upgrade,
                upstream_upgrade,
                record,
            ));
            return Ok(Response::from_parts(parts, InBody::ours("")));
        }
    }
    strip_hop_headers(response.headers_mut(), false);
    let (parts, body) = response.into_parts();
    let pooled = match sender {
        Sender::H1(s) => Some(s),
        Sender::H2(_) => None,
    };
    let finish = Box::new(Completion {
        record,
        ctx: Arc::clone(&ctx),
        pooled,
    });
    Ok(Response::from_parts(parts, InBody::upstream(body, finish)))
}

/// After a `101 Switching Protocols`: bytes both ways until either side
/// closes or access ends.
async fn relay(
    ctx: Arc<ConnContext>,
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    mut record: RequestRecord,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            record.completed(0, Some(format!("upgrade failed: {e}")));
            return;
        }
    };
    let mut client = hyper_util::rt::TokioIo::new(client);
    let mut upstream = hyper_util::rt::TokioIo::new(upstream);
    let copied = tokio::select! {
        biased;
        () = ctx.cut.cancelled() => Err("access ended".to_owned()),
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => copied.map_err(|e| e.to_string()),
    };
    match copied {
        Ok((up, down)) => {
            record.bytes_up.fetch_add(up, Ordering::Relaxed);
            record.completed(down, None);
        }
        Err(why) => record.completed(0, Some(why)),
    }
}

/// The end of a response body: its record, and its HTTP/1.1 connection
/// back to the pool.
struct Completion {
    record: RequestRecord,
    ctx: Arc<ConnContext>,
    pooled: Option<hyper::client::conn::http1::SendRequest<OutBody>>,
}

impl Finish for Completion {
    fn finish(self: Box<Self>, bytes: u64, error: Option<String>) {
        let Completion {
            mut record,
            ctx,
            pooled,
        } = *self;
        if let (Some(sender), None) = (pooled, &error) {
            ctx.inspector
                .upstream
                .give_back(ctx.dst, &ctx.server_name, sender);
        }
        record.completed(bytes, error);
    }
}

/// A refused request: its record, `why`'s note, and the answer.
fn refuse(
    ctx: &ConnContext,
    record: RequestRecord,
    request: &Request<Incoming>,
    refused: Refused,
) -> Response<InBody> {
    let mut note = ctx.caller.clone();
    note.at = jiff::Timestamp::now();
    note.reason = refused.reason.clone();
    note.code = refused.code.to_owned();
    ctx.proxy.access.note_refusal(note);
    let wants_json = request
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.contains("json")));
    let user = ctx
        .caller
        .user
        .clone()
        .unwrap_or_else(|| format!("uid {}", ctx.caller.uid));
    let ask = format!(
        "jitproxy request {} --for 1h --reason \"...\"",
        ctx.inspector.target
    );
    let body = if wants_json {
        serde_json::json!({
            "error": refused.code,
            "reason": refused.reason,
            "user": user,
            "target": &*ctx.inspector.target,
            "grant": record.grant_id,
            "rule": refused.rule,
            "ask": ask,
        })
        .to_string()
    } else {
        let mut text = format!(
            "jitproxy refused this request: {}\nuser: {user}\ntarget: {}\n",
            refused.reason, ctx.inspector.target
        );
        if let Some(grant) = record.grant_id {
            text.push_str(&format!("grant: {grant}\n"));
        }
        text.push_str(&format!("to ask for more: {ask}\n"));
        text
    };
    let mut response = Response::new(InBody::ours(body));
    *response.status_mut() = refused.status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if wants_json {
            "application/json"
        } else {
            "text/plain; charset=utf-8"
        }),
    );
    if let Some(wait) = refused.retry_after {
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from(wait.as_secs().max(1)),
        );
    }
    record.refused(&refused);
    response
}

/// The request's host (without port) and its authority as sent on
/// (`host[:port]`), from `:authority` (HTTP/2) or `Host`.
fn authority_of(request: &Request<Incoming>) -> Option<(&str, Option<u16>)> {
    let text = match request.uri().authority() {
        Some(authority) => authority.as_str(),
        None => request.headers().get(header::HOST)?.to_str().ok()?,
    };
    // User info (`name@host`) is refused: the host after it is not what a
    // prefix of the text says.
    if text.contains('@') {
        return None;
    }
    let authority: hyper::http::uri::Authority = text.parse().ok()?;
    let host = text.get(..authority.host().len())?;
    (host == authority.host()).then(|| (host, authority.port_u16()))
}

/// Headers an upstream behind an auth proxy or a load balancer may take as
/// who the caller is, or where it came from: the client cannot set them.
const SPOOFABLE: [&str; 9] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-prefix",
    "x-forwarded-proto",
    "x-forwarded-user",
    "x-remote-user",
    "remote-user",
    "x-real-ip",
];

/// A request jitproxy refuses for its shape, whatever the grant: TRACE and
/// TRACK echo the request (with the credential) back; CONNECT tunnels past
/// every later check; override headers make some frameworks act on another
/// method or path than the one the scopes decided on.
fn refused_shape(request: &Request<Incoming>) -> Option<Refused> {
    let method = request.method().as_str();
    if ["TRACE", "TRACK", "CONNECT"].contains(&method) {
        return Some(Refused::forbidden(
            "method",
            format!("{method} is never let through an inspect target (it echoes or tunnels)"),
        ));
    }
    const OVERRIDES: [&str; 5] = [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-original-url",
        "x-rewrite-url",
    ];
    if let Some(name) = OVERRIDES
        .iter()
        .find(|h| request.headers().contains_key(**h))
    {
        return Some(Refused::forbidden(
            "header",
            format!("`{name}` would make the API act on another method or path than the one sent; send that method and path instead"),
        ));
    }
    if let Some(upgrade) = request.headers().get(header::UPGRADE) {
        if !upgrade.as_bytes().eq_ignore_ascii_case(b"websocket") {
            return Some(Refused::forbidden(
                "upgrade",
                "only WebSocket upgrades are let through (h2c and others would carry requests past the scopes)",
            ));
        }
    }
    None
}

/// At most 200 characters of client input, escaped, for a message.
fn shown(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(200)
        .flat_map(char::escape_default)
        .collect();
    if text.chars().count() > 200 {
        out.push('…');
    }
    out
}

fn is_upgrade(request: &Request<Incoming>) -> bool {
    request.version() == Version::HTTP_11
        && request.headers().contains_key(header::UPGRADE)
        && request
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| {
                v.to_str()
                    .is_ok_and(|v| v.to_ascii_lowercase().contains("upgrade"))
            })
}

/// Removes the headers that belong to one hop (RFC 9110 7.6.1), and those
/// `Connection` names; keeps `Upgrade` and `Connection: upgrade` for an
/// upgrade, and `TE: trailers` (gRPC needs it).
fn strip_hop_headers(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !(upgrade && *n == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in [
        header::TE,
        header::TRANSFER_ENCODING,
        header::PROXY_AUTHORIZATION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// One request's audit record: "allowed" (on disk before the request goes
/// on) then "completed", or one "denied" / "rate_limited". Dropped
/// unfinished, it is written as an internal error.
struct RequestRecord {
    event: Event,
    audit: AuditLog,
    started: Instant,
    grant_id: Option<i64>,
    rule: Option<String>,
    credential: Option<String>,
    status: Option<u16>,
    bytes_up: Arc<std::sync::atomic::AtomicU64>,
    conn_up: Arc<std::sync::atomic::AtomicU64>,
    conn_down: Arc<std::sync::atomic::AtomicU64>,
    finished: bool,
}

impl RequestRecord {
    fn start(ctx: &ConnContext, number: u64, request: &Request<Incoming>) -> Self {
        let mut event = ctx.template.clone();
        let uri = request.uri();
        let query = uri.query().map(|q| {
            if ctx.inspector.log_query {
                q.to_owned()
            } else {
                query_names(q)
            }
        });
        event.detail = Some(serde_json::json!({
            "request": number,
            "method": clipped(request.method().as_str(), 32),
            "path": clipped(uri.path(), MAX_RECORDED),
            "query": query.as_deref().map(|q| clipped(q, MAX_RECORDED)),
            "server_name": &*ctx.server_name,
            "version": format!("{:?}", request.version()),
        }));
        Self {
            event,
            audit: ctx.proxy.access.audit().clone(),
            started: Instant::now(),
            grant_id: None,
            rule: None,
            credential: None,
            status: None,
            bytes_up: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            conn_up: Arc::clone(&ctx.bytes_up),
            conn_down: Arc::clone(&ctx.bytes_down),
            finished: false,
        }
    }

    fn event(&self, kind: EventKind) -> Event {
        let mut event = self.event.clone();
        event.kind = kind;
        event.grant_id = self.grant_id;
        if let Some(serde_json::Value::Object(detail)) = &mut event.detail {
            if let Some(rule) = &self.rule {
                detail.insert("rule".into(), rule.as_str().into());
            }
            if let Some(credential) = &self.credential {
                detail.insert("credential".into(), credential.as_str().into());
            }
            if let Some(status) = self.status {
                detail.insert("status".into(), status.into());
            }
        }
        event
    }

    fn allowed(&self) -> impl std::future::Future<Output = Result<u64, crate::audit::AuditError>> {
        self.audit
            .record_durable(self.event(EventKind::HttpAllowed))
    }

    fn refused(mut self, refused: &Refused) {
        self.status = Some(refused.status.as_u16());
        let kind = if refused.status == StatusCode::TOO_MANY_REQUESTS {
            EventKind::HttpRateLimited
        } else {
            EventKind::HttpDenied
        };
        let mut event = self.event(kind);
        event.reason = Some(refused.reason.clone());
        event.code = Some(refused.code.to_owned());
        self.finish(event);
    }

    /// Allowed, but the upstream could not take it: a 502 (or 400) to the
    /// client.
    fn failed(mut self, status: StatusCode, code: &'static str, error: &str) -> Response<InBody> {
        self.status = Some(status.as_u16());
        let mut event = self.event(EventKind::HttpCompleted);
        event.reason = Some(error.to_owned());
        event.code = Some(code.to_owned());
        event.ended_by = Some("upstream".to_owned());
        event.duration_ms = Some(ms(self.started.elapsed()));
        self.finish(event);
        let mut response = Response::new(InBody::ours(format!("jitproxy: {error}\n")));
        *response.status_mut() = status;
        response
    }

    fn completed(&mut self, bytes_down: u64, error: Option<String>) {
        let up = self.bytes_up.load(Ordering::Relaxed);
        self.conn_up.fetch_add(up, Ordering::Relaxed);
        self.conn_down.fetch_add(bytes_down, Ordering::Relaxed);
        let mut event = self.event(EventKind::HttpCompleted);
        event.bytes_up = Some(up);
        event.bytes_down = Some(bytes_down);
        event.duration_ms = Some(ms(self.started.elapsed()));
        event.ended_by = Some(if error.is_some() { "error" } else { "response" }.to_owned());
        event.reason = error;
        self.finish(event);
    }

    fn finish(&mut self, event: Event) {
        self.finished = true;
        self.audit.record(event);
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        if !self.finished {
            let mut event = self.event(EventKind::HttpCompleted);
            event.ended_by = Some("internal error: record not finished".to_owned());
            self.finish(event);
        }
    }
}

/// Bytes of a path or query a record keeps: a client cannot make records
/// (and the disk they fill) larger than this by its request line.
const MAX_RECORDED: usize = 1024;

/// `text`, cut to at most `max` bytes (at a character boundary) and said
/// so with its full length.
fn clipped(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…({} bytes)", &text[..end], text.len()).into()
}

/// A query's parameter names only (`a=1&b=2` → `a&b`): values may be
/// personal data or secrets.
fn query_names(query: &str) -> String {
    query
        .split('&')
        .map(|pair| pair.split_once('=').map_or(pair, |(name, _)| name))
        .collect::<Vec<_>>()
        .join("&")
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
