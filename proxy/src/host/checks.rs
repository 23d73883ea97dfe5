//! Probes of this host for `jitproxy doctor`: the kernel's release and BTF,
//! this process's effective capabilities, and the free space of a
//! filesystem. Each reads one thing and says what it found; what is good
//! enough is the caller's to judge.

use std::{
    io,
    path::{Path, PathBuf},
};

/// The running kernel's release (what `uname -r` prints).
const OSRELEASE: &str = "/proc/sys/kernel/osrelease";
/// This process's status, with its capability sets.
const SELF_STATUS: &str = "/proc/self/status";
/// The running kernel's BTF, from which the daemon reads structure offsets
/// (the same file as `kernel::offsets::VMLINUX_BTF`).
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The running kernel's release, e.g. `6.18.44-generic`.
pub fn kernel_release() -> io::Result<String> {
    std::fs::read_to_string(OSRELEASE).map(|text| text.trim().to_owned())
}

/// The (major, minor) version at the start of a kernel release, e.g.
/// `(5, 10)` of `5.10.0-28-amd64`; `None` if it does not start that way.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let (major, rest) = release.split_once('.')?;
    let minor_len = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    Some((major.parse().ok()?, rest[..minor_len].parse().ok()?))
}

/// The size of the kernel's BTF in bytes: an error if it is missing (a
/// kernel without `CONFIG_DEBUG_INFO_BTF`) or cannot be read.
pub fn btf_size() -> io::Result<u64> {
    // Opened, not only looked at: the daemon has to read it.
    let file = std::fs::File::open(VMLINUX_BTF)?;
    Ok(file.metadata()?.len())
}

/// Capability numbers (`linux/capability.h`).
pub mod cap {
    pub const NET_BIND_SERVICE: u8 = 10;
    pub const NET_ADMIN: u8 = 12;
    pub const SYS_PTRACE: u8 = 19;
    pub const SYS_ADMIN: u8 = 21;
    pub const PERFMON: u8 = 38;
    pub const BPF: u8 = 39;
}

/// A capability set, as the bit mask the kernel shows in `/proc/PID/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapSet(pub u64);

impl CapSet {
    /// Whether capability number `cap` (see [`cap`]) is in the set.
    pub fn has(self, cap: u8) -> bool {
        cap < 64 && (self.0 >> cap) & 1 == 1
    }
}

/// This process's effective capabilities (`CapEff` of `/proc/self/status`).
pub fn effective_capabilities() -> io::Result<CapSet> {
    let status = std::fs::read_to_string(SELF_STATUS)?;
    parse_cap_eff(&status).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{SELF_STATUS} has no readable CapEff line"),
        )
    })
}

/// The `CapEff:` line of a `/proc/PID/status` text (16 hex digits).
pub fn parse_cap_eff(status: &str) -> Option<CapSet> {
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok().map(CapSet)
}

/// Space on a filesystem, as an unprivileged writer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreeSpace {
    /// The directory measured: the path asked about, or its nearest
    /// existing parent.
    pub measured: PathBuf,
    /// Bytes available to unprivileged writers (`f_bavail`).
    pub available: u64,
    /// Size of the filesystem in bytes.
    pub total: u64,
}

/// The free space of the filesystem `path` is (or, not created yet, would
/// be) on: `statvfs` of `path` or its nearest existing parent.
// `c_ulong` and `fsblkcnt_t` are u64 on 64-bit targets only.
#[allow(clippy::useless_conversion)]
pub fn free_space(path: &Path) -> io::Result<FreeSpace> {
    let measured = nearest_existing(path)?;
    let stat = nix::sys::statvfs::statvfs(&measured).map_err(io::Error::from)?;
    let block = u64::from(stat.fragment_size());
    Ok(FreeSpace {
        measured,
        available: u64::from(stat.blocks_available()).saturating_mul(block),
        total: u64::from(stat.blocks()).saturating_mul(block),
    })
}

/// `path` if it exists, else the nearest of its parents that does.
fn nearest_existing(path: &Path) -> io::Result<PathBuf> {
    for candidate in path.ancestors() {
        let candidate = if candidate.as_os_str().is_empty() {
            Path::new(".")
        } else {
            candidate
        };
        match std::fs::metadata(candidate) {
            Ok(_) => return Ok(candidate.to_owned()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("neither {} nor any parent exists", path.display()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_are_read_from_releases() {
        assert_eq!(kernel_version("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(kernel_version("5.10.0-28-amd64"), Some((5, 10)));
        assert_eq!(kernel_version("5.8"), Some((5, 8)));
        assert_eq!(kernel_version("6.1-rc3"), Some((6, 1)));
        assert_eq!(kernel_version("4.19.0+"), Some((4, 19)));
        assert_eq!(kernel_version("6"), None);
        assert_eq!(kernel_version("six.one"), None);
        assert_eq!(kernel_version("6.x"), None);
        assert_eq!(kernel_version(""), None);
        // Whatever this host runs, it has a release that reads.
        let here = kernel_release().expect("osrelease");
        assert!(kernel_version(&here).is_some(), "{here}");
    }

    #[test]
    fn cap_eff_is_decoded_bit_by_bit() {
        let status = "Name:\tcat\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n\
                      CapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n";
        let root = parse_cap_eff(status).expect("CapEff");
        assert_eq!(root, CapSet(0x1ff_ffff_ffff));
        for c in [
            cap::NET_BIND_SERVICE,
            cap::NET_ADMIN,
            cap::SYS_ADMIN,
            cap::PERFMON,
            cap::BPF,
        ] {
            assert!(root.has(c), "capability {c}");
        }
        // CAP_NET_BIND_SERVICE (10) and CAP_NET_ADMIN (12) only.
        let net = parse_cap_eff("CapEff:\t0000000000001400\n").expect("CapEff");
        assert!(net.has(cap::NET_BIND_SERVICE) && net.has(cap::NET_ADMIN));
        assert!(!net.has(cap::SYS_ADMIN) && !net.has(cap::BPF) && !net.has(cap::PERFMON));
        // A kernel before 5.8 knows no CAP_PERFMON (38) or CAP_BPF (39).
        let old = parse_cap_eff("CapEff:\t0000003fffffffff\n").expect("CapEff");
        assert!(old.has(cap::SYS_ADMIN) && !old.has(cap::PERFMON) && !old.has(cap::BPF));
        assert!(!CapSet(u64::MAX).has(64));
        assert_eq!(
            parse_cap_eff("CapEff:\t0000000000000000\n"),
            Some(CapSet(0))
        );
        assert_eq!(parse_cap_eff("CapPrm:\t0000000000000000\n"), None);
        assert_eq!(parse_cap_eff("CapEff:\tzz\n"), None);
        // This process's own reads.
        assert!(effective_capabilities().is_ok());
    }

    #[test]
    fn free_space_is_of_the_nearest_existing_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let absent = dir.path().join("audit/not/yet");
        let space = free_space(&absent).expect("statvfs");
        assert_eq!(space.measured, dir.path());
        assert!(
            space.total > 0 && space.available <= space.total,
            "{space:?}"
        );
        assert_eq!(
            free_space(dir.path()).expect("statvfs").measured,
            dir.path()
        );
    }
}
