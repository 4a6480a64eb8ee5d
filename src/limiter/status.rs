//! [`Status`]: a bucket as it stands, read without consuming anything.

use std::time::Duration;

use super::backend::RawStatus;
#[cfg(doc)]
use crate::limiter::Limiter;

/// A bucket as it stands, from [`Limiter::status`]. Reading it consumes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Status {
    /// Units granted in the last window.
    pub used: u32,
    /// The limit in force (a run-time override wins over the configuration).
    pub limit: u32,
    /// Units a request would be granted right now (0 while penalized).
    pub remaining: u32,
    /// Wait until the whole limit is free again.
    pub reset_after: Duration,
    /// Wait until a penalty ends (zero when none).
    pub penalty: Duration,
    /// True when the local fallback answered because Redis was unreachable.
    pub degraded: bool,
}

pub(super) fn to_status(raw: RawStatus, degraded: bool) -> Status {
    Status {
        used: raw.used,
        limit: raw.limit,
        remaining: raw.remaining,
        reset_after: Duration::from_millis(raw.reset_after_ms),
        penalty: Duration::from_millis(raw.penalty_ms),
        degraded,
    }
}
