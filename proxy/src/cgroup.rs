//! Finding the cgroup v2 hierarchy and the cgroup to watch.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup2 filesystem is mounted (see /proc/mounts); jitproxy needs cgroup v2")]
    NoCgroup2,
    #[error("cgroup {0} does not exist; create it (mkdir) or pass another with --cgroup")]
    NotFound(PathBuf),
    #[error("{0} is not inside the cgroup2 mount {1}")]
    Outside(PathBuf, PathBuf),
    #[error(
        "cgroup v1 controller `{0}` is mounted: the kernel then turns off cgroup v2 socket \
         matching, and jitproxy could be bypassed; unmount it (or boot with \
         cgroup_no_v1=net_cls,net_prio) and start again"
    )]
    V1NetController(String),
}

/// The cgroup2 mount point, from /proc/mounts.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, point, fstype) = (fields.next(), fields.next(), fields.next());
            (fstype == Some("cgroup2")).then(|| PathBuf::from(point.unwrap_or_default()))
        })
        .ok_or(CgroupError::NoCgroup2)
}

/// The cgroup to watch: `arg` if given (absolute, or relative to the cgroup2
/// mount), else the cgroup2 root.
pub fn resolve(arg: Option<&Path>) -> Result<PathBuf, CgroupError> {
    let mount = cgroup2_mount()?;
    let path = match arg {
        None => mount.clone(),
        Some(p) if p.starts_with(&mount) => p.to_owned(),
        Some(p) if p.is_absolute() && p.exists() && p != Path::new("/") => {
            return Err(CgroupError::Outside(p.to_owned(), mount));
        }
        Some(p) => mount.join(p.strip_prefix("/").unwrap_or(p)),
    };
    if !path.is_dir() {
        return Err(CgroupError::NotFound(path));
    }
    Ok(path)
}

/// Refuses to run when a cgroup v1 `net_cls` or `net_prio` hierarchy is
/// mounted: the kernel then stops running cgroup v2 socket programs for
/// sockets it tags, which would let connections go around the proxy.
pub fn check_no_v1_net_controllers() -> Result<(), CgroupError> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(2) != Some(&"cgroup") {
            continue;
        }
        let options = fields.get(3).copied().unwrap_or_default();
        for controller in ["net_cls", "net_prio"] {
            if options.split(',').any(|o| o == controller) {
                return Err(CgroupError::V1NetController(controller.to_owned()));
            }
        }
    }
    Ok(())
}
