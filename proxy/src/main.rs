//! The `jitproxy` command: the daemon (`run`) and the tools around it.
//!
//! Exit codes: 0 success; 1 runtime failure (the message says what to do);
//! 2 bad usage or an invalid config.
#![forbid(unsafe_code)]

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use jitproxy::{
    cgroup,
    config::{Config, DEFAULT_CONFIG},
    daemon::{self, RunOptions},
    ebpf,
};
use tokio_util::sync::CancellationToken;

/// Time-limited access to production APIs through a kernel-enforced local proxy.
#[derive(Debug, Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    /// Log format: `text` for people, `json` (one object per line) for machines.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "JITPROXY_LOG_FORMAT")]
    log_format: LogFormat,
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
    /// Low-level inspection, for tests and debugging.
    #[command(hide = true, subcommand)]
    Debug(DebugCommand),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the embedded default config.
    Default,
}

#[derive(Debug, Subcommand)]
enum DebugCommand {
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
    match execute(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn execute(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config, cgroup } => {
            let config = match load_config(config.as_ref()) {
                Ok(config) => config,
                Err(code) => return Ok(code),
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
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
            let _lock = daemon::lock(&cgroup)?;
            let done = ebpf::uninstall(&config.bpffs, &cgroup)?;
            println!(
                "detached {} program(s) from {} and removed {} pinned map(s); connections from it now go direct",
                done.links,
                cgroup.display(),
                done.maps
            );
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
