//! Whether a redirected connection may pass: a [`Verdict`] with a reason that
//! is shown to the user and written to the audit log.
//!
//! The skeleton has no grants yet: [`Policy::Open`] lets every redirected
//! connection through and says so in its reason. Grants replace it.

use std::fmt;

use crate::identity::Origin;

/// The decision on one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow(AllowReason),
    Deny(DenyReason),
}

/// Why a connection was let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowReason {
    /// No policy is configured: every caller passes (skeleton only).
    NoPolicy,
}

/// Why a connection was refused. Shown to the caller and audited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// The kernel has no record of this connection: it did not come through
    /// the redirect (or its client is already gone). Never forwarded blind.
    NoRecord,
    /// The record names a target the running config does not have.
    UnknownTarget(u32),
}

/// Decides on connections.
#[derive(Debug, Clone)]
pub enum Policy {
    /// Allow every redirected connection.
    Open,
}

impl Policy {
    pub fn decide(&self, _origin: &Origin) -> Verdict {
        match self {
            Self::Open => Verdict::Allow(AllowReason::NoPolicy),
        }
    }
}

impl fmt::Display for AllowReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoPolicy => f.write_str("no access policy configured"),
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoRecord => f.write_str("connection did not come through the kernel redirect"),
            Self::UnknownTarget(id) => write!(f, "target #{id} is not in the running config"),
        }
    }
}
