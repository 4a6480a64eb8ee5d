//! The legacy per-key limiter, ported from the old TypeScript `DatabaseRateLimiter`: one row
//! per request in PostgreSQL, at most `limit` rows per key hash in any window (50 per 60 s by
//! default), and a periodic cleanup of rows older than the window.
//!
//! Two things differ from the old code, both on purpose:
//!
//! - **It is race-free across processes.** The old limiter counted and then inserted, so two
//!   workers could both read 49 and both take the 50th slot. Here each grant runs in a
//!   transaction that first takes a transaction-scoped advisory lock on the key hash
//!   (`pg_advisory_xact_lock`), so the decisions of one key are serialised in every process
//!   that uses this port, while different keys never wait for each other (two hashes that
//!   share their first 32 bits only share a queue). Rows written by writers that do not
//!   take the lock (the old TypeScript code, while it still runs) are counted but not
//!   serialised. A refusal needs no lock (an unlocked count can only be short of the truth,
//!   so a full window seen without the lock is full): a key polled while full costs one
//!   statement and never queues behind the lock.
//! - **Time comes from the database** (`clock_timestamp()`, read after the lock is held), not
//!   from the process: workers' clocks may disagree, and the order of the rows is then the
//!   order of the decisions.
//!
//! It writes `sentinel_rate_limit_requests` (the table migration 0005 renamed) and fills
//! `user_id` from `sentinel_api_key_user_mapping` when the key's account is known.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result, Source};
use crate::limiter::RateLimitConfig;

/// The first half of the two-part advisory lock key: keeps these locks apart from other
/// users of advisory locks in the same database (sqlx's migration lock uses the one-part
/// `bigint` form, a separate key space). "tq" in ASCII.
const LOCK_CLASS: i32 = 0x7471;

/// Rows deleted per cleanup statement: bounds how long one statement holds row locks.
const CLEANUP_BATCH: i64 = 5_000;

/// One decision, taken after the lock is held. The rows of the last window are counted
/// (`requested_at > now - window`: a row at exactly `now - window` has left, the limiter's
/// rule that a grant at `t` counts until `t + window`), `cost` rows are inserted when they
/// fit, and when they do not, the wait is until the row whose expiry makes room has left.
/// A data-modifying CTE runs once whether or not it is read, and every part of the statement
/// sees the rows as they were before the insert. `$5` false makes it a check that writes
/// nothing.
const DECIDE: &str = "
WITH clock AS (SELECT clock_timestamp() AS t),
recent AS (
    SELECT r.requested_at
    FROM sentinel_rate_limit_requests r, clock
    WHERE r.api_key_hash = $1
      AND r.requested_at > clock.t - $3::bigint * interval '1 millisecond'
),
used AS (SELECT count(*)::bigint AS n FROM recent),
inserted AS (
    INSERT INTO sentinel_rate_limit_requests (api_key_hash, requested_at, user_id)
    SELECT $1, clock.t,
           (SELECT m.user_id FROM sentinel_api_key_user_mapping m
             WHERE m.api_key_hash = $1 AND m.deleted_at IS NULL)
    FROM clock, used, generate_series(1, $4::bigint)
    WHERE $5::boolean AND used.n + $4::bigint <= $2::bigint
    RETURNING 1
)
SELECT used.n,
       (SELECT count(*) FROM inserted)::bigint,
       CASE WHEN used.n + $4::bigint > $2::bigint THEN (
           SELECT ceil(extract(epoch FROM
                       (r.requested_at + $3::bigint * interval '1 millisecond' - clock.t))
                       * 1000)::bigint
           FROM recent r
           ORDER BY r.requested_at
           OFFSET used.n + $4::bigint - $2::bigint - 1
           LIMIT 1)
       END
FROM used, clock";

/// How many rows of one key hash the last window holds.
const USED: &str = "
SELECT count(*)::bigint FROM sentinel_rate_limit_requests
WHERE api_key_hash = $1
  AND requested_at > clock_timestamp() - $2::bigint * interval '1 millisecond'";

/// Deletes one batch of rows older than the window. `SKIP LOCKED` lets several processes
/// clean at once without queueing behind each other; `ctid` works on a table adopted from
/// production whatever its primary key.
const CLEANUP: &str = "
DELETE FROM sentinel_rate_limit_requests
WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM sentinel_rate_limit_requests
    WHERE requested_at <= clock_timestamp() - $1::bigint * interval '1 millisecond'
    LIMIT $2
    FOR UPDATE SKIP LOCKED))";

/// `DECIDE` with its arguments: rows used in the window, rows inserted, and the wait in
/// milliseconds when refused.
type DecideQuery<'q> =
    sqlx::query::QueryAs<'q, sqlx::Postgres, (i64, i64, Option<i64>), sqlx::postgres::PgArguments>;

/// The legacy limiter's answer for one key hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LegacyDecision {
    /// True when all `cost` units were granted (and `cost` rows written).
    pub granted: bool,
    /// Units that would be granted right after this decision.
    pub remaining: u32,
    /// Zero when granted; else the wait until the same request fits.
    pub retry_after: Duration,
}

/// The legacy per-key limiter. Cheap to clone: clones share the pool.
///
/// ```no_run
/// # async fn run() -> Result<(), torn_quota::Error> {
/// use torn_quota::RateLimitConfig;
/// use torn_quota::rollout::LegacyLimiter;
/// use torn_quota::KeyHash;
/// use torn_quota::vault::DatabaseConfig;
///
/// let config = RateLimitConfig::from_env()?;
/// let pool = DatabaseConfig::from_env()?.connect().await?;
/// let legacy = LegacyLimiter::from_config(pool, &config);
/// let shutdown = tokio_util::sync::CancellationToken::new();
/// let _cleanup = legacy.spawn_cleanup(config.legacy_cleanup_interval(), shutdown.clone());
///
/// let decision = legacy.try_acquire(KeyHash::of("AbCdEfGh12345678").as_str(), 1).await?;
/// println!("granted: {}", decision.granted);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct LegacyLimiter {
    pool: PgPool,
    limit: NonZeroU32,
    /// Whole milliseconds, as the SQL binds them.
    window_ms: i64,
    lock: bool,
}

impl LegacyLimiter {
    /// A limiter of `limit` per `window` per key hash on `pool`, whose database has the
    /// migrations applied. The window counts in whole milliseconds, at least 1.
    pub fn new(pool: PgPool, limit: NonZeroU32, window: Duration) -> Self {
        Self {
            pool,
            limit,
            window_ms: i64::try_from(window.as_millis()).unwrap_or(i64::MAX).max(1),
            lock: true,
        }
    }

    /// A limiter with the configuration's `TORN_QUOTA_LEGACY_LIMIT` and
    /// `TORN_QUOTA_LEGACY_WINDOW_MS`.
    pub fn from_config(pool: PgPool, config: &RateLimitConfig) -> Self {
        Self::new(pool, config.legacy_limit(), config.legacy_window())
    }

    /// Decides without the advisory lock, in one statement, as the old code did. **Unsafe
    /// across processes**: two concurrent decisions for one key may both take the last slot.
    /// It exists to measure what the lock costs; never use it to enforce.
    #[must_use]
    pub fn without_lock(mut self) -> Self {
        self.lock = false;
        self
    }

    /// The limit per key hash.
    pub fn limit(&self) -> NonZeroU32 {
        self.limit
    }

    /// The window.
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms as u64)
    }

    /// The pool the limiter writes through.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// One decision for `cost` units of the key whose hash is `key_hash` (64 lowercase hex
    /// characters, as [`KeyHash`](crate::identity::KeyHash) gives), now, without waiting.
    pub async fn try_acquire(&self, key_hash: &str, cost: u32) -> Result<LegacyDecision> {
        validate_hash(key_hash)?;
        if cost == 0 {
            return Err(Error::InvalidArgument {
                name: "cost",
                reason: "must be at least 1".into(),
            });
        }
        if cost > self.limit.get() {
            return Err(Error::CostExceedsLimit {
                cost,
                limit: self.limit.get(),
            });
        }
        let started = Instant::now();
        let row = if self.lock {
            self.decide_locked(key_hash, cost).await
        } else {
            self.decide_query(key_hash, cost, true)
                .fetch_one(&self.pool)
                .await
        }
        .map_err(|e| Error::Database {
            operation: "legacy acquire",
            source: Source::new(e),
        })?;
        metrics::histogram!("torn_quota_legacy_decision_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(self.to_decision(row))
    }

    /// The decision statement with its arguments bound; `write` false only checks.
    fn decide_query<'q>(&self, key_hash: &'q str, cost: u32, write: bool) -> DecideQuery<'q> {
        sqlx::query_as(DECIDE)
            .bind(key_hash)
            .bind(i64::from(self.limit.get()))
            .bind(self.window_ms)
            .bind(i64::from(cost))
            .bind(write)
    }

    async fn decide_locked(
        &self,
        key_hash: &str,
        cost: u32,
    ) -> Result<(i64, i64, Option<i64>), sqlx::Error> {
        // A refusal needs no lock: rows only ever join the window through commits, so a
        // count taken without the lock is at most the true count, and a full window seen
        // now is full. A key polled while full (the hot case) then costs one statement and
        // never queues behind the grants of its lock.
        let check = self
            .decide_query(key_hash, cost, false)
            .fetch_one(&self.pool)
            .await?;
        if check.0 + i64::from(cost) > i64::from(self.limit.get()) {
            return Ok(check);
        }
        // BEGIN and the lock in one round trip: a custom BEGIN goes out as a simple query,
        // which may hold several statements. Both numbers are formatted by Rust, never
        // taken from input.
        let mut tx = self
            .pool
            .begin_with(format!(
                "BEGIN; SELECT pg_advisory_xact_lock({LOCK_CLASS}, {})",
                lock_id(key_hash)
            ))
            .await?;
        // READ COMMITTED: this statement's snapshot is taken now, after the lock, so it sees
        // every row committed by the holders before us. Dropping `tx` on an error rolls back
        // and releases the lock.
        let row = self
            .decide_query(key_hash, cost, true)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(row)
    }

    fn to_decision(&self, (used, inserted, retry_ms): (i64, i64, Option<i64>)) -> LegacyDecision {
        let limit = i64::from(self.limit.get());
        let used = used.max(0);
        if inserted > 0 {
            LegacyDecision {
                granted: true,
                remaining: (limit - used - inserted).clamp(0, limit) as u32,
                retry_after: Duration::ZERO,
            }
        } else {
            LegacyDecision {
                granted: false,
                // More rows than the limit happen with writers that do not take the lock, or
                // after the limit was lowered: nothing is left then, never a negative.
                remaining: (limit - used).clamp(0, limit) as u32,
                // At least 1 ms: a refusal always asks the caller to wait.
                retry_after: Duration::from_millis(retry_ms.unwrap_or(1).max(1) as u64),
            }
        }
    }

    /// Units of `key_hash` recorded in the last window (the rows counted against it).
    pub async fn used(&self, key_hash: &str) -> Result<u32> {
        validate_hash(key_hash)?;
        let n: i64 = sqlx::query_scalar(USED)
            .bind(key_hash)
            .bind(self.window_ms)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| Error::Database {
                operation: "legacy status",
                source: Source::new(e),
            })?;
        Ok(n.clamp(0, i64::from(u32::MAX)) as u32)
    }

    /// Deletes every row older than the window, of every key, in batches; returns how many.
    /// Such rows never count again, and the table only grows without this.
    pub async fn cleanup_once(&self) -> Result<u64> {
        let mut total = 0;
        loop {
            let deleted = sqlx::query(CLEANUP)
                .bind(self.window_ms)
                .bind(CLEANUP_BATCH)
                .execute(&self.pool)
                .await
                .map_err(|e| Error::Database {
                    operation: "legacy cleanup",
                    source: Source::new(e),
                })?
                .rows_affected();
            total += deleted;
            if deleted < CLEANUP_BATCH as u64 {
                break;
            }
        }
        metrics::counter!("torn_quota_legacy_cleanup_rows_total").increment(total);
        Ok(total)
    }

    /// Runs [`cleanup_once`](Self::cleanup_once) now and then every `every` until `shutdown`
    /// is cancelled, on the current Tokio runtime. A failed run is logged at `warn` and the
    /// next one tries again; several processes may run it at once.
    pub fn spawn_cleanup(&self, every: Duration, shutdown: CancellationToken) -> JoinHandle<()> {
        let this = self.clone();
        let every = every.max(Duration::from_millis(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let run = tokio::select! {
                    () = shutdown.cancelled() => break,
                    run = this.cleanup_once() => run,
                };
                match run {
                    Ok(n) => tracing::debug!(deleted = n, "legacy rate-limit rows cleaned up"),
                    Err(e) => tracing::warn!(error = %e, "legacy rate-limit cleanup failed"),
                }
            }
        })
    }
}

/// The second half of a key's advisory lock: its hash's first 32 bits. SHA-256 output is
/// uniform, so keys spread over the whole space; two keys that share it only share a queue.
fn lock_id(key_hash: &str) -> i32 {
    // `validate_hash` ran: 8 hex digits always parse.
    u32::from_str_radix(&key_hash[..8], 16).map_or(0, u32::cast_signed)
}

/// The hash must look like one: a stray plain key here would be written to the table.
fn validate_hash(key_hash: &str) -> Result<()> {
    if key_hash.len() == 64
        && key_hash
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        Ok(())
    } else {
        // Never echo the value: it may be a key passed by mistake.
        Err(Error::InvalidArgument {
            name: "key_hash",
            reason: "expected the key's SHA-256 as 64 lowercase hex characters".into(),
        })
    }
}
