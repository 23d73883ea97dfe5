//! Builds the eBPF object (proxy-ebpf, for bpfel-unknown-none, on the nightly
//! toolchain with bpf-linker) into OUT_DIR so the daemon can embed it.
//! `cargo xtask setup` installs what this needs.

use std::path::PathBuf;

use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .ok_or_else(|| anyhow!("CARGO_MANIFEST_DIR not set"))?;
    let root_dir = manifest_dir.join("../proxy-ebpf");
    let root_dir = root_dir
        .to_str()
        .ok_or_else(|| anyhow!("the workspace path is not UTF-8"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "proxy-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the eBPF programs failed; run `cargo xtask setup` to install \
         the nightly rust-src component and bpf-linker",
    )
}
