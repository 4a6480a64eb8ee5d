//! Connections: the pool of a single Redis with its timeouts, the Redis Cluster client, or
//! the primary that Sentinel names; the lanes that share a few multiplexed connections, and
//! the bound on every call.
//!
//! `rediss://` runs on rustls with the public web roots, or the CA in
//! `TORN_QUOTA_REDIS_CA_FILE`; deadpool-redis takes the `ConnectionInfo` that
//! `Client::build_with_tls` made, so the certificates reach every connection it creates.
//! A cluster takes them through `ClusterClientBuilder::certs`, which redis-rs applies to
//! every node it connects to, the seeds and the nodes `CLUSTER SLOTS` names alike (the
//! seeds' own `ConnectionInfo` gives only their addresses).
//! Behind Sentinel, a lane whose connection failed (or answered `READONLY`: the primary it
//! reached was demoted) asks the sentinels for the current primary on its next call; redis-rs
//! does not follow `+switch-master` by itself.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use deadpool_redis::{Manager, Pool, PoolError, Runtime};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ErrorKind, IntoConnectionInfo, RedisError,
    RedisFuture, TlsMode, Value,
};
use tokio::sync::watch;

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
    /// No pool: each lane opens its own cluster connection from the client when it needs
    /// one. A cluster connection is multiplexed over every node already, and
    /// deadpool-redis's cluster manager builds its client from URLs alone, which would drop
    /// the certificates.
    Cluster(Box<ClusterClient>),
    /// No pool: each lane asks the sentinels for the primary when it needs a connection.
    Sentinel(Box<Sentinel>),
}

/// The sentinels, asked one lane at a time, and the primary they named last.
pub(super) struct Sentinel {
    client: tokio::sync::Mutex<SentinelClient>,
    conn_config: AsyncConnectionConfig,
    primary: Mutex<Option<String>>,
}

/// A connection held by a lane: out of the pool, to the cluster, or to the primary
/// Sentinel named.
enum Pooled {
    Single(deadpool_redis::Connection),
    Cluster(ClusterConnection),
    Sentinel(MultiplexedConnection),
}

impl Pooled {
    fn conn(&self) -> Conn {
        match self {
            Pooled::Single(c) => Conn::Single((**c).clone()),
            Pooled::Cluster(c) => Conn::Cluster(c.clone()),
            Pooled::Sentinel(c) => Conn::Single(c.clone()),
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
    /// Builds the pool (the cluster client when `REDIS_CLUSTER_URLS` is set, the sentinel
    /// client with `REDIS_SENTINEL_URLS`) and its lanes; connects lazily, on the first call.
    pub(super) fn new(config: &RateLimitConfig) -> Result<Self> {
        let lanes = config.connections().get();
        let pool_err = |e: &dyn std::fmt::Display| Error::Config {
            setting: "TORN_QUOTA_REDIS_CONNECTIONS",
            reason: e.to_string(),
        };
        let certificates = config.redis_tls_certificates()?;
        let conn_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout()))
            .set_response_timeout(Some(config.command_timeout()));
        let pool = if config.is_redis_sentinel() {
            Pools::Sentinel(Box::new(sentinel(config, certificates, conn_config)?))
        } else if config.is_redis_cluster() {
            // The client's own connect and response timeouts stay at its defaults: `run`
            // bounds every call by connect + command timeout anyway, and `connection` bounds
            // opening a cluster connection by the connect timeout.
            let mut b = ClusterClientBuilder::new(config.redis_cluster_urls());
            if let Some(certs) = certificates {
                b = b.certs(certs);
            }
            let client = b.build().map_err(|e| Error::Config {
                setting: "REDIS_CLUSTER_URLS",
                reason: format!("redis refused them: {:?}", e.kind()),
            })?;
            Pools::Cluster(Box::new(client))
        } else {
            let refused = |e: RedisError| Error::Config {
                setting: "REDIS_URL",
                reason: format!("redis refused it: {e}"),
            };
            let info = config.redis_url().into_connection_info().map_err(refused)?;
            // build_with_tls puts the certificates into the connection info, which the
            // pool's manager keeps (its own URL-based config would drop them).
            let info = match certificates {
                Some(certs) => redis::Client::build_with_tls(info, certs)
                    .map_err(refused)?
                    .get_connection_info()
                    .clone(),
                None => info,
            };
            let manager = Manager::new_with_config(info, conn_config).map_err(refused)?;
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
            tls: uses_tls(config),
            primary_changes: watch::Sender::new(0),
        })
    }
}

/// Whether connections run over TLS: their failures then say so.
fn uses_tls(config: &RateLimitConfig) -> bool {
    if config.is_redis_sentinel() {
        config
            .redis_sentinel_urls()
            .iter()
            .any(|u| u.starts_with("rediss://"))
    } else if config.is_redis_cluster() {
        config
            .redis_cluster_urls()
            .iter()
            .any(|u| u.starts_with("rediss://"))
    } else {
        config.redis_url().starts_with("rediss://")
    }
}

/// The sentinel client: the sentinels' addresses, the service, and how to reach the
/// primary (TLS when the sentinels are reached over TLS, the password of the sentinels'
/// URLs, the same certificates).
fn sentinel(
    config: &RateLimitConfig,
    certificates: Option<redis::TlsCertificates>,
    conn_config: AsyncConnectionConfig,
) -> Result<Sentinel> {
    let refused = |e: &RedisError| Error::Config {
        setting: "REDIS_SENTINEL_URLS",
        reason: format!("redis refused them: {:?}", e.kind()),
    };
    let mut addrs = Vec::new();
    let mut redis_info = None;
    for url in config.redis_sentinel_urls() {
        let info = url.into_connection_info().map_err(|e| refused(&e))?;
        redis_info.get_or_insert_with(|| info.redis_settings().clone());
        addrs.push(info.addr().clone());
    }
    let tls = addrs
        .iter()
        .any(|a| matches!(a, ConnectionAddr::TcpTls { .. }));
    let master = config.redis_sentinel_master().unwrap_or_default();
    let mut b = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)
        .map_err(|e| refused(&e))?;
    if tls {
        b = b
            .set_client_to_redis_tls_mode(TlsMode::Secure)
            .set_client_to_sentinel_tls_mode(TlsMode::Secure);
    }
    if let Some(certs) = certificates {
        b = b
            .set_client_to_redis_certificates(certs.clone())
            .set_client_to_sentinel_certificates(certs);
    }
    // The primary usually shares the password (and user) written in the sentinels' URLs.
    if let Some(info) = redis_info {
        if let Some(user) = info.username() {
            b = b.set_client_to_redis_username(user);
        }
        if let Some(password) = info.password() {
            b = b.set_client_to_redis_password(password);
        }
        b = b.set_client_to_redis_db(info.db());
    }
    if let Some(password) = config.redis_sentinel_password() {
        b = b.set_client_to_sentinel_password(password);
    }
    Ok(Sentinel {
        client: tokio::sync::Mutex::new(b.build().map_err(|e| refused(&e))?),
        conn_config,
        primary: Mutex::new(None),
    })
}

/// The connections, shared with the dispatcher task.
pub(super) struct Conns {
    pub(super) pool: Pools,
    pub(super) lanes: Box<[Lane]>,
    next: AtomicUsize,
    pub(super) connect_timeout: Duration,
    pub(super) command_timeout: Duration,
    tls: bool,
    /// Counts the times Sentinel named a primary other than the one before (a failover
    /// followed); see [`Conns::primary_changes`].
    primary_changes: watch::Sender<u64>,
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
                source: Source::new(self.named(e)),
            },
            _ => Error::Timeout {
                operation,
                timeout: self.connect_timeout,
            },
        };
        let pooled = match &self.pool {
            Pools::Single(p) => Pooled::Single(p.get().await.map_err(pool_error)?),
            Pools::Cluster(c) => Pooled::Cluster(
                self.within_connect_timeout(operation, c.get_async_connection())
                    .await?,
            ),
            Pools::Sentinel(s) => Pooled::Sentinel(self.primary(s, operation).await?),
        };
        let conn = pooled.conn();
        *self.lane(lane) = Some(pooled);
        Ok((lane, conn))
    }

    /// A connection to the primary the sentinels name now, within the connect timeout.
    async fn primary(
        &self,
        s: &Sentinel,
        operation: &'static str,
    ) -> Result<MultiplexedConnection> {
        let ask = async {
            let client = s.client.lock().await.async_get_client().await?;
            let addr = client.get_connection_info().addr().to_string();
            let conn = client
                .get_multiplexed_async_connection_with_config(&s.conn_config)
                .await?;
            Ok::<_, RedisError>((addr, conn))
        };
        let (addr, conn) = self.within_connect_timeout(operation, ask).await?;
        let mut primary = s.primary.lock().unwrap_or_else(PoisonError::into_inner);
        if primary.as_ref().is_some_and(|p| *p != addr) {
            tracing::warn!(primary = %addr, "redis primary changed: following the failover");
            self.primary_changes.send_modify(|n| *n += 1);
        }
        *primary = Some(addr);
        Ok(conn)
    }

    /// Opening a connection, bounded by the connect timeout: a refusal is Redis being
    /// unavailable (TLS named, when it is TLS), running out of time is a timeout.
    async fn within_connect_timeout<T>(
        &self,
        operation: &'static str,
        open: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.connect_timeout, open).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(source)) => Err(Error::Unavailable {
                operation,
                source: Source::new(self.named(source)),
            }),
            Err(_) => Err(Error::Timeout {
                operation,
                timeout: self.connect_timeout,
            }),
        }
    }

    /// A receiver that sees a new value each time the store followed a failover to another
    /// primary (Sentinel only): the hook for whatever must learn that state may have been
    /// lost (writes the old primary had not replicated).
    /// How many times the store followed the sentinels to another primary so far.
    pub(crate) fn primary_generation(&self) -> u64 {
        *self.primary_changes.borrow()
    }

    pub(crate) fn primary_changes(&self) -> watch::Receiver<u64> {
        self.primary_changes.subscribe()
    }

    /// A TLS failure says so: rustls names the certificate problem, this names TLS and the
    /// settings to check, so an operator is not left with a bare "io error".
    fn named(&self, e: RedisError) -> RedisError {
        if !self.tls {
            return e;
        }
        let text = e.to_string();
        let lower = text.to_ascii_lowercase();
        if ["certificate", "tls", "handshake", "alert", "issuer"]
            .iter()
            .any(|w| lower.contains(w))
        {
            RedisError::from((
                ErrorKind::Io,
                "tls failed: the certificate was refused (check TORN_QUOTA_REDIS_CA_FILE and \
                 TORN_QUOTA_REDIS_CLIENT_CERT_FILE)",
                text,
            ))
        } else {
            e
        }
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
                        source: Source::new(self.named(e)),
                    })
                }
                // A demoted primary: behind Sentinel the lane asks for the new one on its
                // next call, and the call counts as Redis being unavailable (the script did
                // not run: its first write was refused, and it writes only after reading).
                Err(e) if e.kind() == ErrorKind::Server(redis::ServerErrorKind::ReadOnly) => {
                    self.lane(lane).take();
                    if matches!(self.pool, Pools::Sentinel(_)) {
                        Err(Error::Unavailable {
                            operation,
                            source: Source::new(e),
                        })
                    } else {
                        Err(script_error(operation, e))
                    }
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
