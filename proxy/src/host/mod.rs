//! The local system as the daemon reads it: processes and mounts (`/proc`),
//! the host's addresses and which ports any user may bind,
//! cgroups, the user database (one cache), TCP sockets (ours, and others'
//! through sock_diag), and the descriptor limit. Nothing here knows about
//! grants, targets or the audit log.

pub mod cache;
pub mod cgroup;
pub mod checks;
pub mod net;
pub mod proc;
pub mod rlimit;
pub mod sockdiag;
pub mod socket;
pub mod trust;
pub mod users;
