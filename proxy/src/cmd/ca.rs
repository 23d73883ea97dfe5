//! `jitproxy ca show | export | install | uninstall`: the local CA that
//! inspect mode signs its certificates with, and this host's trust in it.
//! Paths and what the certificate says are escaped ([`Escaped`]) where
//! printed; `--json` keeps the exact values.

use std::{io::Write as _, path::PathBuf};

use serde::Serialize;

use super::{escape::Escaped, render::print_json, CmdError, Exit};
use crate::{
    config::Config,
    host::trust::{self, CaDetails, LocalCa, Manifest, Outcome, Report, TrustError, TrustPaths},
};

#[derive(Debug, clap::Subcommand)]
pub(super) enum CaCommand {
    /// Show the local CA: subject, SHA-256 fingerprint, validity, the names
    /// it may sign for (its name constraints), and whether this host trusts it.
    #[command(after_help = "Examples:\n  sudo jitproxy ca show\n  sudo jitproxy ca show --json")]
    Show {
        #[command(flatten)]
        from: CaSource,
        #[arg(long)]
        json: bool,
    },
    /// Print the CA certificate (PEM; never the key), or write it to FILE.
    #[command(
        after_help = "Examples:\n  sudo jitproxy ca export > jitproxy-ca.crt\n  sudo jitproxy ca export /tmp/jitproxy-ca.crt"
    )]
    Export {
        /// Where to write it (0644); `-` or none: stdout.
        file: Option<PathBuf>,
        #[command(flatten)]
        from: CaSource,
    },
    /// Make this host trust the local CA: the system store
    /// (update-ca-certificates, which also feeds Java), Chrome's and
    /// Firefox's NSS databases (with certutil), and /etc/profile.d for
    /// Node, Python, curl, git and gRPC. Needs root; safe to run again.
    #[command(
        after_help = "What it did is recorded in <state_dir>/ca/installed.json, for `ca uninstall`.\nExamples:\n  sudo jitproxy ca install\n  sudo jitproxy ca install --config /etc/jitproxy/config.toml"
    )]
    Install {
        #[command(flatten)]
        from: CaSource,
        /// What was done, as JSON: {steps: [{outcome, what, fix}]}.
        #[arg(long)]
        json: bool,
    },
    /// Make a new local CA for the config's inspect targets (when it names
    /// servers the current CA's constraints do not cover, or the key may
    /// have leaked). Then reload or restart the daemon, and run `ca
    /// install` again: it replaces the old CA in the trust stores.
    #[command(
        after_help = "Example:\n  sudo jitproxy ca rotate && sudo systemctl reload jitproxy && sudo jitproxy ca install"
    )]
    Rotate {
        #[command(flatten)]
        from: CaSource,
    },
    /// Undo exactly what `ca install` did. Needs root.
    #[command(after_help = "Example:\n  sudo jitproxy ca uninstall")]
    Uninstall {
        #[command(flatten)]
        from: CaSource,
        /// What was done, as JSON: {installed, steps: [{outcome, what, fix}]}.
        #[arg(long)]
        json: bool,
    },
}

/// Whose CA: a daemon's config, or its state dir.
#[derive(Debug, Clone, clap::Args)]
pub(super) struct CaSource {
    /// Config of the daemon whose CA this is (its `state_dir`); without it the embedded default.
    #[arg(long, short)]
    pub(super) config: Option<PathBuf>,
    /// The daemon's state directory, overriding the config's.
    #[arg(long)]
    pub(super) state_dir: Option<PathBuf>,
}

impl CaCommand {
    /// Where the config and state dir to act on come from.
    pub(super) fn source(&self) -> &CaSource {
        match self {
            Self::Show { from, .. }
            | Self::Export { from, .. }
            | Self::Install { from, .. }
            | Self::Rotate { from }
            | Self::Uninstall { from, .. } => from,
        }
    }
}

/// Runs a `jitproxy ca` command for the daemon of `config`.
pub(super) fn run(config: &Config, command: CaCommand) -> Result<Exit, CmdError> {
    let state_dir = &config.state_dir;
    match command {
        CaCommand::Show { json, .. } => show(&load(config)?, trust::installed(state_dir), json),
        CaCommand::Export { file, .. } => export(&load(config)?, file),
        CaCommand::Install { json, .. } => {
            need_root("install")?;
            let report = trust::install(state_dir, &TrustPaths::system()).map_err(trust_error)?;
            finish(&report, json, None, "install")
        }
        CaCommand::Rotate { .. } => rotate(config),
        CaCommand::Uninstall { json, .. } => {
            need_root("uninstall")?;
            match trust::uninstall(state_dir, &TrustPaths::system()).map_err(trust_error)? {
                Some(report) => finish(&report, json, Some(true), "uninstall"),
                None if json => {
                    print_json(&serde_json::json!({ "installed": false, "steps": [] }));
                    Ok(Exit::Success)
                }
                None => {
                    println!("the local CA is not installed");
                    Ok(Exit::Success)
                }
            }
        }
    }
}

/// `ca rotate`: a new CA constrained to the config's inspect server names.
fn rotate(config: &Config) -> Result<Exit, CmdError> {
    need_root("rotate")?;
    let names: Vec<String> = config
        .targets
        .iter()
        .filter(|t| !t.retired)
        .filter_map(|t| t.mode.inspect())
        .filter(|i| i.upstream_tls)
        .flat_map(|i| i.server_names.iter().cloned())
        .collect();
    if names.is_empty() {
        return Err(CmdError::usage(
            "the config has no inspect target that terminates TLS, so a CA would vouch for nothing",
        )
        .with_hint("add `mode = \"inspect\"` to a target first"));
    }
    let ca = crate::proxy::http::ca::LocalCa::create(
        &config.state_dir,
        &names,
        crate::proxy::http::provider(),
    )
    .map_err(CmdError::failure)?;
    println!(
        "made a new local CA {}\n  for: {}",
        ca.fingerprint(),
        names
            .iter()
            .map(|n| Escaped(n).to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("next: reload the daemon (`systemctl reload jitproxy`, or SIGHUP), then `jitproxy ca install` to trust the new CA instead of the old one");
    Ok(Exit::Success)
}

fn load(config: &Config) -> Result<LocalCa, CmdError> {
    LocalCa::load(&config.state_dir).map_err(trust_error)
}

fn need_root(verb: &str) -> Result<(), CmdError> {
    if nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    Err(CmdError::failure(format!(
        "`jitproxy ca {verb}` changes this host's trust stores and needs root"
    ))
    .with_hint(format!("run it with sudo, e.g. `sudo jitproxy ca {verb}`")))
}

/// A trust error with what to do next.
fn trust_error(e: TrustError) -> CmdError {
    let hint = match &e {
        TrustError::NoCa { path } => Some(format!(
            "it will be {}; `jitproxy ca` reads the state dir of the config given with --config (or --state-dir)",
            path.display()
        )),
        e if e.is_permission_denied() => Some(String::from("run it with sudo")),
        _ => None,
    };
    let error = CmdError::failure(&e);
    match hint {
        Some(hint) => error.with_hint(hint),
        None => error,
    }
}

#[derive(Serialize)]
struct ShowJson<'a> {
    path: &'a std::path::Path,
    #[serde(flatten)]
    details: &'a CaDetails,
    /// Whether this CA (this fingerprint) is installed.
    trusted: bool,
    installed: Option<&'a Manifest>,
}

/// `jitproxy ca show`.
fn show(
    ca: &LocalCa,
    installed: Result<Option<Manifest>, TrustError>,
    json: bool,
) -> Result<Exit, CmdError> {
    // The manifest may be unreadable where the CA is not: say so, show the rest.
    let (installed, unknown) = match installed {
        Ok(manifest) => (manifest, None),
        Err(e) => (None, Some(e.to_string())),
    };
    if json {
        print_json(&ShowJson {
            path: ca.path(),
            details: ca.details(),
            trusted: installed
                .as_ref()
                .is_some_and(|m| m.fingerprint == ca.fingerprint()),
            installed: installed.as_ref(),
        });
    } else {
        print!(
            "{}",
            render_show(ca, installed.as_ref(), unknown.as_deref())
        );
    }
    Ok(Exit::Success)
}

/// The text of `ca show`, escaped.
fn render_show(ca: &LocalCa, installed: Option<&Manifest>, unknown: Option<&str>) -> String {
    let d = ca.details();
    let mut rows = vec![
        ("file", ca.path().display().to_string()),
        ("subject", d.subject.clone()),
        ("sha256", d.fingerprint_sha256.clone()),
        ("not before", d.not_before.to_string()),
        ("not after", d.not_after.to_string()),
    ];
    match &d.name_constraints {
        None => rows.push(("may sign for", "any name (no name constraints)".into())),
        Some(nc) => {
            let critical = if nc.critical {
                "critical"
            } else {
                "not critical"
            };
            rows.push(("may sign for", names(&nc.permitted_dns, &nc.permitted_ip)));
            if !nc.excluded_dns.is_empty() || !nc.excluded_ip.is_empty() {
                rows.push(("must not sign", names(&nc.excluded_dns, &nc.excluded_ip)));
            }
            for other in &nc.other {
                rows.push(("also", other.clone()));
            }
            rows.push(("constraints", format!("X.509 name constraints, {critical}")));
        }
    }
    rows.push(("installed", installed_text(ca, installed, unknown)));
    let mut out = String::new();
    for (key, value) in rows {
        out += &format!("{key:<14}{}\n", Escaped(value));
    }
    out
}

/// DNS names and IP ranges, on one line.
fn names(dns: &[String], ip: &[String]) -> String {
    let mut parts = Vec::new();
    if !dns.is_empty() {
        parts.push(format!("DNS {}", dns.join(", ")));
    }
    if !ip.is_empty() {
        parts.push(format!("IP {}", ip.join(", ")));
    }
    if parts.is_empty() {
        String::from("no names")
    } else {
        parts.join("; ")
    }
}

fn installed_text(ca: &LocalCa, installed: Option<&Manifest>, unknown: Option<&str>) -> String {
    let Some(m) = installed else {
        return match unknown {
            Some(e) => format!("unknown: {e}"),
            None => String::from("no (`sudo jitproxy ca install`)"),
        };
    };
    if m.fingerprint != ca.fingerprint() {
        return format!(
            "no: an older CA (sha256 {}) is; `sudo jitproxy ca install` replaces it",
            m.fingerprint
        );
    }
    let mut places = Vec::new();
    if let Some(bundle) = &m.system_bundle {
        places.push(format!("system store ({})", bundle.display()));
    } else if let Some(file) = &m.system_ca {
        places.push(format!("{} (not yet in the system bundle)", file.display()));
    }
    if !m.nss.is_empty() {
        places.push(format!("{} NSS database(s)", m.nss.len()));
    }
    if let Some(profile) = &m.profile {
        places.push(profile.display().to_string());
    }
    format!(
        "yes, since {}: {}",
        crate::time::local_minute(m.installed_at),
        places.join(", ")
    )
}

/// `jitproxy ca export [FILE]`.
fn export(ca: &LocalCa, file: Option<PathBuf>) -> Result<Exit, CmdError> {
    match file {
        Some(path) if path.as_os_str() != "-" => {
            ca.export(&path).map_err(trust_error)?;
            println!(
                "wrote the local CA (sha256 {}) to {}",
                ca.fingerprint(),
                Escaped(path.display())
            );
            Ok(Exit::Success)
        }
        _ => match std::io::stdout().write_all(ca.pem().as_bytes()) {
            // A reader that stopped early (`| head`) is not a failure.
            Ok(()) => Ok(Exit::Success),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(Exit::Success),
            Err(e) => Err(CmdError::failure(format!("cannot write the CA: {e}"))),
        },
    }
}

/// Prints what install or uninstall did; exit 1 if a step failed.
fn finish(
    report: &Report,
    json: bool,
    installed: Option<bool>,
    verb: &str,
) -> Result<Exit, CmdError> {
    if json {
        let mut value = serde_json::to_value(report).unwrap_or_default();
        if let Some(installed) = installed {
            value["installed"] = serde_json::json!(installed);
        }
        print_json(&value);
    } else {
        print!("{}", render_report(report));
    }
    match report.failures() {
        0 => Ok(Exit::Success),
        n => Err(CmdError::failure(format!("{n} step(s) of `ca {verb}` failed")).with_hint(
            format!("fix what is shown above, then run `sudo jitproxy ca {verb}` again: it redoes only what is missing"),
        )),
    }
}

/// One line per step, and its fix indented below it; escaped.
fn render_report(report: &Report) -> String {
    let mut out = String::new();
    for step in &report.steps {
        let label = match step.outcome {
            Outcome::Done => "done",
            Outcome::Unchanged => "unchanged",
            Outcome::Skipped => "skipped",
            Outcome::Failed => "FAILED",
        };
        out += &format!("{label:<10} {}\n", Escaped(&step.what));
        if let Some(fix) = &step.fix {
            out += &format!("{:<10} fix: {}\n", "", Escaped(fix));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::trust::Step;

    #[test]
    fn report_lines_are_labelled_escaped_and_fixes_indented() {
        let report = Report {
            steps: vec![
                Step {
                    outcome: Outcome::Done,
                    what: "removed /etc/a\x1bb".into(),
                    fix: None,
                },
                Step {
                    outcome: Outcome::Skipped,
                    what: "certutil not found".into(),
                    fix: Some("install libnss3-tools".into()),
                },
            ],
        };
        assert_eq!(
            render_report(&report),
            "done       removed /etc/a\\x1bb\n\
             skipped    certutil not found\n           fix: install libnss3-tools\n"
        );
    }

    #[test]
    fn names_join_dns_and_ip() {
        assert_eq!(
            names(
                &["a.example".into(), "b.example".into()],
                &["10.0.0.0/8".into()]
            ),
            "DNS a.example, b.example; IP 10.0.0.0/8"
        );
        assert_eq!(names(&[], &[]), "no names");
    }
}
