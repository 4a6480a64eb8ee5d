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
//! With `REDIS_CLUSTER_URLS` the same code runs over deadpool-redis cluster connections,
//! which route each call to the node owning its keys' slot. Every script call touches one
//! user's keys, which share the `{u<id>}` hash tag, so one slot; a coalesced batch is split
//! by slot first, and its per-slot calls go out together (pipelined on the connections).
//!
//! Scripts are sent as `EVALSHA`; on `NOSCRIPT` (a restarted or flushed node, a failover)
//! the call is repeated once as `EVAL` with the script's text, which also caches the script
//! on that node, and `torn_quota_redis_noscript_reloads_total` counts it. Every Redis call's
//! latency goes to the `torn_quota_redis_seconds{operation}` histogram.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use deadpool_redis::{Manager, Pool, PoolError, Runtime};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{
    AsyncConnectionConfig, Cmd, ErrorKind, FromRedisValue, RedisError, RedisFuture, Script,
    ServerErrorKind, ToRedisArgs, Value,
};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::error::{Error, Result};
use crate::limiter::backend::{Ask, RawDecision, RawStatus};
use crate::limiter::keys::KeyBuilder;
use crate::limiter::{RateLimitConfig, TornUserId};

/// The scripts, hashed once per process. [`Lua::eval`] sends `EVALSHA` and falls back to
/// `EVAL` only when Redis answers `NOSCRIPT`.
pub(crate) struct Scripts {
    pub(crate) acquire: Lua,
    pub(crate) acquire_many: Lua,
    pub(crate) status: Lua,
    pub(crate) penalize: Lua,
    pub(crate) refund: Lua,
    pub(crate) settle: Lua,
    pub(crate) record: Lua,
}

pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    acquire: Lua::new(crate::lua::ACQUIRE.to_owned()),
    acquire_many: Lua::new(crate::lua::acquire_many_source()),
    status: Lua::new(crate::lua::STATUS.to_owned()),
    penalize: Lua::new(crate::lua::PENALIZE.to_owned()),
    refund: Lua::new(crate::lua::REFUND.to_owned()),
    settle: Lua::new(crate::lua::SETTLE.to_owned()),
    record: Lua::new(crate::lua::RECORD.to_owned()),
});

/// One script: its text and SHA-1.
pub(crate) struct Lua {
    code: String,
    hash: String,
}

impl Lua {
    fn new(code: String) -> Self {
        let hash = Script::new(&code).get_hash().to_owned();
        Self { code, hash }
    }

    /// Runs the script with `keys` and `args`: `EVALSHA`, and on `NOSCRIPT` once more as
    /// `EVAL`, which loads the script on the node that answered (on a cluster, the node
    /// owning the keys' slot) and counts a reload.
    pub(crate) async fn eval<T, K, A>(
        &self,
        conn: &mut Conn,
        keys: &[K],
        args: &[A],
    ) -> redis::RedisResult<T>
    where
        T: FromRedisValue,
        K: ToRedisArgs,
        A: ToRedisArgs,
    {
        let call = |verb: &str, script: &str| {
            let mut cmd = redis::cmd(verb);
            cmd.arg(script).arg(keys.len());
            for k in keys {
                cmd.arg(k);
            }
            for a in args {
                cmd.arg(a);
            }
            cmd
        };
        match call("EVALSHA", &self.hash).query_async(conn).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                metrics::counter!("torn_quota_redis_noscript_reloads_total").increment(1);
                call("EVAL", &self.code).query_async(conn).await
            }
            other => other,
        }
    }
}

/// A connection one call is sent on: a multiplexed connection to the single Redis, or a
/// cluster connection that routes each command to its slot's node. Cheap to clone; clones
/// share the connection.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The pool connections come from.
enum Pools {
    Single(Pool),
    Cluster(deadpool_redis::cluster::Pool),
}

/// A connection held out of the pool by a lane.
enum Pooled {
    Single(deadpool_redis::Connection),
    Cluster(deadpool_redis::cluster::Connection),
}

impl Pooled {
    fn conn(&self) -> Conn {
        match self {
            Pooled::Single(c) => Conn::Single((**c).clone()),
            Pooled::Cluster(c) => Conn::Cluster((**c).clone()),
        }
    }
}

/// One shared connection slot. `refill` makes the callers that find it empty wait for one
/// of them to fetch a connection, instead of each draining the pool.
#[derive(Default)]
struct Lane {
    conn: Mutex<Option<Pooled>>,
    refill: tokio::sync::Mutex<()>,
}

pub(crate) struct RedisBackend {
    store: Arc<Store>,
    keys: KeyBuilder,
}

/// What every limiter of one Redis shares: connections and the dispatcher.
struct Store {
    conns: Arc<Conns>,
    /// The coalescing dispatcher's queue, started on first use in the caller's runtime and
    /// restarted if that runtime went away.
    queue: Mutex<Option<mpsc::UnboundedSender<Job>>>,
}

/// The connections, shared with the dispatcher task.
struct Conns {
    pool: Pools,
    lanes: Box<[Lane]>,
    next: AtomicUsize,
    connect_timeout: Duration,
    command_timeout: Duration,
}

/// One decision waiting for its script call: acquire.lua's four keys (the idempotency
/// record empty when unused) and six arguments.
struct Queued {
    keys: [String; 4],
    args: [u64; 6],
    reply: oneshot::Sender<Result<RawDecision>>,
}

/// One settle waiting for its script call: settle.lua's key and three arguments.
struct QueuedSettle {
    key: String,
    args: [u64; 3],
    reply: oneshot::Sender<Result<u32>>,
}

/// What the dispatcher sends.
enum Job {
    Acquire(Queued),
    Settle(QueuedSettle),
}

/// Script calls of decisions in flight at once. While they are all out, new decisions
/// queue and leave together; more would only split batches without adding throughput.
const CALLS_IN_FLIGHT: usize = 4;
/// The most decisions in one call: bounds how long one script holds Redis (~5 µs each).
const MAX_BATCH: usize = 64;

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, status) = match &self.store.conns.pool {
            Pools::Single(p) => ("single", p.status()),
            Pools::Cluster(p) => ("cluster", p.status()),
        };
        f.debug_struct("RedisBackend")
            .field("redis", &kind)
            .field("lanes", &self.store.conns.lanes.len())
            .field("pool", &status)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Builds the pool (of cluster connections when `REDIS_CLUSTER_URLS` is set); connects
    /// lazily, on the first call.
    pub(crate) fn new(config: &RateLimitConfig) -> Result<Self> {
        let lanes = config.connections().get();
        let pool_err = |e: &dyn std::fmt::Display| Error::Config {
            setting: "TORN_QUOTA_REDIS_CONNECTIONS",
            reason: e.to_string(),
        };
        let pool = if config.is_redis_cluster() {
            // The client's own connect and response timeouts stay at its defaults: `run`
            // bounds every call by connect + command timeout anyway.
            let manager = deadpool_redis::cluster::Manager::new(config.redis_cluster_urls(), false)
                .map_err(|e| Error::Config {
                    setting: "REDIS_CLUSTER_URLS",
                    reason: format!("redis refused them: {:?}", e.kind()),
                })?;
            let pool = deadpool_redis::cluster::Pool::builder(manager)
                .max_size(lanes)
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(config.connect_timeout()))
                .create_timeout(Some(config.connect_timeout()))
                .recycle_timeout(Some(config.command_timeout()))
                .build()
                .map_err(|e| pool_err(&e))?;
            Pools::Cluster(pool)
        } else {
            let conn_config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(config.connect_timeout()))
                .set_response_timeout(Some(config.command_timeout()));
            let manager =
                Manager::new_with_config(config.redis_url(), conn_config).map_err(|e| {
                    Error::Config {
                        setting: "REDIS_URL",
                        reason: format!("redis refused it: {e}"),
                    }
                })?;
            let pool = Pool::builder(manager)
                .max_size(lanes)
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(config.connect_timeout()))
                .create_timeout(Some(config.connect_timeout()))
                .recycle_timeout(Some(config.command_timeout()))
                .build()
                .map_err(|e| pool_err(&e))?;
            Pools::Single(pool)
        };
        Ok(Self {
            store: Arc::new(Store {
                conns: Arc::new(Conns {
                    pool,
                    lanes: (0..lanes).map(|_| Lane::default()).collect(),
                    next: AtomicUsize::new(0),
                    connect_timeout: config.connect_timeout(),
                    command_timeout: config.command_timeout(),
                }),
                queue: Mutex::new(None),
            }),
            keys: KeyBuilder::new(config.key_prefix()),
        })
    }

    /// Another key space on this backend's store: the same connections and dispatcher.
    pub(crate) fn sibling(&self, key_prefix: &str) -> Self {
        Self {
            store: Arc::clone(&self.store),
            keys: KeyBuilder::new(key_prefix),
        }
    }

    pub(crate) fn keys(&self) -> &KeyBuilder {
        &self.keys
    }

    pub(crate) async fn run<T, F, Fut>(&self, operation: &'static str, f: F) -> Result<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.store.conns.run(operation, f).await
    }

    fn bound(&self) -> Duration {
        self.store.conns.connect_timeout + self.store.conns.command_timeout
    }
}

impl Conns {
    /// A connection to send one call on, and the lane it came from.
    async fn connection(&self, operation: &'static str) -> Result<(usize, Conn)> {
        let lane = self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        if let Some(conn) = self.lane(lane).as_ref() {
            return Ok((lane, conn.conn()));
        }
        let _refilling = self.lanes[lane].refill.lock().await;
        if let Some(conn) = self.lane(lane).as_ref() {
            return Ok((lane, conn.conn()));
        }
        let pool_error = |e: PoolError| match e {
            PoolError::Backend(source) => Error::Unavailable { operation, source },
            _ => Error::Timeout {
                operation,
                timeout: self.connect_timeout,
            },
        };
        let pooled = match &self.pool {
            Pools::Single(p) => Pooled::Single(p.get().await.map_err(pool_error)?),
            Pools::Cluster(p) => Pooled::Cluster(p.get().await.map_err(pool_error)?),
        };
        let conn = pooled.conn();
        *self.lane(lane) = Some(pooled);
        Ok((lane, conn))
    }

    fn is_cluster(&self) -> bool {
        matches!(self.pool, Pools::Cluster(_))
    }

    fn lane(&self, i: usize) -> std::sync::MutexGuard<'_, Option<Pooled>> {
        self.lanes[i]
            .conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs one command with the command timeout; a connection-level failure empties the
    /// lane so the next call gets a fresh connection from the pool. Its latency, pool wait
    /// included, goes to `torn_quota_redis_seconds{operation}`.
    pub(crate) async fn run<T, F, Fut>(&self, operation: &'static str, f: F) -> Result<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let started = Instant::now();
        let result = self.run_untimed(operation, f).await;
        metrics::histogram!("torn_quota_redis_seconds", "operation" => operation)
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn run_untimed<T, F, Fut>(&self, operation: &'static str, f: F) -> Result<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let call = async {
            let (lane, conn) = self.connection(operation).await?;
            match f(conn).await {
                Ok(v) => Ok(v),
                Err(e) if is_connectivity(&e) => {
                    self.lane(lane).take();
                    Err(Error::Unavailable {
                        operation,
                        source: e,
                    })
                }
                Err(e) => Err(script_error(operation, e)),
            }
        };
        // The connection has its own timeouts; this bounds the whole call, pool wait
        // included, so no call outlives connect + command timeout.
        let bound = self.connect_timeout + self.command_timeout;
        match tokio::time::timeout(bound, call).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                operation,
                timeout: bound,
            }),
        }
    }

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
                    let _ = q.reply.send(Err(duplicate(&e)));
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
                    .eval::<Vec<i64>, _, _>(&mut c, &keys, &args)
                    .await
            })
            .await;
        match reply {
            Ok(counts) if counts.len() == batch.len() => {
                for (q, n) in batch.into_iter().zip(counts) {
                    let _ = q.reply.send(Ok(n.max(0) as u32));
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
                    let _ = q.reply.send(Err(duplicate(&e)));
                }
            }
        }
    }
}

/// Takes queued jobs and sends them, at most [`CALLS_IN_FLIGHT`] rounds at once: whatever
/// queued while those were out leaves together in the next round (one call for its
/// decisions, one for its settles, per Redis Cluster slot).
async fn dispatch(conns: Arc<Conns>, mut queue: mpsc::UnboundedReceiver<Job>) {
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

/// Reads acquire.lua's reply (with its time).
fn decision(reply: &[i64]) -> Result<RawDecision> {
    match reply[..] {
        [granted, remaining, retry, at] => Ok(RawDecision {
            granted: granted == 1,
            remaining: remaining as u32,
            retry_after_ms: retry as u64,
            at_ms: at as u64,
        }),
        _ => Err(unexpected("acquire", reply)),
    }
}

/// Reads one entry of acquire_many.lua's reply: a decision, or acquire.lua's error message.
fn entry_decision(entry: Value) -> Result<RawDecision> {
    match entry {
        Value::Array(items) => {
            let ints: Vec<i64> = items
                .into_iter()
                .map(|v| match v {
                    Value::Int(i) => i,
                    _ => -1,
                })
                .collect();
            decision(&ints)
        }
        Value::BulkString(bytes) => {
            let msg = String::from_utf8_lossy(&bytes);
            let detail = msg.strip_prefix("ERR ").unwrap_or(&msg).to_owned();
            Err(script_error(
                "acquire",
                RedisError::from((
                    ErrorKind::Server(ServerErrorKind::ResponseError),
                    "script error",
                    detail,
                )),
            ))
        }
        other => Err(unexpected_msg("acquire", &format!("{other:?}"))),
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
    pub(crate) async fn acquire(&self, user: TornUserId, ask: &Ask<'_>) -> Result<RawDecision> {
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
                source: RedisError::from((ErrorKind::Io, "the decision dispatcher stopped")),
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
        let (tx, rx) = oneshot::channel();
        self.enqueue(Job::Settle(QueuedSettle {
            key: self.keys.bucket(user).state,
            args: [stamp_ms, u64::from(cost), window_ms],
            reply: tx,
        }));
        let bound = self.bound();
        match tokio::time::timeout(bound, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(Error::Unavailable {
                operation: "settle",
                source: RedisError::from((ErrorKind::Io, "the decision dispatcher stopped")),
            }),
            Err(_) => Err(Error::Timeout {
                operation: "settle",
                timeout: bound,
            }),
        }
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

fn is_connectivity(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

/// Maps a script's error reply. The scripts' messages name the argument and carry no key.
fn script_error(operation: &'static str, e: RedisError) -> Error {
    let detail = e.detail().unwrap_or_default();
    if let Some(rest) = detail.strip_prefix("acquire: cost ") {
        // "acquire: cost C exceeds the limit L (reserve R): ..."
        let nums: Vec<u32> = rest
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|s| s.parse().ok())
            .collect();
        if let [cost, limit, reserve, ..] = nums[..] {
            return Error::CostExceedsLimit {
                cost,
                limit: limit.saturating_sub(reserve),
            };
        }
    }
    Error::Redis {
        operation,
        source: e,
    }
}

/// The same failure for each caller of a failed batch (the error type is not `Clone`: some
/// variants hold boxed sources, which a batch call never produces).
fn duplicate(e: &Error) -> Error {
    match e {
        Error::Unavailable { operation, source } => Error::Unavailable {
            operation,
            source: source.clone(),
        },
        Error::Redis { operation, source } => Error::Redis {
            operation,
            source: source.clone(),
        },
        Error::Timeout { operation, timeout } => Error::Timeout {
            operation,
            timeout: *timeout,
        },
        other => unexpected_msg("acquire", &other.to_string()),
    }
}

fn unexpected(operation: &'static str, reply: &[i64]) -> Error {
    unexpected_msg(operation, &format!("{reply:?}"))
}

fn unexpected_msg(operation: &'static str, detail: &str) -> Error {
    Error::Redis {
        operation,
        source: RedisError::from((
            ErrorKind::UnexpectedReturnType,
            "unexpected script reply",
            detail.to_owned(),
        )),
    }
}
