//! What `/proc` says about a process and about the mounts.
//!
//! A [`Process`] holds an fd of its `/proc/PID` directory, so every later
//! read is of the same process: if it exits and its pid is reused, reads
//! fail instead of describing the newcomer.

use std::{
    fmt, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// An open `/proc/PID`.
#[derive(Debug)]
pub struct Process(procfs::process::Process);

/// The kernel's "no login uid" value (`(uid_t)-1`).
const UNSET_LOGIN_UID: u32 = u32::MAX;

impl Process {
    /// Opens `/proc/PID`; `None` when the process is gone.
    pub fn open(pid: u32) -> Option<Self> {
        let pid = i32::try_from(pid).ok()?;
        procfs::process::Process::new(pid).ok().map(Self)
    }

    /// When the process started, in nanoseconds since boot (the clock of
    /// `bpf_ktime_get_boot_ns`).
    pub fn start_boot_ns(&self) -> Option<u64> {
        let ticks = self.0.stat().ok()?.starttime;
        let hz = procfs::ticks_per_second();
        (hz > 0).then(|| ticks.saturating_mul(1_000_000_000 / hz))
    }

    /// The login uid (`/proc/PID/loginuid`); `None` when unset.
    pub fn login_uid(&self) -> Option<u32> {
        self.0.loginuid().ok().filter(|&uid| uid != UNSET_LOGIN_UID)
    }

    /// The executable (`/proc/PID/exe`).
    pub fn exe(&self) -> Option<PathBuf> {
        self.0.exe().ok()
    }

    /// The cgroup v2 path (the `0::` line of `/proc/PID/cgroup`).
    pub fn cgroup(&self) -> Option<String> {
        self.0
            .cgroups()
            .ok()?
            .0
            .into_iter()
            .find(|c| c.hierarchy == 0)
            .map(|c| c.pathname)
    }
}

/// A file as the kernel tells files apart: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    /// Device, as `stat(2)` reports it (`st_dev`).
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    /// From the kernel's own `dev_t` encoding (`major << 20 | minor`, what
    /// eBPF reads in `super_block.s_dev`) and an inode number.
    pub fn from_kernel(kernel_dev: u32, ino: u64) -> Self {
        let (major, minor) = (kernel_dev >> 20, kernel_dev & 0xf_ffff);
        Self {
            dev: nix::sys::stat::makedev(u64::from(major), u64::from(minor)),
            ino,
        }
    }

    /// What the file at `path` is now (following symlinks); `None` if it
    /// cannot be looked at.
    pub fn of_path(path: &Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Self {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

impl fmt::Display for FileId {
    /// `major:minor inode`, as `stat -c '%Hd:%Ld %i'` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (major, minor) = (
            nix::sys::stat::major(self.dev),
            nix::sys::stat::minor(self.dev),
        );
        write!(f, "{major}:{minor} inode {}", self.ino)
    }
}

/// One line of `/proc/mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted (octal escapes undone).
    pub point: PathBuf,
    pub fstype: String,
    /// Mount options, e.g. `rw`, `net_cls`.
    pub options: Vec<String>,
}

/// The mount table. An error when it cannot be read: callers that check
/// for something dangerous must then refuse, not assume it is absent.
pub fn mounts() -> io::Result<Vec<Mount>> {
    let entries = procfs::mounts().map_err(|e| io::Error::other(format!("/proc/mounts: {e}")))?;
    Ok(entries
        .into_iter()
        .map(|e| Mount {
            point: PathBuf::from(e.fs_file),
            fstype: e.fs_vfstype,
            options: e.fs_mntops.into_keys().collect(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_dev_t_becomes_st_dev() {
        // 8:1 (sda1) and a minor above 255 (259:65536, an NVMe partition
        // numbering), in the kernel's encoding.
        let sda1 = FileId::from_kernel((8 << 20) | 1, 7);
        assert_eq!(sda1.dev, nix::sys::stat::makedev(8, 1));
        assert_eq!(sda1.to_string(), "8:1 inode 7");
        let big = FileId::from_kernel((259 << 20) | 65_536, 7);
        assert_eq!(nix::sys::stat::major(big.dev), 259);
        assert_eq!(nix::sys::stat::minor(big.dev), 65_536);
    }

    #[test]
    fn own_process_reads() {
        let me = Process::open(std::process::id()).expect("own /proc/PID");
        assert!(me.start_boot_ns().is_some_and(|ns| ns > 0));
        assert!(me.exe().is_some());
        assert!(Process::open(u32::MAX).is_none());
    }

    #[test]
    fn mount_table_has_proc() {
        let mounts = mounts().expect("/proc/mounts");
        assert!(mounts.iter().any(|m| m.fstype == "proc"), "{mounts:?}");
    }
}
