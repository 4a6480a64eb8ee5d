//! Coalescing: decisions and settles that queue while earlier calls are in flight leave
//! together, one `acquire_many.lua` / `settle.lua` call per round (per slot on a cluster).

use std::collections::HashMap;
use std::sync::Arc;

use redis::Value;
use redis::cluster_routing::Slot;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::connect::Conns;
use super::decode::{decision, entry_decision, settle_entry, unexpected_msg};
use super::scripts::SCRIPTS;
use crate::error::Result;
use crate::limiter::backend::RawDecision;

/// One decision waiting for its script call: acquire.lua's four keys (the idempotency
/// record empty when unused) and six arguments.
pub(super) struct Queued {
    pub(super) keys: [String; 4],
    pub(super) args: [u64; 6],
    pub(super) reply: oneshot::Sender<Result<RawDecision>>,
}

/// One settle waiting for its script call: settle.lua's key and three arguments.
pub(super) struct QueuedSettle {
    pub(super) key: String,
    pub(super) args: [u64; 3],
    pub(super) reply: oneshot::Sender<Result<u32>>,
}

/// What the dispatcher sends.
pub(super) enum Job {
    Acquire(Queued),
    Settle(QueuedSettle),
}

/// Script calls of decisions in flight at once. While they are all out, new decisions
/// queue and leave together; more would only split batches without adding throughput.
const CALLS_IN_FLIGHT: usize = 4;
/// The most decisions in one call: bounds how long one script holds Redis (~5 µs each).
const MAX_BATCH: usize = 64;

impl Conns {
    /// Sends a batch of queued decisions as one script call (a lone one as plain
    /// `acquire.lua`) and answers each caller.
    async fn send(&self, mut batch: Vec<Queued>) {
        // A caller that gave up (timeout, cancellation) is not asked for: a grant nobody
        // uses would only waste quota.
        batch.retain(|q| !q.reply.is_closed());
        if let [one] = &batch[..] {
            let reply = self
                .run("acquire", |mut c| async move {
                    let keys: Vec<&String> = one.keys.iter().filter(|k| !k.is_empty()).collect();
                    SCRIPTS
                        .acquire
                        .eval::<Vec<i64>, _, _>(&mut c, &keys, &one.args)
                        .await
                })
                .await
                .and_then(|r| decision(&r));
            if let Some(q) = batch.pop() {
                let _ = q.reply.send(reply);
            }
            return;
        }
        if batch.is_empty() {
            return;
        }
        // An unused optional key goes as a repeat of the decision's KEYS[1] rather than as
        // "": on a cluster every key of the call must hash to the one slot
        // (acquire_many.lua reads either as unused).
        let mut keys: Vec<&str> = Vec::with_capacity(batch.len() * 4);
        let mut args: Vec<u64> = Vec::with_capacity(batch.len() * 6 + 1);
        args.push(batch.len() as u64);
        for q in &batch {
            for k in &q.keys {
                keys.push(if k.is_empty() { &q.keys[0] } else { k });
            }
            args.extend(q.args);
        }
        let reply = self
            .run("acquire", |mut c| async move {
                SCRIPTS
                    .acquire_many
                    .eval::<Vec<Value>, _, _>(&mut c, &keys, &args)
                    .await
            })
            .await;
        match reply {
            Ok(entries) if entries.len() == batch.len() => {
                for (q, entry) in batch.into_iter().zip(entries) {
                    let _ = q.reply.send(entry_decision(entry));
                }
            }
            Ok(entries) => {
                let msg = format!("{} entries for {} decisions", entries.len(), batch.len());
                for q in batch {
                    let _ = q.reply.send(Err(unexpected_msg("acquire", &msg)));
                }
            }
            Err(e) => {
                for q in batch {
                    let _ = q.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

impl Conns {
    /// Sends queued settles as one `settle.lua` call and answers each caller.
    async fn send_settles(&self, batch: Vec<QueuedSettle>) {
        let keys: Vec<&str> = batch.iter().map(|q| q.key.as_str()).collect();
        let args: Vec<u64> = batch.iter().flat_map(|q| q.args).collect();
        let reply = self
            .run("settle", |mut c| async move {
                SCRIPTS
                    .settle
                    .eval::<Vec<Value>, _, _>(&mut c, &keys, &args)
                    .await
            })
            .await;
        match reply {
            Ok(counts) if counts.len() == batch.len() => {
                for (q, entry) in batch.into_iter().zip(counts) {
                    let _ = q.reply.send(settle_entry(entry));
                }
            }
            Ok(counts) => {
                let msg = format!("{} counts for {} settles", counts.len(), batch.len());
                for q in batch {
                    let _ = q.reply.send(Err(unexpected_msg("settle", &msg)));
                }
            }
            Err(e) => {
                for q in batch {
                    let _ = q.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Takes queued jobs and sends them, at most [`CALLS_IN_FLIGHT`] rounds at once: whatever
/// queued while those were out leaves together in the next round (one call for its
/// decisions, one for its settles, per Redis Cluster slot).
pub(super) async fn dispatch(conns: Arc<Conns>, mut queue: mpsc::UnboundedReceiver<Job>) {
    let slots = Arc::new(Semaphore::new(CALLS_IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut acquires = Vec::new();
        let mut settles = Vec::new();
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(job) = next.take() {
            match job {
                Job::Acquire(q) => acquires.push(q),
                Job::Settle(q) => settles.push(q),
            }
            taken += 1;
            if taken < MAX_BATCH {
                next = queue.try_recv().ok();
            }
        }
        let (acquires, settles) = if conns.is_cluster() {
            (
                by_slot(acquires, |q| &q.keys[0]),
                by_slot(settles, |q| &q.key),
            )
        } else {
            (
                Some(acquires)
                    .filter(|a| !a.is_empty())
                    .into_iter()
                    .collect(),
                Some(settles)
                    .filter(|s| !s.is_empty())
                    .into_iter()
                    .collect(),
            )
        };
        // The dispatcher's slot is free again once every call of the round returned.
        let slot = Arc::new(slot);
        for group in acquires {
            let conns = Arc::clone(&conns);
            let slot = Arc::clone(&slot);
            tokio::spawn(async move {
                conns.send(group).await;
                drop(slot);
            });
        }
        for group in settles {
            let conns = Arc::clone(&conns);
            let slot = Arc::clone(&slot);
            tokio::spawn(async move {
                conns.send_settles(group).await;
                drop(slot);
            });
        }
    }
}

/// Splits a batch into the items of each Redis Cluster slot, each group in its batch
/// order (a bucket asked twice keeps its order: both items share its slot).
fn by_slot<T>(batch: Vec<T>, key: impl Fn(&T) -> &str) -> Vec<Vec<T>> {
    let mut groups: Vec<Vec<T>> = Vec::new();
    let mut index: HashMap<Slot, usize> = HashMap::new();
    for q in batch {
        let slot = Slot::for_key(key(&q).as_bytes());
        let i = *index.entry(slot).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[i].push(q);
    }
    groups
}
