//! End-to-end: the Debian package. It installs with `dpkg -i`; the daemon
//! its systemd unit starts works inside the unit's sandbox; the man page and
//! the completions are where the shells look; and `dpkg --purge` detaches
//! the programs and leaves nothing behind. Needs root, dpkg, and a machine
//! where jitproxy is not installed; run with `cargo xtask test`, which builds
//! the package and passes its path in JITPROXY_DEB (without it, this test
//! runs `cargo xtask package` itself).
//!
//! PID 1 is not systemd here (nor in CI), so the test runs the unit's
//! ExecStart line itself, parsed from the installed unit file, with the
//! unit's environment and `--cgroup <a test cgroup>` added so that it never
//! attaches to the root cgroup. It emulates what of the unit's sandbox plain
//! tools can: the capability bounding set and NoNewPrivileges (setpriv),
//! LimitNOFILE (prlimit), a private mount namespace in which everything is
//! read-only but ReadWritePaths, the state and runtime directories
//! (ProtectSystem=strict, ProtectHome=read-only, ProtectKernelTunables,
//! ProtectControlGroups), a private /tmp, the umask; and, where strace is
//! installed, checks every system call and socket family the daemon used
//! against SystemCallFilter, RestrictAddressFamilies and
//! MemoryDenyWriteExecute. What it cannot emulate it says.
//!
//! The package's config is the embedded default: listen port 971, one
//! target at 127.0.0.2:8080. `cargo xtask demo` uses them too, and never
//! runs during the tests; the other e2e files keep to their own ports.
// Test helpers panic on failure by design: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeSet,
    fs,
    net::TcpListener,
    os::unix::{fs::MetadataExt as _, fs::PermissionsExt as _, net::UnixDatagram},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use jitproxy_e2e::{jitproxy_bin, Behaviour, Cgroup, Held, Upstream, NOBODY, OPERATOR, PYTHON};
use serde_json::Value;

const UNIT: &str = "/lib/systemd/system/jitproxy.service";
const CONFIG: &str = "/etc/jitproxy/config.toml";
const CONFIG_DIR: &str = "/etc/jitproxy";
const STATE_DIR: &str = "/var/lib/jitproxy";
const RUN_DIR: &str = "/run/jitproxy";
const SOCKET: &str = "/run/jitproxy/control.sock";
const BIN: &str = "/usr/bin/jitproxy";
const BPFFS: &str = "/sys/fs/bpf";
/// The embedded default's target and listen port.
const TARGET: &str = "127.0.0.2:8080";
const TARGET_NAME: &str = "demo-api";
const LISTEN_PORT: u16 = 971;
/// Capability names in the kernel's order (bit numbers), as setpriv spells
/// them.
const CAPS: &[&str] = &[
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];
/// What systemd puts on PATH for system services.
const SERVICE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[test]
fn the_package_installs_runs_under_its_unit_and_purges_clean() {
    preconditions();
    let deb = deb_path();
    println!("package: {}", deb.display());

    // Dropped in reverse: the daemon is killed, the package purged (its
    // prerm detaches the programs), leftover pins removed, the cgroup last.
    let cgroup = Cgroup::create("package").expect("test cgroup");
    let cgroup_id = fs::metadata(cgroup.path()).expect("cgroup").ino();
    let _pins = PinsGuard {
        cgroup: cgroup.path().to_owned(),
        id: cgroup_id,
    };
    let api = Upstream::start(TARGET.parse().unwrap(), Behaviour::Http)
        .expect("stand-in for the embedded default's target (is 127.0.0.2:8080 taken?)");
    let mut installed = Installed::install(&deb);
    let work = tempfile::Builder::new()
        .prefix("jitproxy-package-test-")
        .tempdir_in("/run")
        .expect("work directory under /run (the sandbox hides /tmp)");

    check_installed_files();
    // The operator turns the metrics endpoint on (one key; off by default).
    let config = fs::read_to_string(CONFIG).expect("the installed config");
    fs::write(CONFIG, format!("metrics = \"{METRICS}\"\n{config}")).expect("edit the config");
    let unit = Unit::read(Path::new(UNIT));
    let sandbox = Sandbox::from_unit(&unit);
    run_exec_start_pre(&unit);

    // A connection to the target opened before the daemon watches the
    // cgroup: the daemon ends it at start (sock_diag, CAP_NET_ADMIN).
    let mut early = Held::start(
        cgroup
            .command_as(NOBODY, NOBODY, PYTHON)
            .args(["-c", EARLY_CLIENT]),
    );
    assert_eq!(
        early.line(),
        "connected",
        "the early client did not connect"
    );

    let mut daemon = Service::start(&unit, &sandbox, cgroup.path(), work.path(), "start");
    let status = status_json();
    assert_eq!(status["pid"], daemon.pid, "{status}");
    assert_eq!(
        status["cgroup"],
        cgroup.path().display().to_string(),
        "{status}"
    );
    assert_eq!(status["listen_port"], LISTEN_PORT, "{status}");
    let pins = PathBuf::from(status["pins"].as_str().expect("pins in status"));
    assert!(
        pins.starts_with(BPFFS) && pins.to_string_lossy().ends_with(&format!("-cg{cgroup_id}")),
        "pins of the test cgroup expected, status says {}",
        pins.display()
    );
    assert!(pins.is_dir(), "{} is not there", pins.display());
    println!(
        "status: the daemon (pid {}) watches {}",
        daemon.pid,
        cgroup.path().display()
    );
    daemon.check_capabilities(&sandbox);
    daemon.check_notify();

    early.go_on();
    let ended = early.line();
    assert!(
        matches!(ended.as_str(), "aborted" | "reset" | "eof"),
        "the connection opened before start still works: {ended}\n{}",
        daemon.log()
    );
    let destroyed = wait_record("the early connection's end", |r| {
        r["type"] == "connection.destroyed" && r["user"]["uid"] == NOBODY
    });
    println!("opened before start: ended ({ended}), recorded: {destroyed}");

    // Granted: nobody, by root (no one may grant access to themselves).
    let url = format!("http://{TARGET}/pkg");
    let (code, out, err) = run(&mut cli(&[
        "grant",
        "nobody",
        TARGET_NAME,
        "--for",
        "30m",
        "--reason",
        "package-test",
    ]));
    assert_eq!(code, 0, "grant failed: {out}{err}");
    let (code, body, err) = curl_as(&cgroup, NOBODY, &url);
    assert_eq!(
        (code, body.trim()),
        (0, "hello from upstream path=/pkg"),
        "granted curl as nobody: {err}\n{}",
        daemon.log()
    );
    let allowed = wait_record("the granted connection", |r| {
        r["type"] == "connection.allowed" && r["user"]["uid"] == NOBODY
    });
    // The verified path needs /proc/PID/exe of another user's process:
    // CAP_SYS_PTRACE in the bounding set.
    assert_eq!(allowed["process"]["exe"], "/usr/bin/curl", "{allowed}");
    assert_eq!(allowed["target"], TARGET_NAME, "{allowed}");
    println!("granted: curl as nobody reached the target through the proxy");

    // Not granted: refused by the proxy (reset), recorded.
    let (code, _, err) = curl_as(&cgroup, OPERATOR, &url);
    assert_ne!(code, 0, "curl without a grant reached the target");
    assert!(
        err.contains("reset") || code == 56,
        "not a reset: {code} {err}"
    );
    let denied = wait_record("the refusal", |r| {
        r["type"] == "connection.denied" && r["user"]["uid"] == OPERATOR
    });
    assert_eq!(denied["code"], "no_grant", "{denied}");
    println!("refused: curl as uid {OPERATOR} without a grant (no_grant)");

    check_man_page();
    check_completions();
    check_metrics();

    // Stopped, the programs stay attached: targets refused (fail closed).
    let exit = daemon.stop();
    assert!(
        exit.success(),
        "the daemon did not stop cleanly: {exit}\n{}",
        daemon.log()
    );
    assert!(pins.is_dir(), "the pins went with the daemon");
    let (code, _, err) = curl_as(&cgroup, NOBODY, &url);
    assert_eq!(
        code, 7,
        "with the daemon down, curl should be refused (ECONNREFUSED): {err}"
    );
    println!("stopped: the target is refused (curl exit 7), the programs stay attached");
    let first_run = daemon;

    // Started again (a restart by systemd): the pins are reused, the grant
    // kept in the state directory.
    let mut daemon = Service::start(&unit, &sandbox, cgroup.path(), work.path(), "restart");
    let (code, body, err) = curl_as(&cgroup, NOBODY, &url);
    assert_eq!(
        (code, body.trim()),
        (0, "hello from upstream path=/pkg"),
        "granted curl after the restart: {err}\n{}",
        daemon.log()
    );
    println!("restarted: the grant survived, curl as nobody works again");
    let exit = daemon.stop();
    assert!(
        exit.success(),
        "the daemon did not stop cleanly: {exit}\n{}",
        daemon.log()
    );
    for run in [&first_run, &daemon] {
        if run.log().contains("max_connections does not fit") {
            println!(
                "note ({}): the open-file limit here is below LimitNOFILE, and the daemon said it serves fewer connections",
                run.what
            );
        }
    }
    check_system_calls(&unit, &[&first_run, &daemon]);
    // The audit log the sandboxed daemon wrote (umask, read-only system) is
    // whole: hash chain and signed checkpoints.
    let (code, out, err) = run(&mut cli(&["audit", "verify", "--config", CONFIG]));
    assert_eq!(code, 0, "jitproxy audit verify: {out}{err}");
    println!("audit verify: {}", out.lines().last().unwrap_or_default());

    // Purged: prerm detaches the programs; postrm removes config and state.
    let out = installed.purge();
    println!("dpkg --purge jitproxy:\n{out}");
    assert!(
        out.contains("detaching the eBPF programs"),
        "prerm did not say it detaches the programs:\n{out}"
    );
    assert!(
        out.contains(&format!("from {}", cgroup.path().display())) && out.contains("detached"),
        "prerm did not detach the test cgroup's programs:\n{out}"
    );
    let left = pin_dirs(cgroup_id);
    assert!(left.is_empty(), "pins left after the purge: {left:?}");
    for gone in [BIN, UNIT, CONFIG_DIR, STATE_DIR] {
        assert!(
            !Path::new(gone).exists(),
            "{gone} is still there after the purge"
        );
    }
    // Nothing attached: the connection goes direct.
    let (code, body, err) = curl_as(&cgroup, NOBODY, &url);
    assert_eq!(
        (code, body.trim()),
        (0, "hello from upstream path=/pkg"),
        "after the purge, curl should go direct: {err}"
    );
    assert!(api.accepted() >= 3);
    println!("purged: no pins left for cgroup {cgroup_id}; connections go direct");
}

/// Holds a connection to the target opened before the daemon starts; told
/// to go on, says how it ended.
const EARLY_CLIENT: &str = r#"
import socket, sys
t = socket.create_connection(("127.0.0.2", 8080), timeout=5)
print("connected", flush=True)
sys.stdin.readline()
t.settimeout(3)
try:
    print("eof" if not t.recv(4096) else "data", flush=True)
except ConnectionAbortedError:
    print("aborted", flush=True)
except ConnectionResetError:
    print("reset", flush=True)
except socket.timeout:
    print("still-open", flush=True)
"#;

/// This test installs and purges the package and uses the default paths and
/// port: refuse to run where that would clobber something.
fn preconditions() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "run as root: the test installs a package and loads eBPF programs"
    );
    let (ok, _, _) = output(Command::new("dpkg-query").args(["-W", "jitproxy"]));
    assert!(
        !ok,
        "the jitproxy package is installed on this machine; this test installs and purges it: remove it first"
    );
    for path in [BIN, UNIT, CONFIG_DIR, STATE_DIR, SOCKET] {
        assert!(
            !Path::new(path).exists(),
            "{path} exists; this test would replace or delete it (is jitproxy installed by hand, or the demo running?)"
        );
    }
    TcpListener::bind(("127.0.0.1", LISTEN_PORT)).unwrap_or_else(|e| {
        panic!("port {LISTEN_PORT} (the embedded default's) is taken: {e}; is the demo running?")
    });
}

/// `$JITPROXY_DEB` (set by `cargo xtask test`), else `cargo xtask package`.
fn deb_path() -> PathBuf {
    if let Some(deb) = std::env::var_os("JITPROXY_DEB") {
        let deb = PathBuf::from(deb);
        assert!(
            deb.is_file(),
            "JITPROXY_DEB={} is not a file",
            deb.display()
        );
        return deb;
    }
    println!("JITPROXY_DEB is not set: building the package with `cargo xtask package`");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["xtask", "package"])
        .current_dir(&root)
        .stderr(Stdio::inherit())
        .output()
        .expect("cannot run cargo xtask package");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo xtask package failed:\n{stdout}"
    );
    let deb = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    assert!(
        deb.is_file(),
        "cargo xtask package printed no package path:\n{stdout}"
    );
    deb
}

/// The package, installed; purged on drop (when the test did not).
struct Installed {
    purged: bool,
    /// Whether /run/jitproxy was there before (other daemons' locks live
    /// there): if not, it is removed again when empty.
    run_dir_existed: bool,
}

impl Installed {
    fn install(deb: &Path) -> Self {
        let run_dir_existed = Path::new(RUN_DIR).exists();
        let out = dpkg(&[OsArg::from("-i"), OsArg::from(deb)]);
        let installed = Self {
            purged: false,
            run_dir_existed,
        };
        assert!(out.status.success(), "dpkg -i failed:\n{}", text(&out));
        println!("dpkg -i:\n{}", text(&out));
        installed
    }

    /// `dpkg --purge jitproxy`; its output.
    fn purge(&mut self) -> String {
        let out = dpkg(&[OsArg::from("--purge"), OsArg::from("jitproxy")]);
        let said = text(&out);
        assert!(out.status.success(), "dpkg --purge failed:\n{said}");
        self.purged = true;
        said
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !self.purged {
            let (installed, _, _) = output(Command::new("dpkg-query").args(["-W", "jitproxy"]));
            if installed {
                let out = dpkg(&[OsArg::from("--purge"), OsArg::from("jitproxy")]);
                eprintln!("cleanup: dpkg --purge jitproxy:\n{}", text(&out));
                if !out.status.success() {
                    cleanup_failed("dpkg --purge jitproxy failed (see above)");
                }
            }
        }
        // Whatever the daemon or a failed purge left (none of it was there
        // before: see `preconditions`).
        for dir in [CONFIG_DIR, STATE_DIR] {
            let _ = fs::remove_dir_all(dir);
        }
        let _ = fs::remove_file(SOCKET);
        if !self.run_dir_existed {
            let _ = fs::remove_dir(RUN_DIR);
        }
    }
}

type OsArg = std::ffi::OsString;

/// dpkg, retried while another dpkg or apt holds its lock.
fn dpkg(args: &[OsArg]) -> Output {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = Command::new("dpkg")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .expect("cannot run dpkg");
        let said = text(&out);
        if out.status.success() || !said.contains("lock") || Instant::now() > deadline {
            return out;
        }
        thread::sleep(Duration::from_secs(1));
    }
}

/// Removes the test cgroup's pins if the purge did not (a failed test), and
/// its lock file.
struct PinsGuard {
    cgroup: PathBuf,
    id: u64,
}

impl Drop for PinsGuard {
    fn drop(&mut self) {
        // A daemon that failed to start leaves its lock behind.
        let _ = fs::remove_file(Path::new(RUN_DIR).join(format!("cgroup-{}.lock", self.id)));
        if pin_dirs(self.id).is_empty() || !self.cgroup.exists() {
            return;
        }
        let out = Command::new(jitproxy_bin())
            .args(["uninstall", "--cgroup"])
            .arg(&self.cgroup)
            .output();
        match out {
            Ok(out) if out.status.success() => {}
            Ok(out) => cleanup_failed(&format!(
                "uninstall of {} failed: {}",
                self.cgroup.display(),
                String::from_utf8_lossy(&out.stderr)
            )),
            Err(e) => cleanup_failed(&format!("cannot run {}: {e}", jitproxy_bin().display())),
        }
    }
}

/// The pin directories of cgroup `id`, of any layout.
fn pin_dirs(id: u64) -> Vec<PathBuf> {
    let suffix = format!("-cg{id}");
    fs::read_dir(Path::new(BPFFS).join("jitproxy"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(&suffix))
                .collect()
        })
        .unwrap_or_default()
}

/// A cleanup step failed: the test fails, unless it is failing already.
fn cleanup_failed(why: &str) {
    eprintln!("cleanup: {why}");
    if !thread::panicking() {
        panic!("cleanup: {why}");
    }
}

fn check_installed_files() {
    let mode = fs::metadata(STATE_DIR)
        .expect("postinst did not create the state directory")
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o700, "{STATE_DIR} has mode {mode:o}");
    let (ok, conffiles, _) =
        output(Command::new("dpkg-query").args(["-W", "-f", "${Conffiles}\n", "jitproxy"]));
    assert!(
        ok && conffiles.contains(CONFIG),
        "{CONFIG} is not a conffile: {conffiles}"
    );
    let (ok, embedded, _) = output(Command::new(BIN).args(["config", "default"]));
    assert!(ok, "jitproxy config default failed");
    assert_eq!(
        fs::read_to_string(CONFIG).expect("config installed"),
        embedded,
        "{CONFIG} is not the embedded default"
    );
    for path in [
        UNIT,
        "/usr/share/man/man1/jitproxy.1.gz",
        "/usr/share/man/man1/jitproxy-run.1.gz",
        "/usr/share/bash-completion/completions/jitproxy",
        "/usr/share/zsh/vendor-completions/_jitproxy",
        "/usr/share/fish/vendor_completions.d/jitproxy.fish",
    ] {
        assert!(Path::new(path).is_file(), "{path} was not installed");
    }
    // No systemd here: postinst started nothing.
    let (code, _, _) = run(&mut cli(&["status", "--json"]));
    assert_eq!(code, 3, "a daemon answers although nothing started one");
    println!(
        "installed: files in place, {CONFIG} the embedded default (a conffile), {STATE_DIR} 0700"
    );
}

fn check_man_page() {
    let (ok, page, err) = output(
        Command::new("man")
            .args(["-P", "cat", "jitproxy"])
            .env("MANWIDTH", "80"),
    );
    assert!(
        ok && page.contains("jitproxy"),
        "man jitproxy: {err}\n{page}"
    );
    assert!(
        page.contains("grant"),
        "the man page lists no commands:\n{page}"
    );
    println!("man jitproxy: renders ({} lines)", page.lines().count());
}

fn check_completions() {
    let (ok, out, err) = output(Command::new("bash").args([
        "-c",
        "source /usr/share/bash-completion/completions/jitproxy && complete -p jitproxy",
    ]));
    assert!(
        ok && out.contains("jitproxy"),
        "bash completion does not load: {err}{out}"
    );
    let zsh = fs::read_to_string("/usr/share/zsh/vendor-completions/_jitproxy").unwrap();
    assert!(
        zsh.starts_with("#compdef jitproxy"),
        "zsh completion: {zsh:.80}"
    );
    let fish = fs::read_to_string("/usr/share/fish/vendor_completions.d/jitproxy.fish").unwrap();
    assert!(
        fish.contains("complete -c jitproxy"),
        "fish completion: {fish:.80}"
    );
    println!(
        "completions: bash loads ({}), zsh and fish in place",
        out.trim()
    );
}

/// Where the test turns the metrics endpoint on: a Unix socket in the
/// unit's runtime directory.
const METRICS: &str = "unix:/run/jitproxy/metrics.sock";

/// The metrics endpoint the installed config sets (`metrics`, a top-level
/// key) answers with the series a dashboard needs, and no user names.
fn check_metrics() {
    let config = fs::read_to_string(CONFIG).expect("config");
    let addr = top_level_string(&config, "metrics").expect("the test set `metrics`");
    let mut curl = Command::new("curl");
    curl.args(["-sS", "-m", "5"]);
    match addr.strip_prefix("unix:") {
        Some(path) => curl.args(["--unix-socket", path, "http://localhost/metrics"]),
        None => curl.arg(format!("http://{addr}/metrics")),
    };
    let (ok, body, err) = output(&mut curl);
    assert!(ok, "GET /metrics at {addr}: {err}");
    for series in [
        format!(
            r#"jitproxy_audit_events_total{{event="connection.allowed",target="{TARGET_NAME}",code=""}} 1"#
        ),
        format!(
            r#"jitproxy_audit_events_total{{event="connection.denied",target="{TARGET_NAME}",code="no_grant"}} 1"#
        ),
        "jitproxy_grants_open 1".to_owned(),
        "jitproxy_kernel_redirected_total".to_owned(),
        "jitproxy_audit_fsync_seconds_bucket".to_owned(),
        "jitproxy_kernel_records_capacity".to_owned(),
    ] {
        assert!(body.contains(&series), "no `{series}` at {addr}:\n{body}");
    }
    assert!(!body.contains("nobody"), "a user name is a label:\n{body}");
    println!("metrics: {addr} answers ({} lines)", body.lines().count());
}

/// The string value of a top-level `key = "value"` line of a TOML text
/// (before its first table).
fn top_level_string(toml: &str, key: &str) -> Option<String> {
    toml.lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().trim_matches('"').to_owned())
}

/// `jitproxy ARGS` (the installed one) as root, on the default socket.
fn cli(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    cmd
}

fn status_json() -> Value {
    let (code, out, err) = run(&mut cli(&["status", "--json"]));
    assert_eq!(code, 0, "jitproxy status --json: {err}");
    serde_json::from_str(&out).expect("status is JSON")
}

/// Waits for an audit record (`jitproxy audit --json`) matching `pred`.
fn wait_record(what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, out, err) = run(&mut cli(&["audit", "--json"]));
        assert_eq!(code, 0, "jitproxy audit --json: {err}");
        if let Some(r) = out
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|r| pred(r))
        {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no audit record of {what} in 10 s:\n{out}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// curl inside the cgroup as `uid`: (exit code, body, stderr).
fn curl_as(cgroup: &Cgroup, uid: u32, url: &str) -> (i32, String, String) {
    let mut cmd = cgroup.command_as(uid, uid, "curl");
    run(cmd.args(["-sS", "-m", "5", url]))
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn output(cmd: &mut Command) -> (bool, String, String) {
    let (code, out, err) = run(cmd);
    (code == 0, out, err)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The `[Service]` section of a unit file: settings in order.
struct Unit {
    service: Vec<(String, String)>,
}

impl Unit {
    fn read(path: &Path) -> Self {
        let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut service = Vec::new();
        let mut section = String::new();
        let mut pending = String::new();
        for raw in text.lines() {
            let line = raw.trim();
            if pending.is_empty() && (line.starts_with('#') || line.starts_with(';')) {
                continue;
            }
            if let Some(continued) = line.strip_suffix('\\') {
                pending.push_str(continued);
                pending.push(' ');
                continue;
            }
            pending.push_str(line);
            let line = std::mem::take(&mut pending);
            if line.starts_with('[') {
                section = line;
            } else if let Some((key, value)) = line.split_once('=') {
                if section == "[Service]" {
                    service.push((key.trim().to_owned(), value.trim().to_owned()));
                }
            }
        }
        Self { service }
    }

    /// Every value of `key`, an empty assignment resetting the list.
    fn all(&self, key: &str) -> Vec<&str> {
        let mut values = Vec::new();
        for (k, v) in &self.service {
            if k == key {
                if v.is_empty() {
                    values.clear();
                } else {
                    values.push(v.as_str());
                }
            }
        }
        values
    }

    fn last(&self, key: &str) -> Option<&str> {
        self.all(key).last().copied()
    }

    fn yes(&self, key: &str) -> bool {
        matches!(self.last(key), Some("yes" | "true" | "on" | "1"))
    }

    /// The space-separated words of every value of `key`.
    fn words(&self, key: &str) -> Vec<String> {
        self.all(key).iter().flat_map(|v| split_words(v)).collect()
    }
}

/// Splits a unit-file command line or list into words, as systemd does for
/// the simple cases: whitespace, with '...' and "..." quoting.
fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => word.extend(chars.next()),
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// An Exec line: its prefixes (`-`, `+`, ...) and its words.
fn exec_line(line: &str) -> (String, Vec<String>) {
    let prefixes: String = line.chars().take_while(|c| "-@:+!".contains(*c)).collect();
    let words = split_words(&line[prefixes.len()..]);
    assert!(!words.is_empty(), "empty Exec line: {line}");
    (prefixes, words)
}

/// ExecStartPre lines run as systemd would before ExecStart ("+": with
/// full privileges, which is how root runs them here anyway).
fn run_exec_start_pre(unit: &Unit) {
    for line in unit.all("ExecStartPre") {
        let (prefixes, words) = exec_line(line);
        let (code, out, err) = run(Command::new(&words[0])
            .args(&words[1..])
            .env_clear()
            .env("PATH", SERVICE_PATH));
        assert!(
            code == 0 || prefixes.contains('-'),
            "ExecStartPre={line} failed ({code}): {out}{err}"
        );
        println!("ExecStartPre={line}: exit {code}");
    }
}

/// What of the unit's sandbox the test can rebuild with plain tools.
struct Sandbox {
    /// Capability names for setpriv (`bpf`, `net_admin`, ...).
    caps: Vec<String>,
    no_new_privs: bool,
    nofile: Option<u64>,
    umask: Option<String>,
    /// Writable in the read-only file system.
    rw_paths: Vec<PathBuf>,
    read_only_system: bool,
    read_only_sys: bool,
    read_only_cgroups: bool,
    private_tmp: bool,
    env: Vec<(String, String)>,
    watchdog_usec: Option<u64>,
}

impl Sandbox {
    fn from_unit(unit: &Unit) -> Self {
        let caps: Vec<String> = unit
            .words("CapabilityBoundingSet")
            .iter()
            .map(|c| c.trim_start_matches("CAP_").to_lowercase())
            .collect();
        assert!(!caps.is_empty(), "the unit sets no CapabilityBoundingSet");
        let nofile = unit.last("LimitNOFILE").map(|v| {
            let hard = v.rsplit(':').next().unwrap_or(v);
            hard.parse().unwrap_or_else(|_| panic!("LimitNOFILE={v}"))
        });
        let mut rw_paths: Vec<PathBuf> = unit
            .words("ReadWritePaths")
            .iter()
            .map(|p| PathBuf::from(p.trim_start_matches(['-', '+'])))
            .collect();
        for name in unit.words("RuntimeDirectory") {
            rw_paths.push(Path::new("/run").join(name));
        }
        for name in unit.words("StateDirectory") {
            rw_paths.push(Path::new("/var/lib").join(name));
        }
        let env = unit
            .words("Environment")
            .iter()
            .map(|kv| {
                let (k, v) = kv
                    .split_once('=')
                    .unwrap_or_else(|| panic!("Environment={kv}"));
                (k.to_owned(), v.to_owned())
            })
            .collect();
        let watchdog_usec = unit.last("WatchdogSec").map(|v| {
            let secs: u64 = v
                .trim_end_matches('s')
                .parse()
                .unwrap_or_else(|_| panic!("WatchdogSec={v}"));
            secs * 1_000_000
        });
        let protect_system = unit.last("ProtectSystem").unwrap_or("no");
        Self {
            caps,
            no_new_privs: unit.yes("NoNewPrivileges"),
            nofile,
            umask: unit.last("UMask").map(str::to_owned),
            rw_paths,
            read_only_system: protect_system == "strict",
            read_only_sys: unit.yes("ProtectKernelTunables"),
            read_only_cgroups: unit.yes("ProtectControlGroups"),
            private_tmp: unit.yes("PrivateTmp"),
            env,
            watchdog_usec,
        }
    }

    /// The open-file limit to set: the unit's, or the closest this process
    /// may set (as systemd's setrlimit_closest does).
    fn nofile_here(&self) -> Option<u64> {
        let (_, hard) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok()?;
        self.nofile.map(|n| n.min(hard))
    }

    /// The shell script that builds the sandbox in a new mount namespace,
    /// then execs "$@" with the unit's capabilities.
    fn script(&self) -> String {
        let q = shell_quote;
        let mut s = String::from("set -eu\n");
        // Writable paths first: bound onto themselves, they are mounts of
        // their own that stay writable below.
        for p in &self.rw_paths {
            s += &format!("mount --bind {0} {0}\n", q(p));
        }
        if self.private_tmp {
            for tmp in ["/tmp", "/var/tmp"] {
                if Path::new(tmp).is_dir() {
                    s += &format!("mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs {tmp}\n");
                }
            }
        }
        if self.read_only_sys {
            s += "mount --bind /proc/sys /proc/sys\nmount -o remount,bind,ro /proc/sys\n";
        }
        for m in self.read_only_mounts() {
            s += &format!(
                "mount -o remount,bind,ro {0} || echo \"sandbox: cannot make {0} read-only\" >&2\n",
                q(&m)
            );
        }
        if self.read_only_system {
            s += "if [ -w / ]; then echo 'sandbox: / is writable' >&2; exit 1; fi\n";
        }
        for p in &self.rw_paths {
            s += &format!(
                "if [ ! -w {0} ]; then echo 'sandbox: '{0}' is read-only' >&2; exit 1; fi\n",
                q(p)
            );
        }
        if let Some(umask) = &self.umask {
            s += &format!("umask {umask}\n");
        }
        if let Some(n) = self.nofile_here() {
            s += &format!("prlimit --pid $$ --nofile={n}:{n}\n");
        }
        let caps: Vec<String> = self.caps.iter().map(|c| format!("+{c}")).collect();
        s += &format!(
            "exec setpriv --bounding-set=-all,{} --inh-caps=-all{} -- \"$@\"\n",
            caps.join(","),
            if self.no_new_privs {
                " --no-new-privs"
            } else {
                ""
            }
        );
        s
    }

    /// The mounts made read-only: every mount of the host's table but the
    /// API file systems, the writable paths and the private /tmp.
    fn read_only_mounts(&self) -> Vec<PathBuf> {
        let table = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let cgroup_types = ["cgroup", "cgroup2"];
        let mut mounts = BTreeSet::new();
        for line in table.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let Some(point) = fields.get(4).map(|p| PathBuf::from(unescape(p))) else {
                continue;
            };
            let fstype = fields
                .iter()
                .position(|f| *f == "-")
                .and_then(|i| fields.get(i + 1))
                .copied()
                .unwrap_or_default();
            let under = |dir: &str| point.starts_with(dir);
            let read_only = if under("/proc")
                || under("/dev")
                || self.rw_paths.iter().any(|p| point.starts_with(p))
                || (self.private_tmp && (under("/tmp") || under("/var/tmp")))
            {
                false
            } else if under("/sys/fs/cgroup") || cgroup_types.contains(&fstype) {
                self.read_only_cgroups
            } else if under("/sys") {
                self.read_only_sys
            } else {
                self.read_only_system
            };
            if read_only {
                mounts.insert(point);
            }
        }
        mounts.into_iter().collect()
    }

    fn describe(&self) -> String {
        format!(
            "capability bounding set {} (setpriv{}), LimitNOFILE {} (prlimit), a mount namespace with {} \
             read-only but {}{}, umask {}",
            self.caps.join(","),
            if self.no_new_privs { ", NoNewPrivileges" } else { "" },
            self.nofile_here()
                .map_or("unset".to_owned(), |n| n.to_string()),
            if self.read_only_system { "everything" } else { "/sys" },
            self.rw_paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" "),
            if self.private_tmp { ", a private /tmp" } else { "" },
            self.umask.as_deref().unwrap_or("unset"),
        )
    }
}

/// `/proc/self/mountinfo` escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(b) => {
                out.push(char::from(b));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

/// The daemon, started from the unit's ExecStart line in the sandbox.
struct Service {
    what: &'static str,
    /// What was spawned: strace, or the daemon itself.
    child: Option<Child>,
    /// The daemon's pid, from `jitproxy status`.
    pid: u32,
    log: PathBuf,
    /// strace's per-process files (when strace is installed).
    trace: Option<PathBuf>,
    notify: Notify,
}

impl Service {
    fn start(
        unit: &Unit,
        sandbox: &Sandbox,
        cgroup: &Path,
        work: &Path,
        what: &'static str,
    ) -> Self {
        let line = unit
            .last("ExecStart")
            .expect("the unit has an ExecStart line");
        let (_, mut argv) = exec_line(line);
        argv.push("--cgroup".to_owned());
        argv.push(cgroup.display().to_string());
        println!(
            "{what}: PID 1 is not systemd, so the test runs the unit's ExecStart itself, with \
             --cgroup added so that it never attaches to the root cgroup:\n  {}",
            argv.join(" ")
        );
        println!(
            "  in an emulation of the unit's sandbox: {}",
            sandbox.describe()
        );
        let notify = Notify::bind(&work.join(format!("notify-{what}.sock")));
        let log = work.join(format!("daemon-{what}.log"));
        let trace = strace_available().then(|| work.join(format!("trace-{what}")));
        let mut cmd = match &trace {
            Some(dir) => {
                fs::create_dir_all(dir).unwrap();
                println!("  under strace, to check the system calls against the unit's filters");
                let mut cmd = Command::new("strace");
                cmd.args(["-ff", "-qq", "-o"])
                    .arg(dir.join("t"))
                    .arg("unshare");
                cmd
            }
            None => {
                println!("  (strace is not installed: system calls not checked)");
                Command::new("unshare")
            }
        };
        cmd.args(["--mount", "--propagation", "slave", "--", "/bin/sh", "-c"])
            .arg(sandbox.script())
            .arg("jitproxy-sandbox")
            .args(&argv);
        println!(
            "  not emulated: SystemCallFilter (checked with strace instead), PrivateDevices, \
             ProtectKernelModules/Logs, ProtectClock, ProtectHostname, RestrictNamespaces, \
             RestrictRealtime, RestrictSUIDSGID, LockPersonality, PrivateIPC"
        );
        cmd.env_clear()
            .env("PATH", SERVICE_PATH)
            .env("RUNTIME_DIRECTORY", RUN_DIR)
            .env("STATE_DIRECTORY", STATE_DIR)
            .env("NOTIFY_SOCKET", &notify.path);
        if let Some(usec) = sandbox.watchdog_usec {
            cmd.env("WATCHDOG_USEC", usec.to_string());
        }
        for (k, v) in &sandbox.env {
            cmd.env(k, v);
        }
        // RuntimeDirectory=, as systemd makes it.
        if !Path::new(RUN_DIR).exists() {
            fs::create_dir(RUN_DIR).unwrap();
            fs::set_permissions(RUN_DIR, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let log_file = fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("cannot start the unit's ExecStart");
        let mut service = Self {
            what,
            child: Some(child),
            pid: 0,
            log,
            trace,
            notify,
        };
        service.wait_ready();
        service
    }

    /// Waits until the daemon answers `jitproxy status` on the default
    /// socket (after the programs are attached and the listeners bound).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (code, out, _) = run(&mut cli(&["status", "--json"]));
            if code == 0 {
                let status: Value = serde_json::from_str(&out).expect("status is JSON");
                let pid = status["pid"].as_u64().expect("pid in status");
                self.pid = u32::try_from(pid).unwrap();
                let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
                assert_eq!(
                    exe,
                    Path::new(BIN),
                    "the daemon answering is not the package's"
                );
                return;
            }
            let child = self.child.as_mut().unwrap();
            if let Some(exit) = child.try_wait().unwrap() {
                panic!(
                    "the daemon exited with {exit} before it answered:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not answer in 60 s:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon runs with exactly the unit's capabilities (those of them
    /// this machine has), and the sandbox was built whole.
    fn check_capabilities(&self, sandbox: &Sandbox) {
        let mask = |status: &str, key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
                .unwrap_or_else(|| panic!("no {key} in a /proc/PID/status"))
        };
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        let host = mask(&fs::read_to_string("/proc/self/status").unwrap(), "CapBnd:");
        let wanted = sandbox.caps.iter().fold(0u64, |m, name| {
            let bit = CAPS
                .iter()
                .position(|c| c == name)
                .unwrap_or_else(|| panic!("unknown capability {name}"));
            m | 1 << bit
        }) & host;
        let names = |m: u64| {
            CAPS.iter()
                .enumerate()
                .filter(|(i, _)| m & 1 << i != 0)
                .map(|(_, c)| *c)
                .collect::<Vec<_>>()
                .join(",")
        };
        for key in ["CapEff:", "CapBnd:"] {
            assert_eq!(
                names(mask(&status, key)),
                names(wanted),
                "the daemon's {key} is not the unit's CapabilityBoundingSet"
            );
        }
        assert_eq!(
            mask(&status, "NoNewPrivs:"),
            u64::from(sandbox.no_new_privs),
            "NoNewPrivs"
        );
        let log = self.log();
        let partial: Vec<&str> = log.lines().filter(|l| l.starts_with("sandbox:")).collect();
        assert!(partial.is_empty(), "the sandbox is not whole: {partial:?}");
        println!("capabilities: the daemon has exactly {}", names(wanted));
    }

    /// Type=notify: the daemon said READY=1 on $NOTIFY_SOCKET (else systemd
    /// would fail the start after TimeoutStartSec and kill it).
    fn check_notify(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !self.notify.got("READY=1") {
            thread::sleep(Duration::from_millis(50));
        }
        assert!(
            self.notify.got("READY=1"),
            "no READY=1 on NOTIFY_SOCKET within 5 s of the daemon answering (Type=notify); it sent {:?}",
            self.notify.got.lock().unwrap()
        );
        println!("notify: READY=1 received (Type=notify)");
    }

    /// SIGTERM to the daemon's pid; waits for it to exit.
    fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the daemon runs");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.pid).unwrap()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(exit) = child.try_wait().unwrap() {
                return exit;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "the daemon did not stop within 30 s of SIGTERM:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // By pid, and only while that pid is still the package's daemon.
        if self.pid != 0
            && fs::read_link(format!("/proc/{}/exe", self.pid)).is_ok_and(|e| e == Path::new(BIN))
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(self.pid).unwrap_or(0)),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn strace_available() -> bool {
    Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A stand-in for systemd's notify socket: collects what the daemon sends.
struct Notify {
    path: PathBuf,
    got: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Notify {
    fn bind(path: &Path) -> Self {
        let _ = fs::remove_file(path);
        let socket = UnixDatagram::bind(path).expect("notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (got, stop) = (Arc::clone(&got), Arc::clone(&stop));
            thread::spawn(move || {
                let mut buf = vec![0u8; 4096];
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(n) = socket.recv(&mut buf) {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        got.lock().unwrap().extend(text.lines().map(str::to_owned));
                    }
                }
            })
        };
        Self {
            path: path.to_owned(),
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn got(&self, message: &str) -> bool {
        self.got.lock().unwrap().iter().any(|m| m == message)
    }
}

impl Drop for Notify {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = fs::remove_file(&self.path);
    }
}

/// What the daemon did, from strace's files: system calls, socket families,
/// and calls MemoryDenyWriteExecute refuses.
#[derive(Default)]
struct Traced {
    calls: BTreeSet<String>,
    families: BTreeSet<String>,
    write_exec: Vec<String>,
}

impl Traced {
    fn read(dir: &Path, into: &mut Self) {
        for entry in fs::read_dir(dir).expect("trace directory") {
            let text = fs::read_to_string(entry.unwrap().path()).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            // The daemon's main thread also ran unshare, sh and setpriv
            // before it exec'd the daemon: only what follows that counts.
            // Other files with an exec are the sandbox's helpers (mount,
            // prlimit); the rest are the daemon's threads.
            let exec = format!("execve(\"{BIN}\"");
            let daemon_lines = match lines
                .iter()
                .rposition(|l| l.starts_with(&exec) && l.ends_with("= 0"))
            {
                Some(i) => &lines[i + 1..],
                None if lines.iter().any(|l| l.starts_with("execve(")) => continue,
                None => &lines[..],
            };
            for line in daemon_lines {
                let name: String = line
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if name.is_empty() || !line[name.len()..].starts_with('(') {
                    continue;
                }
                let args = &line[name.len() + 1..];
                if name == "socket" || name == "socketpair" {
                    into.families
                        .insert(args.split(',').next().unwrap_or_default().to_owned());
                }
                let write_exec = match name.as_str() {
                    "mmap" => args.contains("PROT_WRITE") && args.contains("PROT_EXEC"),
                    "mprotect" | "pkey_mprotect" => args.contains("PROT_EXEC"),
                    _ => false,
                };
                if write_exec {
                    into.write_exec.push((*line).to_owned());
                }
                into.calls.insert(name);
            }
        }
    }
}

/// The system calls a `SystemCallFilter=` list allows, expanded with
/// `systemd-analyze syscall-filter`; `None` without systemd-analyze.
fn allowed_calls(unit: &Unit) -> Option<BTreeSet<String>> {
    fn expand(group: &str, seen: &mut BTreeSet<String>) -> Option<BTreeSet<String>> {
        let mut calls = BTreeSet::new();
        if !group.starts_with('@') {
            calls.insert(group.to_owned());
            return Some(calls);
        }
        if !seen.insert(group.to_owned()) {
            return Some(calls);
        }
        let out = Command::new("systemd-analyze")
            .args(["syscall-filter", "--no-pager", group])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // Members are indented; comments start with '#'.
            let Some(member) = line.strip_prefix("    ").map(str::trim) else {
                continue;
            };
            if member.is_empty() || member.starts_with('#') {
                continue;
            }
            calls.extend(expand(member, seen)?);
        }
        Some(calls)
    }
    let mut allowed = BTreeSet::new();
    let mut denied = BTreeSet::new();
    for value in unit.all("SystemCallFilter") {
        let (deny, list) = match value.strip_prefix('~') {
            Some(list) => (true, list),
            None => (false, value),
        };
        for word in split_words(list) {
            let calls = expand(&word, &mut BTreeSet::new())?;
            if deny {
                denied.extend(calls);
            } else {
                allowed.extend(calls);
            }
        }
    }
    // Always allowed by systemd, whatever the filter.
    for call in [
        "execve",
        "exit",
        "exit_group",
        "getrlimit",
        "rt_sigreturn",
        "sigreturn",
    ] {
        allowed.insert(call.to_owned());
    }
    Some(allowed.difference(&denied).cloned().collect())
}

/// Every system call the daemon made is one the unit's SystemCallFilter
/// allows (else systemd would answer EPERM); every socket it made is of a
/// family RestrictAddressFamilies allows; no writable-executable memory.
fn check_system_calls(unit: &Unit, runs: &[&Service]) {
    let mut traced = Traced::default();
    for run in runs {
        match &run.trace {
            Some(dir) => Traced::read(dir, &mut traced),
            None => return,
        }
    }
    assert!(
        traced.calls.contains("bpf") && traced.calls.contains("accept4"),
        "the traces do not look like the daemon's: {:?}",
        traced.calls
    );
    let Some(allowed) = allowed_calls(unit) else {
        println!("system calls: systemd-analyze cannot expand SystemCallFilter here; not checked");
        return;
    };
    let outside: Vec<&String> = traced.calls.difference(&allowed).collect();
    assert!(
        outside.is_empty(),
        "the daemon made system calls the unit's SystemCallFilter refuses: {outside:?}"
    );
    let families: BTreeSet<String> = unit.words("RestrictAddressFamilies").into_iter().collect();
    let foreign: Vec<&String> = traced.families.difference(&families).collect();
    assert!(
        foreign.is_empty(),
        "the daemon made sockets of families RestrictAddressFamilies refuses: {foreign:?}"
    );
    if unit.yes("MemoryDenyWriteExecute") {
        assert!(
            traced.write_exec.is_empty(),
            "MemoryDenyWriteExecute would refuse: {:?}",
            traced.write_exec
        );
    }
    println!(
        "system calls: all {} the daemon made are allowed by SystemCallFilter; socket families {:?} by RestrictAddressFamilies; no writable-executable memory\n  {}",
        traced.calls.len(),
        traced.families,
        traced.calls.iter().cloned().collect::<Vec<_>>().join(" ")
    );
}
