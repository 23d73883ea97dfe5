//! The daemon's side of the control API. Malformed, oversized or
//! unauthorized requests get an error answer and change nothing; a broken
//! connection affects only itself.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    path::Path,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{body::Incoming, header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{de::DeserializeOwned, Serialize};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{UnixListener, UnixStream},
};
use tokio_util::sync::CancellationToken;

use super::{
    proto::{
        ApproveBody, AuditRecords, AuditSummary, BreakGlassBody, DenyBody, DropRequest, ErrorBody,
        GrantList, GrantRequest, GrantView, NewRequestBody, RequestList, RequestView,
        RevokeRequest, StatusView, MAX_BODY,
    },
    ApiError, Peer,
};
use crate::{
    access::{Access, AccessError, AccessRequest, Decided, Grant},
    audit::query::Filter,
    host::proc::Process,
    time::now_ms,
};

/// Every path the API serves (for 405 versus 404).
const ENDPOINTS: &[&str] = &[
    "/v1/status",
    "/v1/why",
    "/v1/grants",
    "/v1/revoke",
    "/v1/drop",
    "/v1/audit/query",
    "/v1/audit/summary",
    "/v1/requests",
    "/v1/break-glass",
];

/// A connection may take this long in all (slow clients cannot pin tasks).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection may take this long to send a request's headers, the first
/// or the next: idle connections are closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// Control connections one non-root uid may hold at once.
const PER_UID: usize = 8;
/// Control connections of all non-root uids together. Root is never
/// counted, so a flood cannot lock out the administrator, and this bounds
/// the descriptors the control socket can take from the proxy.
pub const NON_ROOT_TOTAL: usize = 256;

/// Produces the daemon's status on demand.
pub type StatusFn = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = StatusView> + Send>> + Send + Sync>;

/// Binds the control socket at `path` (replacing a stale one), mode 0666:
/// any local user may connect; each request is authorized by peer uid.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    crate::host::socket::bind_unix(path, 0o666)
}

/// Serves the control API until shutdown.
pub async fn serve(
    listener: UnixListener,
    access: Arc<Access>,
    status: StatusFn,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Slots::default());
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let Some(peer) = peer_of(&stream) else {
            continue;
        };
        // Over its share, the connection is closed at once: the caller sees
        // the end of stream and nothing else changes.
        let Some(slot) = Slots::take(&slots, peer.uid) else {
            tracing::debug!(
                uid = peer.uid,
                "control connection refused: too many from this uid"
            );
            continue;
        };
        let (access, status) = (Arc::clone(&access), Arc::clone(&status));
        tokio::spawn(async move {
            let _slot = slot;
            serve_connection(stream, peer, access, status).await;
        });
    }
}

/// Serves one control connection from `peer` until it ends or times out:
/// any byte stream (the daemon's are Unix sockets; the fuzz targets drive it
/// in memory).
pub async fn serve_connection(
    stream: impl AsyncRead + AsyncWrite + Unpin + Send,
    peer: Peer,
    access: Arc<Access>,
    status: StatusFn,
) {
    let service = hyper::service::service_fn(move |req| {
        let (access, status, peer) = (Arc::clone(&access), Arc::clone(&status), peer.clone());
        async move { Ok::<_, Infallible>(handle(req, &peer, &access, &status).await) }
    });
    // half_close: a client that shuts its write side after the request
    // still gets its answer.
    let conn = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .timer(TokioTimer::new())
        .header_read_timeout(IDLE_TIMEOUT)
        .max_buf_size(MAX_BODY.max(8192))
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "control connection ended with an error"),
        Err(_) => tracing::debug!("control connection timed out"),
    }
}

/// Live control connections, per non-root uid and in all.
#[derive(Debug, Default)]
struct Slots(Mutex<SlotCounts>);

#[derive(Debug, Default)]
struct SlotCounts {
    by_uid: HashMap<u32, usize>,
    total: usize,
}

/// One live control connection; freed on drop.
struct Slot {
    slots: Arc<Slots>,
    uid: u32,
}

impl Slots {
    /// A slot for a connection from `uid`, unless it or all non-root uids
    /// together hold too many. Root always gets one.
    fn take(slots: &Arc<Self>, uid: u32) -> Option<Slot> {
        if uid != 0 {
            let mut counts = slots.0.lock().unwrap_or_else(|p| p.into_inner());
            let mine = counts.by_uid.get(&uid).copied().unwrap_or(0);
            if mine >= PER_UID || counts.total >= NON_ROOT_TOTAL {
                return None;
            }
            counts.by_uid.insert(uid, mine + 1);
            counts.total += 1;
        }
        Some(Slot {
            slots: Arc::clone(slots),
            uid,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.uid == 0 {
            return;
        }
        let mut counts = self.slots.0.lock().unwrap_or_else(|p| p.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(mine) = counts.by_uid.get_mut(&self.uid) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                counts.by_uid.remove(&self.uid);
            }
        }
    }
}

/// The caller's credentials; `None` if the kernel cannot tell (then the
/// connection is dropped: no identity, no request).
fn peer_of(stream: &UnixStream) -> Option<Peer> {
    let cred = stream.peer_cred().ok()?;
    let pid = cred.pid();
    let login_uid = pid
        .and_then(|pid| u32::try_from(pid).ok())
        .and_then(Process::open)
        .and_then(|p| p.login_uid());
    Some(Peer {
        uid: cred.uid(),
        gid: cred.gid(),
        pid,
        login_uid,
    })
}

async fn handle(
    req: Request<Incoming>,
    peer: &Peer,
    access: &Arc<Access>,
    status: &StatusFn,
) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = route(req, peer, access, status).await.unwrap_or_else(|e| {
        json(
            e.status,
            &ErrorBody {
                error: e.error,
                hint: e.hint,
            },
        )
    });
    tracing::debug!(%method, %path, uid = peer.uid, status = response.status().as_u16(), "control request");
    response
}

/// One request to its endpoint; every error is an answer.
async fn route(
    req: Request<Incoming>,
    peer: &Peer,
    access: &Arc<Access>,
    status: &StatusFn,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let by = peer.requester();
    Ok(match (&method, path.as_str()) {
        (&Method::GET, "/v1/status") => json(StatusCode::OK, &status().await),
        (&Method::GET, "/v1/why") => json(StatusCode::OK, &access.why(&by).await),
        (&Method::GET, "/v1/grants") => {
            let all = query.split('&').any(|kv| kv == "all=true" || kv == "all=1");
            list(StatusCode::OK, &access.list(&by, all).await?)
        }
        (&Method::POST, "/v1/grants") => {
            let ask = body::<GrantRequest>(req).await?.into();
            let access = Arc::clone(access);
            let grant = to_completion(async move { access.grant(&by, ask).await }).await?;
            json(StatusCode::CREATED, &GrantView::new(&grant, now_ms()))
        }
        (&Method::POST, "/v1/revoke") => {
            let ask = body::<RevokeRequest>(req).await?;
            let access = Arc::clone(access);
            let ended = to_completion(async move { access.revoke(&by, ask).await }).await?;
            list(StatusCode::OK, &ended)
        }
        (&Method::POST, "/v1/drop") => {
            let target = body::<DropRequest>(req).await?.target;
            let access = Arc::clone(access);
            let ended = to_completion(async move { access.drop_own(&by, target).await }).await?;
            list(StatusCode::OK, &ended)
        }
        (&Method::POST, "/v1/requests") => {
            let ask = body::<NewRequestBody>(req).await?.into();
            let access2 = Arc::clone(access);
            let decided = to_completion(async move { access2.request(&by, ask).await }).await?;
            decided_view(access, StatusCode::CREATED, &decided)
        }
        (&Method::GET, "/v1/requests") => {
            let mine = query
                .split('&')
                .any(|kv| kv == "mine=true" || kv == "mine=1");
            let requests = access.requests(&by, mine).await?;
            let now = now_ms();
            json(
                StatusCode::OK,
                &RequestList {
                    requests: requests
                        .iter()
                        .map(|r| {
                            RequestView::new(r, None, access.approvers_of_named(&r.target), now)
                        })
                        .collect(),
                },
            )
        }
        (&Method::POST, "/v1/break-glass") => {
            let ask = body::<BreakGlassBody>(req).await?;
            let access2 = Arc::clone(access);
            let (request, grant) = to_completion(async move {
                access2
                    .break_glass(&by, &ask.target, ask.duration_secs, &ask.reason)
                    .await
            })
            .await?;
            let mut view = request_view(access, &Decided::Granted(request, Box::new(grant)));
            view.notified = access.notified_of("break_glass.used");
            json(StatusCode::CREATED, &view)
        }
        (_, p) if p.starts_with("/v1/requests/") => {
            return request_route(req, &method, p, by, access).await
        }
        (&Method::POST, "/v1/audit/query") => {
            let records = access.audit_query(&by, body::<Filter>(req).await?).await?;
            json(StatusCode::OK, &AuditRecords { records })
        }
        (&Method::POST, "/v1/audit/summary") => {
            let (break_glass, users) = access
                .audit_summary(&by, body::<Filter>(req).await?)
                .await?;
            json(StatusCode::OK, &AuditSummary { break_glass, users })
        }
        (_, p) => return Err(no_such(&method, p, ENDPOINTS.contains(&p))),
    })
}

/// The answer to a request no endpoint serves: `405` on a known path
/// (`known`), else `404`.
fn no_such(method: &Method, path: &str, known: bool) -> ApiError {
    if known {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not supported on {path}"),
            "see docs/control-api.md",
        )
    } else {
        ApiError::not_found(
            format!("no such endpoint {path}"),
            "see docs/control-api.md",
        )
    }
}

/// `/v1/requests/ID` (GET), `/v1/requests/ID/approve` and `.../deny` (POST).
async fn request_route(
    req: Request<Incoming>,
    method: &Method,
    path: &str,
    by: crate::access::Requester,
    access: &Arc<Access>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let rest = path.strip_prefix("/v1/requests/").unwrap_or_default();
    let (id, action) = rest.split_once('/').unwrap_or((rest, ""));
    let id: i64 = id.parse().map_err(|_| {
        ApiError::bad_request(
            format!("`{id}` is not a request id"),
            "request ids are numbers; see `jitproxy requests`",
        )
    })?;
    let decided = match (method, action) {
        (&Method::GET, "") => Decided::Pending(access.get_request(&by, id).await?),
        (&Method::POST, "approve") => {
            let ask = body::<ApproveBody>(req).await?.into();
            let access = Arc::clone(access);
            to_completion(async move { access.approve(&by, id, ask).await }).await?
        }
        (&Method::POST, "deny") => {
            let reason = body::<DenyBody>(req).await?.reason;
            let access = Arc::clone(access);
            Decided::Pending(
                to_completion(async move { access.deny(&by, id, &reason).await }).await?,
            )
        }
        (_, action) => {
            return Err(no_such(
                method,
                path,
                matches!(action, "" | "approve" | "deny"),
            ))
        }
    };
    Ok(decided_view(access, StatusCode::OK, &decided))
}

/// A request (and the grant it led to, if any) as the API shows it.
fn request_view(access: &Access, decided: &Decided) -> RequestView {
    let (request, grant): (&AccessRequest, Option<&Grant>) = match decided {
        Decided::Pending(r) => (r, None),
        Decided::Granted(r, g) => (r, Some(&**g)),
    };
    RequestView::new(
        request,
        grant,
        access.approvers_of_named(&request.target),
        now_ms(),
    )
}

/// [`request_view`], answered with `status`.
fn decided_view(access: &Access, status: StatusCode, decided: &Decided) -> Response<Full<Bytes>> {
    json(status, &request_view(access, decided))
}

/// Runs a grant change to its end on a task of its own, so that a client
/// that goes away or a connection that times out cannot leave it half done
/// (stored, but not recorded in the audit log or the index).
async fn to_completion<T: Send + 'static>(
    change: impl Future<Output = Result<T, AccessError>> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(change).await.map_or_else(
        |e| {
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the request's task failed: {e}"),
                "this is a jitproxy bug; see the daemon's log",
            ))
        },
        |done| done.map_err(ApiError::from),
    )
}

/// Reads and parses a JSON body of at most [`MAX_BODY`] bytes.
async fn body<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, ApiError> {
    let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {MAX_BODY} bytes"),
                "send a smaller request",
            ))
        }
        Err(e) => {
            return Err(ApiError::bad_request(
                format!("cannot read the request body: {e}"),
                "send the whole body, with a correct Content-Length",
            ))
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(
            format!("malformed JSON body: {e}"),
            "see docs/control-api.md for the request fields",
        )
    })
}

fn list(status: StatusCode, grants: &[Grant]) -> Response<Full<Bytes>> {
    let now = now_ms();
    json(
        status,
        &GrantList {
            grants: grants.iter().map(|g| GrantView::new(g, now)).collect(),
        },
    )
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value)
        .unwrap_or_else(|_| b"{\"error\":\"cannot encode the answer\"}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_non_root_uid_gets_its_share_and_root_always_gets_in() {
        let slots = Arc::new(Slots::default());
        let mine: Vec<Slot> = (0..PER_UID)
            .map(|_| Slots::take(&slots, 1001).expect("within the share"))
            .collect();
        assert!(Slots::take(&slots, 1001).is_none(), "over the share");
        assert!(
            Slots::take(&slots, 1002).is_some(),
            "another uid has its own"
        );
        let roots: Vec<Slot> = (0..NON_ROOT_TOTAL * 2)
            .map(|_| Slots::take(&slots, 0).expect("root is never refused"))
            .collect();
        drop(mine);
        assert!(Slots::take(&slots, 1001).is_some(), "freed on drop");
        drop(roots);
    }
}
