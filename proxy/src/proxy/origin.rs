//! Who opened a redirected connection and where it was going: the kernel's
//! record ([`OriginSource`]), completed from /proc (the executable's path,
//! cgroup path) and the user database (names).
//!
//! What the caller could change after its connect is taken from the kernel's
//! record, made at connect: the login uid, and the executable as a file
//! (device and inode). /proc only lends names: the executable's path is
//! reported only when that path still names the file the kernel saw, so a
//! program that execs another right after connecting is not recorded as the
//! other.
//!
//! /proc is read once per executable and cgroup, not once per connection:
//! what it named is kept for [`SEEN_TTL`], keyed by what the kernel recorded
//! at connect (the executable's file, the cgroup id), and only once checked
//! against it. A connection from a process seen before costs no /proc read.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::Duration,
};

use proxy_common::{ConnectRecord, TaskOffsets};

use crate::{
    access::principal_uid,
    host::{
        cache::TtlMap,
        proc::{FileId, Process},
        users::Users,
    },
    kernel::{ip_from_words, Kernel},
};

/// Where the proxy finds the kernel's record of a redirected connection.
/// The daemon uses the eBPF maps; unprivileged tests give a fake.
pub trait OriginSource: Send + Sync + 'static {
    /// The record for the connection whose client end is `client` and which
    /// arrived on the proxy's `local` address.
    fn find(&self, client: SocketAddr, local: SocketAddr) -> Option<ConnectRecord>;
}

impl OriginSource for Kernel {
    fn find(&self, client: SocketAddr, local: SocketAddr) -> Option<ConnectRecord> {
        self.find_origin(client, local)
    }
}

/// Where a redirected connection was going.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The destination the client asked for, as it asked for it
    /// (`[::ffff:a.b.c.d]:p` for an IPv4-mapped connect).
    pub dst: SocketAddr,
    /// Index of the matched target in the config.
    pub target_id: u32,
    /// The process that opened it.
    pub caller: Caller,
}

impl Origin {
    /// The address to connect to upstream (IPv4-mapped becomes IPv4).
    pub fn upstream_addr(&self) -> SocketAddr {
        SocketAddr::new(self.dst.ip().to_canonical(), self.dst.port())
    }
}

/// The process behind a connection, as the kernel saw it at connect() time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// Process id (thread group id).
    pub pid: u32,
    /// Thread id of the calling thread.
    pub tid: u32,
    /// Thread name (kernel `comm`).
    pub comm: Comm,
    pub cgroup_id: u64,
    /// User name of `uid`, when the user database has one.
    pub user: Option<Arc<str>>,
    /// The login uid at connect (the kernel's `loginuid`): the human behind
    /// `sudo`; `None` when unset (daemons, containers).
    pub login_uid: Option<u32>,
    /// The executable at connect, as a file; `None` if the kernel could not
    /// tell (a kernel thread, an unreadable field).
    pub exe_file: Option<FileId>,
    /// The executable's path: `/proc/PID/exe`, only when that path named
    /// [`Caller::exe_file`] when it was read.
    pub exe: Option<Arc<Path>>,
    /// What `/proc/PID/exe` shows when it does not name `exe_file` (the
    /// process exec'd another program after connecting, or the file was
    /// replaced): shown to reviewers as unverified, never as the executable.
    pub exe_unverified: Option<Box<Path>>,
    /// cgroup v2 path (`/proc/PID/cgroup`), e.g. a systemd unit's: the
    /// cgroup of the connect when it could be checked against
    /// [`Caller::cgroup_id`], else where the process is now.
    pub cgroup: Option<Arc<str>>,
}

impl Caller {
    /// The uid grants are matched against ([`principal_uid`]): for root the
    /// login uid when set (so `sudo curl` by alice needs alice's grant, and
    /// root's grant does not lend access to every sudoer); for everyone else
    /// the uid, whatever login uid the process claims.
    pub fn principal_uid(&self) -> u32 {
        principal_uid(self.uid, self.login_uid)
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.user {
            Some(user) => write!(f, "{user} (uid {})", self.uid)?,
            None => write!(f, "uid {}", self.uid)?,
        }
        write!(f, " pid {} {}", self.pid, self.comm)
    }
}

/// How long a checked name from /proc is reused: a renamed executable is
/// reported under its new path within this.
const SEEN_TTL: Duration = Duration::from_secs(10);
/// Most names kept of each kind.
const SEEN_MAX: usize = 4096;

/// Turns kernel records into [`Origin`]s.
#[derive(Debug)]
pub struct Identities {
    users: Users,
    /// Paths of executables, by the file the kernel recorded and the uid
    /// that ran it: what one user's process showed is never reported for
    /// another user's.
    exes: TtlMap<(FileId, u32), Arc<Path>>,
    /// Paths of cgroups, by cgroup id.
    cgroups: TtlMap<u64, Arc<str>>,
    /// Where cgroup paths are checked: the cgroup2 mount and its device;
    /// `None` when there is none (cgroup paths are then reported unchecked
    /// and not kept).
    cgroup_root: OnceLock<Option<(PathBuf, u64)>>,
}

impl Identities {
    pub fn new(users: Users) -> Self {
        Self {
            users,
            exes: TtlMap::new(SEEN_TTL, SEEN_MAX),
            cgroups: TtlMap::new(SEEN_TTL, SEEN_MAX),
            cgroup_root: OnceLock::new(),
        }
    }

    /// Completes a kernel record with what /proc still knows about the caller.
    pub async fn origin(&self, record: &ConnectRecord) -> Origin {
        let ip = ip_from_words(record.orig_addr);
        // A client that connected with an IPv4-mapped IPv6 address sees its
        // destination that way; keep it so in records.
        let ip = match (ip, record.family) {
            (IpAddr::V4(v4), 6) => IpAddr::V6(v4.to_ipv6_mapped()),
            (ip, _) => ip,
        };
        let exe_file =
            (record.exe_ino != 0).then(|| FileId::from_kernel(record.exe_dev, record.exe_ino));
        let names = self.names(record, exe_file);
        let user = self.users.shared_name(record.uid).await;
        Origin {
            dst: SocketAddr::new(ip, u16::from_be(record.orig_port_be)),
            target_id: record.target_id,
            caller: Caller {
                uid: record.uid,
                gid: record.gid,
                pid: record.tgid,
                tid: record.pid,
                comm: Comm(record.comm),
                cgroup_id: record.cgroup_id,
                user,
                login_uid: (record.login_uid != TaskOffsets::UNSET_LOGIN_UID)
                    .then_some(record.login_uid),
                exe_file,
                exe: names.exe,
                exe_unverified: names.exe_unverified,
                cgroup: names.cgroup,
            },
        }
    }

    /// The executable's and cgroup's paths: from what was seen before when
    /// both are known, else from /proc (keeping what checks out).
    fn names(&self, record: &ConnectRecord, exe_file: Option<FileId>) -> ProcInfo {
        // A kept path still has to name the recorded file (one stat): the
        // file may have been replaced and its inode reused since.
        let exe = exe_file.and_then(|file| {
            self.exes
                .get(&(file, record.uid))
                .filter(|path| FileId::of_path(path) == Some(file))
        });
        let cgroup = self.cgroups.get(&record.cgroup_id);
        if let (Some(exe), Some(cgroup)) = (&exe, &cgroup) {
            return ProcInfo {
                exe: Some(Arc::clone(exe)),
                exe_unverified: None,
                cgroup: Some(Arc::clone(cgroup)),
            };
        }
        let read = ProcInfo::read(record.tgid, record.boot_ns, exe_file);
        if let (Some(file), Some(path)) = (exe_file, &read.exe) {
            self.exes.put((file, record.uid), Arc::clone(path));
        }
        if let Some(path) = &read.cgroup {
            if self.is_cgroup(path, record.cgroup_id) {
                self.cgroups.put(record.cgroup_id, Arc::clone(path));
            }
        }
        read
    }

    /// Whether the cgroup at `path` (as /proc shows it, from the cgroup2
    /// root) is the one with id `id`: its directory, on the cgroup2 mount,
    /// has that inode.
    fn is_cgroup(&self, path: &str, id: u64) -> bool {
        let root = self.cgroup_root.get_or_init(|| {
            let mount = crate::host::cgroup::cgroup2_mount().ok()?;
            let dev = std::fs::metadata(&mount).ok()?.dev();
            Some((mount, dev))
        });
        let Some((root, root_dev)) = root else {
            return false;
        };
        let relative = Path::new(path.trim_start_matches('/'));
        if relative
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return false;
        }
        std::fs::metadata(root.join(relative))
            .is_ok_and(|dir| dir.dev() == *root_dev && dir.ino() == id)
    }
}

/// What /proc tells about a process, if it is still the caller.
#[derive(Debug, Default)]
struct ProcInfo {
    exe: Option<Arc<Path>>,
    exe_unverified: Option<Box<Path>>,
    cgroup: Option<Arc<str>>,
}

impl ProcInfo {
    /// Reads /proc/PID; returns nothing if the pid now belongs to a process
    /// started after the connect (pid reuse), or is gone. The executable's
    /// path counts only if the file at that path is `exe_file`.
    fn read(pid: u32, connect_boot_ns: u64, exe_file: Option<FileId>) -> Self {
        let Some(process) = Process::open(pid) else {
            return Self::default();
        };
        match process.start_boot_ns() {
            Some(start) if start <= connect_boot_ns => {}
            _ => return Self::default(),
        }
        let shown = process.exe();
        // The path is looked up again, here, rather than trusting what
        // /proc/PID/exe resolves to now: whatever the caller exec'd since,
        // the path reported names the file that made the connect. And it
        // must name it without a symlink in the daemon's view: a process in
        // a mount namespace of its own can show a path that, here, is a
        // symlink of its choosing to a trusted file.
        let verified = shown.as_deref().is_some_and(|path| {
            exe_file.is_some()
                && FileId::of_path(path) == exe_file
                && std::fs::canonicalize(path).is_ok_and(|real| real == path)
        });
        let (exe, exe_unverified) = if verified {
            (shown.map(Arc::from), None)
        } else {
            (None, shown.map(PathBuf::into_boxed_path))
        };
        Self {
            exe,
            exe_unverified,
            cgroup: process.cgroup().map(Arc::from),
        }
    }
}

/// A thread name as the kernel keeps it (`comm`: NUL padded, not
/// necessarily UTF-8), kept inline.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Comm(pub [u8; 16]);

impl Comm {
    fn bytes(&self) -> &[u8] {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        &self.0[..end]
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.bytes()))
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_stops_at_nul() {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        assert_eq!(Comm(comm).to_string(), "curl");
        // All 16 bytes, no NUL: all of them.
        assert_eq!(Comm(*b"0123456789abcdef").to_string(), "0123456789abcdef");
    }

    fn own_exe() -> (PathBuf, FileId) {
        let path = std::env::current_exe().unwrap();
        let id = FileId::of_path(&path).unwrap();
        (path, id)
    }

    #[test]
    fn own_process_started_before_now() {
        let pid = std::process::id();
        let (path, id) = own_exe();
        let info = ProcInfo::read(pid, u64::MAX, Some(id));
        assert_eq!(info.exe.as_deref(), Some(path.as_path()));
        // A connect "before" our start cannot be ours: nothing is reported.
        let before = ProcInfo::read(pid, 0, Some(id));
        assert!(before.exe.is_none() && before.exe_unverified.is_none());
    }

    #[test]
    fn a_path_that_names_another_file_is_only_unverified() {
        let pid = std::process::id();
        let (path, id) = own_exe();
        let other = FileId {
            ino: id.ino + 1,
            ..id
        };
        let info = ProcInfo::read(pid, u64::MAX, Some(other));
        assert_eq!(
            (info.exe.as_deref(), info.exe_unverified.as_deref()),
            (None, Some(path.as_path()))
        );
        // Without the kernel's file there is nothing to check the path by.
        let info = ProcInfo::read(pid, u64::MAX, None);
        assert_eq!(
            (info.exe.as_deref(), info.exe_unverified.as_deref()),
            (None, Some(path.as_path()))
        );
    }

    /// A kernel record of a connect by this test process (`cgroup_id` as
    /// given), or by a pid that is gone.
    fn record_of(tgid: u32, exe: FileId, cgroup_id: u64) -> ConnectRecord {
        let dev =
            u32::try_from((nix::sys::stat::major(exe.dev) << 20) | nix::sys::stat::minor(exe.dev))
                .unwrap();
        ConnectRecord {
            orig_addr: [0; 4],
            orig_port_be: 0,
            family: 4,
            target_id: 0,
            tgid,
            pid: tgid,
            uid: 0,
            gid: 0,
            cgroup_id,
            boot_ns: u64::MAX,
            exe_ino: exe.ino,
            exe_dev: dev,
            login_uid: TaskOffsets::UNSET_LOGIN_UID,
            comm: [0; 16],
            tuple: proxy_common::SockTuple::default(),
            established: 1,
        }
    }

    /// This process's cgroup path and id, when there is a cgroup2 mount.
    fn own_cgroup() -> Option<(String, u64)> {
        let path = Process::open(std::process::id())?.cgroup()?;
        let root = crate::host::cgroup::cgroup2_mount().ok()?;
        let id = std::fs::metadata(root.join(path.trim_start_matches('/')))
            .ok()?
            .ino();
        Some((path, id))
    }

    #[test]
    fn names_checked_once_are_reused_by_what_the_kernel_recorded() {
        let Some((cgroup, cgroup_id)) = own_cgroup() else {
            eprintln!("skipped: no cgroup2 mount");
            return;
        };
        let (path, exe) = own_exe();
        let identities = Identities::new(Users::new());
        let first = identities.names(&record_of(std::process::id(), exe, cgroup_id), Some(exe));
        assert_eq!(first.exe.as_deref(), Some(path.as_path()));
        assert_eq!(first.cgroup.as_deref(), Some(cgroup.as_str()));
        // The same file and cgroup from a pid /proc no longer has: no /proc
        // read is needed, the checked names are reused.
        let again = identities.names(&record_of(u32::MAX, exe, cgroup_id), Some(exe));
        assert_eq!(again.exe.as_deref(), Some(path.as_path()));
        assert_eq!(again.cgroup.as_deref(), Some(cgroup.as_str()));
        // What one uid's process showed is not lent to another uid's.
        let mut other_user = record_of(u32::MAX, exe, cgroup_id);
        other_user.uid = 4242;
        assert_eq!(identities.names(&other_user, Some(exe)).exe, None);
    }

    #[test]
    fn a_cgroup_path_that_is_not_the_recorded_cgroup_is_not_kept() {
        let Some((cgroup, cgroup_id)) = own_cgroup() else {
            eprintln!("skipped: no cgroup2 mount");
            return;
        };
        let (_, exe) = own_exe();
        let identities = Identities::new(Users::new());
        // The kernel recorded another cgroup than the one the process is in
        // now (it moved after connecting): /proc's path is shown, not kept.
        let moved = cgroup_id + 1;
        let first = identities.names(&record_of(std::process::id(), exe, moved), Some(exe));
        assert_eq!(first.cgroup.as_deref(), Some(cgroup.as_str()));
        let gone = identities.names(&record_of(u32::MAX, exe, moved), Some(exe));
        assert_eq!(gone.cgroup, None);
    }
}
