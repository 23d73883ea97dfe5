//! Fuzzes the control API as a local user drives it: the input's bytes are
//! one HTTP/1.1 connection to the daemon's own connection handler (its hyper
//! settings, routing, body limits, validation and handlers, over a real grant
//! service with an in-memory store and a real audit log), from a peer that
//! the first byte picks. Every request gets an answer below 500, and a caller
//! who may not grant leaves no grant behind.
#![no_main]

use std::{path::Path, sync::Arc};

use jitproxy::{
    access::{Access, Requester},
    audit::{AuditLog, AuditSettings},
    config::Config,
    control::{proto::StatusView, server, Peer},
    host::users::Users,
    store::SqliteStore,
};
use jitproxy_fuzz::{runtime, scratch};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Approvers and auditors by uid; everyone else is neither.
const APPROVER: u32 = 1001;
const AUDITOR: u32 = 1002;
const NOBODY: u32 = 65534;

fuzz_target!(|data: &[u8]| {
    let Some((&who, http)) = data.split_first() else {
        return;
    };
    let peer = peer(who);
    let state = scratch();
    let config = Arc::new(config(state.path()));
    let audit = AuditLog::open(AuditSettings::for_config(&config)).expect("the audit log");
    let store = SqliteStore::in_memory().expect("an in-memory grant store");
    let access = Access::new(
        jitproxy::config::share(config),
        store,
        audit.clone(),
        Users::new(),
    )
    .expect("grant service");
    let answer = runtime().block_on(exchange(http, peer.clone(), Arc::clone(&access)));
    check_answers(&answer);
    if ![0, APPROVER].contains(&peer.uid) {
        let root = Requester {
            uid: 0,
            login_uid: None,
        };
        let grants = runtime()
            .block_on(access.list(&root, true))
            .expect("listing grants");
        assert!(
            grants.is_empty(),
            "uid {} made grants: {grants:?}",
            peer.uid
        );
    }
    drop(access);
    audit.close();
});

/// Root (with or without a login uid), an approver, an auditor, or nobody.
fn peer(who: u8) -> Peer {
    let uid = [0, APPROVER, AUDITOR, NOBODY][usize::from(who % 4)];
    Peer {
        uid,
        gid: uid,
        pid: None,
        login_uid: (who & 4 != 0).then_some(APPROVER),
    }
}

fn config(state: &Path) -> Config {
    let dir = state.display();
    let text = format!(
        r#"state_dir = '{dir}'
control_socket = '{dir}/control.sock'
approvers = ["user:{APPROVER}"]

[audit]
auditors = ["user:{AUDITOR}"]

[[target]]
name = "api"
hosts = ["127.0.0.2"]
ports = [443]
max_grant = "1h"
"#
    );
    Config::parse(&text, "fuzz.toml").unwrap_or_else(|e| panic!("the fuzz config: {e}"))
}

/// Sends `http` as one connection and returns all the server said. The
/// client shuts its side at the end of the input, so the server sees the
/// end of stream and every run ends (at worst at the server's timeouts).
async fn exchange(http: &[u8], peer: Peer, access: Arc<Access>) -> Vec<u8> {
    let (client, conn) = tokio::io::duplex(64 * 1024);
    let status: server::StatusFn = Arc::new(|| Box::pin(async { status_view() }));
    let served = tokio::spawn(server::serve_connection(conn, peer, access, status));
    let (mut from_server, mut to_server) = tokio::io::split(client);
    let send = async {
        // The server may close first (a malformed request): not a failure.
        let _ = to_server.write_all(http).await;
        let _ = to_server.shutdown().await;
    };
    let mut answer = Vec::new();
    let receive = from_server.read_to_end(&mut answer);
    let ((), received) = tokio::join!(send, receive);
    received.expect("reading the answers");
    served.await.expect("the connection task");
    answer
}

fn status_view() -> StatusView {
    serde_json::from_value(serde_json::json!({
        "version": "fuzz", "pid": 1, "cgroup": "/", "pins": "/sys/fs/bpf/jitproxy",
        "listen_port": 971, "started_at": "2026-01-01T00:00:00Z", "targets": [],
        "live": [], "open_grants": 0,
        "audit": { "dir": "/", "failure": null, "records_written": 0, "records_dropped": 0 },
    }))
    .expect("a status view")
}

/// Every response the server wrote is well-formed, and none says the
/// daemon failed (500 and up): bad requests are the caller's errors.
fn check_answers(mut rest: &[u8]) {
    while !rest.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut headers);
        let head = match response.parse(rest) {
            Ok(httparse::Status::Complete(len)) => len,
            other => panic!(
                "not an HTTP response ({other:?}): {:?}",
                String::from_utf8_lossy(rest)
            ),
        };
        let code = response.code.unwrap_or_default();
        // Answers to HEAD have a length but no body; every body is JSON.
        let bodiless = rest[head..].is_empty() || rest[head..].starts_with(b"HTTP/");
        let body_len = response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
            .filter(|_| !bodiless)
            .unwrap_or(0);
        let body = rest.get(head..head + body_len).expect("the whole body");
        assert!(
            code < 500,
            "the daemon answered {code}: {}",
            String::from_utf8_lossy(body)
        );
        rest = &rest[head + body_len..];
    }
}
