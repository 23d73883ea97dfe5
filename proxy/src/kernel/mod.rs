//! The kernel side, from userspace: load the eBPF object, pin its maps and
//! links in bpffs, attach the programs to the watched cgroup, and read and
//! write the maps. Every aya call of the daemon is in this module; so would be
//! any `unsafe` the kernel side ever needs (the crate forbids it elsewhere).
//!
//! Links are pinned so that the programs stay attached while the daemon is
//! down: connections to targets are then refused (nothing listens on the
//! proxy port) instead of going direct. On restart the daemon reuses the
//! pinned maps, attaches fresh programs beside the old ones (both redirect
//! into the same maps, so there is no gap), then removes the old links.

use std::{
    collections::BTreeMap,
    fs::File,
    io,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

use aya::{
    maps::{lpm_trie::Key, HashMap, LpmTrie, MapData, PerCpuArray},
    programs::{
        links::{FdLink, PinnedLink},
        CgroupAttachMode,
    },
    Ebpf, EbpfLoader,
};
use proxy_common::{
    globals, is_v4_mapped, maps, programs, ConnectRecord, Counters, SockTuple, TargetKey,
    TargetValue, MAP_LAYOUT_VERSION,
};

use crate::host;

mod offsets;

pub use offsets::OffsetsError;

/// The eBPF object built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/jitproxy-ebpf"));

const PINNED_MAPS: [&str; 5] = [
    maps::TARGETS,
    maps::CONNECTS,
    maps::TUPLES,
    maps::COUNTERS,
    maps::UID_RECORDS,
];

/// Programs in attach order: bookkeeping first, the redirect last, so that a
/// redirected connection always finds sockops and sock_release in place.
const PROGRAMS: [&str; 8] = [
    programs::SOCK_RELEASE,
    programs::SOCKOPS,
    programs::GETPEERNAME4,
    programs::GETPEERNAME6,
    programs::SENDMSG4,
    programs::SENDMSG6,
    programs::CONNECT4,
    programs::CONNECT6,
];

/// What went wrong on the kernel side. Most of these are the operator's to fix
/// (permissions, kernel features); the message says how.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Cgroup(#[from] host::cgroup::CgroupError),
    #[error("cannot mount bpffs at {path}: {source}; jitproxy needs root (CAP_SYS_ADMIN)")]
    MountBpffs {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot prepare pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Offsets(#[from] OffsetsError),
    #[error("cannot load the eBPF programs: {0}; jitproxy needs root (CAP_BPF, CAP_NET_ADMIN) and a kernel with BTF and cgroup BPF (5.10 or newer)")]
    Load(#[source] aya::EbpfError),
    #[error("eBPF object has no {kind} named {name} (build mismatch; rebuild jitproxy)")]
    Missing { kind: &'static str, name: String },
    #[error("cannot load or attach program {name}: {source}")]
    Program {
        name: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("cannot pin or unpin {path}: {message}")]
    Pin { path: PathBuf, message: String },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Where the pins of one watched cgroup live:
/// `<bpffs>/jitproxy/v<layout>-cg<cgroup id>/{maps,links}/`.
#[derive(Debug, Clone)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    pub fn new(bpffs: &Path, cgroup_id: u64) -> Self {
        Self {
            root: pins_root(bpffs).join(format!("v{MAP_LAYOUT_VERSION}-cg{cgroup_id}")),
        }
    }

    /// Every pin directory under `bpffs`, of any layout: (directory, its
    /// layout, its cgroup id).
    fn all(bpffs: &Path) -> Result<Vec<(Self, u32, u64)>, KernelError> {
        let root = pins_root(bpffs);
        let entries = match std::fs::read_dir(&root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(KernelError::PinDir { path: root, source }),
        };
        Ok(entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let (layout, id) = name.strip_prefix('v')?.split_once("-cg")?;
                Some((
                    Self { root: e.path() },
                    layout.parse().ok()?,
                    id.parse().ok()?,
                ))
            })
            .collect())
    }

    /// Detaches its links and removes its maps and directories (whatever
    /// its layout: every file under `maps/` goes).
    fn remove(&self) -> Result<Uninstalled, KernelError> {
        let mut done = Uninstalled::default();
        for path in self.pinned_links().map_err(|source| KernelError::PinDir {
            path: self.links(),
            source,
        })? {
            unpin_link(&path)?;
            done.links += 1;
        }
        let maps = match std::fs::read_dir(self.maps()) {
            Ok(entries) => entries.filter_map(Result::ok).map(|e| e.path()).collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(KernelError::PinDir {
                    path: self.maps(),
                    source,
                })
            }
        };
        for path in maps {
            std::fs::remove_file(&path).map_err(|source| KernelError::PinDir { path, source })?;
            done.maps += 1;
        }
        for dir in [self.links(), self.maps(), self.root.clone()] {
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(KernelError::PinDir { path: dir, source }),
            }
        }
        done.dirs += 1;
        Ok(done)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }

    fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    /// Pinned links, whatever generation they are from.
    fn pinned_links(&self) -> io::Result<Vec<PathBuf>> {
        match std::fs::read_dir(self.links()) {
            Ok(entries) => entries.map(|e| e.map(|e| e.path())).collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}

/// Settings the programs are loaded with.
#[derive(Debug, Clone)]
pub struct LoadOptions<'a> {
    pub cgroup: &'a Path,
    pub bpffs: &'a Path,
    pub proxy_port: u16,
    pub upstream_mark: u32,
    /// Live records one uid may hold.
    pub records_per_uid: u32,
}

/// The attached programs and the maps the daemon reads and writes.
pub struct Kernel {
    pins: PinDir,
    connects: HashMap<MapData, u64, ConnectRecord>,
    tuples: HashMap<MapData, SockTuple, u64>,
    counters: PerCpuArray<MapData, Counters>,
    uid_records: HashMap<MapData, u32, u64>,
    targets: Mutex<LpmTrie<MapData, TargetKey, TargetValue>>,
    /// The programs' own log records (aya-log), until the daemon takes them.
    logs: Mutex<Option<KernelLogs>>,
    /// Holds the loaded programs; the pinned links keep them attached.
    _ebpf: Ebpf,
}

/// The kernel programs' log records (refusals the proxy never sees: UDP,
/// a full record map, the per-uid cap), read from their ring buffer.
pub struct KernelLogs(aya_log::EbpfLogger<ToTracing>);

impl KernelLogs {
    /// Writes each record to the daemon log (tracing target
    /// `jitproxy::kernel`) as it comes, until `shutdown`.
    pub async fn forward(self, shutdown: tokio_util::sync::CancellationToken) {
        // The logger owns its ring buffer's descriptor for as long as the
        // AsyncFd owns the logger: the I/O-safety condition tokio asks for
        // (its safe constructors are deprecated in favour of unsafe ones).
        #[expect(deprecated, reason = "the logger owns the descriptor it registers")]
        let registered =
            tokio::io::unix::AsyncFd::with_interest(self.0, tokio::io::Interest::READABLE);
        let mut logs = match registered {
            Ok(logs) => logs,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the kernel programs' log");
                return;
            }
        };
        loop {
            let mut ready = tokio::select! {
                ready = logs.readable_mut() => match ready {
                    Ok(ready) => ready,
                    Err(e) => {
                        tracing::warn!(error = %e, "the kernel programs' log failed");
                        return;
                    }
                },
                () = shutdown.cancelled() => return,
            };
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    }
}

/// aya-log speaks the `log` crate; the daemon logs with tracing.
#[derive(Debug, Clone, Copy)]
pub struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "jitproxy::kernel", "{message}"),
            log::Level::Warn => tracing::warn!(target: "jitproxy::kernel", "{message}"),
            log::Level::Info => tracing::info!(target: "jitproxy::kernel", "{message}"),
            log::Level::Debug | log::Level::Trace => {
                tracing::debug!(target: "jitproxy::kernel", "{message}");
            }
        }
    }

    fn flush(&self) {}
}

/// One entry of the target map: destination port, address range, target.
pub type TargetEntry = (u16, ipnet::IpNet);

impl Kernel {
    /// Loads the programs, reusing pinned maps, and attaches them to the
    /// cgroup, replacing links left by an earlier daemon.
    pub fn install(opts: &LoadOptions<'_>) -> Result<Self, KernelError> {
        let cgroup_file = host::cgroup::open(opts.cgroup)?;
        let cgroup_id = host::cgroup::id(opts.cgroup)?;
        ensure_bpffs(opts.bpffs)?;
        let pins = PinDir::new(opts.bpffs, cgroup_id);
        for dir in [pins.maps(), pins.links()] {
            std::fs::create_dir_all(&dir)
                .map_err(|source| KernelError::PinDir { path: dir, source })?;
        }

        let mut loader = EbpfLoader::new();
        let map_paths: Vec<(&str, PathBuf)> = PINNED_MAPS
            .iter()
            .map(|name| (*name, pins.maps().join(name)))
            .collect();
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let task_offsets = offsets::task_offsets(Path::new(offsets::VMLINUX_BTF))?;
        let port_be = opts.proxy_port.to_be();
        loader
            .override_global(globals::TASK_OFFSETS, &task_offsets, true)
            .override_global(globals::PROXY_PORT, &port_be, true)
            .override_global(globals::UPSTREAM_MARK, &opts.upstream_mark, true)
            .override_global(globals::RECORDS_PER_UID, &opts.records_per_uid, true);
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(KernelError::Load)?;

        let stale = pins.pinned_links().map_err(|source| KernelError::PinDir {
            path: pins.links(),
            source,
        })?;
        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        for name in PROGRAMS {
            let link = attach(&mut ebpf, name, &cgroup_file)?;
            // bpffs refuses dots in names.
            let path = pins.links().join(format!("{name}-{generation}"));
            link.pin(&path).map_err(|e| KernelError::Pin {
                path: path.clone(),
                message: error_chain(&e),
            })?;
        }
        // The new programs are in place; the old ones can go, also those
        // of an older layout (a daemon before an upgrade).
        for path in stale {
            unpin_link(&path)?;
        }
        for (dir, layout, id) in PinDir::all(opts.bpffs)? {
            if id == cgroup_id && layout != MAP_LAYOUT_VERSION {
                dir.remove()?;
            }
        }

        let logs = match aya_log::EbpfLogger::init_with_logger(&mut ebpf, ToTracing) {
            Ok(logger) => Some(KernelLogs(logger)),
            Err(e) => {
                tracing::warn!(error = %e, "the kernel programs' log is not available");
                None
            }
        };
        Ok(Self {
            logs: Mutex::new(logs),
            connects: take_map(&mut ebpf, maps::CONNECTS)?,
            tuples: take_map(&mut ebpf, maps::TUPLES)?,
            counters: take_map(&mut ebpf, maps::COUNTERS)?,
            uid_records: take_map(&mut ebpf, maps::UID_RECORDS)?,
            targets: Mutex::new(take_map(&mut ebpf, maps::TARGETS)?),
            pins,
            _ebpf: ebpf,
        })
    }

    pub fn pins(&self) -> &PinDir {
        &self.pins
    }

    /// The programs' log records, once (the daemon forwards them).
    pub fn take_logs(&self) -> Option<KernelLogs> {
        self.logs.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// The record of the redirected connection whose client end is `client`
    /// and which arrived at the proxy's `local` address.
    pub fn find_origin(&self, client: SocketAddr, local: SocketAddr) -> Option<ConnectRecord> {
        let tuple = SockTuple {
            client_addr: words(client.ip()),
            proxy_addr: words(local.ip()),
            client_port: client.port(),
            proxy_port: local.port(),
        };
        let cookie = self.tuples.get(&tuple, 0).ok()?;
        self.connects.get(&cookie, 0).ok()
    }

    /// Makes the kernel's target map hold exactly `entries`.
    pub fn set_targets(&self, entries: &BTreeMap<TargetEntry, u32>) -> Result<(), KernelError> {
        let mut map = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        let wanted: std::collections::HashMap<Vec<u8>, (Key<TargetKey>, TargetValue)> = entries
            .iter()
            .map(|(&(port, net), &target_id)| {
                let key = target_key(port, net);
                (key_bytes(&key), (key, TargetValue { target_id }))
            })
            .collect();
        let present: Vec<Key<TargetKey>> = map.keys().filter_map(Result::ok).collect();
        for key in present {
            if !wanted.contains_key(&key_bytes(&key)) {
                map.remove(&key).map_err(|source| KernelError::Map {
                    name: maps::TARGETS,
                    source,
                })?;
            }
        }
        for (key, value) in wanted.values() {
            map.insert(key, value, 0)
                .map_err(|source| KernelError::Map {
                    name: maps::TARGETS,
                    source,
                })?;
        }
        Ok(())
    }

    /// Kernel event counters, summed over CPUs.
    pub fn counters(&self) -> Counters {
        let mut sum = Counters::default();
        if let Ok(per_cpu) = self.counters.get(&0, 0) {
            for c in per_cpu.iter() {
                sum.redirected += c.redirected;
                sum.udp_refused += c.udp_refused;
                sum.map_full += c.map_full;
                sum.exempt += c.exempt;
                sum.uid_full += c.uid_full;
                sum.unspecified += c.unspecified;
                sum.mptcp_refused += c.mptcp_refused;
            }
        }
        sum
    }

    /// Entries in the connection record maps (CONNECTS, TUPLES).
    pub fn record_counts(&self) -> (usize, usize) {
        (self.connects.keys().count(), self.tuples.keys().count())
    }

    /// Live records per uid (uids holding none left out).
    pub fn records_by_uid(&self) -> Vec<(u32, u64)> {
        let mut by_uid: Vec<(u32, u64)> = self
            .uid_records
            .iter()
            .filter_map(Result::ok)
            .filter(|&(_, n)| n > 0)
            .collect();
        by_uid.sort_unstable();
        by_uid
    }
}

/// What `uninstall` removed.
#[derive(Debug, Default)]
pub struct Uninstalled {
    pub links: usize,
    pub maps: usize,
    /// Pin directories (one per cgroup and layout).
    pub dirs: usize,
}

impl Uninstalled {
    fn add(&mut self, other: Self) {
        self.links += other.links;
        self.maps += other.maps;
        self.dirs += other.dirs;
    }
}

/// Detaches the pinned programs of a cgroup (of every layout) and removes its
/// pins: afterwards connections from the cgroup go direct. The daemon must
/// not be running.
pub fn uninstall(bpffs: &Path, cgroup: &Path) -> Result<Uninstalled, KernelError> {
    uninstall_ids(bpffs, &[host::cgroup::id(cgroup)?])
}

/// Removes the pins (of every layout) of the cgroups with these ids, which
/// may be gone already. No daemon may run on them.
pub fn uninstall_ids(bpffs: &Path, ids: &[u64]) -> Result<Uninstalled, KernelError> {
    let mut done = Uninstalled::default();
    for (dir, _, id) in PinDir::all(bpffs)? {
        if ids.contains(&id) {
            done.add(dir.remove()?);
        }
    }
    // The shared `<bpffs>/jitproxy` goes too once no cgroup has pins in it.
    let _ = std::fs::remove_dir(pins_root(bpffs));
    Ok(done)
}

/// The cgroup ids that have pins, of any layout.
pub fn pinned_cgroups(bpffs: &Path) -> Result<Vec<u64>, KernelError> {
    let mut ids: Vec<u64> = PinDir::all(bpffs)?
        .into_iter()
        .map(|(_, _, id)| id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

fn pins_root(bpffs: &Path) -> PathBuf {
    bpffs.join("jitproxy")
}

/// Entries in the pinned record maps of a cgroup, read without a daemon.
pub fn pinned_record_counts(bpffs: &Path, cgroup: &Path) -> Result<(usize, usize), KernelError> {
    let pins = PinDir::new(bpffs, host::cgroup::id(cgroup)?);
    let open = |name: &'static str| {
        MapData::from_pin(pins.maps().join(name))
            .map_err(|source| KernelError::Map { name, source })
    };
    let connects: HashMap<MapData, u64, ConnectRecord> =
        HashMap::try_from(aya::maps::Map::HashMap(open(maps::CONNECTS)?)).map_err(|source| {
            KernelError::Map {
                name: maps::CONNECTS,
                source,
            }
        })?;
    let tuples: HashMap<MapData, SockTuple, u64> =
        HashMap::try_from(aya::maps::Map::HashMap(open(maps::TUPLES)?)).map_err(|source| {
            KernelError::Map {
                name: maps::TUPLES,
                source,
            }
        })?;
    Ok((connects.keys().count(), tuples.keys().count()))
}

fn attach(ebpf: &mut Ebpf, name: &str, cgroup: &File) -> Result<FdLink, KernelError> {
    let program_error = |source| KernelError::Program {
        name: name.to_owned(),
        source,
    };
    let program = ebpf.program_mut(name).ok_or_else(|| KernelError::Missing {
        kind: "program",
        name: name.to_owned(),
    })?;
    // The three cgroup program types share these calls but no trait.
    macro_rules! load_and_attach {
        ($p:expr) => {{
            $p.load().map_err(program_error)?;
            let id = $p
                .attach(cgroup, CgroupAttachMode::Single)
                .map_err(program_error)?;
            $p.take_link(id).map_err(program_error)?.try_into()
        }};
    }
    let link = match program {
        aya::programs::Program::CgroupSockAddr(p) => load_and_attach!(p),
        aya::programs::Program::SockOps(p) => load_and_attach!(p),
        aya::programs::Program::CgroupSock(p) => load_and_attach!(p),
        _ => {
            return Err(KernelError::Missing {
                kind: "cgroup program",
                name: name.to_owned(),
            })
        }
    };
    link.map_err(|e: aya::programs::links::LinkError| KernelError::Pin {
        path: PathBuf::from(name),
        message: format!("cannot take the link: {e}"),
    })
}

/// Removes a link pin; the link detaches when its last reference goes.
fn unpin_link(path: &Path) -> Result<(), KernelError> {
    let pin_error = |message: String| KernelError::Pin {
        path: path.to_owned(),
        message,
    };
    let link = PinnedLink::from_pin(path).map_err(|e| pin_error(error_chain(&e)))?;
    let link = link.unpin().map_err(|e| pin_error(error_chain(&e)))?;
    drop(link);
    Ok(())
}

/// An error and its sources, one line: aya's messages name the syscall and
/// leave the errno to the source.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(KernelError::Missing {
        kind: "map",
        name: name.to_owned(),
    })?;
    T::try_from(map).map_err(|source| KernelError::Map { name, source })
}

/// Mounts bpffs at `path` unless it is already mounted there.
fn ensure_bpffs(path: &Path) -> Result<(), KernelError> {
    let mounts = host::proc::mounts().map_err(|source| KernelError::PinDir {
        path: path.to_owned(),
        source,
    })?;
    if mounts.iter().any(|m| m.point == path && m.fstype == "bpf") {
        return Ok(());
    }
    std::fs::create_dir_all(path).map_err(|source| KernelError::PinDir {
        path: path.to_owned(),
        source,
    })?;
    nix::mount::mount(
        Some("bpf"),
        path,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| KernelError::MountBpffs {
        path: path.to_owned(),
        source,
    })
}

/// An address as the kernel stores it: 16 bytes, IPv4 mapped, as four words
/// whose in-memory bytes are network order.
fn words(ip: IpAddr) -> [u32; 4] {
    let octets = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    let mut out = [0u32; 4];
    for (word, chunk) in out.iter_mut().zip(octets.chunks_exact(4)) {
        *word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    out
}

/// The inverse of [`words`]: IPv4-mapped addresses come back as IPv4.
pub fn ip_from_words(addr: [u32; 4]) -> IpAddr {
    let mut octets = [0u8; 16];
    for (chunk, word) in octets.chunks_exact_mut(4).zip(addr) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    let v6 = Ipv6Addr::from(octets);
    if is_v4_mapped(&addr) {
        IpAddr::V4(
            v6.to_ipv4_mapped()
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
        )
    } else {
        IpAddr::V6(v6)
    }
}

fn target_key(port: u16, net: ipnet::IpNet) -> Key<TargetKey> {
    let (addr, prefix) = match net {
        ipnet::IpNet::V4(v4) => (IpAddr::V4(v4.network()), 96 + u32::from(v4.prefix_len())),
        ipnet::IpNet::V6(v6) => (IpAddr::V6(v6.network()), u32::from(v6.prefix_len())),
    };
    Key::new(
        TargetKey::PORT_BITS + prefix,
        TargetKey {
            port_be: port.to_be(),
            pad: 0,
            addr: words(addr),
        },
    )
}

fn key_bytes(key: &Key<TargetKey>) -> Vec<u8> {
    let data = key.data();
    let mut out = Vec::with_capacity(24);
    out.extend_from_slice(&key.prefix_len().to_ne_bytes());
    out.extend_from_slice(&data.port_be.to_ne_bytes());
    for w in data.addr {
        out.extend_from_slice(&w.to_ne_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        for ip in ["127.0.0.2", "::1", "2001:db8::1", "::ffff:10.0.0.1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_from_words(words(ip)), ip.to_canonical());
        }
    }

    #[test]
    fn v4_keys_cover_mapped_prefix() {
        let key = target_key(443, "10.1.0.0/16".parse().unwrap());
        assert_eq!(key.prefix_len(), 32 + 96 + 16);
        assert_eq!(key.data().port_be, 443u16.to_be());
    }
}
