//! The cgroup programs. Each entry point is a thin wrapper; the decisions are
//! in small functions that read the context once and return a value.
//!
//! A record lives exactly as long as its connection: sockops turns on state
//! callbacks for every recorded socket and forgets it when the connection
//! reaches TCP_CLOSE (or the socket is released, or connects again), and a
//! tuple is removed only by the socket it belongs to, and never taken from a
//! socket that still has its record.
//!
//! MPTCP to a target is refused (EPERM), like UDP. The hooks see an MPTCP
//! connect as its first subflow, a kernel socket: the release hook never
//! fires for it, a subflow that the client closes first ends in TIME_WAIT
//! without a TCP_CLOSE state callback, and one whose connect fails after the
//! hook gets no callback at all; each would leave its record for good
//! (checked on Linux 6.18).
//!
//! Verifier notes (see ../shared/EBPF.md): context fields are read with
//! volatile loads, IPv6 addresses as four `u32` loads, and both the IPv4 and
//! IPv6 fields are read unconditionally before choosing between the values;
//! a context offset chosen by a branch is refused.

use core::{
    arch::asm,
    ptr::{read_volatile, write_volatile},
};

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sock_addr, bpf_sock_ops},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_current_uid_gid, bpf_probe_read_kernel,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_ktime_get_boot_ns,
            bpf_skc_to_mptcp_sock,
        },
    },
    macros::{cgroup_sock, cgroup_sock_addr, map, sock_ops},
    maps::{lpm_trie::Key, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    programs::{SockAddrContext, SockContext, SockOpsContext},
};
use aya_log_ebpf::warn;
use proxy_common::{
    is_v4_mapped, v4_mapped, ConnectRecord, Counters, SockTuple, TargetKey, TargetValue,
    TaskOffsets, MAX_CONNECTIONS, MAX_TARGET_ENTRIES,
};

/// Return values of cgroup sock_addr programs.
const ALLOW: i32 = 1;
/// The caller's connect()/sendmsg() fails with EPERM.
const REFUSE: i32 = 0;

const SOCK_STREAM: u32 = 1;
const AF_INET: u32 = 2;
const BPF_SOCK_OPS_TCP_CONNECT_CB: u32 = 3;
const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: u32 = 4;
const BPF_SOCK_OPS_STATE_CB: u32 = 10;
const BPF_SOCK_OPS_STATE_CB_FLAG: u32 = 4;
const TCP_CLOSE: u32 = 7;
/// `127.0.0.1`, as the kernel loads addresses.
const LOOPBACK4: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
/// `127.0.0.6`: the IPv4 source the kernel gives an IPv6 socket bound to a
/// plain IPv6 address (`LOOPBACK4_IPV6`).
const LOOPBACK4_IPV6: u32 = u32::from_ne_bytes([127, 0, 0, 6]);

/// The proxy's listening port (network order); set by the daemon at load.
#[unsafe(no_mangle)]
static PROXY_PORT_BE: u16 = 0;
/// Mark of the daemon's upstream sockets; set by the daemon at load.
#[unsafe(no_mangle)]
static UPSTREAM_MARK: u32 = 0;
/// Live records one uid may hold; set by the daemon at load.
#[unsafe(no_mangle)]
static RECORDS_PER_UID: u32 = 0;
/// Where the caller's executable and login uid are in this kernel's
/// structures; set by the daemon at load, from the kernel's BTF.
#[unsafe(no_mangle)]
static TASK_OFFSETS: TaskOffsets = TaskOffsets {
    task_mm: 0,
    task_loginuid: 0,
    mm_exe_file: 0,
    file_inode: 0,
    inode_ino: 0,
    inode_sb: 0,
    sb_dev: 0,
    valid: 0,
};

#[map(name = "TARGETS")]
static TARGETS: LpmTrie<TargetKey, TargetValue> = LpmTrie::with_max_entries(MAX_TARGET_ENTRIES, 0);

#[map(name = "CONNECTS")]
static CONNECTS: HashMap<u64, ConnectRecord> = HashMap::with_max_entries(MAX_CONNECTIONS, 0);

#[map(name = "TUPLES")]
static TUPLES: HashMap<SockTuple, u64> = HashMap::with_max_entries(MAX_CONNECTIONS, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

/// When each kind of refusal was last logged (per CPU), for the rate limit.
#[map(name = "LOG_LAST")]
static LOG_LAST: PerCpuArray<u64> = PerCpuArray::with_max_entries(4, 0);

/// Refusals the daemon cannot see, logged through aya-log (at most one of
/// each kind per second per CPU).
#[derive(Clone, Copy)]
enum Refusal {
    Udp = 0,
    MapFull = 1,
    UidFull = 2,
    Mptcp = 3,
}

/// Live records per uid. LRU, so that uids come and go without ever filling
/// it: many distinct uids (a user's subordinate uids in a user namespace)
/// evict the least recently used counts instead of making every other
/// user's connect fail. An evicted count only forgets records (its uid may
/// then pass the cap), it never refuses anyone else.
#[map(name = "UID_RECORDS")]
static UID_RECORDS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(MAX_CONNECTIONS, 0);

/// `::ffff:127.0.0.1` and `::1`: where redirected connections go.
const PROXY_V4_MAPPED: [u32; 4] = v4_mapped(u32::from_ne_bytes([127, 0, 0, 1]));
const PROXY_V6: [u32; 4] = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];

/// What connect4/6 does with one connect().
enum Action {
    /// Not a target, or the daemon's own upstream socket.
    Pass,
    /// UDP to a target, or no room to record the connection.
    Refuse,
    /// Recorded; rewrite the destination to the proxy.
    Redirect,
}

#[cgroup_sock_addr(connect4)]
pub fn jp_connect4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands a valid bpf_sock_addr for the program's lifetime.
    let (ip4, port) = unsafe {
        (
            read_volatile(&(*sa).user_ip4),
            read_volatile(&(*sa).user_port),
        )
    };
    let dst = if ip4 == 0 {
        count(|c| c.unspecified += 1);
        match resolve_unspecified_v4(bound_v4(sa), port as u16) {
            Some(ip) => v4_mapped(ip),
            None => return REFUSE,
        }
    } else {
        v4_mapped(ip4)
    };
    match connect(&ctx, dst, port as u16, 4) {
        Action::Pass => ALLOW,
        Action::Refuse => REFUSE,
        Action::Redirect => {
            // SAFETY: as above; user_ip4 and user_port are writable in connect4.
            unsafe {
                write_volatile(&mut (*sa).user_ip4, PROXY_V4_MAPPED[3]);
                write_volatile(&mut (*sa).user_port, proxy_port_be() as u32);
            }
            ALLOW
        }
    }
}

#[cgroup_sock_addr(connect6)]
pub fn jp_connect6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands a valid bpf_sock_addr for the program's lifetime.
    let (dst, port) = unsafe { (read_ip6(&(*sa).user_ip6), read_volatile(&(*sa).user_port)) };
    let Some(dst) = unspecified_v6(sa, dst, port as u16) else {
        return REFUSE;
    };
    match connect(&ctx, dst, port as u16, 6) {
        Action::Pass => ALLOW,
        Action::Refuse => REFUSE,
        Action::Redirect => {
            // An IPv4-mapped destination is an IPv4 connection: send it to the
            // proxy's IPv4 listener, still IPv4-mapped.
            let proxy = if is_v4_mapped(&dst) {
                PROXY_V4_MAPPED
            } else {
                PROXY_V6
            };
            // SAFETY: as above; user_ip6 and user_port are writable in connect6.
            unsafe {
                write_ip6(&mut (*sa).user_ip6, proxy);
                write_volatile(&mut (*sa).user_port, proxy_port_be() as u32);
            }
            ALLOW
        }
    }
}

/// The shared part of connect4/6: match, exempt, refuse UDP, record.
#[inline(always)]
fn connect(ctx: &SockAddrContext, dst: [u32; 4], port_be: u16, family: u16) -> Action {
    let Some(target) = lookup_target(dst, port_be) else {
        return Action::Pass;
    };
    let sa = ctx.sock_addr;
    if is_upstream(sa) {
        count(|c| c.exempt += 1);
        return Action::Pass;
    }
    // SAFETY: valid context pointer, read-only field.
    if unsafe { read_volatile(&(*sa).type_) } != SOCK_STREAM {
        // UDP (QUIC/HTTP3 included) cannot go around the proxy: refuse it so
        // that clients fall back to TCP.
        udp_refused(ctx, target, port_be);
        return Action::Refuse;
    }
    if is_mptcp_subflow(sa) {
        mptcp_refused(ctx, target, port_be);
        return Action::Refuse;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    // SAFETY: helpers allowed in cgroup sock_addr programs on supported kernels.
    let (cookie, cgroup_id, boot_ns) = unsafe {
        (
            bpf_get_socket_cookie(sa.cast()),
            bpf_get_current_cgroup_id(),
            bpf_ktime_get_boot_ns(),
        )
    };
    let caller = caller_files();
    let record = ConnectRecord {
        orig_addr: dst,
        orig_port_be: port_be,
        family,
        target_id: target.target_id,
        tgid: (pid_tgid >> 32) as u32,
        pid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        cgroup_id,
        boot_ns,
        exe_ino: caller.exe_ino,
        exe_dev: caller.exe_dev,
        login_uid: caller.login_uid,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        tuple: SockTuple::default(),
        established: 0,
    };
    // A socket that connects again (after AF_UNSPEC) starts a new record.
    forget(cookie);
    if !take_uid_slot(record.uid) {
        count(|c| c.uid_full += 1);
        if may_log(Refusal::UidFull) {
            warn!(
                ctx,
                "refused a connect to target #{} for uid {}: it holds max_records_per_uid live connections",
                target.target_id,
                record.uid
            );
        }
        return Action::Refuse;
    }
    // No room means no record, and a connection without its record must never
    // reach the target: refuse it here rather than have the proxy drop it.
    if CONNECTS.insert(&cookie, &record, 0).is_err() {
        give_uid_slot(record.uid);
        count(|c| c.map_full += 1);
        if may_log(Refusal::MapFull) {
            warn!(
                ctx,
                "refused a connect to target #{} for uid {}: the record map is full",
                target.target_id,
                record.uid
            );
        }
        return Action::Refuse;
    }
    count(|c| c.redirected += 1);
    Action::Redirect
}

/// The socket's bound IPv4 address (0: unbound; for an IPv6 socket, the
/// kernel's IPv4 view of its binding).
#[inline(always)]
fn bound_v4(sa: *mut bpf_sock_addr) -> u32 {
    // SAFETY: `sk` of a sock_addr context is a valid socket pointer, and
    // `src_ip4` is a readable field of it.
    unsafe {
        let sk = (*sa).__bindgen_anon_1.sk;
        read_volatile(&(*sk).src_ip4)
    }
}

/// The socket's bound IPv6 address (`::`: unbound).
#[inline(always)]
fn bound_v6(sa: *mut bpf_sock_addr) -> [u32; 4] {
    // SAFETY: `sk` of a sock_addr context is a valid socket pointer, and
    // `src_ip6` is a readable field of it.
    unsafe {
        let sk = (*sa).__bindgen_anon_1.sk;
        read_ip6(&(*sk).src_ip6)
    }
}

/// What a connect to `0.0.0.0` on `port_be` really reaches from a socket
/// bound to `src` (0: unbound): `src` when it is a unicast address, else
/// loopback (as `ip_route_connect` decides). A bound address that is not a
/// target while loopback is (a socket bound to a broadcast address goes to
/// loopback) cannot be told apart here: `None`, and the connect is refused.
#[inline(always)]
fn resolve_unspecified_v4(src: u32, port_be: u16) -> Option<u32> {
    if src == 0 {
        return Some(LOOPBACK4);
    }
    if lookup_target(v4_mapped(src), port_be).is_none()
        && lookup_target(v4_mapped(LOOPBACK4), port_be).is_some()
    {
        return None;
    }
    Some(src)
}

/// What a connect6 destination really reaches: `::` is loopback (`::1`, or
/// `::ffff:127.0.0.1` for a socket bound to an IPv4-mapped address), and
/// `::ffff:0.0.0.0` is an IPv4 connect to `0.0.0.0` from the socket's IPv4
/// source (none when unbound; 127.0.0.6 when bound to a plain IPv6 address,
/// the kernel's placeholder). `None`: refuse (see
/// [`resolve_unspecified_v4`]).
#[inline(always)]
fn unspecified_v6(sa: *mut bpf_sock_addr, dst: [u32; 4], port_be: u16) -> Option<[u32; 4]> {
    let unspecified_v4 = is_v4_mapped(&dst) && dst[3] == 0;
    if dst != [0; 4] && !unspecified_v4 {
        return Some(dst);
    }
    count(|c| c.unspecified += 1);
    let src6 = bound_v6(sa);
    if !unspecified_v4 {
        return Some(if is_v4_mapped(&src6) {
            v4_mapped(LOOPBACK4)
        } else {
            PROXY_V6
        });
    }
    let src4 = if is_v4_mapped(&src6) {
        src6[3]
    } else if src6 == [0; 4] {
        0
    } else {
        LOOPBACK4_IPV6
    };
    resolve_unspecified_v4(src4, port_be).map(v4_mapped)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn jp_sendmsg4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: valid context pointer, read-only fields.
    let (ip4, port, msg_src) = unsafe {
        (
            read_volatile(&(*sa).user_ip4),
            read_volatile(&(*sa).user_port),
            read_volatile(&(*sa).msg_src_ip4),
        )
    };
    let port = port as u16;
    if ip4 != 0 {
        return refuse_udp_to_target(&ctx, v4_mapped(ip4), port);
    }
    // To `0.0.0.0`: the datagram goes to its source address (the one given
    // with IP_PKTINFO, else the bound one), else to loopback; from an IPv6
    // socket, perhaps 127.0.0.6. Refuse if any of them is a target.
    count(|c| c.unspecified += 1);
    for candidate in [msg_src, bound_v4(sa), LOOPBACK4, LOOPBACK4_IPV6] {
        if candidate != 0 && refuse_udp_to_target(&ctx, v4_mapped(candidate), port) == REFUSE {
            return REFUSE;
        }
    }
    ALLOW
}

#[cgroup_sock_addr(sendmsg6)]
pub fn jp_sendmsg6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: valid context pointer, read-only fields.
    let (dst, port) = unsafe { (read_ip6(&(*sa).user_ip6), read_volatile(&(*sa).user_port)) };
    // `::` is loopback for a datagram too (udpv6_sendmsg).
    let dst = if dst == [0; 4] {
        count(|c| c.unspecified += 1);
        PROXY_V6
    } else {
        dst
    };
    refuse_udp_to_target(&ctx, dst, port as u16)
}

#[inline(always)]
fn refuse_udp_to_target(ctx: &SockAddrContext, dst: [u32; 4], port_be: u16) -> i32 {
    let Some(target) = lookup_target(dst, port_be) else {
        return ALLOW;
    };
    udp_refused(ctx, target, port_be);
    REFUSE
}

/// Counts, and logs (rate-limited), UDP refused on its way to `target`.
#[inline(always)]
fn udp_refused(ctx: &SockAddrContext, target: TargetValue, port_be: u16) {
    count(|c| c.udp_refused += 1);
    if may_log(Refusal::Udp) {
        warn!(
            ctx,
            "refused UDP to target #{} port {} for uid {}: UDP cannot pass the proxy",
            target.target_id,
            u16::from_be(port_be),
            bpf_get_current_uid_gid() as u32
        );
    }
}

fn mptcp_refused(ctx: &SockAddrContext, target: TargetValue, port_be: u16) {
    count(|c| c.mptcp_refused += 1);
    if may_log(Refusal::Mptcp) {
        warn!(
            ctx,
            "refused MPTCP to target #{} port {} for uid {}: use plain TCP",
            target.target_id,
            u16::from_be(port_be),
            bpf_get_current_uid_gid() as u32
        );
    }
}

/// Whether the connecting socket is an MPTCP subflow (what connect4/6 see of
/// an `IPPROTO_MPTCP` socket: its protocol reads as TCP).
#[inline(always)]
fn is_mptcp_subflow(sa: *mut bpf_sock_addr) -> bool {
    // SAFETY: `sk` of a sock_addr context is a valid socket pointer; the
    // helper only looks at it and returns its MPTCP parent or null.
    unsafe {
        let sk = (*sa).__bindgen_anon_1.sk;
        !bpf_skc_to_mptcp_sock(sk.cast()).is_null()
    }
}

/// Whether a refusal of this kind may be logged now: once a second per CPU.
#[inline(always)]
fn may_log(kind: Refusal) -> bool {
    let Some(last) = LOG_LAST.get_ptr_mut(kind as u32) else {
        return false;
    };
    // SAFETY: helper allowed in every program type.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: per-CPU slot, valid for this program run.
    unsafe {
        if *last != 0 && now.saturating_sub(*last) < 1_000_000_000 {
            return false;
        }
        *last = now;
    }
    true
}

/// The client asks who it is connected to: show the original destination,
/// not the proxy. getpeername programs must return 1.
#[cgroup_sock_addr(getpeername4)]
pub fn jp_getpeername4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: valid context; the socket cookie helper takes the context.
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    // SAFETY: the map value is only read, and copied out at once.
    if let Some(record) = unsafe { CONNECTS.get(&cookie) } {
        let (addr, port) = (record.orig_addr[3], record.orig_port_be);
        // SAFETY: user_ip4 and user_port are writable in getpeername4.
        unsafe {
            write_volatile(&mut (*sa).user_ip4, addr);
            write_volatile(&mut (*sa).user_port, port as u32);
        }
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn jp_getpeername6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: valid context; the socket cookie helper takes the context.
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    // SAFETY: the map value is only read, and copied out at once.
    if let Some(record) = unsafe { CONNECTS.get(&cookie) } {
        let (addr, port) = (record.orig_addr, record.orig_port_be);
        // SAFETY: user_ip6 and user_port are writable in getpeername6.
        unsafe {
            write_ip6(&mut (*sa).user_ip6, addr);
            write_volatile(&mut (*sa).user_port, port as u32);
        }
    }
    ALLOW
}

/// Once a redirected connection is established, index its record by the
/// client's 4-tuple: that is what the proxy sees from `accept()`. This runs
/// before the connection reaches the proxy's accept queue. State callbacks,
/// turned on when a recorded socket starts to connect, forget the record
/// when the connection closes.
#[sock_ops]
pub fn jp_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => watch_state(&ctx),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => established(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => {
            // SAFETY: valid context pointer; the helper takes the context.
            forget(unsafe { bpf_get_socket_cookie(ctx.ops.cast()) });
        }
        _ => {}
    }
    0
}

/// Asks for state callbacks on a recorded socket, so its record goes when
/// the connection ends (also when it never establishes).
#[inline(always)]
fn watch_state(ctx: &SockOpsContext) {
    // SAFETY: valid context pointer; the helper takes the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    // SAFETY: only whether a record exists is read.
    if unsafe { CONNECTS.get(&cookie) }.is_some() {
        let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    }
}

#[inline(always)]
fn established(ctx: &SockOpsContext) {
    let ops: *mut bpf_sock_ops = ctx.ops;
    // SAFETY: valid context pointer; the helper takes the context.
    let cookie = unsafe { bpf_get_socket_cookie(ops.cast()) };
    // SAFETY: valid context pointer; every field is read unconditionally.
    let (family, l4, r4, l6, r6, lport, rport) = unsafe {
        (
            read_volatile(&(*ops).family),
            read_volatile(&(*ops).local_ip4),
            read_volatile(&(*ops).remote_ip4),
            read_ip6(&(*ops).local_ip6),
            read_ip6(&(*ops).remote_ip6),
            read_volatile(&(*ops).local_port),
            read_volatile(&(*ops).remote_port),
        )
    };
    let (client_addr, proxy_addr) = if family == AF_INET {
        (v4_mapped(l4), v4_mapped(r4))
    } else {
        (l6, r6)
    };
    let tuple = SockTuple {
        client_addr,
        proxy_addr,
        client_port: lport as u16,
        proxy_port: remote_port_host(rport),
    };
    let Some(record) = CONNECTS.get_ptr_mut(&cookie) else {
        return;
    };
    // A tuple is never taken from a socket that still has its record: one in
    // another network namespace of the cgroup may use the same 4-tuple
    // (sockops sees every namespace). A leftover entry of a gone socket is
    // replaced.
    // SAFETY: the value is copied out at once.
    if let Some(&owner) = unsafe { TUPLES.get(&tuple) } {
        // SAFETY: only whether a record exists is read.
        if owner != cookie && unsafe { CONNECTS.get(&owner) }.is_some() {
            return;
        }
    }
    if TUPLES.insert(&tuple, &cookie, 0).is_ok() {
        // SAFETY: `record` points into the map value, valid for this program run.
        unsafe {
            (*record).tuple = tuple;
            (*record).established = 1;
        }
    }
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
}

/// sockops' `remote_port` is network order; kernels place it in the high
/// half of the word on little-endian machines, older ones in the low half.
#[inline(always)]
fn remote_port_host(raw: u32) -> u16 {
    if raw & 0xffff == 0 {
        u32::from_be(raw) as u16
    } else {
        u16::from_be(raw as u16)
    }
}

/// The client socket is gone: forget it, so the maps hold live sockets only.
#[cgroup_sock(sock_release)]
pub fn jp_sock_release(ctx: SockContext) -> i32 {
    let sk: *mut bpf_sock = ctx.sock;
    // SAFETY: valid context; the helper takes the socket.
    forget(unsafe { bpf_get_socket_cookie(sk.cast()) });
    1
}

/// Removes the record of `cookie`, its tuple if the tuple is still its own,
/// and gives back its uid's slot (once: only the remover does).
#[inline(always)]
fn forget(cookie: u64) {
    // SAFETY: the value is copied out before the entry is removed.
    let Some(record) = (unsafe { CONNECTS.get(&cookie) }).copied() else {
        return;
    };
    if record.established != 0 {
        let tuple = record.tuple;
        // SAFETY: the value is copied out at once.
        if unsafe { TUPLES.get(&tuple) }.is_some_and(|&owner| owner == cookie) {
            let _ = TUPLES.remove(&tuple);
        }
    }
    if CONNECTS.remove(&cookie).is_ok() {
        give_uid_slot(record.uid);
    }
}

/// Takes one of `uid`'s record slots; false when it holds them all.
#[inline(always)]
fn take_uid_slot(uid: u32) -> bool {
    let _ = UID_RECORDS.insert(&uid, &0, 1 /* BPF_NOEXIST */);
    let Some(count) = UID_RECORDS.get_ptr_mut(&uid) else {
        return false;
    };
    // SAFETY: `count` points into the map value, valid for this program run.
    // Concurrent takes may pass the cap by a few; the count stays exact.
    // SAFETY: a plain read of a global that only the loader writes.
    let cap = u64::from(unsafe { read_volatile(&RECORDS_PER_UID) });
    if unsafe { read_volatile(count) } >= cap {
        return false;
    }
    // SAFETY: as above; the add is atomic.
    unsafe { atomic_add(count, 1) };
    true
}

/// Gives back one of `uid`'s record slots.
#[inline(always)]
fn give_uid_slot(uid: u32) {
    if let Some(count) = UID_RECORDS.get_ptr_mut(&uid) {
        // SAFETY: as in `take_uid_slot`; adding 2^64 - 1 subtracts one.
        unsafe {
            if read_volatile(count) > 0 {
                atomic_add(count, u64::MAX);
            }
        }
    }
}

/// `*p += v`, atomically (BPF `lock` add; the old value is not fetched, so
/// any BPF CPU version has it).
///
/// # Safety
/// `p` must point into a map value, valid for this program run.
#[inline(always)]
unsafe fn atomic_add(p: *mut u64, v: u64) {
    // SAFETY: the caller guarantees `p`; the instruction touches only `*p`.
    unsafe {
        asm!("lock *(u64 *)({p} + 0) += {v}", p = in(reg) p, v = in(reg) v, options(nostack));
    }
}

#[inline(always)]
fn lookup_target(addr: [u32; 4], port_be: u16) -> Option<TargetValue> {
    let key = Key::new(
        TargetKey::FULL_PREFIX,
        TargetKey {
            port_be,
            pad: 0,
            addr,
        },
    );
    TARGETS.get(&key).copied()
}

/// Whether the socket carries the daemon's mark (its own upstream socket).
#[inline(always)]
fn is_upstream(sa: *mut bpf_sock_addr) -> bool {
    // SAFETY: `sk` of a sock_addr context is a valid socket pointer, and
    // `mark` is a readable field of it.
    let mark = unsafe {
        let sk = (*sa).__bindgen_anon_1.sk;
        read_volatile(&(*sk).mark)
    };
    // SAFETY: a plain read of a global that only the loader writes.
    let want = unsafe { read_volatile(&UPSTREAM_MARK) };
    want != 0 && mark == want
}

/// The caller's executable and login uid, as the kernel has them now.
struct CallerFiles {
    exe_ino: u64,
    exe_dev: u32,
    login_uid: u32,
}

/// Reads `current->loginuid` and `current->mm->exe_file->f_inode->{i_ino,
/// i_sb->s_dev}` at the offsets the daemon found in the kernel's BTF. Taken
/// here, at connect, so that an `exec` or a login uid written after the
/// connect cannot change what is recorded; whatever cannot be read stays
/// "unknown" (inode 0, login uid unset), never someone else's.
#[inline(always)]
fn caller_files() -> CallerFiles {
    let mut files = CallerFiles {
        exe_ino: 0,
        exe_dev: 0,
        login_uid: TaskOffsets::UNSET_LOGIN_UID,
    };
    // SAFETY: plain reads of a global that only the loader writes.
    let off = unsafe {
        TaskOffsets {
            task_mm: read_volatile(&TASK_OFFSETS.task_mm),
            task_loginuid: read_volatile(&TASK_OFFSETS.task_loginuid),
            mm_exe_file: read_volatile(&TASK_OFFSETS.mm_exe_file),
            file_inode: read_volatile(&TASK_OFFSETS.file_inode),
            inode_ino: read_volatile(&TASK_OFFSETS.inode_ino),
            inode_sb: read_volatile(&TASK_OFFSETS.inode_sb),
            sb_dev: read_volatile(&TASK_OFFSETS.sb_dev),
            valid: read_volatile(&TASK_OFFSETS.valid),
        }
    };
    if off.valid == 0 {
        return files;
    }
    // SAFETY: bpf_probe_read_kernel checks every address it is given and
    // fails (it does not fault) on a bad one; the pointers come from the
    // current task, which cannot go away while it runs this program.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        if off.task_loginuid != TaskOffsets::NO_LOGIN_UID {
            let at = task.add(off.task_loginuid as usize).cast::<u32>();
            if let Ok(uid) = bpf_probe_read_kernel(at) {
                files.login_uid = uid;
            }
        }
        let Ok(mm) = bpf_probe_read_kernel(task.add(off.task_mm as usize).cast::<*const u8>())
        else {
            return files;
        };
        if mm.is_null() {
            return files;
        }
        let Ok(file) = bpf_probe_read_kernel(mm.add(off.mm_exe_file as usize).cast::<*const u8>())
        else {
            return files;
        };
        if file.is_null() {
            return files;
        }
        let Ok(inode) =
            bpf_probe_read_kernel(file.add(off.file_inode as usize).cast::<*const u8>())
        else {
            return files;
        };
        if inode.is_null() {
            return files;
        }
        let Ok(sb) = bpf_probe_read_kernel(inode.add(off.inode_sb as usize).cast::<*const u8>())
        else {
            return files;
        };
        let (Ok(ino), Ok(dev)) = (
            bpf_probe_read_kernel(inode.add(off.inode_ino as usize).cast::<u64>()),
            bpf_probe_read_kernel(sb.add(off.sb_dev as usize).cast::<u32>()),
        ) else {
            return files;
        };
        files.exe_ino = ino;
        files.exe_dev = dev;
    }
    files
}

#[inline(always)]
fn proxy_port_be() -> u16 {
    // SAFETY: a plain read of a global that only the loader writes.
    unsafe { read_volatile(&PROXY_PORT_BE) }
}

#[inline(always)]
fn count(f: impl FnOnce(&mut Counters)) {
    if let Some(c) = COUNTERS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, valid for this program run.
        f(unsafe { &mut *c });
    }
}

/// # Safety
/// `p` must point to a readable 4-word context field.
#[inline(always)]
unsafe fn read_ip6(p: &[u32; 4]) -> [u32; 4] {
    // SAFETY: the caller guarantees `p` is a valid context field.
    unsafe {
        [
            read_volatile(&p[0]),
            read_volatile(&p[1]),
            read_volatile(&p[2]),
            read_volatile(&p[3]),
        ]
    }
}

/// # Safety
/// `p` must point to a writable 4-word context field.
#[inline(always)]
unsafe fn write_ip6(p: &mut [u32; 4], v: [u32; 4]) {
    // SAFETY: the caller guarantees `p` is a valid, writable context field.
    unsafe {
        write_volatile(&mut p[0], v[0]);
        write_volatile(&mut p[1], v[1]);
        write_volatile(&mut p[2], v[2]);
        write_volatile(&mut p[3], v[3]);
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
