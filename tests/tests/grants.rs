//! End-to-end: grants decide every redirected connection, and connections end
//! when their grant does. Real daemon, real eBPF, real clients in a test
//! cgroup, as root, `nobody` and uids without names; the CLI as root and as
//! non-approvers. Needs root; run with `cargo xtask test`.
//!
//! Each test has its own index, which picks its cgroup, the stand-in API's
//! address (127.0.<40 + index>.2:8080) and the daemon's listen port (700 +
//! index: the harness's port plan), so tests run in parallel.
// Test helpers panic on failure by design: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{Read as _, Write as _},
    net::SocketAddr,
    os::unix::net::UnixStream,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use jitproxy_e2e::{
    client_port, listen_port, output, Behaviour, Cgroup, Daemon, Held, Upstream, GRANTS_PORTS,
    NOBODY, OPERATOR, PYTHON,
};
use serde_json::Value;

struct World {
    api: Upstream,
    daemon: Daemon,
    cgroup: Cgroup,
    target: String,
}

fn api_addr(index: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 40 + index, 2], 8080))
}

impl World {
    fn new(index: u8, name: &str, behaviour: Behaviour, limits: &str) -> Self {
        let api = Upstream::start(api_addr(index), behaviour).expect("stand-in API");
        let cgroup = Cgroup::create(name).expect("test cgroup");
        let target = format!("api-{index}");
        let config = format!(
            "listen_port = {}\n{limits}\n[[target]]\nname = \"{target}\"\nhosts = [\"{}\"]\nports = [{}]\nmax_grant = \"2h\"\n",
            listen_port(GRANTS_PORTS, index),
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

    fn url(&self) -> String {
        format!("http://{}/x", self.api.addr())
    }

    /// `program` inside the cgroup as `uid` (root as it is).
    fn command_as(&self, uid: u32, program: &str) -> Command {
        if uid == 0 {
            self.cgroup.command(program)
        } else {
            self.cgroup.command_as(uid, uid, program)
        }
    }

    /// curl inside the cgroup as `uid` got the API's answer.
    fn curl_as(&self, uid: u32) -> bool {
        let mut cmd = self.command_as(uid, "curl");
        let (ok, out, _) = output(cmd.args(["-sS", "-m", "5", &self.url()]));
        ok && out.contains("hello from upstream")
    }

    /// A probe inside the cgroup as `uid` is refused: see [`World::refused`].
    fn assert_refused(&self, uid: u32, code: &str) -> Value {
        let mut cmd = self.command_as(uid, PYTHON);
        self.refused(|| Probe::run(&mut cmd, self.api.addr()), uid, code)
    }

    /// Runs `probe` (as `uid`) and asserts that the proxy refused it: its
    /// connection reset (not a timeout, not an empty answer), nothing
    /// reaching the API meanwhile, and the refusal recorded for that very
    /// connection with `code` and `uid`. Returns the record.
    fn refused(&self, probe: impl FnOnce() -> Probe, uid: u32, code: &str) -> Value {
        let reached_before = self.api.accepted();
        let probe = probe();
        assert_eq!(
            probe.outcome, "reset",
            "the connection of uid {uid} was not reset by the proxy: {}",
            probe.text
        );
        assert_eq!(
            self.api.accepted(),
            reached_before,
            "the refused connection reached the API"
        );
        let record = self.daemon.wait_event("the refusal's record", |e| {
            (e["event"] == "connection.denied" || e["event"] == "connection.rate_limited")
                && client_port(e) == probe.port
        });
        assert_eq!(record["code"], code, "{record}");
        assert_eq!(record["uid"], uid, "{record}");
        record
    }

    fn grant(&self, who: &str, duration: &str) -> i64 {
        let out = self.daemon.operator(&[
            "grant",
            who,
            &self.target,
            "--for",
            duration,
            "--reason",
            "INC-42",
            "--json",
        ]);
        let grant: Value = serde_json::from_str(&out).expect("grant JSON");
        grant["id"].as_i64().expect("grant id")
    }

    /// A client inside the cgroup that reads the API's endless stream and
    /// prints how it ended; started as `uid`, with `login_uid` if given.
    fn streaming_client(&self, uid: u32) -> Child {
        let script = format!(
            r#"
import socket, sys, time
s = socket.create_connection(("{ip}", {port}))
n = 0
try:
    while True:
        data = s.recv(4096)
        if not data:
            break
        n += len(data)
except ConnectionResetError:
    pass
print(time.time(), n)
"#,
            ip = self.api.addr().ip(),
            port = self.api.addr().port()
        );
        let mut cmd = self.command_as(uid, PYTHON);
        cmd.args(["-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start streaming client")
    }
}

/// What one probe (a Python client inside the cgroup) saw: the local port
/// of its connection, and how the exchange ended.
struct Probe {
    port: u16,
    /// `reset`, `answered`, `closed` (an empty answer) or `timeout`.
    outcome: String,
    text: String,
}

/// Connects to the API, prints its local port, sends one request, and says
/// how that ended.
/// The port is bound first: a reset can already come out of `connect`.
const PROBE_PY: &str = r#"
import socket, sys
s = socket.socket()
s.settimeout(5)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    s.sendall(b"GET /x HTTP/1.0\r\n\r\n")
    print("answered" if s.recv(4096) else "closed")
except (ConnectionResetError, BrokenPipeError):
    print("reset")
except socket.timeout:
    print("timeout")
"#;

impl Probe {
    /// Runs `cmd`, a command that ends in `python3 -c SCRIPT`'s place: the
    /// probe's script and its arguments are appended.
    fn run(cmd: &mut Command, api: SocketAddr) -> Self {
        let (_, out, err) = output(cmd.args([
            "-c",
            PROBE_PY,
            &api.ip().to_string(),
            &api.port().to_string(),
        ]));
        let mut lines = out.lines();
        Self {
            port: lines
                .next()
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or(0),
            outcome: lines.next().unwrap_or("").to_owned(),
            text: format!("{out}{err}"),
        }
    }
}

/// Waits for a streaming client to end; returns (unix time it saw the end, bytes).
fn ended(child: Child, within: Duration) -> (f64, u64) {
    let deadline = Instant::now() + within;
    let mut child = child;
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the connection was not cut within {within:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut fields = text.split_whitespace();
    let at: f64 = fields
        .next()
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "client output: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let bytes: u64 = fields.next().and_then(|f| f.parse().ok()).unwrap_or(0);
    (at, bytes)
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn wait_live(w: &World, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while w.daemon.events_of("connection.allowed").len() < n {
        assert!(
            Instant::now() < deadline,
            "connections not allowed:\n{}",
            w.daemon.log_text()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn without_a_grant_refused_with_a_reason_then_granted_works() {
    let w = World::new(1, "nogrant", Behaviour::Http, "");
    w.assert_refused(NOBODY, "no_grant");
    assert_eq!(w.api.accepted(), 0, "something reached the API");

    let (code, out, err) = w.daemon.client_as(NOBODY, NOBODY, None, &["why"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("no live grant"), "{out}");
    assert!(
        out.contains(&format!("jitproxy request {} --for", w.target))
            && out.contains(&format!("who can approve it: root, user:{OPERATOR}")),
        "why gives no next step:\n{out}"
    );

    let id = w.grant("nobody", "10m");
    assert!(
        w.curl_as(NOBODY),
        "granted, but refused:\n{}",
        w.daemon.log_text()
    );
    let allowed = w
        .daemon
        .wait_event("allowed", |e| e["event"] == "connection.allowed");
    assert_eq!(allowed["grant_id"], id);
    assert_eq!(allowed["reason"], "INC-42");
    // Root has no grant of its own: still refused.
    w.assert_refused(0, "no_grant");
}

/// The first audit record of `kind` with `key` = `value`.
fn find<'a>(all: &'a [Value], kind: &str, key: &str, value: &Value) -> Option<&'a Value> {
    all.iter().find(|r| r["type"] == kind && &r[key] == value)
}

/// Waits for grant `grant_id`'s end record (`end_kind`) and the record of
/// the connection it let through being closed, and asserts the order: the
/// grant's end first, then the connection's, ended by the daemon because
/// the grant ended. Returns (end, closed).
fn assert_cut_by(w: &World, grant_id: i64, end_kind: &str) -> (Value, Value) {
    let id = Value::from(grant_id);
    let closed_of = |all: &[Value]| {
        let allowed = find(all, "connection.allowed", "grant_id", &id)?;
        find(all, "connection.closed", "conn", &allowed["conn"]).cloned()
    };
    let all = w.daemon.wait_records(
        &format!("{end_kind} of grant {grant_id} and the connection it cut"),
        |all| find(all, end_kind, "grant_id", &id).is_some() && closed_of(all).is_some(),
    );
    let end = find(&all, end_kind, "grant_id", &id).unwrap().clone();
    let closed = closed_of(&all).unwrap();
    assert!(
        end["seq"].as_u64() < closed["seq"].as_u64(),
        "the connection's end (seq {}) is recorded before its grant's {end_kind} (seq {})",
        closed["seq"],
        end["seq"]
    );
    assert_eq!(closed["ended_by"], "daemon: grant ended", "{closed}");
    (end, closed)
}

#[test]
fn a_long_transfer_is_cut_when_its_grant_expires() {
    let w = World::new(2, "expiry", Behaviour::Stream, "");
    let id = w.grant("nobody", "3s");
    let client = w.streaming_client(NOBODY);
    let (_, bytes) = ended(client, Duration::from_secs(10));
    assert!(bytes > 0, "the stream never flowed");
    // The order of the records, not the test's stopwatch: how soon after
    // the window the cut comes is proxy::decision's unit tests', on a
    // paused clock.
    let (expired, _) = assert_cut_by(&w, id, "grant.expired");
    assert_eq!(expired["detail"]["recorded_late"], false, "{expired}");
    // And new connections are refused at once.
    w.assert_refused(NOBODY, "no_grant");
}

#[test]
fn revoke_and_drop_cut_live_connections() {
    let w = World::new(3, "revoke", Behaviour::Stream, "");
    let id = w.grant("nobody", "1h");
    let client = w.streaming_client(NOBODY);
    wait_live(&w, 1);
    let (code, out, err) = w
        .daemon
        .client_as(NOBODY, NOBODY, None, &["revoke", &id.to_string()]);
    assert_eq!(code, 4, "a non-approver revoked a grant: {out}{err}");
    w.daemon.client(&["revoke", &id.to_string()]);
    ended(client, Duration::from_secs(5));
    assert_cut_by(&w, id, "grant.revoked");
    w.assert_refused(NOBODY, "no_grant");

    // drop: nobody gives their own access back.
    let id = w.grant("nobody", "1h");
    let client = w.streaming_client(NOBODY);
    wait_live(&w, 2);
    let (code, out, err) = w
        .daemon
        .client_as(NOBODY, NOBODY, None, &["drop", &w.target]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("dropped"), "{out}");
    ended(client, Duration::from_secs(5));
    assert_cut_by(&w, id, "grant.dropped");
    w.assert_refused(NOBODY, "no_grant");
    let grants = w.daemon.client(&["grants", "--all", "--json"]);
    assert!(grants.contains("\"state\":\"revoked\""), "{grants}");
    assert!(grants.contains("\"state\":\"dropped\""), "{grants}");
}

#[test]
fn overlapping_grants_keep_access_until_the_later_one_ends() {
    let w = World::new(4, "overlap", Behaviour::Stream, "");
    let first = w.grant("nobody", "2s");
    let later = w.grant("nobody", "4s");
    let client = w.streaming_client(NOBODY);
    ended(client, Duration::from_secs(10));
    // Let through on the later grant, and cut only after its end: the
    // first one's end came and went.
    let (later_end, _) = assert_cut_by(&w, later, "grant.expired");
    let all = w.daemon.records();
    let first_end = find(&all, "grant.expired", "grant_id", &Value::from(first))
        .expect("the first grant's expiry");
    assert!(first_end["seq"].as_u64() < later_end["seq"].as_u64());
}

#[test]
fn a_non_approver_cannot_grant_and_nothing_changes() {
    let w = World::new(5, "nonapprover", Behaviour::Http, "");
    let (code, _, err) = w.daemon.client_as(
        NOBODY,
        NOBODY,
        None,
        &[
            "grant", "nobody", &w.target, "--for", "1h", "--reason", "please",
        ],
    );
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("may not grant"), "{err}");
    assert!(err.contains("hint:"), "no next step: {err}");
    let all = w.daemon.client(&["grants", "--all", "--json"]);
    assert!(all.trim().is_empty(), "a grant appeared: {all}");
    let (code, _, err) = w
        .daemon
        .client_as(NOBODY, NOBODY, None, &["grants", "--all"]);
    assert_eq!(code, 4, "{err}");
    w.assert_refused(NOBODY, "no_grant");
}

#[test]
fn a_caller_under_sudo_is_matched_by_login_uid() {
    let w = World::new(6, "sudo", Behaviour::Http, "");
    // "alice" (uid 4243) logged in, then `sudo` to root: login uid 4243, uid 0.
    let sudo = || {
        let mut cmd = w.cgroup.command("sh");
        cmd.args([
            "-c",
            &format!(r#"echo 4243 > /proc/self/loginuid && exec {PYTHON} "$@""#),
            "sh",
        ]);
        Probe::run(&mut cmd, w.api.addr())
    };
    w.grant("root", "1h");
    // root's grant does not let a sudoer through.
    let denied = w.refused(sudo, 0, "no_grant");
    assert_eq!(denied["login_uid"], 4243, "{denied}");
    w.grant("4243", "1h");
    assert!(
        sudo().outcome == "answered",
        "the human's grant did not match:\n{}",
        w.daemon.log_text()
    );
    let allowed = w.daemon.wait_event("allowed", |e| {
        e["event"] == "connection.allowed" && e["login_uid"] == 4243
    });
    assert_eq!(allowed["uid"], 0);
    assert_eq!(Daemon::detail(&allowed)["matched_uid"], 4243, "{allowed}");
}

/// `sh -c SCRIPT` in the cgroup as `nobody` whose login uid starts unset,
/// as for a service or a job started outside a PAM login.
fn as_nobody_without_login_uid(w: &World, script: &str) -> Command {
    let mut cmd = w.cgroup.command("sh");
    cmd.args([
        "-c",
        r#"echo 4294967295 > /proc/self/loginuid; exec setpriv --reuid=65534 --regid=65534 --clear-groups -- sh -c "$0""#,
        script,
    ]);
    cmd
}

#[test]
fn a_forged_login_uid_gets_the_forgers_own_identity() {
    let w = World::new(12, "forge", Behaviour::Http, "");
    let victim = w.grant("4243", "1h");
    // nobody sets its unset login uid to the victim's, which the kernel
    // allows once without privilege, then uses the victim's target.
    let forged = format!(
        "echo 4243 > /proc/self/loginuid && test \"$(cat /proc/self/loginuid)\" = 4243 && exec curl -sS -m 5 {}",
        w.url()
    );
    let (ok, out, err) = output(&mut as_nobody_without_login_uid(&w, &forged));
    assert!(!ok, "a forged login uid reached the API: {out}");
    assert!(
        !err.contains("Permission denied"),
        "the forger could not set its login uid, so nothing was tried: {err}"
    );
    assert_eq!(w.api.accepted(), 0, "something reached the API");
    let denied = w.daemon.wait_event("denied forger", |e| {
        e["event"] == "connection.denied" && e["uid"] == NOBODY
    });
    assert_eq!(denied["code"], "no_grant", "{denied}");
    assert_eq!(denied["login_uid"], 4243, "the claim is recorded: {denied}");
    assert!(
        denied["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&format!("uid {NOBODY}"))),
        "refused as the forger: {denied}"
    );

    // Through the control API, the same claim drops nothing of the victim's.
    let drop = format!(
        "echo 4243 > /proc/self/loginuid && exec {} drop --socket {}",
        w.daemon.bin().display(),
        w.daemon.socket().display()
    );
    let (ok, out, err) = output(&mut as_nobody_without_login_uid(&w, &drop));
    assert!(ok, "{err}");
    assert!(out.contains("nothing dropped"), "{out}");
    let grants = w.daemon.client(&["grants", "--all", "--json"]);
    let still: Value = grants
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|g| g["id"] == victim)
        .expect("the victim's grant");
    assert_eq!(still["state"], "active", "{still}");
}

#[test]
fn a_control_socket_flood_leaves_root_and_the_data_path_working() {
    let w = World::new(13, "ctlflood", Behaviour::Http, "");
    w.grant("root", "1h");
    // nobody opens 2,000 control connections, sends nothing, and holds them.
    let flood = format!(
        r#"
import socket, sys, time
socks = []
for _ in range(2000):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(2)
    try:
        s.connect("{socket}")
        socks.append(s)
    except OSError:
        s.close()
time.sleep(0.5)
held = 0
for s in socks:
    s.setblocking(False)
    try:
        if s.recv(1) == b"":
            continue
    except BlockingIOError:
        held += 1
    except OSError:
        pass
print(len(socks), held, flush=True)
sys.stdin.read()
"#,
        socket = w.daemon.socket().display()
    );
    let mut flooder = Held::start(
        w.cgroup
            .command_as(NOBODY, NOBODY, PYTHON)
            .args(["-c", &flood]),
    );
    let line = flooder.line();
    let (opened, held): (usize, usize) = line
        .split_once(' ')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .unwrap_or_else(|| panic!("flood output: {line:?}"));
    assert!(opened > 100, "the flood did not get going: {line}");
    assert!(
        held <= 8,
        "one uid holds {held} control connections: {line}"
    );

    // While the flood's connections are still open, root is answered and a
    // granted connection to the target works.
    let started = Instant::now();
    assert!(w.daemon.client(&["status"]).contains("running"));
    eprintln!(
        "status during a control-socket flood: {:?}",
        started.elapsed()
    );
    assert!(w.curl_as(0), "a granted connection failed during the flood");
    drop(flooder);
}

#[test]
fn grants_survive_restart_and_kill9_but_expired_ones_are_not_honoured() {
    let mut w = World::new(7, "restart", Behaviour::Http, "");
    w.grant("nobody", "1h");
    let short = w.daemon.operator(&[
        "grant", "4244", &w.target, "--for", "2s", "--reason", "short", "--json",
    ]);
    let short_ends = unix_seconds(&serde_json::from_str::<Value>(&short).unwrap()["ends_at"]);
    assert!(w.curl_as(NOBODY));
    w.daemon.stop().expect("clean stop");
    w.daemon.restart().expect("restart");
    assert!(w.curl_as(NOBODY), "grant lost over a clean restart");
    w.daemon.kill9();
    // The short grant's window closes while no daemon runs.
    while unix_now() <= short_ends {
        thread::sleep(Duration::from_millis(50));
    }
    w.daemon.restart().expect("restart after kill -9");
    assert!(
        w.curl_as(NOBODY),
        "grant lost over kill -9:\n{}",
        w.daemon.log_text()
    );
    // A grant that expired while the daemon was down is not honoured.
    w.assert_refused(4244, "no_grant");
}

#[test]
fn rate_and_concurrency_limits_hold() {
    let limits = "[limits]\nconnections_per_second = 0.01\nburst = 3\nmax_concurrent = 100\n";
    let w = World::new(8, "ratelimit", Behaviour::Http, limits);
    w.grant("nobody", "1h");
    for i in 0..3 {
        assert!(w.curl_as(NOBODY), "connection {i} within the burst refused");
    }
    w.assert_refused(NOBODY, "rate_limited");
    let (_, out, _) = w.daemon.client_as(NOBODY, NOBODY, None, &["why"]);
    assert!(out.contains("rate limited"), "{out}");

    let limits = "[limits]\nconnections_per_second = 1000.0\nburst = 1000\nmax_concurrent = 2\n";
    let w = World::new(9, "concurrency", Behaviour::Stream, limits);
    w.grant("nobody", "1h");
    let a = w.streaming_client(NOBODY);
    let b = w.streaming_client(NOBODY);
    wait_live(&w, 2);
    let c = w.streaming_client(NOBODY);
    let (_, bytes) = ended(c, Duration::from_secs(5));
    assert_eq!(bytes, 0, "the third concurrent connection got data");
    // Limits refuse as `connection.rate_limited`, in the daemon log as in
    // the audit log (the same record).
    let denied = w
        .daemon
        .wait_event("rate-limited", |e| e["event"] == "connection.rate_limited");
    assert_eq!(denied["code"], "too_many_connections");
    w.daemon.client(&["revoke", "--user", "nobody"]);
    ended(a, Duration::from_secs(5));
    ended(b, Duration::from_secs(5));
}

#[test]
fn bad_cli_input_gets_a_clear_error_and_changes_nothing() {
    let w = World::new(10, "badcli", Behaviour::Http, "");
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &[
                "grant",
                "nobody",
                "api-10",
                "--for",
                "2 fortnights",
                "--reason",
                "x",
            ],
            2,
            "not a duration",
        ),
        (
            &["grant", "nobody", "api-10", "--for", "0s", "--reason", "x"],
            2,
            "longer than zero",
        ),
        (
            &[
                "grant", "nobody", "api-10", "--until", "25:99", "--reason", "x",
            ],
            2,
            "not a time",
        ),
        (&["grant", "nobody", "api-10", "--reason", "x"], 2, "--for"),
        (
            &[
                "grant",
                "nobody",
                "no-such-target",
                "--for",
                "1h",
                "--reason",
                "x",
            ],
            4,
            "no target named",
        ),
        (
            &[
                "grant",
                "no-such-user-xyz",
                "api-10",
                "--for",
                "1h",
                "--reason",
                "x",
            ],
            4,
            "no user named",
        ),
        (
            &["grant", "nobody", "api-10", "--for", "1h", "--reason", "  "],
            4,
            "reason is required",
        ),
        (
            &["grant", "nobody", "api-10", "--for", "3h", "--reason", "x"],
            4,
            "longer than target",
        ),
        (&["grant", "nobody", "api-10", "--for", "1h"], 2, "--reason"),
        (&["revoke", "999"], 4, "no open grant"),
    ];
    for (args, want_code, want_text) in cases {
        let (code, out, err) = w.daemon.client_as(0, 0, None, args);
        assert_eq!(code, *want_code, "{args:?}: {out}{err}");
        assert!(
            err.contains(want_text),
            "{args:?}: error does not say `{want_text}`:\n{err}"
        );
    }
    let all = w.daemon.client(&["grants", "--all", "--json"]);
    assert!(all.trim().is_empty(), "bad input created a grant: {all}");
    // Unreachable daemon: its own exit code and a next step.
    let mut cmd = Command::new(jitproxy_e2e::jitproxy_bin());
    let (ok, _, err) = output(cmd.args(["status", "--socket", "/nonexistent/control.sock"]));
    assert!(!ok);
    assert!(err.contains("is it running"), "{err}");
}

/// Sends raw bytes on the control socket; returns what came back.
fn raw(socket: &std::path::Path, bytes: &[u8], close_write: bool) -> String {
    let mut s = UnixStream::connect(socket).expect("control socket");
    s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    let _ = s.write_all(bytes);
    if close_write {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

#[test]
fn malformed_control_requests_get_errors_and_change_nothing() {
    let w = World::new(11, "badapi", Behaviour::Http, "");
    let socket = w.daemon.socket();
    // Garbage: not HTTP at all.
    let answer = raw(&socket, b"\x00\x01garbage\r\n\r\n", true);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    // Invalid JSON.
    let answer = raw(&socket, &post("/v1/grants", b"{not json"), true);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("malformed JSON"), "{answer}");
    // Unknown field.
    let body = format!(
        r#"{{"who":"nobody","target":"{}","duration_secs":60,"reason":"x","admin":true}}"#,
        w.target
    );
    let answer = raw(&socket, &post("/v1/grants", body.as_bytes()), true);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("unknown field"), "{answer}");
    // Oversized.
    let big = vec![b' '; 200 * 1024];
    let answer = raw(&socket, &post("/v1/grants", &big), true);
    assert!(
        answer.starts_with("HTTP/1.1 413") || answer.is_empty(),
        "{answer}"
    );
    // Truncated: Content-Length promises more than is sent, then EOF.
    let mut truncated = post(
        "/v1/grants",
        br#"{"who":"nobody","target":"x","duration_secs":60,"reason":"x"}"#,
    );
    truncated.truncate(truncated.len() - 10);
    let answer = raw(&socket, &truncated, true);
    assert!(!answer.contains("201"), "{answer}");
    // Unknown endpoint and method.
    let answer = raw(
        &socket,
        b"GET /v1/nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        true,
    );
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    let answer = raw(
        &socket,
        b"DELETE /v1/grants HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        true,
    );
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    // Nothing changed, and the daemon still answers.
    let all = w.daemon.client(&["grants", "--all", "--json"]);
    assert!(all.trim().is_empty(), "a grant appeared: {all}");
    assert!(w.daemon.client(&["status"]).contains("running"));
    // A valid request over the raw socket still works.
    let body = format!(
        r#"{{"who":"nobody","target":"{}","duration_secs":60,"reason":"raw"}}"#,
        w.target
    );
    let answer = raw(&socket, &post("/v1/grants", body.as_bytes()), true);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
}

#[test]
fn a_grant_that_ends_while_the_daemon_is_down_gets_one_expiry_record_at_the_next_start() {
    let mut w = World::new(14, "lateexpiry", Behaviour::Http, "");
    let out = w.daemon.operator(&[
        "grant", "nobody", &w.target, "--for", "3s", "--reason", "short", "--json",
    ]);
    let grant: Value = serde_json::from_str(&out).unwrap();
    let id = grant["id"].as_i64().expect("grant id");
    let ends_at = unix_seconds(&grant["ends_at"]);
    w.daemon.stop().expect("clean stop");
    assert!(
        unix_now() < ends_at,
        "the daemon stopped only after the grant ended; the test needs it down by then"
    );
    // The point of the test: wall time passes the grant's end while no
    // daemon runs.
    while unix_now() <= ends_at {
        thread::sleep(Duration::from_millis(50));
    }
    w.daemon.restart().expect("start again on the same state");

    let expired = expired_records(&w, id);
    assert_eq!(expired.len(), 1, "one grant.expired record: {expired:?}");
    let detail = &expired[0]["detail"];
    assert_eq!(
        unix_seconds(&detail["ended_at"]).floor(),
        ends_at.floor(),
        "ended_at is when the grant ended: {detail}"
    );
    assert_eq!(detail["recorded_late"], true, "{detail}");
    assert!(
        unix_seconds(&expired[0]["time"]) > ends_at,
        "written at the start after its end: {}",
        expired[0]
    );
    w.daemon.wait_event("the note that it is late", |e| {
        e["grant_id"] == id && e["message"].as_str().is_some_and(|m| m.contains("late"))
    });

    // A start after that writes none again.
    w.daemon.restart().expect("restart");
    let again = expired_records(&w, id);
    assert_eq!(again.len(), 1, "recorded again at a later start: {again:?}");
}

#[test]
fn after_a_kill9_no_other_user_can_bind_the_port_connections_are_redirected_to() {
    let mut w = World::new(15, "portsquat", Behaviour::Http, "");
    let status: Value = serde_json::from_str(&w.daemon.client(&["status", "--json"])).unwrap();
    let port = listen_port(GRANTS_PORTS, 15);
    assert_eq!(status["listen_port"], port, "{status}");
    w.daemon.kill9();

    // The programs still redirect to the port; nobody tries to take it, on
    // both loopback addresses, from inside the watched cgroup.
    let script = format!(
        r#"
import errno, socket
for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    s = socket.socket(family)
    try:
        s.bind((host, {port}))
        s.listen()
        print("bound")
    except OSError as e:
        print(errno.errorcode.get(e.errno, e.errno))
    s.close()
"#
    );
    let (ok, out, err) = output(
        w.cgroup
            .command_as(NOBODY, NOBODY, PYTHON)
            .args(["-c", &script]),
    );
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["EACCES", "EACCES"],
        "nobody could bind port {port} while the daemon was down:\n{out}{err}"
    );
    // The port is free (root binds it), so the refusal is the privilege
    // check, not a port in use.
    let (ok, out, err) = output(w.cgroup.command(PYTHON).args(["-c", &script]));
    assert!(ok, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["bound", "bound"], "{err}");
}

/// The `grant.expired` records of grant `id`, via `jitproxy audit --json`.
fn expired_records(w: &World, id: i64) -> Vec<Value> {
    w.daemon
        .client(&["audit", "--grant", &id.to_string(), "--json"])
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("an audit record is JSON"))
        .filter(|r| r["type"] == "grant.expired")
        .collect()
}

/// An RFC 3339 time from the API as Unix seconds.
fn unix_seconds(value: &Value) -> f64 {
    let ts: jiff::Timestamp = value
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("not an RFC 3339 time: {value}"));
    ts.as_millisecond() as f64 / 1000.0
}

#[test]
fn the_metrics_endpoint_counts_by_target_and_reason_never_by_user() {
    let metrics = "127.0.56.9:9971";
    let w = World::new(
        16,
        "metrics",
        Behaviour::Http,
        &format!("metrics = \"{metrics}\""),
    );
    w.assert_refused(NOBODY, "no_grant");
    w.grant("nobody", "10m");
    assert!(w.curl_as(NOBODY));
    // Counted once the records are written.
    w.daemon
        .wait_event("closed", |e| e["event"] == "connection.closed");
    let (ok, text, err) =
        output(Command::new("curl").args(["-sS", "-m", "5", &format!("http://{metrics}/metrics")]));
    assert!(ok, "{err}");
    let target = &w.target;
    for series in [
        format!(
            r#"jitproxy_audit_events_total{{event="connection.allowed",target="{target}",code=""}} 1"#
        ),
        format!(
            r#"jitproxy_audit_events_total{{event="connection.denied",target="{target}",code="no_grant"}} 1"#
        ),
        format!(r#"jitproxy_connections_live{{target="{target}"}} 0"#),
        "jitproxy_grants_open 1".to_owned(),
        "jitproxy_kernel_redirected_total 2".to_owned(),
        "jitproxy_audit_fsync_seconds_bucket".to_owned(),
        "jitproxy_audit_queue_depth".to_owned(),
        "jitproxy_kernel_records_capacity".to_owned(),
    ] {
        assert!(text.contains(&series), "no `{series}` in:\n{text}");
    }
    assert!(
        !text.contains("nobody") && !text.contains("65534"),
        "a user is a label:\n{text}"
    );
    let (ok, _, _) =
        output(Command::new("curl").args(["-sSf", "-m", "5", &format!("http://{metrics}/other")]));
    assert!(!ok, "a path other than /metrics answered");
}

#[test]
fn a_reload_takes_a_new_target_list_without_cutting_a_live_connection() {
    let w = World::new(17, "reload", Behaviour::Stream, "");
    let new_api = Upstream::start(SocketAddr::from(([127, 0, 57, 3], 8080)), Behaviour::Http)
        .expect("second stand-in API");
    w.grant("nobody", "1h");
    let stream = w.streaming_client(NOBODY);
    wait_live(&w, 1);
    let path = w.daemon.config_path().expect("a config file").to_owned();
    let original = std::fs::read_to_string(&path).unwrap();
    let hangup = |what: &str, message: &str| {
        let before = w.daemon.events().len();
        let pid = i32::try_from(w.daemon.pid().unwrap()).unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let events = w.daemon.events();
            if let Some(e) = events[before.min(events.len())..]
                .iter()
                .find(|e| e["message"] == message)
            {
                return e.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no `{message}` after {what}:\n{}",
                w.daemon.log_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    };

    // A broken config is refused with its file, line and key; nothing changes.
    std::fs::write(
        &path,
        format!(
            "{original}\n[[target]]\nname = \"new-17\"\nhosts = [\"127.0.57.3\"]\nports = [0]\n"
        ),
    )
    .unwrap();
    let refused = hangup(
        "a broken config",
        "config reload refused; the running config is kept",
    );
    let error = refused["error"].as_str().unwrap();
    assert!(
        error.contains(":ports[0]") || error.contains("target[1].ports[0]"),
        "{error}"
    );
    assert!(error.contains(&path.display().to_string()), "{error}");
    // So is one that changes what takes a restart.
    std::fs::write(
        &path,
        original.replace(
            &format!("listen_port = {}", listen_port(GRANTS_PORTS, 17)),
            "listen_port = 999",
        ),
    )
    .unwrap();
    let refused = hangup(
        "a new listen port",
        "config reload refused; the running config is kept",
    );
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("listen_port changed"),
        "{refused}"
    );
    let status: Value = serde_json::from_str(&w.daemon.client(&["status", "--json"])).unwrap();
    assert_eq!(status["targets"].as_array().unwrap().len(), 1, "{status}");

    // A good one: the new target is watched at once.
    std::fs::write(
        &path,
        format!(
            "{original}\n[[target]]\nname = \"new-17\"\nhosts = [\"127.0.57.3\"]\nports = [8080]\n"
        ),
    )
    .unwrap();
    hangup("a good config", "config reloaded");
    let status: Value = serde_json::from_str(&w.daemon.client(&["status", "--json"])).unwrap();
    let names: Vec<&str> = status["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api-17", "new-17"], "{status}");
    let mut curl = w.cgroup.command_as(NOBODY, NOBODY, "curl");
    let url = format!("http://{}/x", new_api.addr());
    let (ok, _, _) = output(curl.args(["-sS", "-m", "5", &url]));
    assert!(!ok, "the new target was reachable without a grant");
    assert_eq!(
        new_api.accepted(),
        0,
        "a refused connection reached the new target"
    );
    w.daemon.wait_event("the new target's refusal", |e| {
        e["event"] == "connection.denied" && e["target_name"] == "new-17"
    });
    w.daemon.operator(&[
        "grant", "nobody", "new-17", "--for", "10m", "--reason", "INC-17",
    ]);
    let mut curl = w.cgroup.command_as(NOBODY, NOBODY, "curl");
    let (ok, out, err) = output(curl.args(["-sS", "-m", "5", &url]));
    assert!(
        ok && out.contains("hello from upstream"),
        "granted, but: {out}{err}"
    );

    // The live connection went on through all three reloads.
    let mut stream = stream;
    assert!(
        stream.try_wait().unwrap().is_none(),
        "a reload cut the live connection"
    );
    let _ = stream.kill();
    let _ = stream.wait();
}
