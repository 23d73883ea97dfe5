//! The config as written in the file: serde types that keep each value's
//! position (`Spanned`) so that validation can name the line.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Limit};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default = "defaults::listen_port")]
    pub(super) listen_port: Spanned<u16>,
    #[serde(default)]
    pub(super) cgroup: Option<PathBuf>,
    #[serde(default = "defaults::state_dir")]
    pub(super) state_dir: PathBuf,
    #[serde(default = "defaults::bpffs")]
    pub(super) bpffs: PathBuf,
    #[serde(default = "defaults::resolve_interval")]
    pub(super) resolve_interval: Spanned<String>,
    #[serde(default = "defaults::connect_timeout")]
    pub(super) connect_timeout: Spanned<String>,
    #[serde(default = "defaults::max_connections")]
    pub(super) max_connections: Spanned<usize>,
    #[serde(default = "defaults::max_records_per_uid")]
    pub(super) max_records_per_uid: Spanned<u32>,
    #[serde(default = "defaults::upstream_mark")]
    pub(super) upstream_mark: Spanned<u32>,
    #[serde(default)]
    pub(super) worker_threads: Option<Spanned<usize>>,
    #[serde(default = "defaults::control_socket")]
    pub(super) control_socket: PathBuf,
    #[serde(default)]
    pub(super) approvers: Vec<Spanned<String>>,
    #[serde(default = "defaults::max_grant")]
    pub(super) max_grant: Spanned<String>,
    #[serde(default)]
    pub(super) limits: Option<Spanned<Limit>>,
    #[serde(default)]
    pub(super) metrics: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) audit: RawAudit,
    #[serde(default, rename = "target")]
    pub(super) targets: Vec<RawTarget>,
    #[serde(default, rename = "notify")]
    pub(super) notify: Vec<Spanned<RawNotify>>,
}

/// A `[[notify]]` webhook.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    pub(super) name: Spanned<String>,
    #[serde(default)]
    pub(super) url: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) url_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub(super) format: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) events: Vec<Spanned<String>>,
}

/// An entry of a target's `auto_approve`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAutoApprove {
    pub(super) who: Vec<Spanned<String>>,
    pub(super) max: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    #[serde(default)]
    pub(super) dir: Option<PathBuf>,
    #[serde(default)]
    pub(super) rotate_bytes: Option<Spanned<u64>>,
    #[serde(default)]
    pub(super) retention: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) checkpoint_interval: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) auditors: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) syslog: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTarget {
    pub(super) name: Spanned<String>,
    pub(super) hosts: Spanned<Vec<Spanned<String>>>,
    pub(super) ports: Spanned<Vec<Spanned<u16>>>,
    #[serde(default)]
    pub(super) max_grant: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) limits: Option<Spanned<Limit>>,
    #[serde(default)]
    pub(super) requesters: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) approvers: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) approvals: Option<Spanned<u32>>,
    #[serde(default)]
    pub(super) request_ttl: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) auto_approve: Vec<Spanned<RawAutoApprove>>,
    #[serde(default)]
    pub(super) break_glass: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) break_glass_max: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) mode: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) server_names: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub(super) upstream_tls: Option<Spanned<bool>>,
    #[serde(default)]
    pub(super) upstream_ca: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub(super) requests_per_second: Option<Spanned<f64>>,
    #[serde(default)]
    pub(super) requests_burst: Option<Spanned<u32>>,
    #[serde(default)]
    pub(super) log_query: Option<Spanned<bool>>,
    #[serde(default)]
    pub(super) credential: Option<Spanned<RawCredential>>,
}

/// A target's `[target.credential]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCredential {
    #[serde(default)]
    pub(super) header: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) value: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) secret_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub(super) secret_env: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) placeholder_query: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) placeholder_headers: Vec<Spanned<String>>,
}

mod defaults {
    use std::path::PathBuf;

    use toml::Spanned;

    fn unspanned<T>(v: T) -> Spanned<T> {
        Spanned::new(0..0, v)
    }
    pub(super) fn listen_port() -> Spanned<u16> {
        unspanned(crate::config::DEFAULT_LISTEN_PORT)
    }
    pub(super) fn state_dir() -> PathBuf {
        PathBuf::from("/var/lib/jitproxy")
    }
    pub(super) fn bpffs() -> PathBuf {
        PathBuf::from("/sys/fs/bpf")
    }
    pub(super) fn resolve_interval() -> Spanned<String> {
        unspanned("30s".to_owned())
    }
    pub(super) fn connect_timeout() -> Spanned<String> {
        unspanned("5s".to_owned())
    }
    pub(super) fn max_connections() -> Spanned<usize> {
        unspanned(10_000)
    }
    pub(super) fn max_records_per_uid() -> Spanned<u32> {
        unspanned(proxy_common::DEFAULT_RECORDS_PER_UID)
    }
    pub(super) fn upstream_mark() -> Spanned<u32> {
        unspanned(proxy_common::DEFAULT_UPSTREAM_MARK)
    }
    pub(super) fn control_socket() -> PathBuf {
        PathBuf::from("/run/jitproxy/control.sock")
    }
    pub(super) fn max_grant() -> Spanned<String> {
        unspanned("8h".to_owned())
    }
}

/// Reads config text into its raw form; type errors name line and key.
pub(super) fn parse(text: &str, file: &str) -> Result<RawConfig, ConfigError> {
    let deserializer = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        // Values read with their position (`Spanned`) add serde's private
        // field name to the path; the key as written has none.
        let key = err
            .path()
            .to_string()
            .replace(".$__serde_spanned_private_value", "")
            .replace("$__serde_spanned_private_value", "");
        let inner = err.into_inner();
        let (line, column) = inner
            .span()
            .map(|span| line_col(text, span.start))
            .unwrap_or((1, 1));
        ConfigError::Invalid {
            file: file.to_owned(),
            line,
            column,
            key: if key == "." {
                "(top level)".to_owned()
            } else {
                key
            },
            message: inner.message().to_owned(),
        }
    })
}

/// 1-based line and column of a byte offset.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}
