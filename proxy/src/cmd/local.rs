//! The commands that run on this host without the daemon's control API:
//! the daemon itself, config checks, uninstall, audit verification, and the
//! debugging aids. Paths, config names and what the audit log holds are
//! escaped ([`Escaped`]) where printed.

use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use super::{escape::Escaped, CmdError, Exit};
use crate::{
    audit::{log::public_key_path, verify, AuditSettings},
    bench,
    config::{Config, DEFAULT_CONFIG},
    daemon::{self, RunOptions},
    host::{cgroup, net},
    kernel,
};

/// `jitproxy run`: the daemon, until SIGTERM or SIGINT; SIGHUP reloads the
/// config (`reread`).
pub(super) fn run_daemon(
    config: Config,
    cgroup: Option<PathBuf>,
    reread: daemon::reload::Reader,
) -> Result<Exit, CmdError> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.worker_threads {
        builder.worker_threads(threads);
    }
    let runtime = builder
        .enable_all()
        .build()
        .map_err(|e| CmdError::failure(format!("cannot start the async runtime: {e}")))?;
    runtime
        .block_on(async {
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            daemon::run(config, RunOptions { cgroup }, reread, shutdown).await
        })
        .map_err(CmdError::failure)?;
    Ok(Exit::Success)
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("signal received; stopping");
    shutdown.cancel();
}

/// `jitproxy check-config`.
pub(super) fn check_config(config: &Config) -> Result<Exit, CmdError> {
    for warning in config.local_target_warnings(&net::local_addresses()) {
        eprintln!("warning: {}", Escaped(warning));
    }
    let n = config.targets.len();
    println!(
        "{}: ok ({n} target{})",
        Escaped(&config.source),
        if n == 1 { "" } else { "s" }
    );
    Ok(Exit::Success)
}

/// `jitproxy config default`.
pub(super) fn print_default_config() -> Result<Exit, CmdError> {
    print!("{DEFAULT_CONFIG}");
    Ok(Exit::Success)
}

/// `jitproxy completions SHELL`, from the clap definitions.
pub(super) fn print_completions(shell: clap_complete::Shell) -> Result<Exit, CmdError> {
    use clap::CommandFactory as _;
    use std::io::Write as _;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut super::Cli::command(), "jitproxy", &mut script);
    match std::io::stdout().write_all(&script) {
        // A reader that stopped early (`| head`) is not a failure.
        Ok(()) => Ok(Exit::Success),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(Exit::Success),
        Err(e) => Err(CmdError::failure(format!(
            "cannot write the completions: {e}"
        ))),
    }
}

/// `jitproxy man DIR`: `jitproxy.1` and `jitproxy-COMMAND.1` for each
/// visible command, from the clap definitions.
pub(super) fn write_man_pages(dir: &Path) -> Result<Exit, CmdError> {
    use clap::CommandFactory as _;
    std::fs::create_dir_all(dir)
        .map_err(|e| CmdError::failure(format!("cannot create {}: {e}", dir.display())))?;
    let cli = super::Cli::command();
    let mut written = Vec::new();
    let mut pages = vec![(String::from("jitproxy"), cli.clone())];
    for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
        pages.push((format!("jitproxy-{}", sub.get_name()), sub.clone()));
    }
    for (name, command) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut page = Vec::new();
        clap_mangen::Man::new(command)
            .title(name.to_uppercase())
            .render(&mut page)
            .and_then(|()| std::fs::write(&path, page))
            .map_err(|e| CmdError::failure(format!("cannot write {}: {e}", path.display())))?;
        written.push(path);
    }
    println!("wrote {} man pages to {}", written.len(), dir.display());
    Ok(Exit::Success)
}

/// The cgroup a command acts on: `--cgroup`, else the config's, else the root.
fn watched_cgroup(config: &Config, arg: Option<PathBuf>) -> Result<PathBuf, CmdError> {
    cgroup::resolve(arg.as_deref().or(config.cgroup.as_deref())).map_err(CmdError::failure)
}

/// `jitproxy uninstall`: detach the pinned programs of a cgroup.
pub(super) fn uninstall(config: &Config, cgroup: Option<PathBuf>) -> Result<Exit, CmdError> {
    let cgroup = watched_cgroup(config, cgroup)?;
    // Holding the lock proves no daemon is running on this cgroup.
    let lock = daemon::lock(&cgroup).map_err(CmdError::failure)?;
    let done = kernel::uninstall(&config.bpffs, &cgroup).map_err(CmdError::failure)?;
    lock.remove();
    println!(
        "detached {} program(s) from {} and removed {} pinned map(s); connections from it now go direct",
        done.links,
        Escaped(cgroup.display()),
        done.maps
    );
    Ok(Exit::Success)
}

/// `jitproxy uninstall --stale`: the pins of cgroups that no longer exist.
pub(super) fn uninstall_stale(config: &Config) -> Result<Exit, CmdError> {
    let live = cgroup::live_ids().map_err(CmdError::failure)?;
    let stale: Vec<u64> = kernel::pinned_cgroups(&config.bpffs)
        .map_err(CmdError::failure)?
        .into_iter()
        .filter(|id| !live.contains(id))
        .collect();
    // Holding each lock proves no daemon still runs on a removed cgroup.
    let mut locks = Vec::new();
    for &id in &stale {
        let name = PathBuf::from(format!("<removed cgroup {id}>"));
        locks.push(daemon::lock_id(id, &name).map_err(CmdError::failure)?);
    }
    // Exactly the locked ones: a cgroup made meanwhile keeps its pins.
    let done = kernel::uninstall_ids(&config.bpffs, &stale).map_err(CmdError::failure)?;
    for lock in locks {
        lock.remove();
    }
    println!(
        "removed the pins of {} cgroup(s) that no longer exist ({} program(s) detached, {} map(s) removed)",
        done.dirs, done.links, done.maps
    );
    Ok(Exit::Success)
}

/// `jitproxy audit verify`: exit 5 and the first bad place when the log
/// was tampered with, or (with `copy`) when it and a collector's copy
/// disagree.
pub(super) fn verify_audit(
    config: &Config,
    key: Option<PathBuf>,
    copy: Option<&Path>,
) -> Result<Exit, CmdError> {
    let settings = AuditSettings::for_config(config);
    let key = key.unwrap_or_else(|| public_key_path(&settings.key));
    let unreadable = |e: std::io::Error| {
        CmdError::failure(format!(
            "cannot read the audit log in {}: {e}",
            Escaped(settings.dir.display())
        ))
    };
    let report =
        verify::verify(&settings.dir, &settings.checkpoints, Some(&key)).map_err(unreadable)?;
    let mut tampered = print_findings("", &report.notes, &report.problems);
    if !tampered {
        println!(
            "ok: {} records (seq {}..{}) in {} file(s); chain intact; {} signed checkpoint(s) verified",
            report.records,
            report.first_seq.unwrap_or(0),
            report.last_seq.unwrap_or(0),
            report.files,
            report.checkpoints
        );
    }
    if let Some(copy) = copy {
        let bytes = std::fs::read(copy).map_err(|e| {
            CmdError::usage(format!("cannot read {}: {e}", Escaped(copy.display()))).with_hint(
                "pass the file the syslog collector wrote, e.g. --copy /var/log/jitproxy-audit.log",
            )
        })?;
        let compared = verify::compare_copy(&settings.dir, &bytes).map_err(unreadable)?;
        if !print_findings("copy: ", &compared.notes, &compared.problems) {
            println!(
                "ok: the copy's {} record(s) match the local log",
                compared.records
            );
        }
        tampered |= !compared.problems.is_empty();
    }
    Ok(if tampered {
        Exit::Tampered
    } else {
        Exit::Success
    })
}

/// Prints notes and problems (the first as the first bad place); whether
/// there were problems.
fn print_findings(prefix: &str, notes: &[String], problems: &[verify::Problem]) -> bool {
    for note in notes {
        println!("{prefix}note: {}", Escaped(note));
    }
    let Some((first, rest)) = problems.split_first() else {
        return false;
    };
    println!("{prefix}FAILED: first bad place: {}", Escaped(first));
    for p in rest {
        println!("{prefix}  also: {}", Escaped(p));
    }
    true
}

/// `jitproxy debug bench-audit`.
pub(super) fn bench_audit(dir: &Path, events: u32, concurrency: u32) -> Result<Exit, CmdError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CmdError::failure)?;
    let report = runtime
        .block_on(bench::audit::run(dir, events, concurrency))
        .map_err(CmdError::failure)?;
    println!("{report}");
    Ok(Exit::Success)
}

/// `jitproxy debug bench-decision`.
pub(super) fn bench_decision(grants: u32, lookups: u32) -> Result<Exit, CmdError> {
    println!("{}", bench::decision::run(grants, lookups));
    Ok(Exit::Success)
}

/// `jitproxy debug records`: entries in the pinned record maps.
pub(super) fn print_records(config: &Config, cgroup: Option<PathBuf>) -> Result<Exit, CmdError> {
    let cgroup = watched_cgroup(config, cgroup)?;
    let (connects, tuples) =
        kernel::pinned_record_counts(&config.bpffs, &cgroup).map_err(CmdError::failure)?;
    println!("connects {connects} tuples {tuples}");
    Ok(Exit::Success)
}
