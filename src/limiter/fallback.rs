//! The local fallback: how a limiter whose Redis is unreachable keeps deciding, at each
//! worker's share of the limit, and how it notices Redis is back.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::memory::MemoryBackend;
use super::{OnRedisDown, RateLimitConfig, SystemClock};
use crate::error::Error;

/// The degraded spell of a limiter whose Redis is unreachable.
#[derive(Debug)]
pub(super) struct Fallback {
    pub(super) local: MemoryBackend,
    workers: NonZeroU32,
    down: Mutex<Option<Down>>,
}

/// Since when Redis has been unreachable, and when to try it again.
#[derive(Debug, Clone, Copy)]
pub(super) struct Down {
    pub(super) since: Instant,
    retry_at: Instant,
}

impl Fallback {
    /// The local fallback `config`'s failure policy asks for, if any.
    pub(super) fn for_config(config: &RateLimitConfig) -> Option<Self> {
        match config.on_redis_down() {
            OnRedisDown::FailFast => None,
            OnRedisDown::LocalFallback { workers } => Some(Self {
                local: MemoryBackend::new(
                    Arc::new(SystemClock::default()),
                    config.cleanup_interval().as_millis() as u64,
                ),
                workers,
                down: Mutex::new(None),
            }),
        }
    }

    pub(super) fn state(&self) -> Option<Down> {
        *self.down.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// True while Redis failed recently enough that calls should not wait on it again.
    pub(super) fn skip_redis(&self) -> bool {
        self.state().is_some_and(|d| Instant::now() < d.retry_at)
    }

    /// Each worker's share when it must decide alone: the total stays under the limit.
    pub(super) fn share(&self, limit: u32) -> u32 {
        limit / self.workers.get()
    }

    pub(super) fn failed(&self, error: &Error, retry_in: Duration) {
        let now = Instant::now();
        let mut down = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(d) = down.as_mut() {
            d.retry_at = now + retry_in;
        } else {
            tracing::warn!(
                error = %error,
                workers = self.workers.get(),
                "redis unreachable: deciding locally at limit / workers until it answers"
            );
            *down = Some(Down {
                since: now,
                retry_at: now + retry_in,
            });
            crate::telemetry::degraded_enter();
        }
    }

    pub(super) fn recovered(&self) {
        let mut down = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(d) = down.take() {
            crate::telemetry::degraded_leave(true);
            tracing::warn!(
                degraded_ms = d.since.elapsed().as_millis() as u64,
                "redis answers again: shared limits restored"
            );
        }
    }
}

impl Drop for Fallback {
    /// A limiter dropped while degraded no longer holds the process's degraded gauge up.
    fn drop(&mut self) {
        if self
            .down
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
        {
            crate::telemetry::degraded_leave(false);
        }
    }
}
