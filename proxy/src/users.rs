//! The local user database: names to ids and back, and a user's groups.
//! Lookups may read files or ask NSS, so they are blocking; callers on the
//! runtime use [`Users`], which caches and runs misses on the blocking pool.

use std::{
    collections::HashMap,
    ffi::CString,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use nix::unistd::{Gid, Group, Uid, User};

/// How long a cached group membership is trusted.
const GROUPS_TTL: Duration = Duration::from_secs(60);

/// A user named on the command line: a name or a numeric uid.
pub fn resolve_user(spec: &str) -> Result<(u32, Option<String>), String> {
    if let Ok(uid) = spec.parse::<u32>() {
        let name = User::from_uid(Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name);
        return Ok((uid, name));
    }
    match User::from_name(spec) {
        Ok(Some(user)) => Ok((user.uid.as_raw(), Some(user.name))),
        Ok(None) => Err(format!(
            "no user named `{spec}` on this host; give a user name or a numeric uid"
        )),
        Err(e) => Err(format!("cannot look up user `{spec}`: {e}")),
    }
}

/// A group named on the command line: a name or a numeric gid.
pub fn resolve_group(spec: &str) -> Result<(u32, Option<String>), String> {
    if let Ok(gid) = spec.parse::<u32>() {
        let name = Group::from_gid(Gid::from_raw(gid))
            .ok()
            .flatten()
            .map(|g| g.name);
        return Ok((gid, name));
    }
    match Group::from_name(spec) {
        Ok(Some(group)) => Ok((group.gid.as_raw(), Some(group.name))),
        Ok(None) => Err(format!(
            "no group named `{spec}` on this host; give a group name or a numeric gid"
        )),
        Err(e) => Err(format!("cannot look up group `{spec}`: {e}")),
    }
}

/// The user name of `uid`, if the user database has one.
pub fn user_name(uid: u32) -> Option<String> {
    User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// Every group `uid` is in: its primary group and its supplementary groups
/// from the user database.
pub fn groups_of(uid: u32) -> Vec<u32> {
    let Some(user) = User::from_uid(Uid::from_raw(uid)).ok().flatten() else {
        return Vec::new();
    };
    let Ok(name) = CString::new(user.name) else {
        return vec![user.gid.as_raw()];
    };
    nix::unistd::getgrouplist(&name, user.gid)
        .map(|gids| gids.into_iter().map(Gid::as_raw).collect())
        .unwrap_or_else(|_| vec![user.gid.as_raw()])
}

/// uid -> (when looked up, its groups).
type GroupCache = HashMap<u32, (Instant, Arc<[u32]>)>;

/// Cached group memberships, for the data path.
#[derive(Debug, Default, Clone)]
pub struct Users {
    groups: Arc<RwLock<GroupCache>>,
}

impl Users {
    pub fn new() -> Self {
        Self::default()
    }

    /// The groups of `uid` (cached for a minute).
    pub async fn groups(&self, uid: u32) -> Arc<[u32]> {
        if let Some((at, gids)) = self
            .groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&uid)
        {
            if at.elapsed() < GROUPS_TTL {
                return Arc::clone(gids);
            }
        }
        let gids: Arc<[u32]> = tokio::task::spawn_blocking(move || groups_of(uid))
            .await
            .unwrap_or_default()
            .into();
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid, (Instant::now(), Arc::clone(&gids)));
        gids
    }
}
