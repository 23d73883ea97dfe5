//! Who may do what: root always; approvers grant, revoke and list
//! everyone's grants; auditors read the audit log. Membership is by user
//! name, uid, or group, from the user database.

use super::{Access, AccessError, Requester};
use crate::{
    config::{Approver, Target},
    host::users,
};

impl Access {
    pub(super) async fn is_approver(&self, by: &Requester) -> bool {
        is_member(by, &self.config().approvers).await
    }

    pub(super) async fn require_approver(&self, by: &Requester) -> Result<(), AccessError> {
        if self.is_approver(by).await {
            return Ok(());
        }
        let approvers: Vec<String> = self
            .config()
            .approvers
            .iter()
            .map(ToString::to_string)
            .collect();
        Err(AccessError::forbidden(
            format!("uid {} may not grant or revoke access", by.uid),
            if approvers.is_empty() {
                "only root may; ask an administrator".to_owned()
            } else {
                format!("ask one of: root, {}", approvers.join(", "))
            },
        ))
    }

    /// Root, or an approver of `target` (its own `approvers`, else the
    /// top-level ones).
    pub(super) async fn require_target_approver(
        &self,
        by: &Requester,
        target: &Target,
    ) -> Result<(), AccessError> {
        if is_member(by, self.config().approvers_of(target)).await {
            return Ok(());
        }
        Err(AccessError::forbidden(
            format!(
                "uid {} may not grant or approve access to `{}`",
                by.uid, target.name
            ),
            format!("ask one of: {}", self.approvers_for(target).join(", ")),
        ))
    }

    pub(super) async fn require_auditor(&self, by: &Requester) -> Result<(), AccessError> {
        if is_member(by, &self.config().audit.auditors).await {
            return Ok(());
        }
        Err(AccessError::forbidden(
            format!("uid {} may not read the audit log", by.uid),
            "only root and the configured auditors (`[audit] auditors`) may",
        ))
    }
}

/// Whether `by` is root or in `list` (by user name, uid, or group). Decided
/// by the uid the kernel vouches for, never by the login uid, and looked up
/// afresh each time (no cache), so a removed approver loses the right at once.
pub(super) async fn is_member(by: &Requester, list: &[Approver]) -> bool {
    by.uid == 0 || is_member_uid(by.uid, list).await
}

/// Whether `uid` is in `list` (by user name, uid, or group); root only if
/// the list names it.
pub(super) async fn is_member_uid(uid: u32, list: &[Approver]) -> bool {
    if list.is_empty() {
        return false;
    }
    let list = list.to_vec();
    tokio::task::spawn_blocking(move || {
        let name = users::user_name(uid);
        let groups = users::groups_of(uid);
        list.iter().any(|a| match a {
            Approver::User(u) => name.as_deref() == Some(u) || u.parse::<u32>().ok() == Some(uid),
            Approver::Group(g) => {
                users::resolve_group(g).is_ok_and(|(gid, _)| groups.contains(&gid))
            }
        })
    })
    .await
    .unwrap_or(false)
}
