//! The per-user limiter: an exact rolling window per Torn user id, shared by every process
//! through Lua scripts in Redis, or kept in this process by the in-memory backend.

mod backend;
mod clock;
mod config;
mod decision;
mod fallback;
mod grant;
mod journal;
mod keys;
mod lease;
mod memory;
mod request;
mod status;
mod store;
mod wait;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
// The limiter's own files name the identity it buckets by through here.
use crate::identity::TornUserId;
use backend::{Ask, RawDecision};
use fallback::{Fallback, Gate};
use memory::MemoryBackend;
use status::to_status;
pub(crate) use store::Conn as RedisConn;
use store::RedisBackend;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{MAX_CONNECTIONS, Mode, OnRedisDown, RateLimitConfig, RateLimitConfigBuilder};
pub use decision::Decision;
pub use grant::Grant;
pub use keys::{BucketKeys, DisagreementKeys, KeyBuilder};
pub use lease::Lease;
pub use request::{Priority, Request};
pub use status::Status;
pub use wait::Wait;

#[derive(Debug)]
enum Backend {
    Memory(MemoryBackend),
    Redis(RedisBackend),
}

/// The per-user limiter. Cheap to clone; every clone shares one backend.
///
/// ```no_run
/// # async fn run() -> Result<(), torn_quota::Error> {
/// use torn_quota::{Decision, Limiter, RateLimitConfig, TornUserId};
///
/// let limiter = Limiter::redis(RateLimitConfig::from_env()?)?;
/// match limiter.try_acquire(TornUserId::new(4), 1).await? {
///     Decision::Granted(_) => { /* call Torn */ }
///     Decision::Limited { retry_after, .. } => println!("come back in {retry_after:?}"),
///     _ => {}
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: RateLimitConfig,
    backend: Backend,
    fallback: Option<Fallback>,
    /// True while a task watches for Redis to answer again (see [`Limiter::watch_recovery`]).
    watching: std::sync::atomic::AtomicBool,
    /// True once the epoch heartbeat runs (see [`Limiter::start_heartbeat`]).
    beating: std::sync::atomic::AtomicBool,
}

impl Limiter {
    /// A limiter shared through Redis at [`RateLimitConfig::redis_url`], or through the
    /// Redis Cluster at [`RateLimitConfig::redis_cluster_urls`] when those are set. It
    /// connects on the first call; [`ping`](Self::ping) checks the connection now.
    pub fn redis(config: RateLimitConfig) -> Result<Self> {
        let backend = Backend::Redis(RedisBackend::new(&config)?);
        let fallback = Fallback::for_config(&config);
        Ok(Self::from_parts(config, backend, fallback))
    }

    /// A limiter for this process alone, on the system clock.
    pub fn in_memory(config: RateLimitConfig) -> Self {
        Self::in_memory_with_clock(config, Arc::new(SystemClock::default()))
    }

    /// A limiter for this process alone, on an injected clock.
    pub fn in_memory_with_clock(config: RateLimitConfig, clock: Arc<dyn Clock>) -> Self {
        let every = config.cleanup_interval().as_millis() as u64;
        Self::from_parts(
            config,
            Backend::Memory(MemoryBackend::new(clock, every)),
            None,
        )
    }

    fn from_parts(config: RateLimitConfig, backend: Backend, fallback: Option<Fallback>) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                backend,
                fallback,
                watching: std::sync::atomic::AtomicBool::new(false),
                beating: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &RateLimitConfig {
        &self.inner.config
    }

    /// A second limiter beside this one: the same backend (and Redis, timeouts and
    /// failure policy), its own key prefix (this one's + `:` + `name`), its own limit and
    /// window. For quotas other than the owners', such as the per-IP cap or an owner's
    /// share for pooled work.
    ///
    /// Siblings share this limiter's Redis store (connections + dispatcher): no new pool,
    /// so a process holds [`connections`](RateLimitConfig::connections) to its Redis
    /// however many siblings it uses, and their calls coalesce together. Only the key
    /// space, limit and window are new (and the local fallback's counts, kept per key
    /// space). In memory, the sibling has its own store on the same clock.
    pub fn sibling(&self, name: &str, limit: NonZeroU32, window: Duration) -> Result<Self> {
        if limit.get() > MAX_UNITS {
            return Err(Error::InvalidArgument {
                name: "limit",
                reason: format!(
                    "the '{name}' quota's limit must be at most {MAX_UNITS}, got {limit}"
                ),
            });
        }
        let base = self.config();
        let config = RateLimitConfig::builder()
            .limit(limit)
            .window(window)
            .key_prefix(KeyBuilder::new(base.key_prefix()).sibling_prefix(name))
            .redis_url(base.redis_url())
            .redis_cluster_urls(base.redis_cluster_urls())
            .connect_timeout(base.connect_timeout())
            .command_timeout(base.command_timeout())
            .reconnect_interval(base.reconnect_interval())
            .connections(base.connections())
            .on_redis_down(base.on_redis_down())
            .cleanup_interval(base.cleanup_interval())
            .build()?;
        match &self.inner.backend {
            Backend::Memory(m) => Ok(Self::in_memory_with_clock(config, m.clock())),
            Backend::Redis(r) => {
                let backend = Backend::Redis(r.sibling(config.key_prefix()));
                let fallback = Fallback::for_config(&config);
                Ok(Self::from_parts(config, backend, fallback))
            }
        }
    }

    /// A small value every process shares through Redis under this limiter's prefix, such
    /// as the owner of a key hash, so that one process's lookup serves all. `None` when
    /// absent or expired. In memory there is nothing to share: always `None`.
    pub async fn recall(&self, name: &str) -> Result<Option<String>> {
        match &self.inner.backend {
            Backend::Memory(_) => Ok(None),
            Backend::Redis(r) => r.recall(name).await,
        }
    }

    /// Stores a value for [`recall`](Self::recall) for `ttl` (a no-op in memory).
    pub async fn remember(&self, name: &str, value: &str, ttl: Duration) -> Result<()> {
        match &self.inner.backend {
            Backend::Memory(_) => Ok(()),
            Backend::Redis(r) => r.remember(name, value, ttl.as_millis() as u64).await,
        }
    }

    /// Runs Redis commands of another part of the crate (the rollout's disagreement counts)
    /// on this limiter's connections, with its timeouts and failure handling; `None` for the
    /// in-memory backend.
    pub(crate) async fn with_redis<T, F, Fut>(
        &self,
        operation: &'static str,
        f: F,
    ) -> Option<Result<T>>
    where
        F: FnOnce(RedisConn) -> Fut,
        Fut: Future<Output = ::redis::RedisResult<T>>,
    {
        match &self.inner.backend {
            Backend::Memory(_) => None,
            Backend::Redis(r) => Some(r.run(operation, f).await),
        }
    }

    /// The backend's name: `redis` (a single Redis or a Redis Cluster:
    /// [`RateLimitConfig::is_redis_cluster`] tells which) or `memory`.
    pub fn backend_name(&self) -> &'static str {
        match self.inner.backend {
            Backend::Memory(_) => "memory",
            Backend::Redis(_) => "redis",
        }
    }

    /// Checks that the backend answers (always true in memory).
    pub async fn ping(&self) -> Result<()> {
        match &self.inner.backend {
            Backend::Memory(_) => Ok(()),
            Backend::Redis(r) => r.ping().await,
        }
    }

    /// Measures the [clock gap](Self::clock_gap) every `every` (setting its gauge) until
    /// the runtime stops. A failed measure (Redis down) is logged at debug and skipped: the
    /// degraded gauge already tells that story.
    pub fn watch_clock_gap(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let limiter = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = limiter.clock_gap().await {
                    tracing::debug!(error = %e, "clock gap not measured");
                }
            }
        })
    }

    /// Redis `TIME` minus this machine's wall clock, in seconds (positive when Redis is
    /// ahead), and sets the `torn_quota_clock_gap_seconds` gauge. The scripts decide by
    /// Redis time, so a gap does not skew decisions; it does skew anything that compares
    /// [`Grant::granted_at_ms`] with local time. The local time is taken half-way through
    /// the round trip. Always 0 in memory, which decides by the local clock.
    pub async fn clock_gap(&self) -> Result<f64> {
        let Backend::Redis(r) = &self.inner.backend else {
            return Ok(0.0);
        };
        let before = unix_micros();
        let redis_micros = r.time().await?;
        let after = unix_micros();
        let local = before / 2 + after / 2;
        let gap = (i128::from(redis_micros) - i128::from(local)) as f64 / 1e6;
        crate::telemetry::clock_gap(gap);
        Ok(gap)
    }

    /// One decision for `cost` units of `user`'s quota, now, without waiting.
    pub async fn try_acquire(&self, user: TornUserId, cost: u32) -> Result<Decision> {
        self.try_acquire_with(user, &Request::new(cost)).await
    }

    /// One decision for a [`Request`], now, without waiting.
    pub async fn try_acquire_with(&self, user: TornUserId, request: &Request) -> Result<Decision> {
        if request.cost == 0 {
            return Err(Error::InvalidArgument {
                name: "cost",
                reason: "must be at least 1".into(),
            });
        }
        if let Some(id) = &request.idempotency_id {
            validate_idempotency_id(id)?;
        }
        let config = &self.inner.config;
        let limit = config.limit_for(user).get();
        // Checked here, not only in Lua: a coalesced call fails as a whole on a bad
        // argument, and one caller's mistake must not fail its neighbours' decisions.
        if request.cost > MAX_UNITS {
            return Err(Error::CostExceedsLimit {
                cost: request.cost,
                limit,
            });
        }
        let window_ms = u64::try_from(request.margin.as_millis())
            .ok()
            .and_then(|m| m.checked_add(config.window_ms()))
            .filter(|w| u128::from(*w) <= MAX_SPAN.as_millis())
            .ok_or_else(|| Error::InvalidArgument {
                name: "margin",
                reason: format!(
                    "the window plus the margin must be at most one day ({} ms)",
                    MAX_SPAN.as_millis()
                ),
            })?;
        let ask = Ask {
            limit,
            window_ms,
            cost: request.cost,
            reserve: match request.priority {
                Priority::High => 0,
                Priority::Low => config.low_priority_reserve(),
            },
            hold_ms: hold_ms(request.hold)?,
            idempotency_id: request.idempotency_id.as_deref(),
        };
        let decided = match &self.inner.backend {
            Backend::Memory(m) => m.acquire(user, &ask).map(|raw| (raw, Via::Shared)),
            Backend::Redis(r) => self.decide_on_redis(r, user, ask).await,
        };
        let (raw, degraded) = decided.inspect_err(|_| {
            crate::telemetry::limiter_decision(self.backend_name(), "error", false);
        })?;
        let decision = to_decision(user, request, &ask, raw, degraded);
        let degraded = matches!(degraded, Via::Local { .. });
        crate::telemetry::limiter_decision(
            self.backend_name(),
            if decision.is_granted() {
                "granted"
            } else {
                "limited"
            },
            degraded,
        );
        if config.log_decisions() {
            tracing::info!(
                user = user.get(),
                cost = request.cost,
                granted = decision.is_granted(),
                remaining = decision.remaining(),
                retry_after_ms = decision.retry_after().as_millis() as u64,
                degraded,
                "quota decision"
            );
        }
        Ok(decision)
    }

    /// Asks Redis; when it is unreachable and the policy allows, decides locally at each
    /// worker's share of the limit, and says so.
    async fn decide_on_redis(
        &self,
        redis: &RedisBackend,
        user: TornUserId,
        mut ask: Ask<'_>,
    ) -> Result<(RawDecision, Via)> {
        self.start_heartbeat();
        let Some(f) = self.inner.fallback.as_ref() else {
            return match redis.acquire(user, &ask).await {
                Ok(raw) => Ok((raw, Via::Shared)),
                Err(e) => {
                    if e.is_unavailable() {
                        self.watch_recovery();
                    }
                    Err(e)
                }
            };
        };
        if !f.skip_redis() {
            let gate = f.gate(redis, user, &ask, self.inner.config.reconnect_interval())?;
            if let Gate::Shut(raw) = gate {
                return Ok((raw, Via::Local { journaled: None }));
            }
            let asked = redis.acquire(user, &ask).await;
            if let Gate::Held { stamp_ms } = gate
                && !asked.as_ref().is_ok_and(|raw| raw.granted)
            {
                f.ungate(user, stamp_ms, ask.cost);
            }
            match asked {
                Ok(raw) => {
                    f.recovered();
                    return Ok((raw, Via::Shared));
                }
                Err(e) if e.is_unavailable() => {
                    f.failed(&e, self.inner.config.reconnect_interval());
                    self.watch_recovery();
                }
                Err(e) => return Err(e),
            }
        }
        crate::telemetry::degraded_tick();
        ask.limit = f.share(ask.limit);
        let raw = f.decide(redis, user, &ask, self.inner.config.reconnect_interval())?;
        let journaled = if raw.granted {
            redis.journal_degraded(user, &ask)
        } else {
            None
        };
        Ok((raw, Via::Local { journaled }))
    }

    /// Watches, on a task of its own, for Redis to answer again after a call failed to
    /// reach it, and then writes this key space's journal back at once (when Redis lost
    /// its state) and ends the degraded spell. Without it a process rebuilt only at its
    /// next decision, which a waiting batch may make a whole window later, while the other
    /// processes already granted from the rebuilt Redis without its grants (the soak's code
    /// 5 after the restart). Tries every reconnect interval, at most every
    /// [`WATCH_EVERY`](fallback::WATCH_EVERY): the hand-back after a spell counts on it.
    fn watch_recovery(&self) {
        use std::sync::atomic::Ordering;
        if self.inner.watching.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let every = self
            .inner
            .config
            .reconnect_interval()
            .min(fallback::WATCH_EVERY);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let Backend::Redis(redis) = &inner.backend else {
                    return;
                };
                if redis.recheck().await.is_ok() {
                    if let Some(f) = &inner.fallback {
                        f.recovered();
                    }
                    inner.watching.store(false, Ordering::Release);
                    return;
                }
            }
        });
    }

    /// Starts, once, the task that reads this key space's epoch every
    /// [`HEARTBEAT`](store::HEARTBEAT) while it holds grants that may still count, so that
    /// a Redis that lost its state between two decisions gets this process's grants back
    /// within a second even when the process decides nothing more (see
    /// `RedisBackend::heartbeat`). Stops when the limiter is dropped; none without a
    /// journal, which has nothing to write back.
    fn start_heartbeat(&self) {
        use std::sync::atomic::Ordering;
        if self.inner.beating.load(Ordering::Relaxed)
            || self.inner.beating.swap(true, Ordering::AcqRel)
            || !matches!(&self.inner.backend, Backend::Redis(r) if r.journals())
        {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(store::HEARTBEAT).await;
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let Backend::Redis(redis) = &inner.backend else {
                    return;
                };
                // Degraded: the recovery watcher reads the epoch when Redis answers.
                if inner.fallback.as_ref().is_some_and(|f| f.state().is_some()) {
                    continue;
                }
                if let Err(e) = redis.heartbeat().await
                    && e.is_unavailable()
                {
                    Limiter { inner }.watch_recovery();
                }
            }
        });
    }

    /// The bucket of `user` now; consumes nothing.
    pub async fn status(&self, user: TornUserId) -> Result<Status> {
        let config = &self.inner.config;
        let limit = config.limit_for(user).get();
        let window = config.window_ms();
        let (raw, degraded) = match &self.inner.backend {
            Backend::Memory(m) => (m.status(user, limit, window), false),
            Backend::Redis(r) => {
                match (r.status(user, limit, window).await, &self.inner.fallback) {
                    (Ok(raw), _) => (raw, false),
                    (Err(e), Some(f)) if e.is_unavailable() => {
                        (f.local.status(user, f.share(limit), window), true)
                    }
                    (Err(e), _) => return Err(e),
                }
            }
        };
        Ok(to_status(raw, degraded))
    }

    /// Sets (or with `None` clears) `user`'s limit at run time. With Redis every process
    /// sees it on its next call; it wins over the configured limit and stays until cleared.
    ///
    /// A limit above [`MAX_UNITS`] is refused.
    pub async fn set_user_limit(&self, user: TornUserId, limit: Option<NonZeroU32>) -> Result<()> {
        if let Some(l) = limit.filter(|l| l.get() > MAX_UNITS) {
            return Err(Error::InvalidArgument {
                name: "limit",
                reason: format!("must be at most {MAX_UNITS}, got {l}"),
            });
        }
        match &self.inner.backend {
            Backend::Memory(m) => {
                m.set_user_limit(user, limit);
                Ok(())
            }
            Backend::Redis(r) => r.set_user_limit(user, limit).await,
        }
    }

    /// Marks `user`'s bucket full for `hold` (never shortening a penalty in force): for when
    /// Torn answers code 5 because the owner spent quota elsewhere. Returns the penalty now
    /// in force. A hold above one day ([`MAX_SPAN`]) is refused.
    pub async fn penalize(&self, user: TornUserId, hold: Duration) -> Result<Duration> {
        if hold > MAX_SPAN {
            return Err(Error::InvalidArgument {
                name: "hold",
                reason: format!("must be at most one day ({} ms)", MAX_SPAN.as_millis()),
            });
        }
        let hold_ms = (hold.as_millis() as u64).max(1);
        let ms = match &self.inner.backend {
            Backend::Memory(m) => m.penalize(user, hold_ms),
            Backend::Redis(r) => match (r.penalize(user, hold_ms).await, &self.inner.fallback) {
                (Ok(ms), _) => ms,
                (Err(e), Some(f)) if e.is_unavailable() => f.local.penalize(user, hold_ms),
                (Err(e), _) => return Err(e),
            },
        };
        Ok(Duration::from_millis(ms))
    }

    /// Gives back a grant that was never sent to Torn (provisional or not). Returns the
    /// units given back: fewer than granted when some had already left the window.
    pub async fn refund(&self, grant: Grant) -> Result<u32> {
        let id = grant.idempotency_id.as_deref();
        let (user, stamp, cost) = (grant.user, grant.stamp_ms, grant.cost);
        match (&self.inner.backend, &self.inner.fallback) {
            (Backend::Memory(m), _) => Ok(m.refund(user, stamp, cost, id)),
            (Backend::Redis(r), Some(f)) if grant.degraded => {
                if let Some(j) = grant.journal_ms {
                    r.journal_forget(user, j, cost);
                }
                Ok(f.local.refund(user, stamp, cost, id))
            }
            (Backend::Redis(r), _) => r.refund(user, stamp, cost, id).await,
        }
    }

    /// Torn answered the call this grant paid for: its records now count one window from
    /// the settle's Redis time (T + window), instead of the provisional granted_at + hold +
    /// window. Returns units settled (0 when the record already left, which is harmless).
    ///
    /// Settles waiting at the same time (say, the owner's, the per-IP and the share units
    /// of one Torn call, on sibling limiters) leave together as one script call.
    pub async fn settle(&self, grant: Grant) -> Result<u32> {
        let (user, stamp, cost, window) = (grant.user, grant.stamp_ms, grant.cost, grant.window_ms);
        match (&self.inner.backend, &self.inner.fallback) {
            (Backend::Memory(m), _) => Ok(m.settle(user, stamp, cost, window)),
            (Backend::Redis(r), Some(f)) if grant.degraded => {
                if let Some(j) = grant.journal_ms {
                    r.journal_settle(user, j, cost);
                }
                Ok(f.local.settle(user, stamp, cost, window))
            }
            (Backend::Redis(r), _) => r.settle(user, stamp, cost, window).await,
        }
    }

    /// Records `cost` units on `user`'s bucket now even when it is full (Torn already
    /// counted them, e.g. the /v2/key/info call that discovered the owner). Later grants
    /// see them.
    pub async fn record(&self, user: TornUserId, cost: u32) -> Result<()> {
        if cost == 0 || cost > MAX_UNITS {
            return Err(Error::InvalidArgument {
                name: "cost",
                reason: format!("must be 1 to {MAX_UNITS}"),
            });
        }
        let window = self.inner.config.window_ms();
        match (&self.inner.backend, &self.inner.fallback) {
            (Backend::Memory(m), _) => {
                m.record(user, cost, window);
                Ok(())
            }
            (Backend::Redis(r), fallback) => match (r.record(user, cost, window).await, fallback) {
                (Err(e), Some(f)) if e.is_unavailable() => {
                    f.local.record(user, cost, window);
                    Ok(())
                }
                (other, _) => other,
            },
        }
    }

    /// How long the limiter has been deciding locally because Redis is unreachable, if it is.
    pub fn degraded_for(&self) -> Option<Duration> {
        let f = self.inner.fallback.as_ref()?;
        f.state().map(|d| d.since.elapsed())
    }

    /// Redis keys of this limiter (its prefix), e.g. to inspect a bucket.
    pub fn keys(&self) -> KeyBuilder {
        match &self.inner.backend {
            Backend::Redis(r) => r.keys().clone(),
            Backend::Memory(_) => KeyBuilder::new(self.inner.config.key_prefix()),
        }
    }

    /// Buckets the in-memory backend holds now (after sweeping idle ones); `None` for Redis,
    /// whose keys expire on their own.
    pub fn tracked_buckets(&self) -> Option<usize> {
        match &self.inner.backend {
            Backend::Memory(m) => Some(m.tracked()),
            Backend::Redis(_) => None,
        }
    }
}

/// The wall clock in microseconds since the Unix epoch (0 before it: a clock that wrong
/// shows as a huge gap, which is the point).
fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Where a decision was made.
#[derive(Debug, Clone, Copy)]
enum Via {
    /// By the backend itself (Redis, or the in-memory backend).
    Shared,
    /// By the local fallback while Redis was unreachable (degraded); a grant's stamp in the
    /// Redis journal, when it was journaled.
    Local { journaled: Option<u64> },
}

fn to_decision(
    user: TornUserId,
    request: &Request,
    ask: &Ask<'_>,
    raw: RawDecision,
    via: Via,
) -> Decision {
    let (degraded, journal_ms) = match via {
        Via::Shared => (false, None),
        Via::Local { journaled } => (true, journaled),
    };
    if raw.granted {
        Decision::Granted(Grant {
            user,
            cost: request.cost,
            remaining: raw.remaining,
            at_ms: raw.at_ms,
            stamp_ms: raw.at_ms + ask.hold_ms,
            window_ms: ask.window_ms,
            degraded,
            journal_ms,
            idempotency_id: request.idempotency_id.clone(),
        })
    } else {
        Decision::Limited {
            retry_after: Duration::from_millis(raw.retry_after_ms),
            remaining: raw.remaining,
            degraded,
        }
    }
}

/// The most units a limit or a cost may be (Torn's own limits are 100 and 1,000 per
/// minute): each unit is a 6-byte record, so this bounds what one call writes to Redis.
pub const MAX_UNITS: u32 = 10_000;

/// The longest hold, window or penalty: one day.
pub const MAX_SPAN: Duration = Duration::from_secs(86_400);

fn hold_ms(hold: Duration) -> Result<u64> {
    if hold > MAX_SPAN {
        return Err(Error::InvalidArgument {
            name: "hold",
            reason: format!("must be at most {} ms (one day)", MAX_SPAN.as_millis()),
        });
    }
    Ok(hold.as_millis() as u64)
}

fn validate_idempotency_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::InvalidArgument {
            name: "idempotency_id",
            reason: "must be 1 to 128 visible ASCII characters".into(),
        });
    }
    Ok(())
}
