//! Small helpers shared by the tasks: running commands, finding paths.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

/// Prints a step header.
pub fn step(what: &str) {
    eprintln!("\n==> {what}");
}

/// The workspace root (the parent of xtask/).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

pub fn require_root(why: &str) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("run this as root: {why}");
    }
    Ok(())
}

/// Runs a command, failing with its name if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// `cargo ARGS` in the workspace root, with `~/.cargo/bin` (bpf-linker) on PATH.
pub fn cargo(args: &[&str]) -> Result<()> {
    cargo_with_env(args, &[])
}

pub fn cargo_with_env(args: &[&str], env: &[(&str, &OsStr)]) -> Result<()> {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(args)
        .current_dir(workspace_root())
        .env("PATH", path_with_cargo_bin());
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

/// Builds the release `jitproxy` binary and returns its path.
pub fn build_jitproxy() -> Result<PathBuf> {
    cargo(&["build", "--release", "-p", "jitproxy"])?;
    let bin = target_dir().join("release/jitproxy");
    if !bin.exists() {
        bail!("{} was not built", bin.display());
    }
    Ok(bin)
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Cargo's bin directory, where `setup` installs bpf-linker.
pub fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

pub fn path_with_cargo_bin() -> std::ffi::OsString {
    let mut paths = vec![cargo_home().join("bin")];
    if let Some(path) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

/// Set once Ctrl-C was pressed; tasks check it between steps and stop, so
/// that their guards clean up what they started.
#[derive(Debug, Clone)]
pub struct Interrupted(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Interrupted {
    /// An error once Ctrl-C was pressed.
    pub fn check(&self) -> Result<()> {
        if self.0.load(std::sync::atomic::Ordering::SeqCst) {
            bail!("interrupted; cleaning up");
        }
        Ok(())
    }
}

/// Catches Ctrl-C (SIGINT) for the rest of the task.
pub fn on_ctrl_c() -> Result<Interrupted> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let set = std::sync::Arc::clone(&flag);
    ctrlc::set_handler(move || set.store(true, std::sync::atomic::Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")?;
    Ok(Interrupted(flag))
}
