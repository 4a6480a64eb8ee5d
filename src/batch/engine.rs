//! The scheduler behind [`BatchHandler::run`]: one coordinating loop that owns all state
//! (no locks), and a set of requests in flight.
//!
//! Each turn it fills the free slots: for the owners with the most room first, it takes
//! as many units as it has requests ready for that owner from the [quota gate](crate::gate)
//! (one ticket per request, the owner's, the IP's and the share's units together, all
//! asked in one burst), and sends them at once on the owner's least-recently-used keys.
//! Units are never taken ahead of sending: Torn counts a request when it arrives. Each
//! ticket is settled on its own request's answer, or given back when the request never
//! reached Torn. Where legacy decides (it counts per key), each ticket is asked for the
//! key its request goes on.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::num::NonZeroU32;
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{
    BatchHandler, BatchOutcome, BatchRequest, BatchStats, OwnerStats, PoolKey, Progress,
    RequestError,
};
use crate::error::{Error, Result};
use crate::gate::{AccessNeeds, QuotaGate, Reach, Shares, Ticket};
use crate::identity::{AccessLevel, ApiKey, KeyInfo, TornUserId};
use crate::limiter::Priority;
use crate::torn::{ErrorClass, TornClient, TornErrorCode};

/// Access levels, lowest first: the pending queues are kept per level needed.
const LEVELS: usize = 5;

/// One distinct fetch: identical requests share it.
struct Fetch {
    path: String,
    min_access: AccessLevel,
    priority: Priority,
    /// The requests it answers.
    indices: Vec<usize>,
    /// Sends that ended in a retryable failure.
    failures: u32,
    /// Its (section, selection), whose access need the batch learns.
    selection: Option<String>,
}

struct KeySlot {
    key: ApiKey,
    access: AccessLevel,
    usable: bool,
    /// The turn it was last used in: the owner sends on its least-recently-used key.
    last_used: u64,
}

struct Owner {
    id: TornUserId,
    keys: Vec<KeySlot>,
    share_cap: Option<NonZeroU32>,
    /// Units the owner's bucket had left at the last decision; `None` before the first.
    room: Option<u32>,
    /// Not asked before this (its bucket is full, or Torn said code 5).
    ready_at: Instant,
    /// Held back by Torn's code 5 until this.
    held_until: Instant,
    /// The turn it last got units: among owners with equal room, the longest idle goes.
    last_turn: u64,
    stats: OwnerStats,
}

impl Owner {
    fn max_access(&self) -> Option<AccessLevel> {
        self.keys
            .iter()
            .filter(|k| k.usable)
            .map(|k| k.access)
            .max()
    }
}

/// What a request in flight comes back with.
struct Sent {
    fetch: usize,
    owner: usize,
    key: usize,
    /// Sent as the one probe of its selection on a key not known to have the access.
    probe: bool,
    /// Not sent after all: its ticket ran out before it could leave.
    stale: bool,
    result: Result<Value>,
}

pub(super) struct Engine<'h> {
    handler: &'h BatchHandler,
    fetches: Vec<Fetch>,
    /// Fetch ids waiting, per access level needed, in order.
    pending: [VecDeque<usize>; LEVELS],
    owners: Vec<Owner>,
    gate: QuotaGate,
    shares: Option<Shares>,
    access: AccessNeeds,
    /// Per selection, the lowest key level Torn answered it for.
    confirmed: HashMap<String, AccessLevel>,
    /// Selections with a probe in flight.
    probing: HashSet<String>,
    /// Not asked for quota before this: the gate's store failed, and is waited out.
    store_ready_at: Instant,
    store_backoff: Duration,
    results: Vec<Option<std::result::Result<Value, RequestError>>>,
    in_flight: JoinSet<Sent>,
    turn: u64,
    done: usize,
    failed: usize,
    sent: u64,
    rate_limited: u64,
    keys_dropped: usize,
    cached: usize,
    started: Instant,
    first_send: Option<Instant>,
    last_send: Option<Instant>,
}

impl<'h> Engine<'h> {
    pub(super) async fn start(
        handler: &'h BatchHandler,
        requests: Vec<BatchRequest>,
        pool: Vec<PoolKey>,
    ) -> Result<BatchOutcome> {
        let started = Instant::now();
        let total = requests.len();
        let gate = handler.client.gate().clone();
        let access = gate.access_needs();
        let mut engine = Self {
            handler,
            fetches: Vec::new(),
            pending: Default::default(),
            owners: Vec::new(),
            gate,
            shares: None,
            access,
            confirmed: HashMap::new(),
            probing: HashSet::new(),
            store_ready_at: started,
            store_backoff: Duration::ZERO,
            results: (0..total).map(|_| None).collect(),
            in_flight: JoinSet::new(),
            turn: 0,
            done: 0,
            failed: 0,
            sent: 0,
            rate_limited: 0,
            keys_dropped: 0,
            cached: 0,
            started,
            first_send: None,
            last_send: None,
        };
        let mut requests = requests;
        engine.raise_known_needs(&mut requests).await;
        engine.plan(requests);
        engine.resolve(pool).await?;
        let run = engine.run().await;
        if let Some(shares) = &engine.shares {
            shares.close().await;
        }
        run?;
        Ok(engine.finish())
    }

    /// Raises each request's access to what its selection is known to need (learned from
    /// an earlier code 16, here or in another process), so it goes to a key that can serve
    /// it at once.
    async fn raise_known_needs(&self, requests: &mut [BatchRequest]) {
        let mut needs: HashMap<String, Option<AccessLevel>> = HashMap::new();
        for r in requests.iter_mut() {
            let Some(selection) = AccessNeeds::selection_of(&r.path) else {
                continue;
            };
            #[allow(clippy::single_match_else)]
            let need = match needs.get(&selection) {
                Some(n) => *n,
                None => {
                    let n = self.access.need(&r.path).await;
                    needs.insert(selection, n);
                    n
                }
            };
            if let Some(need) = need
                && need > r.min_access
            {
                r.min_access = need;
            }
        }
    }

    /// Merges identical requests and queues the fetches, high priority first.
    fn plan(&mut self, requests: Vec<BatchRequest>) {
        let merge = self.handler.config.merge_identical;
        let mut seen: HashMap<(String, AccessLevel), usize> = HashMap::new();
        for (i, r) in requests.into_iter().enumerate() {
            if merge && let Some(&f) = seen.get(&(r.path.clone(), r.min_access)) {
                self.fetches[f].indices.push(i);
                if r.priority == Priority::High {
                    self.fetches[f].priority = Priority::High;
                }
                continue;
            }
            if merge {
                seen.insert((r.path.clone(), r.min_access), self.fetches.len());
            }
            self.fetches.push(Fetch {
                selection: AccessNeeds::selection_of(&r.path),
                path: r.path,
                min_access: r.min_access,
                priority: r.priority,
                indices: vec![i],
                failures: 0,
            });
        }
        let mut order: Vec<usize> = (0..self.fetches.len()).collect();
        order.sort_by_key(|&f| (self.fetches[f].priority == Priority::Low, f));
        for f in order {
            let cached = self.handler.cache.as_ref().and_then(|c| {
                let fetch = &self.fetches[f];
                c.get(&(fetch.path.clone(), fetch.min_access))
            });
            if let Some(data) = cached {
                self.cached += 1;
                self.answer(f, Ok(data));
            } else {
                self.pending[self.fetches[f].min_access as usize].push_back(f);
            }
        }
    }

    /// Finds every key's owner and access (cached by the client; a key looked up before
    /// costs nothing). Keys Torn refuses are left out, each tried once.
    async fn resolve(&mut self, pool: Vec<PoolKey>) -> Result<()> {
        let client = self.handler.client.clone();
        let mut lookups = JoinSet::new();
        for (i, pk) in pool.iter().enumerate() {
            let client = client.clone();
            let key = pk.key.clone();
            let known = pk.info;
            lookups.spawn(async move {
                if let Some(info) = known {
                    client.remember_owner(&key, info).await;
                    return (i, Ok(info));
                }
                (i, resolve_owner(&client, &key).await)
            });
        }
        let mut resolved = Vec::with_capacity(pool.len());
        let mut first_error = None;
        while let Some(joined) = lookups.join_next().await {
            let (i, info) = joined.map_err(internal)?;
            match info {
                Ok(info) => resolved.push((i, info)),
                Err(e) => {
                    if let Error::Torn { code, .. } = &e
                        && matches!(code.class(), ErrorClass::DisableKey { .. })
                    {
                        self.key_disabled(&pool[i].key, *code);
                    }
                    tracing::warn!(
                        key_hash = pool[i].key.hash().short(),
                        error = %e,
                        "batch: a key of the pool is left out"
                    );
                    self.keys_dropped += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        resolved.sort_by_key(|(i, _)| *i);
        let mut by_owner: BTreeMap<TornUserId, usize> = BTreeMap::new();
        for (i, info) in resolved {
            let o = *by_owner.entry(info.owner).or_insert_with(|| {
                self.owners.push(Owner {
                    id: info.owner,
                    keys: Vec::new(),
                    share_cap: None,
                    room: None,
                    ready_at: Instant::now(),
                    held_until: Instant::now(),
                    last_turn: 0,
                    stats: OwnerStats::default(),
                });
                self.owners.len() - 1
            });
            let owner = &mut self.owners[o];
            if owner.keys.iter().any(|k| k.key == pool[i].key) {
                continue; // the same key twice in the pool
            }
            owner.keys.push(KeySlot {
                key: pool[i].key.clone(),
                access: info.access,
                usable: true,
                last_used: 0,
            });
            owner.stats.keys += 1;
            if let Some(cap) = pool[i].share_cap {
                owner.share_cap = Some(owner.share_cap.map_or(cap, |c| c.min(cap)));
            }
        }
        if self.owners.is_empty() {
            return Err(first_error.unwrap_or(Error::InvalidArgument {
                name: "pool",
                reason: "no key of the pool is usable".into(),
            }));
        }
        let caps: Vec<(TornUserId, NonZeroU32)> = self
            .owners
            .iter()
            .filter_map(|o| o.share_cap.map(|c| (o.id, c)))
            .collect();
        if !caps.is_empty() {
            self.shares = Some(self.gate.shares(&caps).await?);
        }
        Ok(())
    }

    async fn run(&mut self) -> Result<()> {
        let cancel = self.handler.cancel.clone();
        loop {
            if cancel.is_cancelled() {
                self.cancel_pending();
            }
            self.fail_unservable();
            let waiting = self.pending.iter().any(|q| !q.is_empty());
            if !waiting && self.in_flight.is_empty() {
                return Ok(());
            }
            if waiting
                && !cancel.is_cancelled()
                && self.handler.client.paused_for().is_none()
                && Instant::now() >= self.store_ready_at
            {
                self.dispatch().await?;
            }
            let wake = self.next_wake();
            tokio::select! {
                Some(joined) = self.in_flight.join_next(), if !self.in_flight.is_empty() => {
                    self.complete(joined.map_err(internal)?).await;
                    // Take every answer already in, so the next dispatch fills all the
                    // free slots with as few script calls as it can.
                    while let Some(joined) = self.in_flight.try_join_next() {
                        self.complete(joined.map_err(internal)?).await;
                    }
                }
                () = tokio::time::sleep_until(wake) => {}
                () = cancel.cancelled(), if !cancel.is_cancelled() => {}
            }
        }
    }

    /// When to look again with nothing in flight: the first owner ready, or the end of a
    /// pause. Capped so that a missed signal costs little.
    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let cap = now + Duration::from_millis(250);
        if let Some(p) = self.handler.client.paused_for() {
            return (now + p).min(cap);
        }
        if self.store_ready_at > now {
            return self.store_ready_at.min(cap);
        }
        self.owners
            .iter()
            .filter(|o| o.max_access().is_some())
            .map(|o| o.ready_at)
            .filter(|&t| t > now)
            .min()
            .unwrap_or(cap)
            .min(cap)
    }

    /// Fills the free slots, owner by owner, most room first. A failure of the gate's
    /// store (Redis unreachable or slow) is waited out with back-off, never the batch's
    /// end: answers already fetched are kept, and the next turn asks again.
    async fn dispatch(&mut self) -> Result<()> {
        match self.dispatch_owners().await {
            Ok(()) => {
                self.store_backoff = Duration::ZERO;
                Ok(())
            }
            Err(e) if e.is_unavailable() => {
                let config = self.handler.client.config();
                self.store_backoff = (self.store_backoff * 2)
                    .max(config.retry_min_delay())
                    .min(config.retry_max_delay());
                self.store_ready_at = Instant::now() + self.store_backoff;
                tracing::warn!(
                    error = %e,
                    backoff_ms = self.store_backoff.as_millis() as u64,
                    "batch: the quota store does not answer; waiting it out"
                );
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn dispatch_owners(&mut self) -> Result<()> {
        let max_chunk = self.handler.config.max_chunk.get() as usize;
        let now = Instant::now();
        let mut order: Vec<usize> = (0..self.owners.len())
            .filter(|&o| self.owners[o].ready_at <= now && self.owners[o].max_access().is_some())
            .collect();
        order.sort_by_key(|&o| {
            let owner = &self.owners[o];
            let room = owner
                .room
                .unwrap_or_else(|| self.gate.limit_for(owner.id).get());
            (std::cmp::Reverse(room), owner.last_turn)
        });
        for o in order {
            let free = self.handler.config.concurrency.get() - self.in_flight.len();
            if free == 0 {
                break;
            }
            let Some(access) = self.owners[o].max_access() else {
                continue;
            };
            let ready: usize = self.pending[..=access as usize]
                .iter()
                .map(VecDeque::len)
                .sum();
            let want = ready.min(free).min(max_chunk) as u32;
            if want == 0 {
                continue;
            }
            let owner_id = self.owners[o].id;
            if self.gate.per_key(owner_id) {
                self.dispatch_per_key(o, access, want).await?;
                continue;
            }
            let taken = self
                .gate
                .try_take_each(
                    Some(owner_id),
                    None,
                    want,
                    Priority::High,
                    self.shares.as_ref(),
                )
                .await?;
            match taken {
                Ok(tickets) => {
                    self.turn += 1;
                    let owner = &mut self.owners[o];
                    let room = tickets.iter().filter_map(Ticket::owner_remaining).min();
                    owner.room = room.or(owner.room);
                    owner.last_turn = self.turn;
                    owner.stats.granted += tickets.len() as u64;
                    for ticket in tickets {
                        match self.pick(o, access) {
                            Some((fetch, k, probe)) => self.spawn_send(o, k, fetch, probe, ticket),
                            None => self.gate.give_back(ticket).await,
                        }
                    }
                }
                Err(retry_after) => {
                    let owner = &mut self.owners[o];
                    owner.room = Some(0);
                    // A wait for provisional units is at most a window once they settle.
                    owner.ready_at = Instant::now() + retry_after.min(self.gate.window());
                }
            }
        }
        Ok(())
    }

    /// Where legacy decides for the owner: one ticket per request, for the key it goes on.
    async fn dispatch_per_key(&mut self, o: usize, access: AccessLevel, want: u32) -> Result<()> {
        for _ in 0..want {
            let Some((fetch, k, probe)) = self.pick(o, access) else {
                break;
            };
            let owner_id = self.owners[o].id;
            let hash = self.owners[o].keys[k].key.hash();
            let taken = self
                .gate
                .try_take(
                    Some(owner_id),
                    Some(&hash),
                    1,
                    Priority::High,
                    self.shares.as_ref(),
                )
                .await;
            match taken {
                Ok(Ok(ticket)) => {
                    self.turn += 1;
                    let owner = &mut self.owners[o];
                    owner.last_turn = self.turn;
                    owner.stats.granted += 1;
                    self.spawn_send(o, k, fetch, probe, ticket);
                }
                Ok(Err(retry_after)) => {
                    self.unpick(fetch, probe);
                    let owner = &mut self.owners[o];
                    // A wait for provisional units is at most a window once they settle.
                    owner.ready_at = Instant::now() + retry_after.min(self.gate.window());
                    break;
                }
                Err(e) => {
                    self.unpick(fetch, probe);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn unpick(&mut self, fetch: usize, probe: bool) {
        self.sent -= 1;
        self.end_probe(fetch, probe);
        self.requeue(fetch);
    }

    /// Takes the first waiting fetch this owner can serve, and its least-recently-used key
    /// with enough access.
    fn pick(&mut self, o: usize, access: AccessLevel) -> Option<(usize, usize, bool)> {
        // The earliest fetch among the levels the owner reaches, highest level first on a
        // tie so that scarce high-access keys go to what only they can serve.
        let level = (0..=access as usize)
            .rev()
            .filter(|&l| !self.pending[l].is_empty())
            .min_by_key(|&l| self.pending[l].front().copied().unwrap_or(usize::MAX))?;
        let fetch = self.pending[level].pop_front()?;
        let need = self.fetches[fetch].min_access;
        self.turn += 1;
        let owner = &mut self.owners[o];
        let eligible: Vec<usize> = (0..owner.keys.len())
            .filter(|&k| owner.keys[k].usable && owner.keys[k].access >= need)
            .collect();
        // A key is safe for the selection when nothing is above it, or Torn already
        // answered the selection for a key of its level. Other keys probe, one request of
        // the selection at a time, so a selection that needs more meets one code 16, not
        // one per request in flight.
        let selection = self.fetches[fetch].selection.as_ref();
        let confirmed = selection.and_then(|s| self.confirmed.get(s)).copied();
        let keys = &owner.keys;
        let safe = |k: usize| {
            let a = keys[k].access;
            a == AccessLevel::Full || confirmed.is_some_and(|c| a >= c)
        };
        let probing = selection.is_some_and(|s| self.probing.contains(s));
        let mut by_age = eligible;
        by_age.sort_by_key(|&k| keys[k].last_used);
        let mut probe = false;
        let k = by_age.into_iter().find(|&k| {
            if safe(k) {
                return true;
            }
            // No name to learn by: nothing to probe for, send as asked.
            if selection.is_none() || (!probing && !probe) {
                probe = selection.is_some();
                return true;
            }
            false
        });
        let Some(k) = k else {
            self.pending[level].push_front(fetch);
            return None;
        };
        owner.keys[k].last_used = self.turn;
        if probe && let Some(s) = selection {
            self.probing.insert(s.clone());
        }
        self.sent += 1;
        Some((fetch, k, probe))
    }

    /// Sends a picked fetch on the owner's key `k` on `ticket`'s units, and settles the
    /// ticket on the answer (or gives it back when the request never reached Torn).
    fn spawn_send(&mut self, o: usize, k: usize, fetch: usize, probe: bool, ticket: Ticket) {
        let owner = &mut self.owners[o];
        owner.stats.sent += 1;
        let now = Instant::now();
        self.first_send.get_or_insert(now);
        self.last_send = Some(now);
        let key = owner.keys[k].key.clone();
        let owner_id = owner.id;
        let path = self.fetches[fetch].path.clone();
        let client = self.handler.client.clone();
        let gate = self.gate.clone();
        self.in_flight.spawn(async move {
            let deadline = ticket.deadline();
            let (result, reach) = client.send_on_ticket(&key, owner_id, &path, deadline).await;
            let stale = reach == Reach::NotSent && matches!(result, Err(Error::Deadline));
            match reach {
                Reach::Answered => gate.settle(ticket).await,
                Reach::NotSent => gate.give_back(ticket).await,
                // Sent without an answer: Torn may count it, so its units keep their
                // provisional records.
                Reach::Unknown => drop(ticket),
            }
            Sent {
                fetch,
                owner: o,
                key: k,
                probe,
                stale,
                result,
            }
        });
    }

    /// Handles an answer: data, or what Torn's code says to do.
    async fn complete(&mut self, sent: Sent) {
        let Sent {
            fetch,
            owner: o,
            key: k,
            probe,
            stale,
            result,
        } = sent;
        self.end_probe(fetch, probe);
        if stale {
            // Nothing reached Torn and the units went back: the fetch goes again, on a
            // fresh ticket, without counting as a failure or a send.
            self.sent -= 1;
            self.owners[o].stats.sent -= 1;
            self.requeue(fetch);
            return;
        }
        // A wait the gate advised while this unit was provisional assumed it would count
        // for the whole request timeout: ask again now (unless Torn held the owner).
        let owner = &mut self.owners[o];
        owner.ready_at = owner.ready_at.min(Instant::now()).max(owner.held_until);
        let err = match result {
            Ok(data) => {
                if let Some(s) = &self.fetches[fetch].selection {
                    let level = self.owners[o].keys[k].access;
                    let c = self.confirmed.entry(s.clone()).or_insert(level);
                    *c = (*c).min(level);
                }
                if let Some(cache) = &self.handler.cache {
                    let f = &self.fetches[fetch];
                    cache.insert((f.path.clone(), f.min_access), data.clone());
                }
                return self.answer(fetch, Ok(data));
            }
            Err(e) => e,
        };
        self.owners[o].stats.errored += 1;
        let (code, message) = match &err {
            Error::Torn { code, message } => (Some(*code), message.clone()),
            other => (None, error_chain(other)),
        };
        let Some(code) = code else {
            // Transport failures (after the client's own handling) and the like.
            return self.retry_or_fail(fetch, RequestError::ours(message));
        };
        match code.class() {
            ErrorClass::DisableKey { .. } | ErrorClass::HoldKey => {
                let slot = &mut self.owners[o].keys[k];
                if slot.usable {
                    slot.usable = false;
                    self.keys_dropped += 1;
                    let key = slot.key.clone();
                    if matches!(code.class(), ErrorClass::DisableKey { .. }) {
                        self.key_disabled(&key, code);
                    }
                }
                self.requeue(fetch);
            }
            ErrorClass::HoldOwner => {
                self.rate_limited += 1;
                let owner = &mut self.owners[o];
                owner.stats.rate_limited += 1;
                owner.room = Some(0);
                owner.held_until = Instant::now() + self.handler.client.config().owner_hold();
                owner.ready_at = owner.held_until;
                self.requeue(fetch);
            }
            // The client pauses itself; the loop waits for it.
            ErrorClass::PauseAll => self.requeue(fetch),
            ErrorClass::Reroute => {
                let key_access = self.owners[o].keys[k].access;
                let path = self.fetches[fetch].path.clone();
                // Learned for the selection, in every process: later requests of it go
                // straight to a key that can serve them.
                let need = self.access.learn(&path, key_access).await;
                match need.or_else(|| AccessLevel::from_number(key_access.number() + 1)) {
                    Some(higher) => {
                        if higher > self.fetches[fetch].min_access {
                            self.fetches[fetch].min_access = higher;
                        }
                        self.raise_pending(&path, higher);
                        self.requeue(fetch);
                    }
                    None => self.answer(fetch, Err(RequestError::torn(code, &message))),
                }
            }
            ErrorClass::Retry => self.retry_or_fail(fetch, RequestError::torn(code, &message)),
            _ => self.answer(fetch, Err(RequestError::torn(code, &message))),
        }
    }

    fn retry_or_fail(&mut self, fetch: usize, error: RequestError) {
        self.fetches[fetch].failures += 1;
        if self.fetches[fetch].failures >= self.handler.config.max_attempts.get() {
            self.answer(fetch, Err(error));
        } else {
            self.requeue(fetch);
        }
    }

    /// Moves every waiting fetch of `path`'s selection up to `need`, keeping their order.
    fn raise_pending(&mut self, path: &str, need: AccessLevel) {
        let Some(selection) = AccessNeeds::selection_of(path) else {
            return;
        };
        for level in 0..(need as usize) {
            let queue = std::mem::take(&mut self.pending[level]);
            for f in queue {
                let same =
                    AccessNeeds::selection_of(&self.fetches[f].path).as_ref() == Some(&selection);
                if same {
                    self.fetches[f].min_access = need;
                    let target = &mut self.pending[need as usize];
                    let at = target.partition_point(|&g| g < f);
                    target.insert(at, f);
                } else {
                    self.pending[level].push_back(f);
                }
            }
        }
    }

    fn end_probe(&mut self, fetch: usize, probe: bool) {
        if probe && let Some(s) = &self.fetches[fetch].selection {
            self.probing.remove(s);
        }
    }

    fn requeue(&mut self, fetch: usize) {
        let level = self.fetches[fetch].min_access as usize;
        self.pending[level].push_front(fetch);
    }

    /// Fails at once what no usable key can serve, instead of waiting for nothing.
    fn fail_unservable(&mut self) {
        let best = self.owners.iter().filter_map(Owner::max_access).max();
        let from = best.map_or(0, |b| b as usize + 1);
        for level in from..LEVELS {
            while let Some(fetch) = self.pending[level].pop_front() {
                let error = match best {
                    // What Torn would answer every key of the pool: code 16.
                    Some(b) => RequestError {
                        code: Some(TornErrorCode::ACCESS_TOO_LOW.get()),
                        message: format!(
                            "no usable key in the pool has access level {} or more (the best \
                             has {b}); not sent",
                            AccessLevel::from_number(level as u8).unwrap_or(AccessLevel::Full)
                        ),
                    },
                    None => RequestError::ours("no usable key is left in the pool"),
                };
                self.answer(fetch, Err(error));
            }
        }
    }

    fn cancel_pending(&mut self) {
        for level in 0..LEVELS {
            while let Some(fetch) = self.pending[level].pop_front() {
                self.answer(
                    fetch,
                    Err(RequestError::ours("cancelled before it was sent")),
                );
            }
        }
    }

    fn answer(&mut self, fetch: usize, result: std::result::Result<Value, RequestError>) {
        let indices = std::mem::take(&mut self.fetches[fetch].indices);
        let failed = result.is_err();
        crate::telemetry::batch_answered(!failed, indices.len());
        self.done += indices.len();
        if failed {
            self.failed += indices.len();
        }
        // Each request's hook sees its answer as it lands, before the batch ends.
        if let Some(on_result) = &self.handler.on_result {
            for &i in &indices {
                on_result(i, &result);
            }
        }
        // Merged requests share the answer: clones for all but the last.
        if let Some((&last, rest)) = indices.split_last() {
            for &i in rest {
                self.results[i] = Some(result.clone());
            }
            self.results[last] = Some(result);
        }
        if let Some(progress) = &self.handler.progress {
            progress(Progress {
                done: self.done,
                failed: self.failed,
                total: self.results.len(),
            });
        }
    }

    fn key_disabled(&self, key: &ApiKey, code: TornErrorCode) {
        if let Some(f) = &self.handler.on_key_disabled {
            f(&key.hash(), code);
        }
    }

    fn finish(self) -> BatchOutcome {
        let duration = self.started.elapsed();
        let window = self.gate.window();
        let windows = (duration.as_secs_f64() / window.as_secs_f64()).max(1.0);
        let allowed: f64 = self
            .owners
            .iter()
            .map(|o| f64::from(self.gate.limit_for(o.id).get()) * windows)
            .sum();
        let results: Vec<_> = self
            .results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(RequestError::ours("not answered"))))
            .collect();
        let stats = BatchStats {
            requests: results.len(),
            succeeded: results.iter().filter(|r| r.is_ok()).count(),
            failed: results.iter().filter(|r| r.is_err()).count(),
            fetches: self.fetches.len(),
            cached: self.cached,
            sent: self.sent,
            rate_limited: self.rate_limited,
            keys_dropped: self.keys_dropped,
            duration,
            send_span: match (self.first_send, self.last_send) {
                (Some(a), Some(b)) => b - a,
                _ => Duration::ZERO,
            },
            owners: self
                .owners
                .iter()
                .map(|o| (super::owner_label(o.id), o.stats.clone()))
                .collect(),
            quota_used: if allowed > 0.0 {
                self.sent as f64 / allowed
            } else {
                0.0
            },
        };
        crate::telemetry::batch_quota_used(stats.quota_used);
        BatchOutcome { results, stats }
    }
}

/// The key's owner and access. A lookup reaches Torn before we know whose quota it
/// spends, so it can meet a full window (code 5) or a pause: those are waited out, for up
/// to two windows, instead of dropping a good key.
async fn resolve_owner(client: &TornClient, key: &ApiKey) -> Result<KeyInfo> {
    let window = client.gate().window().saturating_add(client.gate().hold());
    let give_up = Instant::now() + window.saturating_mul(2);
    loop {
        match client.owner_of(key).await {
            Err(Error::Torn { code, .. })
                if matches!(code.class(), ErrorClass::HoldOwner | ErrorClass::PauseAll)
                    && Instant::now() < give_up =>
            {
                let wait = client
                    .paused_for()
                    .unwrap_or_else(|| client.config().owner_hold().min(window / 4));
                tracing::debug!(code = code.get(), ?wait, "batch: key lookup waits");
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

fn internal(e: tokio::task::JoinError) -> Error {
    Error::Task {
        operation: "batch",
        source: crate::error::Source::new(e),
    }
}

/// An error and its causes on one line, for a request's error message.
fn error_chain(e: &Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
