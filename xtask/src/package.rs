//! `cargo xtask package`: the Debian package, built with cargo-deb from
//! `[package.metadata.deb]` in proxy/Cargo.toml.
//!
//! The release binary is built first; then the man pages (`jitproxy man`)
//! and the shell completions (`jitproxy completions SHELL`) it generates
//! from its own command-line definitions go under target/package/, where
//! the package's assets take them from; then `cargo deb --no-build`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use crate::{setup, util};

/// Where the generated assets go (the paths in proxy/Cargo.toml's
/// `[package.metadata.deb]` assets name this folder).
fn generated_dir() -> PathBuf {
    util::workspace_root().join("target/package")
}

/// The completion scripts: shell, and the file the assets take it from.
const COMPLETIONS: &[(&str, &str)] = &[
    ("bash", "jitproxy.bash"),
    ("zsh", "_jitproxy"),
    ("fish", "jitproxy.fish"),
];

/// `cargo xtask package`: installs cargo-deb if it is missing, builds the
/// package and prints its path on stdout.
pub fn run() -> Result<()> {
    setup::run(setup::Needs {
        package: true,
        ..setup::Needs::default()
    })?;
    let deb = build()?;
    util::step("package built");
    println!("{}", deb.display());
    Ok(())
}

/// Builds the package (cargo-deb must be installed) and returns its path.
pub fn build() -> Result<PathBuf> {
    util::step("Debian package: release binary, man pages, completions, cargo deb");
    let bin = util::build_jitproxy()?;
    generate_assets(&bin, &generated_dir())?;
    cargo_deb()
}

/// The man pages and completions, generated afresh (no page of a command
/// that no longer exists stays behind).
fn generate_assets(bin: &Path, dir: &Path) -> Result<()> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    for stale in [&man, &completions] {
        match std::fs::remove_dir_all(stale) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", stale.display())),
        }
    }
    util::run(Command::new(bin).arg("man").arg(&man).stdout(Stdio::null()))?;
    std::fs::create_dir_all(&completions)
        .with_context(|| format!("cannot create {}", completions.display()))?;
    for (shell, file) in COMPLETIONS {
        let out = Command::new(bin)
            .args(["completions", shell])
            .output()
            .with_context(|| format!("cannot run {} completions {shell}", bin.display()))?;
        if !out.status.success() || out.stdout.is_empty() {
            bail!(
                "`{} completions {shell}` failed ({}): {}",
                bin.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let path = completions.join(file);
        std::fs::write(&path, &out.stdout)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    eprintln!(
        "man pages in {}, completions in {}",
        man.display(),
        completions.display()
    );
    Ok(())
}

/// `cargo deb -p jitproxy --no-build --dbgsym`; returns the path of the
/// package it printed. The binary in it is stripped; its debug symbols (the
/// release profile has `debug = 1`) go to the jitproxy-dbgsym .ddeb beside
/// it, for backtraces and debuggers.
fn cargo_deb() -> Result<PathBuf> {
    const ARGS: &[&str] = &["deb", "-p", "jitproxy", "--no-build", "--dbgsym"];
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(ARGS)
        .current_dir(util::workspace_root())
        .env("PATH", util::path_with_cargo_bin())
        .stderr(Stdio::inherit());
    eprintln!("  $ cargo {}", ARGS.join(" "));
    eprintln!(
        "  (cargo-deb warns that the target/package/ assets \"will not be built\": they were \
         generated above)"
    );
    let out = cmd.output().context("cannot start cargo deb")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "cargo deb failed ({}):\n{stdout}\nhint: is cargo-deb installed? \
             (`cargo xtask setup --package`)",
            out.status
        );
    }
    // cargo-deb prints the package's path last.
    let deb = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .with_context(|| format!("cargo deb named no .deb file:\n{stdout}"))?;
    let deb = if deb.is_absolute() {
        deb
    } else {
        util::workspace_root().join(deb)
    };
    if !deb.is_file() {
        bail!(
            "cargo deb said it wrote {}, which is not there",
            deb.display()
        );
    }
    Ok(deb)
}
