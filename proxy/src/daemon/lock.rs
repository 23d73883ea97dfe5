//! One daemon per watched cgroup: an exclusive flock on
//! `/run/jitproxy/cgroup-<id>.lock`, held for the daemon's lifetime (and by
//! `uninstall`, which proves no daemon runs).

use std::{
    fs::File,
    io::{self, Read as _, Seek as _, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};

use crate::host::cgroup::{self, CgroupError};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("cannot create {path}: {source}; jitproxy needs root")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("another jitproxy daemon{pid} already watches cgroup {cgroup}; stop it first (lock: {lock})")]
    AlreadyRunning {
        cgroup: PathBuf,
        lock: PathBuf,
        pid: String,
    },
}

/// Holds the per-cgroup lock for the daemon's lifetime.
#[derive(Debug)]
pub struct DaemonLock {
    _lock: Flock<File>,
    path: PathBuf,
}

impl DaemonLock {
    /// Removes the lock file (after `uninstall`: the cgroup is no longer
    /// watched, so nothing needs to find it).
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Where the per-cgroup locks live. Fixed, not configurable: two daemons
/// with different configs must still find each other's lock.
pub const RUN_DIR: &str = "/run/jitproxy";

/// Takes the lock that makes one daemon per cgroup.
pub fn lock(cgroup: &Path) -> Result<DaemonLock, LockError> {
    lock_id(cgroup::id(cgroup)?, cgroup)
}

/// Takes the lock of the cgroup with id `id` (`cgroup` names it in errors;
/// the cgroup itself may be gone).
pub fn lock_id(id: u64, cgroup: &Path) -> Result<DaemonLock, LockError> {
    let run_dir = Path::new(RUN_DIR);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(run_dir)
        .map_err(|source| LockError::Io {
            path: run_dir.to_owned(),
            source,
        })?;
    let path = run_dir.join(format!("cgroup-{id}.lock"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|source| LockError::Io {
            path: path.clone(),
            source,
        })?;
    let mut lock =
        Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(mut file, _)| {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            LockError::AlreadyRunning {
                cgroup: cgroup.to_owned(),
                lock: path.clone(),
                pid: match pid.trim() {
                    "" => String::new(),
                    pid => format!(" (pid {pid})"),
                },
            }
        })?;
    // Best effort: the pid only makes the "already running" message nicer.
    let _ = lock.set_len(0);
    let _ = lock.rewind();
    let _ = writeln!(lock, "{}", std::process::id());
    Ok(DaemonLock { _lock: lock, path })
}
