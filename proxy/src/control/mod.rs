//! The control API: HTTP/1.1 with JSON bodies on a Unix socket. Every request
//! is authorized by the caller's peer credentials (SO_PEERCRED), never by
//! anything in the request. See docs/control-api.md.

pub mod client;
pub mod proto;
pub mod server;

use std::fmt;

use hyper::StatusCode;

use crate::{grants::Principal, users};

/// The process on the other end of the control socket, from SO_PEERCRED.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    /// `/proc/PID/loginuid` of the peer, when set.
    pub login_uid: Option<u32>,
}

impl Peer {
    /// The human behind the request: the login uid when set, else the uid.
    /// The same rule as for connections, so `jitproxy drop` and `why` act on
    /// the grants that the caller's connections are matched against.
    pub fn human_uid(&self) -> u32 {
        self.login_uid.unwrap_or(self.uid)
    }

    /// The peer as recorded on grants (granted by, ended by).
    pub fn principal(&self) -> Principal {
        Principal {
            uid: self.uid,
            name: users::user_name(self.uid),
            login_uid: self.login_uid.filter(|&l| l != self.uid),
        }
    }
}

/// An error answer: HTTP status, what went wrong, what to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: String,
    pub hint: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            status,
            error: error.into(),
            hint: Some(hint.into()),
        }
    }

    pub fn bad_request(error: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error, hint)
    }

    pub fn forbidden(error: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, error, hint)
    }

    pub fn not_found(error: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, error, hint)
    }

    /// The daemon's fault; the details are logged, the caller sees them too
    /// (nothing secret is in grant store errors).
    pub fn internal(error: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error: error.into(),
            hint: Some("this is a jitproxy bug or a disk problem; see the daemon's log".to_owned()),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.error)?;
        if let Some(hint) = &self.hint {
            write!(f, "; {hint}")?;
        }
        Ok(())
    }
}
