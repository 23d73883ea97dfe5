//! Harness for the privileged end-to-end tests, the demo and the benchmark:
//! child cgroups that remove themselves, a jitproxy daemon under test, small
//! stand-in upstream servers, and clients run inside a cgroup as a chosen uid.
//!
//! Everything here cleans up on drop, including when a test panics: cgroups
//! are emptied (`cgroup.kill`) and removed, daemons killed by pid, pins
//! removed with `jitproxy uninstall`.

pub mod inspect;

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// uid/gid of `nobody`, the "other user" of the tests.
pub const NOBODY: u32 = 65534;

/// An approver that is not root, added to every test config that names no
/// `approvers`: grants to root come from it ([`Daemon::operator`]), since
/// nobody may grant access to themselves.
pub const OPERATOR: u32 = 4900;

// The port plan. Each test has an index within its file that picks its
// cgroup, its stand-in API's loopback address and its daemon's listen port,
// so tests run in parallel. Listen ports are below 1024, since jitproxy
// refuses one that an unprivileged user could bind (the kernel keeps
// redirecting to it while the daemon is down), one block of 100 per file:
// redirect.rs from 600, grants.rs from 700, audit.rs from 800, requests.rs
// from 900 (70 of them), inspect.rs from 1000. package.rs runs the installed package on the
// embedded default's port, 971, as the demo does (never at the same time).
// The demo
// uses the default, 971; the bench (xtask/src/bench.rs) 970.

/// First listen port of the tests in `tests/tests/redirect.rs`.
pub const REDIRECT_PORTS: u16 = 600;
/// First listen port of the tests in `tests/tests/grants.rs`.
pub const GRANTS_PORTS: u16 = 700;
/// First listen port of the tests in `tests/tests/audit.rs`.
pub const AUDIT_PORTS: u16 = 800;
/// First listen port of the tests in `tests/tests/requests.rs` (up to 969:
/// the bench has 970).
pub const REQUESTS_PORTS: u16 = 900;

/// The listen port of test `index` in the file whose block starts at `block`.
pub fn listen_port(block: u16, index: u8) -> u16 {
    assert!(
        index < 100,
        "test index {index} is beyond its block of 100 ports"
    );
    block + u16::from(index)
}

/// The jitproxy binary under test: `$JITPROXY_BIN`, else target/release.
pub fn jitproxy_bin() -> PathBuf {
    std::env::var_os("JITPROXY_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/jitproxy"),
        PathBuf::from,
    )
}

/// The cgroup2 mount point, from /proc/mounts.
pub fn cgroup2_mount() -> Result<PathBuf> {
    procfs::mounts()
        .context("cannot read /proc/mounts")?
        .into_iter()
        .find(|m| m.fs_vfstype == "cgroup2")
        .map(|m| PathBuf::from(m.fs_file))
        .context("no cgroup2 filesystem is mounted")
}

/// A child cgroup created for one test (never the root); emptied and removed
/// on drop.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates `<cgroup2>/jitproxy-test/<name>-<pid>`.
    pub fn create(name: &str) -> Result<Self> {
        let path = cgroup2_mount()?
            .join("jitproxy-test")
            .join(format!("{name}-{}", std::process::id()));
        if path.exists() {
            // Left over from a crashed run with the same pid: reuse it empty.
            kill_all(&path);
        }
        fs::create_dir_all(&path)
            .with_context(|| format!("cannot create cgroup {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `program args...`, started inside this cgroup as root.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
            .arg(&self.path)
            .arg(program);
        cmd
    }

    /// `program args...`, started inside this cgroup as `uid`/`gid` (setpriv).
    pub fn command_as(&self, uid: u32, gid: u32, program: &str) -> Command {
        let mut cmd = self.command("setpriv");
        cmd.args([
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            "--clear-groups".to_owned(),
            "--".to_owned(),
            program.to_owned(),
        ]);
        cmd
    }

    /// Pids now in the cgroup.
    pub fn pids(&self) -> Vec<u32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        kill_all(&self.path);
        match fs::remove_dir(&self.path) {
            Ok(()) => {}
            // The test removed it itself.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => cleanup_failed(&format!("cannot remove {}: {e}", self.path.display())),
        }
        if let Some(parent) = self.path.parent() {
            // Fails while sibling tests still have theirs; the last one wins.
            let _ = fs::remove_dir(parent);
        }
    }
}

/// A cleanup step failed: the test fails, unless it is failing already (a
/// second panic while unwinding would abort and hide the first).
fn cleanup_failed(why: &str) {
    eprintln!("cleanup: {why}");
    if !thread::panicking() {
        panic!("cleanup: {why}");
    }
}

/// Kills every process in a cgroup (all started by this harness) and waits
/// until it is empty.
fn kill_all(path: &Path) {
    let _ = fs::write(path.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let procs = fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
        if procs.trim().is_empty() {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A jitproxy daemon under test, attached to one cgroup.
#[derive(Debug)]
pub struct Daemon {
    bin: PathBuf,
    cgroup: PathBuf,
    dir: tempfile::TempDir,
    config: Option<PathBuf>,
    child: Option<Child>,
    log: PathBuf,
    extra_env: Vec<(String, String)>,
    /// Whether the daemon itself runs inside the cgroup it watches (as it
    /// does when it watches the whole host).
    inside: bool,
}

impl Daemon {
    /// Starts `jitproxy run` on `cgroup` with `config` (TOML; `None` for the
    /// embedded default; a listen port of the old plan moved onto the plan)
    /// and waits until it reports that it runs.
    pub fn start(cgroup: &Cgroup, config: Option<&str>) -> Result<Self> {
        Self::start_with_env(cgroup, config, &[])
    }

    /// [`Daemon::start`], with the daemon's own process inside `cgroup`, so
    /// that its own connections (upstream, webhooks) meet the programs.
    pub fn start_inside(cgroup: &Cgroup, config: &str) -> Result<Self> {
        Self::start_full(cgroup, Some(config), &[], true)
    }

    pub fn start_with_env(
        cgroup: &Cgroup,
        config: Option<&str>,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        Self::start_full(cgroup, config, env, false)
    }

    fn start_full(
        cgroup: &Cgroup,
        config: Option<&str>,
        env: &[(&str, &str)],
        inside: bool,
    ) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("jitproxy-test-")
            .tempdir()?;
        let config_path = match config {
            Some(text) => {
                let path = dir.path().join("config.toml");
                let operator = if text
                    .lines()
                    .any(|l| l.trim_start().starts_with("approvers"))
                {
                    String::new()
                } else {
                    format!("approvers = [\"user:{OPERATOR}\"]\n")
                };
                let text = format!(
                    "state_dir = \"{}\"\ncontrol_socket = \"{}\"\n{operator}{}",
                    dir.path().join("state").display(),
                    dir.path().join("control.sock").display(),
                    text
                );
                fs::write(&path, text)?;
                Some(path)
            }
            None => None,
        };
        let mut daemon = Self {
            bin: jitproxy_bin(),
            cgroup: cgroup.path().to_owned(),
            log: dir.path().join("daemon.log"),
            dir,
            config: config_path,
            child: None,
            extra_env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            inside,
        };
        daemon.spawn()?;
        Ok(daemon)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = if self.inside {
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
                .arg(&self.cgroup)
                .arg(&self.bin);
            cmd
        } else {
            Command::new(&self.bin)
        };
        cmd.args(["--log-format", "json", "run", "--cgroup"])
            .arg(&self.cgroup)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        match &self.config {
            Some(config) => cmd.arg("--config").arg(config),
            // The embedded default: keep its state and socket in the test's
            // directory, not the host's.
            None => cmd
                .arg("--state-dir")
                .arg(self.dir.path().join("state"))
                .arg("--socket")
                .arg(self.socket()),
        };
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        // Ready when its control API answers with its pid: the API starts
        // after the programs are attached and the listeners bound.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.answers_status(child.id()) {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "jitproxy exited with {status} before it started:\n{}",
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("jitproxy did not start in 20 s:\n{}", self.log_text());
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
        Ok(())
    }

    /// Whether the daemon with `pid` answers `jitproxy status`.
    fn answers_status(&self, pid: u32) -> bool {
        let Ok(out) = Command::new(&self.bin)
            .args(["status", "--json", "--socket"])
            .arg(self.socket())
            .stderr(Stdio::null())
            .output()
        else {
            return false;
        };
        serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|v| v["pid"] == pid)
    }

    /// The daemon's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and wait for the exit.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("daemon not running")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(child.id())?),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        Ok(child.wait()?)
    }

    /// Starts the daemon again with the same config (after a stop or kill).
    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        self.spawn()
    }

    /// Runs another `jitproxy` command with this daemon's config and cgroup.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args).arg("--cgroup").arg(&self.cgroup);
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run jitproxy {args:?}: {e}"))
    }

    /// The config file the daemon runs with (`None` for the embedded default).
    pub fn config_path(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    /// The daemon's state directory (grants, audit key, checkpoints, and by
    /// default the audit log under `audit/`).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The jitproxy binary this daemon runs.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The daemon's control socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    /// `jitproxy ARGS --socket <this daemon's socket>`, run as `uid`/`gid`
    /// (root when 0), with the login uid set when `login_uid` is given.
    pub fn client_as(
        &self,
        uid: u32,
        gid: u32,
        login_uid: Option<u32>,
        args: &[&str],
    ) -> (i32, String, String) {
        let out = self
            .client_command(uid, gid, login_uid, args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run jitproxy {args:?}: {e}"));
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The command [`Daemon::client_as`] runs, as `uid` (its own group), to
    /// start and wait for as one likes.
    pub fn client_as_command(&self, uid: u32, args: &[&str]) -> Command {
        self.client_command(uid, uid, None, args)
    }

    fn client_command(&self, uid: u32, gid: u32, login_uid: Option<u32>, args: &[&str]) -> Command {
        let mut cmd = Command::new("sh");
        let login = login_uid.map_or(String::new(), |l| {
            format!("echo {l} > /proc/self/loginuid && ")
        });
        cmd.arg("-c")
            .arg(format!(
                r#"{login}exec setpriv --reuid={uid} --regid={gid} --clear-groups -- "$@""#
            ))
            .arg("sh")
            .arg(&self.bin)
            .args(args)
            .arg("--socket")
            .arg(self.socket());
        cmd
    }

    /// `jitproxy ARGS` as [`OPERATOR`] (an approver, not root) against this
    /// daemon; panics unless it succeeds.
    pub fn operator(&self, args: &[&str]) -> String {
        let (code, out, err) = self.client_as(OPERATOR, OPERATOR, None, args);
        assert_eq!(
            code, 0,
            "jitproxy {args:?} as the operator failed:\n{out}{err}"
        );
        out
    }

    /// `jitproxy ARGS` as root against this daemon; panics unless it succeeds.
    pub fn client(&self, args: &[&str]) -> String {
        let (code, out, err) = self.client_as(0, 0, None, args);
        assert_eq!(code, 0, "jitproxy {args:?} failed:\n{out}{err}");
        out
    }

    /// Entries in the kernel's connection record maps (CONNECTS, TUPLES).
    pub fn record_counts(&self) -> Result<(usize, usize)> {
        let out = self.cli(&["debug", "records"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let nums: Vec<usize> = text
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        match nums[..] {
            [c, t] => Ok((c, t)),
            _ => bail!(
                "unexpected `debug records` output: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every JSON event the daemon logged so far.
    pub fn events(&self) -> Vec<Value> {
        let Ok(file) = fs::File::open(&self.log) else {
            return Vec::new();
        };
        BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect()
    }

    /// Events of one type (`connection.allowed`, ...).
    pub fn events_of(&self, kind: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == kind)
            .collect()
    }

    /// The `detail` of a daemon-log event (the audit record's details, which
    /// the daemon log carries as JSON text); `Null` when it has none.
    pub fn detail(event: &Value) -> Value {
        event["detail"]
            .as_str()
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or(Value::Null)
    }

    /// The audit log's records, as `jitproxy audit --json` shows them (as
    /// root), oldest first.
    pub fn records(&self) -> Vec<Value> {
        self.client(&["audit", "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit record is JSON"))
            .collect()
    }

    /// Waits until the audit log's records satisfy `pred`; returns them.
    pub fn wait_records(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let records = self.records();
            if pred(&records) {
                return records;
            }
            assert!(
                Instant::now() < deadline,
                "the audit log did not show {what} within 10 s; it has {} records",
                records.len()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until an event matching `pred` is logged.
    pub fn wait_event(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.events().into_iter().find(|e| pred(e)) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} event within 10 s; daemon log:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Daemon {
    /// Checks the audit log of every run of this daemon: each connection has
    /// exactly its records (denied or rate-limited alone; allowed then closed
    /// or failed; allowed alone only in a run that crashed), and
    /// `jitproxy audit verify` passes. Stops the daemon first.
    pub fn check_audit_log(&mut self) -> Result<()> {
        let status = Command::new(&self.bin)
            .args(["status", "--json", "--socket"])
            .arg(self.socket())
            .output()?;
        let status: Value = serde_json::from_slice(&status.stdout).context("daemon status")?;
        let dir = PathBuf::from(
            status["audit"]["dir"]
                .as_str()
                .context("audit dir in status")?,
        );
        // A clean stop: a daemon that crashes on SIGTERM fails the test
        // here rather than passing as a run that crashed.
        let exit = self.stop()?;
        if !exit.success() {
            bail!("the daemon did not stop cleanly on SIGTERM: {exit}");
        }
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        let mut runs: Vec<(bool, std::collections::BTreeMap<u64, Vec<String>>)> = Vec::new();
        for file in files {
            for line in fs::read_to_string(&file)?.lines() {
                let r: Value = serde_json::from_str(line)
                    .with_context(|| format!("bad record in {}", file.display()))?;
                let kind = r["type"].as_str().unwrap_or_default().to_owned();
                if kind == "daemon.started" || runs.is_empty() {
                    runs.push((false, Default::default()));
                }
                let run = runs.last_mut().context("a run")?;
                if kind == "daemon.stopped" {
                    run.0 = true;
                }
                if let Some(conn) = r["conn"].as_u64() {
                    run.1.entry(conn).or_default().push(kind);
                }
            }
        }
        if runs.last().is_some_and(|(clean, _)| !clean) {
            bail!(
                "the daemon stopped cleanly but its last run has no daemon.stopped record (in {})",
                dir.display()
            );
        }
        for (i, (clean, conns)) in runs.iter().enumerate() {
            for (conn, kinds) in conns {
                // An inspected connection's requests: each one let
                // through is completed; refusals stand alone.
                let (http, kinds): (Vec<&str>, Vec<&str>) = kinds
                    .iter()
                    .map(String::as_str)
                    .partition(|k| k.starts_with("http."));
                let allowed = http.iter().filter(|k| **k == "http.allowed").count();
                let completed = http.iter().filter(|k| **k == "http.completed").count();
                let http_ok = http.is_empty()
                    || (kinds.first() == Some(&"connection.allowed")
                        && if *clean {
                            allowed == completed
                        } else {
                            completed <= allowed
                        });
                let ok = http_ok
                    && match kinds.as_slice() {
                        ["connection.denied" | "connection.rate_limited"] => true,
                        ["connection.allowed", "connection.closed" | "connection.failed"] => true,
                        ["connection.allowed"] => !clean,
                        _ => false,
                    };
                if !ok {
                    bail!(
                        "run {i}, connection {conn}: records {kinds:?} (in {})",
                        dir.display()
                    );
                }
            }
        }
        let mut verify = Command::new(&self.bin);
        verify.args(["audit", "verify"]);
        match &self.config {
            Some(config) => verify.arg("--config").arg(config),
            None => verify.arg("--state-dir").arg(self.state_dir()),
        };
        let out = verify.output()?;
        if !out.status.success() {
            bail!(
                "audit verify failed:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A test that ends with its daemon running has its audit log checked
        // (unless it already failed: one failure is enough to report).
        let check = if self.child.is_some() && !thread::panicking() {
            self.check_audit_log().err()
        } else {
            None
        };
        self.kill9();
        // Remove the pinned programs and maps of the test cgroup.
        let mut cmd = Command::new(&self.bin);
        cmd.args(["uninstall", "--cgroup"]).arg(&self.cgroup);
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        // A test that removed its cgroup also removed its pins (`uninstall
        // --stale`) and checked that itself.
        let uninstall = self
            .cgroup
            .exists()
            .then(|| cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output());
        if let Some(e) = check {
            panic!("audit log check failed: {e:#}");
        }
        match uninstall {
            None => {}
            Some(Ok(out)) if out.status.success() => {}
            Some(Ok(out)) => cleanup_failed(&format!(
                "uninstall of {} failed: {}",
                self.cgroup.display(),
                String::from_utf8_lossy(&out.stderr)
            )),
            Some(Err(e)) => cleanup_failed(&format!("cannot run uninstall: {e}")),
        }
    }
}

/// A client process that reports on stdout, line by line, and waits on
/// stdin: it holds what it opened until told to go on ([`Held::go_on`]) or
/// dropped (stdin closed, then waited for).
#[derive(Debug)]
pub struct Held {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: std::io::Lines<BufReader<ChildStdout>>,
}

impl Held {
    /// Starts `cmd` with piped stdin and stdout.
    pub fn start(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
        Self {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// The next line it printed (empty at its end).
    pub fn line(&mut self) -> String {
        self.lines.next().and_then(Result::ok).unwrap_or_default()
    }

    /// Sends it a newline: the signal to go on.
    pub fn go_on(&mut self) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = writeln!(stdin);
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// A stand-in "production API" on a loopback address, run on threads.
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    bulk_sent: Arc<Mutex<Vec<String>>>,
    paths: Arc<Mutex<Vec<String>>>,
    thread: Option<thread::JoinHandle<()>>,
}

/// What an [`Upstream`] does with each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// HTTP/1.1: answers each request with `hello from upstream path=<path>`
    /// and closes.
    Http,
    /// Reads to EOF, answers `<sha256 of what it read>\n`, then sends `n`
    /// random bytes and closes (and remembers their sha256).
    Bulk(usize),
    /// Closes at once.
    Close,
    /// Sends a line every 20 ms until the peer goes away.
    Stream,
}

impl Upstream {
    pub fn start(addr: SocketAddr, behaviour: Behaviour) -> Result<Self> {
        let listener =
            TcpListener::bind(addr).with_context(|| format!("cannot bind upstream {addr}"))?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let bulk_sent = Arc::new(Mutex::new(Vec::new()));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, accepted, peers, bulk_sent, paths) = (
                Arc::clone(&stop),
                Arc::clone(&accepted),
                Arc::clone(&peers),
                Arc::clone(&bulk_sent),
                Arc::clone(&paths),
            );
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    if let Ok(peer) = stream.peer_addr() {
                        peers.lock().unwrap_or_else(|p| p.into_inner()).push(peer);
                    }
                    let (bulk_sent, paths) = (Arc::clone(&bulk_sent), Arc::clone(&paths));
                    thread::spawn(move || {
                        let _ = serve(stream, behaviour, &bulk_sent, &paths);
                    });
                }
            })
        };
        Ok(Self {
            addr,
            stop,
            accepted,
            peers,
            bulk_sent,
            paths,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Peer addresses of accepted connections.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Request paths of the HTTP requests answered.
    pub fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// sha256 (hex) of each bulk body sent.
    pub fn bulk_sent(&self) -> Vec<String> {
        self.bulk_sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    mut stream: TcpStream,
    behaviour: Behaviour,
    bulk_sent: &Mutex<Vec<String>>,
    paths: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    match behaviour {
        Behaviour::Close => Ok(()),
        Behaviour::Stream => loop {
            stream.write_all(b"tick\n")?;
            thread::sleep(Duration::from_millis(20));
        },
        Behaviour::Http => {
            let mut reader = BufReader::new(stream.try_clone()?);
            let mut request_line = String::new();
            reader.read_line(&mut request_line)?;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
                    break;
                }
            }
            let path = request_line.split_whitespace().nth(1).unwrap_or("?");
            paths
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(path.to_owned());
            let body = format!("hello from upstream path={path}\n");
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )?;
            stream.flush()
        }
        Behaviour::Bulk(n) => {
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let k = stream.read(&mut buf)?;
                if k == 0 {
                    break;
                }
                hasher.update(&buf[..k]);
            }
            writeln!(stream, "{}", hex(&hasher.finalize()))?;
            let mut sent = Sha256::new();
            let mut rng = 0x9e37_79b9_7f4a_7c15u64;
            let mut left = n;
            while left > 0 {
                let k = left.min(buf.len());
                for chunk in buf[..k].chunks_mut(8) {
                    // xorshift64: cheap bytes that are not all alike.
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let bytes = rng.to_le_bytes();
                    chunk.copy_from_slice(&bytes[..chunk.len()]);
                }
                stream.write_all(&buf[..k])?;
                sent.update(&buf[..k]);
                left -= k;
            }
            bulk_sent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(hex(&sent.finalize()));
            stream.shutdown(Shutdown::Write)
        }
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs a command and returns its output, with stdout/stderr as text.
pub fn output(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The client port of a daemon-log or audit event (its `client` field);
/// 0 when it has none.
pub fn client_port(event: &Value) -> u16 {
    event["client"]
        .as_str()
        .and_then(|c| c.parse::<SocketAddr>().ok())
        .map_or(0, |a| a.port())
}

/// The Debian python3 (readable by every uid, unlike a pyenv shim in /root).
pub const PYTHON: &str = "/usr/bin/python3";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_file_has_its_block_of_listen_ports() {
        assert_eq!(listen_port(GRANTS_PORTS, 14), 714);
        assert_eq!(listen_port(AUDIT_PORTS, 0), 800);
    }
}
