//! Micro-benchmarks behind `jitproxy debug bench-*` (run by `cargo xtask
//! bench`), apart from the daemon's own code paths.

pub mod audit;
pub mod decision;
