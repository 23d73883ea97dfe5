//! The `jitproxy` command line: one enum of commands, daemon side and client
//! side, run by [`run`]; exit codes in one place ([`Exit`]).
//!
//! Exit codes: 0 success; 1 runtime failure (the message says what to do);
//! 2 bad usage or an invalid config; 3 the daemon could not be reached;
//! 4 the daemon refused the request; 5 `audit verify` found tampering.

mod ca;
mod client;
mod doctor;
mod escape;
mod local;
mod render;
mod requests;

use std::{fmt, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};

use crate::{
    config::{Config, ConfigError},
    control::client::ClientError,
};

use self::escape::Escaped;

/// How a command ended (also in README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success = 0,
    /// A runtime failure; the message says what to do.
    Failure = 1,
    /// Bad usage, a malformed duration or time, or an invalid config.
    Usage = 2,
    /// The daemon could not be reached.
    Unreachable = 3,
    /// The daemon refused the request (not allowed, unknown target, bad input).
    Refused = 4,
    /// `audit verify` found the log tampered with.
    Tampered = 5,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        Self::from(exit as u8)
    }
}

/// A command that failed: how it exits, what went wrong, what to do next.
#[derive(Debug)]
pub struct CmdError {
    pub exit: Exit,
    pub message: String,
    pub hint: Option<String>,
}

impl CmdError {
    /// A runtime failure.
    pub fn failure(message: impl fmt::Display) -> Self {
        Self {
            exit: Exit::Failure,
            message: message.to_string(),
            hint: None,
        }
    }

    /// Bad usage: the user's to fix.
    pub fn usage(message: impl fmt::Display) -> Self {
        Self {
            exit: Exit::Usage,
            message: message.to_string(),
            hint: None,
        }
    }

    /// The same error, with what to do next.
    #[must_use]
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for CmdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<ClientError> for CmdError {
    fn from(e: ClientError) -> Self {
        let (exit, hint) = match &e {
            ClientError::Connect { .. } => (Exit::Unreachable, None),
            ClientError::Api { hint, .. } => (Exit::Refused, hint.clone()),
            ClientError::Protocol(_) => (Exit::Failure, None),
        };
        Self {
            exit,
            message: e.to_string(),
            hint,
        }
    }
}

impl From<ConfigError> for CmdError {
    fn from(e: ConfigError) -> Self {
        Self::usage(e)
    }
}

/// Where client commands find the daemon unless told otherwise.
const DEFAULT_SOCKET: &str = "/run/jitproxy/control.sock";

/// Time-limited access to production APIs through a kernel-enforced local proxy.
#[derive(Debug, Parser)]
#[command(version, propagate_version = true)]
pub struct Cli {
    /// Log format: `text` for people, `json` (one object per line) for machines.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "JITPROXY_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// The daemon's control socket [default: /run/jitproxy/control.sock, or the config's for `run`].
    #[arg(long, global = true, env = "JITPROXY_SOCKET")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
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
    /// Check this host before a run (kernel, BTF, cgroups, bpffs, capabilities,
    /// listen port, state and audit directories, clock) and say what to fix.
    #[command(
        after_help = "Exits 1 if any check FAILs, else 0.\nExamples:\n  sudo jitproxy doctor\n  sudo jitproxy doctor --config /etc/jitproxy/config.toml\n  sudo jitproxy doctor --json"
    )]
    Doctor {
        /// Config whose listen port, state and audit directories and bpffs to check; without it the embedded default.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// A JSON list of {check, status, found, fix}.
        #[arg(long)]
        json: bool,
    },
    /// Detach jitproxy's pinned programs from a cgroup: connections then go direct.
    #[command(
        after_help = "Stop the daemon first. Examples:\n  jitproxy uninstall --cgroup /sys/fs/cgroup/engineers.slice\n  jitproxy uninstall --stale"
    )]
    Uninstall {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        cgroup: Option<PathBuf>,
        /// Instead: remove the pins of every cgroup that no longer exists.
        #[arg(long, conflicts_with = "cgroup")]
        stale: bool,
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
        /// Only these requests, on an inspect target: `METHOD PATH`, where
        /// `*` matches within one path segment and `/**` everything below
        /// (e.g. --allow 'GET /v1/payments/*'); repeat for more. Default:
        /// every request.
        #[arg(long = "allow", value_name = "RULE")]
        allow: Vec<String>,
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
    /// Ask for access to a target for yourself; its approvers decide.
    #[command(
        after_help = "Exits 0 once asked (or, with --wait, once approved); with --wait, 4 if denied or expired.\nExamples:\n  jitproxy request payments-api --for 1h --reason INC-1234\n  jitproxy request payments-api --for 30m --reason \"debug refunds\" --wait"
    )]
    Request {
        /// A target name from the daemon's config.
        target: String,
        /// How long, once approved: 30m, 2h.
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        /// Why: a ticket or a sentence (required).
        #[arg(long)]
        reason: String,
        /// Wait until it is decided, then print the grant (or the denial).
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// Pending requests you may decide (approvers), or your own (--mine).
    #[command(after_help = "Examples:\n  jitproxy requests\n  jitproxy requests --mine --json")]
    Requests {
        #[arg(long)]
        mine: bool,
        /// JSON Lines, times in RFC 3339.
        #[arg(long)]
        json: bool,
    },
    /// Approve a pending request (never your own); the last approval needed creates the grant.
    #[command(
        after_help = "Examples:\n  jitproxy approve 3\n  jitproxy approve 3 --for 30m --reason \"30m is enough\""
    )]
    Approve {
        /// Request id (see `jitproxy requests`).
        id: i64,
        /// A shorter window than asked for.
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Deny a pending request, with a reason the requester sees.
    #[command(after_help = "Example:\n  jitproxy deny 3 --reason \"use staging first\"")]
    Deny {
        id: i64,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    /// Take access at once in an emergency: short, flagged in the audit log, always notified.
    #[command(
        name = "break-glass",
        after_help = "Example:\n  jitproxy break-glass payments-api --reason \"SEV1 INC-99: payments down\""
    )]
    BreakGlass {
        target: String,
        /// How long (default and at most the target's break_glass_max).
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
        #[arg(long)]
        reason: String,
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
        after_help = "Examples:\n  jitproxy audit --user alice --since 7d\n  jitproxy audit --grant 17 --json\n  jitproxy audit --target payments-api --follow\n  jitproxy audit summary --since 7d\n  jitproxy audit verify\n  jitproxy audit verify --copy /var/log/collector/jitproxy.log"
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
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to stdout.
    #[command(
        after_help = "Examples:\n  jitproxy completions bash > /usr/share/bash-completion/completions/jitproxy\n  source <(jitproxy completions bash)"
    )]
    Completions { shell: clap_complete::Shell },
    /// Write man pages (jitproxy.1 and one per command) into a directory.
    #[command(hide = true)]
    Man { dir: PathBuf },
    /// The local CA of inspect targets, and this host's trust in it.
    #[command(subcommand)]
    Ca(ca::CaCommand),
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

impl From<AuditFilter> for client::AuditArgs {
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
        /// Also compare with a syslog collector's copy (RFC 5424 frames, or
        /// one record per line) and name the first record that differs or
        /// is missing on either side.
        #[arg(long, value_name = "FILE")]
        copy: Option<PathBuf>,
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

/// Runs the command and says how it went: errors on stderr with their hint
/// (escaped: they may quote what users typed or named).
pub fn run(cli: Cli) -> Exit {
    let globals = Globals { socket: cli.socket };
    match cli.command.run(&globals) {
        Ok(exit) => exit,
        Err(e) => {
            eprintln!("error: {}", Escaped(&e));
            if let Some(hint) = &e.hint {
                eprintln!("hint: {}", Escaped(hint));
            }
            e.exit
        }
    }
}

/// Options every command takes.
#[derive(Debug)]
struct Globals {
    /// `--socket`: where the daemon's control socket is (client commands), or
    /// where to put it (`run`).
    socket: Option<PathBuf>,
}

impl Globals {
    fn socket(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
    }
}

impl Command {
    fn run(self, globals: &Globals) -> Result<Exit, CmdError> {
        let socket = globals.socket();
        match self {
            Self::Run {
                config,
                cgroup,
                state_dir,
            } => {
                let overrides = Overrides {
                    socket: globals.socket.clone(),
                    state_dir,
                };
                let loaded = load_config(config.as_ref(), overrides.clone())?;
                // SIGHUP reads the same file with the same overrides.
                let reread = Box::new(move || {
                    load_config(config.as_ref(), overrides.clone()).map_err(|e| e.to_string())
                });
                local::run_daemon(loaded, cgroup, reread)
            }
            Self::CheckConfig { path } => {
                local::check_config(&load_config(path.as_ref(), Overrides::default())?)
            }
            Self::Config(ConfigCommand::Default) => local::print_default_config(),
            Self::Doctor { config, json } => {
                doctor::doctor(&load_config(config.as_ref(), Overrides::default())?, json)
            }
            Self::Uninstall {
                config,
                cgroup,
                stale,
            } => {
                let config = load_config(config.as_ref(), Overrides::default())?;
                if stale {
                    local::uninstall_stale(&config)
                } else {
                    local::uninstall(&config, cgroup)
                }
            }
            Self::Grant {
                who,
                target,
                duration,
                until,
                from,
                reason,
                allow,
                json,
            } => {
                let window = client::WindowArgs {
                    duration,
                    until,
                    from,
                };
                client::block_on(client::grant(
                    &socket, who, target, window, reason, allow, json,
                ))
            }
            Self::Revoke {
                id,
                user,
                target,
                json,
            } => client::block_on(client::revoke(&socket, id, user, target, json)),
            Self::Grants { all, json } => client::block_on(client::grants(&socket, all, json)),
            Self::Drop { target, json } => {
                client::block_on(client::drop_access(&socket, target, json))
            }
            Self::Request {
                target,
                duration,
                reason,
                wait,
                json,
            } => client::block_on_exit(requests::request(
                &socket, target, &duration, reason, wait, json,
            )),
            Self::Requests { mine, json } => {
                client::block_on(requests::requests(&socket, mine, json))
            }
            Self::Approve {
                id,
                duration,
                reason,
                json,
            } => client::block_on(requests::approve(
                &socket,
                id,
                duration.as_deref(),
                reason,
                json,
            )),
            Self::Deny { id, reason, json } => {
                client::block_on(requests::deny(&socket, id, reason, json))
            }
            Self::BreakGlass {
                target,
                duration,
                reason,
                json,
            } => client::block_on(requests::break_glass(
                &socket,
                target,
                duration.as_deref(),
                reason,
                json,
            )),
            Self::Why { json } => client::block_on(client::why(&socket, json)),
            Self::Status { json } => client::block_on(client::status(&socket, json)),
            Self::Audit {
                action: None,
                filter,
                json,
                follow,
            } => client::block_on(client::audit(&socket, filter.into(), json, follow)),
            Self::Audit {
                action: Some(AuditAction::Summary { filter, json }),
                ..
            } => client::block_on(client::audit_summary(&socket, filter.into(), json)),
            Self::Audit {
                action:
                    Some(AuditAction::Verify {
                        config,
                        state_dir,
                        key,
                        copy,
                    }),
                ..
            } => {
                let config = load_config(
                    config.as_ref(),
                    Overrides {
                        socket: None,
                        state_dir,
                    },
                )?;
                local::verify_audit(&config, key, copy.as_deref())
            }
            Self::Completions { shell } => local::print_completions(shell),
            Self::Man { dir } => local::write_man_pages(&dir),
            Self::Debug(DebugCommand::BenchAudit {
                dir,
                events,
                concurrency,
            }) => local::bench_audit(&dir, events, concurrency),
            Self::Ca(command) => {
                let from = command.source();
                let config = load_config(
                    from.config.as_ref(),
                    Overrides {
                        socket: None,
                        state_dir: from.state_dir.clone(),
                    },
                )?;
                ca::run(&config, command)
            }
            Self::Debug(DebugCommand::BenchDecision { grants, lookups }) => {
                local::bench_decision(grants, lookups)
            }
            Self::Debug(DebugCommand::Records { config, cgroup }) => {
                local::print_records(&load_config(config.as_ref(), Overrides::default())?, cgroup)
            }
        }
    }
}

/// Command-line values that replace the config's.
#[derive(Debug, Default, Clone)]
struct Overrides {
    socket: Option<PathBuf>,
    state_dir: Option<PathBuf>,
}

/// The config at `path` (else the embedded default), with `overrides`.
fn load_config(path: Option<&PathBuf>, overrides: Overrides) -> Result<Config, CmdError> {
    // Checked against what this host lets any user bind.
    let ports = crate::host::net::unprivileged_ports();
    let mut config = match path {
        Some(path) => Config::load(path, &ports)?,
        None => Config::embedded_default(&ports)?,
    };
    if let Some(socket) = overrides.socket {
        config.control_socket = socket;
    }
    if let Some(state_dir) = overrides.state_dir {
        config.state_dir = state_dir;
    }
    Ok(config)
}

/// Sets up the daemon log on stderr; keep the guard until the process ends.
pub fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::{fmt, EnvFilter};
    // Logs go to stderr through a background writer, so a slow reader never
    // blocks the data path. Not lossy: audit lines must not be dropped when
    // the buffer is full.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    let filter = EnvFilter::try_from_env("JITPROXY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(writer);
    // systemd sets JOURNAL_STREAM when stderr goes to the journal: no
    // colours, no timestamps (the journal adds them), and each line starts
    // with its syslog priority (`<3>`), which the journal maps to a level.
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    match format {
        LogFormat::Text if journal => builder
            .with_ansi(false)
            .event_format(journal::Priority(
                fmt::format().without_time().with_target(true),
            ))
            .init(),
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}

mod journal {
    use std::fmt;

    use tracing::{Event, Level, Subscriber};
    use tracing_subscriber::{
        fmt::{
            format::{FormatEvent, FormatFields, Writer},
            FmtContext,
        },
        registry::LookupSpan,
    };

    /// A text line prefixed with its syslog priority, as the journal reads
    /// a service's stderr.
    pub(super) struct Priority<F>(pub(super) F);

    impl<S, N, F> FormatEvent<S, N> for Priority<F>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
        F: FormatEvent<S, N>,
    {
        fn format_event(
            &self,
            ctx: &FmtContext<'_, S, N>,
            mut writer: Writer<'_>,
            event: &Event<'_>,
        ) -> fmt::Result {
            let priority = match *event.metadata().level() {
                Level::ERROR => 3,
                Level::WARN => 4,
                Level::INFO => 6,
                Level::DEBUG | Level::TRACE => 7,
            };
            write!(writer, "<{priority}>")?;
            self.0.format_event(ctx, writer, event)
        }
    }
}
