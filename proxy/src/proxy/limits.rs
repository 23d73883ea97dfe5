//! Connection limits per (user, target), as configured ([`Limit`]): new
//! connections per second with a burst (a token bucket), and a cap on live
//! connections. A connection that passes holds a [`LiveGuard`]; dropping it
//! frees its slot.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use crate::config::Limit;

/// Why a connection was over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// More new connections than the rate and burst allow.
    Rate,
    /// Too many live connections.
    Concurrency(u32),
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    live: u32,
}

type Key = (u32, u32);

/// Limit state of every (user, target) pair seen.
#[derive(Debug, Default, Clone)]
pub struct Limits {
    buckets: Arc<Mutex<HashMap<Key, Bucket>>>,
}

/// A live connection's slot; freed on drop.
#[derive(Debug)]
pub struct LiveGuard {
    buckets: Arc<Mutex<HashMap<Key, Bucket>>>,
    key: Key,
}

impl Limits {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes a token and a live slot for `uid` on `target`, or says which
    /// limit is exceeded.
    pub fn acquire(
        &self,
        uid: u32,
        target: u32,
        limit: &Limit,
        now: Instant,
    ) -> Result<LiveGuard, Exceeded> {
        let key = (uid, target);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(key).or_insert_with(|| Bucket {
            tokens: f64::from(limit.burst),
            refilled: now,
            live: 0,
        });
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens =
            (bucket.tokens + elapsed * limit.connections_per_second).min(f64::from(limit.burst));
        bucket.refilled = now;
        if bucket.live >= limit.max_concurrent {
            return Err(Exceeded::Concurrency(limit.max_concurrent));
        }
        if bucket.tokens < 1.0 {
            return Err(Exceeded::Rate);
        }
        bucket.tokens -= 1.0;
        bucket.live += 1;
        Ok(LiveGuard {
            buckets: Arc::clone(&self.buckets),
            key,
        })
    }

    /// Live connections per (uid, target).
    pub fn live(&self) -> Vec<(u32, u32, u32)> {
        self.buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, b)| b.live > 0)
            .map(|(&(uid, target), b)| (uid, target, b.live))
            .collect()
    }
}

/// An inspect target's request rate per user: a token bucket per uid.
#[derive(Debug)]
pub struct RequestLimits {
    per_second: f64,
    burst: u32,
    buckets: Mutex<HashMap<u32, (f64, Instant)>>,
}

impl RequestLimits {
    pub fn new(per_second: f64, burst: u32) -> Self {
        Self {
            per_second,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `uid`, or says how long until there is one.
    pub fn take(&self, uid: u32, now: Instant) -> Result<(), std::time::Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, refilled) = buckets
            .entry(uid)
            .or_insert_with(|| (f64::from(self.burst), now));
        let elapsed = now.saturating_duration_since(*refilled).as_secs_f64();
        *tokens = (*tokens + elapsed * self.per_second).min(f64::from(self.burst));
        *refilled = now;
        if *tokens < 1.0 {
            let wait = (1.0 - *tokens) / self.per_second;
            return Err(std::time::Duration::from_secs_f64(
                wait.clamp(0.001, 3600.0),
            ));
        }
        *tokens -= 1.0;
        Ok(())
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bucket) = buckets.get_mut(&self.key) {
            bucket.live = bucket.live.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const LIMIT: Limit = Limit {
        connections_per_second: 1.0,
        burst: 3,
        max_concurrent: 2,
    };

    #[test]
    fn burst_then_rate() {
        let limits = Limits::new();
        let t0 = Instant::now();
        let loose = Limit {
            max_concurrent: 100,
            ..LIMIT
        };
        let guards: Vec<_> = (0..3)
            .map(|_| limits.acquire(1, 0, &loose, t0).unwrap())
            .collect();
        assert_eq!(
            limits.acquire(1, 0, &loose, t0).unwrap_err(),
            Exceeded::Rate
        );
        // Another user has their own bucket.
        assert!(limits.acquire(2, 0, &loose, t0).is_ok());
        // A second later, one more token.
        assert!(limits
            .acquire(1, 0, &loose, t0 + Duration::from_secs(1))
            .is_ok());
        drop(guards);
    }

    #[test]
    fn requests_take_tokens_per_user_and_say_when_to_retry() {
        let limits = RequestLimits::new(2.0, 2);
        let t0 = Instant::now();
        assert!(limits.take(1, t0).is_ok());
        assert!(limits.take(1, t0).is_ok());
        let wait = limits.take(1, t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(limits.take(2, t0).is_ok());
        assert!(limits.take(1, t0 + Duration::from_millis(500)).is_ok());
    }

    #[test]
    fn concurrency_cap_frees_on_drop() {
        let limits = Limits::new();
        let t0 = Instant::now();
        let a = limits.acquire(1, 0, &LIMIT, t0).unwrap();
        let _b = limits.acquire(1, 0, &LIMIT, t0).unwrap();
        assert_eq!(
            limits.acquire(1, 0, &LIMIT, t0).unwrap_err(),
            Exceeded::Concurrency(2)
        );
        drop(a);
        let c = limits.acquire(1, 0, &LIMIT, t0);
        assert!(c.is_ok());
        assert_eq!(limits.live(), vec![(1, 0, 2)]);
    }
}
