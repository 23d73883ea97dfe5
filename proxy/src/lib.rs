//! jitproxy: time-limited access to production APIs through a local proxy
//! that the kernel forces connections through.
//!
//! The data path is in [`proxy`]; the kernel side in [`ebpf`]. See
//! docs/architecture.md for the picture.
#![forbid(unsafe_code)]

pub mod access;
pub mod audit;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod decision;
pub mod ebpf;
pub mod forward;
pub mod grants;
pub mod identity;
pub mod limits;
pub mod proxy;
pub mod targets;
pub mod users;
