//! End-to-end: the audit trail. Every connection leaves exactly its records;
//! a crash loses no "allowed" record of a connection that reached the
//! target; tampering is found by `jitproxy audit verify`; a full disk closes
//! access until space returns. Needs root; run with `cargo xtask test`.
// Test helpers panic on failure by design: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::{HashMap, HashSet},
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use jitproxy_e2e::{output, Behaviour, Cgroup, Daemon, Upstream, NOBODY, OPERATOR, PYTHON};
use serde_json::Value;

fn api_addr(index: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 60 + index, 2], 8080))
}

fn start(index: u8, name: &str, extra: &str) -> (Upstream, Cgroup, Daemon) {
    let api = Upstream::start(api_addr(index), Behaviour::Http).expect("stand-in API");
    let cgroup = Cgroup::create(name).expect("test cgroup");
    let config = format!(
        "listen_port = {}\n[limits]\nconnections_per_second = 100000.0\nburst = 100000\nmax_concurrent = 10000\n{extra}\n\
         [[target]]\nname = \"api-{index}\"\nhosts = [\"{}\"]\nports = [{}]\n",
        jitproxy_e2e::listen_port(jitproxy_e2e::AUDIT_PORTS, index),
        api.addr().ip(),
        api.addr().port()
    );
    let daemon = Daemon::start(&cgroup, Some(&config)).expect("daemon starts");
    (api, cgroup, daemon)
}

/// Every audit record, via `jitproxy audit --json` (as root).
fn curl(cgroup: &Cgroup, uid: u32, url: &str) -> bool {
    let mut cmd = if uid == 0 {
        cgroup.command("curl")
    } else {
        cgroup.command_as(uid, uid, "curl")
    };
    let (ok, out, _) = output(cmd.args(["-sS", "-m", "5", url]));
    ok && out.contains("hello from upstream")
}

/// `jitproxy audit verify` on a state directory: (exit code, output).
fn verify(state_dir: &Path) -> (i32, String) {
    let out = Command::new(jitproxy_e2e::jitproxy_bin())
        .args(["audit", "verify", "--state-dir"])
        .arg(state_dir)
        .output()
        .expect("run audit verify");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn every_connection_leaves_exactly_its_records() {
    let (api, cgroup, daemon) = start(1, "records", "");
    let url = format!("http://{}/r", api.addr());
    daemon.operator(&["grant", "root", "api-1", "--for", "1h", "--reason", "AUD-1"]);
    assert!(curl(&cgroup, 0, &url));
    assert!(curl(&cgroup, 0, &url));
    assert!(!curl(&cgroup, NOBODY, &url), "nobody has no grant");
    let all = daemon.wait_records("two closed connections and one refusal", |all| {
        let count = |kind: &str| all.iter().filter(|r| r["type"] == kind).count();
        count("connection.closed") == 2 && count("connection.denied") == 1
    });
    let kinds: Vec<&str> = all.iter().filter_map(|r| r["type"].as_str()).collect();
    for k in ["daemon.started", "config.loaded", "grant.created"] {
        assert!(kinds.contains(&k), "no {k} record: {kinds:?}");
    }
    let grant = all.iter().find(|r| r["type"] == "grant.created").unwrap();
    assert_eq!(grant["reason"], "AUD-1");
    assert_eq!(grant["detail"]["by"]["uid"], OPERATOR);

    // Per connection: allowed then closed, or denied alone; nothing else.
    let mut by_conn: HashMap<u64, Vec<&str>> = HashMap::new();
    for r in &all {
        if let Some(conn) = r["conn"].as_u64() {
            by_conn
                .entry(conn)
                .or_default()
                .push(r["type"].as_str().unwrap());
        }
    }
    let mut shapes: Vec<Vec<&str>> = by_conn.into_values().collect();
    shapes.sort();
    assert_eq!(
        shapes,
        vec![
            vec!["connection.allowed", "connection.closed"],
            vec!["connection.allowed", "connection.closed"],
            vec!["connection.denied"],
        ]
    );
    let allowed = all
        .iter()
        .find(|r| r["type"] == "connection.allowed")
        .unwrap();
    assert_eq!(allowed["user"]["uid"], 0);
    assert_eq!(allowed["process"]["comm"], "curl");
    assert_eq!(allowed["process"]["exe"], "/usr/bin/curl");
    assert_eq!(allowed["target"], "api-1");
    assert_eq!(allowed["dst"], api.addr().to_string());
    assert_eq!(allowed["reason"], "AUD-1");
    assert!(allowed["grant_id"].as_i64().is_some());
    let closed = all
        .iter()
        .find(|r| r["type"] == "connection.closed")
        .unwrap();
    assert!(closed["bytes_up"].as_u64().unwrap() > 0);
    assert!(closed["bytes_down"].as_u64().unwrap() > 0);
    let denied = all
        .iter()
        .find(|r| r["type"] == "connection.denied")
        .unwrap();
    assert_eq!(denied["code"], "no_grant");
    assert_eq!(denied["user"]["name"], "nobody");

    // Sequence numbers run without gaps and each record names its parent.
    for pair in all.windows(2) {
        assert_eq!(
            pair[1]["seq"].as_u64(),
            pair[0]["seq"].as_u64().map(|s| s + 1)
        );
    }
    // Reading is for root and auditors only.
    let (code, _, err) = daemon.client_as(NOBODY, NOBODY, None, &["audit"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("may not read the audit log"), "{err}");
    // The per-user summary.
    let summary = daemon.client(&["audit", "summary", "--json"]);
    let summary: Value = serde_json::from_str(&summary).unwrap();
    let root = summary["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user"] == "root")
        .unwrap();
    assert_eq!(root["connections"], 2);
    assert_eq!(root["grants"], 1);
}

#[test]
fn after_kill9_under_load_every_forwarded_connection_has_its_record() {
    let (api, cgroup, mut daemon) = start(2, "crash", "");
    daemon.operator(&["grant", "root", "api-2", "--for", "1h", "--reason", "load"]);
    // A client that opens connection after connection, each asking for its
    // own path, and prints "i local_port" for every connection it opened.
    let script = format!(
        r#"
import socket, sys
for i in range(100000):
    try:
        s = socket.create_connection(("{ip}", {port}), timeout=2)
        print(i, s.getsockname()[1], flush=True)
        s.sendall(b"GET /c-%d HTTP/1.0\r\n\r\n" % i)
        s.recv(4096)
        s.close()
    except OSError:
        pass
"#,
        ip = api.addr().ip(),
        port = api.addr().port()
    );
    let out_path = daemon.dir().join("client.out");
    let mut client = cgroup
        .command(PYTHON)
        .args(["-c", &script])
        .stdout(fs::File::create(&out_path).unwrap())
        .spawn()
        .expect("start load");
    // Let it run, then crash the daemon in the middle of it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while api.paths().len() < 300 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    daemon.kill9();
    thread::sleep(Duration::from_millis(300));
    let _ = client.kill();
    let _ = client.wait();
    daemon.restart().expect("restart after kill -9");

    let ports: HashMap<u64, u16> = fs::read_to_string(&out_path)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
        .collect();
    let allowed_records: Vec<Value> = daemon
        .records()
        .into_iter()
        .filter(|r| r["type"] == "connection.allowed")
        .collect();
    let allowed: HashSet<u16> = allowed_records
        .iter()
        .filter_map(|r| r["client"].as_str()?.parse::<SocketAddr>().ok())
        .map(|a| a.port())
        .collect();
    let reached = api.paths();
    assert!(
        reached.len() >= 300,
        "the load did not run: {} requests",
        reached.len()
    );
    // Every connection that reached the target was opened by the proxy
    // after its "allowed" record, also those the crash cut before their
    // request got through (path "?": nothing to match them by).
    assert!(
        api.accepted() <= allowed_records.len(),
        "{} connections reached the target, {} allowed records",
        api.accepted(),
        allowed_records.len()
    );
    for path in reached.iter().filter(|p| *p != "?") {
        let i: u64 = path
            .trim_start_matches("/c-")
            .parse()
            .unwrap_or_else(|e| panic!("request path {path:?}: {e}"));
        let port = ports[&i];
        assert!(
            allowed.contains(&port),
            "request {i} reached the target but its connection (client port {port}) has no allowed record"
        );
    }
    eprintln!(
        "{} requests reached the target before the crash; all have their records",
        reached.len()
    );
    let (code, out) = verify(&daemon.state_dir());
    assert_eq!(code, 0, "verify after a crash:\n{out}");
}

/// A state directory copy with a log to tamper with.
fn fixture() -> (tempfile::TempDir, PathBuf) {
    let (api, cgroup, mut daemon) = start(3, "tamper", "");
    let url = format!("http://{}/t", api.addr());
    daemon.operator(&["grant", "root", "api-3", "--for", "1h", "--reason", "T"]);
    for _ in 0..5 {
        assert!(curl(&cgroup, 0, &url));
    }
    daemon.stop().expect("clean stop (final checkpoint)");
    let (code, out) = verify(&daemon.state_dir());
    assert_eq!(code, 0, "the untouched log must verify:\n{out}");
    let copy = tempfile::tempdir().unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(daemon.state_dir())
        .arg(copy.path().join("state"))
        .status()
        .unwrap();
    assert!(status.success());
    let state = copy.path().join("state");
    (copy, state)
}

fn log_file(state: &Path) -> PathBuf {
    let dir = state.join("audit");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.pop().expect("a log file")
}

fn edit_lines(path: &Path, f: impl FnOnce(&mut Vec<String>)) {
    let text = fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    f(&mut lines);
    fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn tampering_is_detected_and_located() {
    let (_keep, pristine) = fixture();
    let name = log_file(&pristine)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let case = |what: &str, tamper: &dyn Fn(&Path), expect: &str| {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        assert!(Command::new("cp")
            .arg("-a")
            .arg(&pristine)
            .arg(&state)
            .status()
            .unwrap()
            .success());
        tamper(&state);
        let (code, out) = verify(&state);
        assert_eq!(code, 5, "{what}: not detected:\n{out}");
        assert!(
            out.contains(expect),
            "{what}: verify does not name `{expect}`:\n{out}"
        );
        eprintln!(
            "{what}: {}",
            out.lines().find(|l| l.starts_with("FAILED")).unwrap_or("")
        );
    };
    // One byte of a record in the middle: a digit of its byte count.
    case(
        "changed byte",
        &|s| {
            edit_lines(&log_file(s), |lines| {
                let i = lines
                    .iter()
                    .position(|l| l.contains("\"bytes_down\":"))
                    .unwrap();
                let at = lines[i].find("\"bytes_down\":").unwrap() + 13;
                let mut bytes = lines[i].clone().into_bytes();
                bytes[at] = if bytes[at] == b'9' { b'8' } else { b'9' };
                lines[i] = String::from_utf8(bytes).unwrap();
            });
        },
        &format!("{name}:"),
    );
    case(
        "deleted middle record",
        &|s| edit_lines(&log_file(s), |lines| drop(lines.remove(4))),
        "missing before this one",
    );
    case(
        "deleted newest records",
        &|s| {
            edit_lines(&log_file(s), |lines| {
                lines.truncate(lines.len() - 2);
            });
        },
        "newest records were deleted",
    );
    case(
        "swapped records",
        &|s| edit_lines(&log_file(s), |lines| lines.swap(3, 4)),
        &format!("{name}:4"),
    );
    case(
        "edited checkpoint",
        &|s| {
            edit_lines(&s.join("checkpoints.jsonl"), |lines| {
                let last = lines.last_mut().unwrap();
                *last = last.replacen("\"seq\":", "\"seq\":1", 1);
            });
        },
        "bad signature",
    );
}

/// A small tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: PathBuf, size: &str) -> Self {
        fs::create_dir_all(&path).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success(), "cannot mount a tmpfs");
        Self(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_closes_access_until_space_returns() {
    let root = tempfile::tempdir().unwrap();
    let fs_dir = Tmpfs::mount(root.path().join("auditfs"), "256k");
    let extra = format!("[audit]\ndir = \"{}\"\n", fs_dir.0.display());
    let (api, cgroup, mut daemon) = start(4, "diskfull", &extra);
    let url = format!("http://{}/d", api.addr());
    daemon.operator(&["grant", "root", "api-4", "--for", "1h", "--reason", "disk"]);
    assert!(curl(&cgroup, 0, &url), "works before the disk fills");

    // Fill the file system.
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=4k"])
        .arg(format!("of={}", fs_dir.0.join("fill").display()))
        .output();
    // The log file's last page may still have room for a few records; use
    // it up. Every connection that passes meanwhile has its record (the
    // durable write succeeded), so this does not weaken the check below.
    let mut tries = 0;
    while curl(&cgroup, 0, &url) {
        tries += 1;
        assert!(tries < 500, "connections kept passing on a full disk");
    }
    let reached_before = api.accepted();
    for _ in 0..3 {
        assert!(
            !curl(&cgroup, 0, &url),
            "a connection passed while its record could not be written"
        );
    }
    assert_eq!(
        api.accepted(),
        reached_before,
        "something reached the target without a record"
    );
    let status = daemon.client(&["status"]);
    assert!(
        status.contains("AUDIT LOG FAILING"),
        "status does not say why:\n{status}"
    );
    let (_, why, _) = daemon.client_as(0, 0, None, &["why"]);
    assert!(why.contains("audit log"), "{why}");

    // Space returns: access comes back, and the log is whole.
    fs::remove_file(fs_dir.0.join("fill")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !curl(&cgroup, 0, &url) {
        assert!(
            Instant::now() < deadline,
            "access did not come back:\n{}",
            daemon.log_text()
        );
        thread::sleep(Duration::from_millis(200));
    }
    let status = daemon.client(&["status"]);
    assert!(!status.contains("FAILING"), "{status}");
    let all = daemon.records();
    let denied = all
        .iter()
        .filter(|r| r["code"] == "audit_unavailable")
        .count();
    assert!(
        denied >= 1,
        "the refusals while the disk was full were not recorded"
    );
    daemon.stop().expect("clean stop");
    let out = Command::new(jitproxy_e2e::jitproxy_bin())
        .args(["audit", "verify", "--config"])
        .arg(daemon.config_path().expect("test config"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the log is not whole after the disk filled:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn every_record_is_copied_to_a_syslog_collector() {
    use std::io::Read as _;
    let collector = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = collector.local_addr().unwrap();
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    {
        let received = std::sync::Arc::clone(&received);
        thread::spawn(move || {
            for stream in collector.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    received.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            }
        });
    }
    let extra = format!("[audit]\nsyslog = \"{addr}\"\n");
    let (api, cgroup, daemon) = start(5, "syslog", &extra);
    daemon.operator(&["grant", "root", "api-5", "--for", "1h", "--reason", "SYS-1"]);
    assert!(curl(&cgroup, 0, &format!("http://{}/s", api.addr())));

    // RFC 6587 octet counting: "LEN <110>1 TIME HOST jitproxy PID audit - {record}".
    let deadline = Instant::now() + Duration::from_secs(10);
    let frames = loop {
        let bytes = received.lock().unwrap().clone();
        let mut frames = Vec::new();
        let mut rest = &bytes[..];
        while let Some(space) = rest.iter().position(|&b| b == b' ') {
            let Some(len) = std::str::from_utf8(&rest[..space])
                .ok()
                .and_then(|l| l.parse::<usize>().ok())
            else {
                panic!("bad frame length in {:?}", String::from_utf8_lossy(rest));
            };
            if rest.len() < space + 1 + len {
                break;
            }
            frames.push(String::from_utf8_lossy(&rest[space + 1..space + 1 + len]).into_owned());
            rest = &rest[space + 1 + len..];
        }
        if frames
            .iter()
            .any(|f| f.contains("\"type\":\"connection.closed\""))
            || Instant::now() > deadline
        {
            break frames;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let local: Vec<Value> = daemon.records();
    for record in local.iter().filter(|r| r["type"] != "daemon.stopped") {
        let seq = record["seq"].as_u64().unwrap();
        let copy = frames
            .iter()
            .find(|f| f.contains(&format!("{{\"seq\":{seq},")))
            .unwrap_or_else(|| {
                panic!(
                    "record {seq} ({}) not at the collector; got {} frames",
                    record["type"],
                    frames.len()
                )
            });
        assert!(copy.starts_with("<110>1 "), "{copy}");
        let json = &copy[copy.find(" audit - ").unwrap() + 9..];
        assert_eq!(
            &serde_json::from_str::<Value>(json).unwrap(),
            record,
            "the copy differs from the record"
        );
    }

    // The collector's bytes, as it got them, check out against the log...
    let copy = tempfile::NamedTempFile::new().unwrap();
    let bytes = received.lock().unwrap().clone();
    fs::write(copy.path(), &bytes).unwrap();
    let verify = |copy: &Path| {
        let out = Command::new(jitproxy_e2e::jitproxy_bin())
            .args(["audit", "verify", "--config"])
            .arg(daemon.config_path().expect("test config"))
            .arg("--copy")
            .arg(copy)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = verify(copy.path());
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("match the local log"), "{out}");

    // ...and one record changed in the copy (same length, so the frame
    // stays whole) is named by its sequence number.
    let granted = local
        .iter()
        .find(|r| r["type"] == "grant.created")
        .expect("the grant's record");
    let changed = String::from_utf8(bytes)
        .unwrap()
        .replacen("SYS-1", "SYS-2", 1);
    fs::write(copy.path(), changed).unwrap();
    let (code, out) = verify(copy.path());
    assert_eq!(code, Some(5), "{out}");
    assert!(
        out.contains(&format!(
            "record seq {} differs from the collector's copy",
            granted["seq"]
        )),
        "{out}"
    );
}

#[test]
fn a_process_name_with_terminal_escapes_is_shown_escaped_and_kept_exact_in_json() {
    // What any user can name a process (15 bytes at most): erase the line,
    // move up one, and write over what a reviewer sees.
    const COMM: &str = "\x1b[2K\x1b[1Aevil";
    // How people see it; also how Python writes it in a string literal.
    const SHOWN: &str = r"\x1b[2K\x1b[1Aevil";
    let (api, cgroup, daemon) = start(6, "escape", "");
    let script = format!(
        r#"
import socket
open("/proc/self/comm", "w").write("{SHOWN}")
try:
    s = socket.create_connection(("{ip}", {port}), timeout=5)
    s.recv(1)
except OSError:
    pass
"#,
        ip = api.addr().ip(),
        port = api.addr().port()
    );
    let (ok, _, err) = output(
        cgroup
            .command_as(NOBODY, NOBODY, PYTHON)
            .args(["-c", &script]),
    );
    assert!(ok, "the client failed: {err}");

    let deadline = Instant::now() + Duration::from_secs(10);
    let denied = loop {
        let found = daemon
            .records()
            .into_iter()
            .find(|r| r["type"] == "connection.denied");
        if let Some(r) = found {
            break r;
        }
        assert!(Instant::now() < deadline, "no connection.denied record");
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(denied["process"]["comm"], COMM, "JSON keeps the exact name");
    let json = daemon.client(&["audit", "--json"]);
    assert!(!json.contains('\x1b'), "raw ESC in JSON Lines: {json:?}");

    let table = daemon.client(&["audit"]);
    assert!(!table.contains('\x1b'), "raw ESC in the table: {table:?}");
    assert!(
        table.contains(SHOWN),
        "no escaped name in the table:\n{table}"
    );
    let (code, why, err) = daemon.client_as(NOBODY, NOBODY, None, &["why"]);
    assert_eq!(code, 0, "{err}");
    assert!(!why.contains('\x1b'), "raw ESC in why: {why:?}");
    assert!(why.contains(SHOWN), "no escaped name in why:\n{why}");
}
