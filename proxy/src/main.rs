//! The `jitproxy` command: the daemon (`run`) and the tools around it.
//!
//! Exit codes: 0 success; 1 runtime failure (the message says what to do);
//! 2 bad usage or an invalid config; 3 the daemon could not be reached;
//! 4 the daemon refused the request; 5 `audit verify` found tampering.
#![forbid(unsafe_code)]

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use jitproxy::{
    cgroup,
    cli::{self, CliError, WindowArgs},
    config::{Config, DEFAULT_CONFIG},
    daemon::{self, RunOptions},
    ebpf,
};
use tokio_util::sync::CancellationToken;

/// Where client commands find the daemon unless told otherwise.
const DEFAULT_SOCKET: &str = "/run/jitproxy/control.sock";

/// Time-limited access to production APIs through a kernel-enforced local proxy.
#[derive(Debug, Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    /// Log format: `text` for people, `json` (one object per line) for machines.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "JITPROXY_LOG_FORMAT")]
    log_format: LogFormat,
    /// The daemon's control socket [default: /run/jitproxy/control.sock, or the config's for `run`].
    #[arg(long, global = true, env = "JITPROXY_SOCKET")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: attach the kernel programs and proxy redirected connections.
    #[command(
        after_help = "Examples:\n  jitproxy run\n  jitproxy run --config /etc/jitproxy/config.toml\n  jitproxy run --cgroup /sys/fs/cgroup/engineers.slice"
    )]
    Run {
        /// Config file; without it the embedded default is used (`jitproxy config default`).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// cgroup v2 to watch (absolute, or relative to the cgroup2 mount); default: the config's, else the root.
        #[arg(long)]
        cgroup: Option<PathBuf>,
        /// Directory for the grant database; overrides the config's `state_dir`.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Validate a config file and report errors with file, line and key.
    #[command(
        name = "check-config",
        after_help = "Example:\n  jitproxy check-config /etc/jitproxy/config.toml"
    )]
    CheckConfig {
        /// Config file; without it the embedded default is checked.
        path: Option<PathBuf>,
    },
    /// Show configs.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Detach jitproxy's pinned programs from a cgroup: connections then go direct.
    #[command(
        after_help = "Stop the daemon first. Example:\n  jitproxy uninstall --cgroup /sys/fs/cgroup/engineers.slice"
    )]
    Uninstall {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        cgroup: Option<PathBuf>,
    },
    /// Grant a user (or a group) access to a target for a time window.
    #[command(
        after_help = "Examples:\n  jitproxy grant alice payments-api --for 2h --reason INC-1234\n  jitproxy grant group:sre payments-api --until 18:00 --reason \"deploy window\"\n  jitproxy grant 1001 orders-db-admin --from \"2026-11-28 09:00\" --for 30m --reason CHG-88"
    )]
    Grant {
        /// A user name, a uid, or group:NAME.
        who: String,
        /// A target name from the daemon's config.
        target: String,
        /// How long: 30m, 2h, 1h30m.
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
        /// Until when: 18:00 (today), "2026-11-28 18:00" (local) or RFC 3339.
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// From when (default now); same forms as --until.
        #[arg(long, value_name = "TIME")]
        from: Option<String>,
        /// Why: a ticket or a sentence (required).
        #[arg(long)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    /// End grants now: by id, or every open grant of a user (on a target).
    #[command(
        after_help = "Examples:\n  jitproxy revoke 17\n  jitproxy revoke --user alice --target payments-api"
    )]
    Revoke {
        /// Grant id (see `jitproxy grants --all`).
        id: Option<i64>,
        #[arg(long, conflicts_with = "id")]
        user: Option<String>,
        #[arg(long, requires = "user")]
        target: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List your grants (or everyone's with --all, for approvers).
    #[command(after_help = "Examples:\n  jitproxy grants\n  jitproxy grants --all --json")]
    Grants {
        #[arg(long)]
        all: bool,
        /// JSON Lines, times in RFC 3339.
        #[arg(long)]
        json: bool,
    },
    /// Give your own access back now (on one target, or all).
    #[command(after_help = "Examples:\n  jitproxy drop payments-api\n  jitproxy drop")]
    Drop {
        target: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Why was my last connection refused, and how do I get access?
    Why {
        #[arg(long)]
        json: bool,
    },
    /// Daemon state: cgroup, targets and their addresses, live connections.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Read the audit log (root and auditors): one user's week, one grant, a target.
    #[command(
        args_conflicts_with_subcommands = true,
        after_help = "Examples:\n  jitproxy audit --user alice --since 7d\n  jitproxy audit --grant 17 --json\n  jitproxy audit --target payments-api --follow\n  jitproxy audit summary --since 7d\n  jitproxy audit verify"
    )]
    Audit {
        #[command(subcommand)]
        action: Option<AuditAction>,
        #[command(flatten)]
        filter: AuditFilter,
        /// JSON Lines, one record each, as stored.
        #[arg(long)]
        json: bool,
        /// Keep printing new records as they come.
        #[arg(long)]
        follow: bool,
    },
    /// Low-level inspection, for tests and debugging.
    #[command(hide = true, subcommand)]
    Debug(DebugCommand),
}

#[derive(Debug, Clone, clap::Args)]
struct AuditFilter {
    /// A user name or uid (matches the uid and the login uid).
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    target: Option<String>,
    /// A grant id.
    #[arg(long)]
    grant: Option<i64>,
    /// From: a duration ago (2h, 7d) or a time (09:00, "2026-11-28 09:00", RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// Until: same forms as --since.
    #[arg(long)]
    until: Option<String>,
}

impl From<AuditFilter> for cli::AuditArgs {
    fn from(f: AuditFilter) -> Self {
        Self {
            user: f.user,
            target: f.target,
            grant: f.grant,
            since: f.since,
            until: f.until,
        }
    }
}

#[derive(Debug, Subcommand)]
enum AuditAction {
    /// Per user: grants, connections, denials, bytes, targets.
    Summary {
        #[command(flatten)]
        filter: AuditFilter,
        #[arg(long)]
        json: bool,
    },
    /// Check the hash chain and the signed checkpoints; name the first bad record.
    Verify {
        /// Config of the daemon whose log to check (its `state_dir` and `[audit] dir`).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The state directory (checkpoints and key), overriding the config's.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Public key (hex) to check signatures with; default: the state directory's.
        #[arg(long)]
        key: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the embedded default config.
    Default,
}

#[derive(Debug, Subcommand)]
enum DebugCommand {
    /// Measure durable audit appends (group commit) in a directory.
    BenchAudit {
        /// Where to write the throwaway log (on the disk the audit log uses).
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 20_000)]
        events: u32,
        #[arg(long, default_value_t = 64)]
        concurrency: u32,
    },
    /// Time the grant decision (index lookup) with many grants in memory.
    BenchDecision {
        #[arg(long, default_value_t = 100_000)]
        grants: u32,
        #[arg(long, default_value_t = 1_000_000)]
        lookups: u32,
    },
    /// Print the number of entries in the pinned connection record maps.
    Records {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        cgroup: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _log_guard = init_logging(cli.log_format);
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    if let Some(result) = client_command(&socket, &cli.command) {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                if let Some(hint) = e.hint() {
                    eprintln!("hint: {hint}");
                }
                e.exit_code()
            }
        };
    }
    match execute(cli.command, cli.socket) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Runs a control API client command; `None` for daemon-side commands.
fn client_command(socket: &Path, command: &Command) -> Option<Result<(), CliError>> {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return Some(Err(CliError::Usage(format!(
                "cannot start the async runtime: {e}"
            ))))
        }
    };
    let socket = socket.to_path_buf();
    let command = match command {
        Command::Grant {
            who,
            target,
            duration,
            until,
            from,
            reason,
            json,
        } => {
            let window = WindowArgs {
                duration: duration.clone(),
                until: until.clone(),
                from: from.clone(),
            };
            let (who, target, reason, json) = (who.clone(), target.clone(), reason.clone(), *json);
            runtime.block_on(
                async move { cli::grant(&socket, who, target, window, reason, json).await },
            )
        }
        Command::Revoke {
            id,
            user,
            target,
            json,
        } => {
            let (id, user, target, json) = (*id, user.clone(), target.clone(), *json);
            runtime.block_on(async move { cli::revoke(&socket, id, user, target, json).await })
        }
        Command::Grants { all, json } => runtime.block_on(cli::grants(&socket, *all, *json)),
        Command::Drop { target, json } => {
            runtime.block_on(cli::drop_access(&socket, target.clone(), *json))
        }
        Command::Why { json } => runtime.block_on(cli::why(&socket, *json)),
        Command::Status { json } => runtime.block_on(cli::status(&socket, *json)),
        Command::Audit {
            action: None,
            filter,
            json,
            follow,
        } => runtime.block_on(cli::audit(&socket, filter.clone().into(), *json, *follow)),
        Command::Audit {
            action: Some(AuditAction::Summary { filter, json }),
            ..
        } => runtime.block_on(cli::audit_summary(&socket, filter.clone().into(), *json)),
        _ => return None,
    };
    Some(command)
}

fn execute(command: Command, socket: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            config,
            cgroup,
            state_dir,
        } => {
            let mut config = match load_config(config.as_ref()) {
                Ok(config) => config,
                Err(code) => return Ok(code),
            };
            if let Some(socket) = socket {
                config.control_socket = socket;
            }
            if let Some(state_dir) = state_dir {
                config.state_dir = state_dir;
            }
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if let Some(threads) = config.worker_threads {
                builder.worker_threads(threads);
            }
            let runtime = builder
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(async {
                let shutdown = CancellationToken::new();
                tokio::spawn(stop_on_signal(shutdown.clone()));
                daemon::run(config, RunOptions { cgroup }, shutdown).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { path } => Ok(match load_config(path.as_ref()) {
            Ok(config) => {
                println!(
                    "{}: ok ({} target{})",
                    config.source,
                    config.targets.len(),
                    if config.targets.len() == 1 { "" } else { "s" }
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        }),
        Command::Config(ConfigCommand::Default) => {
            print!("{DEFAULT_CONFIG}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Uninstall { config, cgroup } => {
            let config = match load_config(config.as_ref()) {
                Ok(config) => config,
                Err(code) => return Ok(code),
            };
            let cgroup = cgroup::resolve(cgroup.as_deref().or(config.cgroup.as_deref()))?;
            // Holding the lock proves no daemon is running on this cgroup.
            let lock = daemon::lock(&cgroup)?;
            let done = ebpf::uninstall(&config.bpffs, &cgroup)?;
            lock.remove();
            println!(
                "detached {} program(s) from {} and removed {} pinned map(s); connections from it now go direct",
                done.links,
                cgroup.display(),
                done.maps
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Grant { .. }
        | Command::Revoke { .. }
        | Command::Grants { .. }
        | Command::Drop { .. }
        | Command::Why { .. }
        | Command::Status { .. }
        | Command::Audit {
            action: None | Some(AuditAction::Summary { .. }),
            ..
        } => unreachable!("client commands are handled by client_command"),
        Command::Audit {
            action:
                Some(AuditAction::Verify {
                    config,
                    state_dir,
                    key,
                }),
            ..
        } => {
            let mut config = match load_config(config.as_ref()) {
                Ok(config) => config,
                Err(code) => return Ok(code),
            };
            if let Some(dir) = state_dir {
                config.state_dir = dir;
            }
            let settings = config.audit_settings();
            let key = key.unwrap_or_else(|| jitproxy::audit::log::public_key_path(&settings.key));
            let report =
                jitproxy::audit::verify::verify(&settings.dir, &settings.checkpoints, Some(&key))
                    .with_context(|| {
                    format!("cannot read the audit log in {}", settings.dir.display())
                })?;
            for note in &report.notes {
                println!("note: {note}");
            }
            if let Some(first) = report.problems.first() {
                println!("FAILED: first bad place: {first}");
                for p in &report.problems[1..] {
                    println!("  also: {p}");
                }
                return Ok(ExitCode::from(5));
            }
            println!(
                "ok: {} records (seq {}..{}) in {} file(s); chain intact; {} signed checkpoint(s) verified",
                report.records,
                report.first_seq.unwrap_or(0),
                report.last_seq.unwrap_or(0),
                report.files,
                report.checkpoints
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Debug(DebugCommand::BenchAudit {
            dir,
            events,
            concurrency,
        }) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let report =
                runtime.block_on(jitproxy::audit::bench::run(&dir, events, concurrency))?;
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Debug(DebugCommand::BenchDecision { grants, lookups }) => {
            let report = jitproxy::grants::bench::decision(grants, lookups);
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Debug(DebugCommand::Records { config, cgroup }) => {
            let config = match load_config(config.as_ref()) {
                Ok(config) => config,
                Err(code) => return Ok(code),
            };
            let cgroup = cgroup::resolve(cgroup.as_deref().or(config.cgroup.as_deref()))?;
            let (connects, tuples) = ebpf::pinned_record_counts(&config.bpffs, &cgroup)?;
            println!("connects {connects} tuples {tuples}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Loads a config, or prints why it is invalid and returns exit code 2.
fn load_config(path: Option<&PathBuf>) -> Result<Config, ExitCode> {
    let result = match path {
        Some(path) => Config::load(path),
        None => Config::embedded_default(),
    };
    result.map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
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

fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::{fmt, EnvFilter};
    // Logs go to stderr through a background writer, so a slow reader never
    // blocks the data path.
    // Not lossy: audit records must not be dropped when the buffer is full.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    let filter = EnvFilter::try_from_env("JITPROXY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}
