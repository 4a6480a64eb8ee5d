//! [`OnRedisDown`]: the limiter's policy when Redis cannot answer.

use std::num::NonZeroU32;

/// What the limiter does when Redis cannot be reached or does not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnRedisDown {
    /// Return [`Error::Unavailable`](crate::Error::Unavailable) (or [`Error::Timeout`](crate::Error::Timeout)) at once. The default: a caller
    /// that cannot reach the shared count should not guess.
    #[default]
    FailFast,
    /// Decide in this process with a local limiter at `limit / workers` per window, so that
    /// `workers` processes deciding alone still stay under the shared limit together. Every
    /// such decision says [`degraded`](crate::Decision::is_degraded), and a log line marks
    /// the start and end of the degraded spell.
    LocalFallback {
        /// How many processes share each user's quota when Redis is gone.
        workers: NonZeroU32,
    },
}
