//! jitproxy: time-limited access to production APIs through a local proxy
//! that the kernel forces connections through.
//!
//! Layers, each importing only from the ones below it (checked by
//! `cargo xtask lint`); docs/architecture.md has the picture:
//!
//! - top: [`cmd`] (the command line), [`daemon`] (wiring), [`control`] (the
//!   control API), [`bench`];
//! - [`store`]: grant store backends; [`notify`]: webhook delivery;
//! - [`proxy`]: the data path;
//! - [`access`]: grants and who may do what;
//! - [`audit`]: the tamper-evident log;
//! - bottom: [`config`], [`host`] (the local system), [`kernel`] (eBPF),
//!   [`metrics`] (the process's counters), [`time`].
#![forbid(unsafe_code)]

pub mod access;
pub mod audit;
pub mod bench;
pub mod cmd;
pub mod config;
pub mod control;
pub mod daemon;
pub mod host;
pub mod kernel;
pub mod metrics;
pub mod notify;
pub mod proxy;
pub mod store;
pub mod time;

/// Entry points for the fuzz targets in fuzz/ to parsers of untrusted input
/// that are private to their modules. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    use std::{io, path::Path};

    /// The audit log's torn-tail recovery: the bytes cut, the last whole line.
    pub fn recover_tail(path: &Path) -> io::Result<(u64, Option<Vec<u8>>)> {
        crate::audit::log::recover_tail(path)
    }

    /// A TLS ClientHello as inspect mode reads it (rustls's parser), then
    /// the choice of server name among `names`: `None` while more bytes
    /// are needed or the hello is invalid; else the chosen name or the
    /// refusal's code.
    pub fn client_hello(
        bytes: &[u8],
        names: &[std::sync::Arc<str>],
    ) -> Option<Result<String, String>> {
        let mut acceptor = rustls::server::Acceptor::default();
        let mut reader = bytes;
        while !reader.is_empty() {
            match acceptor.read_tls(&mut reader) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let accepted = acceptor.accept().ok()??;
        let hello = accepted.client_hello();
        Some(
            crate::proxy::http::choose_name("fuzz", names, None, hello.server_name())
                .map(|n| n.to_string())
                .map_err(|refused| refused.code.to_owned()),
        )
    }

    /// The audit signing key's loading (or creation): its secret bytes.
    pub fn load_or_create_key(path: &Path) -> io::Result<[u8; 32]> {
        crate::audit::log::load_or_create_key(path).map(|key| key.to_bytes())
    }
}
