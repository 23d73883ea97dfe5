//! `cargo xtask setup`: installs what a fresh machine lacks, and nothing it
//! already has. Safe to run again.
//!
//! - the nightly toolchain's `rust-src` (the eBPF crate builds `core`);
//! - `bpf-linker`, built against the nightly's own LLVM (no system LLVM);
//! - Debian packages the tests and the benchmark drive.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::util::{self, step};

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Which optional groups to install.
#[derive(Debug, Clone, Copy)]
pub struct Needs {
    pub bench: bool,
}

/// Debian packages and a command that proves each is there.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("curl", "curl"),
    ("python3", "/usr/bin/python3"),
    ("util-linux", "setpriv"),
    ("nodejs", "node"),
    ("iproute2", "ip"),
];
const BENCH_PACKAGES: &[(&str, &str)] = &[
    ("wrk", "wrk"),
    ("haproxy", "haproxy"),
    ("nginx", "/usr/sbin/nginx"),
];

pub fn run(needs: Needs) -> Result<()> {
    step("setup: toolchain and tools");
    rust_src()?;
    bpf_linker()?;
    let mut packages: Vec<(&str, &str)> = TEST_PACKAGES.to_vec();
    if needs.bench {
        packages.extend_from_slice(BENCH_PACKAGES);
    }
    debian_packages(&packages)
}

fn rust_src() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("rustup is needed to build the eBPF programs")?;
    if !installed.status.success() {
        bail!(
            "the nightly toolchain is missing; install it with \
             `rustup toolchain install nightly --profile minimal`"
        );
    }
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        return Ok(());
    }
    eprintln!("installing rust-src for the nightly toolchain");
    // --no-self-update: a toolchain install once replaced the machine's rustup.
    util::run(Command::new("rustup").args([
        "--no-self-update",
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

fn bpf_linker() -> Result<()> {
    if util::works("bpf-linker", &["--version"]) {
        return Ok(());
    }
    eprintln!(
        "building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM (about a minute)"
    );
    let sysroot = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .context("cannot ask the nightly rustc for its sysroot")?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    let lib = sysroot.join("lib");
    let llvm = std::fs::read_dir(&lib)
        .with_context(|| format!("cannot list {}", lib.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    let major = llvm
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .unwrap_or_default()
        .to_owned();
    // bpf-linker keeps this folder as its library path: it must stay.
    let prefix = util::cargo_home().join("jitproxy-llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in ["libLLVM.so", llvm.as_str()] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib.join(&llvm), &link)
            .with_context(|| format!("cannot link {}", link.display()))?;
    }
    util::run(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
                "--root",
            ])
            .arg(util::cargo_home())
            .env("LLVM_PREFIX", &prefix)
            .env("PATH", util::path_with_cargo_bin()),
    )?;
    if !util::works("bpf-linker", &["--version"]) {
        bail!("bpf-linker was installed but does not run");
    }
    Ok(())
}

fn debian_packages(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(_, probe)| !present(probe))
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing Debian packages: {}", missing.join(" "));
    let install = |update: bool| -> Result<()> {
        if update {
            util::run(Command::new("apt-get").args(["update", "-q"]))?;
        }
        util::run(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    // The package lists may be stale or absent on a fresh machine.
    install(false).or_else(|_| install(true))
}

fn present(probe: &str) -> bool {
    if probe.starts_with('/') {
        return std::path::Path::new(probe).exists();
    }
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(probe).is_file()))
        .unwrap_or(false)
}
