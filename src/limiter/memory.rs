//! The in-memory backend: the same rolling log as `lua/acquire.lua`, for one process
//! (the demo's default, fast unit tests, and the conservative fallback when Redis is down).

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::{Error, Result};
use crate::limiter::backend::{Ask, RawDecision, RawStatus};
use crate::limiter::{Clock, TornUserId};

#[derive(Debug)]
pub(crate) struct MemoryBackend {
    state: Mutex<State>,
    clock: Arc<dyn Clock>,
    cleanup_every_ms: u64,
}

#[derive(Debug, Default)]
struct State {
    buckets: HashMap<TornUserId, Bucket>,
    overrides: HashMap<TornUserId, NonZeroU32>,
    replies: HashMap<(TornUserId, String), (RawDecision, u64)>,
    last_sweep_ms: u64,
}

#[derive(Debug, Default)]
struct Bucket {
    /// Grants oldest first, as (time ms, units); units at one instant share an entry.
    log: VecDeque<(u64, u32)>,
    used: u64,
    penalty_until_ms: u64,
    /// When the whole bucket (log and penalty) may be forgotten.
    idle_at_ms: u64,
    /// The longest window the bucket has been asked with while it lived: a caller with a
    /// shorter one is decided with it, so that it never cuts records a longer-window
    /// caller still counts (as `lua/acquire.lua`'s trailer record).
    window_ms: u64,
}

impl Bucket {
    /// The window in force for a caller asking with `asked`: the longest so far.
    fn window(&mut self, asked: u64) -> u64 {
        self.window_ms = self.window_ms.max(asked);
        self.window_ms
    }

    /// Drops the records that have left the window: stamp + window < now, as in
    /// `lua/acquire.lua` (a clock floored to the millisecond must not let a grant leave
    /// before one whole real window has passed).
    fn trim(&mut self, now: u64, window: u64) {
        // Before one window has passed since the clock's origin nothing can have expired.
        let Some(horizon) = now.checked_sub(window + 1) else {
            return;
        };
        while let Some(&(ts, units)) = self.log.front() {
            if ts > horizon {
                break;
            }
            self.log.pop_front();
            self.used -= u64::from(units);
        }
    }

    /// Adds `units` stamped `ts`, in time order (provisional stamps may lie ahead of now).
    fn insert(&mut self, ts: u64, units: u32, window: u64) {
        let pos = self.log.partition_point(|&(t, _)| t <= ts);
        match pos.checked_sub(1).map(|i| &mut self.log[i]) {
            Some((t, u)) if *t == ts => *u += units,
            _ => self.log.insert(pos, (ts, units)),
        }
        self.used += u64::from(units);
        self.idle_at_ms = self.idle_at_ms.max(ts + window + 1);
    }

    /// Wait until `excess` of the oldest units have left the window.
    fn wait_for(&self, excess: u64, now: u64, window: u64) -> u64 {
        let mut freed = 0;
        for &(ts, units) in &self.log {
            freed += u64::from(units);
            if freed >= excess {
                return (ts + window + 1).saturating_sub(now);
            }
        }
        0
    }
}

impl MemoryBackend {
    /// The clock it decides by (a sibling shares it).
    pub(crate) fn clock(&self) -> Arc<dyn Clock> {
        Arc::clone(&self.clock)
    }

    pub(crate) fn new(clock: Arc<dyn Clock>, cleanup_every_ms: u64) -> Self {
        Self {
            state: Mutex::new(State::default()),
            clock,
            cleanup_every_ms,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere cannot leave a bucket half-updated in a way that over-admits:
        // every mutation below completes before it can panic, so the state stays usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn acquire(&self, user: TornUserId, ask: &Ask<'_>) -> Result<RawDecision> {
        let now = self.clock.now_ms();
        let mut state = self.lock();
        state.sweep(now, self.cleanup_every_ms);
        if let Some(id) = ask.idempotency_id
            && let Some((reply, expires)) = state.replies.get(&(user, id.to_owned()))
            && *expires > now
        {
            return Ok(*reply);
        }
        let limit = state.overrides.get(&user).map_or(ask.limit, |l| l.get());
        let effective = limit.saturating_sub(ask.reserve);
        if ask.cost > effective {
            return Err(Error::CostExceedsLimit {
                cost: ask.cost,
                limit: effective,
            });
        }
        let bucket = state.buckets.entry(user).or_default();
        let window = bucket.window(ask.window_ms);
        bucket.trim(now, window);
        let penalty = bucket.penalty_until_ms.saturating_sub(now);
        let (used, cost, effective) = (bucket.used, u64::from(ask.cost), u64::from(effective));
        let window_ms = window;
        let reply = if penalty == 0 && used + cost <= effective {
            bucket.insert(now + ask.hold_ms, ask.cost, window);
            RawDecision {
                granted: true,
                remaining: (effective - used - cost) as u32,
                retry_after_ms: 0,
                at_ms: now,
            }
        } else {
            let excess = (used + cost).saturating_sub(effective);
            let wait = if excess > 0 {
                bucket.wait_for(excess, now, window)
            } else {
                0
            };
            RawDecision {
                granted: false,
                remaining: if penalty > 0 {
                    0
                } else {
                    effective.saturating_sub(used) as u32
                },
                retry_after_ms: penalty.max(wait).max(1),
                at_ms: now,
            }
        };
        if let Some(id) = ask.idempotency_id {
            let ttl = if reply.granted {
                window_ms + 1 + ask.hold_ms
            } else {
                reply.retry_after_ms
            };
            state
                .replies
                .insert((user, id.to_owned()), (reply, now + ttl));
        }
        Ok(reply)
    }

    pub(crate) fn status(&self, user: TornUserId, limit: u32, window_ms: u64) -> RawStatus {
        let now = self.clock.now_ms();
        let mut state = self.lock();
        let limit = state.overrides.get(&user).map_or(limit, |l| l.get());
        let Some(bucket) = state.buckets.get_mut(&user) else {
            return RawStatus {
                used: 0,
                limit,
                remaining: limit,
                reset_after_ms: 0,
                penalty_ms: 0,
            };
        };
        let window_ms = bucket.window_ms.max(window_ms);
        bucket.trim(now, window_ms);
        let penalty = bucket.penalty_until_ms.saturating_sub(now);
        let newest_free = bucket
            .log
            .back()
            .map_or(0, |&(ts, _)| (ts + window_ms + 1).saturating_sub(now));
        RawStatus {
            used: bucket.used as u32,
            limit,
            remaining: if penalty > 0 {
                0
            } else {
                u64::from(limit).saturating_sub(bucket.used) as u32
            },
            reset_after_ms: penalty.max(newest_free),
            penalty_ms: penalty,
        }
    }

    pub(crate) fn penalize(&self, user: TornUserId, hold_ms: u64) -> u64 {
        let now = self.clock.now_ms();
        let mut state = self.lock();
        let bucket = state.buckets.entry(user).or_default();
        bucket.penalty_until_ms = bucket.penalty_until_ms.max(now + hold_ms);
        bucket.idle_at_ms = bucket.idle_at_ms.max(bucket.penalty_until_ms);
        bucket.penalty_until_ms - now
    }

    pub(crate) fn refund(
        &self,
        user: TornUserId,
        at_ms: u64,
        cost: u32,
        idempotency_id: Option<&str>,
    ) -> u32 {
        let mut state = self.lock();
        if let Some(id) = idempotency_id {
            state.replies.remove(&(user, id.to_owned()));
        }
        let Some(bucket) = state.buckets.get_mut(&user) else {
            return 0;
        };
        let Some(pos) = bucket.log.iter().position(|&(ts, _)| ts == at_ms) else {
            return 0;
        };
        let units = &mut bucket.log[pos].1;
        let back = (*units).min(cost);
        *units -= back;
        if *units == 0 {
            bucket.log.remove(pos);
        }
        bucket.used -= u64::from(back);
        back
    }

    /// Restamps up to `cost` units stamped `stamp_ms` with now, unless they have left the
    /// window. Returns the units restamped.
    pub(crate) fn settle(&self, user: TornUserId, stamp_ms: u64, cost: u32, window_ms: u64) -> u32 {
        let now = self.clock.now_ms();
        let mut state = self.lock();
        let Some(bucket) = state.buckets.get_mut(&user) else {
            return 0;
        };
        let window_ms = bucket.window(window_ms);
        if stamp_ms + window_ms < now {
            return 0;
        }
        let Ok(pos) = bucket.log.binary_search_by_key(&stamp_ms, |&(ts, _)| ts) else {
            return 0;
        };
        let units = &mut bucket.log[pos].1;
        let moved = (*units).min(cost);
        *units -= moved;
        if *units == 0 {
            bucket.log.remove(pos);
        }
        bucket.used -= u64::from(moved);
        bucket.insert(now, moved, window_ms);
        moved
    }

    /// Replaces `user`'s log with `records` (`(ms from now, units, window)`, as
    /// [`Journal::live`](crate::limiter::journal::Journal::live) gives them), keeping its
    /// penalty: the local fallback starts an owner from what this process granted on Redis.
    pub(crate) fn reseed(&self, user: TornUserId, records: &[(i64, u32, u64)]) {
        let now = self.clock.now_ms();
        let mut state = self.lock();
        let bucket = state.buckets.entry(user).or_default();
        bucket.log.clear();
        bucket.used = 0;
        for &(rel, units, window) in records {
            // A record older than the clock's origin is kept at the origin: it then leaves
            // later than it would have, never earlier.
            let ts = now.saturating_add_signed(rel);
            let window = bucket.window(window);
            bucket.insert(ts, units, window);
        }
    }

    /// Records `cost` units now, whatever the limit or a penalty says.
    pub(crate) fn record(&self, user: TornUserId, cost: u32, window_ms: u64) {
        let now = self.clock.now_ms();
        let mut state = self.lock();
        let bucket = state.buckets.entry(user).or_default();
        let window_ms = bucket.window(window_ms);
        bucket.trim(now, window_ms);
        bucket.insert(now, cost, window_ms);
    }

    pub(crate) fn set_user_limit(&self, user: TornUserId, limit: Option<NonZeroU32>) {
        let mut state = self.lock();
        match limit {
            Some(l) => state.overrides.insert(user, l),
            None => state.overrides.remove(&user),
        };
    }

    /// Buckets (and idempotency records) held right now: the memory an idle user costs.
    pub(crate) fn tracked(&self) -> usize {
        let now = self.clock.now_ms();
        let mut state = self.lock();
        state.sweep(now, 0);
        state.buckets.len() + state.replies.len()
    }
}

impl State {
    fn sweep(&mut self, now: u64, every_ms: u64) {
        if now.saturating_sub(self.last_sweep_ms) < every_ms {
            return;
        }
        self.last_sweep_ms = now;
        self.buckets.retain(|_, b| b.idle_at_ms > now);
        self.replies.retain(|_, (_, expires)| *expires > now);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::limiter::ManualClock;

    fn ask(limit: u32, cost: u32) -> Ask<'static> {
        Ask {
            limit,
            window_ms: 1_000,
            cost,
            reserve: 0,
            hold_ms: 0,
            idempotency_id: None,
        }
    }

    /// The window's edge to the millisecond, on a clock the test moves: a grant stamped
    /// `t` (made somewhere in [t, t + 1) ms) counts until `t + window` and is gone at
    /// `t + window + 1`, so it leaves only once a whole real window has passed.
    #[test]
    fn window_edge_is_exact() {
        let clock = Arc::new(ManualClock::new(10_000));
        let m = MemoryBackend::new(clock.clone(), 60_000);
        let user = TornUserId::new(1);
        assert!(m.acquire(user, &ask(2, 2)).unwrap().granted);
        clock.advance(Duration::from_millis(400));
        let d = m.acquire(user, &ask(2, 1)).unwrap();
        assert_eq!((d.granted, d.retry_after_ms), (false, 601));
        clock.advance(Duration::from_millis(600));
        let d = m.acquire(user, &ask(2, 1)).unwrap();
        assert_eq!(
            (d.granted, d.retry_after_ms),
            (false, 1),
            "at t + window: still in"
        );
        clock.advance(Duration::from_millis(1));
        assert!(m.acquire(user, &ask(2, 2)).unwrap().granted);
    }

    #[test]
    fn retry_after_counts_the_units_that_must_leave() {
        let clock = Arc::new(ManualClock::new(0));
        let m = MemoryBackend::new(clock.clone(), 60_000);
        let user = TornUserId::new(1);
        for _ in 0..3 {
            assert!(m.acquire(user, &ask(3, 1)).unwrap().granted);
            clock.advance(Duration::from_millis(100));
        }
        // Grants at 0, 100, 200; now 300. Two units fit once the two oldest leave: at 1101.
        let d = m.acquire(user, &ask(3, 2)).unwrap();
        assert_eq!((d.granted, d.remaining, d.retry_after_ms), (false, 0, 801));
    }
}
