//! The local fallback: how a limiter whose Redis is unreachable keeps deciding, at each
//! worker's share of the limit, and how it notices Redis is back.

//!
//! The hand-over from Redis is where a fallback that starts from empty windows admits what
//! Torn still counts: the last shared window, up to the whole limit. So an owner's local
//! window starts from this process's journal of its own grants (exact when it is the only
//! worker), and with other workers, whose grants of the last window this process cannot
//! know, nothing is granted until they have all left Torn's window: one window, plus the
//! hold of a call still in flight, after Redis was lost.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::backend::{Ask, RawDecision};
use super::memory::MemoryBackend;
use super::{OnRedisDown, RateLimitConfig, SystemClock, TornUserId};
use crate::error::{Error, Result};

/// The degraded spell of a limiter whose Redis is unreachable.
#[derive(Debug)]
pub(super) struct Fallback {
    pub(super) local: MemoryBackend,
    workers: NonZeroU32,
    down: Mutex<Option<Down>>,
    /// Owners whose local window this spell has started from the journal.
    seeded: Mutex<HashSet<TornUserId>>,
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
                seeded: Mutex::new(HashSet::new()),
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
            // Grants made on Redis since the last spell: each owner starts again from the
            // journal.
            self.seeded
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
            crate::telemetry::degraded_enter();
        }
    }

    /// Decides `ask` (already at this worker's share) locally for `user`. The owner's local
    /// window starts from `journal` (this process's grants still in their window) on its
    /// first decision of the spell; with other workers, nothing is granted until one window
    /// plus the ask's hold has passed since Redis was lost (the wait is capped at
    /// `retry_in`, so that the caller tries Redis again meanwhile).
    pub(super) fn decide(
        &self,
        user: TornUserId,
        ask: &Ask<'_>,
        journal: impl FnOnce() -> Vec<(i64, u32, u64)>,
        retry_in: Duration,
    ) -> Result<RawDecision> {
        if self
            .seeded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(user)
        {
            self.local.reseed(user, &journal());
        }
        if self.workers.get() > 1
            && let Some(down) = self.state()
        {
            let others_clear =
                down.since + Duration::from_millis(ask.window_ms.saturating_add(ask.hold_ms));
            let now = Instant::now();
            if now < others_clear {
                let wait = (others_clear - now).min(retry_in);
                return Ok(RawDecision {
                    granted: false,
                    remaining: 0,
                    retry_after_ms: (wait.as_millis() as u64).max(1),
                    at_ms: self.local.clock().now_ms(),
                });
            }
        }
        self.local.acquire(user, ask)
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
