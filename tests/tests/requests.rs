//! End-to-end: access requests and approvals. Real daemon, real eBPF, real
//! clients in a test cgroup, the CLI as several real uids (an engineer, two
//! approvers, an outsider), and a real HTTP webhook receiver (Python's
//! http.server) on loopback. Needs root; run with `cargo xtask test`.
//!
//! Each test has its own index, which picks its cgroup, the stand-in API's
//! address (127.0.<90 + index>.2:8080), its webhook receiver's
//! (127.0.<90 + index>.3:9000) and the daemon's listen port (900 + index).
// Test helpers panic on failure by design: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use jitproxy_e2e::{
    listen_port, output, Behaviour, Cgroup, Daemon, Upstream, NOBODY, PYTHON, REQUESTS_PORTS,
};
use serde_json::Value;

/// Asks for access.
const ENGINEER: u32 = 4301;
/// Approve (the config's `approvers`).
const APPROVER_A: u32 = 4302;
const APPROVER_B: u32 = 4303;
/// Neither requester (where a target restricts them) nor approver.
const OUTSIDER: u32 = 4304;

fn api_addr(index: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 90 + index, 2], 8080))
}

fn receiver_addr(index: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 90 + index, 3], 9000))
}

struct World {
    api: Upstream,
    daemon: Daemon,
    cgroup: Cgroup,
    target: String,
}

impl World {
    /// A daemon whose one target (`api-INDEX`, `max_grant` 2h) has the
    /// target keys `target_keys`; `approvers` are A and B; `extra` is more
    /// top-level config (e.g. `[[notify]]` tables, which go last).
    fn new(index: u8, name: &str, target_keys: &str, extra: &str) -> Self {
        let api = Upstream::start(api_addr(index), Behaviour::Http).expect("stand-in API");
        let cgroup = Cgroup::create(name).expect("test cgroup");
        let target = format!("api-{index}");
        let config = format!(
            "listen_port = {}\napprovers = [\"user:{APPROVER_A}\", \"user:{APPROVER_B}\"]\n\
             [[target]]\nname = \"{target}\"\nhosts = [\"{}\"]\nports = [{}]\nmax_grant = \"2h\"\n{target_keys}\n{extra}",
            listen_port(REQUESTS_PORTS, index),
            api.addr().ip(),
            api.addr().port()
        );
        let daemon = Daemon::start(&cgroup, Some(&config)).expect("daemon starts");
        Self {
            api,
            daemon,
            cgroup,
            target,
        }
    }

    /// `jitproxy ARGS` as `uid`: (exit code, stdout, stderr).
    fn cli(&self, uid: u32, args: &[&str]) -> (i32, String, String) {
        self.daemon.client_as(uid, uid, None, args)
    }

    /// `jitproxy ARGS` as `uid`; panics unless it succeeds; stdout.
    fn ok(&self, uid: u32, args: &[&str]) -> String {
        let (code, out, err) = self.cli(uid, args);
        assert_eq!(code, 0, "jitproxy {args:?} as {uid} failed:\n{out}{err}");
        out
    }

    /// `jitproxy ARGS --json` as `uid`, parsed.
    fn json(&self, uid: u32, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        serde_json::from_str(&self.ok(uid, &args)).expect("JSON answer")
    }

    /// Asserts that `jitproxy ARGS` as `uid` is refused by the daemon (exit
    /// 4) with `message` and a hint; returns stderr.
    fn refused(&self, uid: u32, args: &[&str], message: &str) -> String {
        let (code, out, err) = self.cli(uid, args);
        assert_eq!(
            code, 4,
            "jitproxy {args:?} as {uid}: not refused:\n{out}{err}"
        );
        assert!(err.contains(message), "jitproxy {args:?}: {err}");
        assert!(err.contains("hint:"), "no next step: {err}");
        err
    }

    /// `jitproxy request TARGET --for DURATION --reason REASON` as the
    /// engineer: the request's JSON.
    fn request(&self, duration: &str, reason: &str) -> Value {
        self.json(
            ENGINEER,
            &[
                "request",
                &self.target,
                "--for",
                duration,
                "--reason",
                reason,
            ],
        )
    }

    /// curl inside the cgroup as `uid` got the API's answer.
    fn curl_as(&self, uid: u32) -> bool {
        let mut cmd = self.cgroup.command_as(uid, uid, "curl");
        let (ok, out, _) =
            output(cmd.args(["-sS", "-m", "5", &format!("http://{}/x", self.api.addr())]));
        ok && out.contains("hello from upstream")
    }

    /// curl as `uid` is refused, and nothing reaches the API.
    fn assert_no_access(&self, uid: u32) {
        let before = self.api.accepted();
        assert!(!self.curl_as(uid), "uid {uid} reached the API");
        assert_eq!(
            self.api.accepted(),
            before,
            "a refused connection reached the API"
        );
    }

    /// All grants, as root sees them.
    fn grants(&self) -> Vec<Value> {
        self.daemon
            .client(&["grants", "--all", "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits for the audit record of `kind` about request `id`.
    fn wait_request_record(&self, kind: &str, id: i64) -> Value {
        self.daemon
            .wait_event(&format!("{kind} of request {id}"), |e| {
                e["event"] == kind && Daemon::detail(e)["request_id"] == id
            })
    }
}

fn id_of(v: &Value) -> i64 {
    v["id"].as_i64().expect("an id")
}

#[test]
fn a_request_approved_by_another_user_gives_access_and_its_trail() {
    let w = World::new(1, "req-approve", "", "");
    w.assert_no_access(ENGINEER);
    let why = w.ok(ENGINEER, &["why"]);
    assert!(
        why.contains(&format!("jitproxy request {} --for 1h", w.target))
            && why.contains(&format!(
                "who can approve it: root, user:{APPROVER_A}, user:{APPROVER_B}"
            )),
        "why names neither the command nor the approvers:\n{why}"
    );

    // Asked, and waiting for the decision.
    let mut waiting = w
        .daemon
        .client_as_command(
            ENGINEER,
            &[
                "request", &w.target, "--for", "30m", "--reason", "INC-1234", "--wait",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let first_line = BufReader::new(waiting.stdout.as_mut().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    assert!(
        first_line.contains("is pending; it needs 1 approval"),
        "{first_line}"
    );
    let mine = w.json(ENGINEER, &["requests", "--mine"]);
    assert_eq!(mine["state"], "pending", "{mine}");
    let id = id_of(&mine);
    assert!(
        first_line.starts_with(&format!("request #{id}:")),
        "{first_line}"
    );
    assert_eq!(mine["approvers"][1], format!("user:{APPROVER_A}"));

    // Not by the requester, not by an outsider; nothing changes.
    w.refused(
        ENGINEER,
        &["approve", &id.to_string()],
        "is your own; nobody approves",
    );
    // To an outsider the request does not exist: its target and reasons
    // are not theirs to learn.
    w.refused(OUTSIDER, &["approve", &id.to_string()], "no request #");
    w.refused(
        OUTSIDER,
        &["deny", &id.to_string(), "--reason", "x"],
        "no request #",
    );
    w.refused(OUTSIDER, &["requests"], "approves no target");
    assert!(w.grants().is_empty());
    w.assert_no_access(ENGINEER);

    // The approver sees it and approves; the waiting requester is told.
    let pending = w.ok(APPROVER_A, &["requests"]);
    assert!(
        pending.contains(&format!("#{id}")) && pending.contains("INC-1234"),
        "{pending}"
    );
    let approved = w.json(APPROVER_A, &["approve", &id.to_string()]);
    assert_eq!(approved["state"], "approved", "{approved}");
    let grant_id = approved["grant"]["id"].as_i64().unwrap();
    assert_eq!(approved["grant"]["request_id"], id);
    let waited = waiting.wait_with_output().unwrap();
    let told = String::from_utf8_lossy(&waited.stdout);
    assert!(waited.status.success(), "--wait failed: {told}");
    assert!(
        told.contains(&format!("approved: granted #{grant_id}")),
        "{told}"
    );
    assert!(
        w.curl_as(ENGINEER),
        "approved, but refused:\n{}",
        w.daemon.log_text()
    );
    // Access held: nothing more to ask for.
    w.refused(
        ENGINEER,
        &["request", &w.target, "--for", "1h", "--reason", "more"],
        "already have access",
    );

    // The trail: the request beside the grant and the connection it led to.
    w.wait_request_record("request.approved", id);
    w.daemon.wait_event("the allowed connection", |e| {
        e["event"] == "connection.allowed" && e["grant_id"] == grant_id
    });
    let trail = w.ok(0, &["audit", "--user", &ENGINEER.to_string(), "--json"]);
    let events: Vec<Value> = trail
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .filter(|r| r["type"] != "connection.closed")
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "connection.denied",
            "request.created",
            // Still refused while pending.
            "connection.denied",
            "request.approved",
            "grant.created",
            "connection.allowed"
        ],
        "{trail}"
    );
    let of = |kind: &str| events.iter().find(|r| r["type"] == kind).unwrap();
    assert_eq!(of("request.approved")["detail"]["by"]["uid"], APPROVER_A);
    assert_eq!(of("grant.created")["detail"]["request_id"], id);
    assert_eq!(of("connection.allowed")["grant_id"], grant_id);
    let table = w.ok(0, &["audit", "--user", &ENGINEER.to_string()]);
    assert!(
        table.contains(&format!("request #{id} (1 of 1) by"))
            && table.contains(&format!("→ grant #{grant_id}")),
        "{table}"
    );
}

#[test]
fn nobody_grants_access_to_themselves() {
    let w = World::new(2, "req-self", "", "");
    let me = APPROVER_A.to_string();
    let err = w.refused(
        APPROVER_A,
        &["grant", &me, &w.target, "--for", "1h", "--reason", "mine"],
        "may not grant access to yourself",
    );
    assert!(
        err.contains(&format!("jitproxy request {}", w.target)) && err.contains("break-glass"),
        "the hint names neither request nor break-glass: {err}"
    );
    // Behind sudo the human is the login uid: still themselves.
    let (code, _, err) = w.daemon.client_as(
        0,
        0,
        Some(APPROVER_A),
        &["grant", &me, &w.target, "--for", "1h", "--reason", "mine"],
    );
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("may not grant access to yourself"), "{err}");
    // Root (no login uid) may not grant root either.
    w.refused(
        0,
        &[
            "grant", "root", &w.target, "--for", "1h", "--reason", "mine",
        ],
        "may not grant access to yourself",
    );
    assert!(w.grants().is_empty(), "a self-grant was stored");
    // Granting someone else works.
    w.ok(
        APPROVER_A,
        &[
            "grant",
            &ENGINEER.to_string(),
            &w.target,
            "--for",
            "1h",
            "--reason",
            "INC-2",
        ],
    );
    assert!(w.curl_as(ENGINEER));
}

#[test]
fn nobody_grants_access_to_a_group_they_are_in() {
    // nobody (an approver here) is in group nogroup.
    let w = World::new(3, "req-selfgroup", "approvers = [\"user:nobody\"]", "");
    w.refused(
        NOBODY,
        &[
            "grant",
            "group:nogroup",
            &w.target,
            "--for",
            "1h",
            "--reason",
            "ours",
        ],
        "may not grant access to a group you belong to",
    );
    assert!(
        w.grants().is_empty(),
        "a grant to the approver's group was stored"
    );
}

#[test]
fn two_approvals_are_needed_when_the_target_says_so() {
    let w = World::new(4, "req-twoofn", "approvals = 2", "");
    let id = id_of(&w.request("1h", "INC-5"));
    let sid = id.to_string();
    let first = w.json(APPROVER_A, &["approve", &sid]);
    assert_eq!(
        first["state"], "pending",
        "one approval made a grant: {first}"
    );
    assert_eq!(first["approvals"].as_array().unwrap().len(), 1);
    let out = w.ok(APPROVER_B, &["requests"]);
    assert!(out.contains("1 of 2"), "{out}");
    w.assert_no_access(ENGINEER);
    assert!(w.grants().is_empty());
    // The same approver twice is one approval.
    w.refused(APPROVER_A, &["approve", &sid], "already approved");
    let (code, out, _) = w.cli(APPROVER_A, &["requests"]);
    assert_eq!(code, 0);
    assert!(
        !out.contains(&format!("#{sid} ")),
        "listed to an approver who decided it: {out}"
    );
    let second = w.json(
        APPROVER_B,
        &["approve", &sid, "--for", "30m", "--reason", "ok, shorter"],
    );
    assert_eq!(second["state"], "approved", "{second}");
    let grant = &second["grant"];
    let window = unix(&grant["ends_at"]) - unix(&grant["starts_at"]);
    assert!(
        (window - 1800.0).abs() < 1.0,
        "the shorter window was not used: {second}"
    );
    assert!(w.curl_as(ENGINEER));
    w.refused(APPROVER_A, &["approve", &sid], "already approved (grant #");
}

#[test]
fn a_pending_request_expires_and_cannot_be_approved_after() {
    let w = World::new(5, "req-expire", "request_ttl = \"2s\"", "");
    let id = id_of(&w.request("1h", "INC-6"));
    let expired = w.wait_request_record("request.expired", id);
    assert_eq!(expired["uid"], ENGINEER, "{expired}");
    w.refused(APPROVER_A, &["approve", &id.to_string()], "expired");
    w.refused(
        APPROVER_A,
        &["deny", &id.to_string(), "--reason", "late"],
        "expired",
    );
    let mine = w.json(ENGINEER, &["requests", "--mine"]);
    assert_eq!(mine["state"], "expired", "{mine}");
    assert!(w.grants().is_empty());
    w.assert_no_access(ENGINEER);
    // Asking again works.
    let again = w.request("1h", "INC-6 again");
    assert_eq!(again["state"], "pending");
}

#[test]
fn a_denial_reaches_the_requester_with_its_reason() {
    let w = World::new(6, "req-deny", "", "");
    let waiting = w
        .daemon
        .client_as_command(
            ENGINEER,
            &[
                "request", &w.target, "--for", "1h", "--reason", "INC-7", "--wait",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let id = wait_for_pending(&w);
    let sid = id.to_string();
    let denied = w.json(APPROVER_B, &["deny", &sid, "--reason", "use staging first"]);
    assert_eq!(denied["state"], "denied");
    let out = wait_output(waiting);
    assert_eq!(out.0, 4, "--wait did not exit 4 on a denial: {}", out.1);
    assert!(
        out.1.contains("denied by") && out.1.contains("use staging first"),
        "{}",
        out.1
    );
    let mine = w.ok(ENGINEER, &["requests", "--mine"]);
    assert!(mine.contains("use staging first"), "{mine}");
    let record = w.wait_request_record("request.denied", id);
    assert_eq!(
        Daemon::detail(&record)["denial_reason"],
        "use staging first"
    );
    // Decided once.
    w.refused(
        APPROVER_A,
        &["deny", &sid, "--reason", "again"],
        "already denied",
    );
    w.refused(APPROVER_A, &["approve", &sid], "already denied");
    assert!(w.grants().is_empty());
    w.assert_no_access(ENGINEER);
}

#[test]
fn break_glass_gives_access_at_once_and_alerts_the_webhook() {
    let receiver = Receiver::start(receiver_addr(7), 0);
    let notify = format!(
        "[[notify]]\nname = \"sre-slack\"\nurl = \"{}\"\nformat = \"slack\"\nevents = [\"break_glass.used\"]\n\
         [[notify]]\nname = \"siem\"\nurl = \"{}\"\n",
        receiver.url("/slack"),
        receiver.url("/json")
    );
    let w = World::new(
        7,
        "req-glass",
        &format!("break_glass = [\"user:{ENGINEER}\"]\nbreak_glass_max = \"10m\""),
        &notify,
    );
    w.refused(
        OUTSIDER,
        &["break-glass", &w.target, "--reason", "SEV1"],
        "may not break glass",
    );
    w.refused(
        ENGINEER,
        &["break-glass", &w.target, "--for", "1h", "--reason", "SEV1"],
        "longer than target",
    );
    let out = w.ok(
        ENGINEER,
        &["break-glass", &w.target, "--reason", "SEV1 INC-99"],
    );
    assert!(out.starts_with("BREAK-GLASS: granted #"), "{out}");
    assert!(out.contains("sent to: sre-slack, siem"), "{out}");
    assert!(w.curl_as(ENGINEER), "break-glass gave no access");

    let slack: Vec<Delivery> = receiver
        .wait("the Slack alert", |d| d.path == "/slack" && d.status == 200)
        .into_iter()
        .filter(|d| d.path == "/slack")
        .collect();
    let text = slack[0].body["text"].as_str().unwrap();
    assert!(
        text.contains("BREAK-GLASS") && text.contains("SEV1 INC-99"),
        "{text}"
    );
    assert_eq!(
        slack.len(),
        1,
        "the Slack webhook got more than its one event"
    );
    let json = receiver.wait("the JSON alert and grant", |d| {
        d.path == "/json" && d.body["event"] == "grant.created"
    });
    let glass = json
        .iter()
        .find(|d| d.body["event"] == "break_glass.used")
        .expect("break_glass.used to the JSON webhook");
    assert_eq!(glass.body["request"]["kind"], "break_glass");
    assert_eq!(glass.body["who"], format!("user:{ENGINEER}"));
    assert!(glass.key.is_some() && glass.body["key"] == glass.key.clone().unwrap().as_str());

    let summary = w.ok(0, &["audit", "summary"]);
    assert!(summary.starts_with("BREAK-GLASS USED:"), "{summary}");
    assert!(summary.contains("SEV1 INC-99"), "{summary}");
}

#[test]
fn every_event_reaches_a_receiver_that_refuses_at_first_and_one_restart_later() {
    // Refuses the first three deliveries (503), then takes them.
    let receiver = Receiver::start(receiver_addr(8), 3);
    // A webhook URL can be a secret (Slack's are): it must never show.
    let secret = "T0SECRET/B0SECRET/s3cr3t-token";
    let notify = format!(
        "[[notify]]\nname = \"hook\"\nurl = \"{}\"\n",
        receiver.url(&format!("/services/{secret}"))
    );
    let mut w = World::new(8, "req-outbox", "", &notify);
    let id = id_of(&w.request("1h", "INC-8"));
    w.ok(APPROVER_A, &["approve", &id.to_string()]);
    let wanted = ["request.created", "request.approved", "grant.created"];
    let all = receiver.wait("three events, delivered", |d| {
        d.status == 200 && d.body["event"] == "grant.created"
    });
    let all = receiver.wait_until(
        |ds| {
            wanted
                .iter()
                .all(|e| ds.iter().any(|d| d.status == 200 && d.body["event"] == *e))
        },
        all,
    );
    assert!(
        all.iter().any(|d| d.status == 503),
        "the receiver never refused"
    );
    assert_keys_stable(&all);

    // The receiver goes away; an event is queued; the daemon is killed
    // before it can deliver; both come back; the event arrives.
    drop(receiver);
    w.ok(ENGINEER, &["drop", &w.target]);
    let id2 = id_of(&w.json(
        ENGINEER,
        &["request", &w.target, "--for", "1h", "--reason", "INC-8b"],
    ));
    w.daemon.wait_event("a failed delivery", |e| {
        e["message"] == "notification not delivered; it stays queued"
    });
    w.daemon.kill9();
    let receiver = Receiver::start(receiver_addr(8), 0);
    w.daemon.restart().unwrap();
    let after = receiver.wait("the event queued before the kill", |d| {
        d.body["event"] == "request.created" && d.body["request"]["id"] == id2
    });
    assert_eq!(
        after
            .iter()
            .filter(|d| d.body["request"]["id"] == id2)
            .count(),
        1
    );

    let status = w.ok(0, &["status"]) + &w.ok(0, &["status", "--json"]);
    assert!(status.contains("webhooks: hook"), "{status}");
    for (what, text) in [("daemon log", w.daemon.log_text()), ("status", status)] {
        assert!(
            !text.contains("s3cr3t"),
            "the webhook URL's secret is in the {what}:\n{text}"
        );
    }
}

#[test]
fn a_webhook_that_is_a_watched_target_is_still_reached() {
    // The daemon runs inside the cgroup it watches, and the receiver is a
    // target: its deliveries go out from marked sockets, which pass.
    let index = 9;
    let receiver = Receiver::start(receiver_addr(index), 0);
    let api = Upstream::start(api_addr(index), Behaviour::Http).unwrap();
    let cgroup = Cgroup::create("req-watched-hook").unwrap();
    let hook = receiver_addr(index);
    let config = format!(
        "listen_port = {}\napprovers = [\"user:{APPROVER_A}\"]\n\
         [[target]]\nname = \"api\"\nhosts = [\"{}\"]\nports = [{}]\n\
         [[target]]\nname = \"hooks\"\nhosts = [\"{}\"]\nports = [{}]\n\
         [[notify]]\nname = \"hook\"\nurl = \"http://{hook}/hook\"\n",
        listen_port(REQUESTS_PORTS, index),
        api.addr().ip(),
        api.addr().port(),
        hook.ip(),
        hook.port()
    );
    let daemon = Daemon::start_inside(&cgroup, &config).unwrap();
    // Watched: a user in the cgroup without a grant does not reach it.
    let mut curl = cgroup.command_as(ENGINEER, ENGINEER, "curl");
    let (ok, _, _) =
        output(curl.args(["-sS", "-m", "5", "-d", "{}", &format!("http://{hook}/hook")]));
    assert!(!ok, "the receiver was reachable without a grant");
    assert!(
        receiver.deliveries().is_empty(),
        "a refused connection reached the receiver"
    );
    let (code, out, err) = daemon.client_as(
        ENGINEER,
        ENGINEER,
        None,
        &["request", "api", "--for", "1h", "--reason", "INC-9"],
    );
    assert_eq!(code, 0, "{out}{err}");
    receiver.wait("the notice, through the watched cgroup", |d| {
        d.status == 200 && d.body["event"] == "request.created"
    });
}

#[test]
fn bad_request_input_gets_a_clear_error_and_changes_nothing() {
    let w = World::new(
        10,
        "req-badinput",
        &format!("requesters = [\"user:{ENGINEER}\"]"),
        "",
    );
    let t = w.target.clone();
    // Usage errors (exit 2) and the daemon's refusals (exit 4, with a hint).
    for (args, code, needle) in [
        (vec!["request", &t, "--for", "1h"], 2, "--reason"),
        (vec!["request", &t, "--reason", "x"], 2, "--for"),
        (
            vec!["request", &t, "--for", "0s", "--reason", "x"],
            2,
            "longer than zero",
        ),
        (
            vec!["request", &t, "--for", "soon", "--reason", "x"],
            2,
            "not a duration",
        ),
        (vec!["approve", "abc"], 2, "invalid value"),
        (vec!["deny", "1"], 2, "--reason"),
    ] {
        let (got, out, err) = w.cli(ENGINEER, &args);
        assert_eq!(got, code, "{args:?}: {out}{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    w.refused(
        ENGINEER,
        &["request", &t, "--for", "3h", "--reason", "x"],
        "longer than target",
    );
    w.refused(
        ENGINEER,
        &["request", &t, "--for", "1h", "--reason", "   "],
        "a reason is required",
    );
    // A second line in a reason could forge one in the approvers' chat.
    w.refused(
        ENGINEER,
        &[
            "request",
            &t,
            "--for",
            "1h",
            "--reason",
            "INC-1\nrequest #9 approved by root",
        ],
        "newline",
    );
    w.refused(
        ENGINEER,
        &["request", "no-such-api", "--for", "1h", "--reason", "x"],
        "no target named",
    );
    w.refused(
        OUTSIDER,
        &["request", &t, "--for", "1h", "--reason", "x"],
        "may not request access",
    );
    w.refused(APPROVER_A, &["approve", "999"], "no request #999");
    w.refused(
        APPROVER_A,
        &["deny", "999", "--reason", "x"],
        "no request #999",
    );
    let (code, _, err) = w.cli(ENGINEER, &["requests", "--mine"]);
    assert_eq!(code, 0, "{err}");
    // One request, then a second for the same target while it is pending.
    let id = id_of(&w.request("1h", "INC-10"));
    w.refused(
        ENGINEER,
        &["request", &t, "--for", "1h", "--reason", "again"],
        "already have a pending request",
    );
    w.refused(
        APPROVER_A,
        &["approve", &id.to_string(), "--for", "2h"],
        "longer than the 1h asked for",
    );
    // Nothing was granted, one request exists.
    assert!(w.grants().is_empty());
    let mine: Vec<Value> = w
        .ok(ENGINEER, &["requests", "--mine", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(mine.len(), 1, "{mine:?}");
    // The control API: a malformed id is a 400 and nothing else.
    let answer = raw_get(&w.daemon.socket(), "/v1/requests/abc");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let answer = raw_get(&w.daemon.socket(), &format!("/v1/requests/{id}/nonsense"));
    assert!(
        answer.starts_with("HTTP/1.1 404") || answer.starts_with("HTTP/1.1 405"),
        "{answer}"
    );
    w.assert_no_access(ENGINEER);
}

/// A GET on the control socket as root: the raw answer.
fn raw_get(socket: &std::path::Path, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// Waits for the engineer's pending request; its id.
fn wait_for_pending(w: &World) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, out, _) = w.cli(ENGINEER, &["requests", "--mine", "--json"]);
        if code == 0 {
            if let Some(line) = out.lines().next() {
                let v: Value = serde_json::from_str(line).unwrap();
                return id_of(&v);
            }
        }
        assert!(Instant::now() < deadline, "no pending request appeared");
        thread::sleep(Duration::from_millis(100));
    }
}

/// A child's exit code and output (stdout, then stderr), waiting at most
/// 15 s for it to end.
fn wait_output(mut child: Child) -> (i32, String) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the command did not end");
        }
        thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Every event arrived under one key, and no two events share one.
fn assert_keys_stable(deliveries: &[Delivery]) {
    let mut keys: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for d in deliveries {
        let event = (d.body["event"].to_string(), d.body["at"].to_string());
        keys.entry(event)
            .or_default()
            .insert(d.key.clone().expect("an idempotency key"));
    }
    let mut seen = BTreeSet::new();
    for (event, k) in &keys {
        assert_eq!(k.len(), 1, "{event:?} arrived under keys {k:?}");
        assert!(seen.insert(k.clone()), "two events share key {k:?}");
    }
}

fn unix(v: &Value) -> f64 {
    let ts: jiff::Timestamp = v.as_str().unwrap().parse().unwrap();
    ts.as_millisecond() as f64 / 1000.0
}

/// One POST the receiver got.
#[derive(Debug, Clone)]
struct Delivery {
    path: String,
    status: u16,
    key: Option<String>,
    body: Value,
}

/// A real HTTP webhook receiver (Python's http.server) on loopback that
/// answers 503 to its first `refuse` POSTs and 200 after, and logs each.
struct Receiver {
    child: Child,
    log: PathBuf,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

const RECEIVER_PY: &str = r#"
import http.server, json, sys, threading
host, port = sys.argv[1].rsplit(":", 1)
refuse = int(sys.argv[2])
log = open(sys.argv[3], "a", buffering=1)
lock = threading.Lock()
count = [0]
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with lock:
            count[0] += 1
            status = 503 if count[0] <= refuse else 200
            log.write(json.dumps({"path": self.path, "status": status,
                "key": self.headers.get("Idempotency-Key"), "body": json.loads(body)}) + "\n")
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer((host, int(port)), Hook)
print("ready", flush=True)
server.serve_forever()
"#;

impl Receiver {
    fn start(addr: SocketAddr, refuse: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("deliveries.jsonl");
        let mut child = Command::new(PYTHON)
            .args(["-c", RECEIVER_PY, &addr.to_string(), &refuse.to_string()])
            .arg(&log)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut ready = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(ready.trim(), "ready", "the webhook receiver did not start");
        Self {
            child,
            log,
            addr,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn deliveries(&self) -> Vec<Delivery> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                Delivery {
                    path: v["path"].as_str().unwrap().to_owned(),
                    status: u16::try_from(v["status"].as_u64().unwrap()).unwrap(),
                    key: v["key"].as_str().map(str::to_owned),
                    body: v["body"].clone(),
                }
            })
            .collect()
    }

    /// Waits (up to 30 s) until a delivery matches `pred`; all so far.
    fn wait(&self, what: &str, pred: impl Fn(&Delivery) -> bool) -> Vec<Delivery> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let all = self.deliveries();
            if all.iter().any(&pred) {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "the receiver never got {what}: {all:#?}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits (up to 30 s) until all deliveries so far satisfy `pred`.
    fn wait_until(
        &self,
        pred: impl Fn(&[Delivery]) -> bool,
        mut all: Vec<Delivery>,
    ) -> Vec<Delivery> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !pred(&all) {
            assert!(
                Instant::now() < deadline,
                "the receiver never got them all: {all:#?}"
            );
            thread::sleep(Duration::from_millis(100));
            all = self.deliveries();
        }
        all
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_auto_approve_rule_grants_at_once_and_says_so() {
    let w = World::new(
        11,
        "req-auto",
        &format!("auto_approve = [{{ who = [\"user:{ENGINEER}\"], max = \"15m\" }}]"),
        "",
    );
    // Within the rule: granted at once, recorded as auto-approved.
    let quick = w.request("10m", "INC-11 quick look");
    assert_eq!(
        (&quick["state"], &quick["kind"]),
        (&Value::from("approved"), &Value::from("auto_approved")),
        "{quick}"
    );
    let grant_id = quick["grant"]["id"].as_i64().expect("the grant, at once");
    assert!(w.curl_as(ENGINEER), "auto-approved, but refused");
    let created = w.wait_request_record("request.created", id_of(&quick));
    assert_eq!(
        Daemon::detail(&created)["kind"],
        "auto_approved",
        "{created}"
    );
    assert_eq!(created["grant_id"], grant_id, "{created}");
    // Beyond it (longer than `max`), or for someone else: approvers decide.
    w.ok(ENGINEER, &["drop", &w.target]);
    let long = w.request("1h", "INC-11 longer");
    assert_eq!(
        (&long["state"], &long["kind"]),
        (&Value::from("pending"), &Value::from("asked")),
        "{long}"
    );
    let other = w.json(
        APPROVER_A,
        &[
            "request",
            &w.target,
            "--for",
            "10m",
            "--reason",
            "INC-11 me too",
        ],
    );
    assert_eq!(other["state"], "pending", "{other}");
}
