//! Time as every layer uses it: [`UnixMs`] (milliseconds since the Unix
//! epoch, UTC) inside the daemon, [`Timestamp`] at its edges (records, the
//! control API), local time for people.

use jiff::{tz::TimeZone, Timestamp};

/// Milliseconds since the Unix epoch (UTC): the daemon's time unit.
pub type UnixMs = i64;

/// The current wall-clock time.
pub fn now_ms() -> UnixMs {
    Timestamp::now().as_millisecond()
}

/// Where a component reads the time: the wall clock, or (in tests) a clock
/// that follows Tokio's, so that with `tokio::time::pause` time passes only
/// when the test advances it.
#[derive(Debug, Clone, Copy, Default)]
pub enum Clock {
    #[default]
    Wall,
    /// `at` when Tokio's clock read `origin`.
    Tokio {
        at: UnixMs,
        origin: tokio::time::Instant,
    },
}

impl Clock {
    /// A clock that reads `at` now and then moves with Tokio's.
    pub fn following_tokio(at: UnixMs) -> Self {
        Self::Tokio {
            at,
            origin: tokio::time::Instant::now(),
        }
    }

    pub fn now_ms(&self) -> UnixMs {
        match self {
            Self::Wall => now_ms(),
            Self::Tokio { at, origin } => {
                let elapsed = i64::try_from(origin.elapsed().as_millis()).unwrap_or(i64::MAX);
                at.saturating_add(elapsed)
            }
        }
    }
}

/// A [`UnixMs`] as a timestamp (clamped to the representable range).
pub fn timestamp(ms: UnixMs) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(if ms < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

/// A timestamp in the system's time zone, to the minute, for tables.
pub fn local_minute(ts: Timestamp) -> String {
    ts.to_zoned(TimeZone::system())
        .strftime("%Y-%m-%d %H:%M")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_clamp_instead_of_failing() {
        assert_eq!(timestamp(0).to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(i64::MAX), Timestamp::MAX);
        assert_eq!(timestamp(i64::MIN), Timestamp::MIN);
    }
}
