//! Finding the cgroup v2 hierarchy and the cgroup to watch, and refusing
//! hosts where cgroup v1 networking controllers would switch the kernel's
//! cgroup v2 socket programs off.

use std::{
    collections::HashSet,
    fs::File,
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use super::proc::{self, Mount};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "cannot open cgroup {path}: {source}; pass an existing cgroup v2 directory with --cgroup"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the mount table: {0}; jitproxy refuses to start without it")]
    Mounts(#[source] io::Error),
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

/// The cgroup2 mount point.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let mounts = proc::mounts().map_err(CgroupError::Mounts)?;
    find_cgroup2(&mounts)
}

fn find_cgroup2(mounts: &[Mount]) -> Result<PathBuf, CgroupError> {
    mounts
        .iter()
        .find(|m| m.fstype == "cgroup2")
        .map(|m| m.point.clone())
        .ok_or(CgroupError::NoCgroup2)
}

/// The cgroup to watch: `arg` if given (absolute, or relative to the cgroup2
/// mount), else the cgroup2 root.
pub fn resolve(arg: Option<&Path>) -> Result<PathBuf, CgroupError> {
    let mount = cgroup2_mount()?;
    let path = match arg {
        None => return Ok(mount),
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
/// mounted (the kernel then stops running cgroup v2 socket programs for
/// sockets it tags, which would let connections go around the proxy), or
/// when the mount table cannot be read (fail closed).
pub fn check_no_v1_net_controllers() -> Result<(), CgroupError> {
    let mounts = proc::mounts().map_err(CgroupError::Mounts)?;
    v1_net_controller(&mounts).map_or(Ok(()), |c| Err(CgroupError::V1NetController(c)))
}

fn v1_net_controller(mounts: &[Mount]) -> Option<String> {
    mounts
        .iter()
        .filter(|m| m.fstype == "cgroup")
        .flat_map(|m| &m.options)
        .find(|o| matches!(o.as_str(), "net_cls" | "net_prio"))
        .cloned()
}

/// The cgroup v2 id of a cgroup directory: its inode number.
pub fn id(cgroup: &Path) -> Result<u64, CgroupError> {
    std::fs::metadata(cgroup)
        .map(|m| m.ino())
        .map_err(|source| open_error(cgroup, source))
}

/// The ids of every cgroup that exists now (the cgroup2 hierarchy walked).
pub fn live_ids() -> Result<HashSet<u64>, CgroupError> {
    ids_under(&cgroup2_mount()?)
}

/// The ids of `cgroup` and every cgroup below it.
pub fn ids_under(cgroup: &Path) -> Result<HashSet<u64>, CgroupError> {
    let mut ids = HashSet::new();
    let mut dirs = vec![cgroup.to_owned()];
    while let Some(dir) = dirs.pop() {
        let read = std::fs::metadata(&dir).and_then(|m| Ok((m.ino(), std::fs::read_dir(&dir)?)));
        let entries = match read {
            Ok((id, entries)) => {
                ids.insert(id);
                entries
            }
            // A cgroup below may go while it is walked: skip it, not the walk.
            Err(e) if e.kind() == io::ErrorKind::NotFound && dir != cgroup => continue,
            Err(source) => return Err(open_error(&dir, source)),
        };
        for entry in entries.filter_map(Result::ok) {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(entry.path());
            }
        }
    }
    Ok(ids)
}

/// The cgroup directory, open (to attach programs to it).
pub fn open(cgroup: &Path) -> Result<File, CgroupError> {
    File::open(cgroup).map_err(|source| open_error(cgroup, source))
}

fn open_error(cgroup: &Path, source: io::Error) -> CgroupError {
    CgroupError::Open {
        path: cgroup.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(point: &str, fstype: &str, options: &[&str]) -> Mount {
        Mount {
            point: point.into(),
            fstype: fstype.to_owned(),
            options: options.iter().map(|o| (*o).to_owned()).collect(),
        }
    }

    #[test]
    fn v1_net_controllers_are_found() {
        let hybrid = [
            mount("/sys/fs/cgroup/unified", "cgroup2", &["rw"]),
            mount("/sys/fs/cgroup/cpu", "cgroup", &["rw", "cpu"]),
        ];
        assert_eq!(v1_net_controller(&hybrid), None);
        assert_eq!(
            find_cgroup2(&hybrid).unwrap(),
            PathBuf::from("/sys/fs/cgroup/unified")
        );
        let tagged = [mount("/sys/fs/cgroup/net", "cgroup", &["rw", "net_cls"])];
        assert_eq!(v1_net_controller(&tagged).as_deref(), Some("net_cls"));
        assert!(matches!(find_cgroup2(&tagged), Err(CgroupError::NoCgroup2)));
    }
}
