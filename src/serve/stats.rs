//! What this process saw: calls per minute, Torn error codes, and each owner's calls in
//! the last window, for `/__torn_quota/status`. Shared state across processes (the quota
//! itself) comes from the limiter, not from here.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::limiter::TornUserId;

/// Minutes of history kept for `rpm` and `errors`.
pub(crate) const MINUTES: usize = 15;
/// Calls remembered per owner: an owner's window can hold more calls than this only
/// through cache hits, and counting those roughly is enough.
const PER_OWNER_CAP: usize = 10_000;
/// Owners remembered at most: a flood of distinct keys must not grow memory without end.
const OWNERS_CAP: usize = 50_000;

/// One minute of history.
#[derive(Debug, Default, Clone)]
struct Minute {
    /// Minutes since the process started.
    index: u64,
    calls: u64,
    errors: BTreeMap<u16, u64>,
}

/// One owner's recent calls: when, and whether the answer was a code 5.
#[derive(Debug, Default)]
struct OwnerCalls {
    calls: VecDeque<(Instant, bool)>,
}

/// An owner's calls and code 5s in the last window, from this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OwnerSeen {
    pub(crate) owner: TornUserId,
    pub(crate) calls: u64,
    pub(crate) code5: u64,
}

/// Counters of one gateway process.
#[derive(Debug)]
pub(crate) struct Stats {
    started: Instant,
    window: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    minutes: VecDeque<Minute>,
    owners: HashMap<TornUserId, OwnerCalls>,
}

impl Stats {
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            started: Instant::now(),
            window,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Time since the gateway started.
    pub(crate) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// One answered call: for `owner` when known, with Torn's error `code` when it was one.
    pub(crate) fn record(&self, owner: Option<TornUserId>, code: Option<u16>) {
        let now = Instant::now();
        let minute = self.minute_of(now);
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let m = current(&mut inner.minutes, minute);
        m.calls += 1;
        if let Some(code) = code {
            *m.errors.entry(code).or_default() += 1;
        }
        if let Some(owner) = owner {
            if inner.owners.len() >= OWNERS_CAP && !inner.owners.contains_key(&owner) {
                self.forget_idle(&mut inner, now);
            }
            if inner.owners.len() < OWNERS_CAP || inner.owners.contains_key(&owner) {
                let calls = &mut inner.owners.entry(owner).or_default().calls;
                if calls.len() >= PER_OWNER_CAP {
                    calls.pop_front();
                }
                calls.push_back((now, code == Some(5)));
            }
        }
    }

    /// Calls per minute, oldest first, up to the last 15 minutes (the current one last).
    pub(crate) fn rpm(&self) -> Vec<u64> {
        let minute = self.minute_of(Instant::now());
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let first = (minute + 1).saturating_sub(MINUTES as u64);
        (first..=minute)
            .map(|i| {
                inner
                    .minutes
                    .iter()
                    .find(|m| m.index == i)
                    .map_or(0, |m| m.calls)
            })
            .collect()
    }

    /// Torn error codes answered in the last 15 minutes, by code.
    pub(crate) fn errors(&self) -> BTreeMap<u16, u64> {
        let minute = self.minute_of(Instant::now());
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all = BTreeMap::new();
        for m in inner
            .minutes
            .iter()
            .filter(|m| m.index + MINUTES as u64 > minute)
        {
            for (code, n) in &m.errors {
                *all.entry(*code).or_default() += n;
            }
        }
        all
    }

    /// Every owner with a call in the last window, by id.
    pub(crate) fn owners(&self) -> Vec<OwnerSeen> {
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        self.forget_idle(&mut inner, now);
        let mut seen: Vec<OwnerSeen> = inner
            .owners
            .iter()
            .map(|(owner, c)| OwnerSeen {
                owner: *owner,
                calls: c.calls.len() as u64,
                code5: c.calls.iter().filter(|(_, five)| *five).count() as u64,
            })
            .collect();
        seen.sort_by_key(|s| s.owner.get());
        seen
    }

    /// Drops calls older than a window, and owners left with none.
    fn forget_idle(&self, inner: &mut Inner, now: Instant) {
        for c in inner.owners.values_mut() {
            while c
                .calls
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > self.window)
            {
                c.calls.pop_front();
            }
        }
        inner.owners.retain(|_, c| !c.calls.is_empty());
    }

    fn minute_of(&self, at: Instant) -> u64 {
        at.duration_since(self.started).as_secs() / 60
    }
}

/// The bucket of `minute`, made (and the oldest dropped) when it is new.
fn current(minutes: &mut VecDeque<Minute>, minute: u64) -> &mut Minute {
    if minutes.back().is_none_or(|m| m.index != minute) {
        minutes.push_back(Minute {
            index: minute,
            ..Minute::default()
        });
        while minutes.len() > MINUTES {
            minutes.pop_front();
        }
    }
    minutes.back_mut().expect("just pushed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_calls_errors_and_owners() {
        let s = Stats::new(Duration::from_secs(60));
        let four = TornUserId::new(4);
        s.record(Some(four), None);
        s.record(Some(four), Some(5));
        s.record(None, Some(1));
        assert_eq!(s.rpm(), vec![3]);
        assert_eq!(s.errors(), BTreeMap::from([(1, 1), (5, 1)]));
        assert_eq!(
            s.owners(),
            vec![OwnerSeen {
                owner: four,
                calls: 2,
                code5: 1
            }]
        );
    }
}
