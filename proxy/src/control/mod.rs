//! The control API: HTTP/1.1 with JSON bodies on a Unix socket. Every request
//! is authorized by the caller's peer credentials (SO_PEERCRED), never by
//! anything in the request. See docs/control-api.md.

pub mod client;
pub mod proto;
pub mod server;

use std::fmt;

use hyper::StatusCode;

use crate::access::{AccessError, ErrorKind, Requester};

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
    /// The peer as the grant service sees it.
    pub fn requester(&self) -> Requester {
        Requester {
            uid: self.uid,
            login_uid: self.login_uid,
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

    pub fn not_found(error: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, error, hint)
    }
}

impl From<AccessError> for ApiError {
    fn from(e: AccessError) -> Self {
        let status = match e.kind {
            ErrorKind::Invalid => StatusCode::BAD_REQUEST,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.message, e.hint)
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
