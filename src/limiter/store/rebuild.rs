//! Noticing that Redis lost its state, and writing this process's journal back.
//!
//! A key space's epoch (`<prefix>:epoch`, [`KeyBuilder::epoch`]) is a random value set once,
//! without expiry. Each key space reads it on its first call and again after any call of
//! the store failed to reach Redis (a restart, a failover and a network cut all break
//! connections first). Missing or changed, it means the Redis now answering is not the one
//! the journal's grants were written to; so does a new server run_id under the same epoch
//! (a restart that reloaded the epoch from disk, and lost whatever came after the last
//! save), read in the same script (`lua/epoch.lua`). Then the journal goes back (`lua/restore.lua`, one
//! call per bucket) before this key space decides anything new. On the healthy path the
//! check is one atomic load; the epoch read costs one round trip per key space at start
//! and after each failure, never per decision.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use redis::Value;

use super::scripts::SCRIPTS;
use super::{RedisBackend, decode::unexpected_msg};
use crate::error::Result;
use crate::identity::TornUserId;

/// What one key space knows of its Redis's epoch.
#[derive(Debug, Default)]
pub(super) struct EpochWatch {
    /// The epoch and run_id last read, or `None` before the first read.
    known: tokio::sync::Mutex<Option<Seen>>,
    /// The store's failure count when the epoch was last confirmed, plus one (0: never).
    confirmed: AtomicU64,
    /// The store's primary generation (Sentinel failovers followed) when the epoch was last
    /// confirmed. A promoted replica carries the old epoch, since it replicated it, yet may
    /// lack the last writes: a new primary is a loss even when the epoch agrees.
    primary: AtomicU64,
    /// Losses of state seen (each followed by a rebuild): a grant decided before the
    /// count moved may have come from an emptied bucket.
    losses: AtomicU64,
    /// Taken by each grant from a bucket that held too little, one at a time, and holding
    /// when such a grant of each owner last made this key space read its epoch (ms since
    /// the Unix epoch): at most once per [`SUSPECT_EVERY_MS`] per owner, since a bucket may
    /// be short for reasons that are no loss (a limit override above the configured one,
    /// an operator's reset). Per owner, so that one owner's override never hides another's
    /// loss.
    suspicion: tokio::sync::Mutex<HashMap<TornUserId, u64>>,
}

/// What one epoch read saw (`lua/epoch.lua`).
#[derive(Debug)]
struct Seen {
    epoch: String,
    /// The answering server's run_id: new at every start, even one that reloaded the epoch
    /// from disk (and lost the writes after its last save).
    run_id: String,
}

impl Seen {
    /// True when `now` is not the Redis state this was read from: a new epoch, or the same
    /// epoch on a server started since (an empty run_id, from a server that names none,
    /// tells nothing).
    fn lost_since(&self, now: &Seen) -> bool {
        self.epoch != now.epoch
            || (!self.run_id.is_empty() && !now.run_id.is_empty() && self.run_id != now.run_id)
    }
}

/// How often a key space holding grants still in their window reads its epoch while every
/// call succeeds ([`RedisBackend::heartbeat`]): one round trip a second per key space, and
/// the longest an idle process leaves its grants unwritten after Redis lost them.
pub(crate) const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(1);

/// The least time between two epoch reads prompted by a short bucket.
const SUSPECT_EVERY_MS: u64 = 1_000;

impl EpochWatch {
    /// Losses seen so far: read before a decision is sent.
    pub(super) fn losses(&self) -> u64 {
        self.losses.load(Ordering::Acquire)
    }
}

impl RedisBackend {
    /// True while the epoch must be (re)read before deciding: at start, and after any
    /// failure of the store since it was last confirmed.
    fn epoch_unconfirmed(&self) -> bool {
        self.epoch.confirmed.load(Ordering::Acquire)
            != self.store.failures.load(Ordering::Acquire) + 1
            || self.epoch.primary.load(Ordering::Acquire) != self.store.conns.primary_generation()
    }

    /// Notes that a call failed to reach Redis: the next call reads the epoch first.
    pub(super) fn note_failure(&self) {
        self.store.failures.fetch_add(1, Ordering::AcqRel);
    }

    /// Reads the epoch when it is unconfirmed; when Redis lost its state, writes the journal
    /// back first. Callers wait for one check at a time, so none decides before a rebuild.
    /// True when this call rebuilt.
    pub(super) async fn ensure_state(&self) -> Result<bool> {
        if !self.epoch_unconfirmed() {
            return Ok(false);
        }
        // Boxed: the read and the rebuild stay off every decision's future.
        Box::pin(self.confirm_epoch()).await
    }

    async fn confirm_epoch(&self) -> Result<bool> {
        let mut known = self.epoch.known.lock().await;
        // Read before the call: a failure during it leaves the epoch unconfirmed.
        let failures = self.store.failures.load(Ordering::Acquire);
        if !self.epoch_unconfirmed() {
            return Ok(false);
        }
        self.read_epoch(&mut known, failures).await
    }

    /// Reads the epoch although nothing failed, when this key space holds grants that may
    /// still count: a Redis that lost its state while this process sent nothing (a flush,
    /// a restart between two of its calls) is otherwise noticed only at its next decision,
    /// which an idle process may not make for a long time, while the others grant from a
    /// bucket missing its grants. [`HEARTBEAT`] apart, from a task of each limiter. True
    /// when it rebuilt.
    pub(crate) async fn heartbeat(&self) -> Result<bool> {
        if !self.journal.holds_any() {
            return Ok(false);
        }
        if self.epoch_unconfirmed() {
            // A call failed since (a status read, say): confirm now, not at a next decision
            // that may never come.
            return self.ensure_state().await;
        }
        let mut known = self.epoch.known.lock().await;
        let failures = self.store.failures.load(Ordering::Acquire);
        if known.is_none() {
            return Ok(false);
        }
        self.read_epoch(&mut known, failures).await
    }

    async fn read_epoch(&self, known: &mut Option<Seen>, failures: u64) -> Result<bool> {
        let primary_before = self.epoch.primary.load(Ordering::Acquire);
        let keys = [self.keys.epoch()];
        let offered = [format!("{:032x}", rand::random::<u128>())];
        // Sets the epoch when it is missing, and answers it with the server's run_id.
        let (epoch, run_id): (String, String) = self
            .run("epoch", |mut c| async move {
                SCRIPTS.epoch.eval(&mut c, &keys, &offered).await
            })
            .await?;
        let now = Seen { epoch, run_id };
        // The read above went to the primary now in charge: if the store followed a
        // failover since the last confirmation, the journal goes back even under the same
        // epoch (restore.lua is idempotent by grant id, so a needless write-back is harmless).
        let primary_now = self.store.conns.primary_generation();
        let lost = known.as_ref().is_some_and(|k| k.lost_since(&now))
            || (known.is_some() && primary_now != primary_before);
        if lost {
            self.rebuild().await?;
            self.epoch.losses.fetch_add(1, Ordering::AcqRel);
        }
        *known = Some(now);
        self.epoch.primary.store(primary_now, Ordering::Release);
        self.epoch.confirmed.store(failures + 1, Ordering::Release);
        Ok(lost)
    }

    /// Called for a grant decided when [`EpochWatch::losses`] was `before`, from a bucket
    /// that held fewer units than this process alone granted from it and that still count.
    /// Reads the epoch (unless a short bucket did within the last second, or a loss was
    /// seen since), rebuilding when Redis lost its state. True when a loss was seen after
    /// the grant was decided: the grant may have come from the emptied bucket.
    /// Such grants wait for each other here, so none of a batch slips past the check.
    pub(super) async fn check_short_bucket(&self, user: TornUserId, before: u64) -> Result<bool> {
        let mut last = self.epoch.suspicion.lock().await;
        if self.epoch.losses() == before {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            if now
                >= last
                    .get(&user)
                    .map_or(0, |t| t.saturating_add(SUSPECT_EVERY_MS))
            {
                last.retain(|_, t| now < t.saturating_add(SUSPECT_EVERY_MS));
                last.insert(user, now);
                self.note_failure();
                self.ensure_state().await?;
            }
        }
        Ok(self.epoch.losses() != before)
    }

    /// Writes every journaled grant still in its window back, one restore.lua call per
    /// bucket, and reports it (log line and metric).
    async fn rebuild(&self) -> Result<()> {
        let rebuilds = self.journal.rebuilds();
        let mut units = 0u64;
        for r in &rebuilds {
            let keys = [self.keys.bucket(r.user).state, self.keys.restored(r.user)];
            let mut args: Vec<String> = Vec::with_capacity(1 + 3 * r.grants.len());
            args.push(r.window_ms.to_string());
            for (id, stamp, cost) in &r.grants {
                args.push(id.clone());
                args.push(stamp.to_string());
                args.push(cost.to_string());
            }
            let reply: Value = self
                .run("restore", |mut c| async move {
                    SCRIPTS.restore.eval(&mut c, &keys, &args).await
                })
                .await?;
            match reply {
                Value::Int(n) => units += n.max(0) as u64,
                other => return Err(unexpected_msg("restore", &format!("{other:?}"))),
            }
        }
        crate::telemetry::redis_rebuild(units);
        tracing::warn!(
            owners = rebuilds.len(),
            units,
            "redis lost its state (a new epoch, a restarted server or a new primary): this process's grants of the last window written back"
        );
        Ok(())
    }
}
