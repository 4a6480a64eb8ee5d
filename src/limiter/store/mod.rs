//! The Redis backend: the Lua scripts in `lua/`, called over a few shared multiplexed
//! connections from a deadpool pool.
//!
//! Each call clones a multiplexed connection held by a lane instead of checking a
//! connection out of the pool per call: a checkout costs a PING round trip (deadpool's
//! recycle) and serialises callers, while a shared multiplexed connection pipelines every
//! call in flight. The pool still owns creation (with its timeouts) and replacement: a lane
//! whose connection fails hands it back and takes a fresh one on its next call.
//!
//! Decisions are coalesced: while earlier script calls are in flight, the decisions that
//! arrive meanwhile queue up and leave together as one `EVALSHA` of `acquire_many.lua`.
//! A lone decision still goes out at once as a plain `acquire.lua` call, so coalescing adds
//! no latency when the load is light, and takes the per-call cost off Redis when it is not.
//!
//! Settles (see `lua/settle.lua`) go through the same dispatcher: those that queue together
//! leave as one `settle.lua` call, pipelined beside the batch's decisions, so the two or
//! three settles of one Torn call (owner, per-IP, share) cost one script call between them.
//!
//! One process holds one store (pool, lanes, dispatcher) per Redis: a sibling limiter is a
//! new key space on the same store, never a new pool.
//!
//! With `REDIS_CLUSTER_URLS` the same code runs over redis-rs cluster connections (one per
//! lane, opened by the lane itself: no pool), which route each call to the node owning its
//! keys' slot. Every script call touches one user's keys, which share the `{u<id>}` hash
//! tag, so one slot; a coalesced batch is split by slot first, and its per-slot calls go out
//! together (pipelined on the connections).
//!
//! Scripts are sent as `EVALSHA`; on `NOSCRIPT` (a restarted or flushed node, a failover)
//! the call is repeated once as `EVAL` with the script's text, which also caches the script
//! on that node, and `torn_quota_redis_noscript_reloads_total` counts it. Every Redis call's
//! latency goes to the `torn_quota_redis_seconds{operation}` histogram.

mod connect;
mod decode;
mod dispatch;
mod rebuild;
mod scripts;

use std::num::NonZeroU32;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result, Source};
use crate::limiter::backend::{Ask, RawDecision, RawStatus};
use crate::limiter::journal::Journal;
use crate::limiter::keys::KeyBuilder;
use crate::limiter::{RateLimitConfig, TornUserId};

pub(crate) use connect::Conn;
use connect::{Conns, Pools};
use decode::unexpected;
use dispatch::{Job, Queued, QueuedSettle, dispatch};
use rebuild::EpochWatch;
pub(crate) use rebuild::HEARTBEAT;
use scripts::SCRIPTS;

pub(crate) struct RedisBackend {
    store: Arc<Store>,
    keys: KeyBuilder,
    /// This key space's grants still in their window, written back when Redis lost them.
    journal: Journal,
    epoch: EpochWatch,
}

/// What every limiter of one Redis shares: connections and the dispatcher.
struct Store {
    conns: Arc<Conns>,
    /// The coalescing dispatcher's queue, started on first use in the caller's runtime and
    /// restarted if that runtime went away.
    queue: Mutex<Option<mpsc::UnboundedSender<Job>>>,
    /// Calls that failed to reach Redis: each key space reads its epoch again after one.
    failures: AtomicU64,
    /// When a call first failed to reach Redis since it last answered, as µs after
    /// `origin` plus one, so never early (0: Redis answers): every key space's local fallback counts its
    /// hand-over from there, not from its own first failure, which may come much later.
    unreachable_since: AtomicU64,
    origin: std::time::Instant,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, status) = match &self.store.conns.pool {
            Pools::Single(p) => ("single", Some(p.status())),
            Pools::Cluster(_) => ("cluster", None),
            Pools::Sentinel(_) => ("sentinel", None),
        };
        f.debug_struct("RedisBackend")
            .field("redis", &kind)
            .field("lanes", &self.store.conns.lanes.len())
            .field("pool", &status)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Builds the connections (the cluster client when `REDIS_CLUSTER_URLS` is set);
    /// connects lazily, on the first call.
    pub(crate) fn new(config: &RateLimitConfig) -> Result<Self> {
        Ok(Self {
            store: Arc::new(Store {
                conns: Arc::new(Conns::new(config)?),
                queue: Mutex::new(None),
                failures: AtomicU64::new(0),
                unreachable_since: AtomicU64::new(0),
                origin: std::time::Instant::now(),
            }),
            keys: KeyBuilder::new(config.key_prefix()),
            journal: Journal::with(config.journal()),
            epoch: EpochWatch::default(),
        })
    }

    /// Another key space on this backend's store: the same connections and dispatcher.
    pub(crate) fn sibling(&self, key_prefix: &str) -> Self {
        Self {
            store: Arc::clone(&self.store),
            keys: KeyBuilder::new(key_prefix),
            journal: Journal::with(self.journal.enabled()),
            epoch: EpochWatch::default(),
        }
    }

    /// Whether this key space journals its grants ([`RateLimitConfig::journal`]).
    pub(crate) fn journals(&self) -> bool {
        self.journal.enabled()
    }

    pub(crate) fn keys(&self) -> &KeyBuilder {
        &self.keys
    }

    pub(crate) async fn run<T, F, Fut>(&self, operation: &'static str, f: F) -> Result<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.store
            .conns
            .run(operation, f)
            .await
            .inspect_err(|e| self.note_if_unreachable(e))
    }

    fn note_if_unreachable(&self, e: &Error) {
        if e.is_unavailable() {
            self.note_failure();
            let now = self.store.origin.elapsed().as_micros() as u64 + 1;
            let _ = self.store.unreachable_since.compare_exchange(
                0,
                now,
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Acquire,
            );
        }
    }

    fn note_answered(&self) {
        if self
            .store
            .unreachable_since
            .load(std::sync::atomic::Ordering::Acquire)
            != 0
        {
            self.store
                .unreachable_since
                .store(0, std::sync::atomic::Ordering::Release);
        }
    }

    /// Since when Redis has not answered any call of this store, if it has not.
    pub(crate) fn unreachable_since(&self) -> Option<std::time::Instant> {
        match self
            .store
            .unreachable_since
            .load(std::sync::atomic::Ordering::Acquire)
        {
            0 => None,
            us => Some(self.store.origin + Duration::from_micros(us)),
        }
    }

    /// Sees a new value each time the store followed a failover to another primary
    /// (Sentinel): writes the old primary had not replicated may be gone.
    #[allow(dead_code)] // the hook for the grant journal, which subscribes to it
    pub(crate) fn primary_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.store.conns.primary_changes()
    }

    fn bound(&self) -> Duration {
        self.store.conns.connect_timeout + self.store.conns.command_timeout
    }
}

impl RedisBackend {
    pub(crate) async fn ping(&self) -> Result<()> {
        self.run("ping", |mut c| async move {
            redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .map(drop)
        })
        .await
    }

    /// One decision, sent with whatever other decisions are waiting (see the module docs).
    ///
    /// After a failure, and on the first call, the key space's epoch is read first, and
    /// when Redis lost its state the journal is written back (see [`rebuild`]); a grant is
    /// journaled.
    pub(crate) async fn acquire(&self, user: TornUserId, ask: &Ask<'_>) -> Result<RawDecision> {
        self.ensure_state().await?;
        let losses = self.epoch.losses();
        let raw = self
            .acquire_now(user, ask)
            .await
            .inspect_err(|e| self.note_if_unreachable(e))?;
        self.note_answered();
        self.journal.note_remaining(user, raw.at_ms, raw.remaining);
        if !raw.granted {
            return Ok(raw);
        }
        let counted = self.journal_grant(user, ask, &raw);
        // acquire.lua answers what is left after this grant: what the bucket held before.
        let held = u64::from(ask.limit.saturating_sub(ask.reserve))
            .saturating_sub(u64::from(raw.remaining) + u64::from(ask.cost));
        if counted <= held {
            return Ok(raw);
        }
        // The bucket holds fewer units than this process alone granted from it and that
        // still count: Redis may have lost them without a broken connection (a flush). The
        // epoch says whether the whole state went; if it did, the journal went back, and
        // this grant, perhaps made from the emptied bucket, is given back and decided
        // again on the rebuilt one.
        tracing::debug!(
            user = user.get(),
            counted,
            held,
            "a bucket holds fewer grants than this process made from it: checking redis's state"
        );
        // Boxed: the rare path keeps its state off every decision's future.
        Box::pin(self.redecide_if_lost(user, ask, raw, losses)).await
    }

    /// A grant from a short bucket: checks Redis's state, and when it was lost (after
    /// `losses` were counted) gives the grant back and decides again on the rebuilt bucket.
    async fn redecide_if_lost(
        &self,
        user: TornUserId,
        ask: &Ask<'_>,
        raw: RawDecision,
        losses: u64,
    ) -> Result<RawDecision> {
        let stamp = raw.at_ms + ask.hold_ms;
        // Out of the journal while the state is checked: a rebuild must not write back the
        // grant it may be about to give back.
        self.journal.forget(user, stamp, ask.cost);
        if !self.check_short_bucket(user, losses).await? {
            self.journal_grant(user, ask, &raw);
            return Ok(raw);
        }
        self.refund(user, stamp, ask.cost, ask.idempotency_id)
            .await?;
        let again = self
            .acquire_now(user, ask)
            .await
            .inspect_err(|e| self.note_if_unreachable(e))?;
        if again.granted {
            self.journal_grant(user, ask, &again);
        }
        Ok(again)
    }

    fn journal_grant(&self, user: TornUserId, ask: &Ask<'_>, raw: &RawDecision) -> u64 {
        self.journal.push(
            user,
            raw.at_ms,
            raw.at_ms + ask.hold_ms,
            ask.cost,
            ask.window_ms,
            ask.idempotency_id.is_some(),
        )
    }

    /// What `user`'s bucket had left when Redis last answered for it, if at or after
    /// `since` (see [`Journal::remaining_seen`]).
    pub(crate) fn remaining_seen(&self, user: TornUserId, since: std::time::Instant) -> u32 {
        self.journal.remaining_seen(user, since)
    }

    /// This key space's grants of `user` still in their window, for the local fallback to
    /// start from (see [`Journal::live`]).
    pub(crate) fn journal_live(&self, user: TornUserId) -> Vec<(i64, u32, u64)> {
        self.journal.live(user)
    }

    /// Reads the epoch again if a failure left it unconfirmed, writing the journal back
    /// when Redis lost its state; Ok once Redis answered.
    pub(crate) async fn recheck(&self) -> Result<()> {
        self.ensure_state().await?;
        self.ping().await?;
        self.note_answered();
        Ok(())
    }

    /// Journals a grant the local fallback made for this key space while Redis was
    /// unreachable, so that a Redis that comes back empty gets it written back too.
    ///
    /// Returns the stamp it was journaled with, for [`Self::journal_forget`] and
    /// [`Self::journal_settle`].
    pub(crate) fn journal_degraded(&self, user: TornUserId, ask: &Ask<'_>) -> Option<u64> {
        self.journal
            .push_degraded(user, ask.hold_ms, ask.cost, ask.window_ms)
    }

    /// Forgets a degraded grant given back (by its journal stamp): written back, it would
    /// fill the owner's window with calls never sent.
    pub(crate) fn journal_forget(&self, user: TornUserId, stamp_ms: u64, cost: u32) {
        self.journal.forget(user, stamp_ms, cost);
    }

    /// Restamps a degraded grant Torn answered (by its journal stamp) with about now.
    pub(crate) fn journal_settle(&self, user: TornUserId, stamp_ms: u64, cost: u32) {
        self.journal.settle(user, stamp_ms, cost, None);
    }

    async fn acquire_now(&self, user: TornUserId, ask: &Ask<'_>) -> Result<RawDecision> {
        let bucket = self.keys.bucket(user);
        let idem = ask
            .idempotency_id
            .map(|id| self.keys.idempotency(user, id))
            .unwrap_or_default();
        let keys = [bucket.state, bucket.limit, bucket.penalty, idem];
        let args = [
            u64::from(ask.limit),
            ask.window_ms,
            u64::from(ask.cost),
            u64::from(ask.reserve),
            1,
            ask.hold_ms,
        ];
        let (tx, rx) = oneshot::channel();
        self.enqueue(Job::Acquire(Queued {
            keys,
            args,
            reply: tx,
        }));
        let bound = self.bound();
        match tokio::time::timeout(bound, rx).await {
            Ok(Ok(reply)) => reply,
            // The dispatcher's runtime shut down under it; the next call starts a new one.
            Ok(Err(_)) => Err(Error::Unavailable {
                operation: "acquire",
                source: Source::msg("the decision dispatcher stopped"),
            }),
            Err(_) => Err(Error::Timeout {
                operation: "acquire",
                timeout: bound,
            }),
        }
    }

    /// Restamps a provisional grant's records with the settle's Redis time, sent with
    /// whatever else is waiting (see the module docs). Returns the records restamped.
    pub(crate) async fn settle(
        &self,
        user: TornUserId,
        stamp_ms: u64,
        cost: u32,
        window_ms: u64,
    ) -> Result<u32> {
        self.ensure_state().await?;
        // Before the settle goes out: Redis restamps at this Redis time or later.
        let sent_ms = self.journal.redis_now();
        let (tx, rx) = oneshot::channel();
        self.enqueue(Job::Settle(QueuedSettle {
            key: self.keys.bucket(user).state,
            args: [stamp_ms, u64::from(cost), window_ms],
            reply: tx,
        }));
        let bound = self.bound();
        let reply = match tokio::time::timeout(bound, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(Error::Unavailable {
                operation: "settle",
                source: Source::msg("the decision dispatcher stopped"),
            }),
            Err(_) => Err(Error::Timeout {
                operation: "settle",
                timeout: bound,
            }),
        };
        if reply.is_ok() {
            self.journal.settle(user, stamp_ms, cost, sent_ms);
        }
        reply.inspect_err(|e| self.note_if_unreachable(e))
    }

    /// Records `cost` units on `user`'s bucket now, full or not.
    pub(crate) async fn record(&self, user: TornUserId, cost: u32, window_ms: u64) -> Result<()> {
        let state = self.keys.bucket(user).state;
        self.run("record", |mut c| async move {
            SCRIPTS
                .record
                .eval::<i64, _, _>(&mut c, &[&state], &[window_ms, u64::from(cost)])
                .await
                .map(drop)
        })
        .await
    }

    fn enqueue(&self, mut item: Job) {
        let mut queue = self
            .store
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = queue.as_ref() {
            match tx.send(item) {
                Ok(()) => return,
                Err(mpsc::error::SendError(back)) => item = back,
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(dispatch(Arc::clone(&self.store.conns), rx));
        // A fresh receiver is alive: this send cannot fail.
        let _ = tx.send(item);
        *queue = Some(tx);
    }

    pub(crate) async fn status(
        &self,
        user: TornUserId,
        limit: u32,
        window_ms: u64,
    ) -> Result<RawStatus> {
        let keys = self.keys.bucket(user);
        let reply: Vec<i64> = self
            .run("status", |mut c| async move {
                SCRIPTS
                    .status
                    .eval(
                        &mut c,
                        &[&keys.state, &keys.limit, &keys.penalty],
                        &[u64::from(limit), window_ms],
                    )
                    .await
            })
            .await?;
        match reply[..] {
            [used, limit, remaining, reset, penalty] => Ok(RawStatus {
                used: used as u32,
                limit: limit as u32,
                remaining: remaining as u32,
                reset_after_ms: reset as u64,
                penalty_ms: penalty as u64,
            }),
            _ => Err(unexpected("status", &reply)),
        }
    }

    pub(crate) async fn penalize(&self, user: TornUserId, hold_ms: u64) -> Result<u64> {
        let key = self.keys.bucket(user).penalty;
        self.run("penalize", |mut c| async move {
            SCRIPTS.penalize.eval(&mut c, &[&key], &[hold_ms]).await
        })
        .await
    }

    pub(crate) async fn refund(
        &self,
        user: TornUserId,
        at_ms: u64,
        cost: u32,
        idempotency_id: Option<&str>,
    ) -> Result<u32> {
        let state = self.keys.bucket(user).state;
        let idem = idempotency_id.map(|id| self.keys.idempotency(user, id));
        // Forgotten first: a refund that fails may leave the records, which only ever
        // under-admits; a rebuild writing a refunded grant back would over-count for nothing.
        self.journal.forget(user, at_ms, cost);
        self.run("refund", |mut c| async move {
            let mut keys = vec![&state];
            if let Some(idem) = &idem {
                keys.push(idem);
            }
            SCRIPTS
                .refund
                .eval(&mut c, &keys, &[at_ms, u64::from(cost)])
                .await
        })
        .await
    }

    pub(crate) async fn recall(&self, name: &str) -> Result<Option<String>> {
        let key = self.keys.memo(name);
        self.run("recall", |mut c| async move {
            redis::cmd("GET").arg(&key).query_async(&mut c).await
        })
        .await
    }

    pub(crate) async fn remember(&self, name: &str, value: &str, ttl_ms: u64) -> Result<()> {
        let key = self.keys.memo(name);
        self.run("remember", |mut c| async move {
            redis::cmd("PSETEX")
                .arg(&key)
                .arg(ttl_ms.max(1))
                .arg(value)
                .exec_async(&mut c)
                .await
        })
        .await
    }

    /// `SET <memo name> <token> NX PX <ttl_ms>`: true when the lease is now `token`'s.
    pub(crate) async fn claim_lease(&self, name: &str, token: &str, ttl_ms: u64) -> Result<bool> {
        let key = self.keys.memo(name);
        self.run("claim lease", |mut c| async move {
            let set: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(token)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query_async(&mut c)
                .await?;
            Ok(set.is_some())
        })
        .await
    }

    /// Deletes the lease only while it is still `token` (`release.lua`): true when it was.
    pub(crate) async fn release_lease(&self, name: &str, token: &str) -> Result<bool> {
        let key = self.keys.memo(name);
        self.run("release lease", |mut c| async move {
            let released: i64 = SCRIPTS.release.eval(&mut c, &[&key], &[token]).await?;
            Ok(released == 1)
        })
        .await
    }

    pub(crate) async fn set_user_limit(
        &self,
        user: TornUserId,
        limit: Option<NonZeroU32>,
    ) -> Result<()> {
        let key = self.keys.bucket(user).limit;
        self.run("set_user_limit", |mut c| async move {
            match limit {
                Some(l) => {
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(l.get())
                        .exec_async(&mut c)
                        .await
                }
                None => redis::cmd("DEL").arg(&key).exec_async(&mut c).await,
            }
        })
        .await
    }

    /// Redis `TIME` as microseconds since the Unix epoch: the clock the scripts decide by,
    /// for the clock-gap gauge.
    pub(crate) async fn time(&self) -> Result<u64> {
        let (secs, micros): (u64, u64) = self
            .run("time", |mut c| async move {
                redis::cmd("TIME").query_async(&mut c).await
            })
            .await?;
        Ok(secs * 1_000_000 + micros)
    }
}
