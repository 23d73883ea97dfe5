//! The local user database: names to ids and back, and a user's groups.
//!
//! Lookups may read files or ask NSS, so they block. Code on the runtime uses
//! [`Users`], one cache of names and groups whose misses run on the blocking
//! pool; the free functions are for code already off the runtime.
#![expect(
    clippy::disallowed_methods,
    reason = "the user database's own module: callers on the runtime use Users"
)]

use std::{ffi::CString, hash::Hash, sync::Arc, time::Duration};

use nix::unistd::{Gid, Group, Uid, User};

use super::cache::TtlMap;

/// How long a cached answer is trusted: a renamed user or a changed group
/// membership is seen within this.
const TTL: Duration = Duration::from_secs(60);

/// A user named on the command line: a name or a numeric uid.
pub fn resolve_user(spec: &str) -> Result<(u32, Option<String>), String> {
    if let Ok(uid) = spec.parse::<u32>() {
        return Ok((uid, user_name(uid)));
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

/// Cached names and group memberships, for code on the runtime.
#[derive(Debug, Default, Clone)]
pub struct Users {
    names: Cache<u32, Option<Arc<str>>>,
    groups: Cache<u32, Arc<[u32]>>,
}

impl Users {
    pub fn new() -> Self {
        Self::default()
    }

    /// The user name of `uid`.
    pub async fn name(&self, uid: u32) -> Option<String> {
        self.shared_name(uid).await.map(|name| name.to_string())
    }

    /// The user name of `uid`, shared with the cache (no copy).
    pub async fn shared_name(&self, uid: u32) -> Option<Arc<str>> {
        self.names
            .get_or_load(uid, move || user_name(uid).map(Arc::from))
            .await
    }

    /// The groups of `uid`.
    pub async fn groups(&self, uid: u32) -> Arc<[u32]> {
        self.groups
            .get_or_load(uid, move || groups_of(uid).into())
            .await
    }
}

/// Answers of a blocking lookup, each trusted for [`TTL`].
#[derive(Debug)]
struct Cache<K, V>(Arc<TtlMap<K, V>>);

impl<K: Eq + Hash, V: Clone> Default for Cache<K, V> {
    fn default() -> Self {
        Self(Arc::new(TtlMap::new(TTL, usize::MAX)))
    }
}

impl<K, V> Clone for Cache<K, V> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<K, V> Cache<K, V>
where
    K: Eq + Hash + Copy,
    V: Clone + Default + Send + 'static,
{
    /// The cached answer for `key`, or `load`'s (run on the blocking pool).
    /// A lookup that cannot run answers `V::default()` and is not cached.
    async fn get_or_load(&self, key: K, load: impl FnOnce() -> V + Send + 'static) -> V {
        if let Some(value) = self.0.get(&key) {
            return value;
        }
        let Ok(value) = tokio::task::spawn_blocking(load).await else {
            return V::default();
        };
        self.0.put(key, value.clone());
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn root_is_known() {
        let users = Users::new();
        assert_eq!(users.name(0).await.as_deref(), Some("root"));
        // From the cache the second time, the same answer.
        assert_eq!(users.name(0).await.as_deref(), Some("root"));
        assert!(users.groups(0).await.contains(&0));
        assert_eq!(resolve_user("root").unwrap().0, 0);
        assert!(resolve_user("no-such-user-jitproxy").is_err());
    }
}
