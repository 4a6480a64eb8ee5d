//! Time for the in-memory backend, injected so tests control it. The Redis backend takes
//! its time from Redis `TIME` instead: workers' clocks may disagree, Redis has one clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// A source of milliseconds that never goes backwards.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Milliseconds since an arbitrary, fixed origin.
    fn now_ms(&self) -> u64;
}

/// The process's monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        // Starting at one window's worth of ms would not matter: the backend compares
        // differences only. Offset by 1 so that 0 can mean "never".
        self.origin.elapsed().as_millis() as u64 + 1
    }
}

/// A clock that moves only when told to: deterministic tests of the in-memory backend.
///
/// ```
/// use std::time::Duration;
/// use torn_quota::{Clock, ManualClock};
///
/// let clock = ManualClock::new(1_000);
/// clock.advance(Duration::from_millis(250));
/// assert_eq!(clock.now_ms(), 1_250);
/// ```
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicU64,
}

impl ManualClock {
    /// A clock reading `start_ms`.
    pub fn new(start_ms: u64) -> Self {
        Self {
            now: AtomicU64::new(start_ms),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: std::time::Duration) {
        self.now.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}
