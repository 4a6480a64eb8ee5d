//! Connections: the pool (single Redis or Redis Cluster) with its timeouts, the lanes
//! that share a few multiplexed connections, and the bound on every call.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use deadpool_redis::{Manager, Pool, PoolError, Runtime};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, RedisError, RedisFuture, Value};

use super::decode::script_error;
use crate::error::{Error, Result, Source};
use crate::limiter::RateLimitConfig;

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
pub(super) enum Pools {
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
pub(super) struct Lane {
    conn: Mutex<Option<Pooled>>,
    refill: tokio::sync::Mutex<()>,
}

impl Conns {
    /// Builds the pool (of cluster connections when `REDIS_CLUSTER_URLS` is set) and its
    /// lanes; connects lazily, on the first call.
    pub(super) fn new(config: &RateLimitConfig) -> Result<Self> {
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
            pool,
            lanes: (0..lanes).map(|_| Lane::default()).collect(),
            next: AtomicUsize::new(0),
            connect_timeout: config.connect_timeout(),
            command_timeout: config.command_timeout(),
        })
    }
}

/// The connections, shared with the dispatcher task.
pub(super) struct Conns {
    pub(super) pool: Pools,
    pub(super) lanes: Box<[Lane]>,
    next: AtomicUsize,
    pub(super) connect_timeout: Duration,
    pub(super) command_timeout: Duration,
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
            PoolError::Backend(e) => Error::Unavailable {
                operation,
                source: Source::new(e),
            },
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

    pub(super) fn is_cluster(&self) -> bool {
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
                        source: Source::new(e),
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
}

fn is_connectivity(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}
