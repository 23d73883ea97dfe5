//! Map keys and values shared by jitproxy's eBPF programs and its daemon.
//!
//! Every type here is `#[repr(C)]`, has no implicit padding, and is read by both
//! sides byte for byte. Changing a layout means bumping [`MAP_LAYOUT_VERSION`]:
//! pinned maps outlive the daemon, and aya does not check a pinned map's key and
//! value sizes when it reopens one.
//!
//! Addresses are always 16 bytes in network byte order, with IPv4 stored
//! IPv4-mapped (`::ffff:a.b.c.d`). The kernel hands addresses over as four
//! `u32` words whose in-memory bytes are already in network order, so the words
//! are stored as loaded and userspace reads them back with `to_ne_bytes`.
#![no_std]

/// Part of every pin path: a daemon only reuses pinned maps of its own layout.
pub const MAP_LAYOUT_VERSION: u32 = 3;

/// Socket mark the daemon sets on its upstream sockets; connect4/6 let sockets
/// carrying it through untouched. Setting a mark needs CAP_NET_ADMIN, so an
/// unprivileged user cannot forge it.
pub const DEFAULT_UPSTREAM_MARK: u32 = 0x4a50_0001;

/// Map names, as the eBPF object declares them.
pub mod maps {
    /// LPM trie: [`TargetKey`](super::TargetKey) -> [`TargetValue`](super::TargetValue).
    pub const TARGETS: &str = "TARGETS";
    /// Hash: socket cookie (`u64`) -> [`ConnectRecord`](super::ConnectRecord).
    pub const CONNECTS: &str = "CONNECTS";
    /// Hash: [`SockTuple`](super::SockTuple) -> socket cookie (`u64`).
    pub const TUPLES: &str = "TUPLES";
    /// Per-CPU array of [`Counters`](super::Counters), one slot.
    pub const COUNTERS: &str = "COUNTERS";
    /// LRU hash: uid (`u32`) -> live records of that uid (`u64`, counted
    /// atomically: BPF atomics are 64-bit).
    pub const UID_RECORDS: &str = "UID_RECORDS";
}

/// Program names, as the eBPF object declares them.
pub mod programs {
    pub const CONNECT4: &str = "jp_connect4";
    pub const CONNECT6: &str = "jp_connect6";
    pub const SENDMSG4: &str = "jp_sendmsg4";
    pub const SENDMSG6: &str = "jp_sendmsg6";
    pub const GETPEERNAME4: &str = "jp_getpeername4";
    pub const GETPEERNAME6: &str = "jp_getpeername6";
    pub const SOCKOPS: &str = "jp_sockops";
    pub const SOCK_RELEASE: &str = "jp_sock_release";
}

/// Global variables the daemon sets when it loads the object.
pub mod globals {
    /// `u16`: the proxy's listening port, in network byte order.
    pub const PROXY_PORT: &str = "PROXY_PORT_BE";
    /// `u32`: the mark of the daemon's own upstream sockets.
    pub const UPSTREAM_MARK: &str = "UPSTREAM_MARK";
    /// `u32`: live records one uid may hold.
    pub const RECORDS_PER_UID: &str = "RECORDS_PER_UID";
    /// [`TaskOffsets`](super::TaskOffsets): where the caller's executable
    /// and login uid are in this kernel's structures.
    pub const TASK_OFFSETS: &str = "TASK_OFFSETS";
}

/// Byte offsets of the kernel fields connect4/6 read to learn the caller's
/// executable (device and inode of `current->mm->exe_file`) and login uid
/// (`current->loginuid`) at connect time, so nothing the caller does after
/// connecting (an `exec`, a write to `/proc/self/loginuid`) changes what is
/// recorded. The daemon reads them from the running kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskOffsets {
    /// `task_struct.mm`
    pub task_mm: u32,
    /// `task_struct.loginuid` (a `kuid_t`); [`TaskOffsets::NO_LOGIN_UID`]
    /// when the kernel has no audit support.
    pub task_loginuid: u32,
    /// `mm_struct.exe_file`
    pub mm_exe_file: u32,
    /// `file.f_inode`
    pub file_inode: u32,
    /// `inode.i_ino` (64 bits)
    pub inode_ino: u32,
    /// `inode.i_sb`
    pub inode_sb: u32,
    /// `super_block.s_dev` (the kernel's `dev_t`: major << 20 | minor)
    pub sb_dev: u32,
    /// 1 once the daemon has set the offsets; 0 means "record nothing".
    pub valid: u32,
}

impl TaskOffsets {
    /// `task_loginuid` of a kernel without `CONFIG_AUDIT`.
    pub const NO_LOGIN_UID: u32 = u32::MAX;
    /// The login uid of a process that never logged in (`AUDIT_UID_UNSET`).
    pub const UNSET_LOGIN_UID: u32 = u32::MAX;
}

/// Capacities. CONNECTS and TUPLES are plain hashes, not LRU: when full, a new
/// connection to a target is refused rather than evicting a live record.
pub const MAX_TARGET_ENTRIES: u32 = 16_384;
pub const MAX_CONNECTIONS: u32 = 65_536;
/// Live records one uid may hold by default (`max_records_per_uid`), so that
/// one user cannot fill the record maps for everyone: connects beyond it get
/// EPERM.
pub const DEFAULT_RECORDS_PER_UID: u32 = 4_096;

/// `htonl(0x0000_ffff)`: the third word of an IPv4-mapped IPv6 address.
pub const V4_MAPPED_WORD: u32 = u32::to_be(0x0000_ffff);

/// An IPv4 address (as the kernel loads it, network order) as a 16-byte
/// IPv4-mapped address.
#[inline(always)]
pub const fn v4_mapped(ip4_be: u32) -> [u32; 4] {
    [0, 0, V4_MAPPED_WORD, ip4_be]
}

/// Whether a 16-byte address is IPv4-mapped.
#[inline(always)]
pub const fn is_v4_mapped(addr: &[u32; 4]) -> bool {
    addr[0] == 0 && addr[1] == 0 && addr[2] == V4_MAPPED_WORD
}

/// Key data of the TARGETS LPM trie: port first, so one lookup matches an
/// exact port and the longest address prefix. The prefix length of a key is
/// `TargetKey::PORT_BITS + address prefix` (an IPv4 /24 is 32 + 96 + 24).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TargetKey {
    /// Destination port, network byte order.
    pub port_be: u16,
    /// Always zero; part of the matched prefix.
    pub pad: u16,
    /// Destination address, 16 bytes, network order.
    pub addr: [u32; 4],
}

impl TargetKey {
    /// Bits of the key before the address: port and padding.
    pub const PORT_BITS: u32 = 32;
    /// A lookup key matches on every bit.
    pub const FULL_PREFIX: u32 = Self::PORT_BITS + 128;
}

/// Value of the TARGETS trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetValue {
    /// Index of the target in the daemon's config (`[[target]]` order).
    pub target_id: u32,
}

/// The client end of a redirected TCP connection, as both the kernel
/// (sockops) and the proxy (`accept()`) see it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockTuple {
    /// Client's local address (16 bytes, network order).
    pub client_addr: [u32; 4],
    /// The proxy's address the client connected to (16 bytes, network order).
    pub proxy_addr: [u32; 4],
    /// Client's local port, host order.
    pub client_port: u16,
    /// The proxy's port, host order.
    pub proxy_port: u16,
}

/// What connect4/6 learned about a redirected connection, keyed by the client
/// socket's cookie. sockops adds the client's 4-tuple once the handshake is done.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectRecord {
    /// Original destination address (16 bytes, network order).
    pub orig_addr: [u32; 4],
    /// Original destination port, network order.
    pub orig_port_be: u16,
    /// Address family the client used: 4 for connect4, 6 for connect6
    /// (including IPv4-mapped destinations).
    pub family: u16,
    /// Index of the matched target.
    pub target_id: u32,
    /// Process id (thread group id) of the caller.
    pub tgid: u32,
    /// Thread id of the caller.
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// cgroup v2 id of the caller at connect time.
    pub cgroup_id: u64,
    /// `bpf_ktime_get_boot_ns()` at connect time: lets the daemon tell a
    /// reused pid from the caller (a process started later is not the caller).
    pub boot_ns: u64,
    /// Inode of the caller's executable at connect time; 0 if unknown.
    pub exe_ino: u64,
    /// Device of the caller's executable, as the kernel encodes `dev_t`
    /// (major << 20 | minor).
    pub exe_dev: u32,
    /// Login uid of the caller at connect time;
    /// [`TaskOffsets::UNSET_LOGIN_UID`] if unset or unknown.
    pub login_uid: u32,
    /// Thread name of the caller (NUL padded).
    pub comm: [u8; 16],
    /// Set by sockops when the connection is established; zero before.
    pub tuple: SockTuple,
    /// 1 once `tuple` is set.
    pub established: u32,
}

/// Event counters, per CPU, summed by the daemon (`jitproxy status`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// TCP connects to a target, redirected to the proxy.
    pub redirected: u64,
    /// UDP to a target, refused.
    pub udp_refused: u64,
    /// Connects refused because the CONNECTS map was full.
    pub map_full: u64,
    /// Connects carrying the daemon's mark, passed through.
    pub exempt: u64,
    /// Connects refused because their uid holds [`MAX_RECORDS_PER_UID`].
    pub uid_full: u64,
    /// Connects and sends to an unspecified address (`0.0.0.0`, `::`)
    /// matched as the address the kernel would use.
    pub unspecified: u64,
    /// MPTCP connects to a target, refused.
    pub mptcp_refused: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is #[repr(C)], Copy, made only of integers, and has no
    // implicit padding, so every byte pattern is a valid value.
    unsafe impl aya::Pod for super::TargetKey {}
    unsafe impl aya::Pod for super::TargetValue {}
    unsafe impl aya::Pod for super::SockTuple {}
    unsafe impl aya::Pod for super::ConnectRecord {}
    unsafe impl aya::Pod for super::Counters {}
    unsafe impl aya::Pod for super::TaskOffsets {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(size_of::<TargetKey>(), 20);
        assert_eq!(size_of::<SockTuple>(), 36);
        assert_eq!(
            size_of::<ConnectRecord>(),
            16 + 2 + 2 + 4 * 5 + 8 + 8 + 8 + 4 + 4 + 16 + 36 + 4
        );
        assert_eq!(size_of::<Counters>(), 56);
        assert_eq!(size_of::<TaskOffsets>(), 32);
    }

    #[test]
    fn v4_mapped_round_trips() {
        let ip = u32::from_ne_bytes([127, 0, 0, 2]);
        let mapped = v4_mapped(ip);
        assert!(is_v4_mapped(&mapped));
        let mut bytes = [0u8; 16];
        for (chunk, word) in bytes.chunks_exact_mut(4).zip(mapped) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        assert_eq!(
            bytes,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 2]
        );
    }
}
