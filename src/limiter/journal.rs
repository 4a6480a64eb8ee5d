//! The journal: this process's own grants that still count, kept so that when Redis loses
//! its state (a restart without persistence, a failover to a replica behind, a flush) they
//! can be written back (`lua/restore.lua`) before anything new is granted.
//!
//! Bounded: an entry leaves once its stamp + window is behind the newest Redis time this
//! process has seen, so an owner holds at most the grants of one window (its limit: 100
//! entries for Torn's 100 per minute), and at most [`MAX_PER_OWNER`] whatever the window.
//! An entry is 32 bytes (checked by a test); with the map's overhead an owner at full quota costs about
//! 3.3 KB, an idle owner nothing (its deque is dropped once empty).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::PoisonError;

use crate::identity::TornUserId;

/// The most entries one owner keeps, whatever its window: MAX_UNITS grants.
pub(crate) const MAX_PER_OWNER: usize = 10_000;
/// Added to a degraded grant's estimated Redis stamp: the estimate trails Redis by up to
/// a round trip, and a record that left the window early would let Torn see one too many.
pub(crate) const DEGRADED_PAD_MS: u64 = 50;
/// Every this many pushes, owners not touched since are swept too.
const SWEEP_EVERY: u64 = 1024;

/// `granted_ms` of a grant Redis never saw (made by the local fallback).
const NOT_IN_REDIS: u64 = u64::MAX;

/// One grant: when Redis made it, its records' stamp (Redis ms, + hold when provisional)
/// and how many. 32 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// Names the grant for restore.lua, with the process. Wraps after 2^32 grants, long
    /// after the first one's window (the only span ids must be unique in) has passed.
    seq: u32,
    /// At most one day: [`crate::MAX_SPAN`].
    window_ms: u32,
    /// The Redis time of the decision, or [`NOT_IN_REDIS`].
    granted_ms: u64,
    /// The stamp written back: Redis's own, or for a settled or degraded grant an estimate
    /// padded so that it never leaves the window before Redis's (or Torn's) count does.
    stamp_ms: u64,
    /// How far before `stamp_ms` Redis's records may be stamped: 0 for Redis's own stamp;
    /// for a settled grant, down to the Redis time estimated before the settle was sent
    /// (the estimate trails Redis). Until then plus the window Redis certainly counts the
    /// grant: the short-bucket check trusts this, not the padded stamp, so that it has no
    /// blind spot just before a grant leaves (where a batch at full quota asks next).
    low_lag_ms: u32,
    cost: u32,
}

impl Entry {
    /// The earliest Redis's records of this grant may be stamped.
    fn low_ms(&self) -> u64 {
        self.stamp_ms.saturating_sub(u64::from(self.low_lag_ms))
    }
}

/// One owner's grants to write back: the longest window among them and `(id, stamp, cost)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rebuild {
    pub(crate) user: TornUserId,
    pub(crate) window_ms: u64,
    pub(crate) grants: Vec<(String, u64, u32)>,
}

/// The grants of one key space still inside their window.
#[derive(Debug)]
pub(crate) struct Journal {
    /// Makes grant ids unique across processes: restore.lua dedupes by id.
    process: u64,
    /// False when the configuration turned the journal off: nothing is kept.
    enabled: bool,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    owners: HashMap<TornUserId, VecDeque<Entry>>,
    next: u64,
    /// The newest Redis time seen, in ms: entries behind it by a window are gone.
    latest_ms: u64,
    /// When `latest_ms` was seen here: degraded grants are stamped from it.
    latest_at: Option<std::time::Instant>,
    /// Each owner's bucket as Redis last answered for it: units left, the Redis time of
    /// that answer, and when it arrived here.
    seen: HashMap<TornUserId, (u32, u64, std::time::Instant)>,
}

impl Inner {
    /// The Redis time now, estimated from the newest one seen (see [`Journal::redis_now`]).
    fn redis_now(&self) -> Option<u64> {
        let at = self.latest_at?;
        Some(self.latest_ms + at.elapsed().as_millis() as u64)
    }
}

/// How long an owner's last answer is kept for [`Journal::remaining_seen`].
const SEEN_FOR: std::time::Duration = std::time::Duration::from_secs(10);

impl Journal {
    /// A journal; one that keeps nothing when `enabled` is false.
    pub(crate) fn with(enabled: bool) -> Self {
        Self {
            process: rand::random(),
            enabled,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Whether anything is kept.
    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// Notes a grant Redis made at `now_ms` (its TIME) for `user`. With `call_id` set, a
    /// replay returns the first grant again: the same stamp and cost are noted once.
    ///
    /// Returns the units of this owner's earlier grants that Redis certainly still counted
    /// when it made this one: made before `now_ms` and inside their window by a margin.
    /// A bucket that counts fewer lost them (see `RedisBackend::acquire`). A replay
    /// answers 0: its decision is an old one.
    pub(crate) fn push(
        &self,
        user: TornUserId,
        now_ms: u64,
        stamp_ms: u64,
        cost: u32,
        window_ms: u64,
        call_id: bool,
    ) -> u64 {
        self.push_entry(user, now_ms, now_ms, stamp_ms, cost, window_ms, call_id)
    }

    #[allow(clippy::too_many_arguments)] // one private body behind push and push_degraded
    fn push_entry(
        &self,
        user: TornUserId,
        now_ms: u64,
        granted_ms: u64,
        stamp_ms: u64,
        cost: u32,
        window_ms: u64,
        call_id: bool,
    ) -> u64 {
        if !self.enabled {
            return 0;
        }
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        // Only a time Redis answered is noted: an estimate noted as seen would be padded
        // again by the next estimate, and the pads would add up to seconds ahead.
        if granted_ms != NOT_IN_REDIS && now_ms >= inner.latest_ms {
            inner.latest_ms = now_ms;
            inner.latest_at = Some(std::time::Instant::now());
        }
        inner.next += 1;
        let (next, latest) = (inner.next, inner.latest_ms);
        let entries = inner.owners.entry(user).or_default();
        prune(entries, latest);
        if call_id
            && entries
                .iter()
                .any(|e| e.stamp_ms == stamp_ms && e.cost == cost)
        {
            // An idempotent replay: already journaled.
            return 0;
        }
        let counted = if call_id {
            0
        } else {
            entries
                .iter()
                .filter(|e| {
                    // A grant of the same millisecond may have run after this one in
                    // Redis; a record counts while its stamp + window >= Redis's now.
                    e.granted_ms.saturating_add(1) < now_ms
                        && e.low_ms() + u64::from(e.window_ms) > now_ms
                })
                .map(|e| u64::from(e.cost))
                .sum()
        };
        if entries.len() >= MAX_PER_OWNER {
            entries.pop_front();
        }
        // Kept in push order; restore.lua inserts each in time order itself.
        entries.push_back(Entry {
            seq: next as u32,
            // The limiter refuses windows above one day, which fits.
            window_ms: u32::try_from(window_ms).unwrap_or(u32::MAX),
            granted_ms,
            stamp_ms,
            low_lag_ms: 0,
            cost,
        });
        if next % SWEEP_EVERY == 0 {
            inner.owners.retain(|_, e| {
                prune(e, latest);
                !e.is_empty()
            });
            inner.seen.retain(|_, (_, _, at)| at.elapsed() < SEEN_FOR);
        }
        counted
    }

    /// Notes a grant the local fallback made while Redis was unreachable. Its stamp is
    /// the Redis time estimated from the last one seen (plus [`DEGRADED_PAD_MS`], so that
    /// it never leaves the window early), + `hold_ms`: once Redis answers again, empty,
    /// it is written back with the rest. Nothing is noted before Redis was ever seen.
    ///
    /// Returns the stamp noted, by which [`Self::forget`] and [`Self::settle`] find it when
    /// the degraded grant is given back or settled.
    pub(crate) fn push_degraded(
        &self,
        user: TornUserId,
        hold_ms: u64,
        cost: u32,
        window_ms: u64,
    ) -> Option<u64> {
        if !self.enabled {
            return None;
        }
        let estimate = self.redis_now()? + DEGRADED_PAD_MS;
        // Without the hold: the local fallback's settle cannot find this entry (its stamp is
        // local), and a hold of a whole request timeout written back would keep the owner
        // full for that long after Redis returns. A degraded call still in flight then
        // may count a little short; docs/failover.md says so.
        let _ = hold_ms;
        self.push_entry(
            user,
            estimate,
            NOT_IN_REDIS,
            estimate,
            cost,
            window_ms,
            false,
        );
        Some(estimate)
    }

    /// Notes what Redis answered, at its time `at_ms`, that `user`'s bucket had left
    /// (granted or not): the local fallback's budget when Redis is lost right after.
    /// Answers of one coalesced call may arrive out of order: the latest answer wins, and
    /// of answers in the same millisecond the smallest.
    pub(crate) fn note_remaining(&self, user: TornUserId, at_ms: u64, remaining: u32) {
        if !self.enabled {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let now = std::time::Instant::now();
        inner
            .seen
            .entry(user)
            .and_modify(|(r, at, seen)| {
                if at_ms > *at || (at_ms == *at && remaining < *r) {
                    (*r, *at) = (remaining, at_ms);
                }
                *seen = now;
            })
            .or_insert((remaining, at_ms, now));
    }

    /// What `user`'s bucket had left when Redis last answered for it, if that was at or
    /// after `since`; 0 otherwise (an old answer says nothing about the window now).
    pub(crate) fn remaining_seen(&self, user: TornUserId, since: std::time::Instant) -> u32 {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner
            .seen
            .get(&user)
            .filter(|(_, _, at)| *at >= since)
            .map_or(0, |(remaining, _, _)| *remaining)
    }

    /// `user`'s grants still inside their window, for the local fallback to start from:
    /// `(ms from the estimated Redis now, cost, window)`, negative for records in the past,
    /// positive for provisional ones held ahead. Empty before Redis was ever seen.
    pub(crate) fn live(&self, user: TornUserId) -> Vec<(i64, u32, u64)> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(now) = inner.redis_now() else {
            return Vec::new();
        };
        inner.owners.get(&user).map_or_else(Vec::new, |entries| {
            entries
                .iter()
                .filter(|e| e.stamp_ms + u64::from(e.window_ms) >= now)
                .map(|e| {
                    let rel = i64::try_from(e.stamp_ms).unwrap_or(i64::MAX)
                        - i64::try_from(now).unwrap_or(i64::MAX);
                    (rel, e.cost, u64::from(e.window_ms))
                })
                .collect()
        })
    }

    /// Whether any owner has entries (some perhaps no longer in their window until the
    /// next sweep): nothing to write back otherwise.
    pub(crate) fn holds_any(&self) -> bool {
        !self
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .owners
            .is_empty()
    }

    /// The Redis time now, estimated from the last one seen: never ahead of Redis's, since
    /// that answer took a while to arrive. `None` before Redis was ever seen.
    pub(crate) fn redis_now(&self) -> Option<u64> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .redis_now()
    }

    /// Notes that the grant stamped `stamp_ms` was settled: Redis now counts it one window
    /// from about now (the Redis time estimated from the last one seen, plus
    /// [`DEGRADED_PAD_MS`] so it never leaves early), not from its provisional stamp.
    /// `sent_ms`, the [`redis_now`](Self::redis_now) read before the settle went out, is
    /// the earliest Redis can have restamped it (`None`: a degraded grant, which Redis
    /// never saw).
    pub(crate) fn settle(&self, user: TornUserId, stamp_ms: u64, cost: u32, sent_ms: Option<u64>) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(now) = inner.redis_now().map(|t| t + DEGRADED_PAD_MS) else {
            return;
        };
        if let Some(e) = inner.owners.get_mut(&user).and_then(|entries| {
            entries
                .iter_mut()
                .rev()
                .find(|e| e.stamp_ms == stamp_ms && e.cost == cost)
        }) {
            e.stamp_ms = now;
            e.low_lag_ms = sent_ms.map_or(0, |sent| {
                u32::try_from(now.saturating_sub(sent)).unwrap_or(u32::MAX)
            });
        }
    }

    /// Forgets a refunded grant: Redis no longer counts it, so neither may a rebuild.
    pub(crate) fn forget(&self, user: TornUserId, stamp_ms: u64, cost: u32) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entries) = inner.owners.get_mut(&user) {
            if let Some(i) = entries
                .iter()
                .rposition(|e| e.stamp_ms == stamp_ms && e.cost == cost)
            {
                entries.remove(i);
            }
            if entries.is_empty() {
                inner.owners.remove(&user);
            }
        }
    }

    /// Every owner's grants still inside their window, to write back. restore.lua judges
    /// "still inside" again by the new Redis's TIME.
    pub(crate) fn rebuilds(&self) -> Vec<Rebuild> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let latest = inner.latest_ms;
        inner.owners.retain(|_, e| {
            prune(e, latest);
            !e.is_empty()
        });
        inner
            .owners
            .iter()
            .map(|(user, entries)| Rebuild {
                user: *user,
                window_ms: entries
                    .iter()
                    .map(|e| u64::from(e.window_ms))
                    .max()
                    .unwrap_or(1),
                grants: entries
                    .iter()
                    .map(|e| {
                        (
                            format!("{:016x}-{}", self.process, e.seq),
                            e.stamp_ms,
                            e.cost,
                        )
                    })
                    .collect(),
            })
            .collect()
    }

    /// Owners and entries held now (for tests and the memory figure).
    #[cfg(test)]
    pub(crate) fn size(&self) -> (usize, usize) {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (
            inner.owners.len(),
            inner.owners.values().map(VecDeque::len).sum(),
        )
    }
}

/// Drops the entries whose records have left the window by `latest_ms` (acquire.lua's
/// rule: stamp + window < now). Entries are in push order, which is nearly time order: a
/// longer hold may sit behind a shorter one, so pruning stops at the first live entry and
/// the rest wait for a later sweep.
fn prune(entries: &mut VecDeque<Entry>, latest_ms: u64) {
    while entries
        .front()
        .is_some_and(|e| e.stamp_ms + u64::from(e.window_ms) < latest_ms)
    {
        entries.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_leave_with_their_window_and_refunds_are_forgotten() {
        let j = Journal::with(true);
        let u = TornUserId::new(4);
        j.push(u, 1_000, 1_000, 1, 100, false);
        j.push(u, 1_050, 1_050, 2, 100, false);
        j.forget(u, 1_050, 2);
        assert_eq!(j.size(), (1, 1));
        j.push(u, 1_101, 1_101, 1, 100, false);
        assert_eq!(j.size(), (1, 1), "the grant at 1000 left at 1101");
        let r = j.rebuilds();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].grants.len(), 1);
        assert_eq!(r[0].grants[0].1, 1_101);
    }

    #[test]
    fn a_settled_grant_is_written_back_from_its_settle_not_its_hold() {
        let j = Journal::with(true);
        let u = TornUserId::new(4);
        // Granted at 1000 with a 10 s hold: provisional until 11000.
        j.push(u, 1_000, 11_000, 1, 100, false);
        let sent = j.redis_now().unwrap();
        j.settle(u, 11_000, 1, Some(sent));
        let stamp = j.rebuilds()[0].grants[0].1;
        assert!(
            (1_000 + DEGRADED_PAD_MS..2_000).contains(&stamp),
            "settled at about 1000 (+ the pad), not at its provisional 11000: {stamp}"
        );
        // The check counts it from when the settle was sent, without the pad: up to the
        // last millisecond before that plus the window, and not after.
        assert_eq!(j.push(u, sent + 99, sent + 99, 1, 100, false), 1);
        assert_eq!(
            j.push(u, sent + 101, sent + 101, 1, 100, false),
            1,
            "only the grant at sent + 99"
        );
    }

    #[test]
    fn a_journal_turned_off_keeps_nothing() {
        let j = Journal::with(false);
        let u = TornUserId::new(3);
        assert_eq!(j.push(u, 1_000, 1_000, 1, 100, false), 0);
        j.push_degraded(u, 0, 1, 100);
        assert_eq!(j.size(), (0, 0));
        assert!(j.live(u).is_empty() && j.rebuilds().is_empty());
    }

    #[test]
    fn degraded_stamps_do_not_run_ahead() {
        let j = Journal::with(true);
        let u = TornUserId::new(2);
        j.push(u, 10_000, 10_000, 1, 1_000, false);
        let stamps: Vec<u64> = (0..1_000)
            .map(|_| j.push_degraded(u, 0, 1, 1_000).unwrap())
            .collect();
        // Each is the last Redis time + the time since + one pad, never pads piled up.
        let last = *stamps.last().unwrap();
        assert!(
            last < 10_000 + DEGRADED_PAD_MS + 1_000,
            "1000 degraded grants ran the estimate to {last}"
        );
    }

    #[test]
    fn remaining_seen_is_the_last_answer_only_while_fresh() {
        let j = Journal::with(true);
        let u = TornUserId::new(11);
        let before = std::time::Instant::now();
        assert_eq!(j.remaining_seen(u, before), 0, "never answered");
        j.note_remaining(u, 100, 7);
        j.note_remaining(u, 101, 5);
        // An answer of the same call arriving late changes nothing.
        j.note_remaining(u, 100, 9);
        assert_eq!(j.remaining_seen(u, before), 5);
        j.note_remaining(u, 101, 4);
        assert_eq!(j.remaining_seen(u, before), 4);
        let after = std::time::Instant::now() + std::time::Duration::from_millis(1);
        assert_eq!(j.remaining_seen(u, after), 0, "answered before `since`");
        assert_eq!(j.remaining_seen(TornUserId::new(12), before), 0);
    }

    #[test]
    fn an_entry_is_32_bytes() {
        // The memory figure in the module docs and docs/failover.md rests on it.
        assert_eq!(std::mem::size_of::<Entry>(), 32);
    }

    #[test]
    fn push_answers_what_redis_must_still_count() {
        let j = Journal::with(true);
        let u = TornUserId::new(6);
        assert_eq!(j.push(u, 1_000, 1_000, 2, 1_000, false), 0);
        // The same millisecond: Redis may have run the two in either order.
        assert_eq!(j.push(u, 1_000, 1_000, 1, 1_000, false), 0);
        assert_eq!(j.push(u, 1_500, 1_500, 1, 1_000, false), 3);
        // A grant the fallback made is not in Redis until a rebuild writes it.
        j.push_degraded(u, 0, 5, 1_000);
        assert_eq!(j.push(u, 1_800, 1_800, 1, 1_000, false), 4);
        // Up to the last millisecond of their window the first ones still count; past it
        // only the grant at 1500 and later do.
        assert_eq!(j.push(u, 1_999, 1_999, 1, 1_000, false), 5);
        assert_eq!(j.push(u, 2_000, 2_000, 1, 1_000, false), 2);
        // Another owner's grants never count for this one.
        assert_eq!(j.push(TornUserId::new(7), 2_010, 2_010, 1, 1_000, false), 0);
        // A replay is an old decision: nothing to compare.
        assert_eq!(j.push(u, 2_010, 2_010, 9, 1_000, true), 0);
    }

    #[test]
    fn live_entries_are_relative_to_the_estimated_redis_now() {
        let j = Journal::with(true);
        let u = TornUserId::new(8);
        assert!(j.live(u).is_empty());
        j.push(u, 10_000, 10_000, 2, 1_000, false);
        // Provisional: held 5 s ahead.
        j.push(u, 10_000, 15_000, 1, 1_000, false);
        let live = j.live(u);
        assert_eq!(live.len(), 2);
        assert!((-100..=0).contains(&live[0].0), "{live:?}");
        assert_eq!((live[0].1, live[0].2), (2, 1_000));
        assert!((4_900..=5_000).contains(&live[1].0), "{live:?}");
        assert!(j.live(TornUserId::new(9)).is_empty());
    }

    #[test]
    fn an_owner_is_bounded_and_replays_count_once() {
        let j = Journal::with(true);
        let u = TornUserId::new(5);
        for i in 0..(MAX_PER_OWNER as u64 + 50) {
            j.push(u, 10 + i, 10 + i, 1, 86_400_000, false);
        }
        assert_eq!(j.size(), (1, MAX_PER_OWNER));
        // A replayed call returns its first decision: same stamp and cost.
        let last = 10 + MAX_PER_OWNER as u64 + 49;
        j.push(u, last, last, 1, 86_400_000, true);
        assert_eq!(j.size(), (1, MAX_PER_OWNER));
    }
}
