//! The wall clock the client reads for Torn's daily read limit (code 14), which resets at
//! midnight UTC: injected, so tests cross midnight without waiting for it.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time: Torn's daily read limit (code 14) resets at midnight UTC.
/// Injected so tests can cross midnight without waiting for it.
pub trait WallClock: Send + Sync + fmt::Debug + 'static {
    /// The time now.
    fn now(&self) -> SystemTime;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemWallClock;

impl WallClock for SystemWallClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Midnight UTC after `now`: when Torn's daily read limit resets.
pub(super) fn next_utc_day(now: SystemTime) -> SystemTime {
    const DAY: u64 = 86_400;
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    UNIX_EPOCH + Duration::from_secs((secs / DAY + 1) * DAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_utc_day_starts_at_midnight() {
        let t = UNIX_EPOCH + Duration::from_secs(86_400 * 20_000 + 3_600);
        assert_eq!(
            next_utc_day(t),
            UNIX_EPOCH + Duration::from_secs(86_400 * 20_001)
        );
        let midnight = UNIX_EPOCH + Duration::from_secs(86_400 * 20_001);
        assert_eq!(
            next_utc_day(midnight),
            UNIX_EPOCH + Duration::from_secs(86_400 * 20_002)
        );
    }
}
