//! jitproxy's eBPF programs (built for `bpfel-unknown-none` by proxy/build.rs).
//!
//! On the host this crate builds to an empty binary so that workspace-wide
//! `cargo check`/`clippy` runs do not need the BPF target.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
// BPF atomics (`lock ... +=`) for the per-uid record counts: core's atomic
// types have no read-modify-write on this target.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod programs;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
