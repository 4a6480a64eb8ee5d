//! The local fallback: how a limiter whose Redis is unreachable keeps deciding, at each
//! worker's share of the limit, and how it notices Redis is back.

//!
//! The hand-over from Redis is where a fallback that starts from empty windows admits what
//! Torn still counts: the last shared window, up to the whole limit. So an owner's local
//! window starts from this process's journal of its own grants (exact when it is the only
//! worker). With other workers, whose grants of the last window this process cannot know,
//! the first window plus the hold of a call in flight after Redis was lost is a hand-over:
//! each worker then grants at most its share of what Redis last said the bucket had left,
//! provided Redis said so just before it was lost (within the connect and command timeouts
//! and [`FRESH_SLACK`]); otherwise nothing. A busy owner at full quota thus waits, and a
//! bucket with room (say, the per-IP one) goes on.
//!
//! The hand-back is the same problem the other way round. The first worker to reach Redis
//! again writes its journal back and would grant from a bucket that holds its own grants
//! of the window and those of the workers that came back before it, while the others still
//! decide locally, their grants not yet written back: it would grant their shares a second
//! time (the soak's code 5 after Redis restarted). So until the `settle` time has passed
//! since its spell ended (every worker, busy or idle, tried Redis again by then, and wrote
//! its journal back), a worker grants only what both Redis and its local decision allow
//! ([`Fallback::gate`]: its share, and during the hand-over its share of the room last
//! seen): each worker keeps to the local rules, whichever side of the hand-back it is on,
//! and those add up to the limit.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::backend::{Ask, RawDecision};
use super::memory::MemoryBackend;
use super::store::RedisBackend;
use super::{OnRedisDown, RateLimitConfig, SystemClock, TornUserId};
use crate::error::{Error, Result};

/// The degraded spell of a limiter whose Redis is unreachable.
#[derive(Debug)]
pub(super) struct Fallback {
    pub(super) local: MemoryBackend,
    workers: NonZeroU32,
    down: Mutex<Option<Down>>,
    /// The owners whose local window this spell has started from the journal, and the
    /// units each was granted during the spell's hand-over.
    handed: Mutex<HashMap<TornUserId, u32>>,
    /// How long before the failure was noticed an answer of Redis still describes the
    /// bucket: the failing call's connect and command timeouts, and [`FRESH_SLACK`].
    fresh: Duration,
    /// When the last spell ended, and the spell, while its hand-back lasts.
    returned: Mutex<Option<(Instant, Down)>>,
    /// How long the hand-back lasts: the longest another worker may take to write its
    /// journal back after Redis answers this one: an idle one notices at its next epoch
    /// heartbeat ([`HEARTBEAT`](super::store::HEARTBEAT)), then its watcher tries within
    /// [`WATCH_EVERY`] (or the reconnect interval, if shorter), plus a connect and a
    /// command timeout, and [`FRESH_SLACK`].
    settle: Duration,
}

/// What [`Fallback::gate`] says of a decision about to be asked of Redis.
#[derive(Debug, Clone, Copy)]
pub(super) enum Gate {
    /// No hand-back: Redis decides alone.
    Open,
    /// The local decision granted the units, stamped `stamp_ms` in the local window: ask
    /// Redis, and [`Fallback::ungate`] them if it does not grant.
    Held { stamp_ms: u64 },
    /// The local decision denied them: this denial, without asking Redis.
    Shut(RawDecision),
}

/// The longest a limiter's recovery watcher waits between two tries of Redis.
pub(super) const WATCH_EVERY: Duration = Duration::from_millis(250);

/// Added to the timeouts for an answer to count as fresh: about one round trip on a loaded
/// machine.
pub(super) const FRESH_SLACK: Duration = Duration::from_millis(100);

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
                handed: Mutex::new(HashMap::new()),
                fresh: config.connect_timeout() + config.command_timeout() + FRESH_SLACK,
                returned: Mutex::new(None),
                settle: super::store::HEARTBEAT
                    + config.reconnect_interval().min(WATCH_EVERY)
                    + config.connect_timeout()
                    + config.command_timeout()
                    + FRESH_SLACK,
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
            self.handed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
            crate::telemetry::degraded_enter();
        }
    }

    /// Decides `ask` (already at this worker's share) locally for `user`. The owner's local
    /// window starts from `redis`'s journal (this process's grants still in their window)
    /// on its first decision of the spell. With other workers, during the hand-over (one
    /// window plus the ask's hold after Redis was lost: when the store's first call
    /// failed, or this spell's start if earlier) at most this worker's share of what Redis
    /// last said the bucket had left, if it said so fresh, is granted (the wait is capped
    /// at `retry_in`, so that the caller tries Redis again meanwhile).
    pub(super) fn decide(
        &self,
        redis: &RedisBackend,
        user: TornUserId,
        ask: &Ask<'_>,
        retry_in: Duration,
    ) -> Result<RawDecision> {
        self.seed(user, || redis.journal_live(user));
        let Some(down) = self.spell().filter(|_| self.workers.get() > 1) else {
            return self.local.acquire(user, ask);
        };
        // Redis was lost when the first call of the store failed, which may be long before
        // this key space's first failure (its calls wait behind another key space's).
        let lost = redis
            .unreachable_since()
            .map(Instant::from_std)
            .map_or(down.since, |u| u.min(down.since));
        let handed_over = lost + Duration::from_millis(ask.window_ms.saturating_add(ask.hold_ms));
        let now = Instant::now();
        if now >= handed_over {
            return self.local.acquire(user, ask);
        }
        let fresh_since = lost.into_std().checked_sub(self.fresh);
        let budget =
            fresh_since.map_or(0, |since| redis.remaining_seen(user, since)) / self.workers.get();
        let mut handed = self.handed.lock().unwrap_or_else(PoisonError::into_inner);
        let used = handed.entry(user).or_default();
        if used.saturating_add(ask.cost) <= budget {
            let raw = self.local.acquire(user, ask)?;
            if raw.granted {
                *used += ask.cost;
            }
            return Ok(raw);
        }
        let wait = (handed_over - now).min(retry_in);
        Ok(RawDecision {
            granted: false,
            remaining: 0,
            retry_after_ms: (wait.as_millis() as u64).max(1),
            at_ms: self.local.clock().now_ms(),
        })
    }

    /// Starts `user`'s local window from `journal` on its first decision of the spell (or
    /// of the hand-back after it).
    fn seed(&self, user: TornUserId, journal: impl FnOnce() -> Vec<(i64, u32, u64)>) {
        let mut handed = self.handed.lock().unwrap_or_else(PoisonError::into_inner);
        if let std::collections::hash_map::Entry::Vacant(e) = handed.entry(user) {
            e.insert(0);
            self.local.reseed(user, &journal());
        }
    }

    /// Before `ask` goes to Redis: during a spell (Redis is being tried again) or its
    /// hand-back, and with other workers, the units must first be granted by this
    /// worker's local decision ([`decide`](Self::decide), with the same arguments): its
    /// share, and during the hand-over its share of the room last seen. Alone, or outside
    /// both, Redis decides. A cost above the share, which the local window could never
    /// grant, is left to Redis.
    pub(super) fn gate(
        &self,
        redis: &RedisBackend,
        user: TornUserId,
        ask: &Ask<'_>,
        retry_in: Duration,
    ) -> Result<Gate> {
        let share = self.share(ask.limit);
        if self.workers.get() == 1 || ask.cost > share.saturating_sub(ask.reserve) {
            return Ok(Gate::Open);
        }
        if self.spell().is_none() {
            return Ok(Gate::Open);
        }
        let local = Ask {
            limit: share,
            idempotency_id: None,
            ..*ask
        };
        let raw = self.decide(redis, user, &local, retry_in)?;
        Ok(if raw.granted {
            Gate::Held {
                stamp_ms: raw.at_ms + ask.hold_ms,
            }
        } else {
            Gate::Shut(raw)
        })
    }

    /// The spell in force: the current one, or the last one while its hand-back lasts.
    fn spell(&self) -> Option<Down> {
        self.state().or_else(|| {
            self.returned
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .filter(|(ended, _)| ended.elapsed() < self.settle)
                .map(|(_, spell)| spell)
        })
    }

    /// Gives back what [`gate`](Self::gate) held for a decision Redis did not grant.
    pub(super) fn ungate(&self, user: TornUserId, stamp_ms: u64, cost: u32) {
        self.local.refund(user, stamp_ms, cost, None);
    }

    pub(super) fn recovered(&self) {
        let mut down = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(d) = down.take() {
            *self.returned.lock().unwrap_or_else(PoisonError::into_inner) =
                Some((Instant::now(), d));
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
