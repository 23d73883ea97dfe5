//! jitproxy: time-limited access to production APIs through a local proxy
//! that the kernel forces connections through.
//!
//! Layers, each importing only from the ones below it (checked by
//! `cargo xtask lint`); docs/architecture.md has the picture:
//!
//! - top: [`cmd`] (the command line), [`daemon`] (wiring), [`control`] (the
//!   control API), [`bench`];
//! - [`store`]: grant store backends;
//! - [`proxy`]: the data path;
//! - [`access`]: grants and who may do what;
//! - [`audit`]: the tamper-evident log;
//! - bottom: [`config`], [`host`] (the local system), [`kernel`] (eBPF),
//!   [`time`].
#![forbid(unsafe_code)]

pub mod access;
pub mod audit;
pub mod bench;
pub mod cmd;
pub mod config;
pub mod control;
pub mod daemon;
pub mod host;
pub mod kernel;
pub mod proxy;
pub mod store;
pub mod time;
