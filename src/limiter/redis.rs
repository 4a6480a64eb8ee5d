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

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use deadpool_redis::{Manager, Pool, PoolError, Runtime};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, RedisError, Script, ServerErrorKind, Value};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::error::{Error, Result};
use crate::limiter::backend::{Ask, RawDecision, RawStatus};
use crate::limiter::keys::KeyBuilder;
use crate::limiter::{RateLimitConfig, TornUserId};

/// The scripts, hashed once per process. `invoke_async` sends `EVALSHA` and falls back to
/// loading the script only when Redis answers `NOSCRIPT`.
pub(crate) struct Scripts {
    pub(crate) acquire: Script,
    pub(crate) acquire_many: Script,
    pub(crate) status: Script,
    pub(crate) penalize: Script,
    pub(crate) refund: Script,
}

pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    acquire: Script::new(crate::lua::ACQUIRE),
    acquire_many: Script::new(&crate::lua::acquire_many_source()),
    status: Script::new(crate::lua::STATUS),
    penalize: Script::new(crate::lua::PENALIZE),
    refund: Script::new(crate::lua::REFUND),
});

/// One shared connection slot. `refill` makes the callers that find it empty wait for one
/// of them to fetch a connection, instead of each draining the pool.
#[derive(Default)]
struct Lane {
    conn: Mutex<Option<deadpool_redis::Connection>>,
    refill: tokio::sync::Mutex<()>,
}

pub(crate) struct RedisBackend {
    conns: Arc<Conns>,
    keys: KeyBuilder,
    /// The coalescing dispatcher's queue, started on first use in the caller's runtime and
    /// restarted if that runtime went away.
    queue: Mutex<Option<mpsc::UnboundedSender<Queued>>>,
}

/// The connections, shared with the dispatcher task.
struct Conns {
    pool: Pool,
    lanes: Box<[Lane]>,
    next: AtomicUsize,
    connect_timeout: Duration,
    command_timeout: Duration,
}

/// One decision waiting for its script call: acquire.lua's four keys (the idempotency
/// record empty when unused) and five arguments.
struct Queued {
    keys: [String; 4],
    args: [u64; 5],
    reply: oneshot::Sender<Result<RawDecision>>,
}

/// Script calls of decisions in flight at once. While they are all out, new decisions
/// queue and leave together; more would only split batches without adding throughput.
const CALLS_IN_FLIGHT: usize = 4;
/// The most decisions in one call: bounds how long one script holds Redis (~5 µs each).
const MAX_BATCH: usize = 64;

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("lanes", &self.conns.lanes.len())
            .field("pool", &self.conns.pool.status())
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Builds the pool; connects lazily, on the first call.
    pub(crate) fn new(config: &RateLimitConfig) -> Result<Self> {
        let conn_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout()))
            .set_response_timeout(Some(config.command_timeout()));
        let manager = Manager::new_with_config(config.redis_url(), conn_config).map_err(|e| {
            Error::Config {
                setting: "REDIS_URL",
                reason: format!("redis refused it: {e}"),
            }
        })?;
        let lanes = config.connections().get();
        let pool = Pool::builder(manager)
            .max_size(lanes)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.connect_timeout()))
            .create_timeout(Some(config.connect_timeout()))
            .recycle_timeout(Some(config.command_timeout()))
            .build()
            .map_err(|e| Error::Config {
                setting: "TORN_QUOTA_REDIS_CONNECTIONS",
                reason: e.to_string(),
            })?;
        Ok(Self {
            conns: Arc::new(Conns {
                pool,
                lanes: (0..lanes).map(|_| Lane::default()).collect(),
                next: AtomicUsize::new(0),
                connect_timeout: config.connect_timeout(),
                command_timeout: config.command_timeout(),
            }),
            keys: KeyBuilder::new(config.key_prefix()),
            queue: Mutex::new(None),
        })
    }

    pub(crate) fn keys(&self) -> &KeyBuilder {
        &self.keys
    }

    pub(crate) async fn run<T, F, Fut>(&self, operation: &'static str, f: F) -> Result<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.conns.run(operation, f).await
    }
}

impl Conns {
    /// A connection to send one call on, and the lane it came from.
    async fn connection(&self, operation: &'static str) -> Result<(usize, MultiplexedConnection)> {
        let lane = self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        if let Some(conn) = self.lane(lane).as_ref() {
            return Ok((lane, (**conn).clone()));
        }
        let _refilling = self.lanes[lane].refill.lock().await;
        if let Some(conn) = self.lane(lane).as_ref() {
            return Ok((lane, (**conn).clone()));
        }
        let pooled = self.pool.get().await.map_err(|e| match e {
            PoolError::Backend(source) => Error::Unavailable { operation, source },
            _ => Error::Timeout {
                operation,
                timeout: self.connect_timeout,
            },
        })?;
        let conn = (*pooled).clone();
        *self.lane(lane) = Some(pooled);
        Ok((lane, conn))
    }

    fn lane(&self, i: usize) -> std::sync::MutexGuard<'_, Option<deadpool_redis::Connection>> {
        self.lanes[i]
            .conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs one command with the command timeout; a connection-level failure empties the
    /// lane so the next call gets a fresh connection from the pool.
    pub(crate) async fn run<T, F, Fut>(&self, operation: &'static str, f: F) -> Result<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
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
                    let mut inv = SCRIPTS.acquire.prepare_invoke();
                    for k in one.keys.iter().filter(|k| !k.is_empty()) {
                        inv.key(k);
                    }
                    for a in one.args {
                        inv.arg(a);
                    }
                    inv.invoke_async::<Vec<i64>>(&mut c).await
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
        let reply = self
            .run("acquire", |mut c| {
                let mut inv = SCRIPTS.acquire_many.prepare_invoke();
                inv.arg(batch.len());
                for q in &batch {
                    for k in &q.keys {
                        inv.key(k);
                    }
                    for a in q.args {
                        inv.arg(a);
                    }
                }
                async move { inv.invoke_async::<Vec<Value>>(&mut c).await }
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

/// Takes queued decisions and sends them, at most [`CALLS_IN_FLIGHT`] calls at once:
/// whatever queued while those were out leaves together in the next call.
async fn dispatch(conns: Arc<Conns>, mut queue: mpsc::UnboundedReceiver<Queued>) {
    let slots = Arc::new(Semaphore::new(CALLS_IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(q) => batch.push(q),
                Err(_) => break,
            }
        }
        let conns = Arc::clone(&conns);
        tokio::spawn(async move {
            conns.send(batch).await;
            drop(slot);
        });
    }
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
        ];
        let (tx, rx) = oneshot::channel();
        self.enqueue(Queued {
            keys,
            args,
            reply: tx,
        });
        let bound = self.conns.connect_timeout + self.conns.command_timeout;
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

    fn enqueue(&self, mut item: Queued) {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = queue.as_ref() {
            match tx.send(item) {
                Ok(()) => return,
                Err(mpsc::error::SendError(back)) => item = back,
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(dispatch(Arc::clone(&self.conns), rx));
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
                    .key(&keys.state)
                    .key(&keys.limit)
                    .key(&keys.penalty)
                    .arg(limit)
                    .arg(window_ms)
                    .invoke_async(&mut c)
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
            SCRIPTS
                .penalize
                .key(&key)
                .arg(hold_ms)
                .invoke_async(&mut c)
                .await
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
            let mut inv = SCRIPTS.refund.key(&state);
            if let Some(idem) = &idem {
                inv.key(idem);
            }
            inv.arg(at_ms).arg(cost).invoke_async(&mut c).await
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
