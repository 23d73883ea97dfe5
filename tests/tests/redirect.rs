//! End-to-end: the real eBPF programs on a real child cgroup, the real
//! daemon, real clients (curl, Python, Node) started inside the cgroup as
//! different uids. Needs root; run with `cargo xtask test`.
//!
//! Each test has its own index, which picks its cgroup, the daemon's listen
//! port (600 + index: the harness's port plan) and the stand-in API's
//! loopback address, so tests run in parallel.
// Test helpers panic on failure by design: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::{SocketAddr, TcpStream},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use jitproxy_e2e::{
    client_port, output, Behaviour, Cgroup, Daemon, Held, Upstream, NOBODY, PYTHON, REDIRECT_PORTS,
};
use serde_json::Value;

/// One test's world: a cgroup, a stand-in API, and jitproxy watching them.
struct World {
    api: Upstream,
    api6: Upstream,
    daemon: Daemon,
    cgroup: Cgroup,
}

/// The stand-in API of test `index`: 127.0.<10+index>.2:8080.
fn api_addr(index: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 10 + index, 2], 8080))
}

fn api6_addr(index: u8) -> SocketAddr {
    format!("[::1]:{}", 32_000 + u16::from(index))
        .parse()
        .expect("valid address")
}

fn listen_port(index: u8) -> u16 {
    jitproxy_e2e::listen_port(REDIRECT_PORTS, index)
}

fn config(index: u8, extra_hosts: &[&str]) -> String {
    let api = api_addr(index);
    let mut hosts = vec![format!("\"{}\"", api.ip())];
    hosts.extend(extra_hosts.iter().map(|h| format!("\"{h}\"")));
    // Limits high enough for the concurrency and churn tests.
    format!(
        "listen_port = {}\n\n[limits]\nconnections_per_second = 1000000.0\nburst = 1000000\nmax_concurrent = 100000\n\n\
         [[target]]\nname = \"api-{index}\"\nhosts = [{}]\nports = [{}]\n\n\
         [[target]]\nname = \"api6-{index}\"\nhosts = [\"::1\"]\nports = [{}]\n",
        listen_port(index),
        hosts.join(", "),
        api.port(),
        api6_addr(index).port(),
    )
}

impl World {
    fn new(index: u8, name: &str, behaviour: Behaviour) -> Self {
        Self::with_config(index, name, behaviour, &config(index, &[]))
    }

    fn with_config(index: u8, name: &str, behaviour: Behaviour, config: &str) -> Self {
        // These tests are about the redirect: every test user has a grant.
        Self::with_grants(index, name, behaviour, config, &["root", "nobody", "4242"])
    }

    /// A world where only `grantees` have grants (on both targets).
    fn with_grants(
        index: u8,
        name: &str,
        behaviour: Behaviour,
        config: &str,
        grantees: &[&str],
    ) -> Self {
        let api = Upstream::start(api_addr(index), behaviour).expect("stand-in API");
        let api6 = Upstream::start(api6_addr(index), behaviour).expect("IPv6 stand-in API on ::1");
        let cgroup = Cgroup::create(name).expect("test cgroup");
        let daemon = Daemon::start(&cgroup, Some(config)).expect("daemon starts");
        for &who in grantees {
            for target in [format!("api-{index}"), format!("api6-{index}")] {
                daemon.operator(&["grant", who, &target, "--for", "1h", "--reason", "e2e"]);
            }
        }
        Self {
            api,
            api6,
            daemon,
            cgroup,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api.addr())
    }
}

/// curl inside the cgroup; returns (success, body, local port of the connection).
fn curl(cmd: &mut Command, url: &str) -> (bool, String, u16) {
    let (ok, out, err) = output(cmd.args(["-sS", "-m", "5", "-w", "\n%{local_port}", url]));
    let (body, port) = out.rsplit_once('\n').unwrap_or((&out, ""));
    (
        ok,
        if ok { body.to_owned() } else { err },
        port.trim().parse().unwrap_or(0),
    )
}

#[test]
fn ipv4_target_is_redirected_with_caller_identity() {
    let w = World::new(1, "ipv4", Behaviour::Http);
    let mut cmd = w.cgroup.command("curl");
    let (ok, body, port) = curl(&mut cmd, &w.url("/v1/ping"));
    assert!(
        ok,
        "curl through jitproxy failed: {body}\n{}",
        w.daemon.log_text()
    );
    assert_eq!(body.trim(), "hello from upstream path=/v1/ping");

    let event = w.daemon.wait_event("connection.allowed", |e| {
        e["event"] == "connection.allowed" && client_port(e) == port
    });
    assert_eq!(event["dst"], w.api.addr().to_string());
    assert_eq!(event["target_name"], "api-1");
    assert_eq!(event["uid"], 0);
    assert_eq!(event["gid"], 0);
    assert_eq!(event["user"], "root");
    assert_eq!(event["comm"], "curl");
    assert_eq!(event["exe"], "/usr/bin/curl");
    let cgroup_rel = format!(
        "/jitproxy-test/{}",
        w.cgroup.path().file_name().unwrap().to_string_lossy()
    );
    assert_eq!(event["cgroup"], cgroup_rel.as_str());
    // The pid is curl's own: the `sh` wrapper execs it in place.
    let pid = event["pid"].as_i64().unwrap();
    assert!(pid > 1, "pid {pid}");
    assert_eq!(event["pid"], event["tid"], "curl is single-threaded here");
    w.daemon.wait_event("connection.closed", |e| {
        e["event"] == "connection.closed" && client_port(e) == port
    });
}

#[test]
fn curl_pid_is_recorded() {
    let w = World::new(2, "pid", Behaviour::Http);
    let mut child = w
        .cgroup
        .command("curl")
        .args(["-sS", "-m", "5", "-o", "/dev/null", &w.url("/pid")])
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(child.wait().unwrap().success());
    let event = w.daemon.wait_event("allowed for curl's pid", |e| {
        e["event"] == "connection.allowed" && e["pid"] == i64::from(pid)
    });
    assert_eq!(event["comm"], "curl");
}

#[test]
fn ipv6_target_is_redirected() {
    let w = World::new(3, "ipv6", Behaviour::Http);
    let api6 = &w.api6;
    let url = format!("http://{}/v6", api6.addr());
    let (ok, body, port) = curl(&mut w.cgroup.command("curl"), &url);
    assert!(ok, "curl over IPv6 failed: {body}");
    assert_eq!(body.trim(), "hello from upstream path=/v6");
    let event = w.daemon.wait_event("IPv6 allowed", |e| {
        e["event"] == "connection.allowed" && client_port(e) == port
    });
    assert_eq!(event["dst"], api6.addr().to_string());
    assert_eq!(event["target_name"], "api6-3");
}

#[test]
fn ipv4_mapped_connect_is_redirected_and_getpeername_shows_original() {
    let w = World::new(4, "mapped", Behaviour::Http);
    let api = w.api.addr();
    let script = format!(
        r#"
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.connect(("::ffff:{ip}", {port}))
print("peer", s.getpeername()[0], s.getpeername()[1])
print("local", s.getsockname()[1])
s.sendall(b"GET /mapped HTTP/1.1\r\nHost: x\r\n\r\n")
data = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
print("body", data.decode().split("\r\n\r\n", 1)[1].strip())
v4 = socket.create_connection(("{ip}", {port}))
print("peer4", v4.getpeername()[0], v4.getpeername()[1])
"#,
        ip = api.ip(),
        port = api.port()
    );
    let (ok, out, err) = output(w.cgroup.command(PYTHON).args(["-c", &script]));
    assert!(ok, "python failed: {err}\n{}", w.daemon.log_text());
    assert!(
        out.contains(&format!("peer ::ffff:{} {}", api.ip(), api.port())),
        "{out}"
    );
    assert!(
        out.contains(&format!("peer4 {} {}", api.ip(), api.port())),
        "{out}"
    );
    assert!(
        out.contains("body hello from upstream path=/mapped"),
        "{out}"
    );
    let local: u16 = out
        .lines()
        .find_map(|l| l.strip_prefix("local "))
        .and_then(|p| p.trim().parse().ok())
        .expect("local port");
    let event = w.daemon.wait_event("mapped allowed", |e| {
        e["event"] == "connection.allowed" && client_port(e) == local
    });
    assert_eq!(
        event["dst"],
        format!("[::ffff:{}]:{}", api.ip(), api.port())
    );
    assert_eq!(event["comm"], "python3");
}

#[test]
fn udp_to_a_target_is_refused() {
    let w = World::new(5, "udp", Behaviour::Http);
    let api = w.api.addr();
    let script = format!(
        r#"
import socket
def attempt(name, fn):
    try:
        fn()
        print(name, "sent")
    except PermissionError:
        print(name, "EPERM")
u4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
attempt("connect4", lambda: u4.connect(("{ip}", {port})))
u4b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
attempt("sendto4", lambda: u4b.sendto(b"x", ("{ip}", {port})))
u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
attempt("connect6", lambda: u6.connect(("::1", {port6})))
u6b = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
attempt("sendto6", lambda: u6b.sendto(b"x", ("::1", {port6})))
m = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
attempt("connect-mapped", lambda: m.connect(("::ffff:{ip}", {port})))
mb = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
attempt("sendto-mapped", lambda: mb.sendto(b"x", ("::ffff:{ip}", {port})))
other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
attempt("non-target", lambda: other.sendto(b"x", ("{ip}", {other_port})))
"#,
        ip = api.ip(),
        port = api.port(),
        port6 = api6_addr(5).port(),
        other_port = api.port() + 1,
    );
    let (ok, out, err) = output(w.cgroup.command(PYTHON).args(["-c", &script]));
    assert!(ok, "python failed: {err}");
    for refused in [
        "connect4",
        "sendto4",
        "connect6",
        "sendto6",
        "connect-mapped",
        "sendto-mapped",
    ] {
        assert!(
            out.contains(&format!("{refused} EPERM")),
            "{refused} not refused:\n{out}"
        );
    }
    assert!(
        out.contains("non-target sent"),
        "UDP to a non-target was refused:\n{out}"
    );
}

#[test]
fn non_targets_and_processes_outside_the_cgroup_are_untouched() {
    let w = World::new(6, "untouched", Behaviour::Http);
    // Same address, other port: not a target.
    let other = Upstream::start(SocketAddr::new(w.api.addr().ip(), 8081), Behaviour::Http).unwrap();
    let (ok, body, other_port) = curl(
        &mut w.cgroup.command("curl"),
        &format!("http://{}/other", other.addr()),
    );
    assert!(ok, "{body}");
    // The target, from a process outside the watched cgroup.
    let (ok, body, outside_port) = curl(&mut Command::new("curl"), &w.url("/outside"));
    assert!(ok, "{body}");
    assert_eq!(body.trim(), "hello from upstream path=/outside");
    // Both went direct: the peer each upstream saw is the client itself.
    assert_eq!(
        other.peers().iter().map(|p| p.port()).collect::<Vec<_>>(),
        [other_port]
    );
    assert_eq!(
        w.api.peers().iter().map(|p| p.port()).collect::<Vec<_>>(),
        [outside_port]
    );
    // A redirected connection after them: once the daemon has recorded
    // it, it has recorded anything it saw before, and that is nothing else.
    let (ok, body, marker) = curl(&mut w.cgroup.command("curl"), &w.url("/marker"));
    assert!(ok, "{body}");
    w.daemon.wait_event("the marker", |e| {
        e["event"] == "connection.allowed" && client_port(e) == marker
    });
    assert_eq!(
        w.daemon.events_of("connection.allowed").len(),
        1,
        "the daemon saw connections it should not have:\n{}",
        w.daemon.log_text()
    );
}

#[test]
fn the_proxy_upstream_connection_is_not_looped() {
    let w = World::new(7, "loop", Behaviour::Http);
    let (ok, body, port) = curl(&mut w.cgroup.command("curl"), &w.url("/loop"));
    assert!(ok, "{body}");
    let event = w.daemon.wait_event("closed", |e| {
        e["event"] == "connection.closed" && client_port(e) == port
    });
    // Exactly one connection reached the proxy and exactly one the API, and
    // the API's peer is the proxy's upstream socket.
    assert_eq!(
        w.daemon.events_of("connection.allowed").len(),
        1,
        "{}",
        w.daemon.log_text()
    );
    assert_eq!(w.api.accepted(), 1);
    let upstream_local = Daemon::detail(&event)["upstream_local"]
        .as_str()
        .expect("the closed record names the upstream socket")
        .to_owned();
    assert_eq!(w.api.peers()[0].to_string(), upstream_local);
    // The kernel counted curl's connect as redirected. (The proxy's own
    // upstream connect is not counted as exempt here: the daemon runs
    // outside the test's cgroup, so the programs never see it.)
    let status: Value = serde_json::from_str(&w.daemon.client(&["status", "--json"])).unwrap();
    let kernel = &status["kernel"];
    assert!(kernel["redirected"].as_u64() >= Some(1), "{kernel}");
    let text = w.daemon.client(&["status"]);
    assert!(
        text.contains("kernel: "),
        "status shows the counters:\n{text}"
    );
}

#[test]
fn a_connection_without_a_kernel_record_is_refused() {
    let w = World::new(8, "norecord", Behaviour::Http);
    // Straight to the proxy's listener, not through the redirect.
    let direct = TcpStream::connect(("127.0.0.1", listen_port(8))).expect("proxy listens");
    direct
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 16];
    let read = std::io::Read::read(&mut &direct, &mut buf);
    // A reset: not an answer, not a clean close, not a timeout.
    assert!(
        read.as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the proxy did not reset a connection it had no record of: {read:?}"
    );
    let port = direct.local_addr().unwrap().port();
    let event = w.daemon.wait_event("denied", |e| {
        e["event"] == "connection.denied" && client_port(e) == port
    });
    assert_eq!(event["code"], "no_record", "{event}");
    assert_eq!(
        event["reason"],
        "no kernel record for this connection: it did not come through the redirect, or its client closed before the proxy accepted it"
    );
    assert_eq!(w.api.accepted(), 0, "something reached the API");
}

#[test]
fn killed_daemon_fails_closed_and_restart_takes_over() {
    let mut w = World::new(9, "kill9", Behaviour::Http);
    let (ok, body, _) = curl(&mut w.cgroup.command("curl"), &w.url("/before"));
    assert!(ok, "{body}");

    w.daemon.kill9();
    for url in [w.url("/down"), format!("http://{}/down6", api6_addr(9))] {
        let (ok, err, _) = curl(&mut w.cgroup.command("curl"), &url);
        assert!(!ok, "{url} reachable while the daemon was down");
        assert!(
            err.contains("Couldn't connect") || err.contains("refused"),
            "{err}"
        );
    }
    let api_before = w.api.accepted();
    assert_eq!(
        (api_before, w.api6.accepted()),
        (1, 0),
        "a connection went direct while the daemon was down"
    );

    w.daemon.restart().expect("restart");
    let (ok, body, port) = curl(&mut w.cgroup.command("curl"), &w.url("/after"));
    assert!(ok, "after restart: {body}\n{}", w.daemon.log_text());
    w.daemon.wait_event("allowed after restart", |e| {
        e["event"] == "connection.allowed" && client_port(e) == port
    });
}

#[test]
fn a_second_daemon_on_the_same_cgroup_is_refused() {
    let w = World::new(10, "second", Behaviour::Http);
    let mut second = Command::new(jitproxy_e2e::jitproxy_bin());
    second.args(["run", "--cgroup"]).arg(w.cgroup.path());
    let (ok, _, err) = output(&mut second);
    assert!(!ok, "a second daemon started");
    assert!(err.contains("already watches cgroup"), "{err}");
    // The first one still works.
    let (ok, body, _) = curl(&mut w.cgroup.command("curl"), &w.url("/still"));
    assert!(ok, "{body}");
}

#[test]
fn uninstall_detaches_so_connections_go_direct() {
    let mut w = World::new(11, "uninstall", Behaviour::Http);
    w.daemon.stop().expect("clean stop");
    let (ok, _, _) = curl(&mut w.cgroup.command("curl"), &w.url("/stopped"));
    assert!(!ok, "a clean stop must also leave targets closed");
    let out = w.daemon.cli(&["uninstall"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("detached 8 program(s)"));
    let (ok, body, _) = curl(&mut w.cgroup.command("curl"), &w.url("/direct"));
    assert!(ok, "{body}");
    assert_eq!(w.api.accepted(), 1);
}

#[test]
fn other_uids_are_identified() {
    let w = World::new(12, "uids", Behaviour::Http);
    let api = w.api.addr();
    // Python as nobody.
    let script = format!(
        "import socket\ns=socket.create_connection(('{}', {}))\nprint(s.getsockname()[1])\ns.sendall(b'GET /py HTTP/1.0\\r\\n\\r\\n')\nprint(s.recv(4096).decode().splitlines()[0])",
        api.ip(),
        api.port()
    );
    let (ok, out, err) = output(
        w.cgroup
            .command_as(NOBODY, NOBODY, PYTHON)
            .args(["-c", &script]),
    );
    assert!(ok, "{err}");
    let port: u16 = out.lines().next().unwrap().trim().parse().unwrap();
    let event = w.daemon.wait_event("python as nobody", |e| {
        e["event"] == "connection.allowed" && client_port(e) == port
    });
    assert_eq!(event["uid"], NOBODY);
    assert_eq!(event["gid"], NOBODY);
    assert_eq!(event["user"], "nobody");
    assert_eq!(event["exe"], "/usr/bin/python3.11");

    // Node as uid 4242 (no user name).
    let js = format!(
        "const net=require('net');const s=net.connect({{host:'{}',port:{}}},()=>{{console.log(s.localPort);s.end('GET /node HTTP/1.0\\r\\n\\r\\n')}});s.on('data',d=>process.stdout.write(''));",
        api.ip(),
        api.port()
    );
    let (ok, out, err) = output(w.cgroup.command_as(4242, 4242, "node").args(["-e", &js]));
    assert!(ok, "{err}");
    let port: u16 = out.lines().next().unwrap().trim().parse().unwrap();
    let event = w.daemon.wait_event("node as 4242", |e| {
        e["event"] == "connection.allowed" && client_port(e) == port
    });
    assert_eq!(event["uid"], 4242);
    assert!(event["user"].is_null(), "uid 4242 has no name: {event}");
    assert_eq!(event["comm"], "node");
}

#[test]
fn two_hundred_concurrent_connections_each_keep_their_identity() {
    let w = World::new(13, "concurrent", Behaviour::Http);
    let children: Vec<(u32, u32, std::process::Child)> = (0..200u32)
        .map(|i| {
            let uid = if i % 2 == 0 { 0 } else { NOBODY };
            let mut cmd = if uid == 0 {
                w.cgroup.command("curl")
            } else {
                w.cgroup.command_as(NOBODY, NOBODY, "curl")
            };
            let child = cmd
                .args([
                    "-sS",
                    "-m",
                    "20",
                    "-w",
                    "\n%{local_port}",
                    &w.url(&format!("/token-{i}")),
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn curl");
            (i, uid, child)
        })
        .collect();
    let mut expect = Vec::new();
    for (i, uid, child) in children {
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "curl {i} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (body, port) = text.rsplit_once('\n').unwrap();
        assert_eq!(
            body.trim(),
            format!("hello from upstream path=/token-{i}"),
            "cross-wired response"
        );
        expect.push((pid, uid, port.trim().parse::<u16>().unwrap()));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let allowed = loop {
        let allowed = w.daemon.events_of("connection.allowed");
        if allowed.len() >= 200 || Instant::now() > deadline {
            break allowed;
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(allowed.len(), 200);
    for (pid, uid, port) in expect {
        let event = allowed
            .iter()
            .find(|e| client_port(e) == port)
            .unwrap_or_else(|| panic!("no event for client port {port}"));
        assert_eq!(event["pid"], i64::from(pid), "wrong pid for port {port}");
        assert_eq!(event["uid"], i64::from(uid), "wrong uid for port {port}");
    }
}

#[test]
fn a_hundred_mebibytes_match_both_ways_with_half_close() {
    const SIZE: usize = 100 << 20;
    let w = World::new(14, "bulk", Behaviour::Bulk(SIZE));
    let api = w.api.addr();
    let script = format!(
        r#"
import hashlib, os, socket
s = socket.create_connection(("{ip}", {port}))
sent = hashlib.sha256()
chunk = os.urandom(1 << 20)
for i in range({mib}):
    block = bytes([i % 256]) + chunk[1:]
    s.sendall(block)
    sent.update(block)
s.shutdown(socket.SHUT_WR)
f = s.makefile("rb")
echo = f.readline().decode().strip()
got = hashlib.sha256()
n = 0
while True:
    data = f.read(1 << 20)
    if not data:
        break
    got.update(data)
    n += len(data)
print(sent.hexdigest(), echo, got.hexdigest(), n)
"#,
        ip = api.ip(),
        port = api.port(),
        mib = SIZE >> 20
    );
    let (ok, out, err) = output(w.cgroup.command(PYTHON).args(["-c", &script]));
    assert!(ok, "{err}\n{}", w.daemon.log_text());
    let fields: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(fields.len(), 4, "{out}");
    assert_eq!(
        fields[0], fields[1],
        "upstream received different bytes than the client sent"
    );
    assert_eq!(fields[3], SIZE.to_string(), "short download");
    assert_eq!(
        w.api.bulk_sent(),
        vec![fields[2].to_owned()],
        "client received different bytes"
    );
    let closed = w
        .daemon
        .wait_event("closed", |e| e["event"] == "connection.closed");
    assert_eq!(closed["bytes_up"], SIZE as u64);
    assert_eq!(closed["bytes_down"], (SIZE + 65) as u64);
}

#[test]
fn record_maps_are_empty_after_a_hundred_thousand_connections() {
    let w = World::new(15, "churn", Behaviour::Close);
    // 100k short connections from 4 threads; SO_LINGER 0 closes with a reset
    // so no TIME_WAIT sockets pile up on loopback.
    let api = w.api.addr();
    let script = format!(
        r#"
import socket, struct, threading
failures = []
def run(n):
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        try:
            s.connect(("{ip}", {port}))
        except OSError as e:
            failures.append(e)
        s.close()
threads = [threading.Thread(target=run, args=(25000,)) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print("failures", len(failures), failures[:3])
"#,
        ip = api.ip(),
        port = api.port()
    );
    let redirected = |w: &World| status(w)["kernel"]["redirected"].as_u64().unwrap_or(0);
    let before = redirected(&w);
    let (ok, out, err) = output(w.cgroup.command(PYTHON).args(["-c", &script]));
    assert!(ok, "{err}");
    assert!(out.starts_with("failures 0"), "{out}");
    // Each connection was redirected, so each had its record.
    assert!(
        redirected(&w) - before >= 100_000,
        "only {} of 100000 connections were redirected",
        redirected(&w) - before
    );
    // Records go when sockets are released; give the daemon time to finish.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let counts = w.daemon.record_counts().expect("read pinned maps");
        if counts == (0, 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "record maps not empty: {counts:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn dns_names_are_resolved_into_targets() {
    // `localhost` resolves (from /etc/hosts) to 127.0.0.1 and ::1. The
    // port is below the ephemeral range (32768-60999 here), so no client
    // socket of a test running beside this one can hold it.
    let index = 26;
    let port = 31_000 + u16::from(index);
    let api = Upstream::start(SocketAddr::from(([127, 0, 0, 1], port)), Behaviour::Http).unwrap();
    let cgroup = Cgroup::create("dns").unwrap();
    let config = format!(
        "listen_port = {}\nresolve_interval = \"1s\"\n[[target]]\nname = \"by-name\"\nhosts = [\"localhost\"]\nports = [{port}]\n",
        listen_port(index)
    );
    let daemon = Daemon::start(&cgroup, Some(&config)).unwrap();
    daemon.operator(&["grant", "root", "by-name", "--for", "1h", "--reason", "e2e"]);
    let (ok, body, p) = curl(
        &mut cgroup.command("curl"),
        &format!("http://127.0.0.1:{port}/byname"),
    );
    assert!(ok, "{body}");
    let event = daemon.wait_event("by name", |e| {
        e["event"] == "connection.allowed" && client_port(e) == p
    });
    assert_eq!(event["target_name"], "by-name");
    assert_eq!(api.accepted(), 1);
}

/// Python that disconnects socket `s` with `connect(AF_UNSPEC)`: the
/// connection is reset and ends, but the descriptor stays open.
const DISCONNECT_PY: &str = r#"
import ctypes
_libc = ctypes.CDLL(None, use_errno=True)
def disconnect(s):
    unspec = (ctypes.c_ubyte * 16)()
    if _libc.connect(s.fileno(), unspec, 16) != 0:
        raise OSError(ctypes.get_errno(), "connect(AF_UNSPEC)")
"#;

/// As `nobody` in the world's cgroup: an HTTP request from a socket of
/// `family` bound to `bind`, to `to`; prints `got N` (bytes answered) or
/// `reset`, and what went wrong otherwise.
fn request_from(w: &World, family: &str, bind: (&str, u16), to: (&str, u16), path: &str) -> String {
    let script = format!(
        r#"
import socket
s = socket.socket(socket.{family})
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("{bind_host}", {bind_port}))
s.settimeout(5)
try:
    s.connect(("{to_host}", {to_port}))
    s.sendall(b"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")
    print("got", len(s.recv(4096)))
except ConnectionResetError:
    print("reset")
"#,
        bind_host = bind.0,
        bind_port = bind.1,
        to_host = to.0,
        to_port = to.1,
    );
    let (_, out, err) = output(
        w.cgroup
            .command_as(NOBODY, NOBODY, PYTHON)
            .args(["-c", &script]),
    );
    format!("{out}{err}")
}

/// The daemon's `status --json`.
fn status(w: &World) -> Value {
    serde_json::from_str(&w.daemon.client(&["status", "--json"])).expect("status JSON")
}

/// (records, tuples) in the kernel maps as `status` reports them, and as
/// the pinned maps themselves hold them.
fn record_counts(w: &World) -> [(u64, u64); 2] {
    let kernel = &status(w)["kernel"];
    let status = (
        kernel["records"]
            .as_u64()
            .expect("status shows kernel.records"),
        kernel["tuples"]
            .as_u64()
            .expect("status shows kernel.tuples"),
    );
    let (records, tuples) = w.daemon.record_counts().expect("read the pinned maps");
    [status, (records as u64, tuples as u64)]
}

/// Waits until the record counts are `before` again (the proxy finishes
/// the last connections meanwhile: their records go when they close).
fn wait_counts_back(w: &World, before: [(u64, u64); 2]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while record_counts(w) != before {
        assert!(
            Instant::now() < deadline,
            "records [status, maps] {:?} != {before:?} before",
            record_counts(w)
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn unspecified_destinations_are_matched_as_the_address_they_reach() {
    // The target also covers 127.0.0.1, where a socket bound to a broadcast
    // address (or an IPv6 one, for `::ffff:0.0.0.0`) really connects.
    let w = World::with_grants(
        16,
        "unspec",
        Behaviour::Http,
        &config(16, &["127.0.0.1"]),
        &[],
    );
    let api = w.api.addr();
    let loopback = Upstream::start(
        SocketAddr::from(([127, 0, 0, 1], api.port())),
        Behaviour::Http,
    )
    .expect("stand-in API on 127.0.0.1");
    let api6 = w.api6.addr();
    // 0.0.0.0 from a socket bound to the target's address reaches the target.
    let (ok, body, _) = curl(
        w.cgroup
            .command_as(NOBODY, NOBODY, "curl")
            .args(["--interface", &api.ip().to_string()]),
        &format!("http://0.0.0.0:{}/v4-any", api.port()),
    );
    assert!(!ok, "0.0.0.0 reached the target without a grant: {body}");
    // `::` is ::1.
    let (ok, body, _) = curl(
        &mut w.cgroup.command_as(NOBODY, NOBODY, "curl"),
        &format!("http://[::]:{}/v6-any", api6.port()),
    );
    assert!(!ok, "[::] reached the target without a grant: {body}");
    // `::ffff:0.0.0.0` from an IPv6 socket bound to the target's mapped address.
    let out = request_from(
        &w,
        "AF_INET6",
        (&format!("::ffff:{}", api.ip()), 0),
        ("::ffff:0.0.0.0", api.port()),
        "/mapped-any",
    );
    assert!(out.contains("reset") || out.contains("got 0"), "{out}");

    // Bound where the bound address is not what the kernel connects to.
    for (family, bind) in [("AF_INET", "255.255.255.255"), ("AF_INET6", "::1")] {
        let to = if family == "AF_INET" {
            "0.0.0.0"
        } else {
            "::ffff:0.0.0.0"
        };
        let out = request_from(&w, family, (bind, 0), (to, api.port()), "/ambiguous");
        assert!(
            out.contains("PermissionError") || out.contains("reset"),
            "{family} bound to {bind}, to {to}: {out}"
        );
    }
    assert_eq!(
        loopback.accepted(),
        0,
        "127.0.0.1 was reached: {:?}",
        loopback.paths()
    );
    assert_eq!(
        w.api.accepted(),
        0,
        "the IPv4 target was reached: {:?}",
        w.api.paths()
    );
    assert_eq!(w.api6.accepted(), 0, "the IPv6 target was reached");
    // Each went to the proxy, and was refused as the address it would have reached.
    for dst in [
        api.to_string(),
        api6.to_string(),
        format!("[::ffff:{}]:{}", api.ip(), api.port()),
    ] {
        let denied = w.daemon.wait_event(&format!("denied to {dst}"), |e| {
            e["event"] == "connection.denied" && e["dst"] == dst.as_str()
        });
        assert_eq!(denied["code"], "no_grant", "{denied}");
        assert_eq!(denied["uid"], NOBODY, "{denied}");
    }
    assert!(status(&w)["kernel"]["unspecified"].as_u64() >= Some(3));
}

#[test]
fn udp_to_unspecified_addresses_is_refused() {
    let w = World::with_grants(17, "unspecudp", Behaviour::Http, &config(17, &[]), &[]);
    let api = w.api.addr();
    let port6 = api6_addr(17).port();
    let script = format!(
        r#"
import socket
ip, port, port6 = "{ip}", {port}, {port6}
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind((ip, port))
rx6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
rx6.bind(("::1", port6))
results = []
def attempt(name, f):
    try:
        f()
        results.append(name + " sent")
    except PermissionError:
        results.append(name + " EPERM")
    except OSError as e:
        results.append(name + " " + str(e))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((ip, 0))
attempt("sendto-0.0.0.0-bound", lambda: s.sendto(b"x", ("0.0.0.0", port)))
s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
attempt("sendto-::", lambda: s6.sendto(b"x", ("::", port6)))
c6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
attempt("connect-::", lambda: (c6.connect(("::", port6)), c6.send(b"x")))
m = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
m.bind(("::ffff:" + ip, 0))
attempt("sendto-mapped-0.0.0.0-bound", lambda: m.sendto(b"x", ("::ffff:0.0.0.0", port)))
got = 0
for r in (rx, rx6):
    r.settimeout(0.5)
    try:
        while True:
            r.recv(10)
            got += 1
    except socket.timeout:
        pass
print(" | ".join(results))
print("received", got)
"#,
        ip = api.ip(),
        port = api.port(),
    );
    let (ok, out, err) = output(
        w.cgroup
            .command_as(NOBODY, NOBODY, PYTHON)
            .args(["-c", &script]),
    );
    assert!(ok, "{err}");
    let mut lines = out.lines();
    let results = lines.next().unwrap_or_default();
    for attempt in results.split(" | ") {
        assert!(
            attempt.ends_with(" EPERM"),
            "not refused: {attempt} (all: {results})"
        );
    }
    assert_eq!(results.split(" | ").count(), 4, "{results}");
    assert_eq!(
        lines.next(),
        Some("received 0"),
        "a datagram reached a target"
    );
    // The kernel says why, in the daemon log (aya-log, rate-limited).
    let said = w.daemon.wait_event("the kernel's UDP refusal", |e| {
        e["target"] == "jitproxy::kernel"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("refused UDP to target"))
    });
    assert!(
        said["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("for uid {NOBODY}"))),
        "{said}"
    );
}

#[test]
fn a_replayed_tuple_is_refused_and_recorded_also_after_a_restart() {
    let mut w = World::with_grants(18, "replay", Behaviour::Http, &config(18, &[]), &["root"]);
    let api = w.api.addr();
    // The victim (root, granted) connects, gets its answer, then disconnects
    // with AF_UNSPEC: its connection is gone, its descriptor stays open.
    let victim = format!(
        r#"{DISCONNECT_PY}
import socket, sys, time
s = socket.socket()
s.connect(("{ip}", {port}))
s.sendall(b"GET /victim HTTP/1.1\r\nHost: x\r\n\r\n")
s.recv(4096)
print(s.getsockname()[1], flush=True)
disconnect(s)
print("disconnected", flush=True)
sys.stdin.read()
"#,
        ip = api.ip(),
        port = api.port()
    );
    let mut victim = Held::start(w.cgroup.command(PYTHON).args(["-c", &victim]));
    let victim_port: u16 = victim
        .line()
        .trim()
        .parse()
        .expect("the victim's local port");
    assert_eq!(victim.line(), "disconnected");
    assert_eq!(w.api.paths(), ["/victim"]);

    // nobody (no grant) connects straight to the proxy from the victim's
    // 4-tuple: the proxy must not take it for the victim's connection.
    let replay = |w: &World, path: &str| {
        let out = request_from(
            w,
            "AF_INET",
            ("127.0.0.1", victim_port),
            ("127.0.0.1", listen_port(18)),
            path,
        );
        assert!(out.contains("reset") || out.contains("got 0"), "{out}");
        let denied = w.daemon.wait_event("the replay refused", |e| {
            e["event"] == "connection.denied" && client_port(e) == victim_port
        });
        assert_eq!(denied["code"], "no_record", "{denied}");
        assert!(denied["uid"].is_null(), "no identity is lent: {denied}");
    };
    replay(&w, "/replay");
    w.daemon.stop().expect("clean stop");
    w.daemon.restart().expect("restart");
    replay(&w, "/replay-after-restart");
    assert_eq!(w.api.paths(), ["/victim"], "a replay reached the target");
    drop(victim);
}

#[test]
fn records_stay_exact_over_reconnects_and_mptcp() {
    let w = World::with_grants(19, "exact", Behaviour::Close, &config(19, &[]), &["root"]);
    let api = w.api.addr();
    let before = record_counts(&w);
    let script = format!(
        r#"{DISCONNECT_PY}
import socket, sys
s = socket.socket()
for _ in range(300):
    s.connect(("{ip}", {port}))
    disconnect(s)
# MPTCP: refused, whether the client or the target ends first (a subflow
# is a kernel socket; one the client closes first never reports TCP_CLOSE).
refused = 0
for _ in range(300):
    m = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_MPTCP)
    try:
        m.connect(("{ip}", {port}))
    except PermissionError:
        refused += 1
    m.close()
print("mptcp refused", refused, flush=True)
sys.stdin.read()
"#,
        ip = api.ip(),
        port = api.port()
    );
    let mut client = Held::start(w.cgroup.command(PYTHON).args(["-c", &script]));
    let line = client.line();
    assert_eq!(line, "mptcp refused 300");
    // The reconnecting socket is still open: only exact bookkeeping can have
    // removed its 300 records.
    // The proxy finishes the last connections meanwhile (their records go
    // when they close), so wait for the counts to come back.
    wait_counts_back(&w, before);
    // Each TCP connect was redirected into the proxy, each MPTCP one
    // refused in the kernel: no way around it.
    let kernel = status(&w)["kernel"].clone();
    assert!(kernel["redirected"].as_u64() >= Some(300), "{kernel}");
    assert_eq!(kernel["mptcp_refused"], 300, "{kernel}");
    w.daemon.wait_event("the kernel's MPTCP refusal", |e| {
        e["target"] == "jitproxy::kernel"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("refused MPTCP"))
    });
    drop(client);
}

#[test]
fn one_uid_cannot_fill_the_record_maps_for_everyone() {
    let config = format!(
        "max_records_per_uid = 20
{}",
        config(20, &[])
    );
    let w = World::with_grants(
        20,
        "uidcap",
        Behaviour::Stream,
        &config,
        &["root", "nobody"],
    );
    let api = w.api.addr();
    let flood = format!(
        r#"
import socket, sys
held, refused = [], 0
for _ in range(30):
    s = socket.socket()
    try:
        s.connect(("{ip}", {port}))
        held.append(s)
    except PermissionError:
        refused += 1
# MPTCP would leave records behind for good: refused outright.
mptcp_refused = 0
for _ in range(30):
    m = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_MPTCP)
    try:
        m.connect(("{ip}", {port}))
        held.append(m)
    except PermissionError:
        mptcp_refused += 1
print(len(held), refused, mptcp_refused, flush=True)
sys.stdin.read()
"#,
        ip = api.ip(),
        port = api.port()
    );
    let mut flooder = Held::start(
        w.cgroup
            .command_as(NOBODY, NOBODY, PYTHON)
            .args(["-c", &flood]),
    );
    let line = flooder.line();
    assert_eq!(
        line, "20 10 30",
        "nobody must hold 20 records at most, MPTCP none"
    );
    // Another user still gets through.
    let other = format!(
        r#"
import socket
s = socket.create_connection(("{ip}", {port}), timeout=5)
print("ok", len(s.recv(16)) > 0)
"#,
        ip = api.ip(),
        port = api.port()
    );
    let (ok, out, err) = output(w.cgroup.command(PYTHON).args(["-c", &other]));
    assert!(
        ok && out.contains("ok True"),
        "root was shut out: {out}{err}"
    );
    let kernel = status(&w)["kernel"].clone();
    assert!(kernel["uid_full"].as_u64() >= Some(10), "{kernel}");
    w.daemon.wait_event("the kernel's per-uid refusal", |e| {
        e["target"] == "jitproxy::kernel"
            && e["message"].as_str().is_some_and(|m| {
                m.contains("max_records_per_uid") && m.contains(&format!("uid {NOBODY}"))
            })
    });
    assert!(
        kernel["records_by_uid"]
            .as_array()
            .is_some_and(|by| by.iter().any(|e| e[0] == NOBODY && e[1] == 20)),
        "{kernel}"
    );
    drop(flooder);
}

#[test]
fn uninstall_stale_removes_the_pins_of_removed_cgroups() {
    use std::os::unix::fs::MetadataExt as _;
    let mut w = World::new(21, "stale", Behaviour::Http);
    let id = std::fs::metadata(w.cgroup.path()).expect("cgroup").ino();
    let pins_of = |id: u64| {
        std::fs::read_dir("/sys/fs/bpf/jitproxy")
            .map(|dirs| {
                dirs.filter_map(Result::ok)
                    .filter(|d| {
                        d.file_name()
                            .to_string_lossy()
                            .ends_with(&format!("-cg{id}"))
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(pins_of(id), 1, "the daemon pinned its programs");
    // The daemon dies and its cgroup is removed: the pins stay behind.
    w.daemon.kill9();
    std::fs::remove_dir(w.cgroup.path()).expect("remove the (empty) cgroup");
    assert_eq!(pins_of(id), 1);

    let out = Command::new(w.daemon.bin())
        .args(["uninstall", "--stale"])
        .output()
        .expect("run jitproxy uninstall --stale");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("removed the pins of"), "{stdout}");
    assert_eq!(pins_of(id), 0, "the removed cgroup's pins are still there");
}

#[test]
fn connections_opened_before_start_are_ended_at_start() {
    let api = Upstream::start(api_addr(22), Behaviour::Stream).expect("stand-in API");
    let cgroup = Cgroup::create("preexisting").expect("test cgroup");
    // nobody connects, over TCP and connected UDP, before jitproxy watches
    // the cgroup; then waits for the daemon.
    let script = format!(
        r#"
import errno, socket, sys, time
ip, port = "{ip}", {port}
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind((ip, port))
t = socket.create_connection((ip, port), timeout=5)
t.recv(16)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.connect((ip, port))
u.send(b"before")
print("connected", flush=True)
sys.stdin.readline()
t.settimeout(1)
tcp = "still-open"
deadline = time.time() + 3
try:
    while time.time() < deadline:
        if not t.recv(4096):
            tcp = "eof"
            break
except ConnectionAbortedError:
    tcp = "aborted"
except ConnectionResetError:
    tcp = "reset"
except socket.timeout:
    pass
try:
    u.send(b"after")
    udp = "sent"
except OSError as e:
    udp = errno.errorcode.get(e.errno, str(e.errno))
print(tcp, udp, flush=True)
"#,
        ip = api.addr().ip(),
        port = api.addr().port()
    );
    let mut client = Held::start(
        cgroup
            .command_as(NOBODY, NOBODY, PYTHON)
            .args(["-c", &script]),
    );
    assert_eq!(client.line(), "connected");
    let daemon = Daemon::start(&cgroup, Some(&config(22, &[]))).expect("daemon starts");
    client.go_on();
    let result = client.line();
    let (tcp, udp) = result.split_once(' ').unwrap_or((&result, ""));
    assert!(
        matches!(tcp, "aborted" | "reset" | "eof"),
        "the TCP connection opened before start still works: {result}"
    );
    assert_eq!(
        udp, "EDESTADDRREQ",
        "the connected UDP socket was not disconnected: {result}"
    );
    for (protocol, what) in [("tcp", "TCP"), ("udp", "UDP")] {
        let ended = daemon.wait_event(&format!("{what} ended at start"), |e| {
            e["event"] == "connection.destroyed" && Daemon::detail(e)["protocol"] == protocol
        });
        assert_eq!(ended["uid"], NOBODY, "{ended}");
        assert_eq!(ended["code"], "opened_before_start", "{ended}");
        assert_eq!(ended["dst"], api.addr().to_string(), "{ended}");
    }
}

/// `major:minor inode N` of the file at `path`, as audit records name an
/// executable.
fn file_id(path: &str) -> String {
    let (ok, out, err) = output(Command::new("stat").args(["-L", "-c", "%Hd:%Ld inode %i", path]));
    assert!(ok, "stat {path}: {err}");
    out.trim().to_owned()
}

#[test]
fn an_exec_after_connect_does_not_rename_the_caller() {
    let w = World::new(23, "execafter", Behaviour::Http);
    let api = w.api.addr();
    let python = std::fs::canonicalize(PYTHON).unwrap();
    let python = python.to_str().unwrap();
    // Python connects, prints its port, and at once becomes `sleep`, which
    // keeps the connection (fd 3) open while the proxy looks at /proc.
    let script = format!(
        "import os,socket\ns=socket.create_connection(('{}', {}))\nos.set_inheritable(s.fileno(), True)\nprint(s.getsockname()[1], flush=True)\nos.execv('/usr/bin/sleep', ['sleep', '2'])",
        api.ip(),
        api.port()
    );
    let rounds = 10;
    let mut ports = Vec::new();
    let mut children = Vec::new();
    for _ in 0..rounds {
        let mut child = Held::start(
            w.cgroup
                .command_as(NOBODY, NOBODY, PYTHON)
                .args(["-c", &script]),
        );
        ports.push(child.line().parse::<u16>().expect("port"));
        children.push(child);
    }
    let python_file = file_id(python);
    assert_ne!(
        python_file,
        file_id("/usr/bin/sleep"),
        "the test needs two files"
    );
    let mut unverified = 0;
    for port in ports {
        let event = w.daemon.wait_event("connection.allowed", |e| {
            e["event"] == "connection.allowed" && client_port(e) == port
        });
        assert_eq!(event["exe_file"], python_file.as_str(), "{event}");
        match event["exe"].as_str() {
            Some(exe) => assert_eq!(exe, python, "{event}"),
            None => {
                assert_eq!(event["exe_unverified"], "/usr/bin/sleep", "{event}");
                unverified += 1;
            }
        }
    }
    eprintln!("{unverified} of {rounds} callers had become sleep when the proxy looked");
    drop(children);
}

#[test]
fn many_distinct_uids_do_not_shut_out_a_new_one() {
    let w = World::new(24, "manyuids", Behaviour::Http);
    let api = w.api.addr();
    // More distinct uids than the per-uid count map holds, each with a
    // record that ends at once. Root switching its real uid stands in for a
    // user's 65,536 subordinate uids in a user namespace: the kernel counts
    // records by real uid either way.
    let uids = 65_536 + 64; // UID_RECORDS holds MAX_CONNECTIONS (65,536)
    let flood = format!(
        r#"
import os, socket
refused = 0
for uid in range(200000, 200000 + {uids}):
    os.setresuid(uid, uid, 0)
    s = socket.socket()
    try:
        s.connect(("{ip}", {port}))
    except PermissionError:
        refused += 1
    except OSError:
        pass
    s.close()
    os.setresuid(0, 0, 0)
print(refused, flush=True)
"#,
        ip = api.ip(),
        port = api.port()
    );
    let (ok, out, err) = output(w.cgroup.command(PYTHON).args(["-c", &flood]));
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "0", "connects were refused during the flood");
    // A uid never seen before still gets its record, and through.
    let (ok, out, err) = output(
        w.cgroup
            .command_as(4242, 4242, PYTHON)
            .args(["-c", &format!(
                "import socket\ns=socket.create_connection(('{}', {}), timeout=5)\ns.sendall(b'GET /new HTTP/1.0\\r\\n\\r\\n')\nprint(s.recv(4096).decode().splitlines()[0])",
                api.ip(),
                api.port()
            )]),
    );
    assert!(
        ok && out.contains("200"),
        "a new uid was shut out: {out}{err}"
    );
    let kernel = status(&w)["kernel"].clone();
    assert_eq!(kernel["uid_full"], 0, "{kernel}");
    assert_eq!(kernel["map_full"], 0, "{kernel}");
}

#[test]
fn a_connect_that_fails_after_the_hook_leaves_no_record() {
    let w = World::with_grants(
        25,
        "failconn",
        Behaviour::Stream,
        &config(25, &[]),
        &["root"],
    );
    let api = w.api.addr();
    let before = record_counts(&w);
    // `second` binds the source port of a live connection to the same
    // target: connect4 records it, then the kernel finds the 4-tuple taken
    // and connect() fails (EADDRNOTAVAIL) before any TCP state callback.
    let script = format!(
        r#"
import errno, socket, sys
failed = {{}}
def name(e):
    return errno.errorcode.get(e.errno, str(e.errno))
for _ in range(100):
    first = socket.socket()
    second = socket.socket()
    try:
        first.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        first.connect(("{ip}", {port}))
        second.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        second.bind(first.getsockname())
    except OSError as e:
        code = "setup " + name(e)
    else:
        try:
            second.connect(("{ip}", {port}))
            code = "connected"
        except OSError as e:
            code = name(e)
    failed[code] = failed.get(code, 0) + 1
    second.close()
    first.close()
print(failed.get("EADDRNOTAVAIL", 0), sorted(failed.items()), flush=True)
sys.stdin.read()
"#,
        ip = api.ip(),
        port = api.port()
    );
    let mut client = Held::start(w.cgroup.command(PYTHON).args(["-c", &script]));
    let line = client.line();
    let failed: u32 = line
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        failed >= 50,
        "too few connects failed after the hook: {line}"
    );
    eprintln!("connects that failed after the hook: {line}");
    wait_counts_back(&w, before);
    drop(client);
}
