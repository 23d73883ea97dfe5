//! `cargo xtask`: the tasks around the build. `setup` installs what a fresh
//! machine lacks, `demo` shows jitproxy at work, `test` runs every test tier,
//! `bench` measures jitproxy against a direct connection and HAProxy,
//! `package` builds the Debian package.

mod bench;
mod demo;
mod layers;
mod package;
mod setup;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "jitproxy's development tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what building and testing need (rust-src, bpf-linker, Debian packages).
    Setup {
        /// Also install what the benchmark needs (wrk, haproxy).
        #[arg(long)]
        bench: bool,
        /// Also install what `lint` needs (cargo-deny).
        #[arg(long)]
        lint: bool,
        /// Also install what `package` and its test need (cargo-deb, dpkg-dev, binutils, man-db, strace).
        #[arg(long)]
        package: bool,
    },
    /// Build jitproxy and show a redirected request with the caller's identity.
    Demo,
    /// Run lints, unit and integration tests, then the privileged end-to-end tests.
    Test {
        /// Skip rustfmt and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Only run end-to-end tests whose name contains this.
        #[arg(long)]
        e2e_filter: Option<String>,
    },
    /// Compare jitproxy with a direct connection and HAProxy; print ratios.
    Bench(bench::Options),
    /// The crate's layering, rustfmt --check and clippy -D warnings (also of fuzz/).
    Lint,
    /// Build the Debian package (cargo-deb) and print its path.
    Package,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup {
            bench,
            lint,
            package,
        } => setup::run(setup::Needs {
            bench,
            lint,
            package,
        }),
        Command::Demo => demo::run(),
        Command::Test {
            no_lint,
            e2e_filter,
        } => test(!no_lint, e2e_filter.as_deref()),
        Command::Bench(options) => bench::run(&options),
        Command::Lint => {
            setup::run(setup::Needs {
                lint: true,
                ..setup::Needs::default()
            })?;
            lint()
        }
        Command::Package => package::run(),
    }
}

fn test(with_lint: bool, e2e_filter: Option<&str>) -> Result<()> {
    util::require_root("the end-to-end tests load eBPF programs and create cgroups")?;
    setup::run(setup::Needs {
        lint: with_lint,
        // The package's end-to-end test installs the .deb built below.
        package: true,
        ..setup::Needs::default()
    })?;
    if with_lint {
        lint()?;
    } else {
        fuzz_targets(false)?;
    }
    util::step("unit and unprivileged integration tests");
    util::cargo(&[
        "test",
        "--release",
        "--workspace",
        "--exclude",
        "jitproxy-e2e",
    ])?;
    // Built here, so that tests/tests/package.rs installs exactly what
    // `cargo xtask package` makes (it builds one itself without it).
    let deb = package::build()?;
    util::step("privileged end-to-end tests (real eBPF, real cgroups, real clients)");
    let bin = util::build_jitproxy()?;
    let mut args = vec!["test", "--release", "-p", "jitproxy-e2e", "--"];
    if let Some(filter) = e2e_filter {
        args.push(filter);
    }
    // Two cores: a few tests at a time keeps the machine responsive while
    // each test's daemon, clients and upstream run side by side.
    args.extend(["--test-threads", "3"]);
    util::cargo_with_env(
        &args,
        &[
            ("JITPROXY_BIN", bin.as_os_str()),
            ("JITPROXY_DEB", deb.as_os_str()),
        ],
    )?;
    util::step("all tests passed");
    Ok(())
}

/// The fuzz targets (fuzz/, a workspace of its own, run with cargo-fuzz on
/// nightly) are checked against the crate as it is, so that they cannot
/// rot: rustfmt and clippy `-D warnings` when linting, else a type check;
/// never run here.
fn fuzz_targets(with_lint: bool) -> Result<()> {
    util::step("fuzz targets (checked, not run)");
    let started = std::time::Instant::now();
    let fuzz_bins = ["--manifest-path", "fuzz/Cargo.toml", "--bins"];
    if with_lint {
        util::cargo(&["fmt", "--manifest-path", "fuzz/Cargo.toml", "--", "--check"])?;
        util::cargo(&[&["clippy"], &fuzz_bins[..], &["--", "-D", "warnings"]].concat())?;
    } else {
        util::cargo(&[&["check"], &fuzz_bins[..]].concat())?;
    }
    eprintln!(
        "fuzz targets checked in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn lint() -> Result<()> {
    util::step("layering of the jitproxy crate");
    layers::enforce(&util::workspace_root().join("proxy/src"))?;
    util::step("rustfmt --check");
    util::cargo(&["fmt", "--all", "--", "--check"])?;
    util::step("cargo deny: licences, bans, sources (advisories need GitHub, unreachable here)");
    util::cargo(&["deny", "--locked", "check", "licenses", "bans", "sources"])?;
    util::step("clippy -D warnings");
    util::cargo(&[
        "clippy",
        "--release",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    fuzz_targets(true)
}
