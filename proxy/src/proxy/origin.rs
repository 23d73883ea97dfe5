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

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use proxy_common::{ConnectRecord, TaskOffsets};

use crate::{
    access::principal_uid,
    host::{
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
    pub comm: String,
    pub cgroup_id: u64,
    /// User name of `uid`, when the user database has one.
    pub user: Option<String>,
    /// The login uid at connect (the kernel's `loginuid`): the human behind
    /// `sudo`; `None` when unset (daemons, containers).
    pub login_uid: Option<u32>,
    /// The executable at connect, as a file; `None` if the kernel could not
    /// tell (a kernel thread, an unreadable field).
    pub exe_file: Option<FileId>,
    /// The executable's path: `/proc/PID/exe`, only when that path still
    /// names [`Caller::exe_file`].
    pub exe: Option<PathBuf>,
    /// What `/proc/PID/exe` shows when it does not name `exe_file` (the
    /// process exec'd another program after connecting, or the file was
    /// replaced): shown to reviewers as unverified, never as the executable.
    pub exe_unverified: Option<PathBuf>,
    /// cgroup v2 path (`/proc/PID/cgroup`), e.g. a systemd unit's.
    pub cgroup: Option<String>,
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

/// Turns kernel records into [`Origin`]s.
#[derive(Debug, Clone)]
pub struct Identities {
    users: Users,
}

impl Identities {
    pub fn new(users: Users) -> Self {
        Self { users }
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
        let proc_info = ProcInfo::read(record.tgid, record.boot_ns, exe_file);
        let user = self.users.name(record.uid).await;
        Origin {
            dst: SocketAddr::new(ip, u16::from_be(record.orig_port_be)),
            target_id: record.target_id,
            caller: Caller {
                uid: record.uid,
                gid: record.gid,
                pid: record.tgid,
                tid: record.pid,
                comm: comm_string(&record.comm),
                cgroup_id: record.cgroup_id,
                user,
                login_uid: (record.login_uid != TaskOffsets::UNSET_LOGIN_UID)
                    .then_some(record.login_uid),
                exe_file,
                exe: proc_info.exe,
                exe_unverified: proc_info.exe_unverified,
                cgroup: proc_info.cgroup,
            },
        }
    }
}

/// What /proc tells about a process, if it is still the caller.
#[derive(Debug, Default)]
struct ProcInfo {
    exe: Option<PathBuf>,
    exe_unverified: Option<PathBuf>,
    cgroup: Option<String>,
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
        // the path reported names the file that made the connect.
        let verified = shown
            .as_deref()
            .is_some_and(|path| exe_file.is_some() && FileId::of_path(path) == exe_file);
        let (exe, exe_unverified) = if verified {
            (shown, None)
        } else {
            (None, shown)
        };
        Self {
            exe,
            exe_unverified,
            cgroup: process.cgroup(),
        }
    }
}

fn comm_string(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_stops_at_nul() {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        assert_eq!(comm_string(&comm), "curl");
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
        assert_eq!(info.exe, Some(path));
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
        assert_eq!((info.exe, info.exe_unverified), (None, Some(path.clone())));
        // Without the kernel's file there is nothing to check the path by.
        let info = ProcInfo::read(pid, u64::MAX, None);
        assert_eq!((info.exe, info.exe_unverified), (None, Some(path)));
    }
}
