//! Empty library target: it lets proxy/build.rs name this crate as a build
//! dependency, so Cargo rebuilds the daemon when the eBPF programs change.
#![no_std]
