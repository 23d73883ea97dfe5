//! `cargo xtask setup`: installs what a fresh machine lacks, and nothing it
//! already has. Safe to run again.
//!
//! - the nightly toolchain's `rust-src` (the eBPF crate builds `core`);
//! - `bpf-linker`, built against the nightly's own LLVM (no system LLVM);
//! - Debian packages the tests and the benchmark drive;
//! - for `test` (which lints): cargo-deny, which checks licences and sources;
//! - for `package` (and `test`, which installs the package): cargo-deb, and
//!   the Debian tools it and the package's test drive.
//!
//! Each step says what it did and how long it took; a failed step names the
//! command that failed and what to do next.

use std::{
    fmt,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result};

use crate::util::{self, step};

const BPF_LINKER_VERSION: &str = "0.13.0";
/// The newest cargo-deny that builds on the stable toolchain here.
const CARGO_DENY_VERSION: &str = "0.20.2";
/// cargo-deb, which builds the Debian package (`cargo xtask package`).
const CARGO_DEB_VERSION: &str = "3.8.0";

/// Where `setup` keeps the links to the nightly's LLVM that bpf-linker loads
/// at run time (its library path): under Cargo's home, so it stays.
fn llvm_prefix() -> PathBuf {
    util::cargo_home().join("jitproxy-llvm")
}

/// Which optional groups to install (none by default).
#[derive(Debug, Clone, Copy, Default)]
pub struct Needs {
    pub bench: bool,
    /// cargo-deny, for `cargo xtask lint`.
    pub lint: bool,
    /// cargo-deb and what it runs, for `cargo xtask package` (and the
    /// package's end-to-end test, which also reads its man page).
    pub package: bool,
}

/// Debian packages and a command that proves each is there.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("curl", "curl"),
    ("python3", "/usr/bin/python3"),
    ("util-linux", "setpriv"),
    ("nodejs", "node"),
    ("iproute2", "ip"),
    // Inspect mode's end-to-end tests: a real TLS upstream with h2, the
    // trust store `jitproxy ca install` feeds, and the clients.
    ("nginx", "/usr/sbin/nginx"),
    ("openssl", "openssl"),
    ("ca-certificates", "update-ca-certificates"),
    (
        "python3-requests",
        "/usr/lib/python3/dist-packages/requests/__init__.py",
    ),
    (
        "python3-grpcio",
        "/usr/lib/python3/dist-packages/grpc/__init__.py",
    ),
    (
        "python3-websockets",
        "/usr/lib/python3/dist-packages/websockets/__init__.py",
    ),
];
/// What cargo-deb runs (dependencies from dpkg-shlibdeps, stripping); and
/// for the package's test, `man` to render its man page and strace to check
/// the daemon's system calls against the unit's filters.
const PACKAGE_PACKAGES: &[(&str, &str)] = &[
    ("dpkg-dev", "dpkg-shlibdeps"),
    ("binutils", "strip"),
    ("man-db", "man"),
    ("strace", "strace"),
];
const BENCH_PACKAGES: &[(&str, &str)] = &[
    ("wrk", "wrk"),
    ("haproxy", "haproxy"),
    ("nginx", "/usr/sbin/nginx"),
];

/// What a step did, for the report line.
enum Outcome {
    Present(String),
    Installed(String),
}

/// A failed step: the command, and what the operator can do about it.
#[derive(Debug)]
struct StepFailed {
    command: String,
    /// What the command said on stderr, when it was captured.
    said: String,
    hint: &'static str,
}

impl StepFailed {
    fn error(command: String, said: String, hint: &'static str) -> anyhow::Error {
        Self {
            command,
            said,
            hint,
        }
        .into()
    }
}

impl fmt::Display for StepFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` failed", self.command)?;
        if !self.said.is_empty() {
            write!(f, ": {}", self.said)?;
        }
        write!(f, "\nhint: {}", self.hint)
    }
}

impl std::error::Error for StepFailed {}

pub fn run(needs: Needs) -> Result<()> {
    step("setup: toolchain and tools");
    let started = Instant::now();
    timed("rust-src (nightly)", rust_src)?;
    timed("bpf-linker", bpf_linker)?;
    if needs.lint {
        timed("cargo-deny", cargo_deny)?;
    }
    if needs.package {
        timed("cargo-deb", cargo_deb)?;
    }
    let mut packages: Vec<(&str, &str)> = TEST_PACKAGES.to_vec();
    if needs.bench {
        packages.extend_from_slice(BENCH_PACKAGES);
    }
    if needs.package {
        packages.extend_from_slice(PACKAGE_PACKAGES);
    }
    timed("Debian packages", || debian_packages(&packages))?;
    eprintln!("setup done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Runs one step and reports it as `name: what happened (time)`.
fn timed(name: &str, step: impl FnOnce() -> Result<Outcome>) -> Result<()> {
    let started = Instant::now();
    let outcome = step().with_context(|| format!("setup step `{name}` failed"))?;
    let secs = started.elapsed().as_secs_f64();
    match outcome {
        Outcome::Present(what) => eprintln!("  {name}: already there ({what}), {secs:.1} s"),
        Outcome::Installed(what) => eprintln!("  {name}: installed {what} in {secs:.1} s"),
    }
    Ok(())
}

/// Runs `cmd`; on failure the error names the command and `hint`.
fn run_or_hint(cmd: &mut Command, hint: &'static str) -> Result<()> {
    let command = describe(cmd);
    eprintln!("  $ {command}");
    let said = match cmd.status() {
        Ok(status) if status.success() => return Ok(()),
        Ok(status) => status.to_string(),
        Err(e) => e.to_string(),
    };
    Err(StepFailed::error(command, said, hint))
}

/// Runs `cmd` and returns its stdout; on failure the error names the command
/// and says what it wrote on stderr.
fn output_or_hint(cmd: &mut Command, hint: &'static str) -> Result<String> {
    let command = describe(cmd);
    let said = match cmd.output() {
        Ok(out) if out.status.success() => {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        }
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        Err(e) => e.to_string(),
    };
    Err(StepFailed::error(command, said, hint))
}

/// The command as a shell line (program and arguments, no environment).
fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn rust_src() -> Result<Outcome> {
    let installed = output_or_hint(
        Command::new("rustup").args(["component", "list", "--installed", "--toolchain", "nightly"]),
        "the eBPF programs build on the nightly toolchain; install it with \
         `rustup toolchain install nightly --profile minimal --component rust-src`",
    )?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(Outcome::Present("rust-src".into()));
    }
    // `component add` never updates rustup itself, so no self-update flag is
    // needed (rustup 1.29 refuses `--no-self-update` as a global flag).
    run_or_hint(
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
        "rustup could not fetch rust-src; check the network and disk space, then run \
         `cargo xtask setup` again",
    )?;
    Ok(Outcome::Installed("rust-src".into()))
}

fn bpf_linker() -> Result<Outcome> {
    if let Some(version) = bpf_linker_version() {
        return Ok(Outcome::Present(version));
    }
    eprintln!(
        "  building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM (about a minute)"
    );
    let sysroot = output_or_hint(
        Command::new("rustc").args(["+nightly", "--print", "sysroot"]),
        "bpf-linker links against the nightly's LLVM; install the nightly with \
         `rustup toolchain install nightly --profile minimal --component rust-src`",
    )?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    let llvm = std::fs::read_dir(&lib)
        .with_context(|| format!("cannot list {}", lib.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so."))
        .with_context(|| {
            format!(
                "no libLLVM.so.* in {}; reinstall the nightly toolchain \
                 (`rustup toolchain install nightly --profile minimal --force`)",
                lib.display()
            )
        })?;
    let major = llvm
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .unwrap_or_default()
        .to_owned();
    link_llvm(&lib.join(&llvm), &llvm)?;
    run_or_hint(
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
            .env("LLVM_PREFIX", llvm_prefix())
            .env("PATH", util::path_with_cargo_bin()),
        "building bpf-linker failed; read the compiler output above (a network error \
         reaching crates.io, or an LLVM version the nightly does not ship), then run \
         `cargo xtask setup` again",
    )?;
    let version = bpf_linker_version().with_context(|| {
        format!(
            "bpf-linker was installed but does not run; check that {} links to the \
             nightly's libLLVM, or delete it and run `cargo xtask setup` again",
            llvm_prefix().display()
        )
    })?;
    Ok(Outcome::Installed(version))
}

fn cargo_deny() -> Result<Outcome> {
    if let Some(version) = tool_version("cargo-deny") {
        return Ok(Outcome::Present(version));
    }
    eprintln!("  building cargo-deny {CARGO_DENY_VERSION} (about five minutes, once)");
    run_or_hint(
        Command::new("cargo")
            .args([
                "install",
                "cargo-deny",
                "--locked",
                "--version",
                CARGO_DENY_VERSION,
                "--root",
            ])
            .arg(util::cargo_home())
            .env("PATH", util::path_with_cargo_bin()),
        "building cargo-deny failed; read the compiler output above, then run \
         `cargo xtask setup` again",
    )?;
    let version =
        tool_version("cargo-deny").context("cargo-deny was installed but does not run")?;
    Ok(Outcome::Installed(version))
}

fn cargo_deb() -> Result<Outcome> {
    if let Some(version) = tool_version("cargo-deb") {
        return Ok(Outcome::Present(version));
    }
    eprintln!("  building cargo-deb {CARGO_DEB_VERSION} (about two minutes, once)");
    run_or_hint(
        Command::new("cargo")
            .args([
                "install",
                "cargo-deb",
                "--locked",
                "--version",
                CARGO_DEB_VERSION,
                "--root",
            ])
            .arg(util::cargo_home())
            .env("PATH", util::path_with_cargo_bin()),
        "building cargo-deb failed; read the compiler output above, then run \
         `cargo xtask setup --package` again",
    )?;
    let version = tool_version("cargo-deb").context("cargo-deb was installed but does not run")?;
    Ok(Outcome::Installed(version))
}

/// `bpf-linker --version` when it runs.
fn bpf_linker_version() -> Option<String> {
    tool_version("bpf-linker")
}

/// `TOOL --version` when it runs (with Cargo's bin directory on PATH).
fn tool_version(tool: &str) -> Option<String> {
    let out = Command::new(tool)
        .arg("--version")
        .env("PATH", util::path_with_cargo_bin())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Makes `<prefix>/lib/{libLLVM.so, name}` point at the nightly's LLVM.
fn link_llvm(target: &Path, name: &str) -> Result<()> {
    let prefix_lib = llvm_prefix().join("lib");
    std::fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("cannot create {}", prefix_lib.display()))?;
    for link_name in ["libLLVM.so", name] {
        let link = prefix_lib.join(link_name);
        match std::fs::remove_file(&link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot replace {}", link.display())),
        }
        std::os::unix::fs::symlink(target, &link)
            .with_context(|| format!("cannot link {}", link.display()))?;
    }
    Ok(())
}

fn debian_packages(packages: &[(&str, &str)]) -> Result<Outcome> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(_, probe)| !present(probe))
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        let names: Vec<&str> = packages.iter().map(|(package, _)| *package).collect();
        return Ok(Outcome::Present(names.join(" ")));
    }
    const HINT: &str = "apt-get could not install the packages; check that the Debian \
                        mirrors are reachable and `dpkg --configure -a` is clean, then run \
                        `cargo xtask setup` again";
    let install = || {
        run_or_hint(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
            HINT,
        )
    };
    // The package lists may be stale or absent on a fresh machine.
    if install().is_err() {
        run_or_hint(Command::new("apt-get").args(["update", "-q"]), HINT)?;
        install()?;
    }
    Ok(Outcome::Installed(missing.join(" ")))
}

fn present(probe: &str) -> bool {
    if probe.starts_with('/') {
        return Path::new(probe).exists();
    }
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(probe).is_file()))
        .unwrap_or(false)
}
