//! `jitproxy doctor`: checks this host before a run and says what to fix.
//!
//! One finding per check: `ok`, `warn` or `FAIL`, what was found, and for
//! warn and FAIL what to do next; exit 1 if any check FAILed. Everything
//! the host said is escaped ([`Escaped`]) in the text output; `--json`
//! keeps it exact.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::fs::MetadataExt as _,
    path::Path,
};

use jiff::{tz::TimeZone, Timestamp};
use serde::Serialize;

use super::{escape::Escaped, render::print_json, CmdError, Exit};
use crate::{
    config::{check_listen_port, Config, UnprivilegedPorts},
    host::{
        cgroup::{self, CgroupError},
        checks::{self, cap, CapSet, FreeSpace},
        net, proc, socket,
    },
};

/// The oldest kernel with every hook and helper the programs use: the
/// newest of them is `bpf_skc_to_mptcp_sock` (5.19), which tells MPTCP
/// subflows apart.
const MIN_KERNEL: (u32, u32) = (5, 19);
/// Free space for the audit log below which a run is refused here...
const DISK_FAIL_BYTES: u64 = 100 * MIB;
/// ...and below which it is warned about.
const DISK_WARN_BYTES: u64 = GIB;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// When the build was made, where the build environment says so
/// (reproducible builds set `SOURCE_DATE_EPOCH`, seconds since the epoch).
const BUILD_EPOCH: Option<&str> = option_env!("SOURCE_DATE_EPOCH");
/// Without a build time, a clock before this year is wrong.
const MIN_YEAR: i16 = 2024;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Warn,
    Fail,
    /// Not checked (yet): the line says why.
    Skip,
}

impl Status {
    /// As the text output shows it.
    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "FAIL",
            Self::Skip => "skip",
        }
    }
}

/// One check: what it looked at, how it came out, what it found, and (warn
/// and FAIL) what to do next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Finding {
    check: String,
    status: Status,
    found: String,
    fix: Option<String>,
}

impl Finding {
    fn ok(check: &str, found: impl Into<String>) -> Self {
        Self::new(check, Status::Ok, found.into(), None)
    }

    fn warn(check: &str, found: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(check, Status::Warn, found.into(), Some(fix.into()))
    }

    fn fail(check: &str, found: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(check, Status::Fail, found.into(), Some(fix.into()))
    }

    fn new(check: &str, status: Status, found: String, fix: Option<String>) -> Self {
        Self {
            check: check.to_owned(),
            status,
            found,
            fix,
        }
    }
}

/// `jitproxy doctor`: every check, printed; exit 1 if any FAILed.
pub(super) fn doctor(config: &Config, json: bool) -> Result<Exit, CmdError> {
    let findings = run_checks(config);
    if json {
        print_json(&findings);
    } else {
        print!("{}", render_text(&findings));
    }
    Ok(if findings.iter().any(|f| f.status == Status::Fail) {
        Exit::Failure
    } else {
        Exit::Success
    })
}

fn run_checks(config: &Config) -> Vec<Finding> {
    let mut findings = vec![
        kernel(),
        btf(),
        cgroup_v2(),
        cgroup_v1_net(),
        bpffs(&config.bpffs),
    ];
    findings.extend(capabilities());
    let ports = net::unprivileged_ports();
    findings.push(listen_port_privileged(config.listen_port, &ports));
    findings.extend(listen_port_free(config.listen_port, ports.start));
    findings.push(state_dir(&config.state_dir));
    findings.push(grants_db(&config.state_dir.join("grants.db")));
    findings.push(audit_disk(&config.audit_dir()));
    findings.push(clock());
    findings.push(Finding::new(
        "CA trust store",
        Status::Skip,
        "checked with inspect mode, which is not built yet".to_owned(),
        None,
    ));
    findings
}

/// One line per check (escaped), then a summary.
fn render_text(findings: &[Finding]) -> String {
    let width = findings
        .iter()
        .map(|f| Escaped(&f.check).to_string().chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for f in findings {
        let check = Escaped(&f.check).to_string();
        out.push_str(&format!(
            "{:<4}  {check:<width$}  {}",
            f.status.label(),
            Escaped(&f.found)
        ));
        if let Some(fix) = &f.fix {
            out.push_str(&format!("; fix: {}", Escaped(fix)));
        }
        out.push('\n');
    }
    let count = |status| findings.iter().filter(|f| f.status == status).count();
    let (failed, warned) = (count(Status::Fail), count(Status::Warn));
    out.push_str(&match (failed, warned) {
        (0, 0) => "all checks passed\n".to_owned(),
        (0, w) => format!("no check failed; {w} warning(s)\n"),
        (n, w) => format!(
            "{n} check(s) FAILed, {w} warning(s): fix the FAIL lines before `jitproxy run`\n"
        ),
    });
    out
}

fn kernel() -> Finding {
    match checks::kernel_release() {
        Ok(release) => kernel_finding(&release),
        Err(e) => Finding::fail(
            "kernel",
            format!("cannot read the kernel release: {e}"),
            "mount /proc (jitproxy reads the host from it)",
        ),
    }
}

fn kernel_finding(release: &str) -> Finding {
    const CHECK: &str = "kernel";
    let min = version(MIN_KERNEL);
    match checks::kernel_version(release) {
        None => Finding::warn(
            CHECK,
            format!("release `{release}` does not start with a version number"),
            format!("make sure it is Linux {min} or newer"),
        ),
        Some(v) if v < MIN_KERNEL => Finding::fail(
            CHECK,
            format!(
                "Linux {release}: older than {min}, the oldest with every hook and helper the programs use"
            ),
            format!("upgrade the kernel to {min} or newer (tested on 6.18)"),
        ),
        Some(_) => Finding::ok(CHECK, format!("Linux {release} ({min} or newer needed)")),
    }
}

fn version((major, minor): (u32, u32)) -> String {
    format!("{major}.{minor}")
}

fn btf() -> Finding {
    const CHECK: &str = "BTF";
    let path = checks::VMLINUX_BTF;
    let rebuild =
        "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distribution kernels are): \
                   the daemon reads the kernel's structure offsets from it";
    match checks::btf_size() {
        Ok(0) => Finding::fail(CHECK, format!("{path} is empty"), rebuild),
        Ok(size) => Finding::ok(CHECK, format!("{path} ({})", bytes(size))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Finding::fail(CHECK, format!("{path} does not exist"), rebuild)
        }
        Err(e) => Finding::fail(
            CHECK,
            format!("cannot read {path}: {e}"),
            "run doctor as root, as the daemon runs: it reads the kernel's structure offsets from it",
        ),
    }
}

fn cgroup_v2() -> Finding {
    const CHECK: &str = "cgroup v2";
    match cgroup::cgroup2_mount() {
        Ok(point) => Finding::ok(CHECK, format!("mounted at {}", point.display())),
        Err(CgroupError::NoCgroup2) => Finding::fail(
            CHECK,
            "no cgroup2 filesystem in /proc/mounts",
            "mount one (e.g. `mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 none \
             /sys/fs/cgroup/unified`), or boot with systemd.unified_cgroup_hierarchy=1",
        ),
        Err(e) => Finding::fail(
            CHECK,
            e.to_string(),
            "mount /proc: the daemon finds the cgroup2 mount in /proc/mounts",
        ),
    }
}

fn cgroup_v1_net() -> Finding {
    const CHECK: &str = "cgroup v1 net";
    match cgroup::check_no_v1_net_controllers() {
        Ok(()) => Finding::ok(CHECK, "no net_cls or net_prio hierarchy mounted"),
        Err(CgroupError::V1NetController(controller)) => Finding::fail(
            CHECK,
            format!(
                "cgroup v1 controller `{controller}` is mounted: the kernel then skips cgroup v2 \
                 socket programs, so the daemon refuses to start"
            ),
            format!(
                "unmount that hierarchy (`grep {controller} /proc/mounts` shows where), or boot \
                 with cgroup_no_v1=net_cls,net_prio"
            ),
        ),
        Err(e) => Finding::fail(
            CHECK,
            e.to_string(),
            "mount /proc: without the mount table the daemon refuses to start",
        ),
    }
}

fn bpffs(path: &Path) -> Finding {
    const CHECK: &str = "bpffs";
    let mount = format!("mount it now: mount -t bpf bpf {}", path.display());
    match proc::mounts() {
        Ok(mounts) if mounts.iter().any(|m| m.point == path && m.fstype == "bpf") => {
            Finding::ok(CHECK, format!("mounted at {}", path.display()))
        }
        Ok(_) => Finding::warn(
            CHECK,
            format!("not mounted at {}", path.display()),
            format!(
                "nothing to do: the daemon mounts it there at start (with CAP_SYS_ADMIN); or {mount}"
            ),
        ),
        Err(e) => Finding::warn(
            CHECK,
            format!("cannot read the mount table: {e}"),
            format!("mount /proc; the daemon mounts bpffs itself if it is missing, or {mount}"),
        ),
    }
}

/// The capabilities the daemon needs: number, name, what for.
const NEEDED_CAPS: [(u8, &str, &str); 5] = [
    (cap::BPF, "CAP_BPF", "load the eBPF programs"),
    (
        cap::NET_ADMIN,
        "CAP_NET_ADMIN",
        "attach the programs to the cgroup, mark upstream sockets (SO_MARK) and end connections \
         through sock_diag",
    ),
    (
        cap::SYS_PTRACE,
        "CAP_SYS_PTRACE",
        "read /proc/PID/exe of other users' processes (the executable's verified path in \
         audit records)",
    ),
    (
        cap::NET_BIND_SERVICE,
        "CAP_NET_BIND_SERVICE",
        "listen on listen_port, a privileged port",
    ),
    (
        cap::PERFMON,
        "CAP_PERFMON",
        "let the programs read the caller's login uid and executable",
    ),
];

fn capabilities() -> Vec<Finding> {
    match checks::effective_capabilities() {
        Ok(caps) => capability_findings(caps, nix::unistd::geteuid().is_root()),
        Err(e) => vec![Finding::fail(
            "capabilities",
            format!("cannot read this process's capabilities: {e}"),
            "mount /proc, and run doctor as root, as the daemon runs",
        )],
    }
}

/// One finding per needed capability, from the effective set `caps` of a
/// process that is (or is not) root.
fn capability_findings(caps: CapSet, root: bool) -> Vec<Finding> {
    NEEDED_CAPS
        .iter()
        .map(|&(number, name, what_for)| {
            if caps.has(number) {
                return Finding::ok(
                    name,
                    format!("effective: the daemon needs it to {what_for}"),
                );
            }
            // The kernel takes CAP_SYS_ADMIN for these two (bpf_capable,
            // perfmon_capable): before 5.8 it knew neither.
            if matches!(number, cap::BPF | cap::PERFMON) && caps.has(cap::SYS_ADMIN) {
                return Finding::ok(
                    name,
                    format!(
                        "not effective, but CAP_SYS_ADMIN stands in for it: the daemon needs \
                         it to {what_for}"
                    ),
                );
            }
            let fix = if root {
                "give it to the daemon (systemd: AmbientCapabilities= and CapabilityBoundingSet=; \
                 a container: --cap-add)"
            } else {
                "the daemon runs as root: run doctor the same way (sudo jitproxy doctor)"
            };
            Finding::fail(
                name,
                format!(
                    "not effective for this process{}: the daemon needs it to {what_for}",
                    if root { "" } else { " (not root)" }
                ),
                fix,
            )
        })
        .collect()
}

fn listen_port_privileged(port: u16, ports: &UnprivilegedPorts) -> Finding {
    const CHECK: &str = "listen port";
    let start = ports.start;
    match (check_listen_port(port, start), &ports.assumed) {
        (Err(exposed), assumed) => Finding::fail(
            CHECK,
            format!(
                "listen_port {port}; net.ipv4.ip_unprivileged_port_start is {start}{}",
                assumed
                    .as_ref()
                    .map(|why| format!(" (assumed: {why})"))
                    .unwrap_or_default()
            ),
            exposed.message(port),
        ),
        (Ok(()), Some(why)) => Finding::warn(
            CHECK,
            format!("listen_port {port} is below {start}, which is assumed: {why}"),
            "check net.ipv4.ip_unprivileged_port_start (sysctl) and keep listen_port below it",
        ),
        (Ok(()), None) => Finding::ok(
            CHECK,
            format!(
                "listen_port {port} is below net.ipv4.ip_unprivileged_port_start ({start}): \
                 no unprivileged user can bind it"
            ),
        ),
    }
}

/// Whether the daemon could bind its two listeners now.
fn listen_port_free(port: u16, unprivileged_start: u16) -> Vec<Finding> {
    [
        ("listen IPv4", SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
        ("listen IPv6", SocketAddr::from((Ipv6Addr::LOCALHOST, port))),
    ]
    .into_iter()
    .map(|(check, addr)| bind_finding(check, addr, &socket::try_bind(addr), unprivileged_start))
    .collect()
}

fn bind_finding(
    check: &str,
    addr: SocketAddr,
    bound: &io::Result<()>,
    unprivileged_start: u16,
) -> Finding {
    let port = addr.port();
    let Err(e) = bound else {
        return Finding::ok(check, format!("{addr} is free"));
    };
    match (e.kind(), e.raw_os_error()) {
        (io::ErrorKind::AddrInUse, _) => Finding::fail(
            check,
            format!("{addr} is in use"),
            format!(
                "a jitproxy daemon may already be running on it, or another program holds it \
                 (`ss -ltnp 'sport = :{port}'` names it): stop it, or set listen_port to a free \
                 port below {unprivileged_start}"
            ),
        ),
        (io::ErrorKind::PermissionDenied, _) => Finding::warn(
            check,
            format!("cannot bind {addr} to check it: {e}"),
            "binding a privileged port needs CAP_NET_BIND_SERVICE: run doctor as root \
             (sudo jitproxy doctor)",
        ),
        (io::ErrorKind::AddrNotAvailable, _) | (_, Some(libc::EAFNOSUPPORT)) if addr.is_ipv6() => {
            Finding::fail(
                check,
                format!("cannot bind {addr}: {e}"),
                "the daemon listens on ::1 as well as 127.0.0.1: enable IPv6 on loopback \
                 (`sysctl -w net.ipv6.conf.lo.disable_ipv6=0`; not booted with ipv6.disable=1)",
            )
        }
        (io::ErrorKind::AddrNotAvailable, _) => Finding::fail(
            check,
            format!("cannot bind {addr}: {e}"),
            "bring the loopback interface up (`ip link set lo up`)",
        ),
        _ => Finding::fail(
            check,
            format!("cannot bind {addr}: {e}"),
            "the daemon binds it at start and would fail the same way; fix what the error says",
        ),
    }
}

fn state_dir(path: &Path) -> Finding {
    match std::fs::metadata(path) {
        Ok(meta) => state_dir_finding(path, meta.is_dir(), meta.uid(), meta.mode()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Finding::warn(
            "state dir",
            format!("{} does not exist", path.display()),
            "nothing to do: the daemon creates it (mode 0700) at start",
        ),
        Err(e) => Finding::fail(
            "state dir",
            format!("cannot look at {}: {e}", path.display()),
            "run doctor as root, as the daemon runs, and check the path (state_dir)",
        ),
    }
}

/// The state directory, from its type, owner and mode: whoever else can
/// write there can replace the grant database and the audit signing key.
fn state_dir_finding(path: &Path, is_dir: bool, uid: u32, mode: u32) -> Finding {
    const CHECK: &str = "state dir";
    let shown = path.display();
    if !is_dir {
        return Finding::fail(
            CHECK,
            format!("{shown} is not a directory"),
            "move it away, or set state_dir to a directory: the daemon keeps its grant database \
             and audit key there",
        );
    }
    let perm = mode & 0o7777;
    let mut problems = Vec::new();
    let mut fixes = Vec::new();
    if uid != 0 {
        problems.push(format!("owned by uid {uid}, not root"));
        fixes.push(format!("chown root:root {shown}"));
    }
    if perm & 0o022 != 0 {
        problems.push(format!("mode {perm:04o} lets group or others write"));
        fixes.push(format!("chmod 0700 {shown}"));
    }
    if problems.is_empty() {
        return Finding::ok(CHECK, format!("{shown}: owned by root, mode {perm:04o}"));
    }
    Finding::fail(
        CHECK,
        format!("{shown}: {}", problems.join("; ")),
        format!(
            "{} (whoever else can write there can replace the grant database and the audit \
             signing key)",
            fixes.join(" and ")
        ),
    )
}

fn grants_db(path: &Path) -> Finding {
    match std::fs::metadata(path) {
        Ok(meta) => grants_db_finding(path, meta.uid(), meta.mode()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Finding::ok(
            "grants.db",
            format!(
                "{} not created yet (the daemon creates it, mode 0600)",
                path.display()
            ),
        ),
        Err(e) => Finding::warn(
            "grants.db",
            format!("cannot look at {}: {e}", path.display()),
            "run doctor as root, as the daemon runs",
        ),
    }
}

/// The grant database, from its owner and mode (0600: grants name users
/// and reasons, and decide access).
fn grants_db_finding(path: &Path, uid: u32, mode: u32) -> Finding {
    const CHECK: &str = "grants.db";
    let shown = path.display();
    let perm = mode & 0o7777;
    if uid != 0 || perm & 0o022 != 0 {
        let who = if uid == 0 {
            format!("mode {perm:04o} lets group or others write")
        } else {
            format!("owned by uid {uid}, not root (mode {perm:04o})")
        };
        return Finding::fail(
            CHECK,
            format!("{shown}: {who}"),
            format!(
                "chown root:root {shown} && chmod 0600 {shown}, then review the grants \
                 (jitproxy grants --all): they may have been edited"
            ),
        );
    }
    if perm & 0o077 != 0 {
        return Finding::warn(
            CHECK,
            format!("{shown}: mode {perm:04o} lets group or others read grants"),
            format!("chmod 0600 {shown} (the daemon also sets 0600 when it opens it)"),
        );
    }
    Finding::ok(CHECK, format!("{shown}: owned by root, mode {perm:04o}"))
}

fn audit_disk(dir: &Path) -> Finding {
    match checks::free_space(dir) {
        Ok(space) => disk_finding(dir, &space),
        Err(e) => Finding::fail(
            "audit disk",
            format!("cannot measure free space for {}: {e}", dir.display()),
            "check `[audit] dir` (default <state_dir>/audit): the daemon refuses connections to \
             targets when it cannot write the audit log",
        ),
    }
}

/// Free space for the audit log: FAIL below 100 MiB, warn below 1 GiB.
fn disk_finding(dir: &Path, space: &FreeSpace) -> Finding {
    const CHECK: &str = "audit disk";
    let place = if space.measured == dir {
        dir.display().to_string()
    } else {
        format!(
            "{} (where {} will be created)",
            space.measured.display(),
            dir.display()
        )
    };
    let found = format!(
        "{} free of {} at {place}",
        bytes(space.available),
        bytes(space.total)
    );
    if space.available < DISK_FAIL_BYTES {
        Finding::fail(
            CHECK,
            found,
            "free space there, or set `[audit] dir` on a bigger filesystem: when the audit log \
             cannot be written, connections to targets are refused",
        )
    } else if space.available < DISK_WARN_BYTES {
        Finding::warn(
            CHECK,
            found,
            "free space there, or set `[audit] dir` on a bigger filesystem (the log keeps \
             `retention`, 90 days by default); when it fills, connections to targets are refused",
        )
    } else {
        Finding::ok(CHECK, found)
    }
}

/// `n` bytes for people: MiB below a GiB, else GiB with one decimal.
fn bytes(n: u64) -> String {
    if n < GIB {
        format!("{} MiB", n / MIB)
    } else {
        let gib = n as f64 / GIB as f64;
        format!("{gib:.1} GiB")
    }
}

fn clock() -> Finding {
    let built = BUILD_EPOCH
        .and_then(|s| s.trim().parse::<i64>().ok())
        .and_then(|s| Timestamp::from_second(s).ok());
    clock_finding(Timestamp::now(), built)
}

/// The system time, against the build's (if known), else against
/// [`MIN_YEAR`].
fn clock_finding(now: Timestamp, built: Option<Timestamp>) -> Finding {
    const CHECK: &str = "clock";
    let fix = "set the clock (e.g. `timedatectl set-ntp true`, or `chronyc makestep`): grant \
               windows, request expiry and audit times follow it";
    let shown = |t: Timestamp| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    match built {
        Some(built) if now < built => Finding::warn(
            CHECK,
            format!(
                "the system time {} is before this binary was built ({})",
                shown(now),
                shown(built)
            ),
            fix,
        ),
        Some(built) => Finding::ok(
            CHECK,
            format!(
                "{} (after this binary's build, {})",
                shown(now),
                shown(built)
            ),
        ),
        None if now.to_zoned(TimeZone::UTC).year() < MIN_YEAR => Finding::warn(
            CHECK,
            format!("the system time {} is before {MIN_YEAR}", shown(now)),
            fix,
        ),
        None => Finding::ok(CHECK, format!("{} (UTC)", shown(now))),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn kernels_older_than_5_19_fail() {
        assert_eq!(kernel_finding("4.19.0-27-amd64").status, Status::Fail);
        assert_eq!(kernel_finding("5.10.0-28-amd64").status, Status::Fail);
        assert_eq!(kernel_finding("5.18.19").status, Status::Fail);
        assert_eq!(kernel_finding("5.19.0").status, Status::Ok);
        assert_eq!(kernel_finding("6.18.44-fc-v657").status, Status::Ok);
        assert_eq!(kernel_finding("weird").status, Status::Warn);
        let old = kernel_finding("5.4.0");
        assert!(
            old.found.contains("5.4.0") && old.found.contains("5.19"),
            "{old:?}"
        );
        assert!(old.fix.is_some_and(|f| f.contains("upgrade")));
    }

    #[test]
    fn missing_capabilities_fail_and_sys_admin_stands_in_for_bpf_and_perfmon() {
        let all = CapSet(0x1ff_ffff_ffff);
        let found = capability_findings(all, true);
        assert_eq!(found.len(), 5);
        assert!(found.iter().all(|f| f.status == Status::Ok), "{found:?}");

        // A kernel before 5.8: no CAP_BPF or CAP_PERFMON bits, CAP_SYS_ADMIN covers them.
        let old = capability_findings(CapSet(0x3f_ffff_ffff), true);
        assert!(old.iter().all(|f| f.status == Status::Ok), "{old:?}");
        assert!(old[0].found.contains("CAP_SYS_ADMIN stands in"), "{old:?}");

        // An unprivileged user: everything missing, and told to use sudo.
        let none = capability_findings(CapSet(0), false);
        assert!(none.iter().all(|f| f.status == Status::Fail), "{none:?}");
        assert!(none
            .iter()
            .all(|f| f.fix.as_deref().is_some_and(|fix| fix.contains("sudo"))));
        let names: Vec<&str> = none.iter().map(|f| f.check.as_str()).collect();
        assert_eq!(
            names,
            [
                "CAP_BPF",
                "CAP_NET_ADMIN",
                "CAP_SYS_PTRACE",
                "CAP_NET_BIND_SERVICE",
                "CAP_PERFMON"
            ]
        );

        // Root without CAP_NET_BIND_SERVICE (bit 10), e.g. in a container.
        let boxed = capability_findings(CapSet(0x1ff_ffff_ffff & !(1 << 10)), true);
        let bind = &boxed[3];
        assert_eq!(
            (bind.check.as_str(), bind.status),
            ("CAP_NET_BIND_SERVICE", Status::Fail)
        );
        assert!(bind
            .fix
            .as_deref()
            .is_some_and(|f| f.contains("AmbientCapabilities")));
    }

    #[test]
    fn the_listen_port_must_be_privileged() {
        let host = UnprivilegedPorts::KERNEL_DEFAULT;
        assert_eq!(listen_port_privileged(971, &host).status, Status::Ok);
        let exposed = listen_port_privileged(8080, &host);
        assert_eq!(exposed.status, Status::Fail);
        assert!(exposed
            .fix
            .is_some_and(|f| f.contains("pick a port below 1024")));
        let assumed = UnprivilegedPorts {
            assumed: Some("cannot read it".into()),
            ..UnprivilegedPorts::KERNEL_DEFAULT
        };
        assert_eq!(listen_port_privileged(971, &assumed).status, Status::Warn);
    }

    #[test]
    fn a_port_in_use_fails_and_says_what_to_do() {
        let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, 971));
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, 971));
        assert_eq!(bind_finding("l", v4, &Ok(()), 1024).status, Status::Ok);
        let in_use = bind_finding(
            "l",
            v4,
            &Err(io::Error::from_raw_os_error(libc::EADDRINUSE)),
            1024,
        );
        assert_eq!(in_use.status, Status::Fail);
        let fix = in_use.fix.expect("a fix");
        assert!(
            fix.contains("sport = :971") && fix.contains("below 1024"),
            "{fix}"
        );
        let denied = bind_finding(
            "l",
            v4,
            &Err(io::Error::from_raw_os_error(libc::EACCES)),
            1024,
        );
        assert_eq!(denied.status, Status::Warn);
        let no_v6 = bind_finding(
            "l",
            v6,
            &Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT)),
            1024,
        );
        assert_eq!(no_v6.status, Status::Fail);
        assert!(no_v6.fix.is_some_and(|f| f.contains("disable_ipv6")));
    }

    #[test]
    fn a_real_bind_of_a_taken_port_is_seen() {
        // An ephemeral port held by a listener of our own.
        let held = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listen");
        let addr = held.local_addr().expect("addr");
        let found = bind_finding("l", addr, &socket::try_bind(addr), 1024);
        assert_eq!(found.status, Status::Fail, "{found:?}");
    }

    #[test]
    fn the_state_dir_is_roots_alone() {
        let dir = Path::new("/var/lib/jitproxy");
        assert_eq!(state_dir_finding(dir, true, 0, 0o40700).status, Status::Ok);
        assert_eq!(state_dir_finding(dir, true, 0, 0o40755).status, Status::Ok);
        let writable = state_dir_finding(dir, true, 0, 0o40775);
        assert_eq!(writable.status, Status::Fail);
        assert!(writable.found.contains("0775"), "{writable:?}");
        let theirs = state_dir_finding(dir, true, 1000, 0o40777);
        assert!(theirs.found.contains("uid 1000") && theirs.found.contains("0777"));
        let fix = theirs.fix.expect("a fix");
        assert!(
            fix.contains("chown root:root") && fix.contains("chmod 0700"),
            "{fix}"
        );
        assert_eq!(
            state_dir_finding(dir, false, 0, 0o100600).status,
            Status::Fail
        );
        let absent = state_dir(Path::new("/nonexistent/jitproxy-doctor-test"));
        assert_eq!(absent.status, Status::Warn);
        assert!(absent.fix.is_some_and(|f| f.contains("0700")));
    }

    #[test]
    fn grants_db_is_0600_and_roots() {
        let db = Path::new("/var/lib/jitproxy/grants.db");
        assert_eq!(grants_db_finding(db, 0, 0o100600).status, Status::Ok);
        assert_eq!(grants_db_finding(db, 0, 0o100644).status, Status::Warn);
        assert_eq!(grants_db_finding(db, 0, 0o100666).status, Status::Fail);
        assert_eq!(grants_db_finding(db, 1000, 0o100600).status, Status::Fail);
        assert_eq!(
            grants_db(Path::new("/nonexistent/grants.db")).status,
            Status::Ok
        );
    }

    #[test]
    fn low_disk_space_warns_then_fails() {
        let dir = Path::new("/var/lib/jitproxy/audit");
        let space = |available| FreeSpace {
            measured: PathBuf::from("/var/lib"),
            available,
            total: 100 * GIB,
        };
        assert_eq!(disk_finding(dir, &space(99 * MIB)).status, Status::Fail);
        assert_eq!(disk_finding(dir, &space(100 * MIB)).status, Status::Warn);
        assert_eq!(disk_finding(dir, &space(GIB - 1)).status, Status::Warn);
        let ok = disk_finding(dir, &space(5 * GIB));
        assert_eq!(ok.status, Status::Ok);
        assert_eq!(
            ok.found,
            "5.0 GiB free of 100.0 GiB at /var/lib (where /var/lib/jitproxy/audit will be created)"
        );
        assert_eq!(bytes(512 * MIB), "512 MiB");
    }

    #[test]
    fn a_clock_before_the_build_or_2024_warns() {
        let at = |s: &str| s.parse::<Timestamp>().expect("timestamp");
        let now = at("2026-12-02T04:26:14Z");
        assert_eq!(clock_finding(now, None).status, Status::Ok);
        assert_eq!(
            clock_finding(at("2001-01-01T00:00:00Z"), None).status,
            Status::Warn
        );
        assert_eq!(
            clock_finding(now, Some(at("2026-01-01T00:00:00Z"))).status,
            Status::Ok
        );
        let behind = clock_finding(now, Some(at("2027-01-01T00:00:00Z")));
        assert_eq!(behind.status, Status::Warn);
        assert!(behind.found.contains("2026-12-02T04:26:14Z"), "{behind:?}");
    }

    #[test]
    fn text_is_one_escaped_line_per_check_and_a_summary() {
        let findings = [
            Finding::ok("kernel", "Linux 6.18"),
            Finding::fail(
                "state dir",
                "/tmp/a\x1b[2Jb: owned by uid 7",
                "chown root:root /tmp/a\x1b[2Jb",
            ),
            Finding::new("CA trust store", Status::Skip, "later".into(), None),
        ];
        let text = render_text(&findings);
        assert!(!text.contains('\x1b'), "{text:?}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[0], "ok    kernel          Linux 6.18");
        assert!(
            lines[1].starts_with("FAIL  state dir       /tmp/a\\x1b[2Jb"),
            "{text}"
        );
        assert!(lines[1].contains("; fix: chown root:root"), "{text}");
        assert!(
            lines[2].starts_with("skip  CA trust store  later"),
            "{text}"
        );
        assert!(lines[3].contains("1 check(s) FAILed"), "{text}");
    }

    #[test]
    fn json_has_check_status_found_fix() {
        let json = serde_json::to_value([Finding::warn("bpffs", "not mounted", "mount it")])
            .expect("json");
        assert_eq!(
            json,
            serde_json::json!([{"check": "bpffs", "status": "warn", "found": "not mounted", "fix": "mount it"}])
        );
    }
}
